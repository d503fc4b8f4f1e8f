// Access layer, on one thread: each operation's semantics, what the hook sees, hooks that interleave, notes, lock state.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LOCK_WORDS, Mem, NOTE, OP, OP_NAMES, type AccessHook, RWLOCK_WORDS } from '../../src/shm/access';
import { LayoutBuilder, createShm, region, type Shm } from '../../src/shm/layout';

/** Meta: 16 64-bit words, then one lock; data: two 4 KiB pages. */
function makeShm(): { shm: Shm; lock: number; rw: number } {
  const b = new LayoutBuilder();
  b.meta('words', 16 * 8);
  b.meta('lock', LOCK_WORDS * 4);
  b.meta('rw', RWLOCK_WORDS * 4);
  b.data('pages', 2 * 4096);
  const shm = createShm(b.finish());
  return { shm, lock: region(shm.layout, 'lock').off / 4, rw: region(shm.layout, 'rw').off / 4 };
}

type Seen = readonly [op: string, a: number, b: number, c: number];

/** Records every `before` as [op name, a, b, c] and every note; runs `onBefore` first if set. */
class Recorder implements AccessHook {
  readonly seen: Seen[] = [];
  readonly notes: (readonly [number, number, number])[] = [];
  onBefore: ((op: number, a: number) => void) | null = null;

  before(op: number, a: number, b: number, c: number): void {
    this.seen.push([OP_NAMES[op] ?? `?${op}`, a, b, c]);
    if (this.onBefore !== null) this.onBefore(op, a);
  }

  note(kind: number, a: number, b: number): void {
    this.notes.push([kind, a, b]);
  }
}

const HIGH = 0x8000_0000_0000_0001n;
const HIGH2 = 0xffff_0000_dead_beefn;

test('cmpxchg64 returns the old value and swaps only when it matches, also with bit 63 set', () => {
  const mem = new Mem(makeShm().shm);
  mem.store64(1, HIGH);
  assert.equal(mem.cmpxchg64(1, 5n, 7n), HIGH, 'a mismatch returns the current value');
  assert.equal(mem.load64(1), HIGH, 'a mismatch leaves the word alone');
  assert.equal(mem.cmpxchg64(1, HIGH, HIGH2), HIGH, 'a match returns the old value');
  assert.equal(mem.load64(1), HIGH2);
  assert.equal(mem.cmpxchg64(1, HIGH2, 0n), HIGH2);
  assert.equal(mem.load64(1), 0n);
  assert.equal(mem.load64(0), 0n, 'the neighbouring words are untouched');
  assert.equal(mem.load64(2), 0n);
});

test('xchg64 stores the new value and returns the old one', () => {
  const mem = new Mem(makeShm().shm);
  mem.store64(3, 11n);
  assert.equal(mem.xchg64(3, HIGH), 11n);
  assert.equal(mem.xchg64(3, 12n), HIGH);
  assert.equal(mem.load64(3), 12n);
});

test('32-bit cmpxchg and xchg return the old value; cmpxchg swaps only on a match', () => {
  const mem = new Mem(makeShm().shm);
  mem.store32(4, -5);
  assert.equal(mem.cmpxchg32(4, 0, 9), -5);
  assert.equal(mem.load32(4), -5);
  assert.equal(mem.cmpxchg32(4, -5, 9), -5);
  assert.equal(mem.load32(4), 9);
  assert.equal(mem.xchg32(4, 1 << 31), 9);
  assert.equal(mem.load32(4), 1 << 31);
});

