// The access layer: every access to shared state that can race, as one Atomics call behind an optional hook.
//
// MMU code never touches a SharedArrayBuffer word that another thread may touch
// except through a `Mem` method. In a normal run each method is a plain
// `Atomics` call (plus one null check). A scheduler or a test attaches an
// `AccessHook`; `hook.before` then runs before every operation with the
// operation's code and operands, and may block (a controlled scheduler waiting
// for its grant) or run other threads' operations first (a sequential replay of
// a documented race). Blocking operations — taking a held lock, waiting until a
// word changes — are single operations here, so a scheduler can treat a thread
// as not runnable instead of letting it spin.
//
// Words only their owner thread touches (a vCPU's TLB, statistics) and words
// fixed after setup (memslot geometry) are read through the public views
// directly; the comment at each such use says so.
//
// Index units: `*64` methods take an index into a BigUint64Array (byte offset / 8),
// `*32` methods an index into an Int32Array (byte offset / 4); `*Data*` methods
// address the data buffer (frame and swap bytes), the others the meta buffer.

import type { Shm } from './layout';

/** Operation codes passed to `AccessHook.before`; part of the checker's trace format. */
export const OP = {
  load64: 1,
  store64: 2,
  cmpxchg64: 3,
  xchg64: 4,
  load32: 5,
  store32: 6,
  cmpxchg32: 7,
  xchg32: 8,
  fetchAdd32: 9,
  fetchOr32: 10,
  fetchAnd32: 11,
  lock: 12,
  unlock: 13,
  waitWhile32: 14,
  loadData64: 15,
  storeData64: 16,
  cmpxchgData64: 17,
  copyData: 18,
  readData: 19,
  writeData: 20,
  compareData: 21,
  or32: 22,
  readLock: 23,
  readUnlock: 24,
  /** Writer, first step: claim the lock (no other writer), so new readers wait. */
  writeLock: 25,
  /** Writer, second step: wait until the readers in before it have left. */
  writeLockWait: 26,
  writeUnlock: 27,
  /**
   * Wait until one of several words no longer holds the value the thread last saw there (Mem.awaitChange32, and
   * the checker's blocking of a spin loop's iteration that changed nothing). The words come through
   * AccessHook.awaitSet just before; `a` is their number.
   */
  awaitChange: 28,
} as const;

export const OP_NAMES: Readonly<Record<number, string>> = Object.fromEntries(
  Object.entries(OP).map(([k, v]) => [v, k]),
);

/**
 * A hook on the access layer.
 *
 * `before(op, a, b, c)`: a is the word index (or, for data-range operations, the
 * first byte), b and c are operation-specific: for cmpxchg/xchg/store the value
 * written is not passed (the hook reads the word itself if it needs values);
 * for `waitWhile32` b is the value being waited out; for range operations b is
 * the length in bytes and c the second range's first byte (or -1).
 *
 * `note(kind, a, b)`: a ghost event (see NOTE) that changes no state; schedulers
 * and invariant monitors use them, normal runs ignore them.
 */
export interface AccessHook {
  before(op: number, a: number, b: number, c: number): void;
  note(kind: number, a: number, b: number): void;
  /**
   * Optional: meta Int32 word `a` was just written with a plain store (Mem.storePlain32) — a word only its owner
   * thread or only mmu_lock holders touch, so the store needs no atomicity and is no scheduling point. The checker
   * still counts it as a write of `a` by the running step, because an invariant monitor may read `a` from another
   * thread (at a mark), and its partial-order reduction must see that dependency.
   */
  plainStore?(a: number): void;
  /**
   * Optional: the words (meta Int32 indexes) and the values seen there of the OP.awaitChange operation whose
   * `before` comes next. A scheduler that has it treats the thread as blocked until one of the words changes.
   */
  awaitSet?(words: readonly number[], seen: readonly number[]): void;
}

