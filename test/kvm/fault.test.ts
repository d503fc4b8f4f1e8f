// Page faults: the SPTEs the slow path builds (direct and shadow), guest #PF delivery, when and how the lockless fast path fixes a fault, and the count of slow faults that found mmu_lock taken.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AccessHook } from '../../src/shm/access';
import { ALL_GUARDS } from '../../src/kvm/config';
import { RET_PF_FIXED, RET_PF_INVALID, RET_PF_SPURIOUS } from '../../src/kvm/mmu';
import { makeRole } from '../../src/kvm/mmu-page';
import { GuestPageFault, type Vcpu } from '../../src/vcpu/vcpu';
import { CTL_GO, startFlushWorker } from './flush-worker';
import {
  ACC_ALL,
  PFERR_FETCH_MASK,
  PFERR_PRESENT_MASK,
  PFERR_USER_MASK,
  PFERR_WRITE_MASK,
  PT64_NX_MASK,
  PT_ACCESSED_MASK,
  PT_DIRTY_MASK,
  PT_PRESENT_MASK,
  PT_USER_MASK,
  PT_WRITABLE_MASK,
  gpteAccess,
  pteIndex,
} from '../../src/x86/pte';
import {
  SPTE_ACCESSED_MASK,
  SPTE_DIRTY_MASK,
  SPTE_HOST_WRITABLE,
  SPTE_MMU_PRESENT_MASK,
  SPTE_MMU_WRITABLE,
  SPTE_NX_MASK,
  SPTE_PRESENT_MASK,
  SPTE_USER_MASK,
  SPTE_WRITABLE_MASK,
  checkWritableBits,
  formatSpte,
  spteAccess,
  spteToChild,
  spteToPfn,
} from '../../src/x86/spte';
import { NOTE, OP, bitmapHas, inGuest, interleave, leafSptep, makeVm, spteAt, type TestVm } from '../helpers/vm';

const WRITE_PROTECT_FAULT = PFERR_PRESENT_MASK | PFERR_WRITE_MASK;

/** The SPTE bits a test cares about, by name, so a failing deepEqual shows which one is wrong. */
function bits(spte: bigint): Record<string, boolean> {
  const has = (m: bigint): boolean => (spte & m) !== 0n;
  return {
    present: has(SPTE_PRESENT_MASK) && has(SPTE_MMU_PRESENT_MASK),
    W: has(SPTE_WRITABLE_MASK),
    A: has(SPTE_ACCESSED_MASK),
    D: has(SPTE_DIRTY_MASK),
    HOST_WRITABLE: has(SPTE_HOST_WRITABLE),
    MMU_WRITABLE: has(SPTE_MMU_WRITABLE),
  };
}

function leaf(vm: TestVm, v: Vcpu, gva: number): bigint {
  const sptep = leafSptep(v, gva);
  return sptep < 0 ? 0n : spteAt(vm, sptep);
}

/** Read guest memory at `gpa` through the VMM's mapping (a guest PTE, for shadow tests). */
function readGpa(vm: TestVm, gpa: number): bigint {
  return vm.host.host.readUser64(vm.host.gfnToHvpn(Math.floor(gpa / 4096)), gpa % 4096);
}

/** Map page `gfn` with a read, then enable dirty logging: its SPTE is write-tracked (W=0, MMU_WRITABLE=1). */
function writeTracked(vm: TestVm, v: Vcpu, gfn: number): number {
  inGuest(v, () => v.read64(vm.addr(gfn)));
  vm.host.dirtyLog.enable(0);
  const sptep = leafSptep(v, vm.addr(gfn));
  const b = bits(spteAt(vm, sptep));
  assert.ok(!b.W && b.MMU_WRITABLE, `setup: write-tracked SPTE (${formatSpte(spteAt(vm, sptep))})`);
  return sptep;
}

/** Words of slot 0's dirty bitmap (plain reads). */
function bitmapWords(vm: TestVm): number[] {
  const k = vm.host;
  const out: number[] = [];
  for (let i = 0; i < k.dirtyLog.words(0); i++) out.push(k.mem.i32[k.slotBitmap[0]! + i]!);
  return out;
}

