// Access layer on real threads: the ticket lock and the reader-writer lock exclude worker_threads from each other, and waitWhile32 blocks a worker until a word changes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LOCK_WORDS, Mem, RWLOCK_WORDS, RW_FREE } from '../../src/shm/access';
import { LayoutBuilder, createShm, region, type Shm } from '../../src/shm/layout';
import { JobWorker } from './lock-worker';

/** Meta: a lock, then the counter, the in-section count, the start flag and two spare words, each an Int32. */
function makeShm(): { shm: Shm; lock: number; counter: number; inside: number; start: number; word: number; returned: number } {
  const b = new LayoutBuilder();
  b.meta('lock', LOCK_WORDS * 4);
  b.meta('words', 8 * 4);
  const shm = createShm(b.finish());
  const w = region(shm.layout, 'words').off / 4;
  return { shm, lock: region(shm.layout, 'lock').off / 4, counter: w, inside: w + 1, start: w + 2, word: w + 3, returned: w + 4 };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

for (const nWorkers of [2, 4]) {
  const n = nWorkers === 2 ? 50_000 : 10_000;
  test(`${nWorkers} workers incrementing a plain counter under one lock lose no increment and never overlap`, { timeout: 20_000 }, async () => {
    const s = makeShm();
    const mem = new Mem(s.shm);
    const workers: JobWorker[] = [];
    try {
      for (let t = 0; t < nWorkers; t++) {
        workers.push(
          new JobWorker({ kind: 'count', shm: s.shm, tid: t, lock: s.lock, counter: s.counter, inside: s.inside, start: s.start, n }),
        );
      }
      for (const w of workers) await w.next('ready', 5000);
      mem.store32(s.start, 1);
      Atomics.notify(mem.i32, s.start);
      const results = await Promise.all(workers.map((w) => w.next('count', 15_000)));
      assert.equal(mem.load32(s.counter), nWorkers * n, 'every increment survived');
      for (const [t, r] of results.entries()) {
        assert.equal(r.overlaps, 0, `worker ${t} found another thread inside the critical section`);
        assert.equal(r.wrongHolder, 0, `worker ${t} saw another holder id while holding the lock`);
      }
      assert.equal(mem.isLocked(s.lock), false, 'the lock is free at the end');
      assert.equal(mem.lockHolder(s.lock), -1);
    } finally {
      await Promise.all(workers.map((w) => w.terminate()));
    }
  });
}

test('3 workers on one rwlock: writers exclude everyone and lose no increment, readers share it', { timeout: 30_000 }, async () => {
  const b = new LayoutBuilder();
  b.meta('rw', RWLOCK_WORDS * 4);
  b.meta('words', 8 * 4);
  const shm = createShm(b.finish());
  const lock = region(shm.layout, 'rw').off / 4;
  const w = region(shm.layout, 'words').off / 4;
  const mem = new Mem(shm);
  const n = 20_000;
  const writeEvery = 4;
  const workers: JobWorker[] = [];
  try {
    for (let t = 0; t < 3; t++)
      workers.push(
        new JobWorker({ kind: 'rw', shm, tid: t, lock, counter: w, writers: w + 1, readers: w + 2, maxReaders: w + 3, start: w + 4, n, writeEvery }),
      );
    for (const x of workers) await x.next('ready', 5000);
    mem.store32(w + 4, 1);
    Atomics.notify(mem.i32, w + 4);
    const results = await Promise.all(workers.map((x) => x.next('rw', 25_000)));
    const writes = results.reduce((a, r) => a + r.writes, 0);
    assert.equal(mem.load32(w), writes, 'every write-section increment survived');
    for (const [t, r] of results.entries()) {
      assert.equal(r.writeOverlaps, 0, `worker ${t} found someone else inside its write section`);
      assert.equal(r.readDuringWrite, 0, `worker ${t} saw a writer inside its read section`);
      assert.ok(r.reads > 0 && r.writes > 0);
    }
    assert.ok(mem.load32(w + 3) >= 2, 'readers were inside together at least once');
    assert.equal(mem.rwReaders(lock), 0);
    assert.deepEqual(mem.rwWriter(lock), { state: RW_FREE, holder: -1 });
  } finally {
    await Promise.all(workers.map((x) => x.terminate()));
  }
});

test('lock() reports a contention only when the taker found the lock held', { timeout: 10_000 }, async () => {
  const s = makeShm();
  const mem = new Mem(s.shm);
  assert.equal(mem.lock(s.lock), false, 'a free lock is not contended');
  assert.equal(mem.lockTakers(s.lock), 1);
  const w = new JobWorker({ kind: 'take', shm: s.shm, lock: s.lock });
  try {
    await w.next('ready', 5000);
    // Hold the lock until the worker has taken its ticket and queued behind us.
    const deadline = Date.now() + 5000;
    while (mem.lockTakers(s.lock) < 2) {
      if (Date.now() > deadline) throw new Error('the worker never queued for the lock');
      await sleep(1);
    }
    mem.unlock(s.lock);
    assert.deepEqual(await w.next('take', 5000), { kind: 'take', contended: true });
    assert.equal(mem.lockTakers(s.lock), 0, 'the worker released the lock');
    assert.equal(mem.lock(s.lock), false, 'free again: not contended');
    mem.unlock(s.lock);
  } finally {
    await w.terminate();
  }
});

test('waitWhile32 keeps a worker blocked while the word is unchanged and returns the new value once the main thread stores it (no notify)', { timeout: 10_000 }, async () => {
  const s = makeShm();
  const mem = new Mem(s.shm);
  const w = new JobWorker({ kind: 'wait', shm: s.shm, word: s.word, returned: s.returned });
  try {
    await w.next('ready', 5000);
    await sleep(100); // long past the spin phase: the worker is sleeping in slices
    assert.equal(mem.load32(s.returned), 0, 'the worker returned although the word still held the awaited value');
    mem.store32(s.word, 7);
    const r = await w.next('wait', 5000);
    assert.equal(r.value, 7);
    assert.equal(mem.load32(s.returned), 1);
  } finally {
    await w.terminate();
  }
});