/** Ghost events: annotations for monitors, never scheduling points. */
export const NOTE = {
  /** A vCPU (a) began a lockless shadow walk. */
  walkBegin: 1,
  /** A vCPU (a) ended a lockless shadow walk. */
  walkEnd: 2,
  /** Shadow page a was freed (b = its new generation). */
  spFree: 3,
  /** Shadow page a was allocated (b = its new generation). */
  spAlloc: 4,
  /** A write-protection of gfn a for shadow paging returned (its TLB flush done). */
  wpDone: 5,
  /** A remote TLB flush returned. */
  flushDone: 6,
  /** The fast path set W on sptep a (b = gfn it marked dirty, -1 if none). */
  fastFixed: 7,
  /** A dirty-log get/clear handed gfn a to userspace (after its TLB flush). */
  dirtyLogTaken: 8,
  /** A guest write of gfn a completed through pfn b. */
  guestWrite: 9,
  /** Swap-out dropped frame a without writing it back (its swap copy was current, as far as the host knew). */
  swapOutClean: 10,
  /** Frame a was allocated (b = the hvpn it is for). */
  frameAlloc: 11,
  /** Swap-out wrote frame a back to swap. */
  swapOutWriteback: 12,
  /** A dirty-log get or clear of slot a returned its bits to userspace (after its dirtyLogTaken marks). */
  dirtyLogReturned: 13,
  /** Page table a was freed without ever having been reachable (a TDP fault lost the cmpxchg that would have linked it). */
  spDiscard: 14,
  /** KVM accessed the page of hvpn a through its gfn→pfn cache, at pfn b (-1: the cache had none). */
  gpcAccess: 15,
  /** A page fault changed the present leaf SPTE of gfn a in a way that needs a TLB flush, which faults never do (KVM WARNs). */
  faultNeedsFlush: 16,
  /** An MMU-notifier invalidation of host pages [a, b) returned: no vCPU may reach them now. */
  unmapDone: 17,
  /** Table a, not yet linked, is about to be filled with the entries that replace a huge SPTE: copies, not new mappings. */
  splitFill: 18,
  /** Dirty logging of slot a: enabling it returned (b = 1; before it returns, writes need not be logged), or disabling it began (b = 0). */
  dirtyLogState: 19,
} as const;

// How many times a waiter re-reads a word before it sleeps (Mem.spinLimit).
//
// KVM's mmu_lock is a spinlock: its waiters never sleep, and its holder cannot
// be preempted. Here a holder can be — by the OS, or by its isolate's garbage
// collector (a scavenge stops a thread for about 0.1 ms) — so waiters must
// sleep eventually. How soon depends on whether the holder has a core:
//  - When every thread that takes the lock has a core of its own (the
//    benchmarks), sleeping early is what hurts: a ticket lock whose next
//    ticket is asleep stays unusable until that thread wakes (tens of µs), and
//    every waiter behind it then sleeps too. With 2^10 spins (about 10 µs at
//    ~9 ns an Atomics.load loop iteration) 3-16% of the dirty-log benchmark's
//    mmu_lock acquisitions slept and the slow path's cost varied 2.5x from run
//    to run; with 2^14 (about 0.15 ms) fewer than 0.2% sleep.
//  - When threads outnumber cores (`kvmmu run` with its host threads), a long
//    spin burns the time a descheduled holder needs: 2^14 cut that run's
//    throughput 3.6x against 2^10.
/** Spins before sleeping when every thread taking the lock has a core (the runner says so). */
export const SPIN_LIMIT_DEDICATED = 1 << 14;
/** Spins before sleeping when threads may outnumber cores (the default). */
export const SPIN_LIMIT_SHARED = 1 << 10;
/** How long (ms) a sleeping waiter sleeps before it looks again; bounds the cost of a missed wake-up. */
const WAIT_SLICE_MS = 0.2;

/** Lock word layout (four Int32 words): next ticket, owner ticket, sleepers, holder id + 1. */
export const LOCK_WORDS = 4;
const LOCK_NEXT = 0;
const LOCK_OWNER = 1;
const LOCK_SLEEPERS = 2;
const LOCK_HOLDER = 3;

/**
 * Reader-writer lock word layout (four Int32 words), after Linux's queued
 * rwlock (kernel/locking/qrwlock.c): [0] writer state (RW_FREE, RW_WAITING: a
 * writer has claimed the lock and waits for the readers inside to leave,
 * RW_LOCKED), [1] readers inside, [2] sleepers, [3] the writer's id + 1.
 * Fair to writers as the qrwlock is: once a writer waits, a new reader waits
 * behind it; readers already inside finish first.
 */
export const RWLOCK_WORDS = 4;
export const RW_WRITER = 0;
export const RW_READERS = 1;
const RW_SLEEPERS = 2;
const RW_HOLDER = 3;
export const RW_FREE = 0;
export const RW_WAITING = 1;
export const RW_LOCKED = 2;