test('fetch-add, fetch-or and fetch-and return the old value and apply the operation', () => {
  const mem = new Mem(makeShm().shm);
  mem.store32(6, 10);
  assert.equal(mem.fetchAdd32(6, 5), 10);
  assert.equal(mem.fetchAdd32(6, -20), 15);
  assert.equal(mem.load32(6), -5);
  mem.store32(7, 0b0101);
  assert.equal(mem.fetchOr32(7, 0b1010 | (1 << 31)), 0b0101);
  assert.equal(mem.load32(7), 0b1111 | (1 << 31));
  assert.equal(mem.fetchAnd32(7, ~0b0110), 0b1111 | (1 << 31));
  assert.equal(mem.load32(7), 0b1001 | (1 << 31));
  assert.equal(mem.or32(7, 0b0110), undefined, 'or32 returns nothing');
  assert.equal(mem.load32(7), 0b1111 | (1 << 31));
});

test('64-bit and 32-bit views address the same meta bytes (index units are words of their width)', () => {
  const mem = new Mem(makeShm().shm);
  mem.store64(2, 0x0000_0007_0000_0003n);
  assert.equal(mem.load32(4), 3, 'low half of 64-bit word 2 is 32-bit word 4 (little endian)');
  assert.equal(mem.load32(5), 7);
});

test('load64Low reads the low half of a 64-bit word and is seen by the hook as that word\'s load64; storeRelease32 as a store32', () => {
  const mem = new Mem(makeShm().shm);
  mem.store64(3, HIGH2);
  const rec = new Recorder();
  mem.hook = rec;
  assert.equal(mem.load64Low(3), 0xdead_beef | 0, 'the low 32 bits, as a signed 32-bit Number');
  mem.storeRelease32(9, 42);
  mem.hook = null;
  assert.equal(mem.load32(9), 42);
  assert.equal(mem.load64(4) & 0xffff_ffff_0000_0000n, 42n << 32n, '32-bit word 9 is the high half of 64-bit word 4');
  assert.deepEqual(rec.seen, [
    ['load64', 3, 0, 0],
    ['store32', 9, 0, 0],
  ]);
});

test('data words live in the data buffer: load, store and cmpxchg there leave the meta buffer alone', () => {
  const { shm } = makeShm();
  const mem = new Mem(shm);
  mem.storeData64(513, HIGH);
  assert.equal(mem.loadData64(513), HIGH);
  assert.equal(mem.d8[513 * 8 + 7], 0x80, 'index 513 is byte 4104, in the second page');
  assert.equal(mem.cmpxchgData64(513, 1n, 2n), HIGH);
  assert.equal(mem.loadData64(513), HIGH);
  assert.equal(mem.cmpxchgData64(513, HIGH, HIGH2), HIGH);
  assert.equal(mem.loadData64(513), HIGH2);
  assert.ok(new Uint8Array(shm.meta).every((x) => x === 0), 'no meta byte changed');
});

test('copyData copies a whole page and compareData sees a difference in its first or last byte', () => {
  const mem = new Mem(makeShm().shm);
  for (let k = 0; k < 4096; k++) mem.d8[k] = (k * 7 + 3) & 0xff;
  assert.equal(mem.compareData(0, 4096, 4096), false);
  mem.copyData(4096, 0, 4096);
  for (let k = 0; k < 4096; k++) assert.equal(mem.d8[4096 + k], mem.d8[k], `byte ${k}`);
  assert.equal(mem.compareData(0, 4096, 4096), true);
  mem.d8[4096 + 4095] ^= 1;
  assert.equal(mem.compareData(0, 4096, 4096), false, 'last byte differs');
  mem.d8[4096 + 4095] ^= 1;
  mem.d8[4096] ^= 0x80;
  assert.equal(mem.compareData(0, 4096, 4096), false, 'first byte differs');
  assert.equal(mem.compareData(4, 4096 + 4, 4092), true, 'the range after the first word is still equal');
});

