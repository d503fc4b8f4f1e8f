// The vCPU's PDE cache (a paging-structure cache): which SPTEs a hardware walk reads, and what empties the cache.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OP, type Mem } from '../../src/shm/access';
import { inGuest, makeVm, type TestVm } from '../helpers/vm';

/** Run `f` and return the meta-buffer word indexes of the 64-bit loads it made (SPTE reads), in order. */
function sptesRead(mem: Mem, f: () => void): number[] {
  const loads: number[] = [];
  mem.hook = {
    before(op, a) {
      if (op === OP.load64) loads.push(a);
    },
    note() {},
  };
  try {
    f();
  } finally {
    mem.hook = null;
  }
  return loads;
}

/** A direct-mode VM whose pages 0..3 are mapped (by one write each) and whose vCPU's TLB has just been flushed. */
function warmVm(): TestVm {
  const vm = makeVm({ dataPages: 16 });
  const [v] = vm.vcpus;
  inGuest(v!, () => {
    for (let i = 0; i < 4; i++) v!.write64(vm.addr(i), 1n);
  });
  v!.flushTlb();
  return vm;
}

test('a TLB miss in a 2 MiB region a walk has already crossed reads only the leaf SPTE', () => {
  const vm = warmVm();
  const v = vm.vcpus[0]!;
  const first = sptesRead(v.mem, () => inGuest(v, () => v.read64(vm.addr(0))));
  assert.equal(first.length, 4, 'the first walk after a flush reads all four levels');
  const second = sptesRead(v.mem, () => inGuest(v, () => v.read64(vm.addr(1))));
  assert.deepEqual(second, [first[3]! + 1], 'the next page: only its leaf, next to the first leaf');
});

test('a TLB flush and an invlpg both empty the PDE cache', () => {
  const vm = warmVm();
  const v = vm.vcpus[0]!;
  inGuest(v, () => v.read64(vm.addr(0)));
  v.flushTlb();
  assert.equal(sptesRead(v.mem, () => inGuest(v, () => v.read64(vm.addr(1)))).length, 4, 'after a flush');
  inGuest(v, () => v.invlpg(vm.addr(0)));
  assert.equal(sptesRead(v.mem, () => inGuest(v, () => v.read64(vm.addr(2)))).length, 4, 'after invlpg of another page');
});

test("a fault drops the faulting address's PDE-cache entry: the walk that retries the write reads all four levels", () => {
  const vm = warmVm();
  const v = vm.vcpus[0]!;
  inGuest(v, () => v.read64(vm.addr(0)));
  vm.host.dirtyLog.enable(0); // write-protects every SPTE and flushes
  inGuest(v, () => v.read64(vm.addr(0))); // refill the PDE cache after the flush
  const loads = sptesRead(v.mem, () => inGuest(v, () => v.write64(vm.addr(1), 2n)));
  // The hardware walk (leaf only, from the cache) faults; the fast path walks from the root (4);
  // the retried hardware walk starts from the root again (4).
  assert.equal(loads.length, 1 + 4 + 4);
  assert.equal(v.kv.stat('pfFast'), 1);
  assert.equal(inGuest(v, () => v.read64(vm.addr(1))), 2n);
});