/** Record every access-layer operation and ghost note on `v`'s handle until the returned function is called. */
function record(v: Vcpu): { ops: Array<[number, number]>; notes: Array<[number, number, number]>; stop: () => void } {
  const ops: Array<[number, number]> = [];
  const notes: Array<[number, number, number]> = [];
  const hook: AccessHook = {
    before: (op, a) => void ops.push([op, a]),
    note: (kind, a, b) => void notes.push([kind, a, b]),
  };
  v.mem.hook = hook;
  return { ops, notes, stop: () => void (v.mem.hook = null) };
}

// ---- the slow path, direct mode ----

test('direct: a read fault maps gfn->pfn writable with A set, D clear, HOST_WRITABLE and MMU_WRITABLE set', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const gfn = 7;
  assert.equal(v.kvm.mmu.kvmMmuPageFault(v.kv, vm.addr(gfn), 0), RET_PF_FIXED);
  const spte = leaf(vm, v, vm.addr(gfn));
  assert.equal(spteToPfn(spte), vm.host.host.peekPfn(gfn), 'the SPTE maps the frame backing the gfn');
  assert.deepEqual(bits(spte), { present: true, W: true, A: true, D: false, HOST_WRITABLE: true, MMU_WRITABLE: true });
  assert.equal(checkWritableBits(spte), null);
  assert.equal(v.kv.stat('pfSlow'), 1);
  assert.equal(v.kv.stat('pfFixed'), 1);
});

test('direct: a write fault maps the gfn writable with D already set', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  assert.equal(v.kvm.mmu.kvmMmuPageFault(v.kv, vm.addr(12), PFERR_WRITE_MASK), RET_PF_FIXED);
  const spte = leaf(vm, v, vm.addr(12));
  assert.equal(spteToPfn(spte), vm.host.host.peekPfn(12));
  assert.deepEqual(bits(spte), { present: true, W: true, A: true, D: true, HOST_WRITABLE: true, MMU_WRITABLE: true });
});

test('direct: a read fault on a KSM-shared page (read-only host mapping) maps it without W, HOST_WRITABLE or MMU_WRITABLE', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const h = vm.host.host;
  h.swapIn(10);
  h.swapIn(11);
  assert.ok(h.ksmMerge(10, 11), 'setup: two zero pages merge');
  assert.equal(v.kvm.mmu.kvmMmuPageFault(v.kv, vm.addr(11), 0), RET_PF_FIXED);
  const spte = leaf(vm, v, vm.addr(11));
  assert.equal(spteToPfn(spte), h.peekPfn(10), 'the shared frame');
  assert.deepEqual(bits(spte), { present: true, W: false, A: true, D: false, HOST_WRITABLE: false, MMU_WRITABLE: false });
  assert.equal(checkWritableBits(spte), null);
});

test('direct: a fault prefetches the absent neighbours in its group of 8 whose host pages are present and writable, without A', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const h = vm.host.host;
  for (const gfn of [16, 17, 18, 20, 21, 23]) h.swapIn(gfn); // host-present; 19 is the faulting page; 22 never touched
  assert.equal(v.kvm.mmu.kvmMmuPageFault(v.kv, vm.addr(19), 0), RET_PF_FIXED);
  assert.equal(bits(leaf(vm, v, vm.addr(19))).A, true, 'the faulting page is accessed');
  for (const gfn of [16, 17, 18, 20, 21]) {
    const spte = leaf(vm, v, vm.addr(gfn));
    assert.equal(spteToPfn(spte), h.peekPfn(gfn), `gfn ${gfn} prefetched`);
    assert.deepEqual(bits(spte), { present: true, W: true, A: false, D: false, HOST_WRITABLE: true, MMU_WRITABLE: true });
  }
  assert.equal(leaf(vm, v, vm.addr(22)), 0n, 'a page the host has not faulted in stops the run (no host faults)');
  assert.equal(leaf(vm, v, vm.addr(23)), 0n, 'and nothing after it is mapped');
  assert.equal(leaf(vm, v, vm.addr(24)), 0n, 'nor anything outside the group');
  assert.equal(v.kv.stat('pfSlow'), 1);
  inGuest(v, () => v.read64(vm.addr(17)));
  assert.equal(v.kv.stat('pfSlow'), 1, 'a prefetched page is read without a fault');
  assert.equal(bits(leaf(vm, v, vm.addr(17))).A, true, 'and the hardware walk sets its A bit');
});

