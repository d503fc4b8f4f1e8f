// Sequential replays of the TDP MMU's races: one thread stopped at an exact access-layer operation, another's steps run there; each guard off shows the failure, on shows none.
//
// As test/kvm/seed-races.test.ts does for the 2012 races. Where the guard is a
// lock the other thread would wait for, the replay cannot run it inside the
// window on one OS thread; it checks instead that the lock is not available
// there, and runs the other thread after the window.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ALL_GUARDS, GUARDS } from '../../src/kvm/config';
import { MMU_SEQ } from '../../src/kvm/kvm';
import { SP_STATE } from '../../src/kvm/mmu-page';
import { PFERR_WRITE_MASK } from '../../src/x86/pte';
import { isShadowPresentPte, spteToChild } from '../../src/x86/spte';
import { NOTE } from '../../src/shm/access';
import { region } from '../../src/shm/layout';
import { OP, inGuest, interleave, leafSptep, makeVm } from '../helpers/vm';

const without = (g: keyof typeof GUARDS): number => ALL_GUARDS & ~GUARDS[g];

// ---- rcu-deferred-free: a table freed while the fast path walks it ----

/** One vCPU that has read page A, with dirty logging on: A's SPTE is write-protected, so the next write takes the fast path. */
function fastPathVm(guards: number) {
  const vm = makeVm({ mode: 'tdp', vcpus: 1, dataPages: 64, guards });
  const v = vm.vcpus[0]!;
  const A = 3;
  inGuest(v, () => v.read64(vm.addr(A)));
  vm.host.dirtyLog.enable(0);
  return { vm, v, k: vm.host, A, leaf: leafSptep(v, vm.addr(A)) };
}

function rcuFreeRace(guards: number) {
  const { vm, v, k, A, leaf } = fastPathVm(guards);
  const leafTable = k.pages.spOf(leaf);
  let freedUnderWalker = false;
  let queued = 0;
  // The fast path has read A's leaf, inside its RCU read section (the hardware walk read it first, before the
  // exit); the host zaps everything now.
  const fired = interleave(
    v.mem,
    (op, a) => op === OP.load64 && a === leaf,
    () => {
      k.mmu.kvmMmuZapAll();
      freedUnderWalker = k.mem.i32[k.pages.hdr(leafTable, SP_STATE)] === 0;
      queued = k.tdp.rcu.peekQueued().length;
    },
    { at: 'after', nth: 2 },
  );
  inGuest(v, () => v.write64(vm.addr(A), 7n));
  assert.ok(fired(), 'the fast path reached the leaf');
  k.tdp.reclaim(); // the walker has left: a grace period can end
  return { freedUnderWalker, queued, freedAfter: k.mem.i32[k.pages.hdr(leafTable, SP_STATE)] === 0, value: k.host.readUser64(A, 0) };
}

test('tdp rcu-deferred-free off: the zap frees the leaf table while the fast path is still inside it', () => {
  const r = rcuFreeRace(without('rcu-deferred-free'));
  assert.equal(r.freedUnderWalker, true);
  assert.equal(r.queued, 0, 'nothing waited for a grace period');
});

test('tdp rcu-deferred-free on: the torn-down tables wait on RCU until the walker leaves, then are freed', () => {
  const r = rcuFreeRace(ALL_GUARDS);
  assert.equal(r.freedUnderWalker, false);
  assert.ok(r.queued >= 1, 'the leaf table (and those above it) queued for a grace period');
  assert.equal(r.freedAfter, true);
  assert.equal(r.value, 7n);
});

// ---- lockless-walk-sync: the fast path's RCU read section ----

/**
 * vCPU 0's fast path walks down to A's leaf table while the host zaps everything. With the read section (guard
 * on) nothing in the walk lets a grace period end; without it, the kernel may switch the task out between two
 * tables, and every grace period may end meanwhile: the replay runs the zap while the vCPU is switched out
 * before its step into the leaf table (its third, after those into the level-3 and level-2 tables).
 */
