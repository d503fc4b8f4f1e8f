// MMU-notifier handlers: range invalidation (zap, A/D to the host, sequence and in-progress count), the fault's notifier retry, aging, and the host calls that reach them.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { MmuNotifier } from '../../src/host/host';
import { FRAME_ACCESSED, FRAME_DIRTY } from '../../src/host/host';
import { ALL_GUARDS, GUARDS } from '../../src/kvm/config';
import { MMU_IN_PROGRESS, MMU_RANGE_END, MMU_RANGE_START, MMU_SEQ, type Kvm } from '../../src/kvm/kvm';
import { RET_PF_FIXED, RET_PF_RETRY } from '../../src/kvm/mmu';
import type { Vcpu } from '../../src/vcpu/vcpu';
import { PFERR_WRITE_MASK } from '../../src/x86/pte';
import {
  SPTE_ACCESSED_MASK,
  SPTE_HOST_WRITABLE,
  SPTE_WRITABLE_MASK,
  isShadowPresentPte,
  spteToPfn,
} from '../../src/x86/spte';
import { OP, inGuest, interleave, leafSptep, makeVm, spteAt, type TestVm } from '../helpers/vm';

function mmuWord(k: Kvm, field: number): number {
  return k.mem.i32[k.mmuBase + field]!;
}

function rmapSize(k: Kvm, gfn: number): number {
  k.mem.lock(k.mmuLock);
  try {
    return k.rmaps.collect(k.rmaps.rmapHead(k.gfnToHvpn(gfn)), []);
  } finally {
    k.mem.unlock(k.mmuLock);
  }
}

function leaf(vm: TestVm, v: Vcpu, gfn: number): bigint {
  const p = leafSptep(v, vm.addr(gfn));
  return p < 0 ? 0n : spteAt(vm, p);
}

test('invalidateRangeStart zaps the SPTEs of the range, empties their rmaps, reports D as frame dirtiness, and records the range in progress', () => {
  const vm = makeVm();
  const k = vm.host;
  const h = k.host;
  const v = vm.vcpus[0]!;
  inGuest(v, () => {
    v.write64(vm.addr(4), 1n);
    v.read64(vm.addr(5));
    v.read64(vm.addr(9));
  });
  const pfn4 = h.peekPfn(4);
  const pfn5 = h.peekPfn(5);
  assert.equal(h.peekFrameFlags(pfn4) & (FRAME_DIRTY | FRAME_ACCESSED), 0, 'setup: clean frames');
  assert.equal(h.peekFrameFlags(pfn5) & (FRAME_DIRTY | FRAME_ACCESSED), 0);
  const seq = mmuWord(k, MMU_SEQ);
  const flushes = k.stat('remoteFlushes');
  k.notifier.invalidateRangeStart(4, 8);
  assert.equal(leaf(vm, v, 4), 0n);
  assert.equal(leaf(vm, v, 5), 0n);
  assert.ok(isShadowPresentPte(leaf(vm, v, 9)), 'outside the range: kept');
  assert.equal(rmapSize(k, 4), 0);
  assert.equal(rmapSize(k, 5), 0);
  assert.equal(rmapSize(k, 9), 1);
  assert.equal(h.peekFrameFlags(pfn4) & (FRAME_DIRTY | FRAME_ACCESSED), FRAME_DIRTY | FRAME_ACCESSED, 'written page: dirty');
  assert.equal(h.peekFrameFlags(pfn5) & (FRAME_DIRTY | FRAME_ACCESSED), FRAME_ACCESSED, 'read page: accessed, not dirty');
  assert.equal(k.stat('remoteFlushes'), flushes + 1, 'TLBs flushed before returning');
  assert.equal(mmuWord(k, MMU_IN_PROGRESS), 1);
  assert.deepEqual([mmuWord(k, MMU_RANGE_START), mmuWord(k, MMU_RANGE_END)], [4, 8]);
  assert.equal(mmuWord(k, MMU_SEQ), seq, 'the sequence moves at the end, not the start');
  // A second, overlapping invalidation widens the recorded range.
  k.notifier.invalidateRangeStart(2, 5);
  assert.equal(mmuWord(k, MMU_IN_PROGRESS), 2);
  assert.deepEqual([mmuWord(k, MMU_RANGE_START), mmuWord(k, MMU_RANGE_END)], [2, 8]);
});

test('invalidateRangeEnd bumps mmu_invalidate_seq and drops the in-progress count', () => {
  const vm = makeVm();
  const k = vm.host;
  const seq = mmuWord(k, MMU_SEQ);
  k.notifier.invalidateRangeStart(1, 3);
  k.notifier.invalidateRangeStart(2, 6);
  k.notifier.invalidateRangeEnd(2, 6);
  assert.equal(mmuWord(k, MMU_SEQ), seq + 1);
  assert.equal(mmuWord(k, MMU_IN_PROGRESS), 1);
  k.notifier.invalidateRangeEnd(1, 3);
  assert.equal(mmuWord(k, MMU_SEQ), seq + 2);
  assert.equal(mmuWord(k, MMU_IN_PROGRESS), 0);
  assert.equal(k.mem.isLocked(k.mmuLock), false);
});