test('direct: with dirty logging on a fault prefetches nothing; once it is off the same group is prefetched', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const h = vm.host.host;
  for (let gfn = 0; gfn < 8; gfn++) h.swapIn(gfn);
  vm.host.dirtyLog.enable(0);
  assert.equal(v.kvm.mmu.kvmMmuPageFault(v.kv, vm.addr(3), PFERR_WRITE_MASK), RET_PF_FIXED);
  for (let gfn = 0; gfn < 8; gfn++) if (gfn !== 3) assert.equal(leaf(vm, v, vm.addr(gfn)), 0n, `gfn ${gfn} (dirty logging)`);
  assert.ok(bitmapHas(vm.host, 3) && !bitmapHas(vm.host, 2), 'only the faulting page is in the log');
  vm.host.dirtyLog.disable(0);
  const r = record(v);
  assert.equal(v.kvm.mmu.kvmMmuPageFault(v.kv, vm.addr(5), 0), RET_PF_FIXED);
  r.stop();
  for (let gfn = 0; gfn < 8; gfn++) assert.notEqual(leaf(vm, v, vm.addr(gfn)), 0n, `gfn ${gfn} mapped once logging is off`);
  assert.equal(
    r.ops.filter(([op]) => op === OP.load64).length,
    3 + 1 + 8 + 6,
    'direct_map walks levels 4-2 and reads the leaf, then the group of 8, then each of the 6 it maps',
  );
});

test('direct: a fault prefetches nothing while an MMU-notifier invalidation is in progress, even of other pages', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const h = vm.host.host;
  for (let gfn = 0; gfn < 8; gfn++) h.swapIn(gfn);
  const n = h.notifier!;
  n.invalidateRangeStart(40, 41);
  const r = record(v);
  assert.equal(v.kvm.mmu.kvmMmuPageFault(v.kv, vm.addr(5), 0), RET_PF_FIXED);
  r.stop();
  n.invalidateRangeEnd(40, 41);
  for (let gfn = 0; gfn < 8; gfn++) if (gfn !== 5) assert.equal(leaf(vm, v, vm.addr(gfn)), 0n, `gfn ${gfn}`);
  assert.equal(r.ops.filter(([op]) => op === OP.load64).length, 3 + 1, 'direct_map walks levels 4-2 and reads the leaf; no group scan');
});

test('direct: a fault builds four levels of direct shadow pages whose roles and gfns cover the faulting gfn', () => {
  // A memslot high enough that every level's page has its own non-zero first gfn.
  const base = 2 ** 27 + 3 * 2 ** 18 + 512;
  const vm = makeVm({ slots: [{ baseGfn: base, npages: 64 }] });
  const v = vm.vcpus[0]!;
  const k = v.kvm;
  const gfn = base + 5;
  const gpa = gfn * 4096;
  assert.equal(k.mmu.kvmMmuPageFault(v.kv, gpa, 0), RET_PF_FIXED);
  const expectGfn = [0, base, 2 ** 27 + 3 * 2 ** 18, 2 ** 27, 0]; // by level
  let sp = v.kv.root;
  for (let level = 4; level >= 1; level--) {
    assert.equal(k.pages.role(sp), makeRole(level, true, ACC_ALL), `level ${level}: a direct page with full access`);
    assert.equal(k.mmu.spGfn(sp), expectGfn[level], `level ${level}: first gfn`);
    if (level > 1) sp = spteToChild(k.mem.u64[k.pages.sptep(sp, pteIndex(gpa, level))]!);
  }
  const sptep = k.pages.sptep(sp, pteIndex(gpa, 1));
  assert.equal(sptep, leafSptep(v, gpa));
  assert.equal(k.pages.entryGfn(sp, pteIndex(gpa, 1), k.pages.role(sp)), gfn, 'the leaf entry maps the gfn');
  assert.equal(spteToPfn(spteAt(vm, sptep)), vm.host.host.peekPfn(k.gfnToHvpn(gfn)));
});

test("direct: the gfn's rmap holds exactly the leaf SPTE the fault installed", () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  inGuest(v, () => v.write64(vm.addr(21), 1n));
  const k = vm.host;
  const out: number[] = [];
  k.mem.lock(k.mmuLock);
  try {
    out.length = k.rmaps.collect(k.rmaps.rmapHead(k.gfnToHvpn(21)), out);
    assert.equal(k.rmaps.collect(k.rmaps.rmapHead(k.gfnToHvpn(22)), []), 0, 'an untouched gfn has an empty rmap');
  } finally {
    k.mem.unlock(k.mmuLock);
  }
  assert.deepEqual(out, [leafSptep(v, vm.addr(21))]);
});

