// What each access-layer operation touches: its memory locations, read or write, whether it can block, and when it is enabled.
//
// Locations are keys: a meta-buffer Int32 word w is key 2w (a 64-bit word at
// u64 index a is keyed by its low half, 4a — kvmmu never accesses one location
// with two widths); a 4 KiB page p of the data buffer is key 2p + 1 (data
// operations conflict at page granularity, which is coarser than the bytes
// and therefore sound). Two operations conflict when they share a key and one
// of them writes it.
//
// Negative keys are ghost locations: state an invariant monitor keeps for
// itself (what the guest wrote, which walkers are in flight). A step's access
// is its operation's locations plus what monitors read and write during it
// (engine.ts, Footprint), so the reduction orders monitors too.

import { OP, RW_FREE, RW_READERS, RW_WRITER } from '../shm/access';

export interface Access {
  /** Location keys touched. */
  readonly keys: number[];
  /** For each key, whether it is written. */
  readonly writes: boolean[];
  /** For each key, whether the write is a commutative bit-set (or32): two of those never conflict. */
  readonly ors: boolean[];
}

function dataPages(out: Access, byte: number, len: number, write: boolean): void {
  const first = Math.floor(byte / 4096);
  const last = Math.floor((byte + Math.max(len, 1) - 1) / 4096);
  for (let p = first; p <= last; p++) {
    out.keys.push(p * 2 + 1);
    out.writes.push(write);
    out.ors.push(false);
  }
}

/** The key of meta Int32 word `i`. */
export const metaKey32 = (i: number): number => 2 * i;
/** The key of the meta 64-bit word at u64 index `i` (its low half's). */
export const metaKey64 = (i: number): number => 4 * i;
/** The key of 4 KiB page `p` of the data buffer. */
export const dataPageKey = (p: number): number => 2 * p + 1;
/** Ghost spaces: one per kind of monitor state. */
export const GHOST_SPACES = 64;
/** The key of ghost location `i` (>= 0) in ghost space `space` (0..GHOST_SPACES-1). */
export const ghostKey = (space: number, i: number): number => -1 - space - GHOST_SPACES * i;

const cache = new Map<number, Access>();

/** The locations operation (op, a, b, c) touches (shared, immutable objects for single-word operations). */
export function accessOf(op: number, a: number, b: number, c: number): Access {
  if (op === OP.copyData || op === OP.readData || op === OP.writeData || op === OP.compareData) return computeAccess(op, a, b, c);
  const key = op * 2 ** 31 + a;
  let acc = cache.get(key);
  if (acc === undefined) {
    acc = computeAccess(op, a, b, c);
    if (cache.size > 1 << 16) cache.clear();
    cache.set(key, acc);
  }
  return acc;
}

function computeAccess(op: number, a: number, b: number, c: number): Access {
  const out: Access = { keys: [], writes: [], ors: [] };
  const word = (key: number, write: boolean, or = false): void => {
    out.keys.push(key);
    out.writes.push(write);
    out.ors.push(or);
  };
  switch (op) {
    case OP.load64:
      word(a * 4, false);
      break;
    case OP.store64:
    case OP.cmpxchg64:
    case OP.xchg64:
      word(a * 4, true);
      break;
    case OP.load32:
    case OP.waitWhile32:
      word(a * 2, false);
      break;
    case OP.or32:
      word(a * 2, true, true);
      break;
    case OP.store32:
    case OP.cmpxchg32:
    case OP.xchg32:
    case OP.fetchAdd32:
    case OP.fetchOr32:
    case OP.fetchAnd32:
    case OP.lock:
    case OP.unlock:
      word(a * 2, true);
      break;
    // A reader-writer lock at word a (access.ts RWLOCK_WORDS): its writer word a, its readers count a + 1.
    // Readers counting in and out commute with each other (an add is a commutative update); the writer
    // word orders them against writers.
    case OP.readLock:
      word(a * 2, false);
      word((a + 1) * 2, true, true);
      break;
    case OP.readUnlock:
      word((a + 1) * 2, true, true);
      break;
    case OP.writeLock:
    case OP.writeUnlock:
      word(a * 2, true);
      break;
    case OP.writeLockWait:
      // It moves the writer word from RW_WAITING to RW_LOCKED, which no operation tells apart (both keep
      // takers out): only its read of the readers count orders it.
      word((a + 1) * 2, false);
      break;
    case OP.loadData64:
      dataPages(out, a * 8, 8, false);
      break;
    case OP.storeData64:
    case OP.cmpxchgData64:
      dataPages(out, a * 8, 8, true);
      break;
    case OP.copyData:
      dataPages(out, a, b, true);
      dataPages(out, c, b, false);
      break;
    case OP.readData:
      dataPages(out, a, b, false);
      break;
    case OP.writeData:
      dataPages(out, a, b, true);
      break;
    case OP.compareData:
      dataPages(out, a, b, false);
      dataPages(out, c, b, false);
      break;
    default:
      throw new Error(`check: unknown operation ${op}`);
  }
  return out;
}

