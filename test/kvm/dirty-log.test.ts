// Dirty logging: enable/disable, KVM_GET_DIRTY_LOG (take and protect under mmu_lock, flush, then return), manual get, KVM_CLEAR_DIRTY_LOG, initially-set.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KvmmuError } from '../../src/shm/errors';
import { EXITING_GUEST_MODE, KVM_REQ_TLB_FLUSH, VCPU_MODE, VCPU_REQUESTS } from '../../src/kvm/kvm';
import { readTlb, type Vcpu } from '../../src/vcpu/vcpu';
import { ACC_WRITE_MASK } from '../../src/x86/pte';
import { SPTE_MMU_WRITABLE, SPTE_WRITABLE_MASK } from '../../src/x86/spte';
import { OP, bitmapHas, inGuest, interleave, leafSptep, makeVm, spteAt, type TestVm } from '../helpers/vm';

const W = SPTE_WRITABLE_MASK;
const MW = SPTE_MMU_WRITABLE;

function bitmapWords(vm: TestVm): number[] {
  const k = vm.host;
  const out: number[] = [];
  for (let i = 0; i < k.dirtyLog.words(0); i++) out.push(k.mem.i32[k.slotBitmap[0]! + i]!);
  return out;
}

/** W and MMU_WRITABLE of the leaf SPTE mapping gfn. */
function wbits(vm: TestVm, v: Vcpu, gfn: number): bigint {
  return spteAt(vm, leafSptep(v, vm.addr(gfn))) & (W | MW);
}

function flushRequested(vm: TestVm, vcpu: number): boolean {
  const k = vm.host;
  return (k.mem.i32[k.vcpuWord(vcpu, VCPU_REQUESTS)]! & KVM_REQ_TLB_FLUSH) !== 0;
}

test('enable write-protects every SPTE of the slot (W clear, MMU_WRITABLE kept), starts an empty bitmap, and flushes', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const touched = [0, 1, 5, 31, 32, 40, 63];
  inGuest(v, () => touched.forEach((g, i) => (i % 2 === 0 ? v.write64(vm.addr(g), 1n) : void v.read64(vm.addr(g)))));
  const before = touched.map((g) => spteAt(vm, leafSptep(v, vm.addr(g))));
  for (const s of before) assert.equal(s & (W | MW), W | MW, 'setup: writable');
  k.mem.i32[k.slotBitmap[0]!] = 0x10; // stale bits from an earlier logging period
  const flushes = k.stat('remoteFlushes');
  k.dirtyLog.enable(0);
  assert.ok(k.dirtyLog.isEnabled(0));
  touched.forEach((g, i) => assert.equal(spteAt(vm, leafSptep(v, vm.addr(g))), before[i]! & ~W, `gfn ${g}: only W cleared`));
  assert.deepEqual(bitmapWords(vm), [0, 0]);
  assert.equal(k.stat('remoteFlushes'), flushes + 1);
  assert.ok(flushRequested(vm, 0), 'the vCPU must flush before it re-enters');
});

test('a guest write after enable faults, is fixed by the fast path, and sets its gfn bit', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  inGuest(v, () => v.read64(vm.addr(45)));
  k.dirtyLog.enable(0);
  inGuest(v, () => v.write64(vm.addr(45), 7n));
  assert.equal(v.kv.stat('pfFast'), 1);
  assert.deepEqual(bitmapWords(vm), [0, 1 << (45 - 32)]);
  assert.equal(wbits(vm, v, 45), W | MW);
});

test('get returns the dirty bits, empties the bitmap and write-protects exactly the gfns it returned', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  inGuest(v, () => [3, 4, 40, 41].forEach((g) => v.read64(vm.addr(g))));
  k.dirtyLog.enable(0);
  inGuest(v, () => [3, 40].forEach((g) => v.write64(vm.addr(g), 1n)));
  assert.equal(wbits(vm, v, 3), W | MW);
  const wp = k.stat('writeProtects');
  const out = new Int32Array(2).fill(-1);
  assert.equal(k.dirtyLog.get(0, out), 2);
  assert.deepEqual([...out], [1 << 3, 1 << 8]);
  assert.deepEqual(bitmapWords(vm), [0, 0]);
  assert.equal(k.stat('writeProtects'), wp + 2, 'two gfns write-protected, no more');
  for (const g of [3, 40, 4, 41]) assert.equal(wbits(vm, v, g), MW, `gfn ${g}: write-tracked`);
  // The next writes are logged again.
  inGuest(v, () => v.write64(vm.addr(3), 2n));
  assert.ok(bitmapHas(k, 3));
  assert.equal(k.dirtyLog.get(0, out), 1);
  assert.deepEqual([...out], [1 << 3, 0]);
});

