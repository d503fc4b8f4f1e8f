// RCU in shared memory: read-side sections that never wait, and objects freed only after a grace period in which every reader that began before has left.
//
// What the TDP MMU needs of Linux's RCU (TDP-MMU.md): lockless walkers (the
// fast path, aging) and faults walk page tables inside rcu_read_lock(); a
// thread that unlinks a table hands it to call_rcu(), and the table is freed
// only once every read section that was running then has ended, so no walker
// ever reads a freed table. Everything lives in one meta region, behind the
// access layer, so the checker sees every step and may interleave them.
//
// The readers are counted per epoch, two epochs, as SRCU counts them: a reader
// reads the epoch, counts itself in under it, and reads the epoch again — if it
// moved meanwhile it counts itself out and tries again, so a reader is only
// ever inside under the epoch that was current after it counted in. A grace
// period flips the epoch and ends when the old epoch's count is zero: every
// reader that could have begun before the flip has left. A reader that counted
// in late under the old epoch sees the new one on its second read and backs
// out without entering. (Under sequential consistency, which kvmmu's checker
// explores; the kernel's SRCU needs barriers for the same argument.)
//
// Each epoch's count is split over reader slots, as SRCU keeps per-CPU counts:
// a thread counts itself in its own slot (thread id modulo the slot count;
// threads that share a slot still count atomically), and an updater sums the
// slots. Readers of different slots then touch no common word, so the checker
// does not try their read sections in both orders for nothing; and each slot
// has a cache line of its own, as per-CPU data does, so that two vCPUs' read
// sections on two cores do not pass one line back and forth.
//
// The region (Int32 words from `base`; rcuWords() of them):
//   [0..LOCK_WORDS)          lock: serializes the updaters (callRcu, poll), never readers
//   [GP]                     grace-period sequence: even = none running, odd = one running
//   [QHEAD], [QTAIL]         the callback queue's indices (FIFO, QTAIL - QHEAD entries)
//   [EPOCH]                  the current epoch, 0 or 1
//   [QUEUE + 2k, +1]         queue entry k (mod capacity): the object, and the GP sequence after which it may be freed
//   [SLOTS + STRIDE s + e]   readers of slot s inside under epoch e, where SLOTS is
//                            QUEUE + 2 capacity rounded up to a cache line and STRIDE
//                            a cache line (16 words); with one slot, no rounding and
//                            STRIDE 2
//   [QSBR + 2r], [+1]        QSBR reader r: its state word's snapshot at the running grace
//                            period's start (-1: quiescent already), and its online flag;
//                            QSBR is the end of the slots, rounded up to a cache line
//
// Readers that report quiescent states (QSBR): the kernel's RCU does not count
// its readers. rcu_read_lock() costs a CPU nothing (a nesting count at most),
// and a grace period ends once every CPU has passed a quiescent state — a
// context switch, idle, user mode or guest mode — which the CPU reports itself
// or which shows in a word the CPU changes on its way in and out of them
// (context tracking). Readers given as QsbrReaders work that way: each has a
// state word of its own outside the region (for a vCPU, its mode word, which it
// changes on every guest entry and exit), a flag saying whether it is online
// (off: not running at all, quiescent throughout), and its read sections touch
// no shared word. When a grace period begins, each reader's state word is
// snapshotted (-1 if it is offline); the grace period waits for every reader
// whose snapshot was not quiescent until it has gone offline or changed its word
// (it passed a quiescent state). Such a reader must never be in a read section
// at a quiescent state (quiescentState() checks), and the store that takes it
// out of one must be a full barrier (a reader's store held back behind its next
// loads would let an updater see it quiescent while it already walks).
//
// An object queued while the sequence was q may be freed once the sequence is
// at least (q even ? q + 2 : q + 3): the end of a grace period that began
// after it was queued. Who polls: callRcu itself, and callers at points where
// they hold no read section (a poller inside one only delays the grace period
// it waits for; it never waits). Each handle nests its own read sections
// without touching shared memory.

import { LOCK_WORDS, type Mem } from './access';
import type { LayoutBuilder } from './layout';

const GP = LOCK_WORDS;
const QHEAD = GP + 1;
const QTAIL = GP + 2;
const EPOCH = GP + 3;
const QUEUE = GP + 4;

/** Int32 words in a cache line (64 bytes): the distance between two reader slots. */
const LINE_WORDS = 16;

/** Int32 words from one reader slot to the next. */
function slotStride(readerSlots: number): number {
  return readerSlots === 1 ? 2 : LINE_WORDS;
}