// ---- the slow path, shadow mode ----

test('shadow: the leaf SPTE grants exactly what a dirty guest PTE grants: no W for read-only, no U for supervisor, NX for NX', () => {
  const vm = makeVm({ mode: 'shadow' });
  const v = vm.vcpus[0]!;
  const cpu = v.kv.cpu;
  const cases: Array<{ w: boolean; u: boolean; nx: boolean }> = [];
  for (const w of [false, true]) for (const u of [false, true]) for (const nx of [false, true]) cases.push({ w, u, nx });
  cases.forEach((c, i) => {
    let gpte = PT_PRESENT_MASK | PT_ACCESSED_MASK | PT_DIRTY_MASK;
    if (c.w) gpte |= PT_WRITABLE_MASK;
    if (c.u) gpte |= PT_USER_MASK;
    if (c.nx) gpte |= PT64_NX_MASK;
    vm.pt!.map(vm.addr(10 + i), 10 + i, gpte);
    const gva = vm.addr(10 + i);
    inGuest(v, () => v.read64(gva));
    const spte = leaf(vm, v, gva);
    const what = `gpte W=${c.w} U=${c.u} NX=${c.nx}: ${formatSpte(spte)}`;
    assert.equal(spteAccess(spte), gpteAccess(gpte, cpu), what);
    assert.equal((spte & SPTE_WRITABLE_MASK) !== 0n, c.w, what);
    assert.equal((spte & SPTE_MMU_WRITABLE) !== 0n, c.w, `${what}: MMU_WRITABLE only with a writable gpte`);
    assert.equal((spte & SPTE_USER_MASK) !== 0n, c.u, what);
    assert.equal((spte & SPTE_NX_MASK) !== 0n, c.nx, what);
    assert.equal(spteToPfn(spte), vm.host.host.peekPfn(10 + i));
    assert.equal(checkWritableBits(spte), null, what);
  });
});

test('shadow: accesses the guest PTE forbids are delivered as guest #PF with the SDM error code', () => {
  const vm = makeVm({ mode: 'shadow' });
  const v = vm.vcpus[0]!;
  const base = PT_PRESENT_MASK | PT_ACCESSED_MASK | PT_DIRTY_MASK;
  vm.pt!.map(vm.addr(10), 10, base | PT_USER_MASK); // read-only
  vm.pt!.map(vm.addr(11), 11, base | PT_WRITABLE_MASK); // supervisor
  vm.pt!.map(vm.addr(12), 12, base | PT_WRITABLE_MASK | PT_USER_MASK | PT64_NX_MASK); // no execute
  const pf = (f: () => void, ec: number, what: string): void =>
    assert.throws(f, (e: unknown) => e instanceof GuestPageFault && e.errorCode === ec, what);
  inGuest(v, () => {
    pf(() => v.write64(vm.addr(10), 1n), PFERR_PRESENT_MASK | PFERR_WRITE_MASK, 'write to a read-only page');
    v.user = true;
    pf(() => v.read64(vm.addr(11)), PFERR_PRESENT_MASK | PFERR_USER_MASK, 'user read of a supervisor page');
    v.user = false;
    pf(() => v.fetch(vm.addr(12)), PFERR_PRESENT_MASK | PFERR_FETCH_MASK, 'fetch from an NX page');
  });
  assert.equal(v.kv.stat('pfGuest'), 3);
  assert.equal(vm.host.host.readUser64(10, 0), 0n, 'the refused write did not reach memory');
});

test('shadow: a not-present guest PTE raises GuestPageFault from read64 and write64 with its error code', () => {
  const vm = makeVm({ mode: 'shadow' });
  const v = vm.vcpus[0]!;
  vm.pt!.map(vm.addr(9), 9, 0n);
  const gva = vm.addr(9) + 16;
  inGuest(v, () => {
    assert.throws(() => v.read64(gva), (e: unknown) => e instanceof GuestPageFault && e.gva === gva && e.errorCode === 0);
    assert.throws(
      () => v.write64(gva, 1n),
      (e: unknown) => e instanceof GuestPageFault && e.gva === gva && e.errorCode === PFERR_WRITE_MASK,
    );
  });
  assert.equal(v.kv.stat('pfGuest'), 2);
  assert.equal(leaf(vm, v, gva), 0n, 'nothing was mapped');
});

