// Spin loops as awaits: a thread's record of one iteration of a scenario file's loop (what it read, whether it changed memory), and the words it waits on once an iteration changed nothing.
//
// A scenario file's loop that the build found free of side effects outside
// shared memory (gen-transform's spin candidates: it assigns no variable
// declared outside its body, no property, calls no function of the file that
// does) calls spinTick(loop) at the top of each iteration and spinEnd(loop)
// when it is left. Between two ticks of the same loop the thread's local state
// is the same, so if that iteration wrote nothing (or only wrote back what a
// word held: a failed cmpxchg) and every word it read still holds what it read,
// the next iteration would do exactly the same, and so would every one after,
// until another thread changes one of those words. The checker then blocks the
// thread on an OP.awaitChange of those words (GenMC's spin-assume, as an
// await): a spin loop costs one blocked operation instead of a livelock. An
// iteration removed this way changed nothing another thread could see, so no
// final state is lost; the reads of the iteration that did run race with the
// writes after them, so DPOR still tries the orders in which the loop sees them.

import { OP } from '../shm/access';
import { dataPageKey, metaKey32, metaKey64, type Access } from './ops';

/** The word an operation writes, by kind: none, a 32-bit meta word, a 64-bit meta word, a 64-bit data word. */
const W_NONE = 0;
const W_META32 = 1;
const W_META64 = 2;
const W_DATA64 = 3;

function writtenWord(op: number): number {
  switch (op) {
    case OP.store32:
    case OP.cmpxchg32:
    case OP.xchg32:
    case OP.fetchAdd32:
    case OP.fetchOr32:
    case OP.fetchAnd32:
    case OP.or32:
      return W_META32;
    case OP.store64:
    case OP.cmpxchg64:
    case OP.xchg64:
      return W_META64;
    case OP.storeData64:
    case OP.cmpxchgData64:
      return W_DATA64;
    default:
      return W_NONE;
  }
}

/** Where a watched 32-bit word lives. */
const META = 0;
const DATA = 1;

/**
 * One thread's spin-loop record. `op` at each access-layer operation's `before`, `preExecute` just before that
 * operation runs (nothing else runs between the two), `tick` and `end` from the loop's calls.
 */
export class SpinTracker {
  /** The loop whose iteration is being recorded, or -1. */
  private loop = -1;
  /** No operation of the iteration changed memory (nor did anything the record cannot judge). */
  private pure = true;
  // The 32-bit words the iteration read, with the value each read returned (parallel arrays).
  private readonly rBuf: number[] = [];
  private readonly rIdx: number[] = [];
  private readonly rVal: number[] = [];
  private readonly rKey: number[] = [];
  // The iteration's latest operation, not yet looked at (it runs after its `before`).
  private prevOp = 0;
  private prevA = 0;
  private pre0 = 0;
  private pre1 = 0;
  private hasPrev = false;
  /** The awaitChange about to be announced is the tracker's own: not part of the next iteration. */
  private skipNext = false;
  // The words an OP.awaitChange of this thread waits on, and the values it waits out.
  readonly awBuf: number[] = [];
  readonly awIdx: number[] = [];
  readonly awVal: number[] = [];
  private readonly awKey: number[] = [];
  /** The await set is a spin loop's (the checker found it), not a hand-written awaitChange32's. */
  fromSpin = false;
  private awAccess: Access | null = null;

  constructor(
    private readonly meta: Int32Array,
    private readonly data: Int32Array,
  ) {}

  /** Forget everything (a new execution). */
  reset(): void {
    this.loop = -1;
    this.hasPrev = false;
    this.skipNext = false;
    this.awBuf.length = 0;
    this.awIdx.length = 0;
    this.awVal.length = 0;
    this.awKey.length = 0;
    this.awAccess = null;
  }

  /** Is an iteration being recorded (so the engine must call preExecute before this thread's steps)? */
  get recording(): boolean {
    return this.loop >= 0;
  }

  /** At an operation's `before`: the previous one has run by now, and only this thread ran since. */
  op(op: number, a: number): void {
    if (this.skipNext) {
      this.skipNext = false;
      return;
    }
    if (this.loop < 0) return;
    if (this.hasPrev) this.finishPrev();
    this.prevOp = op;
    this.prevA = a;
    this.hasPrev = true;
  }

  /** Just before the recorded operation runs: what a write will overwrite. */
  preExecute(): void {
    if (this.loop < 0 || !this.hasPrev) return;
    const a = this.prevA;
    switch (writtenWord(this.prevOp)) {
      case W_META32:
        this.pre0 = this.meta[a]!;
        break;
      case W_META64:
        this.pre0 = this.meta[2 * a]!;
        this.pre1 = this.meta[2 * a + 1]!;
        break;
      case W_DATA64:
        this.pre0 = this.data[2 * a]!;
        this.pre1 = this.data[2 * a + 1]!;
        break;
    }
  }

  private read(buf: number, idx: number, key: number): void {
    const v = buf === META ? this.meta[idx]! : this.data[idx]!;
    for (let k = 0; k < this.rIdx.length; k++) {
      if (this.rIdx[k] !== idx || this.rBuf[k] !== buf) continue;
      // Read twice with different values: the next iteration, reading the word once more, would not repeat this one.
      if (this.rVal[k] !== v) this.pure = false;
      return;
    }
    this.rBuf.push(buf);
    this.rIdx.push(idx);
    this.rVal.push(v);
    this.rKey.push(key);
  }

