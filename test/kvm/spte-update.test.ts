// SPTE helpers under mmu_lock: mmuSpteUpdate's flush decision and A/D reporting, mmuSpteClearTrackBits, spteWriteProtect / rmapWriteProtect, writability invariants.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ALL_GUARDS, GUARDS } from '../../src/kvm/config';
import { RET_PF_FIXED, RET_PF_INVALID } from '../../src/kvm/mmu';
import { SP_ROLE, roleLevel } from '../../src/kvm/mmu-page';
import { FRAME_ACCESSED, FRAME_DIRTY } from '../../src/host/host';
import type { Vcpu } from '../../src/vcpu/vcpu';
import { PFERR_PRESENT_MASK, PFERR_WRITE_MASK } from '../../src/x86/pte';
import {
  SPTE_ACCESSED_MASK,
  SPTE_DIRTY_MASK,
  SPTE_MMU_WRITABLE,
  SPTE_WRITABLE_MASK,
  checkWritableBits,
  formatSpte,
  spteToPfn,
} from '../../src/x86/spte';
import { DATA_FLAGS, OP, inGuest, interleave, leafSptep, makeVm, spteAt, type TestVm, locked } from '../helpers/vm';

const WRITE_PROTECT_FAULT = PFERR_PRESENT_MASK | PFERR_WRITE_MASK;
const W = SPTE_WRITABLE_MASK;
const MW = SPTE_MMU_WRITABLE;
const without = (g: keyof typeof GUARDS): number => ALL_GUARDS & ~GUARDS[g];

/** Every present leaf SPTE of the VM is in one of the four allowed (HOST_WRITABLE, MMU_WRITABLE, W) states. */
function assertWritableInvariants(vm: TestVm, when: string): void {
  const k = vm.host;
  for (let sp = 0; sp < k.pages.nSp; sp++) {
    if (!k.pages.peekInUse(sp) || roleLevel(k.mem.i32[k.pages.hdr(sp, SP_ROLE)]!) !== 1) continue;
    for (let i = 0; i < 512; i++) {
      const spte = k.mem.u64[k.pages.sptep(sp, i)]!;
      const bad = checkWritableBits(spte);
      assert.equal(bad, null, `${when}: sp ${sp} entry ${i} ${formatSpte(spte)}: ${bad}`);
    }
  }
}

/** Map gfn by a guest read (W=1, A=1, D=0) or write (D=1 too); returns its sptep. */
function mapped(vm: TestVm, v: Vcpu, gfn: number, write: boolean): number {
  inGuest(v, () => (write ? v.write64(vm.addr(gfn), 1n) : void v.read64(vm.addr(gfn))));
  return leafSptep(v, vm.addr(gfn));
}

function frameFlags(vm: TestVm, sptep: number): number {
  return vm.host.host.peekFrameFlags(spteToPfn(spteAt(vm, sptep))) & (FRAME_DIRTY | FRAME_ACCESSED);
}

// ---- mmuSpteUpdate ----

test('mmuSpteUpdate asks for a flush when a writable SPTE loses W', () => {
  const vm = makeVm();
  const k = vm.host;
  const sptep = mapped(vm, vm.vcpus[0]!, 3, false);
  const old = spteAt(vm, sptep);
  assert.equal(
    locked(k, () => k.spte.mmuSpteUpdate(sptep, old & ~W)),
    true,
  );
  assert.equal(spteAt(vm, sptep), old & ~W);
  assertWritableInvariants(vm, 'after clearing W');
});

test('mmuSpteUpdate asks for a flush when a read-only MMU-writable SPTE loses MMU_WRITABLE', () => {
  const vm = makeVm();
  const k = vm.host;
  const sptep = mapped(vm, vm.vcpus[0]!, 3, false);
  k.dirtyLog.enable(0);
  const old = spteAt(vm, sptep);
  assert.equal(old & (W | MW), MW, 'setup: W=0, MMU_WRITABLE=1');
  assert.equal(
    locked(k, () => k.spte.mmuSpteUpdate(sptep, old & ~MW)),
    true,
  );
  assertWritableInvariants(vm, 'after clearing MMU_WRITABLE');
});