export class Mem {
  /** Meta buffer as 32-bit words. */
  readonly i32: Int32Array;
  /** Meta buffer as 64-bit words (SPTEs). */
  readonly u64: BigUint64Array;
  /** Meta buffer as doubles (statistics owned by one thread; never through the layer). */
  readonly f64: Float64Array;
  /** Data buffer as bytes. */
  readonly d8: Uint8Array;
  /** Data buffer as 64-bit words. */
  readonly d64: BigUint64Array;
  /** Data buffer as 32-bit words (page comparison). */
  readonly d32: Int32Array;
  /** The scheduler's or test's hook; null in a normal run. */
  hook: AccessHook | null = null;
  /** Identity of the logical thread using this handle (shown as a lock holder). */
  tid = 0;
  /** Re-reads of a lock or waited-on word before sleeping: SPIN_LIMIT_SHARED or SPIN_LIMIT_DEDICATED. */
  spinLimit = SPIN_LIMIT_SHARED;

  constructor(readonly shm: Shm) {
    this.i32 = new Int32Array(shm.meta);
    this.u64 = new BigUint64Array(shm.meta);
    this.f64 = new Float64Array(shm.meta);
    this.d8 = new Uint8Array(shm.data);
    this.d64 = new BigUint64Array(shm.data);
    this.d32 = new Int32Array(shm.data);
  }

  // ---- 64-bit meta words (SPTEs) ----

  load64(i: number): bigint {
    if (this.hook !== null) this.hook.before(OP.load64, i, 0, 0);
    return Atomics.load(this.u64, i);
  }

  /**
   * The low 32 bits of the 64-bit word at `i`, for a reader that tests only
   * bits there (an SPTE's flags other than NX): one 32-bit load, as much a
   * single read as the 64-bit one, without the BigInt that costs. Under a
   * scheduler it is the load64 it stands for.
   */
  load64Low(i: number): number {
    if (this.hook !== null) this.hook.before(OP.load64, i, 0, 0);
    return this.i32[2 * i]!;
  }

  store64(i: number, v: bigint): void {
    if (this.hook !== null) this.hook.before(OP.store64, i, 0, 0);
    Atomics.store(this.u64, i, v);
  }

  /** Returns the old value; the exchange happened iff it equals `expected`. */
  cmpxchg64(i: number, expected: bigint, v: bigint): bigint {
    if (this.hook !== null) this.hook.before(OP.cmpxchg64, i, 0, 0);
    return Atomics.compareExchange(this.u64, i, expected, v);
  }

  xchg64(i: number, v: bigint): bigint {
    if (this.hook !== null) this.hook.before(OP.xchg64, i, 0, 0);
    return Atomics.exchange(this.u64, i, v);
  }

  // ---- 32-bit meta words ----

  load32(i: number): number {
    if (this.hook !== null) this.hook.before(OP.load32, i, 0, 0);
    return Atomics.load(this.i32, i);
  }

  store32(i: number, v: number): void {
    if (this.hook !== null) this.hook.before(OP.store32, i, 0, 0);
    Atomics.store(this.i32, i, v);
  }

  /**
   * A release store (KVM's smp_store_release, or a store then smp_wmb): on x86
   * a plain `mov`, ordered after this thread's earlier loads and stores but not
   * a full barrier, so a later load may pass it. (Atomics.store is a full
   * barrier, an xchg: KVM's smp_store_mb.) Other threads see it through their
   * own atomics; waitWhile32 polls, so it needs no notify. Under a scheduler it
   * is a store32 like any other.
   */
  storeRelease32(i: number, v: number): void {
    if (this.hook !== null) this.hook.before(OP.store32, i, 0, 0);
    this.i32[i] = v;
  }

  cmpxchg32(i: number, expected: number, v: number): number {
    if (this.hook !== null) this.hook.before(OP.cmpxchg32, i, 0, 0);
    return Atomics.compareExchange(this.i32, i, expected, v);
  }

  xchg32(i: number, v: number): number {
    if (this.hook !== null) this.hook.before(OP.xchg32, i, 0, 0);
    return Atomics.exchange(this.i32, i, v);
  }

  /** Returns the old value. */
  fetchAdd32(i: number, v: number): number {
    if (this.hook !== null) this.hook.before(OP.fetchAdd32, i, 0, 0);
    return Atomics.add(this.i32, i, v);
  }

  fetchOr32(i: number, v: number): number {
    if (this.hook !== null) this.hook.before(OP.fetchOr32, i, 0, 0);
    return Atomics.or(this.i32, i, v);
  }