/**
 * Width of the word a read-modify-write operation targets, for telling whether it changed it: 32 (meta Int32
 * word a), 64 (meta 64-bit word a), -64 (data 64-bit word a); 0 for every other operation. A compare-and-swap
 * whose compare failed, a fetch-or or fetch-and or fetch-add or exchange that left the word as it was, wrote
 * nothing anyone can see: the engine counts it as a read of the word (readAccessOf), as GenMC and Nidhugg do.
 *
 * Why that is sound: the operation is atomic, so no step runs between its read and its write, and the write put
 * back the value it read; every other thread sees exactly what a load would have left. Its conflicts are then a
 * read's: it conflicts with every write of the word (a successful compare-and-swap included) and commutes with
 * reads and other failed ones. Whether it fails is a matter of the values, so in another order (a race reversed)
 * the same operation may succeed and write: the reduction takes each step's kind from the execution it explored
 * (Step.access), never from the operation code, and learns the kind in a reversed execution by running it.
 */
export function rmwWidth(op: number): number {
  switch (op) {
    case OP.cmpxchg32:
    case OP.xchg32:
    case OP.fetchAdd32:
    case OP.fetchOr32:
    case OP.fetchAnd32:
      return 32;
    case OP.cmpxchg64:
    case OP.xchg64:
      return 64;
    case OP.cmpxchgData64:
      return -64;
    default:
      return 0;
  }
}

/** The access of read-modify-write `op` on word `a` that changed nothing: a read of the same word (rmwWidth). */
export function readAccessOf(op: number, a: number): Access {
  const w = rmwWidth(op);
  return accessOf(w === 32 ? OP.load32 : w === 64 ? OP.load64 : OP.loadData64, a, 0, 0);
}

/**
 * `acc` with the extra locations in (keys, writes, ors)[0..n) added: a key already there keeps its
 * strongest use (a write beats an or beats a read; an or and a read of one key make a write).
 */
export function withExtra(acc: Access, keys: readonly number[], writes: readonly boolean[], ors: readonly boolean[], n: number): Access {
  const out: Access = { keys: acc.keys.slice(), writes: acc.writes.slice(), ors: acc.ors.slice() };
  for (let x = 0; x < n; x++) {
    const key = keys[x]!;
    const i = out.keys.indexOf(key);
    if (i < 0) {
      out.keys.push(key);
      out.writes.push(writes[x]!);
      out.ors.push(ors[x]!);
    } else if (out.writes[i] !== writes[x] || out.ors[i] !== ors[x]) {
      // Different uses of one key in one step: a plain write is at least as strong as any of them.
      out.writes[i] = true;
      out.ors[i] = false;
    }
  }
  return out;
}

export function conflicts(x: Access, y: Access): boolean {
  for (let i = 0; i < x.keys.length; i++)
    for (let j = 0; j < y.keys.length; j++)
      if (x.keys[i] === y.keys[j] && (x.writes[i] || y.writes[j]) && !(x.ors[i] && y.ors[j])) return true;
  return false;
}

/** Is the operation enabled in the current state? Only the lock takers and waitWhile32 can be blocked. */
export function isEnabled(i32: Int32Array, op: number, a: number, b: number): boolean {
  if (op === OP.lock) return Atomics.load(i32, a) === Atomics.load(i32, a + 1);
  if (op === OP.waitWhile32) return Atomics.load(i32, a) !== b;
  // The rwlock (access.ts): a reader or a new writer waits while a writer claims or holds it; a writer that
  // claimed it waits for the readers inside.
  if (op === OP.readLock || op === OP.writeLock) return Atomics.load(i32, a + RW_WRITER) === RW_FREE;
  if (op === OP.writeLockWait) return Atomics.load(i32, a + RW_READERS) === 0;
  return true;
}

/**
 * Can `q`'s operation `x`, executed first, be followed by `p`'s blocked
 * operation `y` being the one that ran instead? An unlock and a lock of the
 * same lock are never both enabled (the taker is blocked until the unlock), so
 * reversing them is not a reachable alternative.
 */
export function mayBeCoEnabled(opX: number, aX: number, opY: number, aY: number): boolean {
  if (aX !== aY) return true;
  if ((opX === OP.unlock && opY === OP.lock) || (opX === OP.lock && opY === OP.unlock)) return false;
  // A writer's unlock and the takers it lets in; a reader's unlock and the writer waiting for readers to leave
  // (no reader is inside once that writer can go on).
  if (opX === OP.writeUnlock || opY === OP.writeUnlock) {
    const other = opX === OP.writeUnlock ? opY : opX;
    if (other === OP.readLock || other === OP.writeLock) return false;
  }
  if ((opX === OP.readUnlock && opY === OP.writeLockWait) || (opX === OP.writeLockWait && opY === OP.readUnlock)) return false;
  // A writer past its claim and a new taker: the claim already shuts the taker out.
  if (opX === OP.writeLockWait || opY === OP.writeLockWait) {
    const other = opX === OP.writeLockWait ? opY : opX;
    if (other === OP.readLock || other === OP.writeLock) return false;
  }
  return true;
}