test('mmuSpteUpdate asks for a flush when D or A is cleared, and reports the dropped bit to the host frame', () => {
  const vm = makeVm();
  const k = vm.host;
  const sptep = mapped(vm, vm.vcpus[0]!, 3, true);
  const old = spteAt(vm, sptep);
  assert.equal(frameFlags(vm, sptep), 0, 'setup: the frame is clean and not accessed');
  assert.equal(
    locked(k, () => k.spte.mmuSpteUpdate(sptep, old & ~SPTE_DIRTY_MASK)),
    true,
    'D cleared',
  );
  assert.equal(frameFlags(vm, sptep), FRAME_DIRTY, 'D reported as frame dirtiness; A kept, so not reported');
  assert.equal(
    locked(k, () => k.spte.mmuSpteUpdate(sptep, old & ~SPTE_DIRTY_MASK & ~SPTE_ACCESSED_MASK)),
    true,
    'A cleared',
  );
  assert.equal(frameFlags(vm, sptep), FRAME_DIRTY | FRAME_ACCESSED);
  assertWritableInvariants(vm, 'after clearing A and D');
});

test('mmuSpteUpdate returns false for a no-op update and tells the host nothing', () => {
  const vm = makeVm();
  const k = vm.host;
  const sptep = mapped(vm, vm.vcpus[0]!, 3, true);
  const old = spteAt(vm, sptep);
  assert.equal(
    locked(k, () => k.spte.mmuSpteUpdate(sptep, old)),
    false,
  );
  assert.equal(spteAt(vm, sptep), old);
  assert.equal(frameFlags(vm, sptep), 0);
});

test('mmuSpteUpdate reports the D bit the hardware set after its read (from the exchanged value, not the one read)', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const gfn = 3;
  const sptep = mapped(vm, v, gfn, false);
  const read = spteAt(vm, sptep); // W=1, D=0
  const fired = interleave(
    k.mem,
    (op, a) => op === OP.load64 && a === sptep,
    () => inGuest(v, () => v.write64(vm.addr(gfn), 2n)), // the guest's write sets D
    { at: 'after' },
  );
  const flush = locked(k, () => k.spte.mmuSpteUpdate(sptep, read & ~W & ~MW));
  assert.ok(fired());
  assert.equal(flush, true);
  assert.equal(frameFlags(vm, sptep) & FRAME_DIRTY, FRAME_DIRTY, "the guest's write is not lost to swap");
  assert.equal(spteAt(vm, sptep), read & ~W & ~MW);
});

function updateAcrossFastPath(guards: number): boolean {
  const vm = makeVm({ guards });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const gfn = 3;
  const sptep = mapped(vm, v, gfn, false);
  k.dirtyLog.enable(0);
  const read = spteAt(vm, sptep); // W=0, MMU_WRITABLE=1
  const fired = interleave(
    k.mem,
    (op, a) => op === OP.load64 && a === sptep,
    () => assert.equal(v.kvm.mmu.fastPageFault(v.kv, vm.addr(gfn), WRITE_PROTECT_FAULT, gfn), RET_PF_FIXED),
    { at: 'after' },
  );
  const flush = locked(k, () => k.spte.mmuSpteUpdate(sptep, read & ~MW));
  assert.ok(fired());
  assertWritableInvariants(vm, 'after the update');
  return flush;
}