  /**
   * Atomically set bits, discarding the old value. Two of these on one word
   * commute (whatever their order, the word ends the same and neither thread
   * learns anything), so the checker does not explore both orders.
   */
  or32(i: number, v: number): void {
    if (this.hook !== null) this.hook.before(OP.or32, i, 0, 0);
    Atomics.or(this.i32, i, v);
  }

  fetchAnd32(i: number, v: number): number {
    if (this.hook !== null) this.hook.before(OP.fetchAnd32, i, 0, 0);
    return Atomics.and(this.i32, i, v);
  }

  // ---- blocking operations ----

  /**
   * Take the ticket spinlock at `i` (LOCK_WORDS words). Fair: tickets are served
   * in order, so a vCPU cannot be starved by a stream of other takers.
   * Under a scheduler this is one operation, granted only when the lock is free.
   * Returns whether the taker found the lock held or other takers ahead of it
   * (a contention, as lock_stat counts them); under a scheduler, never.
   */
  lock(i: number): boolean {
    if (this.hook !== null) this.hook.before(OP.lock, i, 0, 0);
    const a = this.i32;
    const ticket = Atomics.add(a, i + LOCK_NEXT, 1);
    let spins = 0;
    for (;;) {
      const owner = Atomics.load(a, i + LOCK_OWNER);
      if (owner === ticket) break;
      if (++spins < this.spinLimit) continue;
      Atomics.add(a, i + LOCK_SLEEPERS, 1);
      Atomics.wait(a, i + LOCK_OWNER, owner, WAIT_SLICE_MS);
      Atomics.sub(a, i + LOCK_SLEEPERS, 1);
    }
    // Who holds the lock is for displays and debug checks, not part of KVM's
    // spinlock: a plain store, so it adds no barrier to the handoff. Only the
    // holder reads it for a decision (its own write); others may see it late.
    a[i + LOCK_HOLDER] = this.tid + 1;
    return spins !== 0;
  }

  unlock(i: number): void {
    if (this.hook !== null) this.hook.before(OP.unlock, i, 0, 0);
    const a = this.i32;
    a[i + LOCK_HOLDER] = 0;
    // Serve the next ticket with a release store, as the kernel's spinlocks
    // unlock (2012's ticket lock: `incb` without a lock prefix; today's
    // qspinlock: smp_store_release). Only the holder writes the owner word, and
    // x86 keeps the critical section's stores before this one.
    a[i + LOCK_OWNER] = (a[i + LOCK_OWNER]! + 1) | 0;
    // This load may pass the store above, so a taker that begins to sleep just
    // then can miss the notify; it wakes at the end of its WAIT_SLICE_MS slice
    // and looks again. (Sleeping is kvmmu's, for threads without a core of
    // their own; the kernel's spinlock waiters never sleep.)
    if (Atomics.load(a, i + LOCK_SLEEPERS) !== 0) Atomics.notify(a, i + LOCK_OWNER);
  }

  // ---- reader-writer lock (RWLOCK_WORDS words at i) ----

  /**
   * Take the rwlock at `i` for reading: wait while a writer holds it or waits
   * for it (fairness to writers), then count in. As the qrwlock's fast path:
   * count in, then look at the writer word again, and back out if a writer
   * claimed the lock meanwhile (the writer then sees this reader leave). One
   * operation for a scheduler: enabled while the writer word is RW_FREE.
   */
  readLock(i: number): void {
    if (this.hook !== null) this.hook.before(OP.readLock, i, 0, 0);
    const a = this.i32;
    let spins = 0;
    for (;;) {
      const w = Atomics.load(a, i + RW_WRITER);
      if (w === RW_FREE) {
        Atomics.add(a, i + RW_READERS, 1);
        if (Atomics.load(a, i + RW_WRITER) === RW_FREE) return;
        if (Atomics.sub(a, i + RW_READERS, 1) === 1) Atomics.notify(a, i + RW_READERS);
        continue;
      }
      if (++spins < this.spinLimit) continue;
      Atomics.add(a, i + RW_SLEEPERS, 1);
      Atomics.wait(a, i + RW_WRITER, w, WAIT_SLICE_MS);
      Atomics.sub(a, i + RW_SLEEPERS, 1);
    }
  }

  readUnlock(i: number): void {
    if (this.hook !== null) this.hook.before(OP.readUnlock, i, 0, 0);
    const a = this.i32;
    // The last reader out lets a waiting writer in.
    if (Atomics.sub(a, i + RW_READERS, 1) === 1 && Atomics.load(a, i + RW_WRITER) === RW_WAITING) Atomics.notify(a, i + RW_READERS);
  }