/**
 * A write fault on page X (present in the host, no SPTE yet) during which, just
 * before the fault takes mmu_lock, `between` runs. Returns what each attempt did.
 */
function faultAcross(guards: number, between: (vm: TestVm, x: number) => void) {
  const vm = makeVm({ swapSlots: 16, guards });
  const k = vm.host;
  const h = k.host;
  const v = vm.vcpus[0]!;
  const X = 9;
  h.writeUser64(X, 0, 0x1111n);
  const stale = h.peekPfn(X);
  const fired = interleave(
    v.mem,
    (op, a) => op === OP.lock && a === v.kvm.mmuLock,
    () => between(vm, X),
  );
  const first = v.kvm.mmu.kvmMmuPageFault(v.kv, vm.addr(X), PFERR_WRITE_MASK);
  assert.ok(fired(), 'the interleaving point was reached');
  const afterFirst = leaf(vm, v, X);
  const current = h.peekPfn(X);
  return { vm, v, X, stale, current, first, afterFirst };
}

test('a slow fault that took its sequence before an invalidation retries, and its next attempt maps the current pfn', () => {
  const r = faultAcross(ALL_GUARDS, (vm, x) => {
    vm.host.host.swapOut(x); // the host moves the page (the fault's pin keeps the old frame alive)
    vm.host.host.swapIn(x);
  });
  assert.notEqual(r.current, r.stale, 'setup: the page moved to another frame');
  assert.equal(r.first, RET_PF_RETRY);
  assert.equal(r.v.kv.stat('pfRetry'), 1);
  assert.equal(r.afterFirst, 0n, 'nothing installed');
  assert.equal(r.v.kvm.mmu.kvmMmuPageFault(r.v.kv, r.vm.addr(r.X), PFERR_WRITE_MASK), RET_PF_FIXED);
  assert.equal(spteToPfn(leaf(r.vm, r.v, r.X)), r.current);
  assert.equal(inGuest(r.v, () => r.v.read64(r.vm.addr(r.X))), 0x1111n);
});

test('a slow fault retries while an invalidation covering its page is in progress, even before the sequence moves', () => {
  let seqAtRetryDecision = -1;
  let waitedWhileInProgress = false;
  const r = faultAcross(ALL_GUARDS, (vm, x) => {
    const k = vm.host;
    const v = vm.vcpus[0]!;
    k.notifier.invalidateRangeStart(x, x + 1);
    seqAtRetryDecision = mmuWord(k, MMU_SEQ);
    // Before retrying, the fault waits for the invalidation to end; end it there (the host thread's next step).
    interleave(
      v.mem,
      (op, a) => op === OP.waitWhile32 && a === k.mmuBase + MMU_IN_PROGRESS,
      () => {
        waitedWhileInProgress = mmuWord(k, MMU_IN_PROGRESS) === 1;
        k.notifier.invalidateRangeEnd(x, x + 1);
      },
    );
  });
  r.v.mem.hook = null;
  assert.equal(r.first, RET_PF_RETRY);
  assert.equal(r.afterFirst, 0n);
  assert.equal(seqAtRetryDecision, 0, 'starting the invalidation does not move the sequence (KVM bumps it at the end): only in_progress tells the fault');
  // The fault waited for the invalidation to end before returning RETRY: the hook above ended it while the fault waited.
  assert.equal(waitedWhileInProgress, true, 'the fault waited while the invalidation was in progress');
  assert.equal(mmuWord(r.vm.host, MMU_IN_PROGRESS), 0);
  assert.equal(r.v.kvm.mmu.kvmMmuPageFault(r.v.kv, r.vm.addr(r.X), PFERR_WRITE_MASK), RET_PF_FIXED);
  assert.equal(spteToPfn(leaf(r.vm, r.v, r.X)), r.current);
});

test('an invalidation in progress on another range does not make a fault retry', () => {
  const r = faultAcross(ALL_GUARDS, (vm, x) => vm.host.notifier.invalidateRangeStart(x + 10, x + 20));
  assert.equal(r.first, RET_PF_FIXED);
  assert.equal(r.v.kv.stat('pfRetry'), 0);
  r.vm.host.notifier.invalidateRangeEnd(r.X + 10, r.X + 20);
});

test('with notifier-retry off the fault does not retry and installs the pfn the host has just unmapped', () => {
  const r = faultAcross(ALL_GUARDS & ~GUARDS['notifier-retry'], (vm, x) => {
    vm.host.host.swapOut(x);
    vm.host.host.swapIn(x);
  });
  assert.equal(r.first, RET_PF_FIXED);
  assert.equal(r.v.kv.stat('pfRetry'), 0);
  assert.equal(spteToPfn(r.afterFirst), r.stale, 'the stale frame is mapped');
  assert.notEqual(r.stale, r.current);
});