test('with flush-mmu-writable off, mmuSpteUpdate decides from the value read before the update: a W set meanwhile goes unflushed', () => {
  assert.equal(updateAcrossFastPath(without('flush-mmu-writable')), false);
  // The simple case too: a read-only MMU-writable SPTE losing MMU_WRITABLE asks for no flush.
  const vm = makeVm({ guards: without('flush-mmu-writable') });
  const k = vm.host;
  const sptep = mapped(vm, vm.vcpus[0]!, 3, false);
  k.dirtyLog.enable(0);
  const old = spteAt(vm, sptep);
  assert.equal(
    locked(k, () => k.spte.mmuSpteUpdate(sptep, old & ~MW)),
    false,
  );
});

test('with flush-mmu-writable on, mmuSpteUpdate flushes for the W the fast path set between its read and its xchg', () => {
  assert.equal(updateAcrossFastPath(ALL_GUARDS), true);
});

// ---- mmuSpteClearTrackBits ----

test('mmuSpteClearTrackBits returns the old value, clears the SPTE and marks the frame dirty iff D was set', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  for (const write of [true, false]) {
    const gfn = write ? 3 : 4;
    const sptep = mapped(vm, v, gfn, write);
    const old = spteAt(vm, sptep);
    const pfn = spteToPfn(old);
    assert.equal(vm.host.host.peekFrameFlags(pfn) & FRAME_DIRTY, 0, 'setup: clean frame');
    const r = locked(k, () => {
      const got = k.spte.mmuSpteClearTrackBits(sptep);
      k.rmaps.remove(k.rmaps.rmapHead(gfn), sptep); // keep the rmap consistent, as dropSpte would
      return got;
    });
    assert.equal(r, old);
    assert.equal(spteAt(vm, sptep), 0n);
    assert.equal(vm.host.host.peekFrameFlags(pfn) & FRAME_DIRTY, write ? FRAME_DIRTY : 0, `write=${write}`);
    assert.equal(vm.host.host.peekFrameFlags(pfn) & FRAME_ACCESSED, FRAME_ACCESSED, 'A reported');
  }
});

/** The write operation mmuSpteClearTrackBits used on `sptep`. */
function clearOp(vm: TestVm, gfn: number, sptep: number): number {
  const k = vm.host;
  const writes: number[] = [];
  k.mem.hook = {
    before(op, a) {
      if (a === sptep && op !== OP.load64) writes.push(op);
    },
    note() {},
  };
  try {
    locked(k, () => {
      k.spte.mmuSpteClearTrackBits(sptep);
      k.rmaps.remove(k.rmaps.rmapHead(gfn), sptep);
    });
  } finally {
    k.mem.hook = null;
  }
  assert.equal(writes.length, 1, 'one write to the SPTE');
  return writes[0]!;
}

test('mmuSpteClearTrackBits clears a volatile SPTE with xchg and a non-volatile one with a plain store', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  // Volatile: writable, D clear (hardware may set D) and MMU-writable.
  const volatile = mapped(vm, v, 3, false);
  assert.equal(clearOp(vm, 3, volatile), OP.xchg64);
  // Not volatile: write-protected for shadow paging (MMU_WRITABLE clear) with A set: nothing can change it.
  const stable = mapped(vm, v, 4, true);
  locked(k, () => k.spte.rmapWriteProtect(4, true));
  k.kvmFlushRemoteTlbs();
  assert.equal(spteAt(vm, stable) & (W | MW | SPTE_ACCESSED_MASK), SPTE_ACCESSED_MASK);
  assert.equal(clearOp(vm, 4, stable), OP.store64);
  // Not volatile: a read-only host mapping (KSM).
  vm.host.host.swapIn(10);
  vm.host.host.swapIn(11);
  assert.ok(vm.host.host.ksmMerge(10, 11));
  const ksm = mapped(vm, v, 11, false);
  assert.equal(clearOp(vm, 11, ksm), OP.store64);
});

