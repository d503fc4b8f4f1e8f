// The pte_list (Rmaps): exact membership through the single-word, descriptor and multi-descriptor forms, removal errors, and the descriptor pool.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Kvm } from '../../src/kvm/kvm';
import { makeVm } from '../helpers/vm';

/** Descriptors in a direct-mode VM's pool (rmap.ts: 256) and sptep slots per descriptor. */
const POOL = 256;
const SLOTS = 7;

function withLock<T>(k: Kvm, f: () => T): T {
  k.mem.lock(k.mmuLock);
  try {
    return f();
  } finally {
    k.mem.unlock(k.mmuLock);
  }
}

function members(k: Kvm, head: number): number[] {
  const out: number[] = [];
  out.length = k.rmaps.collect(head, out);
  return out.sort((a, b) => a - b);
}

/** The head word's form: 'empty', 'single' (sptep + 1) or 'chain' (a descriptor). */
function form(k: Kvm, head: number): string {
  const h = k.mem.i32[head]!;
  return h === 0 ? 'empty' : h > 0 ? 'single' : 'chain';
}

/** Deterministic shuffle (LCG), so a failure reproduces. */
function shuffled(xs: number[], seed: number): number[] {
  const a = [...xs];
  let s = seed;
  for (let i = a.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    const j = s % (i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

test('the rmap keeps exact membership from single word through one and several descriptors, and back to a single word', () => {
  const vm = makeVm();
  const k = vm.host;
  const head = k.rmaps.rmapHead(5);
  const spteps = Array.from({ length: 20 }, (_, i) => 4096 + i * 3); // 20 entries: three descriptors
  withLock(k, () => {
    assert.equal(form(k, head), 'empty');
    assert.ok(k.rmaps.isEmpty(head));
    const expected: number[] = [];
    spteps.forEach((p, i) => {
      assert.equal(k.rmaps.add(head, p), true);
      expected.push(p);
      assert.deepEqual(members(k, head), [...expected].sort((a, b) => a - b), `after adding ${i + 1}`);
      assert.equal(form(k, head), i === 0 ? 'single' : 'chain');
    });
    assert.ok(k.mem.i32[head]! < 0, 'a chain head names a descriptor');
    const order = shuffled(spteps, 7);
    const left = new Set(spteps);
    order.forEach((p, i) => {
      k.rmaps.remove(head, p);
      left.delete(p);
      assert.deepEqual(members(k, head), [...left].sort((a, b) => a - b), `after removing ${i + 1}`);
      if (left.size === 1) {
        assert.equal(form(k, head), 'single', 'one entry left: back to the one-word form');
        assert.equal(k.mem.i32[head], [...left][0]! + 1);
      } else if (left.size > 1) assert.equal(form(k, head), 'chain');
    });
    assert.equal(form(k, head), 'empty');
    assert.ok(k.rmaps.isEmpty(head));
  });
});

test('two entries make a descriptor; removing either returns the head to the single-word form of the other', () => {
  const vm = makeVm();
  const k = vm.host;
  const head = k.rmaps.rmapHead(6);
  withLock(k, () => {
    for (const [keep, drop] of [
      [100, 200],
      [200, 100],
    ] as const) {
      k.rmaps.add(head, 100);
      k.rmaps.add(head, 200);
      assert.equal(form(k, head), 'chain');
      k.rmaps.remove(head, drop);
      assert.equal(k.mem.i32[head], keep + 1);
      assert.deepEqual(members(k, head), [keep]);
      k.rmaps.remove(head, keep);
      assert.equal(form(k, head), 'empty');
    }
  });
});

test('removing an sptep that is not on the list throws, in every form, and changes nothing', () => {
  const vm = makeVm();
  const k = vm.host;
  const head = k.rmaps.rmapHead(7);
  withLock(k, () => {
    assert.throws(() => k.rmaps.remove(head, 42), /not in the list/, 'empty list');
    k.rmaps.add(head, 10);
    assert.throws(() => k.rmaps.remove(head, 42), /not in the list/, 'single entry');
    assert.deepEqual(members(k, head), [10]);
    for (let i = 1; i < 12; i++) k.rmaps.add(head, 10 + i);
    assert.throws(() => k.rmaps.remove(head, 42), /not in the list/, 'chain of descriptors');
    assert.deepEqual(members(k, head), Array.from({ length: 12 }, (_, i) => 10 + i));
  });
});

test('lists are independent: entries added to one head never show up on another', () => {
  const vm = makeVm();
  const k = vm.host;
  const heads = [k.rmaps.rmapHead(1), k.rmaps.rmapHead(2), k.rmaps.rmapHead(3)];
  withLock(k, () => {
    for (let i = 0; i < 30; i++) assert.ok(k.rmaps.add(heads[i % 3]!, 1000 + i));
    heads.forEach((h, j) =>
      assert.deepEqual(
        members(k, h),
        Array.from({ length: 10 }, (_, i) => 1000 + 3 * i + j),
      ),
    );
    for (let i = 0; i < 30; i += 2) k.rmaps.remove(heads[i % 3]!, 1000 + i);
    heads.forEach((h, j) =>
      assert.deepEqual(
        members(k, h),
        Array.from({ length: 10 }, (_, i) => 1000 + 3 * i + j).filter((p) => (p - 1000) % 2 === 1),
      ),
    );
  });
});

test('add reports false and changes nothing when the descriptor pool is empty; freed slots and descriptors are reused', () => {
  const vm = makeVm();
  const k = vm.host;
  const big = k.rmaps.rmapHead(10);
  const other = k.rmaps.rmapHead(11);
  const capacity = POOL * SLOTS;
  const all = Array.from({ length: capacity }, (_, i) => 10_000 + i);
  withLock(k, () => {
    assert.ok(k.rmaps.add(other, 1));
    for (const p of all) assert.equal(k.rmaps.add(big, p), true);
    assert.equal(members(k, big).length, capacity);
    // The pool is exhausted: a full chain cannot grow, and a single entry cannot become a descriptor.
    assert.equal(k.rmaps.add(big, 99_999), false);
    assert.equal(members(k, big).length, capacity, 'the full list is unchanged');
    assert.equal(k.rmaps.add(other, 2), false);
    assert.equal(k.mem.i32[other], 2, 'the single entry is unchanged');
    assert.deepEqual(members(k, other), [1]);
    // A removal frees a slot in the chain (not a descriptor): the big list can take one more, the other cannot.
    k.rmaps.remove(big, all[100]!);
    assert.equal(k.rmaps.add(other, 2), false);
    assert.equal(k.rmaps.add(big, 99_999), true);
    assert.ok(members(k, big).includes(99_999) && !members(k, big).includes(all[100]!));
    // Emptying the big list returns every descriptor to the pool.
    for (const p of members(k, big)) k.rmaps.remove(big, p);
    assert.ok(k.rmaps.isEmpty(big));
    assert.equal(k.rmaps.add(other, 2), true);
    k.rmaps.remove(other, 2);
    for (const p of all) assert.equal(k.rmaps.add(big, p), true, 'the whole pool is available again');
  });
});

test('with debug locks on, the rmap refuses to run unless this handle holds mmu_lock', () => {
  const vm = makeVm();
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const head = k.rmaps.rmapHead(3);
  assert.throws(() => k.rmaps.add(head, 1), /mmu_lock is not held by thread -2/);
  v.kvm.mem.lock(v.kvm.mmuLock); // held by vCPU 0's handle, not the host's
  try {
    assert.throws(() => k.rmaps.collect(head, []), /holder: 0/);
    assert.equal(v.kvm.rmaps.add(head, 1), true, "the holder's own handle may");
    v.kvm.rmaps.remove(head, 1);
  } finally {
    v.kvm.mem.unlock(v.kvm.mmuLock);
  }
});
