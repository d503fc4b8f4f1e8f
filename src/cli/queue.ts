// The split search over Redis with BullMQ: `kvmmu check --queue` coordinates, `kvmmu worker --queue` processes (any number, on any machine) take the jobs.
//
// Queues: `kvmmu-jobs` holds the jobs of every check (data: the run's id, its SearchSettings, the Job); each
// check's `kvmmu-msgs-<run>` carries what its jobs send back (parallel.ts JobMessage), in order, to the
// coordinator, which takes them one at a time. Two keys steer the workers between slices of a job:
// the hash `kvmmu:<run>`'s fields hungry (no job waits: give work away) and stop. A worker that dies mid-job
// loses nothing: BullMQ sees its job stalled (its lock not renewed) and hands it to another worker, which says
// so ('start' with the attempt) and runs it from its root again; what the dead one sent stays sound (work it
// gave away is explored twice at worst). Code never travels: a job names a built-in scenario, or a file by
// its sha256, which the worker must have been given on its own command line.

import * as crypto from 'node:crypto';
import { Queue, Worker, type ConnectionOptions, type Job as BullJob } from 'bullmq';
import { KvmmuError } from '../shm/errors';
import type { JobSink, StopRequest } from '../check/explore';
import { SplitCoordinator, type Job } from '../check/split';
import { engineFor, jobResult, jobSlices, loadSource, SearchTotals, splitResult, type JobMessage, type ParallelOptions, type ParallelResult, type SearchSettings } from './parallel';

const JOBS = 'kvmmu-jobs';
const msgsQueue = (run: string): string => `kvmmu-msgs-${run}`;

/** Messages on a run's message queue: a JobMessage, or a worker saying it began a job (and which attempt). */
type QueueMessage = JobMessage | { type: 'start'; job: number; attempt: number };

interface QueuedJob {
  run: string;
  settings: SearchSettings;
  job: Job;
}

/** redis://HOST:PORT as BullMQ's connection options; a clear error for anything else. */
export function redisConnection(url: string): ConnectionOptions & { host: string; port: number } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new KvmmuError(`--queue ${url}: not a URL; give redis://HOST:PORT`);
  }
  if (u.protocol !== 'redis:' || u.hostname === '') throw new KvmmuError(`--queue ${url}: give redis://HOST:PORT (a Redis server)`);
  const port = u.port === '' ? 6379 : Number(u.port);
  return { host: u.hostname, port, maxRetriesPerRequest: null, password: u.password !== '' ? decodeURIComponent(u.password) : undefined };
}