  /**
   * Take the rwlock at `i` for writing, in two operations as the qrwlock's
   * slow path: claim it (RW_FREE → RW_WAITING; enabled while it is free), so
   * no new reader comes in; then wait until the readers inside have left
   * (enabled when none is) and hold it (RW_LOCKED).
   */
  writeLock(i: number): void {
    if (this.hook !== null) this.hook.before(OP.writeLock, i, 0, 0);
    const a = this.i32;
    let spins = 0;
    for (;;) {
      const w = Atomics.compareExchange(a, i + RW_WRITER, RW_FREE, RW_WAITING);
      if (w === RW_FREE) break;
      if (++spins < this.spinLimit) continue;
      Atomics.add(a, i + RW_SLEEPERS, 1);
      Atomics.wait(a, i + RW_WRITER, w, WAIT_SLICE_MS);
      Atomics.sub(a, i + RW_SLEEPERS, 1);
    }
    a[i + RW_HOLDER] = this.tid + 1;
    if (this.hook !== null) this.hook.before(OP.writeLockWait, i, 0, 0);
    spins = 0;
    for (;;) {
      const r = Atomics.load(a, i + RW_READERS);
      if (r === 0) break;
      if (++spins < this.spinLimit) continue;
      Atomics.wait(a, i + RW_READERS, r, WAIT_SLICE_MS);
    }
    Atomics.store(a, i + RW_WRITER, RW_LOCKED);
  }

  writeUnlock(i: number): void {
    if (this.hook !== null) this.hook.before(OP.writeUnlock, i, 0, 0);
    const a = this.i32;
    a[i + RW_HOLDER] = 0;
    Atomics.store(a, i + RW_WRITER, RW_FREE);
    if (Atomics.load(a, i + RW_SLEEPERS) !== 0) Atomics.notify(a, i + RW_WRITER);
  }

  /** Readers inside the rwlock at `i` (for assertions and displays; not a scheduling point). */
  rwReaders(i: number): number {
    return Atomics.load(this.i32, i + RW_READERS);
  }

  /** The rwlock's writer state (RW_FREE, RW_WAITING, RW_LOCKED) and holder (-1 for none): for assertions and displays. */
  rwWriter(i: number): { state: number; holder: number } {
    return { state: Atomics.load(this.i32, i + RW_WRITER), holder: Atomics.load(this.i32, i + RW_HOLDER) - 1 };
  }

  /** How many times the lock at `i` has been asked for (its next ticket): a progress signal for hang detection, not a scheduling point. */
  lockTickets(i: number): number {
    return Atomics.load(this.i32, i + LOCK_NEXT);
  }

  /** True when the lock at `i` is held (for assertions and monitors; not a scheduling point). */
  isLocked(i: number): boolean {
    return Atomics.load(this.i32, i + LOCK_NEXT) !== Atomics.load(this.i32, i + LOCK_OWNER);
  }

  /** Takers of the lock at `i` not yet through: the holder and those queued behind it (for monitors; not a scheduling point). */
  lockTakers(i: number): number {
    return (Atomics.load(this.i32, i + LOCK_NEXT) - Atomics.load(this.i32, i + LOCK_OWNER)) | 0;
  }

  /** Logical thread id holding the lock at `i`, or -1 (for displays; not a scheduling point). */
  lockHolder(i: number): number {
    return Atomics.load(this.i32, i + LOCK_HOLDER) - 1;
  }

  /**
   * Return once the word at `i` no longer equals `v` (returns the new value).
   * Writers need not notify: a sleeper looks again every WAIT_SLICE_MS.
   * Under a scheduler the thread is not runnable while the word equals `v`.
   */
  waitWhile32(i: number, v: number): number {
    if (this.hook !== null) this.hook.before(OP.waitWhile32, i, v, 0);
    const a = this.i32;
    let spins = 0;
    for (;;) {
      const cur = Atomics.load(a, i);
      if (cur !== v) return cur;
      if (++spins < this.spinLimit) continue;
      Atomics.wait(a, i, v, WAIT_SLICE_MS);
    }
  }

