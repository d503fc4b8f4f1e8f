// Sequence counts: the reader/writer protocol on one thread (with hooks as the other side) and on real threads with a two-word record.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Mem, OP, type AccessHook } from '../../src/shm/access';
import { LayoutBuilder, createShm, region, type Shm } from '../../src/shm/layout';
import { SeqCount } from '../../src/shm/seqcount';
import { JobWorker } from './lock-worker';

/** Meta Int32 words: seq, a, b, stop, start. */
function makeShm(): { shm: Shm; seq: number; a: number; b: number; stop: number; start: number } {
  const bld = new LayoutBuilder();
  bld.meta('words', 8 * 4);
  const shm = createShm(bld.finish());
  const w = region(shm.layout, 'words').off / 4;
  return { shm, seq: w, a: w + 1, b: w + 2, stop: w + 3, start: w + 4 };
}

/** A hook that runs `f` before the first operation of kind `op`, then stays quiet. */
function onceBefore(op: number, f: () => void): AccessHook & { ops: number[] } {
  let done = false;
  const ops: number[] = [];
  return {
    ops,
    before(o: number): void {
      ops.push(o);
      if (!done && o === op) {
        done = true;
        f();
      }
    },
    note(): void {},
  };
}

test('a read with no writer since readBegin needs no retry, and readBegin returns an even count', () => {
  const s = makeShm();
  const mem = new Mem(s.shm);
  const seq = new SeqCount(mem, s.seq);
  const start = seq.readBegin();
  assert.equal(start % 2, 0);
  assert.equal(seq.readRetry(start), false);
  assert.equal(seq.readRetry(start), false, 'asking twice changes nothing');
});

test('writeBegin makes the count odd, writeEnd makes it even again, two apart', () => {
  const s = makeShm();
  const mem = new Mem(s.shm);
  const seq = new SeqCount(mem, s.seq);
  const c0 = mem.load32(s.seq);
  seq.writeBegin();
  assert.equal(mem.load32(s.seq), c0 + 1);
  assert.equal(mem.load32(s.seq) & 1, 1);
  seq.writeEnd();
  assert.equal(mem.load32(s.seq), c0 + 2);
});

test('a write that completes after readBegin makes readRetry ask for a retry', () => {
  const s = makeShm();
  const mem = new Mem(s.shm);
  const seq = new SeqCount(mem, s.seq);
  const writer = new SeqCount(new Mem(s.shm), s.seq);
  const start = seq.readBegin();
  writer.writeBegin();
  writer.writeEnd();
  assert.equal(seq.readRetry(start), true);
  const again = seq.readBegin();
  assert.equal(again, start + 2);
  assert.equal(seq.readRetry(again), false);
});

test('a write still in progress after readBegin makes readRetry ask for a retry', () => {
  const s = makeShm();
  const mem = new Mem(s.shm);
  const seq = new SeqCount(mem, s.seq);
  const writer = new SeqCount(new Mem(s.shm), s.seq);
  const start = seq.readBegin();
  writer.writeBegin();
  assert.equal(seq.readRetry(start), true);
  writer.writeEnd();
  assert.equal(seq.readRetry(start), true, 'the finished write still invalidates the read');
});

test('readBegin during a write waits (one waitWhile32) until the writer ends and returns the new even count', () => {
  const s = makeShm();
  const mem = new Mem(s.shm);
  const wmem = new Mem(s.shm);
  const writer = new SeqCount(wmem, s.seq);
  const seq = new SeqCount(mem, s.seq);
  writer.writeBegin();
  wmem.store32(s.a, 5);
  // The writer finishes only when the reader is about to wait: a sequential interleaving.
  const hook = onceBefore(OP.waitWhile32, () => {
    wmem.store32(s.b, -5);
    writer.writeEnd();
  });
  mem.hook = hook;
  const start = seq.readBegin();
  assert.equal(start, 2);
  assert.deepEqual(hook.ops, [OP.load32, OP.waitWhile32], 'read the odd count once, then waited');
  assert.equal(mem.load32(s.a), 5);
  assert.equal(mem.load32(s.b), -5);
  assert.equal(seq.readRetry(start), false);
});

test('a writer interleaved between the two reads of a record is caught by readRetry', () => {
  const s = makeShm();
  const mem = new Mem(s.shm);
  const wmem = new Mem(s.shm);
  const writer = new SeqCount(wmem, s.seq);
  const seq = new SeqCount(mem, s.seq);
  wmem.store32(s.a, 1);
  wmem.store32(s.b, -1);
  let interleaved = false;
  mem.hook = {
    before(op: number, i: number): void {
      // Before the reader loads b (having loaded a = 1), the writer rewrites the pair.
      if (!interleaved && op === OP.load32 && i === s.b) {
        interleaved = true;
        writer.writeBegin();
        wmem.store32(s.a, 2);
        wmem.store32(s.b, -2);
        writer.writeEnd();
      }
    },
    note(): void {},
  };
  let tries = 0;
  let a: number;
  let b: number;
  for (;;) {
    tries++;
    const st = seq.readBegin();
    a = mem.load32(s.a);
    b = mem.load32(s.b);
    if (!seq.readRetry(st)) break;
    assert.deepEqual([a, b], [1, -2], 'the first try saw a torn pair');
  }
  assert.equal(tries, 2);
  assert.deepEqual([a, b], [2, -2]);
});

test('readers on other threads that retry as the protocol says never accept a torn two-word record', { timeout: 20_000 }, async (t) => {
  const s = makeShm();
  const mem = new Mem(s.shm);
  const n = 100_000;
  const common = { shm: s.shm, seq: s.seq, a: s.a, b: s.b, stop: s.stop, start: s.start };
  const workers = [
    new JobWorker({ kind: 'seqWriter', ...common, n }),
    new JobWorker({ kind: 'seqReader', ...common, n }),
    new JobWorker({ kind: 'seqReader', ...common, n }),
  ];
  try {
    for (const w of workers) await w.next('ready', 5000);
    mem.store32(s.start, 1);
    Atomics.notify(mem.i32, s.start);
    await workers[0].next('seqWriter', 15_000);
    const readers = await Promise.all([workers[1].next('seqReader', 5000), workers[2].next('seqReader', 5000)]);
    assert.equal(mem.load32(s.seq), 2 * n, 'every write section was closed');
    assert.deepEqual([mem.load32(s.a), mem.load32(s.b)], [n, -n]);
    for (const [k, r] of readers.entries()) {
      assert.ok(r.reads > 0, `reader ${k} completed no read`);
      assert.equal(r.torn, 0, `reader ${k} accepted ${r.torn} torn pairs out of ${r.reads}`);
    }
    // The readers ran while the writer did (else torn === 0 would prove nothing): they accepted records from its middle.
    assert.ok(
      readers.some((r) => r.mid > 0),
      `no reader read while the writer was writing: ${readers.map((r) => r.reads).join(', ')} reads`,
    );
    const retries = readers.reduce((x, r) => x + r.retries, 0);
    const rawTorn = readers.reduce((x, r) => x + r.rawTorn, 0);
    const reads = readers.reduce((x, r) => x + r.reads, 0);
    // Not asserted (it depends on the OS scheduler), but shows the readers overlapped the writer.
    t.diagnostic(`${reads} protected reads, ${retries} retries; unprotected reads saw ${rawTorn} torn pairs`);
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
});