test('readData and writeData move a page between the data buffer and a private buffer at the given offsets', () => {
  const mem = new Mem(makeShm().shm);
  const src = new Uint8Array(4096 + 16);
  for (let k = 0; k < src.length; k++) src[k] = (k * 13) & 0xff;
  mem.writeData(4096, src, 16, 4096);
  for (let k = 0; k < 4096; k++) assert.equal(mem.d8[4096 + k], src[16 + k], `written byte ${k}`);
  assert.ok(mem.d8.subarray(0, 4096).every((x) => x === 0), 'the other page is untouched');

  const dst = new Uint8Array(4096 + 8).fill(0xaa);
  mem.readData(4096, dst, 8, 4096);
  assert.deepEqual([...dst.subarray(0, 8)], new Array<number>(8).fill(0xaa), 'bytes before dstOff are untouched');
  assert.deepEqual(dst.subarray(8), src.subarray(16));
});

test('the hook sees every operation once, before it, with its op code and operands', () => {
  const { shm, lock, rw } = makeShm();
  const mem = new Mem(shm);
  const rec = new Recorder();
  mem.hook = rec;
  const priv = new Uint8Array(64);
  mem.load64(1);
  mem.store64(2, 1n);
  mem.cmpxchg64(3, 0n, 1n);
  mem.xchg64(4, 1n);
  mem.load32(5);
  mem.store32(6, 1);
  mem.cmpxchg32(7, 0, 1);
  mem.xchg32(8, 1);
  mem.fetchAdd32(9, 1);
  mem.fetchOr32(10, 1);
  mem.fetchAnd32(11, 1);
  mem.or32(15, 2);
  mem.lock(lock);
  mem.unlock(lock);
  mem.waitWhile32(6, 0); // word 6 holds 1: returns at once
  mem.loadData64(12);
  mem.storeData64(13, 1n);
  mem.cmpxchgData64(14, 0n, 1n);
  mem.copyData(4096, 0, 4096);
  mem.readData(8, priv, 0, 64);
  mem.writeData(16, priv, 0, 32);
  mem.compareData(0, 4096, 4096);
  mem.readLock(rw);
  mem.readUnlock(rw);
  mem.writeLock(rw); // two operations: the claim, then the wait for readers
  mem.writeUnlock(rw);
  mem.awaitChange32([5, 6], [0, 0]); // word 6 holds 1: returns at once
  const expected: Seen[] = [
    ['load64', 1, 0, 0],
    ['store64', 2, 0, 0],
    ['cmpxchg64', 3, 0, 0],
    ['xchg64', 4, 0, 0],
    ['load32', 5, 0, 0],
    ['store32', 6, 0, 0],
    ['cmpxchg32', 7, 0, 0],
    ['xchg32', 8, 0, 0],
    ['fetchAdd32', 9, 0, 0],
    ['fetchOr32', 10, 0, 0],
    ['fetchAnd32', 11, 0, 0],
    ['or32', 15, 0, 0],
    ['lock', lock, 0, 0],
    ['unlock', lock, 0, 0],
    ['waitWhile32', 6, 0, 0],
    ['loadData64', 12, 0, 0],
    ['storeData64', 13, 0, 0],
    ['cmpxchgData64', 14, 0, 0],
    ['copyData', 4096, 4096, 0],
    ['readData', 8, 64, -1],
    ['writeData', 16, 32, -1],
    ['compareData', 0, 4096, 4096],
    ['readLock', rw, 0, 0],
    ['readUnlock', rw, 0, 0],
    ['writeLock', rw, 0, 0],
    ['writeLockWait', rw, 0, 0],
    ['writeUnlock', rw, 0, 0],
    ['awaitChange', 2, 0, 0],
  ];
  assert.deepEqual(rec.seen, expected);
  assert.equal(Object.keys(OP).length, expected.length, 'every op code is exercised above');
});

test('the hook passes the awaited value of waitWhile32 as b', () => {
  const mem = new Mem(makeShm().shm);
  const rec = new Recorder();
  mem.hook = rec;
  mem.waitWhile32(0, -7); // word 0 holds 0
  assert.deepEqual(rec.seen, [['waitWhile32', 0, -7, 0]]);
});