test('clearFlushYoung clears A in the range, reports whether any page was young, and flushes nothing', () => {
  const vm = makeVm();
  const k = vm.host;
  const h = k.host;
  const v = vm.vcpus[0]!;
  inGuest(v, () => {
    v.read64(vm.addr(4));
    v.write64(vm.addr(5), 1n);
  });
  const before = [4, 5].map((g) => leaf(vm, v, g));
  const flushes = k.stat('remoteFlushes');
  assert.equal(k.notifier.clearFlushYoung(4, 7), true);
  [4, 5].forEach((g, i) => {
    assert.equal(leaf(vm, v, g), before[i]! & ~SPTE_ACCESSED_MASK, `gfn ${g}: only A cleared`);
    assert.equal(h.peekFrameFlags(h.peekPfn(g)) & FRAME_ACCESSED, FRAME_ACCESSED, `gfn ${g}: frame marked accessed`);
  });
  assert.equal(k.notifier.clearFlushYoung(4, 7), false, 'no longer young');
  assert.equal(k.notifier.clearFlushYoung(20, 30), false, 'never mapped');
  assert.equal(k.stat('remoteFlushes'), flushes, 'aging does not flush');
  // Once the TLB entry is gone, the next access sets A again.
  v.flushTlb();
  inGuest(v, () => v.read64(vm.addr(4)));
  assert.equal(leaf(vm, v, 4) & SPTE_ACCESSED_MASK, SPTE_ACCESSED_MASK);
  assert.equal(h.clearYoung(4), true, 'the host asks through the notifier');
  assert.equal(h.clearYoung(4), false);
});

/** Wrap the notifier of every handle so the calls the host makes are recorded. */
function recordNotifier(handles: Kvm[]): string[] {
  const calls: string[] = [];
  for (const k of handles) {
    const real = k.notifier;
    const wrapped: MmuNotifier = {
      invalidateRangeStart(s, e) {
        calls.push(`start ${s}-${e}`);
        real.invalidateRangeStart(s, e);
      },
      invalidateRangeEnd(s, e) {
        calls.push(`end ${s}-${e}`);
        real.invalidateRangeEnd(s, e);
      },
      clearFlushYoung(s, e) {
        calls.push(`young ${s}-${e}`);
        return real.clearFlushYoung(s, e);
      },
    };
    k.host.notifier = wrapped;
  }
  return calls;
}

test("host swap-out goes through invalidate start/end: the SPTE is zapped, its D bit saves the guest's write to swap", () => {
  const vm = makeVm({ swapSlots: 16 });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  inGuest(v, () => v.write64(vm.addr(7), 0x77n));
  const calls = recordNotifier([k, v.kvm]);
  const seq = mmuWord(k, MMU_SEQ);
  assert.ok(k.host.swapOut(7));
  assert.deepEqual(calls, ['start 7-8', 'end 7-8']);
  assert.equal(leaf(vm, v, 7), 0n);
  assert.equal(rmapSize(k, 7), 0);
  assert.equal(mmuWord(k, MMU_SEQ), seq + 1);
  assert.equal(k.host.stat('writebacks'), 1, 'the dirty page was written back');
  assert.equal(inGuest(v, () => v.read64(vm.addr(7))), 0x77n);
  assert.ok(k.host.clearYoung(7));
  assert.equal(calls.at(-1), 'young 7-8');
});

test('a KSM merge goes through invalidate start/end for both pages; the merged page maps read-only and a write breaks it (with a retry)', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  inGuest(v, () => {
    v.read64(vm.addr(10));
    v.read64(vm.addr(11));
  });
  const calls = recordNotifier([k, v.kvm]);
  const seq = mmuWord(k, MMU_SEQ);
  assert.ok(k.host.ksmMerge(10, 11));
  assert.deepEqual(calls, ['start 10-11', 'end 10-11', 'start 11-12', 'end 11-12', 'start 11-12', 'end 11-12']);
  assert.equal(leaf(vm, v, 10), 0n);
  assert.equal(leaf(vm, v, 11), 0n);
  assert.equal(mmuWord(k, MMU_SEQ), seq + 3);
  const shared = k.host.peekPfn(10);
  inGuest(v, () => v.read64(vm.addr(11)));
  const ro = leaf(vm, v, 11);
  assert.equal(spteToPfn(ro), shared);
  assert.equal(ro & (SPTE_WRITABLE_MASK | SPTE_HOST_WRITABLE), 0n);
  calls.length = 0;
  inGuest(v, () => v.write64(vm.addr(11), 5n));
  assert.deepEqual(calls, ['start 11-12', 'end 11-12'], 'the copy-on-write break invalidates the page');
  assert.equal(v.kv.stat('pfRetry'), 1, 'the fault that broke COW saw the sequence move and retried');
  const rw = leaf(vm, v, 11);
  assert.notEqual(spteToPfn(rw), shared);
  assert.equal(spteToPfn(rw), k.host.peekPfn(11));
  assert.equal(rw & SPTE_WRITABLE_MASK, SPTE_WRITABLE_MASK);
  assert.equal(k.host.readUser64(11, 0), 5n);
  assert.equal(k.host.readUser64(10, 0), 0n, 'the other page keeps the shared frame');
});