/** Offset of the first reader slot in the region (a cache line's start when there are several). */
function slotsOffset(capacity: number, readerSlots: number): number {
  const o = QUEUE + 2 * capacity;
  return readerSlots === 1 ? o : Math.ceil(o / LINE_WORDS) * LINE_WORDS;
}

/** Offset of the QSBR readers' words in the region. */
function qsbrOffset(capacity: number, readerSlots: number): number {
  return Math.ceil((slotsOffset(capacity, readerSlots) + slotStride(readerSlots) * readerSlots) / LINE_WORDS) * LINE_WORDS;
}

/** The region's size in Int32 words for `capacity` queued objects, `readerSlots` reader slots and `qsbrReaders` QSBR readers. */
export function rcuWords(capacity: number, readerSlots = 1, qsbrReaders = 0): number {
  if (qsbrReaders === 0) return slotsOffset(capacity, readerSlots) + slotStride(readerSlots) * readerSlots;
  return qsbrOffset(capacity, readerSlots) + 2 * qsbrReaders;
}

/** Reserve an RCU region in a layout. */
export function layoutRcu(b: LayoutBuilder, name: string, capacity: number, readerSlots = 1, qsbrReaders = 0): void {
  b.metaLines(name, rcuWords(capacity, readerSlots, qsbrReaders) * 4);
}

/** What word `w` of an RCU region with `capacity`, `readerSlots` and `qsbrReaders` is (for traces). */
export function rcuWordName(w: number, capacity: number, readerSlots: number, qsbrReaders = 0): string {
  if (w < LOCK_WORDS) return 'rcu lock';
  const names = ['rcu grace period', 'rcu queue head', 'rcu queue tail', 'rcu epoch'];
  if (w < QUEUE) return names[w - GP]!;
  const q = w - QUEUE;
  if (q < 2 * capacity) return `rcu queue entry ${q >> 1} ${(q & 1) === 0 ? 'object' : 'grace period'}`;
  if (qsbrReaders > 0 && w >= qsbrOffset(capacity, readerSlots)) {
    const x = w - qsbrOffset(capacity, readerSlots);
    return x < 2 * qsbrReaders ? `rcu QSBR reader ${x >> 1} ${(x & 1) === 0 ? 'snapshot' : 'online'}` : 'rcu padding';
  }
  const r = w - slotsOffset(capacity, readerSlots);
  const stride = slotStride(readerSlots);
  if (r < 0 || r % stride >= 2) return 'rcu padding';
  return readerSlots === 1 ? `rcu readers (epoch ${r & 1})` : `rcu readers (slot ${Math.floor(r / stride)}, epoch ${r & 1})`;
}

/** Readers whose quiescent states show in words of their own (see the file's head): for the TDP MMU, the vCPUs. */
export interface QsbrReaders {
  /** Reader r's state word (an Int32 index outside the region), which only r changes, and at every quiescent state it passes. */
  readonly words: readonly number[];
  /** Whether a reader whose state word holds `v` is in a quiescent state now. */
  quiescent(v: number): boolean;
}

export class Rcu {
  /** Read sections this handle has open (nesting is the handle's own business). */
  private depth = 0;
  /** The epoch this handle's outermost read section counted itself in under. */
  private epoch = 0;

  /** First word of the reader counts, the words from one slot to the next, and this handle's own slot. */
  private readonly counts: number;
  private readonly stride: number;
  private readonly mine: number;
  /** First word of the QSBR readers' snapshots and online flags, and how many there are. */
  private readonly qsbrBase: number;
  private readonly nQsbr: number;

  constructor(
    private readonly mem: Mem,
    /** Int32 index of the region's first word (rcuWords(capacity, readerSlots, qsbr's count) words, zero before first use). */
    private readonly base: number,
    readonly capacity: number,
    readonly readerSlots = 1,
    private readonly qsbr: QsbrReaders | null = null,
    /** The QSBR reader this handle's thread is (its read sections then touch no shared word), or -1: a counted reader. */
    readonly qsbrSelf = -1,
  ) {
    this.counts = base + slotsOffset(capacity, readerSlots);
    this.stride = slotStride(readerSlots);
    this.mine = this.counts + this.stride * (((mem.tid % readerSlots) + readerSlots) % readerSlots);
    this.nQsbr = qsbr === null ? 0 : qsbr.words.length;
    this.qsbrBase = base + qsbrOffset(capacity, readerSlots);
    if (qsbrSelf >= this.nQsbr) throw new Error(`rcu: QSBR reader ${qsbrSelf} of ${this.nQsbr}`);
  }

  /** Whether this handle has a read section open. */
  get reading(): boolean {
    return this.depth > 0;
  }