function locklessWalkRace(guards: number) {
  const { vm, v, k, A, leaf } = fastPathVm(guards);
  const leafTable = k.pages.spOf(leaf);
  const rcu = region(k.layout, 'kvm.rcu');
  const inRcu = (a: number): boolean => a >= rcu.off / 4 && a < (rcu.off + rcu.bytes) / 4;
  let rcuStores = 0;
  let freedWhileOut = false;
  let readFreed = false;
  // The vCPU's stores into the RCU region before the zap are its online flag's: out and back in at each step down.
  const fired = interleave(
    v.mem,
    (op, a) => op === OP.store32 && inRcu(a) && ++rcuStores === 5,
    () => {
      k.mmu.kvmMmuZapAll();
      freedWhileOut = k.mem.i32[k.pages.hdr(leafTable, SP_STATE)] === 0;
      // Whether the walk then reads the freed table: the next load of an entry of it.
      interleave(v.mem, (op, a) => op === OP.load64 && k.pages.spOf(a) === leafTable, () => (readFreed = k.mem.i32[k.pages.hdr(leafTable, SP_STATE)] === 0));
    },
    { at: 'after' },
  );
  inGuest(v, () => v.write64(vm.addr(A), 7n));
  v.mem.hook = null;
  return { fired: fired(), rcuStores, freedWhileOut, readFreed };
}

test('tdp lockless-walk-sync off: switched out between two tables, the fast path then reads the leaf table the zap freed meanwhile', () => {
  const r = locklessWalkRace(without('lockless-walk-sync'));
  assert.ok(r.fired, 'the walk was switched out before its step into the leaf table');
  assert.equal(r.freedWhileOut, true, 'every grace period ended while the vCPU was out: the leaf table is free');
  assert.equal(r.readFreed, true);
});

test('tdp lockless-walk-sync on: the fast path touches no RCU word and is never switched out; the zapped tables wait', () => {
  const r = locklessWalkRace(ALL_GUARDS);
  assert.equal(r.fired, false);
  assert.equal(r.rcuStores, 0, "a vCPU's read section is free (QSBR): no store into the RCU region");
});

// ---- write-lock-exclusion: the notifier's zap beside a fault under the read lock ----

function zapVsFaultRace(guards: number) {
  const vm = makeVm({ mode: 'tdp', vcpus: 1, dataPages: 64, swapSlots: 8, guards });
  const v = vm.vcpus[0]!;
  const k = vm.host;
  const X = 9;
  const Z = 12;
  k.host.writeUser64(X, 0, 0x1111n); // present in the host, no SPTE yet
  let ranInside = false;
  let excluded = false;
  // The fault has looked up X's frame, taken mmu_lock for read and found no invalidation since its lookup (its
  // second read of mmu_invalidate_seq): the host swaps X out and reuses the frame.
  const swap = (): void => {
    k.host.swapOut(X);
    k.host.swapIn(Z);
  };
  const fired = interleave(
    v.mem,
    (op, a) => op === OP.load32 && a === k.mmuBase + MMU_SEQ,
    () => {
      if (k.guardWriteLockExclusion) {
        // The notifier takes mmu_lock for write: with the fault's read lock held it would wait here.
        excluded = k.mem.rwReaders(k.mmuLock) > 0;
        return;
      }
      ranInside = true;
      swap();
    },
    { at: 'after', nth: 2 },
  );
  inGuest(v, () => v.write64(vm.addr(X), 0x2222n));
  assert.ok(fired());
  if (!ranInside) swap();
  return { ranInside, excluded, z: k.host.readUser64(Z, 0), x: k.host.readUser64(X, 0) };
}

test('tdp write-lock-exclusion off: the zap runs beside the fault, which maps the frame the host has just unmapped', () => {
  const r = zapVsFaultRace(without('write-lock-exclusion'));
  assert.equal(r.ranInside, true);
  // The fault's reference kept the frame from Z; it is freed when the fault drops it, and the guest's write goes there.
  assert.notEqual(r.x, 0x2222n, "the guest's write to X is lost");
});

test('tdp write-lock-exclusion on: the zap cannot run inside the fault, and the write stays X\'s', () => {
  const r = zapVsFaultRace(ALL_GUARDS);
  assert.equal(r.excluded, true, 'the fault holds mmu_lock for read there');
  assert.equal(r.z, 0n);
  assert.equal(r.x, 0x2222n);
});

// ---- obsolete-root-retry: a fault links tables into a root already invalidated and zapped ----

