// Real-thread shm tests' worker: its body (lock counting, waitWhile32, seqcount writer/reader) and the launcher the tests use.
//
// Node's test runner, given a directory, also runs this file as a test: on the
// main thread (no workerData) it only defines the launcher, so that run passes.

import path from 'node:path';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { Mem } from '../../src/shm/access';
import type { Shm } from '../../src/shm/layout';
import { SeqCount } from '../../src/shm/seqcount';

/** What a worker is told to do. Word indices are Int32 indices into the meta buffer. */
export type LockWorkerJob =
  | RwLockWorkerJob
  | {
      /** Increment the plain word `counter` `n` times, each inside lock(`lock`). */
      readonly kind: 'count';
      readonly shm: Shm;
      readonly tid: number;
      readonly lock: number;
      readonly counter: number;
      /** Threads inside the critical section right now (Atomics; must never exceed 1). */
      readonly inside: number;
      /** The worker starts once this word leaves 0. */
      readonly start: number;
      readonly n: number;
    }
  | {
      /** Report 'ready', take lock(`lock`), report whether it was contended, release it. */
      readonly kind: 'take';
      readonly shm: Shm;
      readonly lock: number;
    }
  | {
      /** Report 'ready', then waitWhile32(`word`, 0), set `returned` to 1 and report the value. */
      readonly kind: 'wait';
      readonly shm: Shm;
      readonly word: number;
      readonly returned: number;
    }
  | {
      /** Write the pair (k, -k) at `a`, `b` for k = 1..n inside the seqcount `seq`, then set `stop`. */
      readonly kind: 'seqWriter';
      readonly shm: Shm;
      readonly seq: number;
      readonly a: number;
      readonly b: number;
      readonly stop: number;
      readonly start: number;
      readonly n: number;
    }
  | {
      /** Read the pair until `stop` is set: under the seqcount protocol, and raw for comparison. */
      readonly kind: 'seqReader';
      readonly shm: Shm;
      readonly seq: number;
      readonly a: number;
      readonly b: number;
      readonly stop: number;
      /** The writer's record count (records 1..n-1 are the middle of its run). */
      readonly n: number;
      readonly start: number;
    };

export type RwLockWorkerJob = {
  /**
   * `n` rounds on the rwlock at `lock`: every `writeEvery`-th round a write section (a plain increment of
   * `counter`, with `writers` counting who is inside), the others read sections (checking no writer is inside
   * while `readers` counts readers).
   */
  readonly kind: 'rw';
  readonly shm: Shm;
  readonly tid: number;
  readonly lock: number;
  readonly counter: number;
  readonly writers: number;
  readonly readers: number;
  /** The most readers seen inside at once, over all workers (Atomics max). */
  readonly maxReaders: number;
  readonly start: number;
  readonly n: number;
  readonly writeEvery: number;
};

export type LockWorkerResult =
  | { readonly kind: 'ready' }
  | { readonly kind: 'count'; readonly overlaps: number; readonly wrongHolder: number }
  | { readonly kind: 'take'; readonly contended: boolean }
  | { readonly kind: 'wait'; readonly value: number }
  | { readonly kind: 'seqWriter' }
  | { readonly kind: 'rw'; readonly writeOverlaps: number; readonly readDuringWrite: number; readonly reads: number; readonly writes: number }
  | {
      readonly kind: 'seqReader';
      /** Pairs read under the protocol. */
      readonly reads: number;
      /** Times readRetry said to retry. */
      readonly retries: number;
      /** Pairs accepted by the protocol that were torn (must be 0). */
      readonly torn: number;
      /** Pairs read without the protocol that were torn (shows the test can see a tear). */
      readonly rawTorn: number;
      /** Accepted pairs from the middle of the writer's run (neither the first nor the last record). */
      readonly mid: number;
    };

function post(r: LockWorkerResult): void {
  if (parentPort === null) throw new Error('lock-worker: no parent port');
  parentPort.postMessage(r);
}

