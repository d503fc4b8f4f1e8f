// Page marking: when KVM marks host frames dirty and accessed — from SPTEs' A/D bits (`spte`, 2012 to 6.12) or when a fault or prefetch maps the page (`fault`, 6.13 on).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FRAME_ACCESSED, FRAME_DIRTY } from '../../src/host/host';
import type { Kvm } from '../../src/kvm/kvm';
import type { PageMarking } from '../../src/kvm/config';
import { SPTE_DIRTY_MASK, isShadowPresentPte, spteToPfn } from '../../src/x86/spte';
import { OP, inGuest, leafSptep, locked, makeVm, spteAt, type TestVm } from '../helpers/vm';

const MARKS = FRAME_DIRTY | FRAME_ACCESSED;

function marks(vm: TestVm, gfn: number): number {
  const h = vm.host.host;
  return h.peekFrameFlags(h.peekPfn(gfn)) & MARKS;
}

/** Frame-flag updates (`or32`: setPfnDirty / setPfnAccessed) that `f` makes; nothing else in these paths uses or32. */
function frameMarkOps(k: Kvm, f: () => void): number {
  let n = 0;
  k.mem.hook = {
    before(op) {
      if (op === OP.or32) n++;
    },
    note() {},
  };
  try {
    f();
  } finally {
    k.mem.hook = null;
  }
  return n;
}

for (const [marking, expect] of [
  ['spte', 0],
  ['fault', MARKS],
] as [PageMarking, number][]) {
  test(`page marking '${marking}': a slow fault from a writable host mapping ${expect === 0 ? 'leaves the frame unmarked' : 'marks it dirty and accessed, a read as well as a write'}`, () => {
    const vm = makeVm({ pageMarking: marking });
    const v = vm.vcpus[0]!;
    inGuest(v, () => {
      v.write64(vm.addr(3), 1n);
      v.read64(vm.addr(5));
    });
    assert.equal(marks(vm, 3), expect, 'written page');
    assert.equal(marks(vm, 5), expect, 'read page (KVM marks it dirty because the host mapping is writable)');
  });
}

test("page marking 'fault': a fault from a read-only host mapping (a KSM-merged page) marks the frame accessed, not dirty", () => {
  const vm = makeVm({ pageMarking: 'fault' });
  const h = vm.host.host;
  h.swapIn(6);
  h.swapIn(7); // two zero-filled pages: equal, so KSM merges them read-only
  assert.ok(h.ksmMerge(6, 7), 'setup: merged');
  const v = vm.vcpus[0]!;
  inGuest(v, () => v.read64(vm.addr(7)));
  assert.equal(marks(vm, 7), FRAME_ACCESSED);
});

for (const [marking, expect] of [
  ['spte', 0],
  ['fault', MARKS],
] as [PageMarking, number][]) {
  test(`page marking '${marking}': direct_pte_prefetch ${expect === 0 ? 'leaves the prefetched frames unmarked' : 'marks every prefetched frame dirty and accessed'}`, () => {
    const vm = makeVm({ pageMarking: marking });
    const h = vm.host.host;
    for (let g = 8; g < 16; g++) h.swapIn(g); // host pages present and writable, so GUP-fast pins them
    const v = vm.vcpus[0]!;
    inGuest(v, () => v.read64(vm.addr(8)));
    for (let g = 9; g < 16; g++) {
      assert.ok(isShadowPresentPte(spteAt(vm, leafSptep(v, vm.addr(g)))), `gfn ${g} prefetched`);
      assert.equal(marks(vm, g), expect, `gfn ${g}`);
    }
  });
}

for (const marking of ['spte', 'fault'] as PageMarking[]) {
  test(`page marking '${marking}': clearing or updating an SPTE that dropped D ${marking === 'spte' ? 'reports A/D to the frame' : 'reports nothing (6.13 marked the page at the fault)'}`, () => {
    const vm = makeVm({ pageMarking: marking });
    const k = vm.host;
    const v = vm.vcpus[0]!;
    inGuest(v, () => {
      v.write64(vm.addr(3), 1n);
      v.write64(vm.addr(4), 1n);
    });
    const update = leafSptep(v, vm.addr(3));
    const old = spteAt(vm, update);
    assert.equal(old & SPTE_DIRTY_MASK, SPTE_DIRTY_MASK, 'setup: D set by the write');
    const updateOps = frameMarkOps(k, () => locked(k, () => k.spte.mmuSpteUpdate(update, old & ~SPTE_DIRTY_MASK)));
    const clear = leafSptep(v, vm.addr(4));
    const pfn = spteToPfn(spteAt(vm, clear));
    const clearOps = frameMarkOps(k, () => locked(k, () => k.spte.dropSpte(clear)));
    assert.equal(spteAt(vm, clear), 0n);
    assert.equal(updateOps, marking === 'spte' ? 1 : 0, 'mmu_spte_update: D dropped');
    assert.equal(clearOps, marking === 'spte' ? 2 : 0, 'mmu_spte_clear_track_bits: A and D');
    if (marking === 'fault') assert.equal(vm.host.host.peekFrameFlags(pfn) & MARKS, MARKS, 'the frame was marked when the fault mapped it');
  });
}
