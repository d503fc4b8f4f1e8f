// Sequential replays of the TDP MMU's races: one thread stopped at an exact access-layer operation, another's steps run there; each guard off shows the failure, on shows none.
//
// As test/kvm/seed-races.test.ts does for the 2012 races. Where the guard is a
// lock the other thread would wait for, the replay cannot run it inside the
// window on one OS thread; it checks instead that the lock is not available
// there, and runs the other thread after the window.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ALL_GUARDS, GUARDS } from '../../src/kvm/config';
import { KVM_REQ_TLB_FLUSH, MMU_SEQ, VCPU_REQUESTS } from '../../src/kvm/kvm';
import { SP_STATE } from '../../src/kvm/mmu-page';
import { PFERR_WRITE_MASK } from '../../src/x86/pte';
import { isDirtySpte, isMmuWritableSpte, isShadowPresentPte, isWritablePte, spteToChild, spteToPfn } from '../../src/x86/spte';
import { readTlb } from '../../src/vcpu/vcpu';
import { NOTE } from '../../src/shm/access';
import { region } from '../../src/shm/layout';
import { OP, inGuest, interleave, leafSptep, makeVm } from '../helpers/vm';

const without = (g: keyof typeof GUARDS): number => ALL_GUARDS & ~GUARDS[g];

// ---- rcu-deferred-free: a table freed while the fast path walks it ----

/** A TDP-mode VM of one vCPU and 64 data pages, with swap slots for the host to swap pages out if `swap`. */
function tdpVm(guards: number, swap = false) {
  const vm = makeVm({ mode: 'tdp', vcpus: 1, dataPages: 64, ...(swap ? { swapSlots: 8 } : {}), guards });
  return { vm, v: vm.vcpus[0]!, k: vm.host };
}