function run(job: LockWorkerJob): void {
  const mem = new Mem(job.shm);
  switch (job.kind) {
    case 'count': {
      mem.tid = job.tid;
      const c = mem.i32;
      let overlaps = 0;
      let wrongHolder = 0;
      post({ kind: 'ready' });
      mem.waitWhile32(job.start, 0);
      for (let k = 0; k < job.n; k++) {
        mem.lock(job.lock);
        if (Atomics.add(c, job.inside, 1) !== 0) overlaps++;
        if (mem.lockHolder(job.lock) !== job.tid) wrongHolder++;
        // A plain read-modify-write: only the lock keeps increments from being lost.
        const v = c[job.counter];
        c[job.counter] = v + 1;
        Atomics.sub(c, job.inside, 1);
        mem.unlock(job.lock);
      }
      post({ kind: 'count', overlaps, wrongHolder });
      return;
    }
    case 'rw': {
      mem.tid = job.tid;
      const c = mem.i32;
      let writeOverlaps = 0;
      let readDuringWrite = 0;
      let reads = 0;
      let writes = 0;
      post({ kind: 'ready' });
      mem.waitWhile32(job.start, 0);
      for (let k = 0; k < job.n; k++) {
        if (k % job.writeEvery === job.tid % job.writeEvery) {
          mem.writeLock(job.lock);
          if (Atomics.add(c, job.writers, 1) !== 0 || Atomics.load(c, job.readers) !== 0) writeOverlaps++;
          const v = c[job.counter]!;
          c[job.counter] = v + 1; // a plain read-modify-write: only the write lock keeps increments from being lost
          Atomics.sub(c, job.writers, 1);
          mem.writeUnlock(job.lock);
          writes++;
        } else {
          mem.readLock(job.lock);
          const inside = Atomics.add(c, job.readers, 1) + 1;
          let m = Atomics.load(c, job.maxReaders);
          while (inside > m && Atomics.compareExchange(c, job.maxReaders, m, inside) !== m) m = Atomics.load(c, job.maxReaders);
          for (let s = 0; s < 30; s++) if (Atomics.load(c, job.writers) !== 0) readDuringWrite++;
          Atomics.sub(c, job.readers, 1);
          mem.readUnlock(job.lock);
          reads++;
        }
      }
      post({ kind: 'rw', writeOverlaps, readDuringWrite, reads, writes });
      return;
    }
    case 'take': {
      post({ kind: 'ready' });
      const contended = mem.lock(job.lock);
      mem.unlock(job.lock);
      post({ kind: 'take', contended });
      return;
    }
    case 'wait': {
      post({ kind: 'ready' });
      const value = mem.waitWhile32(job.word, 0);
      mem.store32(job.returned, 1);
      post({ kind: 'wait', value });
      return;
    }
    case 'seqWriter': {
      const seq = new SeqCount(mem, job.seq);
      post({ kind: 'ready' });
      mem.waitWhile32(job.start, 0);
      for (let k = 1; k <= job.n; k++) {
        seq.writeBegin();
        mem.store32(job.a, k);
        for (let s = 0; s < 20; s++) mem.load32(job.seq); // widen the window between the two halves
        mem.store32(job.b, -k);
        seq.writeEnd();
        for (let s = 0; s < 20; s++) mem.load32(job.stop); // give readers an even window
      }
      mem.store32(job.stop, 1);
      post({ kind: 'seqWriter' });
      return;
    }
    case 'seqReader': {
      const seq = new SeqCount(mem, job.seq);
      let reads = 0;
      let retries = 0;
      let torn = 0;
      let rawTorn = 0;
      let mid = 0;
      post({ kind: 'ready' });
      mem.waitWhile32(job.start, 0);
      while (mem.load32(job.stop) === 0) {
        let a: number;
        let b: number;
        for (;;) {
          const s = seq.readBegin();
          a = mem.load32(job.a);
          for (let k = 0; k < 10; k++) mem.load32(job.stop); // widen the window a writer can start in
          b = mem.load32(job.b);
          if (!seq.readRetry(s)) break;
          retries++;
        }
        reads++;
        if (b !== -a) torn++;
        if (a > 0 && a < job.n) mid++;
        const ra = mem.load32(job.a);
        const rb = mem.load32(job.b);
        if (rb !== -ra) rawTorn++;
      }
      post({ kind: 'seqReader', reads, retries, torn, rawTorn, mid });
      return;
    }
  }
}

/**
 * A worker running one job, seen from the test's thread. Messages are queued in
 * order; `next(kind)` takes the next one, which must be of that kind. A worker
 * that throws or exits early fails every pending and later `next`.
 */
export class JobWorker {
  private readonly worker: Worker;
  private readonly queue: LockWorkerResult[] = [];
  private waiter: ((r: LockWorkerResult) => void) | null = null;
  private failure: Error | null = null;
  private failWaiter: ((e: Error) => void) | null = null;

  constructor(job: LockWorkerJob) {
    // Tests run compiled, from dist/test/shm/, next to this file's .js.
    this.worker = new Worker(path.join(__dirname, 'lock-worker.js'), { workerData: job });
    this.worker.on('message', (r: LockWorkerResult) => {
      if (this.waiter !== null) {
        const w = this.waiter;
        this.waiter = null;
        this.failWaiter = null;
        w(r);
      } else this.queue.push(r);
    });
    this.worker.on('error', (e: Error) => this.fail(e));
    this.worker.on('exit', (code: number) => this.fail(new Error(`worker (${job.kind}) exited with code ${code}`)));
  }

  /** The next message, which must be of kind `kind`, within `ms` milliseconds. */
  next<K extends LockWorkerResult['kind']>(kind: K, ms: number): Promise<Extract<LockWorkerResult, { kind: K }>> {
    const check = (r: LockWorkerResult): Extract<LockWorkerResult, { kind: K }> => {
      if (r.kind !== kind) throw new Error(`expected a '${kind}' message from the worker, got '${r.kind}'`);
      return r as Extract<LockWorkerResult, { kind: K }>;
    };
    const queued = this.queue.shift();
    if (queued !== undefined) return Promise.resolve(queued).then(check);
    if (this.failure !== null) return Promise.reject(this.failure);
    return new Promise<LockWorkerResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        this.failWaiter = null;
        reject(new Error(`no '${kind}' message from the worker within ${ms} ms`));
      }, ms);
      this.waiter = (r) => {
        clearTimeout(timer);
        resolve(r);
      };
      this.failWaiter = (e) => {
        clearTimeout(timer);
        reject(e);
      };
    }).then(check);
  }

  /** Stop the worker (it may be stuck if the code under test is broken). */
  async terminate(): Promise<void> {
    this.waiter = null;
    this.failWaiter = null;
    this.failure = new Error('worker terminated');
    await this.worker.terminate();
  }

  private fail(e: Error): void {
    if (this.failure !== null) return;
    this.failure = e;
    if (this.failWaiter !== null) {
      const f = this.failWaiter;
      this.waiter = null;
      this.failWaiter = null;
      f(e);
    }
  }
}

if (!isMainThread && workerData !== null && workerData !== undefined) run(workerData as LockWorkerJob);