function obsoleteRootRace(guards: number) {
  const vm = makeVm({ mode: 'tdp', vcpus: 1, dataPages: 64, guards });
  const v = vm.vcpus[0]!;
  const k = vm.host;
  const B = 6;
  const oldRoot = v.kv.root;
  // The fault has looked up B's pfn (its read of mmu_invalidate_seq came first); a memslot update zaps fast now.
  const fired = interleave(
    v.mem,
    (op) => op === OP.readLock,
    () => k.mmu.kvmMmuZapAllFast(),
  );
  const ret = v.kvm.mmu.kvmMmuPageFault(v.kv, vm.addr(B), PFERR_WRITE_MASK);
  assert.ok(fired());
  const linked = k.mem.u64[k.pages.sptep(oldRoot, 0)]!;
  return { ret, linked, child: linked === 0n ? -1 : spteToChild(linked), invalid: k.tdp.isObsoleteRoot(oldRoot) };
}

test('tdp obsolete-root-retry off: the fault links a table into the invalidated root after its zap', () => {
  const r = obsoleteRootRace(without('obsolete-root-retry'));
  assert.equal(r.invalid, true);
  assert.notEqual(r.linked, 0n, 'a table hangs off the zapped root: it leaks when the root is freed');
});

test('tdp obsolete-root-retry on: the fault sees the obsolete root and retries; the zapped root stays empty', () => {
  const r = obsoleteRootRace(ALL_GUARDS);
  assert.equal(r.invalid, true);
  assert.equal(r.linked, 0n);
  assert.equal(r.ret, 1 /* RET_PF_RETRY */);
});



// ---- freeze-removed-pt: a fault sets an entry of a table another fault is tearing down, both under the read lock ----

function removedPtRace(guards: number) {
  const vm = makeVm({ mode: 'tdp', vcpus: 2, dataPages: 512, hugePages: true, eagerSplit: false, guards });
  const [v0, v1] = [vm.vcpus[0]!, vm.vcpus[1]!];
  const k = vm.host;
  k.dirtyLog.enable(0);
  inGuest(v0, () => v0.write64(vm.addr(3), 1n)); // logging on: page 3 mapped 4 KiB, in table T
  const T = k.pages.spOf(leafSptep(v0, vm.addr(3)));
  const entry5 = k.pages.sptep(T, 5);
  // vCPU 0's fault on page 5 began while logging was on (4 KiB), walked into T, and is about to set T's entry 5.
  // Logging goes off (its flag; the rest of the disable waits for vCPU 0's SRCU section), and vCPU 1's fault on
  // page 9 maps the 2 MiB huge, tearing T down.
  let removedBefore = false;
  let heldBack = false;
  let atFree: bigint | null = null;
  const fired = interleave(
    v0.mem,
    (op, a) => op === OP.cmpxchg64 && a === entry5,
    () => {
      k.mem.fetchAnd32(k.slotFlagsWord(0), ~1);
      inGuest(v1, () => v1.read64(vm.addr(9)));
      removedBefore = k.tdp.rcu.peekQueued().includes(T);
      // The vCPUs are RCU's QSBR readers: T's grace period waits for vCPU 0, in its fault since T was queued.
      k.tdp.reclaim();
      heldBack = k.tdp.rcu.peekQueued().includes(T);
    },
  );
  inGuest(v0, () => v0.read64(vm.addr(5)));
  assert.ok(fired(), "vCPU 0's fault reached T's entry 5");
  assert.ok(removedBefore, 'T was torn down and queued for a grace period before the cmpxchg');
  assert.ok(heldBack, "T's grace period did not end while vCPU 0 was in its fault");
  // vCPU 0 has entered the guest since (and vCPU 1 after its fault): the next poll frees T. What is left in entry 5 then.
  interleave(k.mem, () => false, () => (atFree = k.mem.u64[entry5]!), { note: (kind, a) => kind === NOTE.spFree && a === T });
  k.tdp.reclaim();
  k.mem.hook = null;
  assert.notEqual(atFree, null, 'T was freed once both vCPUs had passed a quiescent state');
  return { leftPresent: isShadowPresentPte(atFree!), value: v0.read64(vm.addr(3)) };
}

test('tdp freeze-removed-pt off: the fault sets an entry of the table already torn down, and the mapping vanishes with it', () => {
  const r = removedPtRace(without('freeze-removed-pt'));
  assert.equal(r.leftPresent, true);
});

test('tdp freeze-removed-pt on: the entry is frozen, the fault retries and finds the huge SPTE', () => {
  const r = removedPtRace(ALL_GUARDS);
  assert.equal(r.leftPresent, false);
  assert.equal(r.value, 1n);
});
