// RCU in shared memory: read-side sections that never wait, and objects freed only after a grace period in which every reader that began before has left.
//
// What the TDP MMU needs of Linux's RCU (TDP-MMU.md): lockless walkers (the
// fast path, aging) and faults walk page tables inside rcu_read_lock(); a
// thread that unlinks a table hands it to call_rcu(), and the table is freed
// only once every read section that was running then has ended, so no walker
// ever reads a freed table. Everything lives in one meta region, behind the
// access layer, so the checker sees every step and may interleave them.
//
// The region (Int32 words from `base`; rcuWords() of them):
//   [0..LOCK_WORDS)          lock: serializes the updaters (callRcu, rcuPoll), never readers
//   [GP]                     grace-period sequence: even = none running, odd = one running
//   [QHEAD], [QTAIL]         the callback queue's indices (FIFO, QTAIL - QHEAD entries)
//   [READERS + s]            reader slot s: odd while a read section is open (+1 on enter and on exit)
//   [SNAP + s]               slot s as the running grace period found it when it began
//   [QUEUE + 2k, +1]         queue entry k (mod capacity): the object, and the GP sequence after which it may be freed
//
// Readers only touch their own slot. A grace period that began at sequence g
// (odd g) ends when every slot that was odd at its start has moved on; an
// object queued while the sequence was q may be freed once the sequence is at
// least (q even ? q + 2 : q + 3): the end of a grace period that began after
// it was queued. Who polls: callRcu itself, and callers at points where they
// hold no read section (a poller inside a read section only delays the grace
// period it waits for; it never waits).
//
// A slot per thread context: the owner of each Rcu handle picks its slot (a
// vCPU its index, a host thread one of its own), and nests read sections
// without touching shared memory.

import { LOCK_WORDS, type Mem } from './access';
import type { LayoutBuilder } from './layout';

const GP = LOCK_WORDS;
const QHEAD = GP + 1;
const QTAIL = GP + 2;
const HEADER = GP + 3;

/** The region's size in Int32 words for `slots` reader slots and `capacity` queued objects. */
export function rcuWords(slots: number, capacity: number): number {
  return HEADER + 2 * slots + 2 * capacity;
}

/** Reserve an RCU region in a layout. */
export function layoutRcu(b: LayoutBuilder, name: string, slots: number, capacity: number): void {
  b.metaLines(name, rcuWords(slots, capacity) * 4);
}

export class Rcu {
  private readonly base: number;
  private readonly readers: number;
  private readonly snap: number;
  private readonly queue: number;
  /** Read sections this handle has open (nesting is the handle's own business). */
  private depth = 0;

  constructor(
    private readonly mem: Mem,
    /** Int32 index of the region's first word (rcuWords(slots, capacity) words, zero before first use). */
    base: number,
    readonly slots: number,
    readonly capacity: number,
    /** This handle's reader slot. */
    readonly slot: number,
  ) {
    if (!Number.isInteger(slot) || slot < 0 || slot >= slots) throw new Error(`rcu: slot ${slot} outside 0..${slots - 1}`);
    this.base = base;
    this.readers = this.base + HEADER;
    this.snap = this.readers + slots;
    this.queue = this.snap + slots;
  }

  /** rcu_read_lock(): open a read section (the outermost one marks this slot). */
  readLock(): void {
    if (this.depth++ === 0) this.mem.fetchAdd32(this.readers + this.slot, 1);
  }

  /** rcu_read_unlock(). */
  readUnlock(): void {
    if (this.depth === 0) throw new Error('rcu: read unlock without a read section');
    if (--this.depth === 0) this.mem.fetchAdd32(this.readers + this.slot, 1);
  }

  /** True inside a read section of this handle. */
  get reading(): boolean {
    return this.depth > 0;
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
    const e = this.queue + 2 * (tail % this.capacity);
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
    m.lock(this.base);
    const n = this.advance(out);
    m.unlock(this.base);
    return n;
  }

  /**
   * synchronize_rcu(): wait until every read section open now has closed. A
   * waiter, not a spinner: under the checker it is not runnable until the
   * reader it waits for moves. Never from inside a read section.
   */
  synchronize(): void {
    if (this.depth > 0) throw new Error('rcu: synchronize inside a read section would wait for itself');
    const m = this.mem;
    for (let s = 0; s < this.slots; s++) {
      const at = m.load32(this.readers + s);
      if ((at & 1) !== 0) m.waitWhile32(this.readers + s, at);
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

  /** The queued objects, oldest first, with plain reads (for monitors and displays: no scheduling point). */
  peekQueued(): number[] {
    const t = this.mem.i32;
    const out: number[] = [];
    for (let k = t[this.base + QHEAD]!; k < t[this.base + QTAIL]!; k++) out.push(t[this.queue + 2 * (k % this.capacity)]!);
    return out;
  }

  /** Slots inside a read section now (plain reads, for displays). */
  peekReaders(): number[] {
    const out: number[] = [];
    for (let s = 0; s < this.slots; s++) if ((this.mem.i32[this.readers + s]! & 1) !== 0) out.push(s);
    return out;
  }

  /** Contract: the lock held. */
  private advance(out: number[]): number {
    const m = this.mem;
    const b = this.base;
    let gp = m.load32(b + GP);
    if ((gp & 1) !== 0 && this.readersLeft()) m.store32(b + GP, ++gp);
    const head = m.load32(b + QHEAD);
    const tail = m.load32(b + QTAIL);
    if ((gp & 1) === 0 && head !== tail && m.load32(this.queue + 2 * (head % this.capacity) + 1) > gp) {
      // Objects wait for a grace period not yet begun: begin it, noting who is inside now.
      for (let s = 0; s < this.slots; s++) m.store32(this.snap + s, m.load32(this.readers + s));
      m.store32(b + GP, ++gp);
      if (this.readersLeft()) m.store32(b + GP, ++gp);
    }
    let n = 0;
    let k = head;
    for (; k !== tail; k++) {
      const e = this.queue + 2 * (k % this.capacity);
      if (m.load32(e + 1) > gp) break;
      out[n++] = m.load32(e);
    }
    if (k !== head) m.store32(b + QHEAD, k);
    return n;
  }

  /** Has every slot that was inside a read section when the running grace period began left it since? */
  private readersLeft(): boolean {
    const m = this.mem;
    for (let s = 0; s < this.slots; s++) {
      const at = m.load32(this.snap + s);
      if ((at & 1) !== 0 && m.load32(this.readers + s) === at) return false;
    }
    return true;
  }
}