test('shadow: a clean guest PTE is mapped read-only on a read; the first write faults, sets its D bit and maps it writable', () => {
  const vm = makeVm({ mode: 'shadow' });
  const v = vm.vcpus[0]!;
  const gva = vm.addr(9);
  vm.pt!.map(gva, 9, PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK | PT_ACCESSED_MASK);
  const pteGpa = vm.pt!.pteGpa(gva);
  inGuest(v, () => v.read64(gva));
  let spte = leaf(vm, v, gva);
  assert.deepEqual(bits(spte), { present: true, W: false, A: true, D: false, HOST_WRITABLE: true, MMU_WRITABLE: false });
  assert.equal(readGpa(vm, pteGpa) & PT_DIRTY_MASK, 0n, 'the read left the guest PTE clean');
  const fixed = v.kv.stat('pfFixed');
  inGuest(v, () => v.write64(gva, 0x55n));
  assert.equal(v.kv.stat('pfFixed'), fixed + 1, 'the write faulted');
  assert.equal(v.kv.stat('pfFast'), 0, 'not a fast-path fault: the SPTE was not MMU-writable');
  assert.equal(readGpa(vm, pteGpa) & PT_DIRTY_MASK, PT_DIRTY_MASK, "the guest PTE's D bit is set");
  spte = leaf(vm, v, gva);
  assert.deepEqual(bits(spte), { present: true, W: true, A: true, D: true, HOST_WRITABLE: true, MMU_WRITABLE: true });
  assert.equal(vm.host.host.readUser64(9, 0), 0x55n);
});

test("shadow: the guest walker sets A in every entry it uses and D only in the leaf, and only on a write", () => {
  const vm = makeVm({ mode: 'shadow' });
  const v = vm.vcpus[0]!;
  const gva = vm.addr(9);
  vm.pt!.map(gva, 9, PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK);
  const gpas = [0, 1, 2, 3, 4].map((l) => (l === 0 ? 0 : vm.pt!.pteGpa(gva, l)));
  for (let l = 1; l <= 4; l++) assert.equal(readGpa(vm, gpas[l]!) & (PT_ACCESSED_MASK | PT_DIRTY_MASK), 0n, `setup: level ${l} clean`);
  inGuest(v, () => v.read64(gva));
  for (let l = 1; l <= 4; l++)
    assert.equal(readGpa(vm, gpas[l]!) & (PT_ACCESSED_MASK | PT_DIRTY_MASK), PT_ACCESSED_MASK, `after a read, level ${l}: A only`);
  inGuest(v, () => v.write64(gva, 1n));
  assert.equal(readGpa(vm, gpas[1]!) & PT_DIRTY_MASK, PT_DIRTY_MASK, 'after a write the leaf is dirty');
  for (let l = 2; l <= 4; l++) assert.equal(readGpa(vm, gpas[l]!) & PT_DIRTY_MASK, 0n, `level ${l} stays clean`);
});

// ---- the fast path ----

test('fast path: a write to a write-tracked SPTE is fixed without mmu_lock by one cmpxchg of old|W, and its gfn is marked dirty', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const gfn = 37;
  const sptep = writeTracked(vm, v, gfn);
  const before = spteAt(vm, sptep);
  const rec = record(v);
  const r = v.kvm.mmu.fastPageFault(v.kv, vm.addr(gfn), WRITE_PROTECT_FAULT, gfn);
  rec.stop();
  assert.equal(r, RET_PF_FIXED);
  assert.equal(spteAt(vm, sptep), before | SPTE_WRITABLE_MASK, 'exactly W was added');
  assert.deepEqual(
    rec.ops.filter(([op, a]) => a === sptep && op !== OP.load64),
    [[OP.cmpxchg64, sptep]],
    'one cmpxchg on the SPTE, no other write',
  );
  assert.equal(rec.ops.filter(([op, a]) => op === OP.lock && a === v.kvm.mmuLock).length, 0, 'no mmu_lock');
  assert.deepEqual(
    rec.notes.filter(([kind]) => kind === NOTE.fastFixed),
    [[NOTE.fastFixed, sptep, gfn]],
  );
  const words = bitmapWords(vm);
  assert.deepEqual(words, words.map((_, i) => (i === gfn >>> 5 ? 1 << (gfn & 31) : 0)), 'only the gfn is in the dirty log');
  assert.equal(v.kv.stat('pfFast'), 1);
});