  /**
   * A QSBR reader's thread is at a quiescent state (the vCPU enters guest mode: rcu_virt_note_context_switch).
   * Nothing to write (the state word's change is the report); a read section open here is a bug.
   */
  quiescentState(): void {
    if (this.depth > 0) throw new Error('rcu: a quiescent state inside a read section');
  }

  /**
   * QSBR reader r comes online (its thread begins to run: a vCPU enters KVM_RUN) or goes offline (quiescent until
   * it comes back). A full-barrier store: what the thread reads next is ordered after it.
   */
  setOnline(r: number, online: boolean): void {
    if (r < 0 || r >= this.nQsbr) throw new Error(`rcu: QSBR reader ${r} of ${this.nQsbr}`);
    if (!online && r === this.qsbrSelf) this.quiescentState();
    this.mem.store32(this.qsbrBase + 2 * r + 1, online ? 1 : 0);
  }

  /** Is QSBR reader r online? (Its own thread asks: a plain read.) */
  isOnline(r: number): boolean {
    return this.mem.i32[this.qsbrBase + 2 * r + 1] !== 0;
  }

  /** rcu_read_lock(): open a read section. */
  readLock(): void {
    if (this.depth++ > 0 || this.qsbrSelf >= 0) return;
    const m = this.mem;
    const b = this.base;
    for (;;) {
      const e = m.load32(b + EPOCH);
      m.fetchAdd32(this.mine + e, 1);
      if (m.load32(b + EPOCH) === e) {
        this.epoch = e;
        return;
      }
      m.fetchAdd32(this.mine + e, -1); // a grace period began meanwhile: count in under the new epoch
    }
  }

  /** rcu_read_unlock(). */
  readUnlock(): void {
    if (this.depth === 0) throw new Error('rcu: read unlock without a read section');
    if (--this.depth === 0 && this.qsbrSelf < 0) this.mem.fetchAdd32(this.mine + this.epoch, -1);
  }

  /**
   * Begin a grace period for the QSBR readers: snapshot each one's state word, or -1 if it is offline or
   * quiescent now. Contract: the lock held (the snapshots are the updaters' own, plain words under it).
   */
  private qsbrSnapshot(): void {
    const m = this.mem;
    const q = this.qsbr!;
    for (let r = 0; r < this.nQsbr; r++) {
      const w = this.qsbrBase + 2 * r;
      const v = m.load32(w + 1) === 0 ? -1 : m.load32(q.words[r]!);
      m.storePlain32(w, v === -1 || q.quiescent(v) ? -1 : v);
    }
  }

  /**
   * Has every QSBR reader passed a quiescent state since the running grace period began? One found to have is
   * marked (snapshot -1), so later polls skip it. Contract: the lock held.
   */
  private qsbrPassed(): boolean {
    const m = this.mem;
    const q = this.qsbr!;
    for (let r = 0; r < this.nQsbr; r++) {
      const w = this.qsbrBase + 2 * r;
      const snap = m.i32[w]!;
      if (snap === -1) continue;
      if (m.load32(w + 1) !== 0 && m.load32(q.words[r]!) === snap) return false;
      m.storePlain32(w, -1);
    }
    return true;
  }

  /** Is any reader inside under epoch `e`? (Each slot read once; a slot read as zero that fills later has a reader who began after this look.) */
  private readersIn(e: number): boolean {
    for (let s = 0; s < this.readerSlots; s++) if (this.mem.load32(this.counts + this.stride * s + e) !== 0) return true;
    return false;
  }

  /**
   * call_rcu(): queue `obj` (a non-negative integer) to be handed back by a
   * later poll, after a grace period that begins after this call. Then poll:
   * objects whose grace period has ended are written to `out`; returns how many.
   */
  callRcu(obj: number, out: number[]): number {
    const m = this.mem;
    const b = this.base;
    m.lock(b);
    const tail = m.load32(b + QTAIL);
    if (tail - m.load32(b + QHEAD) >= this.capacity) {
      m.unlock(b);
      throw new Error(`rcu: more than ${this.capacity} objects wait for a grace period`);
    }
    const gp = m.load32(b + GP);
    const e = b + QUEUE + 2 * (tail % this.capacity);
    m.store32(e, obj);
    m.store32(e + 1, (gp & 1) === 0 ? gp + 2 : gp + 3);
    m.store32(b + QTAIL, tail + 1);
    const n = this.advance(out);
    m.unlock(b);
    return n;
  }