test('a read-only, accessed, MMU-writable SPTE is cleared with xchg, and with atomic-volatile-clear off with a plain store', () => {
  for (const [guards, expected] of [
    [ALL_GUARDS, OP.xchg64],
    [without('atomic-volatile-clear'), OP.store64],
  ] as const) {
    const vm = makeVm({ guards });
    const sptep = mapped(vm, vm.vcpus[0]!, 3, false);
    vm.host.dirtyLog.enable(0);
    assert.equal(spteAt(vm, sptep) & (W | MW | SPTE_ACCESSED_MASK), MW | SPTE_ACCESSED_MASK);
    assert.equal(clearOp(vm, 3, sptep), expected, `guards 0x${guards.toString(16)}`);
  }
});

// ---- write-protection ----

test('write-protection for dirty logging clears W only: MMU_WRITABLE stays, and the fast path can restore W', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const sptep = mapped(vm, v, 3, true);
  const old = spteAt(vm, sptep);
  assert.equal(
    locked(k, () => k.spte.spteWriteProtect(sptep, false)),
    true,
  );
  k.kvmFlushRemoteTlbs();
  assert.equal(spteAt(vm, sptep), old & ~W);
  assertWritableInvariants(vm, 'after write-protecting for dirty logging');
  assert.equal(v.kvm.mmu.fastPageFault(v.kv, vm.addr(3), WRITE_PROTECT_FAULT, 3), RET_PF_FIXED);
  assert.equal(spteAt(vm, sptep), old);
  assertWritableInvariants(vm, 'after the fast path');
});

test('write-protection for shadow paging clears W and MMU_WRITABLE: the fast path cannot restore W', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const sptep = mapped(vm, v, 3, true);
  const old = spteAt(vm, sptep);
  assert.equal(
    locked(k, () => k.spte.spteWriteProtect(sptep, true)),
    true,
  );
  k.kvmFlushRemoteTlbs();
  assert.equal(spteAt(vm, sptep), old & ~W & ~MW);
  assertWritableInvariants(vm, 'after write-protecting for shadow paging');
  assert.equal(v.kvm.mmu.fastPageFault(v.kv, vm.addr(3), WRITE_PROTECT_FAULT, 3), RET_PF_INVALID);
  assert.equal(spteAt(vm, sptep), old & ~W & ~MW);
});

test('spteWriteProtect asks for a flush if the SPTE was writable or, with flush-mmu-writable, MMU-writable though read-only; without the guard only if W was set', () => {
  type State = 'writable' | 'write-tracked' | 'read-only';
  const cases: Array<[guard: boolean, state: State, ptProtect: boolean, flush: boolean]> = [
    [true, 'writable', false, true],
    [true, 'writable', true, true],
    [true, 'write-tracked', true, true],
    [true, 'write-tracked', false, false],
    [true, 'read-only', true, false],
    [true, 'read-only', false, false],
    [false, 'writable', false, true],
    [false, 'writable', true, true],
    [false, 'write-tracked', true, false],
    [false, 'write-tracked', false, false],
    [false, 'read-only', true, false],
  ];
  for (const [guard, state, ptProtect, flush] of cases) {
    const vm = makeVm({ guards: guard ? ALL_GUARDS : without('flush-mmu-writable') });
    const k = vm.host;
    const sptep = mapped(vm, vm.vcpus[0]!, 3, false);
    if (state !== 'writable') locked(k, () => k.spte.spteWriteProtect(sptep, state === 'read-only'));
    const before = spteAt(vm, sptep);
    const what = `guard ${guard ? 'on' : 'off'}, ${state} (${formatSpte(before)}), ${ptProtect ? 'for shadow paging' : 'for dirty logging'}`;
    assert.equal(
      locked(k, () => k.spte.spteWriteProtect(sptep, ptProtect)),
      flush,
      what,
    );
    const after = spteAt(vm, sptep);
    assert.equal(after & W, 0n, `${what}: W clear`);
    assert.equal(after & MW, ptProtect ? 0n : before & MW, `${what}: MMU_WRITABLE`);
    assertWritableInvariants(vm, what);
  }
});