test('fast path: a guest write after write-tracking goes through the fast path, not the slow one', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const sptep = writeTracked(vm, v, 3);
  const slow = v.kv.stat('pfSlow');
  inGuest(v, () => v.write64(vm.addr(3), 9n));
  assert.equal(v.kv.stat('pfFast'), 1);
  assert.equal(v.kv.stat('pfSlow'), slow);
  assert.ok(bitmapHas(vm.host, 3));
  assert.deepEqual(bits(spteAt(vm, sptep)), { present: true, W: true, A: true, D: true, HOST_WRITABLE: true, MMU_WRITABLE: true });
  assert.equal(vm.host.host.readUser64(3, 0), 9n);
});

test('fast path: declines an SPTE write-protected for shadow paging (MMU_WRITABLE clear)', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const k = vm.host;
  inGuest(v, () => v.read64(vm.addr(4)));
  k.mem.lock(k.mmuLock);
  const flush = k.spte.rmapWriteProtect(4, true);
  k.mem.unlock(k.mmuLock);
  if (flush) k.kvmFlushRemoteTlbs();
  const sptep = leafSptep(v, vm.addr(4));
  const before = spteAt(vm, sptep);
  assert.deepEqual(bits(before), { present: true, W: false, A: true, D: false, HOST_WRITABLE: true, MMU_WRITABLE: false });
  assert.equal(v.kvm.mmu.fastPageFault(v.kv, vm.addr(4), WRITE_PROTECT_FAULT, 4), RET_PF_INVALID);
  assert.equal(spteAt(vm, sptep), before);
  assert.equal(v.kv.stat('pfFast'), 0);
});

test('fast path: declines an SPTE whose host mapping is read-only (HOST_WRITABLE clear)', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const h = vm.host.host;
  h.swapIn(10);
  h.swapIn(11);
  assert.ok(h.ksmMerge(10, 11));
  inGuest(v, () => v.read64(vm.addr(11)));
  const sptep = leafSptep(v, vm.addr(11));
  const before = spteAt(vm, sptep);
  assert.equal(before & SPTE_HOST_WRITABLE, 0n);
  assert.equal(v.kvm.mmu.fastPageFault(v.kv, vm.addr(11), WRITE_PROTECT_FAULT, 11), RET_PF_INVALID);
  assert.equal(spteAt(vm, sptep), before);
  assert.equal(v.kv.stat('pfFast'), 0);
});

test('fast path: declines a not-present SPTE and a read fault', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const sptep = writeTracked(vm, v, 5);
  const before = spteAt(vm, sptep);
  // gfn 6 shares gfn 5's leaf shadow page, but its own entry is not present.
  assert.equal(spteAt(vm, leafSptep(v, vm.addr(6))), 0n);
  assert.equal(v.kvm.mmu.fastPageFault(v.kv, vm.addr(6), WRITE_PROTECT_FAULT, 6), RET_PF_INVALID, 'not-present SPTE');
  assert.equal(spteAt(vm, leafSptep(v, vm.addr(6))), 0n);
  assert.equal(v.kvm.mmu.fastPageFault(v.kv, vm.addr(5), PFERR_PRESENT_MASK, 5), RET_PF_INVALID, 'read fault');
  assert.equal(v.kvm.mmu.fastPageFault(v.kv, vm.addr(5), PFERR_WRITE_MASK, 5), RET_PF_INVALID, 'error code without P');
  assert.equal(spteAt(vm, sptep), before);
  assert.equal(v.kv.stat('pfFast'), 0);
  assert.equal(bitmapHas(vm.host, 5), false);
});

test('fast path: with dirty logging off it restores W but marks nothing dirty', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const sptep = writeTracked(vm, v, 8);
  vm.host.dirtyLog.disable(0);
  inGuest(v, () => v.write64(vm.addr(8), 2n));
  assert.equal(v.kv.stat('pfFast'), 1);
  assert.equal(spteAt(vm, sptep) & SPTE_WRITABLE_MASK, SPTE_WRITABLE_MASK);
  assert.ok(bitmapWords(vm).every((w) => w === 0), 'the bitmap stays empty');
});