  /**
   * Move grace periods along without waiting: end the running one if every
   * reader it waits for has left, start one if objects wait for it, and write
   * the objects now free to be reused to `out`. Returns how many.
   */
  poll(out: number[]): number {
    const m = this.mem;
    // Nothing queued, nothing to do: looked at without the lock, so pollers on every fault do not serialize on it.
    // (An object queued just after this look is polled by whoever queued it, or the next poll.)
    if (m.load32(this.base + QHEAD) === m.load32(this.base + QTAIL)) return 0;
    m.lock(this.base);
    const n = this.advance(out);
    m.unlock(this.base);
    return n;
  }

  /**
   * synchronize_rcu(): wait until every read section open now has closed. A
   * waiter, not a spinner: under the checker it is not runnable until a reader
   * leaves. Never from inside a read section.
   */
  synchronize(): void {
    if (this.depth > 0) throw new Error('rcu: synchronize inside a read section would wait for itself');
    const m = this.mem;
    // Readers under either epoch began before this call; wait for both counts to drain (a later reader may
    // count in meanwhile and delay this: never a wrong answer, at worst a longer wait).
    for (let e = 0; e < 2; e++)
      for (let s = 0; s < this.readerSlots; s++) {
        const w = this.counts + this.stride * s + e;
        for (let c = m.load32(w); c !== 0; c = m.load32(w)) m.waitWhile32(w, c);
      }
  }

  /** Objects waiting for a grace period (for tests and leak checks; takes the lock). */
  pending(): number {
    const m = this.mem;
    m.lock(this.base);
    const n = m.load32(this.base + QTAIL) - m.load32(this.base + QHEAD);
    m.unlock(this.base);
    return n;
  }

  /**
   * The state at a glance, with plain reads (for displays): the epoch, the grace-period sequence (odd: one
   * running), readers inside per slot (both epochs), and per QSBR reader whether it is online and whether the
   * running grace period still waits for it.
   */
  peekState(): { epoch: number; gracePeriod: number; readers: number[]; qsbr: { online: boolean; waitedFor: boolean }[] } {
    const t = this.mem.i32;
    const readers: number[] = [];
    for (let s = 0; s < this.readerSlots; s++) readers.push(t[this.counts + this.stride * s]! + t[this.counts + this.stride * s + 1]!);
    const gracePeriod = t[this.base + GP]!;
    const qsbr: { online: boolean; waitedFor: boolean }[] = [];
    for (let r = 0; r < this.nQsbr; r++) {
      const w = this.qsbrBase + 2 * r;
      const online = t[w + 1] !== 0;
      qsbr.push({ online, waitedFor: (gracePeriod & 1) !== 0 && online && t[w] !== -1 && t[this.qsbr!.words[r]!] === t[w] });
    }
    return { epoch: t[this.base + EPOCH]!, gracePeriod, readers, qsbr };
  }

  /** The queued objects, oldest first, with plain reads (for monitors and displays: no scheduling point). */
  peekQueued(): number[] {
    const t = this.mem.i32;
    const b = this.base;
    const out: number[] = [];
    for (let k = t[b + QHEAD]!; k < t[b + QTAIL]!; k++) out.push(t[b + QUEUE + 2 * (k % this.capacity)]!);
    return out;
  }

  /** Contract: the lock held. */
  private advance(out: number[]): number {
    const m = this.mem;
    const b = this.base;
    let gp = m.load32(b + GP);
    // A running grace period ends when the epoch it flipped away from has no reader left, and every QSBR reader
    // has passed a quiescent state.
    if ((gp & 1) !== 0 && !this.readersIn(1 - m.load32(b + EPOCH)) && (this.nQsbr === 0 || this.qsbrPassed())) m.store32(b + GP, ++gp);
    const head = m.load32(b + QHEAD);
    const tail = m.load32(b + QTAIL);
    if ((gp & 1) === 0 && head !== tail && m.load32(b + QUEUE + 2 * (head % this.capacity) + 1) > gp) {
      // Objects wait for a grace period not yet begun: begin it by flipping the epoch.
      const old = m.load32(b + EPOCH);
      m.store32(b + EPOCH, 1 - old);
      m.store32(b + GP, ++gp);
      if (this.nQsbr > 0) this.qsbrSnapshot();
      if (!this.readersIn(old) && (this.nQsbr === 0 || this.qsbrPassed())) m.store32(b + GP, ++gp);
    }
    let n = 0;
    let k = head;
    for (; k !== tail; k++) {
      const e = b + QUEUE + 2 * (k % this.capacity);
      if (m.load32(e + 1) > gp) break;
      out[n++] = m.load32(e);
    }
    if (k !== head) m.store32(b + QHEAD, k);
    return n;
  }
}