test('rmapWriteProtect protects every SPTE that maps the gfn and applies the same flush rule', () => {
  const vm = makeVm({ mode: 'shadow' });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const alias = vm.addr(100); // a second guest mapping of data page 3
  vm.pt!.map(alias, 3, DATA_FLAGS);
  inGuest(v, () => {
    v.read64(vm.addr(3));
    v.read64(alias);
  });
  const spteps = [leafSptep(v, vm.addr(3)), leafSptep(v, alias)];
  assert.notEqual(spteps[0], spteps[1]);
  for (const p of spteps) assert.equal(spteAt(vm, p) & (W | MW), W | MW, 'setup: both writable');
  assert.equal(
    locked(k, () => k.spte.rmapWriteProtect(3, false)),
    true,
    'writable SPTEs: flush',
  );
  for (const p of spteps) assert.equal(spteAt(vm, p) & (W | MW), MW);
  assertWritableInvariants(vm, 'after dirty-log protection');
  assert.equal(
    locked(k, () => k.spte.rmapWriteProtect(3, false)),
    false,
    'already read-only: nothing to do',
  );
  assert.equal(
    locked(k, () => k.spte.rmapWriteProtect(3, true)),
    true,
    'MMU-writable: flush',
  );
  for (const p of spteps) assert.equal(spteAt(vm, p) & (W | MW), 0n);
  assertWritableInvariants(vm, 'after shadow-paging protection');
  assert.equal(
    locked(k, () => k.spte.rmapWriteProtect(3, true)),
    false,
  );
});

test('writability invariants hold for every SPTE through faults, fast fixes, write-protection of both kinds, dirty-log passes and zaps', () => {
  const vm = makeVm({ vcpus: 2, dataPages: 64, swapSlots: 16 });
  const k = vm.host;
  const [v0, v1] = vm.vcpus as [Vcpu, Vcpu];
  const out = new Int32Array(2);
  const step = (what: string, f: () => void): void => {
    f();
    assertWritableInvariants(vm, what);
  };
  step('faults', () => {
    inGuest(v0, () => {
      for (let g = 0; g < 64; g += 3) v0.read64(vm.addr(g));
    });
    inGuest(v1, () => {
      for (let g = 1; g < 64; g += 5) v1.write64(vm.addr(g), BigInt(g));
    });
  });
  step('KSM merge and read', () => {
    k.host.swapIn(62);
    k.host.swapIn(63);
    k.host.ksmMerge(62, 63);
    inGuest(v0, () => v0.read64(vm.addr(63)));
  });
  step('enable dirty logging', () => k.dirtyLog.enable(0));
  step('guest writes (fast path)', () => inGuest(v1, () => [0, 3, 6, 7, 30].forEach((g) => v1.write64(vm.addr(g), 1n))));
  step('get dirty log', () => k.dirtyLog.get(0, out));
  step('shadow-paging protection', () => {
    const flush = locked(k, () => [6, 7, 9].map((g) => k.spte.rmapWriteProtect(g, true)).some((f) => f));
    if (flush) k.kvmFlushRemoteTlbs();
  });
  step('writes to protected pages (slow path)', () => inGuest(v0, () => [6, 9, 12].forEach((g) => v0.write64(vm.addr(g), 2n))));
  step('aging', () => k.host.clearYoung(12));
  step('swap out', () => k.host.swapOut(30));
  step('update dropping MMU_WRITABLE', () =>
    locked(k, () => {
      const p = leafSptep(v0, vm.addr(3));
      k.spte.mmuSpteUpdate(p, spteAt(vm, p) & ~W & ~MW);
    }),
  );
  step('disable and write again', () => {
    k.dirtyLog.disable(0);
    inGuest(v0, () => [0, 3, 12, 30].forEach((g) => v0.write64(vm.addr(g), 3n)));
  });
  step('zap all', () => k.mmu.kvmMmuZapAll());
});
