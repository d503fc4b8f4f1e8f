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
  /** False for a search on a pool stopped before any worker was free for it (`check --all` interrupted). */
  readonly started?: boolean;
  /** On a pool, other searches ran on its workers beside it at some time. */
  readonly shared?: boolean;
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
type WorkerMessage = JobMessage | { type: 'ready'; key: string };

/** A check's identity for a worker's cache of loaded engines: the scenario, the context it runs in, the search's settings. */
export function settingsKey(s: SearchSettings): string {
  return JSON.stringify(s);
}

/** A search on a pool: its coordinator, totals and budget. */
interface PoolSearch {
  readonly settings: SearchSettings;
  readonly key: string;
  readonly o: ParallelOptions;
  readonly coord: SplitCoordinator;
  readonly totals: SearchTotals;
  /** When its first job was handed out (its clock and budget start then); null before. */
  t0: number | null;
  deadline: number;
  /** When the last worker that needed to load the scenario for it had loaded it. */
  readyAt: number | null;
  stopped: boolean;
  stoppedEarly: boolean;
  interrupted: boolean;
  /** Another search's jobs ran on the pool while one of its own did. */
  shared: boolean;
  resolve: (r: ParallelResult) => void;
  reject: (e: Error) => void;
}

/**
 * Worker threads for parallel checks, kept alive from one check to the next (`check --all`, the tour,
 * bench/check.js): a worker loads each scenario once and keeps the engine, and its code stays compiled by the
 * JIT. A scenario file is compiled once here, not in each thread.
 *
 * Several searches may run on one pool at once (`check --all` gives it every scenario): a worker that is free
 * takes a job from the oldest search that has one waiting, so scenarios run side by side, one per worker, while
 * there are scenarios to start; only when no search has a job waiting are busy workers asked to give work away.
 * A small scenario is then explored whole on one worker, and a large one is split once the others are free.
 */
export class CheckPool {
  readonly size: number;
  private readonly workers: Worker[] = [];
  /** flags[i]: worker i is asked to give work away; flags[size + i]: worker i is to stop its job. */
  private readonly flags: Int32Array;
  /** The settings keys each worker has loaded. */
  private readonly loaded: Set<string>[];
  /** Per worker: the search whose job it runs (null: idle). */
  private readonly owner: (PoolSearch | null)[];
  private readonly failed: boolean[];
  /** The searches begun and not yet over, oldest first. */
  private readonly searches: PoolSearch[] = [];
  private broken: string | null = null;
  private tmp: string | null = null;
  private readonly compiledFiles = new Map<string, string>();
  private timer: ReturnType<typeof setInterval> | null = null;