  /**
   * Return once one of the meta words `words` no longer holds the value in `seen` (the same index): the
   * multi-word waitWhile32, for a thread that waits on a condition over several words (Peterson's lock waits
   * on the other thread's flag and the turn). Under a scheduler one operation, not runnable while every word
   * still holds what was seen. Use waitUntil32 for the usual loop around it.
   */
  awaitChange32(words: readonly number[], seen: readonly number[]): void {
    if (this.hook !== null) {
      this.hook.awaitSet?.(words, seen);
      this.hook.before(OP.awaitChange, words.length, 0, 0);
    }
    const a = this.i32;
    let spins = 0;
    for (;;) {
      for (let k = 0; k < words.length; k++) if (Atomics.load(a, words[k]!) !== seen[k]) return;
      // Writers need not notify: a sleeper looks again every WAIT_SLICE_MS (on the first word).
      if (++spins >= this.spinLimit) Atomics.wait(a, words[0]!, seen[0]!, WAIT_SLICE_MS);
    }
  }

  /**
   * Read the meta words `words` (one load32 each, in order) until `holds` accepts their values, and return
   * those values. Between two tries the thread waits (awaitChange32) until one of the words changes, so under
   * the checker a wait is one blocked operation, not a spin. `holds` must only look at the values.
   */
  waitUntil32(words: readonly number[], holds: (values: readonly number[]) => boolean): number[] {
    for (;;) {
      const values: number[] = [];
      for (const w of words) values.push(this.load32(w));
      if (holds(values)) return values;
      this.awaitChange32(words, values);
    }
  }

  // ---- data buffer (frame and swap bytes) ----

  loadData64(i: number): bigint {
    if (this.hook !== null) this.hook.before(OP.loadData64, i, 0, 0);
    return Atomics.load(this.d64, i);
  }

  /**
   * A plain 64-bit store, as an x86 `mov` is: not a full barrier. (Atomics.store
   * would be one, and it stalls the thread until a store to a page not in cache
   * completes; a guest writing memory never does that.) x86 keeps a thread's
   * stores in order, so another thread sees it once it has seen a later store
   * of this thread — for a vCPU, its next VM exit, which every flush and
   * invalidation waits for.
   */
  storeData64(i: number, v: bigint): void {
    if (this.hook !== null) this.hook.before(OP.storeData64, i, 0, 0);
    this.d64[i] = v;
  }

  cmpxchgData64(i: number, expected: bigint, v: bigint): bigint {
    if (this.hook !== null) this.hook.before(OP.cmpxchgData64, i, 0, 0);
    return Atomics.compareExchange(this.d64, i, expected, v);
  }

  /** Copy `len` bytes inside the data buffer (one operation: a page copy is not split). */
  copyData(dstByte: number, srcByte: number, len: number): void {
    if (this.hook !== null) this.hook.before(OP.copyData, dstByte, len, srcByte);
    this.d8.copyWithin(dstByte, srcByte, srcByte + len);
  }

  /** Copy `len` bytes from the data buffer into a private buffer. */
  readData(srcByte: number, dst: Uint8Array, dstOff: number, len: number): void {
    if (this.hook !== null) this.hook.before(OP.readData, srcByte, len, -1);
    dst.set(this.d8.subarray(srcByte, srcByte + len), dstOff);
  }

  /** Copy `len` bytes from a private buffer into the data buffer. */
  writeData(dstByte: number, src: Uint8Array, srcOff: number, len: number): void {
    if (this.hook !== null) this.hook.before(OP.writeData, dstByte, len, -1);
    this.d8.set(src.subarray(srcOff, srcOff + len), dstByte);
  }

  /** True when two ranges of the data buffer hold the same bytes. */
  compareData(aByte: number, bByte: number, len: number): boolean {
    if (this.hook !== null) this.hook.before(OP.compareData, aByte, len, bByte);
    const d = this.d32;
    const a = aByte / 4;
    const b = bByte / 4;
    for (let k = 0; k < len / 4; k++) if (d[a + k] !== d[b + k]) return false;
    return true;
  }

  // ---- plain stores ----

  /**
   * A plain (non-atomic) store to meta word `i`, for words only their owner
   * thread or only mmu_lock holders read and write (see the file comment): no
   * scheduling point, but a hook hears of it, so the checker can order it
   * against monitors that read the word from other threads.
   */
  storePlain32(i: number, v: number): void {
    this.i32[i] = v;
    if (this.hook !== null) this.hook.plainStore?.(i);
  }

  /**
   * Tell a hook that plain stores just changed a structure that the checker
   * keys by meta word `i` (a vCPU's TLB entries, keyed by its generation word):
   * as storePlain32, without the store.
   */
  plainStoreDone(i: number): void {
    if (this.hook !== null) this.hook.plainStore?.(i);
  }

  // ---- ghost events ----

  note(kind: number, a: number, b: number): void {
    if (this.hook !== null) this.hook.note(kind, a, b);
  }
}