test('get takes and write-protects under mmu_lock, and flushes remote TLBs after the unlock and before it returns', () => {
  const vm = makeVm({ vcpus: 2 });
  const k = vm.host;
  const [v0, v1] = vm.vcpus as [Vcpu, Vcpu];
  inGuest(v0, () => [3, 40, 41].forEach((g) => v0.read64(vm.addr(g))));
  k.dirtyLog.enable(0);
  inGuest(v0, () => v0.write64(vm.addr(3), 1n));
  inGuest(v1, () => v1.write64(vm.addr(40), 1n));
  // Both vCPUs have handled enable's flush; nothing is pending.
  assert.ok(!flushRequested(vm, 0) && !flushRequested(vm, 1));
  const dirtySpteps = [leafSptep(v0, vm.addr(3)), leafSptep(v0, vm.addr(40))];
  const allLeaves = new Set([...dirtySpteps, leafSptep(v0, vm.addr(41))]);
  const bm0 = k.slotBitmap[0]!;
  const reqWords = [k.vcpuWord(0, VCPU_REQUESTS), k.vcpuWord(1, VCPU_REQUESTS)];
  const ops: Array<[number, number]> = [];
  k.mem.hook = { before: (op, a) => void ops.push([op, a]), note() {} };
  const out = new Int32Array(2);
  try {
    k.dirtyLog.get(0, out);
  } finally {
    k.mem.hook = null;
  }
  const at = (p: (op: number, a: number) => boolean): number[] =>
    ops.flatMap(([op, a], i) => (p(op, a) ? [i] : []));
  const locks = at((op, a) => op === OP.lock && a === k.mmuLock);
  const unlocks = at((op, a) => op === OP.unlock && a === k.mmuLock);
  assert.equal(locks.length, 1);
  assert.equal(unlocks.length, 1);
  const [lock, unlock] = [locks[0]!, unlocks[0]!];
  const takes = at((op, a) => op === OP.xchg32 && a >= bm0 && a < bm0 + 2);
  assert.equal(takes.length, 2, 'both non-empty words taken');
  for (const i of takes) assert.ok(i > lock && i < unlock, `bitmap xchg at ${i} is under mmu_lock (${lock}..${unlock})`);
  const protects = at((op, a) => allLeaves.has(a) && (op === OP.xchg64 || op === OP.store64 || op === OP.cmpxchg64));
  assert.deepEqual(
    protects.map((i) => ops[i]![1]).sort(),
    [...dirtySpteps].sort(),
    'exactly the dirty gfns were write-protected',
  );
  for (const i of protects) assert.ok(i > lock && i < unlock, `write-protect at ${i} is under mmu_lock`);
  for (const [v, w] of reqWords.entries()) {
    const flush = at((op, a) => op === OP.fetchOr32 && a === w);
    assert.equal(flush.length, 1, `vCPU ${v} got a flush request`);
    assert.ok(flush[0]! > unlock, `vCPU ${v}'s flush request comes after the unlock`);
    assert.ok(flushRequested(vm, v), `vCPU ${v}'s flush request is set when get returns`);
  }
});

test('get forces a vCPU in guest mode holding a writable TLB entry to flush before get returns', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const gfn = 3;
  inGuest(v, () => v.read64(vm.addr(gfn)));
  k.dirtyLog.enable(0);
  const writableEntry = (): boolean => readTlb(v.kvm, 0).some((e) => e.gfn === gfn && (e.acc & ACC_WRITE_MASK) !== 0);
  v.enterGuest();
  try {
    v.write64(vm.addr(gfn), 1n); // fast path, then the TLB caches a writable entry
    assert.ok(writableEntry(), 'setup: a writable TLB entry');
    const modeWord = k.vcpuWord(0, VCPU_MODE);
    let modeAtWait = -1;
    let entryAtWait = false;
    const fired = interleave(
      k.mem,
      (op, a) => op === OP.waitWhile32 && a === modeWord,
      () => {
        modeAtWait = k.mem.i32[modeWord]! & 3;
        entryAtWait = writableEntry();
        v.read64(vm.addr(gfn)); // the vCPU's next instruction boundary: it sees the kick, exits, flushes, re-enters
      },
    );
    const flushes = v.kv.stat('tlbFlushes');
    const out = new Int32Array(2);
    k.dirtyLog.get(0, out);
    assert.ok(fired(), 'the flusher waited for the vCPU');
    assert.equal(modeAtWait, EXITING_GUEST_MODE, 'the vCPU was kicked out of guest mode');
    assert.equal(entryAtWait, true, 'the writable entry was still there when the flusher started waiting');
    assert.equal(writableEntry(), false, 'no writable entry when get returns');
    assert.equal(v.kv.stat('tlbFlushes'), flushes + 1);
    assert.equal(out[0], 1 << gfn);
    v.write64(vm.addr(gfn), 2n); // faults again: logged
    assert.equal(v.kv.stat('pfFast'), 2);
  } finally {
    v.exitGuest();
  }
  assert.ok(bitmapHas(k, gfn));
});