test('with config.fastPath false every fault takes the slow path: pfFast stays 0 and pfSlow counts', () => {
  const vm = makeVm({ fastPath: false });
  const v = vm.vcpus[0]!;
  writeTracked(vm, v, 3);
  assert.equal(v.kv.stat('pfSlow'), 1);
  const rec = record(v);
  inGuest(v, () => v.write64(vm.addr(3), 1n));
  rec.stop();
  assert.equal(v.kv.stat('pfFast'), 0);
  assert.equal(v.kv.stat('pfSlow'), 2);
  assert.equal(rec.notes.filter(([kind]) => kind === NOTE.walkBegin).length, 0, 'no lockless walk began');
  assert.ok(bitmapHas(vm.host, 3), 'the slow path logs the write');
});

test('fast path: an SPTE that is already writable gives RET_PF_SPURIOUS and is left alone', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  inGuest(v, () => v.read64(vm.addr(2)));
  const sptep = leafSptep(v, vm.addr(2));
  const before = spteAt(vm, sptep);
  assert.equal(v.kvm.mmu.fastPageFault(v.kv, vm.addr(2), WRITE_PROTECT_FAULT, 2), RET_PF_SPURIOUS);
  assert.equal(v.kvm.mmu.kvmMmuPageFault(v.kv, vm.addr(2), WRITE_PROTECT_FAULT), RET_PF_SPURIOUS);
  assert.equal(v.kv.stat('pfSpurious'), 1);
  assert.equal(spteAt(vm, sptep), before);
});

test('fast path: when the SPTE changes between its read and the cmpxchg, it walks again and fixes the new value', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const gfn = 6;
  const sptep = writeTracked(vm, v, gfn);
  const before = spteAt(vm, sptep);
  const fired = interleave(
    v.mem,
    (op, a) => op === OP.cmpxchg64 && a === sptep,
    () => assert.ok(vm.host.host.clearYoung(gfn), 'the host ages the page: A cleared under the fast path'),
  );
  assert.equal(v.kvm.mmu.fastPageFault(v.kv, vm.addr(gfn), WRITE_PROTECT_FAULT, gfn), RET_PF_FIXED);
  assert.ok(fired());
  assert.equal(v.kv.stat('pfFastRetry'), 1);
  assert.equal(v.kv.stat('pfFast'), 1);
  assert.equal(spteAt(vm, sptep), (before & ~SPTE_ACCESSED_MASK) | SPTE_WRITABLE_MASK, 'W set on the value after the change');
  assert.ok(bitmapHas(vm.host, gfn));
});

test('fast path: gives up after 5 failed cmpxchg attempts in all and leaves the fault to the slow path', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  const gfn = 6;
  const sptep = writeTracked(vm, v, gfn);
  let attempts = 0;
  // Another thread keeps changing the SPTE (toggling A) just before each cmpxchg.
  v.mem.hook = {
    before(op, a) {
      if (op !== OP.cmpxchg64 || a !== sptep) return;
      attempts++;
      Atomics.xor(v.mem.u64, sptep, SPTE_ACCESSED_MASK);
    },
    note() {},
  };
  try {
    assert.equal(v.kvm.mmu.fastPageFault(v.kv, vm.addr(gfn), WRITE_PROTECT_FAULT, gfn), RET_PF_INVALID);
    assert.equal(attempts, 5);
    assert.equal(v.kv.stat('pfFastRetry'), 5);
    assert.equal(v.kv.stat('pfFast'), 0);
    assert.equal(spteAt(vm, sptep) & SPTE_WRITABLE_MASK, 0n, 'W still clear');
    assert.equal(bitmapHas(vm.host, gfn), false, 'nothing logged');
    const slow = v.kv.stat('pfSlow');
    assert.equal(v.kvm.mmu.kvmMmuPageFault(v.kv, vm.addr(gfn), WRITE_PROTECT_FAULT), RET_PF_FIXED);
    assert.equal(v.kv.stat('pfSlow'), slow + 1, 'the slow path fixed it');
  } finally {
    v.mem.hook = null;
  }
  assert.equal(spteAt(vm, sptep) & SPTE_WRITABLE_MASK, SPTE_WRITABLE_MASK);
  assert.ok(bitmapHas(vm.host, gfn));
});

