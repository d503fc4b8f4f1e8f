// Remote TLB flush: requests on every vCPU, no wait for vCPUs outside guest mode, the kick and wait for one in guest mode, and a lockless walk holding the flush.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AccessHook } from '../../src/shm/access';
import {
  EXITING_GUEST_MODE,
  IN_GUEST_MODE,
  KVM_REQ_TLB_FLUSH,
  OUTSIDE_GUEST_MODE,
  READING_SHADOW_PAGE_TABLES,
  VCPU_MODE,
  VCPU_REQUESTS,
  VCPU_ROOT,
  type Kvm,
} from '../../src/kvm/kvm';
import { RET_PF_FIXED } from '../../src/kvm/mmu';
import { readTlb, type Vcpu } from '../../src/vcpu/vcpu';
import { PFERR_PRESENT_MASK, PFERR_WRITE_MASK, pteIndex } from '../../src/x86/pte';
import { SPTE_WRITABLE_MASK, spteToChild } from '../../src/x86/spte';
import { OP, inGuest, interleave, leafSptep, makeVm } from '../helpers/vm';
import { CTL_GO, CTL_RELEASE, CTL_WALK_ENDED, startFlushWorker } from './flush-worker';

function requested(k: Kvm, v: number): boolean {
  return (k.mem.i32[k.vcpuWord(v, VCPU_REQUESTS)]! & KVM_REQ_TLB_FLUSH) !== 0;
}

function mode(k: Kvm, v: number): number {
  return k.mem.i32[k.vcpuWord(v, VCPU_MODE)]! & 3;
}

/** A hook that fails the test (instead of hanging it) if the flusher starts waiting for anyone. */
function noWaiting(): AccessHook {
  return {
    before(op, a) {
      if (op === OP.waitWhile32) throw new Error(`the flusher waited on word ${a}`);
    },
    note() {},
  };
}

test('kvmFlushRemoteTlbs sets KVM_REQ_TLB_FLUSH on every vCPU and does not wait for vCPUs outside guest mode', () => {
  const vm = makeVm({ vcpus: 3 });
  const k = vm.host;
  for (let v = 0; v < 3; v++) assert.equal(mode(k, v), OUTSIDE_GUEST_MODE);
  const flushes = k.stat('remoteFlushes');
  k.mem.hook = noWaiting();
  try {
    k.kvmFlushRemoteTlbs();
  } finally {
    k.mem.hook = null;
  }
  for (let v = 0; v < 3; v++) assert.ok(requested(k, v), `vCPU ${v} has the request`);
  assert.equal(k.stat('remoteFlushes'), flushes + 1);
});

test('a vCPU outside guest mode keeps its TLB until its next enterGuest, which flushes it and clears the request', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  inGuest(v, () => [1, 2, 3].forEach((p) => v.read64(vm.addr(p))));
  assert.equal(readTlb(v.kvm, 0).length, 3);
  k.kvmFlushRemoteTlbs();
  assert.equal(readTlb(v.kvm, 0).length, 3, 'not flushed yet: the vCPU is not running');
  const flushes = v.kv.stat('tlbFlushes');
  v.enterGuest();
  try {
    assert.equal(readTlb(v.kvm, 0).length, 0, 'flushed on entry');
    assert.equal(v.kv.stat('tlbFlushes'), flushes + 1);
    assert.equal(requested(k, 0), false, 'request handled');
    assert.equal(mode(k, 0), IN_GUEST_MODE);
  } finally {
    v.exitGuest();
  }
});

