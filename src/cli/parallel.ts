// Parallel DPOR on worker threads: a SplitCoordinator (check/split.ts) on the main thread hands jobs to workers that each load the scenario themselves; also what a job's runner shares with `kvmmu worker` over Redis.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { KvmmuError } from '../shm/errors';
import { Engine, type GenScenarioModule } from '../check/engine';
import { exploreSlices, runSlices, type DonatedNode, type ExploreProgress, type ExploreResult, type FoundViolation, type JobSink, type StopRequest, type Strategy } from '../check/explore';
import { builtinMonitors } from '../check/invariants';
import { SplitCoordinator, type Job, type JobRecord } from '../check/split';
import type { Access } from '../check/ops';
import type { ScenarioContext, ScenarioSpec } from '../check/gen/scenario';
import { compileScenarioFileGen, findScenario, loadCatalog, loadCompiledScenario, loadGenModule, loadScenarioFile } from './scenario-file';

/** Where a worker finds the scenario: never code from the coordinator, only a name or a file it was given itself. */
export interface ScenarioSource {
  /** A built-in or example scenario's name, or the one to pick in `file`. */
  readonly name: string;
  /** A scenario file's path (on this machine), and its sha256. */
  readonly file?: string;
  readonly sha256?: string;
}

/** The settings every job of a check runs under. */
export interface SearchSettings {
  readonly source: ScenarioSource;
  readonly ctx: ScenarioContext;
  readonly strategy: Strategy;
  /** Preemption bound, or -1. */
  readonly bound: number;
  readonly invariant?: string;
  readonly continueAfterViolation?: boolean;
  /** The kvmmu version (package.json): a worker of another version refuses the job. */
  readonly version: string;
  /**
   * Worker threads only: `source.file` compiled once by the coordinator (compileScenarioFileGen), so that each
   * thread does not run the compiler. Never sent over a queue: there a worker compiles the file it was given.
   */
  readonly compiled?: string;
}