test('getManual copies the bitmap without clearing it or write-protecting anything', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  inGuest(v, () => [3, 40].forEach((g) => v.read64(vm.addr(g))));
  k.dirtyLog.enable(0);
  inGuest(v, () => [3, 40].forEach((g) => v.write64(vm.addr(g), 1n)));
  const wp = k.stat('writeProtects');
  const flushes = k.stat('remoteFlushes');
  const out = new Int32Array(2);
  assert.equal(k.dirtyLog.getManual(0, out), 2);
  assert.deepEqual([...out], [1 << 3, 1 << 8]);
  assert.deepEqual(bitmapWords(vm), [1 << 3, 1 << 8], 'bitmap unchanged');
  assert.equal(wbits(vm, v, 3), W | MW);
  assert.equal(wbits(vm, v, 40), W | MW);
  assert.equal(k.stat('writeProtects'), wp);
  assert.equal(k.stat('remoteFlushes'), flushes);
});

test('clear clears only the bits that were set, write-protects those gfns, and reports them back', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  inGuest(v, () => [3, 5, 36].forEach((g) => v.write64(vm.addr(g), 1n)));
  k.dirtyLog.enable(0, true); // every bit set, SPTEs still writable
  const bits = new Int32Array([1 << 3]);
  assert.equal(k.dirtyLog.clear(0, 0, bits), 1);
  assert.equal(wbits(vm, v, 3), MW, 'gfn 3 write-protected');
  assert.equal(wbits(vm, v, 5), W | MW, 'gfn 5 untouched');
  assert.deepEqual(bitmapWords(vm), [~(1 << 3), -1]);
  const wp = k.stat('writeProtects');
  const again = new Int32Array([(1 << 3) | (1 << 5)]);
  assert.equal(k.dirtyLog.clear(0, 0, again), 1, 'bit 3 was already clear');
  assert.deepEqual([...again], [1 << 5], 'the mask reports what was cleared');
  assert.equal(k.stat('writeProtects'), wp + 1, 'only gfn 5 write-protected');
  assert.equal(wbits(vm, v, 5), MW);
  assert.deepEqual(bitmapWords(vm), [~((1 << 3) | (1 << 5)), -1]);
  // A range starting at page 32 touches only the second word.
  assert.equal(k.dirtyLog.clear(0, 32, new Int32Array([1 << 4])), 1);
  assert.equal(wbits(vm, v, 36), MW);
  assert.deepEqual(bitmapWords(vm), [~((1 << 3) | (1 << 5)), ~(1 << 4)]);
});

test('clear rejects a first page that is not a multiple of 32, and a range past the slot', () => {
  const vm = makeVm();
  const k = vm.host;
  k.dirtyLog.enable(0, true);
  assert.throws(() => k.dirtyLog.clear(0, 5, new Int32Array([1])), KvmmuError);
  assert.throws(() => k.dirtyLog.clear(0, 32, new Int32Array([1, 1])), KvmmuError);
  assert.deepEqual(bitmapWords(vm), [-1, -1], 'nothing cleared');
});

test('enable with initiallySet sets every bit of the slot (none past its end) and write-protects nothing', () => {
  const vm = makeVm({ dataPages: 40 });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  inGuest(v, () => [3, 39].forEach((g) => v.write64(vm.addr(g), 1n)));
  const wp = k.stat('writeProtects');
  const flushes = k.stat('remoteFlushes');
  k.dirtyLog.enable(0, true);
  assert.deepEqual(bitmapWords(vm), [-1, 0xff]);
  assert.equal(k.stat('writeProtects'), wp);
  assert.equal(k.stat('remoteFlushes'), flushes);
  assert.equal(wbits(vm, v, 3), W | MW);
  assert.equal(wbits(vm, v, 39), W | MW);
});

test('disable stops logging: later writes set no bits, and get then throws', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  inGuest(v, () => v.read64(vm.addr(3)));
  k.dirtyLog.enable(0);
  k.dirtyLog.disable(0);
  assert.equal(k.dirtyLog.isEnabled(0), false);
  inGuest(v, () => [3, 4].forEach((g) => v.write64(vm.addr(g), 1n))); // fast path for 3, slow path for 4
  assert.equal(v.kv.stat('pfFast'), 1);
  assert.deepEqual(bitmapWords(vm), [0, 0]);
  assert.throws(() => k.dirtyLog.get(0, new Int32Array(2)), KvmmuError);
});

test('get and getManual on a slot that does not log dirty pages throw KvmmuError', () => {
  const vm = makeVm();
  const k = vm.host;
  assert.throws(() => k.dirtyLog.get(0, new Int32Array(2)), KvmmuError);
  assert.throws(() => k.dirtyLog.getManual(0, new Int32Array(2)), KvmmuError);
  assert.throws(() => k.dirtyLog.get(1, new Int32Array(2)), KvmmuError, 'no such slot');
});