test('a hook that changes the word before a cmpxchg64 makes the cmpxchg fail and return the new value', () => {
  const { shm } = makeShm();
  const mem = new Mem(shm);
  const other = new Mem(shm); // the other thread's handle: no hook
  mem.store64(5, HIGH);
  const rec = new Recorder();
  rec.onBefore = (op, a) => {
    if (op === OP.cmpxchg64 && a === 5) other.store64(5, HIGH2);
  };
  mem.hook = rec;
  assert.equal(mem.cmpxchg64(5, HIGH, 1n), HIGH2, 'cmpxchg saw the interleaved store');
  assert.equal(mem.load64(5), HIGH2, 'and did not overwrite it');
});

test('a hook that runs another thread before waitWhile32 lets the wait return the value that thread wrote', () => {
  const { shm } = makeShm();
  const mem = new Mem(shm);
  const other = new Mem(shm);
  const rec = new Recorder();
  rec.onBefore = (op, a) => {
    if (op === OP.waitWhile32) other.store32(a, 42);
  };
  mem.hook = rec;
  assert.equal(mem.waitWhile32(3, 0), 42);
});

test('a hook that takes the lock before a load sees it held by the other handle', () => {
  const { shm, lock } = makeShm();
  const mem = new Mem(shm);
  const other = new Mem(shm);
  other.tid = 9;
  const rec = new Recorder();
  rec.onBefore = (op) => {
    if (op === OP.load32) other.lock(lock);
  };
  mem.hook = rec;
  mem.load32(0);
  assert.equal(mem.isLocked(lock), true);
  assert.equal(mem.lockHolder(lock), 9);
  mem.hook = null;
  other.unlock(lock);
  assert.equal(mem.isLocked(lock), false);
});

test('note reaches the hook with its kind and operands and is not a scheduling point', () => {
  const mem = new Mem(makeShm().shm);
  const rec = new Recorder();
  mem.hook = rec;
  mem.note(NOTE.fastFixed, 17, -1);
  mem.note(NOTE.walkEnd, 2, 0);
  assert.deepEqual(rec.notes, [
    [NOTE.fastFixed, 17, -1],
    [NOTE.walkEnd, 2, 0],
  ]);
  assert.deepEqual(rec.seen, [], 'notes do not go through before()');
});

test('note without a hook changes nothing', () => {
  const { shm } = makeShm();
  const mem = new Mem(shm);
  mem.store64(0, 1n);
  const meta = new Uint8Array(shm.meta).slice();
  const data = new Uint8Array(shm.data).slice();
  assert.doesNotThrow(() => mem.note(NOTE.guestWrite, 1, 2));
  assert.deepEqual(new Uint8Array(shm.meta), meta);
  assert.deepEqual(new Uint8Array(shm.data), data);
});

test('isLocked and lockHolder follow lock and unlock, naming the holder by its tid (0 included)', () => {
  const { shm, lock } = makeShm();
  const a = new Mem(shm);
  const b = new Mem(shm);
  a.tid = 3;
  b.tid = 0;
  assert.equal(a.isLocked(lock), false);
  assert.equal(a.lockHolder(lock), -1);
  a.lock(lock);
  assert.equal(b.isLocked(lock), true, 'every handle sees the lock held');
  assert.equal(b.lockHolder(lock), 3);
  a.unlock(lock);
  assert.equal(b.isLocked(lock), false);
  assert.equal(b.lockHolder(lock), -1);
  b.lock(lock);
  assert.equal(a.isLocked(lock), true);
  assert.equal(a.lockHolder(lock), 0, 'tid 0 is a holder, not "nobody"');
  b.unlock(lock);
  for (let k = 0; k < 5; k++) {
    a.lock(lock);
    a.unlock(lock);
  }
  assert.equal(a.isLocked(lock), false, 'tickets stay balanced over repeated lock/unlock');
});
