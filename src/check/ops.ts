// What each access-layer operation touches: its memory locations, read or write, whether it can block, and when it is enabled.
//
// Locations are keys: a meta-buffer Int32 word w is key 2w (a 64-bit word at
// u64 index a is keyed by its low half, 4a — kvmmu never accesses one location
// with two widths); a 4 KiB page p of the data buffer is key 2p + 1 (data
// operations conflict at page granularity, which is coarser than the bytes
// and therefore sound). Two operations conflict when they share a key and one
// of them writes it.

import { OP } from '../shm/access';

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

export function conflicts(x: Access, y: Access): boolean {
  for (let i = 0; i < x.keys.length; i++)
    for (let j = 0; j < y.keys.length; j++)
      if (x.keys[i] === y.keys[j] && (x.writes[i] || y.writes[j]) && !(x.ors[i] && y.ors[j])) return true;
  return false;
}

/** Is the operation enabled in the current state? Only lock and waitWhile32 can be blocked. */
export function isEnabled(i32: Int32Array, op: number, a: number, b: number): boolean {
  if (op === OP.lock) return Atomics.load(i32, a) === Atomics.load(i32, a + 1);
  if (op === OP.waitWhile32) return Atomics.load(i32, a) !== b;
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
  return true;
}