test('a vCPU in IN_GUEST_MODE is kicked to EXITING_GUEST_MODE and the flusher waits until it exits (interleaved)', () => {
  const vm = makeVm({ vcpus: 2 });
  const k = vm.host;
  const [v0] = vm.vcpus as [Vcpu, Vcpu];
  const modeWord = k.vcpuWord(0, VCPU_MODE);
  v0.enterGuest();
  try {
    v0.read64(vm.addr(1));
    v0.read64(vm.addr(2));
    const ops: string[] = [];
    let modeAtWait = -1;
    let tlbAtWait = 0;
    k.mem.hook = {
      before(op, a) {
        if (a !== modeWord) return;
        if (op === OP.cmpxchg32) ops.push('kick');
        if (op !== OP.waitWhile32) return;
        ops.push('wait');
        modeAtWait = mode(k, 0);
        tlbAtWait = readTlb(v0.kvm, 0).length;
        k.mem.hook = null;
        v0.read64(vm.addr(1)); // vCPU 0's next instruction boundary (a mapped page): it exits, flushes and re-enters
      },
      note() {},
    };
    const exits = v0.kv.stat('exits');
    try {
      k.kvmFlushRemoteTlbs();
    } finally {
      k.mem.hook = null;
    }
    assert.deepEqual(ops, ['kick', 'wait'], 'kicked, then waited');
    assert.equal(modeAtWait, EXITING_GUEST_MODE);
    assert.equal(tlbAtWait, 2, 'the old entries were still there when the flusher started waiting');
    assert.equal(v0.kv.stat('exits'), exits + 1, 'the kick made the vCPU exit');
    assert.deepEqual(
      readTlb(v0.kvm, 0).map((e) => e.vpn),
      [vm.addr(1) / 4096],
      'only the entry refilled after the flush',
    );
    assert.equal(mode(k, 0), IN_GUEST_MODE, 'back in guest mode');
    assert.equal(requested(k, 0), false);
    assert.ok(requested(k, 1), 'vCPU 1, outside guest mode, still has its request pending');
  } finally {
    v0.exitGuest();
  }
});

test("a flush from a vCPU's own thread does not wait for that vCPU", () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  v.enterGuest();
  try {
    v.mem.hook = noWaiting();
    try {
      v.kvm.kvmFlushRemoteTlbs();
    } finally {
      v.mem.hook = null;
    }
    assert.equal(mode(v.kvm, 0), IN_GUEST_MODE, 'not kicked');
    assert.ok(requested(v.kvm, 0), 'but the request is set');
  } finally {
    v.exitGuest();
  }
});

test('a vCPU reading shadow page tables holds the flush until its walk ends (interleaved)', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  inGuest(v, () => v.read64(vm.addr(4)));
  k.dirtyLog.enable(0);
  const sptep = leafSptep(v, vm.addr(4));
  let modeInWalk = -1;
  let flushWaited = false;
  // Inside the walk (at its cmpxchg) the host starts a flush; it must wait on this vCPU's mode.
  const fired = interleave(
    v.mem,
    (op, a) => op === OP.cmpxchg64 && a === sptep,
    () => {
      modeInWalk = mode(k, 0);
      k.mem.hook = {
        before(op, a) {
          if (op !== OP.waitWhile32 || a !== k.vcpuWord(0, VCPU_MODE)) return;
          flushWaited = true;
          // A single thread cannot let the walk finish from here: stop the flush at its wait.
          throw new StopFlush();
        },
        note() {},
      };
      try {
        k.kvmFlushRemoteTlbs();
      } catch (e) {
        if (!(e instanceof StopFlush)) throw e;
      } finally {
        k.mem.hook = null;
      }
    },
  );
  assert.equal(v.kvm.mmu.fastPageFault(v.kv, vm.addr(4), PFERR_PRESENT_MASK | PFERR_WRITE_MASK, 4), RET_PF_FIXED);
  assert.ok(fired());
  assert.equal(modeInWalk, READING_SHADOW_PAGE_TABLES);
  assert.equal(flushWaited, true, 'the flusher would wait for the walk');
  assert.equal(mode(k, 0), OUTSIDE_GUEST_MODE, 'the walk has ended');
  k.mem.hook = noWaiting();
  try {
    k.kvmFlushRemoteTlbs(); // now nothing to wait for
  } finally {
    k.mem.hook = null;
  }
});

class StopFlush extends Error {}

/** The leaf SPTE mapping `gpa` through vCPU `v`'s root (read from shared memory, as another thread sees it). */
function leafSpte(k: Kvm, v: number, gpa: number): bigint {
  let sp = k.mem.i32[k.vcpuWord(v, VCPU_ROOT)]! - 1;
  for (let level = 4; level > 1; level--) sp = spteToChild(k.mem.u64[k.pages.sptep(sp, pteIndex(gpa, level))]!);
  return k.mem.u64[k.pages.sptep(sp, pteIndex(gpa, 1))]!;
}

// ---- real threads ----