/** One vCPU that has read page A, with dirty logging on: A's SPTE is write-protected, so the next write takes the fast path. */
function fastPathVm(guards: number) {
  const { vm, v, k } = tdpVm(guards);
  const A = 3;
  inGuest(v, () => v.read64(vm.addr(A)));
  k.dirtyLog.enable(0);
  return { vm, v, k, A, leaf: leafSptep(v, vm.addr(A)) };
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
  const { vm, v, k } = tdpVm(guards, true);
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
  const { vm, v, k } = tdpVm(guards);
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

// ---- atomic-volatile-clear: the notifier's zap under the write lock beside the fast path (tdp-volatile-xchg, ba3a6120a4e7) ----

function volatileClearRace(guards: number) {
  const { vm, v, k } = tdpVm(guards, true);
  const X = 3;
  inGuest(v, () => v.write64(vm.addr(X), 1n));
  k.host.swapOut(X); // written back: the swap copy holds 1
  k.host.swapIn(X); // a clean frame; the swap copy stays valid
  inGuest(v, () => v.read64(vm.addr(X))); // SPTE: W, A, no D
  k.dirtyLog.enable(0); // SPTE: no W, A, no D, MMU-writable
  const leaf = leafSptep(v, vm.addr(X));
  const writebacks = k.host.stat('writebacks');
  let dirtyBeforeClear = false;
  // The swap-out's zap (kvm_tdp_mmu_zap_leafs, mmu_lock held for write) has read X's leaf: the fast path sets W
  // (it takes no lock) and the guest's write sets D before the zap writes 0. Off, a read-only accessed SPTE has no
  // volatile bits and the zap stores 0 plainly, reporting the D it read; on, MMU-writable counts and it uses xchg.
  const fired = interleave(
    k.mem,
    (op, a) => op === OP.load64 && a === leaf,
    () => {
      inGuest(v, () => v.write64(vm.addr(X), 2n));
      dirtyBeforeClear = isDirtySpte(k.mem.u64[leaf]!);
    },
    { at: 'after' },
  );
  k.host.swapOut(X);
  assert.ok(fired(), "the zap read X's leaf");
  return {
    dirtyBeforeClear,
    fast: v.kv.stat('pfFast'),
    cleared: k.mem.u64[leaf]!,
    wroteBack: k.host.stat('writebacks') - writebacks,
    value: k.host.readUser64(X, 0),
  };
}

test('tdp atomic-volatile-clear off: the zap stores 0 over the D bit set since its read; the swap-out skips the write-back and the write is lost', () => {
  const r = volatileClearRace(without('atomic-volatile-clear'));
  assert.equal(r.fast, 1, 'the fast path made the SPTE writable inside the window');
  assert.equal(r.dirtyBeforeClear, true, "the guest's write set D before the zap's store");
  assert.equal(r.cleared, 0n);
  assert.equal(r.wroteBack, 0, 'the frame looked clean: not written back');
  assert.equal(r.value, 1n, 'X reads the old swap copy: the write of 2 is lost');
});

test('tdp atomic-volatile-clear on: the zap clears an MMU-writable SPTE with xchg, sees D, and the frame is written back', () => {
  const r = volatileClearRace(ALL_GUARDS);
  assert.equal(r.fast, 1);
  assert.equal(r.dirtyBeforeClear, true);
  assert.equal(r.cleared, 0n);
  assert.equal(r.wroteBack, 1);
  assert.equal(r.value, 2n);
});

// ---- wrprot-mmu-writable: write-tracking a read-only, MMU-writable SPTE (tdp-pt-wrprot, 7c8a4742c4ab) ----

function wrprotTrackRace(guards: number) {
  const { vm, v, k } = tdpVm(guards);
  const X = 5;
  inGuest(v, () => v.write64(vm.addr(X), 1n));
  k.dirtyLog.enable(0); // X's SPTE: no W, MMU-writable
  const leaf = leafSptep(v, vm.addr(X));
  // The guest's write to X exited on the read-only SPTE, and the fast path has read it (the hardware walk read it
  // first): not writable, MMU-writable. KVM starts tracking writes to X (a nested guest's page table) now, before
  // the fast path's cmpxchg.
  const fired = interleave(
    v.mem,
    (op, a) => op === OP.load64 && a === leaf,
    () => k.mmu.kvmWriteTrackAddGfn(X),
    { at: 'after', nth: 2 },
  );
  inGuest(v, () => v.write64(vm.addr(X) + 8, 2n));
  assert.ok(fired(), "the fast path read X's leaf");
  const spte = k.mem.u64[leaf]!;
  return {
    tracked: k.mem.i32[k.pages.trackBase + k.gfnToHvpn(X)]! > 0,
    writable: isWritablePte(spte),
    mmuWritable: isMmuWritableSpte(spte),
    // A writable, dirty TLB entry: the guest's next writes to X need no exit at all.
    writableTlb: readTlb(v.kvm, 0).some((e) => e.gfn === X && (e.acc & 2) !== 0 && e.dirty),
    fast: v.kv.stat('pfFast'),
    fastRetries: v.kv.stat('pfFastRetry'),
    emulated: v.kv.stat('pfEmulate'),
    value: k.host.readUser64(X, 8),
  };
}

test('tdp wrprot-mmu-writable off: tracking skips the read-only SPTE, which stays MMU-writable; the fast path makes it writable and the guest writes the tracked page unseen', () => {
  const r = wrprotTrackRace(without('wrprot-mmu-writable'));
  assert.equal(r.tracked, true);
  assert.equal(r.fast, 1, "the fast path's cmpxchg succeeded after tracking began");
  assert.equal(r.fastRetries, 0);
  assert.equal(r.writable, true, 'a writable SPTE maps the tracked gfn');
  assert.equal(r.mmuWritable, true);
  assert.equal(r.emulated, 0, 'the write to X was not emulated');
  assert.equal(r.writableTlb, true, "vCPU 0's TLB now lets the guest write X with no exit");
});

test('tdp wrprot-mmu-writable on: tracking clears W and MMU-writable, the fast path loses its cmpxchg, and the write to X is emulated', () => {
  const r = wrprotTrackRace(ALL_GUARDS);
  assert.equal(r.tracked, true);
  assert.equal(r.fastRetries, 1, "the fast path's cmpxchg found the SPTE changed");
  assert.equal(r.fast, 0);
  assert.equal(r.writable, false);
  assert.equal(r.mmuWritable, false);
  assert.equal(r.emulated, 1, 'the write was emulated: KVM saw it');
  assert.equal(r.writableTlb, false);
  assert.equal(r.value, 2n);
});

// ---- notifier-retry: a fault maps a pfn an invalidation removed after the fault looked it up (notifier-race, tdp mode) ----

function notifierRetryRace(guards: number) {
  const { vm, v, k } = tdpVm(guards, true);
  const X = 9;
  const Z = 12;
  k.host.writeUser64(X, 0, 0x1111n); // present in the host, no SPTE yet
  let looked = -1;
  // The fault has read mmu_invalidate_seq and looked up (and pinned) X's frame; before it takes mmu_lock for read,
  // the host swaps X out: the invalidation finds no SPTE, and the sequence moves at its end.
  const fired = interleave(
    v.mem,
    (op, a) => op === OP.readLock && a === k.mmuLock,
    () => {
      looked = k.host.peekPfn(X);
      k.host.swapOut(X);
    },
  );
  inGuest(v, () => v.write64(vm.addr(X), 0x2222n));
  assert.ok(fired(), 'the fault reached mmu_lock');
  const mapped = spteToPfn(k.mem.u64[leafSptep(v, vm.addr(X))]!);
  const hostX = k.host.peekPfn(X);
  k.host.swapIn(Z); // takes the most recently freed frame
  inGuest(v, () => v.write64(vm.addr(X), 0x3333n));
  return { looked, mapped, hostX, retries: v.kv.stat('pfRetry'), z: k.host.readUser64(Z, 0), x: k.host.readUser64(X, 0) };
}

test('tdp notifier-retry off: the fault maps the frame the host unmapped after its lookup, and the guest then writes gfn Z', () => {
  const r = notifierRetryRace(without('notifier-retry'));
  assert.equal(r.retries, 0);
  assert.equal(r.mapped, r.looked, 'the SPTE maps the frame looked up before the invalidation');
  assert.equal(r.hostX, -1, 'which the host no longer maps for X');
  assert.equal(r.z, 0x3333n, "the guest's write to X landed in the frame now backing Z");
  assert.equal(r.x, 0x1111n, "X has neither of the guest's writes");
});

test('tdp notifier-retry on: the fault sees mmu_invalidate_seq move, retries, and maps the frame the host maps now', () => {
  const r = notifierRetryRace(ALL_GUARDS);
  assert.equal(r.retries, 1);
  assert.notEqual(r.hostX, -1);
  assert.equal(r.mapped, r.hostX);
  assert.equal(r.z, 0n, 'Z is untouched');
  assert.equal(r.x, 0x3333n);
});

// ---- flush-before-yield: a range zap yields mmu_lock between roots with a flush owed (zap-yield-flush, a835429cda91) ----

function zapYieldRace(guards: number) {
  const vm = makeVm({ mode: 'tdp', vcpus: 2, dataPages: 64, swapSlots: 8, guards });
  const [v0, v1] = [vm.vcpus[0]!, vm.vcpus[1]!];
  const k = vm.host;
  const P = 3;
  v1.enterSmm(); // vCPU 1's SMM root: a second root, after vCPU 0's in the list
  inGuest(v0, () => v0.write64(vm.addr(P), 1n)); // vCPU 0's root maps P; its TLB holds P, writable and dirty
  const leaf = leafSptep(v0, vm.addr(P));
  let zapped = false;
  let flushPending = false;
  let freed = -1;
  let tlbPfn = -1;
  let hostPfn = -1;
  let exits = 0;
  // kvm_zap_gfn_range has zapped P in vCPU 0's root and, before the SMM root, drops mmu_lock. The host swaps P out:
  // its invalidation finds no SPTE for P and flushes nothing; the frame is written back and freed. Then vCPU 0
  // enters the guest and writes P. (vCPU 0 is outside guest mode during the zap, so a flush leaves it a request,
  // handled on entry, and waits for nothing.)
  const fired = interleave(
    k.mem,
    (op, a) => op === OP.writeUnlock && a === k.mmuLock,
    () => {
      zapped = k.mem.u64[leaf] === 0n;
      freed = k.host.peekPfn(P);
      k.host.swapOut(P);
      flushPending = (k.mem.i32[k.vcpuWord(0, VCPU_REQUESTS)]! & KVM_REQ_TLB_FLUSH) !== 0;
      const before = v0.kv.stat('exits');
      inGuest(v0, () => v0.write64(vm.addr(P), 2n));
      exits = v0.kv.stat('exits') - before - 1; // beyond the inGuest's own
      tlbPfn = readTlb(v0.kvm, 0).find((e) => e.gfn === P)?.pfn ?? -1;
      hostPfn = k.host.peekPfn(P);
    },
    { at: 'after' },
  );
  k.kvmZapGfnRange(P, P + 1);
  assert.ok(fired(), 'the zap yielded mmu_lock between the roots');
  return { zapped, flushPending, freed, tlbPfn, hostPfn, exits, value: k.host.readUser64(P, 0) };
}

test('tdp flush-before-yield off: the zap yields with its flush owed; after the unmap vCPU 0 writes P through its stale TLB entry into the freed frame', () => {
  const r = zapYieldRace(without('flush-before-yield'));
  assert.equal(r.zapped, true, "P's leaf in vCPU 0's root was zapped before the yield");
  assert.equal(r.flushPending, false, 'no flush request reached vCPU 0 before the unmap returned');
  assert.equal(r.hostPfn, -1, 'the host no longer maps P');
  assert.equal(r.tlbPfn, r.freed, "but vCPU 0's TLB still maps it, to the frame the swap-out freed");
  assert.equal(r.exits, 0, 'the write needed no exit: it went through the TLB');
  assert.equal(r.value, 1n, 'the write of 2 is lost: P holds what was written back');
});

test('tdp flush-before-yield on: the zap flushes before it yields; vCPU 0 flushes its TLB on entry, faults P back in, and the write stays P\'s', () => {
  const r = zapYieldRace(ALL_GUARDS);
  assert.equal(r.zapped, true);
  assert.equal(r.flushPending, true);
  assert.ok(r.exits >= 1, 'the write faulted');
  assert.notEqual(r.hostPfn, -1, 'P was faulted back in');
  assert.equal(r.tlbPfn, r.hostPfn, "vCPU 0's TLB maps P to the host's frame");
  assert.equal(r.value, 2n);
});