export function kvmmuVersion(): string {
  // dist/src/cli/parallel.js → the package root.
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

export function sha256File(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/**
 * Load the scenario a job names, from this process's own catalog or from `localFiles` (the files named on this
 * worker's command line; null: the coordinator's own path, for a worker thread); refuse a version or file
 * mismatch with a clear error.
 */
export function loadSource(s: SearchSettings, localFiles: readonly string[] | null = null): { gen: GenScenarioModule; spec: ScenarioSpec } {
  const mine = kvmmuVersion();
  if (s.version !== mine) throw new KvmmuError(`the coordinator runs kvmmu ${s.version}, this worker kvmmu ${mine}: run the same version on both`);
  const gen = loadGenModule();
  if (s.source.file === undefined) return { gen, spec: findScenario(loadCatalog(), s.source.name) };
  if (localFiles === null && s.compiled !== undefined) return { gen, spec: loadCompiledScenario(s.compiled, s.source.file, s.source.name) };
  const want = s.source.sha256!;
  // A worker thread reads the coordinator's own file (same machine); a queue's worker only the files it was given.
  const candidates = localFiles ?? [s.source.file];
  for (const f of candidates) {
    if (!fs.existsSync(f)) continue;
    if (sha256File(f) === want) return { gen, spec: loadScenarioFile(f, s.source.name) };
  }
  const have = candidates.filter((f) => fs.existsSync(f)).map((f) => `${f} (sha256 ${sha256File(f).slice(0, 12)}…)`);
  throw new KvmmuError(
    `the job is for scenario file ${path.basename(s.source.file)} with sha256 ${want.slice(0, 12)}…, and this worker has ${have.length > 0 ? have.join(', ') : 'no such file'}: give the worker the same file (--file PATH)`,
  );
}

export function engineFor(gen: GenScenarioModule, spec: ScenarioSpec, ctx: ScenarioContext): Engine {
  return new Engine(gen, spec, ctx, { monitorsFor: builtinMonitors });
}

/** What a job reports when it ends. */
export interface JobResult {
  readonly executions: number;
  readonly abandoned: number;
  readonly boundCut: number;
  readonly unfair: number;
  readonly truncated: number;
  readonly boundReached: boolean;
  readonly maxSteps: number;
  readonly complete: boolean;
  readonly violation: FoundViolation | null;
  /** Alternatives left at its nodes when it stopped (0 when its subtree was explored). */
  readonly pending: number;
}

/** One job's search on `engine`, in slices (a worker thread runs it through; a queue's worker looks at Redis between slices). */
export function jobSlices(engine: Engine, s: SearchSettings, job: Job, sink: JobSink, stop: StopRequest, onProgress?: (p: ExploreProgress) => void): Generator<void, ExploreResult> {
  return exploreSlices(engine, {
    strategy: s.strategy,
    reduction: 'source',
    preemptions: s.bound >= 0 ? s.bound : undefined,
    invariant: s.invariant,
    continueAfterViolation: s.continueAfterViolation,
    job,
    sink,
    stop,
    onProgress,
  });
}

/** What a job reports of its search's result. */
export function jobResult(r: ExploreResult): JobResult {
  return {
    executions: r.executions,
    abandoned: r.abandoned,
    boundCut: r.boundCut,
    unfair: r.unfair,
    truncated: r.truncated,
    boundReached: r.boundReached,
    maxSteps: r.maxSteps,
    complete: r.complete,
    violation: r.violation,
    pending: r.pending ?? 0,
  };
}

/** Run one job on `engine` (synchronously; sink calls go out as they happen). */
export function runJob(engine: Engine, s: SearchSettings, job: Job, sink: JobSink, stop: StopRequest, onProgress?: (p: ExploreProgress) => void): JobResult {
  return jobResult(runSlices(jobSlices(engine, s, job, sink, stop, onProgress)));
}

/** Messages from a job to its coordinator (worker thread or queue). */
export type JobMessage =
  | { type: 'race'; job: number; depth: number; initials: number; add: number }
  | { type: 'full'; job: number; depth: number; thread: number; access: Access }
  | { type: 'donate'; job: number; nodes: DonatedNode[] }
  | { type: 'progress'; job: number; executions: number }
  | { type: 'done'; job: number; result: JobResult }
  | { type: 'error'; job: number; message: string };

/** The coordinator's side of the search, whatever carries the jobs: totals, and what to do with each message. */
export class SearchTotals {
  executions = 0;
  abandoned = 0;
  boundCut = 0;
  unfair = 0;
  truncated = 0;
  maxSteps = 0;
  incomplete = false;
  boundReached = false;
  found: FoundViolation | null = null;
  error: string | null = null;
  /** Alternatives left in jobs that stopped early. */
  pending = 0;

  constructor(readonly coord: SplitCoordinator) {}

  /** Take one message; true when it ended a job. */
  take(m: JobMessage): boolean {
    const c = this.coord;
    switch (m.type) {
      case 'race':
        c.race(m.job, m.depth, m.initials, m.add);
        return false;
      case 'full':
        c.full(m.job, m.depth, m.thread, m.access);
        return false;
      case 'donate':
        c.donate(m.job, m.nodes);
        return false;
      case 'progress':
        c.progress(m.job, m.executions);
        return false;
      case 'error':
        this.error ??= m.message;
        c.done(m.job, 0);
        return true;
      case 'done': {
        const r = m.result;
        c.done(m.job, r.executions);
        this.executions += r.executions;
        this.abandoned += r.abandoned;
        this.boundCut += r.boundCut;
        this.unfair += r.unfair;
        this.truncated += r.truncated;
        this.maxSteps = Math.max(this.maxSteps, r.maxSteps);
        this.pending += r.pending;
        if (r.boundReached) this.boundReached = true;
        if (!r.complete && !r.boundReached && r.violation === null) this.incomplete = true;
        if (r.violation !== null && better(r.violation, this.found)) this.found = r.violation;
        return true;
      }
    }
  }

  /** Executions so far, the running jobs' included. */
  get executionsNow(): number {
    return this.executions + this.coord.runningExecutions();
  }
}

function better(a: FoundViolation, b: FoundViolation | null): boolean {
  if (b === null) return true;
  if (a.preemptions !== b.preemptions) return a.preemptions < b.preemptions;
  return a.schedule.length < b.schedule.length;
}

/** Progress of a split search, for the status line. */
export interface SplitProgress extends ExploreProgress {
  readonly workers: number;
  readonly jobsQueued: number;
  readonly jobsRunning: number;
  readonly jobsDone: number;
}

export interface ParallelOptions {
  readonly workers: number;
  readonly maxExecutions?: number;
  readonly seconds?: number;
  readonly stop?: StopRequest;
  readonly onProgress?: (p: SplitProgress) => void;
  /** Record the job tree (bench/split-sim.js). */
  readonly recordJobs?: boolean;
  /** Worker threads kept from one check to the next (else a pool of `workers` is made for this check). */
  readonly pool?: CheckPool;
  /** Carry on from a sequential search's state (explore's onHandOff) instead of starting from the root. */
  readonly handOff?: readonly DonatedNode[];
}

export interface ParallelResult extends ExploreResult {
  readonly workers: number;
  readonly jobs: number;
  /** Messages the coordinator took from jobs. */
  readonly messages: number;
  readonly records: JobRecord[] | null;
  /** Seconds until every worker had loaded the scenario (included in `seconds`). */
  readonly startSeconds: number;
  /** Over a queue: jobs begun again after their worker stopped answering. */
  readonly retried?: number;
}

/** Result of a split search from its totals. */
export function splitResult(t: SearchTotals, s: SearchSettings, workers: number, seconds: number, interrupted: boolean, stoppedEarly: boolean, startSeconds: number): ParallelResult {
  const c = t.coord;
  const complete = !stoppedEarly && !interrupted && (t.found === null || s.continueAfterViolation === true) && c.finished && !t.incomplete && !t.boundReached && !c.boundReached && t.truncated === 0;
  return {
    strategy: s.strategy,
    executions: t.executions,
    abandoned: t.abandoned,
    boundCut: t.boundCut,
    reduction: s.strategy === 'dpor' ? 'source' : null,
    wakeupMisses: 0,
    unfair: t.unfair,
    truncated: t.truncated,
    complete: t.found !== null && s.continueAfterViolation !== true ? false : complete,
    boundReached: t.boundReached || c.boundReached,
    seconds,
    maxSteps: t.maxSteps,
    violation: t.found,
    interrupted,
    pending: complete ? 0 : c.queue.length + t.pending,
    workers,
    jobs: c.jobsMade,
    messages: c.messages,
    records: c.records.length > 0 ? c.records : null,
    startSeconds,
  };
}

/** What a check worker thread sends its pool. */
type WorkerMessage = JobMessage | { type: 'ready'; key: string } | { type: 'fatal'; message: string };

/** A check's identity for a worker's cache of loaded engines: the scenario, the context it runs in, the search's settings. */
export function settingsKey(s: SearchSettings): string {
  return JSON.stringify(s);
}

/**
 * Worker threads for parallel checks, kept alive from one check to the next (`check --all`, bench/check.js): a
 * worker loads each scenario once and keeps the engine, and its code stays compiled by the JIT. A scenario file
 * is compiled once here, not in each thread.
 */
export class CheckPool {
  readonly size: number;
  private readonly workers: Worker[] = [];
  /** flags[0]: stop the running check; flags[1 + i]: worker i is asked to give work away. */
  readonly flags: Int32Array;
  /** The settings key each worker has loaded (null: none yet). */
  private readonly loaded: (string | null)[];
  private handler: ((i: number, m: WorkerMessage) => void) | null = null;
  private broken: string | null = null;
  private tmp: string | null = null;
  private readonly compiledFiles = new Map<string, string>();

  constructor(size: number) {
    this.size = size;
    this.flags = new Int32Array(new SharedArrayBuffer(4 * (1 + size)));
    this.loaded = new Array<string | null>(size).fill(null);
    for (let i = 0; i < size; i++) {
      const w = new Worker(path.join(__dirname, 'check-worker.js'), { workerData: { flags: this.flags, index: i } });
      w.on('message', (m: WorkerMessage) => this.handler?.(i, m));
      w.on('error', (e) => {
        this.broken ??= `a check worker failed: ${e.message}`;
        this.handler?.(i, { type: 'fatal', message: this.broken });
      });
      this.workers.push(w);
    }
  }

  /** `s` with its scenario file compiled for the threads (once per file content). */
  prepare(s: SearchSettings): SearchSettings {
    if (s.source.file === undefined || s.compiled !== undefined) return s;
    const key = `${s.source.file}:${s.source.sha256}`;
    let js = this.compiledFiles.get(key);
    if (js === undefined) {
      this.tmp ??= fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-pool-'));
      js = compileScenarioFileGen(s.source.file, fs.mkdtempSync(path.join(this.tmp, 'f-')));
      this.compiledFiles.set(key, js);
    }
    return { ...s, compiled: js };
  }

  /** Begin a check: route the workers' messages to `handler`, clear the flags, and have each worker load `s`. */
  begin(s: SearchSettings, handler: (i: number, m: WorkerMessage) => void): void {
    if (this.broken !== null) throw new KvmmuError(this.broken);
    this.handler = handler;
    Atomics.store(this.flags, 0, 0);
    for (let i = 0; i < this.size; i++) Atomics.store(this.flags, 1 + i, 0);
    const key = settingsKey(s);
    for (let i = 0; i < this.size; i++) {
      if (this.loaded[i] === key) {
        // Already loaded: ready at once (after this call returns, as a message would be).
        queueMicrotask(() => this.handler?.(i, { type: 'ready', key }));
      } else {
        this.loaded[i] = key;
        this.workers[i]!.postMessage({ type: 'load', settings: s, key });
      }
    }
  }

  post(i: number, m: { type: 'job'; key: string; job: Job; maxExecutions?: number }): void {
    this.workers[i]!.postMessage(m);
  }

  /** The check is over (every worker idle): its messages go nowhere. */
  end(): void {
    this.handler = null;
  }

  async close(): Promise<void> {
    this.handler = null;
    await Promise.all(this.workers.map((w) => w.terminate()));
    if (this.tmp !== null) fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}

/**
 * Explore on the worker threads of `o.pool` (or of a pool made for this check and closed after it). Each worker
 * loads the scenario (check-worker.js: a built-in's name, or the file the pool compiled), takes jobs from the
 * coordinator, and between executions looks at a shared flag that asks it to give part of its subtree away (a
 * worker is idle and no job waits).
 */
export async function exploreParallel(s0: SearchSettings, threads: number, o: ParallelOptions): Promise<ParallelResult> {
  const own = o.pool === undefined;
  const pool = o.pool ?? new CheckPool(o.workers);
  try {
    return await exploreOnPool(pool, pool.prepare(s0), threads, o);
  } finally {
    if (own) await pool.close();
  }
}

async function exploreOnPool(pool: CheckPool, s: SearchSettings, threads: number, o: ParallelOptions): Promise<ParallelResult> {
  const t0 = performance.now();
  const n = pool.size;
  const key = settingsKey(s);
  const coord = new SplitCoordinator(threads, s.bound, o.recordJobs === true);
  if (o.handOff !== undefined) coord.handOff(o.handOff);
  const totals = new SearchTotals(coord);
  const flags = pool.flags;
  // Per worker: a job's id, -1 idle, -2 failed, -3 loading.
  const busy = new Array<number>(n).fill(-3);
  let stopped = false;
  let readyAt = t0;
  let stoppedEarly = false;
  let interrupted = false;
  const deadline = o.seconds !== undefined ? t0 + o.seconds * 1000 : Infinity;
  const maxExec = o.maxExecutions ?? Infinity;
  const stopAll = (): void => {
    stopped = true;
    Atomics.store(flags, 0, 1);
  };
  return await new Promise<ParallelResult>((resolve, reject) => {
    let ended = false;
    const finish = (): void => {
      if (ended) return;
      ended = true;
      clearInterval(timer);
      pool.end();
      if (totals.error !== null) {
        reject(new KvmmuError(totals.error));
        return;
      }
      resolve(splitResult(totals, s, n, (performance.now() - t0) / 1000, interrupted, stoppedEarly, (readyAt - t0) / 1000));
    };
    const dispatch = (): void => {
      for (let i = 0; i < n; i++) {
        if (busy[i] !== -1) continue;
        if (stopped) break;
        const job = coord.take();
        if (job === undefined) break;
        busy[i] = job.id;
        const left = maxExec - totals.executionsNow;
        pool.post(i, { type: 'job', key, job, maxExecutions: Number.isFinite(left) ? Math.max(1, left) : undefined });
      }
      const idle = busy.some((b) => b === -1) && coord.queue.length === 0 && !stopped;
      for (let i = 0; i < n; i++) Atomics.store(flags, 1 + i, idle && busy[i]! >= 0 ? 1 : 0);
      const working = busy.some((b) => b >= 0 || b === -3);
      if (!working && (stopped || coord.finished)) finish();
    };
    const onMessage = (i: number, m: WorkerMessage): void => {
      if (m.type === 'ready') {
        if (m.key !== key) return;
        busy[i] = -1;
        if (!busy.includes(-3)) readyAt = performance.now();
        dispatch();
        return;
      }
      if (m.type === 'fatal') {
        totals.error ??= m.message;
        stopAll();
        busy[i] = -2;
        dispatch();
        return;
      }
      const jobEnded = totals.take(m);
      if (m.type === 'error') stopAll();
      if (m.type === 'done' && m.result.violation !== null && s.continueAfterViolation !== true) stopAll();
      if (jobEnded) busy[i] = -1;
      if (jobEnded || m.type === 'donate' || m.type === 'race') dispatch();
    };
    const timer = setInterval(() => {
      const now = performance.now();
      if (o.stop?.requested === true && !stopped) {
        interrupted = true;
        stopAll();
      }
      if (!stopped && (now >= deadline || totals.executionsNow >= maxExec)) {
        stoppedEarly = true;
        stopAll();
      }
      o.onProgress?.({
        executions: totals.executionsNow,
        abandoned: totals.abandoned,
        seconds: (now - t0) / 1000,
        pending: coord.queue.length,
        // The executions so far and, for each job still waiting, the mean of the jobs done (a rough figure: jobs
        // made late are often smaller).
        estimate: coord.jobsDone > 0 ? Math.round(totals.executionsNow + coord.queue.length * (totals.executions / coord.jobsDone)) : null,
        workers: n,
        jobsQueued: coord.queue.length,
        jobsRunning: coord.runningJobs,
        jobsDone: coord.jobsDone,
      });
    }, 200);
    try {
      pool.begin(s, onMessage);
    } catch (e) {
      clearInterval(timer);
      reject(e as Error);
    }
  });
}