test("shadow with indirectFastPath 'off': the fast path is never entered; the slow path fixes and logs the write", () => {
  const vm = makeVm({ mode: 'shadow', indirectFastPath: 'off' });
  const v = vm.vcpus[0]!;
  const sptep = writeTracked(vm, v, 3);
  const slow = v.kv.stat('pfSlow');
  const rec = record(v);
  inGuest(v, () => v.write64(vm.addr(3), 4n));
  rec.stop();
  assert.equal(rec.notes.filter(([kind]) => kind === NOTE.walkBegin).length, 0, 'no lockless walk');
  assert.equal(v.kv.stat('pfFast'), 0);
  assert.equal(v.kv.stat('pfSlow'), slow + 1);
  assert.equal(spteAt(vm, sptep) & SPTE_WRITABLE_MASK, SPTE_WRITABLE_MASK);
  assert.ok(bitmapHas(vm.host, 3));
});

test("shadow with indirectFastPath 'pin': the fast path pins the gfn's frame across its cmpxchg, fixes, and drops the pin", () => {
  const vm = makeVm({ mode: 'shadow', guards: ALL_GUARDS, indirectFastPath: 'pin' });
  const v = vm.vcpus[0]!;
  const sptep = writeTracked(vm, v, 3);
  const pfn = spteToPfn(spteAt(vm, sptep));
  const h = vm.host.host;
  const refBefore = h.peekRefcount(pfn);
  let refDuring = -1;
  const fired = interleave(
    v.mem,
    (op, a) => op === OP.cmpxchg64 && a === sptep,
    () => void (refDuring = h.peekRefcount(pfn)),
  );
  inGuest(v, () => v.write64(vm.addr(3), 4n));
  assert.ok(fired());
  assert.equal(refDuring, refBefore + 1, 'pinned during the cmpxchg');
  assert.equal(h.peekRefcount(pfn), refBefore, 'refcount back to what it was');
  assert.equal(v.kv.stat('pfFast'), 1);
  assert.ok(bitmapHas(vm.host, 3));
  assert.equal(h.readUser64(3, 0), 4n);
});

test('a slow fault that finds mmu_lock free counts no contention', () => {
  const vm = makeVm({ fastPath: false });
  const v = vm.vcpus[0]!;
  writeTracked(vm, v, 3);
  assert.equal(v.kv.stat('pfSlow'), 1);
  assert.equal(v.kv.stat('pfLockContended'), 0, 'nobody else takes mmu_lock here');
});

test('real threads: a vCPU whose slow fault queues behind the host on mmu_lock counts one contention', { timeout: 20_000 }, async () => {
  const { k, ctl, w } = startFlushWorker('slow');
  try {
    await w.next('ready');
    k.mem.lock(k.mmuLock);
    Atomics.store(ctl, CTL_GO, 1);
    Atomics.notify(ctl, CTL_GO);
    // Hold mmu_lock until the vCPU has taken its ticket behind us.
    const deadline = Date.now() + 5000;
    while (k.mem.lockTakers(k.mmuLock) < 2) {
      if (Date.now() > deadline) throw new Error('the vCPU never queued for mmu_lock');
      await new Promise((r) => setTimeout(r, 1));
    }
    k.mem.unlock(k.mmuLock);
    assert.deepEqual(await w.next('faulted'), { kind: 'faulted', pfSlow: 1, pfLockContended: 1 });
  } finally {
    await w.terminate();
  }
});

test('a slow fault that fails under mmu_lock (a kvmmu pool ran dry) releases the lock and its pin before the error goes up', () => {
  for (const mode of ['direct', 'shadow'] as const) {
    const vm = makeVm({ mode });
    const v = vm.vcpus[0]!;
    const k = vm.host;
    k.host.writeUser64(0, 0, 5n); // the host maps data page 0 (its own write)
    const pfn = k.host.peekPfn(0);
    const refs = k.host.peekRefcount(pfn);
    v.kvm.pages.makeMmuPagesAvailable = () => {
      throw new Error('mmu: every shadow page is a root in use; the pool is too small');
    };
    assert.throws(() => inGuest(v, () => v.write64(vm.addr(0), 1n)), /the pool is too small/, mode);
    assert.equal(k.mem.isLocked(k.mmuLock), false, `${mode}: mmu_lock was released`);
    assert.equal(k.host.peekRefcount(pfn), refs, `${mode}: the fault's pin was dropped`);
  }
});