test('real threads: a flush kicks a vCPU in guest mode and returns only after the vCPU has left guest mode', { timeout: 20_000 }, async () => {
  const { k, ctl, w } = startFlushWorker('guest');
  try {
    const ready = await w.next('ready');
    assert.deepEqual(ready.tlbVpns, [1, 2]);
    const modeWord = k.vcpuWord(0, VCPU_MODE);
    assert.equal(mode(k, 0), IN_GUEST_MODE);
    const ops: string[] = [];
    let kicked = -1;
    let modeAtWait = -1;
    k.mem.hook = {
      before(op, a) {
        if (a !== modeWord) return;
        if (op === OP.cmpxchg32) ops.push('kick');
        if (op !== OP.waitWhile32) return;
        ops.push('wait');
        kicked = Atomics.load(k.mem.i32, modeWord);
        modeAtWait = kicked & 3;
        Atomics.store(ctl, CTL_RELEASE, 1); // only now may the vCPU run its next instruction
        Atomics.notify(ctl, CTL_RELEASE);
      },
      note() {},
    };
    try {
      k.kvmFlushRemoteTlbs();
    } finally {
      k.mem.hook = null;
    }
    const wordAtReturn = Atomics.load(k.mem.i32, modeWord);
    const done = await w.next('done');
    assert.deepEqual(ops, ['kick', 'wait']);
    assert.equal(modeAtWait, EXITING_GUEST_MODE);
    assert.equal(done.modeAtRelease, EXITING_GUEST_MODE, 'the vCPU saw the kick while still in guest mode');
    assert.notEqual(wordAtReturn, kicked, 'the flusher returned only after the vCPU changed its mode');
    assert.notEqual(wordAtReturn & 3, EXITING_GUEST_MODE);
    assert.deepEqual(done.tlbVpns, [3], 'the entries from before the flush are gone');
    assert.equal(done.tlbFlushes, 1);
  } finally {
    await w.terminate();
  }
});

test('real threads: a vCPU in READING_SHADOW_PAGE_TABLES holds the flush until its lockless walk ends', { timeout: 20_000 }, async () => {
  const { k, ctl, w } = startFlushWorker('walk');
  try {
    await w.next('ready');
    k.dirtyLog.enable(0); // page 1's SPTE: W=0, MMU_WRITABLE (the vCPU is outside guest mode: no wait)
    Atomics.store(ctl, CTL_GO, 1);
    Atomics.notify(ctl, CTL_GO);
    const inWalk = await w.next('inWalk');
    assert.equal(inWalk.mode, READING_SHADOW_PAGE_TABLES);
    const modeWord = k.vcpuWord(0, VCPU_MODE);
    let modeAtWait = -1;
    let walkEndedAtWait = -1;
    k.mem.hook = {
      before(op, a) {
        if (op !== OP.waitWhile32 || a !== modeWord) return;
        modeAtWait = Atomics.load(k.mem.i32, modeWord) & 3;
        walkEndedAtWait = Atomics.load(ctl, CTL_WALK_ENDED);
        Atomics.store(ctl, CTL_RELEASE, 1);
        Atomics.notify(ctl, CTL_RELEASE);
      },
      note() {},
    };
    try {
      k.kvmFlushRemoteTlbs();
    } finally {
      k.mem.hook = null;
    }
    const walkEndedAtReturn = Atomics.load(ctl, CTL_WALK_ENDED);
    const done = await w.next('done');
    assert.equal(modeAtWait, READING_SHADOW_PAGE_TABLES, 'the flusher waited on the walker');
    assert.equal(walkEndedAtWait, 0, 'the walk was still running when the flusher began to wait');
    assert.equal(walkEndedAtReturn, 1, 'the flush returned only after the walk ended');
    assert.equal(done.modeAtRelease, READING_SHADOW_PAGE_TABLES);
    assert.equal(done.ret, RET_PF_FIXED, 'the walk itself completed');
    assert.ok(requested(k, 0), 'the vCPU still has to flush its TLB before it re-enters');
    assert.equal(leafSpte(k, 0, 4096) & SPTE_WRITABLE_MASK, SPTE_WRITABLE_MASK, "the fast path set W on page 1's SPTE");
  } finally {
    await w.terminate();
  }
});