  constructor(size: number) {
    this.size = size;
    this.flags = new Int32Array(new SharedArrayBuffer(4 * 2 * size));
    this.loaded = Array.from({ length: size }, () => new Set<string>());
    this.owner = new Array<PoolSearch | null>(size).fill(null);
    this.failed = new Array<boolean>(size).fill(false);
    for (let i = 0; i < size; i++) {
      const w = new Worker(path.join(__dirname, 'check-worker.js'), { workerData: { flags: this.flags, index: i, size } });
      w.on('message', (m: WorkerMessage) => this.onMessage(i, m));
      w.on('error', (e) => this.onFailure(i, `a check worker failed: ${e.message}`));
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

  /**
   * Explore `s0` on this pool's workers, beside any other search begun on it (those begun earlier are served
   * first). Each worker loads the scenario (check-worker.js: a built-in's name, or the file the pool compiled)
   * before its first job of it, and between executions looks at a shared flag that asks it to give part of its
   * subtree away.
   */
  explore(s0: SearchSettings, threads: number, o: ParallelOptions): Promise<ParallelResult> {
    if (this.broken !== null) return Promise.reject(new KvmmuError(this.broken));
    const settings = this.prepare(s0);
    const coord = new SplitCoordinator(threads, settings.bound, o.recordJobs === true);
    if (o.handOff !== undefined) coord.handOff(o.handOff);
    return new Promise<ParallelResult>((resolve, reject) => {
      const search: PoolSearch = {
        settings,
        key: settingsKey(settings),
        o,
        coord,
        totals: new SearchTotals(coord),
        t0: null,
        deadline: Infinity,
        readyAt: null,
        stopped: false,
        stoppedEarly: false,
        interrupted: false,
        shared: false,
        resolve,
        reject,
      };
      this.searches.push(search);
      this.timer ??= setInterval(() => this.tick(), 200);
      this.dispatch();
    });
  }

  /** Stop `x`'s jobs (after their current execution): they report what they explored. */
  private stop(x: PoolSearch): void {
    x.stopped = true;
    for (let i = 0; i < this.size; i++) if (this.owner[i] === x) Atomics.store(this.flags, this.size + i, 1);
  }

  /** Hand free workers jobs, oldest search first; ask for work to be given away when none waits; end what is over. */
  private dispatch(): void {
    const now = performance.now();
    for (let i = 0; i < this.size; i++) {
      if (this.owner[i] !== null || this.failed[i]) continue;
      for (const x of this.searches) {
        if (x.stopped) continue;
        const job = x.coord.take();
        if (job === undefined) continue;
        if (x.t0 === null) {
          x.t0 = now;
          x.deadline = x.o.seconds !== undefined ? now + x.o.seconds * 1000 : Infinity;
          x.readyAt = now;
        }
        this.owner[i] = x;
        Atomics.store(this.flags, this.size + i, 0);
        const w = this.workers[i]!;
        if (!this.loaded[i]!.has(x.key)) {
          this.loaded[i]!.add(x.key);
          w.postMessage({ type: 'load', settings: x.settings, key: x.key });
        }
        const left = (x.o.maxExecutions ?? Infinity) - x.totals.executionsNow;
        w.postMessage({ type: 'job', key: x.key, job, maxExecutions: Number.isFinite(left) ? Math.max(1, left) : undefined });
        break;
      }
    }
    const running = new Set(this.owner.filter((x) => x !== null));
    if (running.size > 1) for (const x of running) x!.shared = true;
    const waiting = this.searches.some((x) => !x.stopped && x.coord.queue.length > 0);
    const idle = this.owner.some((x, i) => x === null && !this.failed[i]);
    for (let i = 0; i < this.size; i++) Atomics.store(this.flags, i, idle && !waiting && this.owner[i] !== null && !this.owner[i]!.stopped ? 1 : 0);
    for (const x of [...this.searches]) {
      if (this.owner.includes(x)) continue;
      if (!(x.stopped || x.coord.finished)) {
        // Nothing runs it and nothing can: every worker has failed.
        if (!this.failed.every(Boolean)) continue;
        x.totals.error ??= this.broken ?? 'every check worker failed';
      }
      this.end(x);
    }
  }

  private end(x: PoolSearch): void {
    this.searches.splice(this.searches.indexOf(x), 1);
    if (this.searches.length === 0 && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
    if (x.totals.error !== null) {
      x.reject(new KvmmuError(x.totals.error));
      return;
    }
    const now = performance.now();
    const t0 = x.t0 ?? now;
    x.resolve({ ...splitResult(x.totals, x.settings, this.size, (now - t0) / 1000, x.interrupted, x.stoppedEarly, ((x.readyAt ?? t0) - t0) / 1000), started: x.t0 !== null || !x.interrupted, shared: x.shared });
  }

  private onMessage(i: number, m: WorkerMessage): void {
    const x = this.owner[i];
    if (x === null) return;
    if (m.type === 'ready') {
      x.readyAt = Math.max(x.readyAt ?? 0, performance.now());
      return;
    }
    const jobEnded = x.totals.take(m);
    if (m.type === 'error') this.stop(x);
    if (m.type === 'done' && m.result.violation !== null && x.settings.continueAfterViolation !== true) this.stop(x);
    if (jobEnded) this.owner[i] = null;
    if (jobEnded || m.type === 'donate' || m.type === 'race') this.dispatch();
  }

  /** Worker i's thread died: its job's search fails, and so does every search if no worker is left. */
  private onFailure(i: number, message: string): void {
    this.failed[i] = true;
    this.broken ??= message;
    const x = this.owner[i];
    this.owner[i] = null;
    if (x !== null) {
      x.totals.error ??= message;
      this.stop(x);
    }
    this.dispatch();
  }

  /** Every 200 ms: stop requests, budgets, progress. */
  private tick(): void {
    const now = performance.now();
    for (const x of this.searches) {
      if (x.o.stop?.requested === true && !x.stopped) {
        x.interrupted = true;
        this.stop(x);
      }
      if (x.t0 === null) continue;
      if (!x.stopped && (now >= x.deadline || x.totals.executionsNow >= (x.o.maxExecutions ?? Infinity))) {
        x.stoppedEarly = true;
        this.stop(x);
      }
      const c = x.coord;
      const t = x.totals;
      x.o.onProgress?.({
        executions: t.executionsNow,
        abandoned: t.abandoned,
        seconds: (now - x.t0) / 1000,
        pending: c.queue.length,
        // The executions so far and, for each job still waiting, the mean of the jobs done (a rough figure: jobs
        // made late are often smaller).
        estimate: c.jobsDone > 0 ? Math.round(t.executionsNow + c.queue.length * (t.executions / c.jobsDone)) : null,
        workers: this.size,
        jobsQueued: c.queue.length,
        jobsRunning: c.runningJobs,
        jobsDone: c.jobsDone,
      });
    }
    this.dispatch();
  }

  /** Terminate the threads; a search still running on them fails. */
  async close(): Promise<void> {
    for (const x of [...this.searches]) {
      x.totals.error ??= 'the worker threads were closed before this search ended';
      this.end(x);
    }
    await Promise.all(this.workers.map((w) => w.terminate()));
    if (this.tmp !== null) fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}

/** Explore on the worker threads of `o.pool` (or of a pool made for this check and closed after it): CheckPool.explore. */
export async function exploreParallel(s0: SearchSettings, threads: number, o: ParallelOptions): Promise<ParallelResult> {
  const own = o.pool === undefined;
  const pool = o.pool ?? new CheckPool(o.workers);
  try {
    return await pool.explore(s0, threads, o);
  } finally {
    if (own) await pool.close();
  }
}