/** Wait until Redis answers, or fail clearly within a few seconds. */
async function reachable(queue: Queue, url: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const silence = (): void => {};
  queue.on('error', silence);
  try {
    await Promise.race([
      (async () => {
        const c = await queue.client;
        await c.runCommand('ping', []);
      })(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new KvmmuError(`cannot reach Redis at ${url} (no answer in 5 s): is redis-server running there?`)), 5000);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The coordinator: enqueue the first job, take messages, make jobs, until every job is done (or the search stops). */
export async function exploreOnQueue(url: string, s: SearchSettings, threads: number, o: ParallelOptions): Promise<ParallelResult> {
  const connection = redisConnection(url);
  const run = crypto.randomBytes(6).toString('hex');
  const jobs = new Queue(JOBS, { connection });
  try {
    await reachable(jobs, url);
  } catch (e) {
    await jobs.close().catch(() => {});
    throw e;
  }
  const redis = await jobs.client;
  const t0 = performance.now();
  const coord = new SplitCoordinator(threads, s.bound, o.recordJobs === true);
  const totals = new SearchTotals(coord);
  const started = new Set<number>();
  const ended_ = new Set<number>();
  const attempts = new Map<number, number>();
  let retried = 0;
  let stopped = false;
  let stoppedEarly = false;
  let interrupted = false;
  let firstStart = -1;
  const deadline = o.seconds !== undefined ? t0 + o.seconds * 1000 : Infinity;
  const maxExec = o.maxExecutions ?? Infinity;
  const stopAll = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await redis.hset(`kvmmu:${run}`, { stop: '1' });
    // Jobs nobody took yet are not wanted any more.
    for (const j of await jobs.getJobs(['waiting', 'delayed', 'prioritized'])) if ((j.data as QueuedJob).run === run) await j.remove().catch(() => {});
  };
  const enqueue = async (): Promise<void> => {
    const batch: { name: string; data: QueuedJob; opts: { removeOnComplete: true; removeOnFail: true } }[] = [];
    for (let job = coord.take(); job !== undefined; job = coord.take()) batch.push({ name: 'job', data: { run, settings: s, job }, opts: { removeOnComplete: true, removeOnFail: true } });
    if (batch.length > 0 && !stopped) await jobs.addBulk(batch);
  };
  const hungry = async (): Promise<void> => {
    const waiting = coord.jobsMade - started.size;
    await redis.hset(`kvmmu:${run}`, { hungry: waiting === 0 ? '1' : '0' });
    await redis.runCommand('expire', [`kvmmu:${run}`, 86400]);
  };
  await hungry();
  await enqueue();
  return await new Promise<ParallelResult>((resolve, reject) => {
    let ended = false;
    const finish = async (): Promise<void> => {
      if (ended) return;
      ended = true;
      clearInterval(timer);
      await msgs.close().catch(() => {});
      await redis.del(`kvmmu:${run}`).catch(() => {});
      const q = new Queue(msgsQueue(run), { connection });
      await q.obliterate({ force: true }).catch(() => {});
      await q.close().catch(() => {});
      await jobs.close().catch(() => {});
      if (totals.error !== null) reject(new KvmmuError(totals.error));
      else resolve({ ...splitResult(totals, s, started.size === 0 ? 0 : workersSeen.size, (performance.now() - t0) / 1000, interrupted, stoppedEarly, firstStart < 0 ? 0 : (firstStart - t0) / 1000), retried });
    };
    const workersSeen = new Set<string>();
    const msgs = new Worker(
      msgsQueue(run),
      async (j: BullJob) => {
        const m = j.data as QueueMessage & { worker?: string; attempt?: number };
        if (m.worker !== undefined) workersSeen.add(m.worker);
        if (m.type === 'start') {
          if (firstStart < 0) firstStart = performance.now();
          if (started.has(m.job)) coord.restart(m.job);
          // BullMQ counts attempts from 1; a later one is a retry, whether or not the first said it had begun.
          if (m.attempt !== undefined && m.attempt > 1) retried++;
          started.add(m.job);
          attempts.set(m.job, m.attempt);
          await hungry();
          return;
        }
        // A job BullMQ took from a worker it thought dead and gave another: only the newer attempt counts.
        if ((m.attempt ?? 0) < (attempts.get(m.job) ?? 0)) return;
        if (totals.take(m)) ended_.add(m.job);
        if (m.type === 'error' || (m.type === 'done' && m.result.violation !== null && s.continueAfterViolation !== true)) await stopAll();
        if (m.type === 'donate' || m.type === 'race') {
          await enqueue();
          await hungry();
        }
        if (coord.finished || (stopped && [...started].every((k) => ended_.has(k)))) void finish();
      },
      { connection, concurrency: 1, removeOnComplete: { count: 0 }, removeOnFail: { count: 0 } },
    );
    msgs.on('error', (e) => {
      totals.error ??= `the queue failed: ${e.message}`;
      void finish();
    });
    const timer = setInterval(() => {
      const now = performance.now();
      if (o.stop?.requested === true && !stopped) {
        interrupted = true;
        void stopAll().then(() => {
          if (coord.runningJobs === 0) void finish();
        });
      }
      if (!stopped && (now >= deadline || totals.executionsNow >= maxExec)) {
        stoppedEarly = true;
        void stopAll();
      }
      // Stopped: the jobs nobody took were removed; the others end at their next slice.
      if (stopped && [...started].every((k) => ended_.has(k))) void finish();
      o.onProgress?.({
        executions: totals.executionsNow,
        abandoned: totals.abandoned,
        seconds: (now - t0) / 1000,
        pending: coord.jobsMade - started.size,
        // The executions so far and, for each job still waiting, the mean of the jobs done (a rough figure: jobs
        // made late are often smaller).
        estimate: coord.jobsDone > 0 ? Math.round(totals.executionsNow + (coord.jobsMade - started.size) * (totals.executions / coord.jobsDone)) : null,
        workers: workersSeen.size,
        jobsQueued: coord.jobsMade - started.size,
        jobsRunning: coord.runningJobs - (coord.jobsMade - started.size),
        jobsDone: coord.jobsDone,
      });
    }, 200);
  });
}

export interface WorkerCliOptions {
  queue: string;
  /** Scenario files this worker may run (a job names one by its sha256). */
  file: string[];
  /** Stop after this many jobs (tests); default: run until killed. */
  jobs?: number;
}

/** `kvmmu worker --queue URL [--file PATH...]`: take jobs of any check on that Redis until killed. */
export async function workerCommand(o: WorkerCliOptions): Promise<number> {
  const connection = redisConnection(o.queue);
  const probe = new Queue(JOBS, { connection });
  try {
    await reachable(probe, o.queue);
  } catch (e) {
    await probe.close().catch(() => {});
    throw e;
  }
  const redis = await probe.client;
  const id = `${(await import('node:os')).hostname()}:${process.pid}`;
  const engines = new Map<string, ReturnType<typeof engineFor>>();
  const outs = new Map<string, Queue>();
  let taken = 0;
  process.stderr.write(`kvmmu worker ${id}: taking jobs from ${o.queue}\n`);
  const worker = new Worker(
    JOBS,
    async (bj: BullJob) => {
      const { run, settings, job } = bj.data as QueuedJob;
      let out = outs.get(run);
      if (out === undefined) {
        out = new Queue(msgsQueue(run), { connection });
        outs.set(run, out);
      }
      const buffer: (QueueMessage & { worker: string; attempt: number })[] = [];
      const attempt = bj.attemptsStarted;
      const send = (m: QueueMessage): void => {
        buffer.push({ ...m, worker: id, attempt });
      };
      const flush = async (): Promise<void> => {
        if (buffer.length === 0) return;
        const batch = buffer.splice(0).map((data) => ({ name: data.type, data, opts: { removeOnComplete: true, removeOnFail: true } }));
        await out.addBulk(batch);
      };
      send({ type: 'start', job: job.id, attempt: bj.attemptsStarted });
      await flush();
      // For whoever watches the worker (and the test that kills one mid-job): a job begun, and later its end.
      process.stderr.write(`kvmmu worker ${id}: job ${job.id} of check ${run} begun (attempt ${bj.attemptsStarted})\n`);
      let engine: ReturnType<typeof engineFor>;
      try {
        const key = JSON.stringify([settings.version, settings.source, settings.ctx]);
        let e = engines.get(key);
        if (e === undefined) {
          const { gen, spec } = loadSource(settings, o.file);
          e = engineFor(gen, spec, settings.ctx);
          engines.set(key, e);
        }
        engine = e;
      } catch (e) {
        const message = e instanceof KvmmuError ? e.message : `the worker could not load the scenario: ${(e as Error).message}`;
        process.stderr.write(`kvmmu worker ${id}: refused job ${job.id}: ${message}\n`);
        send({ type: 'error', job: job.id, message: `worker ${id} refused the job: ${message}` });
        await flush();
        return;
      }
      let hungry = false;
      const stop: StopRequest = { requested: false };
      const sink: JobSink = {
        race: (depth, initials, add) => send({ type: 'race', job: job.id, depth, initials, add }),
        full: (depth, thread, access) => send({ type: 'full', job: job.id, depth, thread, access }),
        splitWanted: () => hungry,
        donate: (nodes) => {
          hungry = false;
          send({ type: 'donate', job: job.id, nodes });
        },
      };
      let executions = 0;
      const g = jobSlices(engine, settings, job, sink, stop, (p) => {
        executions = p.executions;
      });
      let lastProgress = 0;
      for (;;) {
        const r = g.next();
        if (r.done === true) {
          const x = r.value;
          const result = jobResult(x);
          send({ type: 'done', job: job.id, result });
          await flush();
          process.stderr.write(`kvmmu worker ${id}: job ${job.id} of check ${run} done: ${x.executions} executions\n`);
          break;
        }
        // Between slices: send what the job owes, and look at the run's keys (a split wanted, a stop).
        if (executions !== lastProgress) {
          send({ type: 'progress', job: job.id, executions });
          lastProgress = executions;
        }
        await flush();
        const [h, st] = await redis.hmget(`kvmmu:${run}`, 'hungry', 'stop');
        hungry = h === '1';
        if (st === '1') stop.requested = true;
      }
      taken++;
      if (o.jobs !== undefined && taken >= o.jobs) void worker.close();
    },
    { connection, concurrency: 1, lockDuration: 10_000, stalledInterval: 5_000, maxStalledCount: 10 },
  );
  worker.on('error', (e) => process.stderr.write(`kvmmu worker ${id}: ${e.message}\n`));
  await new Promise<void>((resolve) => {
    const end = (): void => {
      void worker.close().then(resolve);
    };
    process.once('SIGINT', end);
    process.once('SIGTERM', end);
    worker.on('closed', resolve);
  });
  for (const q of outs.values()) await q.close().catch(() => {});
  await probe.close().catch(() => {});
  return 0;
}