  /** A write that left the word as it was reads it, in effect; one that changed it ends the iteration's purity. */
  private wrote(buf: number, idx: number, key: number, wide: boolean): void {
    const arr = buf === META ? this.meta : this.data;
    if (arr[idx] !== this.pre0 || (wide && arr[idx + 1] !== this.pre1)) {
      this.pure = false;
      return;
    }
    this.read(buf, idx, key);
    if (wide) this.read(buf, idx + 1, key);
  }

  private finishPrev(): void {
    this.hasPrev = false;
    const a = this.prevA;
    switch (this.prevOp) {
      case OP.load32:
      case OP.waitWhile32:
        this.read(META, a, metaKey32(a));
        return;
      case OP.load64:
        this.read(META, 2 * a, metaKey64(a));
        this.read(META, 2 * a + 1, metaKey64(a));
        return;
      case OP.loadData64:
        this.read(DATA, 2 * a, dataPageKey(Math.floor((a * 8) / 4096)));
        this.read(DATA, 2 * a + 1, dataPageKey(Math.floor((a * 8) / 4096)));
        return;
      case OP.awaitChange:
        for (let k = 0; k < this.awIdx.length; k++) this.read(this.awBuf[k]!, this.awIdx[k]!, this.awKey[k]!);
        return;
    }
    switch (writtenWord(this.prevOp)) {
      case W_META32:
        this.wrote(META, a, metaKey32(a), false);
        return;
      case W_META64:
        this.wrote(META, 2 * a, metaKey64(a), true);
        return;
      case W_DATA64:
        this.wrote(DATA, 2 * a, dataPageKey(Math.floor((a * 8) / 4096)), true);
        return;
      default:
        // Locks, reader-writer locks, byte ranges: progress, or more than this record can judge.
        this.pure = false;
    }
  }

  private begin(loop: number): void {
    this.loop = loop;
    this.pure = true;
    this.hasPrev = false;
    this.rBuf.length = 0;
    this.rIdx.length = 0;
    this.rVal.length = 0;
    this.rKey.length = 0;
  }

  /**
   * The top of an iteration of `loop`. True when the iteration since the last tick of the same loop changed
   * nothing and every word it read still holds what it read: the thread's await set is then those words, and
   * the caller announces an OP.awaitChange (the thread blocks until one changes).
   */
  tick(loop: number): boolean {
    if (this.loop !== loop) {
      this.begin(loop);
      return false;
    }
    if (this.hasPrev) this.finishPrev();
    let blocked = this.pure && this.rIdx.length > 0;
    for (let k = 0; blocked && k < this.rIdx.length; k++) {
      const now = this.rBuf[k] === META ? this.meta[this.rIdx[k]!]! : this.data[this.rIdx[k]!]!;
      // Changed since it was read (another thread ran in between): the next iteration may differ, so run it.
      if (now !== this.rVal[k]) blocked = false;
    }
    if (blocked) {
      this.setAwait(this.rBuf, this.rIdx, this.rVal, this.rKey);
      this.fromSpin = true;
      this.skipNext = true;
    }
    this.begin(loop);
    return blocked;
  }

  /** `loop` was left (by any way out): the next tick of it starts a new record. */
  end(loop: number): void {
    if (this.loop === loop) this.loop = -1;
  }

  /** A hand-written wait (Mem.awaitChange32): meta words and the values seen there. */
  setHandAwait(words: readonly number[], seen: readonly number[]): void {
    const buf: number[] = [];
    const keys: number[] = [];
    for (const w of words) {
      buf.push(META);
      keys.push(metaKey32(w));
    }
    this.setAwait(buf, words, seen, keys);
    this.fromSpin = false;
  }

  private setAwait(buf: readonly number[], idx: readonly number[], val: readonly number[], keys: readonly number[]): void {
    this.awBuf.length = 0;
    this.awIdx.length = 0;
    this.awVal.length = 0;
    this.awKey.length = 0;
    const acc: Access = { keys: [], writes: [], ors: [] };
    for (let k = 0; k < idx.length; k++) {
      this.awKey.push(keys[k]!);
      this.awBuf.push(buf[k]!);
      this.awIdx.push(idx[k]!);
      this.awVal.push(val[k]!);
      if (!acc.keys.includes(keys[k]!)) {
        acc.keys.push(keys[k]!);
        acc.writes.push(false);
        acc.ors.push(false);
      }
    }
    this.awAccess = acc;
  }

  /** The awaitChange's locations: reads of every word it waits on. */
  awaitAccess(): Access {
    return this.awAccess ?? { keys: [], writes: [], ors: [] };
  }

  /** Can the awaitChange go on: does some word no longer hold the value waited out? */
  awaitEnabled(): boolean {
    for (let k = 0; k < this.awIdx.length; k++) {
      const now = this.awBuf[k] === META ? this.meta[this.awIdx[k]!]! : this.data[this.awIdx[k]!]!;
      if (now !== this.awVal[k]) return true;
    }
    return false;
  }

  /** The await set as (meta or data, Int32 index, value) triples, for messages. */
  awaitWords(): { data: boolean; index: number; value: number }[] {
    return this.awIdx.map((index, k) => ({ data: this.awBuf[k] === DATA, index, value: this.awVal[k]! }));
  }
}
