// `kvmmu check` and `kvmmu scenarios`: run the interleaving checker on built-in or user scenarios and report in text or JSON.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { KvmmuError } from '../shm/errors';
import { ALL_GUARDS, GUARD_NAMES, guardsOff, parseGuards, type IndirectFastPath, type MmuMode, type PageMarking } from '../kvm/config';
import { checkSlices, contextFor, engineFor, finishCheck, replayCheck, searchBound, type CheckOptions, type CheckReport } from '../check/check';
import { runSlices } from '../check/explore';
import { CheckPool, exploreParallel, kvmmuVersion, sha256File, type SearchSettings, type SplitProgress } from './parallel';
import { exploreOnQueue } from './queue';
import type { DonatedNode, ExploreProgress, Reduction, StopRequest, Strategy } from '../check/explore';
import type { ScenarioSpec } from '../check/gen/scenario';
import { decodeReplay, renderTable, type ReplaySpec } from '../check/trace';
import { replayOnThreads } from '../runtime/thread-replay';
import { compileScenarioFilePlain, findScenario, loadCatalog, loadGenModule, loadScenarioFile } from './scenario-file';
import { StatusLine } from './progress';

export interface CheckCliOptions {
  scenario?: string;
  file?: string;
  all: boolean;
  guard: string[];
  mode?: MmuMode;
  indirectFastPath?: IndirectFastPath;
  pageMarking?: PageMarking;
  strategy: Strategy;
  /** DPOR's reduction (explore.ts DEFAULT_REDUCTION when not given). */
  reduction?: Reduction;
  preemptions?: number;
  executions?: number;
  seconds?: number;
  seed: number;
  replay?: string;
  engine: 'gen' | 'threads';
  json: boolean;
  /** Worker threads for dpor and dfs (1 is the sequential search; default: workersFor's adaptive choice). */
  workers?: number;
  /** Write the split search's job tree to this JSON file (bench/split-sim.js replays it). */
  recordJobs?: string;
  /** redis://HOST:PORT: coordinate `kvmmu worker` processes through BullMQ instead (queue.ts). */
  queue?: string;
  /** Without --workers: seconds of the sequential search before splitting (SEQUENTIAL_FIRST_SECONDS). */
  splitAfter?: number;
}

/**
 * How long a check without --workers runs the sequential search before it splits the search over every core:
 * most checks end sooner, and would only pay the workers' start (their code compiled by the JIT once per
 * thread); a check still running after this is long enough to gain from the cores.
 */
export const SEQUENTIAL_FIRST_SECONDS = 20;

/**
 * The worker count a check runs with: --workers, else the cores available (`adaptive`: the sequential search
 * first, for SEQUENTIAL_FIRST_SECONDS); 1 for what does not split.
 */
export function workersFor(o: Pick<CheckCliOptions, 'workers' | 'strategy' | 'reduction' | 'replay' | 'executions'>): { n: number; adaptive: boolean } {
  const splits = o.strategy === 'dpor' || o.strategy === 'dfs';
  if (o.workers !== undefined && o.workers > 1 && !splits) throw new KvmmuError(`--workers ${o.workers}: only dpor and dfs split over workers (random and pct run on one)`);
  if (o.workers !== undefined) {
    if (o.workers > 1 && o.strategy === 'dpor' && o.reduction === 'optimal')
      throw new KvmmuError(`--reduction optimal runs on one worker (its wakeup trees are not split): give --workers 1, or --reduction source to split the search over ${o.workers}`);
    return { n: o.workers, adaptive: false };
  }
  // Optimal-DPOR asked for by name, a replay, or an execution budget (counted by one search) keep to one worker.
  const cores = os.availableParallelism();
  const adaptive = splits && cores > 1 && o.replay === undefined && o.reduction !== 'optimal' && o.executions === undefined;
  return { n: adaptive ? cores : 1, adaptive };
}

/** Run the check command; returns the exit code (0 clean, 1 violation). Usage errors throw KvmmuError. */
export async function checkCommand(o: CheckCliOptions): Promise<number> {
  if (o.engine === 'threads' && o.replay === undefined) throw new KvmmuError('--engine threads replays one schedule: give --replay STRING');
  const gen = loadGenModule();
  const catalog = loadCatalog();
  const chosen = [o.all, o.scenario !== undefined && o.file === undefined, o.file !== undefined, o.replay !== undefined].filter(Boolean).length;
  if (o.all && (o.scenario !== undefined || o.file !== undefined)) throw new KvmmuError('give --all, or --scenario / --file, not both');
  if (o.all && o.replay !== undefined) throw new KvmmuError('give --all or --replay, not both');
  if (chosen === 0) throw new KvmmuError('say what to check: --scenario NAME, --file PATH, --all, or --replay STRING');

  if (o.replay !== undefined) {
    const r = decodeReplay(o.replay);
    matchReplayFlags(o, r);
    const spec = o.file !== undefined ? loadScenarioFile(o.file, r.scenario) : findScenario(catalog, r.scenario);
    vmSettingsApply(o, spec);
    const report = userCode(o.file, () => replayCheck(gen, spec, r));
    if (o.engine === 'threads') return threadsReplay(r, report, o.json, o.file);
    print(report, o.json, o.file);
    return report.violation === null ? 0 : 1;
  }

  const guards = parseGuards(o.guard, ALL_GUARDS);
  const specs: ScenarioSpec[] = o.all
    ? [...catalog.builtin]
    : [o.file !== undefined ? loadScenarioFile(o.file, o.scenario) : findScenario(catalog, o.scenario!)];
  const reports: CheckReport[] = [];
  // Ctrl-C or SIGTERM: the check in progress stops after its current execution and reports how far it got.
  const stop: StopRequest = { requested: false };
  const onSignal = (): void => {
    stop.requested = true;
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // Every scenario's settings are checked before any runs.
  const todo: ScenarioSpec[] = [];
  for (const spec of specs) {
    vmSettingsApply(o, spec);
    if (o.mode !== undefined && spec.modes !== undefined && !spec.modes.includes(o.mode)) {
      if (o.all) continue;
      throw new KvmmuError(`scenario ${spec.name} runs in ${spec.modes.join(' or ')} mode, not ${o.mode}`);
    }
    todo.push(spec);
  }
  // A split check's worker threads, kept for every scenario of --all (which splits each one: splitsAtOnce).
  const nWorkers = workersFor(o);
  const pool = nWorkers.n > 1 && splitsAtOnce(o, nWorkers) && o.queue === undefined ? new CheckPool(nWorkers.n) : undefined;
  try {
    if (pool !== undefined && todo.length > 1) {
      // Every scenario is given to the pool at once; it serves them in order, side by side (CheckPool). The
      // reports are printed in the scenarios' order, each as soon as it and those before it are in.
      const status = !o.json && process.stderr.isTTY ? new AllStatus(todo.length, pool.size) : null;
      const pending = todo.map((spec) => checkOne(o, gen, spec, guards, stop, pool, status?.forScenario(spec.name) ?? null));
      // A scenario that fails rejects its promise; the first one in order is the error reported (the others' are caught).
      for (const p of pending) p.catch(() => undefined);
      try {
        for (const p of pending) {
          const r = await p;
          if (r.started === false) continue;
          reports.push(r);
          status?.clear();
          if (!o.json) process.stdout.write(formatCheckReport(r, o.file) + '\n');
        }
      } finally {
        status?.clear();
      }
    } else {
      for (const spec of todo) {
        if (stop.requested) break;
        reports.push(await checkOne(o, gen, spec, guards, stop, pool));
        if (!o.json) process.stdout.write(formatCheckReport(reports[reports.length - 1]!, o.file) + '\n');
      }
    }
  } finally {
    await pool?.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (o.json) process.stdout.write(JSON.stringify(o.all ? reports.map(toJson) : toJson(reports[0]!)) + '\n');
  if (stop.requested) {
    if (!o.json && o.all && reports.length < todo.length) process.stdout.write(`interrupted: ${todo.length - reports.length} scenario(s) not checked\n`);
    return EXIT_INTERRUPTED;
  }
  return reports.some((r) => r.violation !== null) ? 1 : 0;
}

/** The exit status of a check stopped by SIGINT or SIGTERM (128 + SIGINT's number, as shells report it). */
export const EXIT_INTERRUPTED = 130;

/**
 * Whether a check on more than one worker splits from its start rather than after --split-after seconds of the
 * sequential search: with --workers, and for --all. --all gives every scenario to one pool at once (its worker
 * threads start once for all): they run side by side, and each is split once a worker is free and no other job
 * waits (CheckPool). `kvmmu check --all` took 17.4 to 17.9 s so on this 2-core machine, 28.4 s on one worker with
 * Source-DPOR, the same executions; splitting each scenario over both workers in turn took the same time.
 */
function splitsAtOnce(o: Pick<CheckCliOptions, 'all'>, workers: { n: number; adaptive: boolean }): boolean {
  return !workers.adaptive || o.all;
}

async function checkOne(
  o: CheckCliOptions,
  gen: ReturnType<typeof loadGenModule>,
  spec: ScenarioSpec,
  guards: number,
  stop: StopRequest,
  pool: CheckPool | undefined,
  shared?: Status | null,
): Promise<CheckReport & { started?: boolean }> {
  const status = shared !== undefined ? shared : !o.json && process.stderr.isTTY ? new StatusLine() : null;
  const workers = workersFor(o);
  try {
    if (o.queue !== undefined || (workers.n > 1 && splitsAtOnce(o, workers))) return await userCodeAsync(o.file, () => splitCheck(o, gen, spec, guards, stop, workers.n, status, pool));
    if (!workers.adaptive) return await sequentialCheck(o, gen, spec, guards, stop, status);
    // No --workers: the sequential search first; if it has neither answer nor end by then, all the cores.
    const first = Math.min(o.splitAfter ?? SEQUENTIAL_FIRST_SECONDS, o.seconds ?? Infinity);
    let handOff: DonatedNode[] | undefined;
    const seq = await sequentialCheck({ ...o, seconds: first }, gen, spec, guards, stop, status, (nodes) => (handOff = nodes));
    const unfinished = seq.violation === null && !seq.interrupted && (seq.pending ?? 0) > 0;
    const left = o.seconds !== undefined ? o.seconds - seq.seconds : undefined;
    if (!unfinished || (left !== undefined && left <= 0)) return seq;
    // The split search carries on from the sequential search's state (Systematic.handOff): its path's alternatives
    // become jobs (after Optimal-DPOR, every thread not asleep at each state of the path).
    const split = await userCodeAsync(o.file, () => splitCheck({ ...o, seconds: left }, gen, spec, guards, stop, workers.n, status, pool, handOff));
    const handedOver = handOff !== undefined;
    const sequentialFirst = { executions: seq.executions, seconds: seq.seconds, reduction: seq.reduction, handedOver };
    if (!handedOver) return { ...split, sequentialFirst };
    return {
      ...split,
      executions: seq.executions + split.executions,
      abandoned: seq.abandoned + split.abandoned,
      boundCut: seq.boundCut + split.boundCut,
      unfair: seq.unfair + split.unfair,
      truncated: seq.truncated + split.truncated,
      seconds: seq.seconds + split.seconds,
      sequentialFirst,
    };
  } finally {
    status?.clear();
  }
}

/** The sequential search (one worker: this thread). */
async function sequentialCheck(
  o: CheckCliOptions,
  gen: ReturnType<typeof loadGenModule>,
  spec: ScenarioSpec,
  guards: number,
  stop: StopRequest,
  status: Status | null,
  onHandOff?: (nodes: DonatedNode[]) => void,
): Promise<CheckReport> {
  return await userCodeAsync(o.file, () =>
    runCheckAsync(gen, spec, {
      mode: o.mode,
      guards,
      indirectFastPath: o.indirectFastPath,
      pageMarking: o.pageMarking,
      strategy: o.strategy,
      reduction: o.reduction,
      preemptions: o.preemptions,
      // random and pct stop after 10,000 executions by default; a time budget given alone replaces that.
      executions: o.executions ?? (o.seconds !== undefined ? Number.MAX_SAFE_INTEGER : undefined),
      seconds: o.seconds,
      seed: o.seed,
      onProgress: status === null ? undefined : (p) => status.show(progressLine(spec.name, p)),
      stop,
      onHandOff,
    }),
  );
}

/**
 * Check a built-in scenario for the tour: on `pool`'s workers, beside the tour's other scenarios, as `kvmmu check
 * --all` does (the tour checks every scenario, on threads started once); without a pool, as `kvmmu check --scenario NAME`
 * does with no other flag but the guards.
 */
export async function checkBuiltin(gen: ReturnType<typeof loadGenModule>, spec: ScenarioSpec, guards: number, pool?: CheckPool): Promise<CheckReport> {
  const o: CheckCliOptions = { scenario: spec.name, all: false, guard: [], strategy: 'dpor', seed: 1, engine: 'gen', json: true, workers: pool?.size };
  return await checkOne(o, gen, spec, guards, { requested: false }, pool);
}

/**
 * A check split over worker threads (parallel.ts) or, with --queue, over `kvmmu worker` processes (queue.ts);
 * the counterexample is minimized and rendered here, as in the sequential search.
 */
async function splitCheck(
  o: CheckCliOptions,
  gen: ReturnType<typeof loadGenModule>,
  spec: ScenarioSpec,
  guards: number,
  stop: StopRequest,
  workers: number,
  status: Status | null,
  pool: CheckPool | undefined,
  handOff?: readonly DonatedNode[],
): Promise<CheckReport & { started?: boolean }> {
  const co: CheckOptions = {
    mode: o.mode,
    guards,
    indirectFastPath: o.indirectFastPath,
    pageMarking: o.pageMarking,
    strategy: o.strategy,
    reduction: 'source',
    preemptions: o.preemptions,
    stop,
  };
  const ctx = contextFor(spec, co);
  const engine = engineFor(gen, spec, ctx);
  const settings: SearchSettings = {
    source: o.file === undefined ? { name: spec.name } : { name: spec.name, file: path.resolve(o.file), sha256: sha256File(o.file) },
    ctx,
    strategy: o.strategy,
    bound: searchBound(spec, { preemptions: o.preemptions, strategy: o.strategy }) ?? -1,
    version: kvmmuVersion(),
  };
  const po = {
    workers,
    maxExecutions: o.executions,
    seconds: o.seconds,
    stop,
    recordJobs: o.recordJobs !== undefined,
    pool,
    handOff,
    onProgress: status === null ? undefined : (p: SplitProgress) => (status.split !== undefined ? status.split(p) : status.show(splitProgressLine(spec.name, p))),
  };
  const result = o.queue !== undefined ? await exploreOnQueue(o.queue, settings, engine.threadNames.length, po) : await exploreParallel(settings, engine.threadNames.length, po);
  if (o.recordJobs !== undefined && result.records !== null)
    fs.writeFileSync(o.recordJobs, JSON.stringify({ scenario: spec.name, mode: ctx.mode, workers: result.workers, executions: result.executions, seconds: result.seconds, startSeconds: result.startSeconds, messages: result.messages, jobs: result.records }) + '\n');
  const report = runSlices(finishCheck(engine, spec, ctx, co, result, { workers: result.workers, jobs: result.jobs, retried: result.retried, shared: result.shared }));
  return result.started === false ? { ...report, started: false } : report;
}

/** Where a check shows its progress: its own status line, or its part of --all's (AllStatus), which takes a split search's figures. */
interface Status {
  show(text: string): void;
  clear(): void;
  split?(p: SplitProgress): void;
}

/**
 * The status line of `check --all` on a pool, whose scenarios run side by side: how many are checked, and each
 * one running with its executions and rate.
 */
class AllStatus {
  private readonly line = new StatusLine();
  private readonly running = new Map<string, SplitProgress>();
  private checked = 0;

  constructor(
    private readonly total: number,
    private readonly workers: number,
  ) {}

  forScenario(name: string): Status {
    return {
      show: () => undefined,
      clear: () => {
        this.running.delete(name);
        this.checked++;
      },
      split: (p) => this.progress(name, p),
    };
  }

  progress(name: string, p: SplitProgress): void {
    this.running.set(name, p);
    const each = [...this.running].map(([n, q]) => `${n} ${q.executions} (${Math.round(q.executions / Math.max(q.seconds, 1e-3))}/s)`);
    this.line.show(`check --all on ${this.workers} workers: ${this.checked} of ${this.total} checked; running ${each.join(', ')}`);
  }

  clear(): void {
    this.line.clear();
  }
}

/** The status line of a split check: executions, rate, jobs queued, running and done. */
export function splitProgressLine(scenario: string, p: SplitProgress): string {
  return (
    `check ${scenario} on ${p.workers} workers: ${p.executions} executions, ${Math.round(p.executions / Math.max(p.seconds, 1e-3))}/s, ` +
    `jobs ${p.jobsQueued} queued, ${p.jobsRunning} running, ${p.jobsDone} done` +
    (p.estimate !== null ? `, about ${p.estimate} in all (estimate)` : '')
  );
}

/** The status line while a check runs: executions (abandoned ones apart), rate, alternatives pending, the estimate. */
export function progressLine(scenario: string, p: ExploreProgress): string {
  return (
    `check ${scenario}: ${p.executions} executions` +
    (p.abandoned > 0 ? ` (${p.abandoned} abandoned as redundant)` : '') +
    `, ${Math.round(p.executions / Math.max(p.seconds, 1e-3))}/s` +
    (p.pending !== null ? `, ${p.pending} alternatives pending` : '') +
    (p.estimate !== null ? `, about ${p.estimate} in all (estimate: grows as races are found)` : '')
  );
}

/** runCheck, letting the event loop run between its slices (about every 100 ms), so a signal handler can set `o.stop`. */
async function runCheckAsync(gen: ReturnType<typeof loadGenModule>, spec: ScenarioSpec, o: CheckOptions): Promise<CheckReport> {
  const g = checkSlices(gen, spec, o);
  for (;;) {
    const r = g.next();
    if (r.done === true) return r.value;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** userCode for an asynchronous run. */
async function userCodeAsync<T>(file: string | undefined, f: () => Promise<T>): Promise<T> {
  if (file === undefined) return f();
  try {
    return await f();
  } catch (e) {
    if (e instanceof KvmmuError) throw e;
    throw new KvmmuError(`scenario file ${file}: ${(e as Error).message}`);
  }
}

/**
 * Run `f`, which runs a scenario's code. For a user's scenario file, what its
 * code throws outside the explored threads (its setup, say) is the user's error;
 * for a built-in scenario it is kvmmu's.
 */
function userCode<T>(file: string | undefined, f: () => T): T {
  if (file === undefined) return f();
  try {
    return f();
  } catch (e) {
    if (e instanceof KvmmuError) throw e;
    throw new KvmmuError(`scenario file ${file}: ${(e as Error).message}`);
  }
}

/** A scenario on raw memory has no VM: a guard or MMU setting given for it would be silently ignored, so it is an error. */
function vmSettingsApply(o: CheckCliOptions, spec: ScenarioSpec): void {
  if (spec.machine !== undefined) return;
  const given = [
    o.mode !== undefined ? '--mode' : '',
    o.guard.length > 0 ? '--guard' : '',
    o.indirectFastPath !== undefined ? '--indirect-fast-path' : '',
    o.pageMarking !== undefined ? '--page-marking' : '',
  ].filter((f) => f !== '');
  if (given.length > 0)
    throw new KvmmuError(`scenario ${spec.name} runs on raw memory, with no VM: ${given.join(' and ')} ${given.length === 1 ? 'does' : 'do'} not apply to it (no guard or MMU setting reaches its code)`);
}

/** Every setting given with --replay must be the replay string's: the string fixes them all. */
function matchReplayFlags(o: CheckCliOptions, r: ReplaySpec): void {
  if (o.scenario !== undefined && o.scenario !== r.scenario)
    throw new KvmmuError(`--scenario ${o.scenario} does not match the replay string's scenario ${r.scenario}`);
  if (o.guard.length > 0) {
    const off = guardsOff(parseGuards(o.guard));
    if (off.join('+') !== [...r.guardsOff].sort((a, b) => GUARD_NAMES.indexOf(a) - GUARD_NAMES.indexOf(b)).join('+'))
      throw new KvmmuError(`--guard settings do not match the replay string (guards off there: ${r.guardsOff.join(', ') || 'none'})`);
  }
  if (o.mode !== undefined && o.mode !== r.mode) throw new KvmmuError(`--mode ${o.mode} does not match the replay string's mode ${r.mode}`);
  if (o.indirectFastPath !== undefined && o.indirectFastPath !== r.indirectFastPath)
    throw new KvmmuError(`--indirect-fast-path ${o.indirectFastPath} does not match the replay string's ${r.indirectFastPath}`);
  if (o.pageMarking !== undefined && o.pageMarking !== (r.pageMarking ?? 'spte'))
    throw new KvmmuError(`--page-marking ${o.pageMarking} does not match the replay string's ${r.pageMarking ?? 'spte'}`);
}

/**
 * Replay on one worker_thread per scenario thread (the normal build) and print
 * its trace. The invariants are the checker's engine's (`report`, the same
 * schedule replayed there): the threads run the same operations, and the exit
 * status says whether that schedule breaks one.
 */
async function threadsReplay(r: ReplaySpec, report: CheckReport, json: boolean, file: string | undefined): Promise<number> {
  // A scenario file runs on the workers as it is, against the normal build (no generator form).
  const outDir = file === undefined ? null : fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-threads-'));
  let res;
  try {
    res = await replayOnThreads(r, outDir === null ? {} : { js: compileScenarioFilePlain(file!, outDir) });
  } finally {
    if (outDir !== null) fs.rmSync(outDir, { recursive: true, force: true });
  }
  const v = report.violation;
  if (json) {
    process.stdout.write(
      JSON.stringify({
        scenario: r.scenario,
        engine: 'threads',
        threads: res.threads,
        steps: res.steps.length,
        finished: res.finished,
        check: res.check,
        violation: toJson(report).violation,
        handoffMicros: res.handoffMicros,
        trace: res.rows,
      }) + '\n',
    );
  } else {
    process.stdout.write(`scenario ${r.scenario} replayed on ${res.threads.length} worker threads: ${res.steps.length} steps, ${res.handoffMicros.toFixed(0)} µs a handoff\n\n`);
    process.stdout.write(renderTable(res.rows, res.threads) + '\n\n');
    process.stdout.write(
      !res.finished
        ? 'the schedule stops before every thread finished (as a counterexample does, at its violation)\n'
        : res.check === null
          ? "every thread finished; the scenario's check holds\n"
          : `every thread finished; the scenario's check fails: ${res.check}\n`,
    );
    process.stdout.write(
      v === null
        ? "the checker's invariants hold on this schedule\n"
        : `VIOLATION of ${v.invariant}${v.statement !== '' ? ` (${v.statement})` : ''} on this schedule (the checker's invariants): ${v.message}\n`,
    );
  }
  return v === null && res.check === null ? 0 : 1;
}

function print(report: CheckReport, json: boolean, file?: string): void {
  process.stdout.write(json ? JSON.stringify(toJson(report)) + '\n' : formatCheckReport(report, file) + '\n');
}

/** Executions that ran to their end: not abandoned as redundant, not cut (preemption bound, step bound). */
export function completeExecutions(r: CheckReport): number {
  return r.executions - r.abandoned - r.boundCut - r.unfair - r.truncated;
}

/** The documented JSON shape: {scenario, guards, strategy, complete, executions, seconds, violation}. */
export function toJson(r: CheckReport): Record<string, unknown> {
  return {
    scenario: r.scenario,
    mode: r.mode,
    guards: r.guards,
    indirectFastPath: r.indirectFastPath,
    pageMarking: r.pageMarking,
    strategy: r.strategy,
    reduction: r.reduction,
    preemptionBound: r.preemptionBound,
    complete: r.complete,
    boundReached: r.boundReached,
    executions: r.executions,
    completeExecutions: completeExecutions(r),
    abandoned: r.abandoned,
    wakeupMisses: r.wakeupMisses ?? 0,
    boundCut: r.boundCut,
    unfair: r.unfair,
    truncated: r.truncated,
    seconds: r.seconds,
    threads: r.threads,
    interrupted: r.interrupted,
    pending: r.pending,
    workers: r.workers,
    jobs: r.jobs,
    sequentialFirst: r.sequentialFirst ?? null,
    ...(r.retried !== undefined ? { retried: r.retried } : {}),
    ...(r.shared === true ? { shared: true } : {}),
    violation:
      r.violation === null
        ? null
        : {
            invariant: r.violation.invariant,
            statement: r.violation.statement,
            message: r.violation.message,
            schedule: r.violation.schedule,
            preemptions: r.violation.preemptions,
            steps: r.violation.steps,
            trace: r.violation.trace,
          },
  };
}

/** The report as text; `file` is the scenario file it came from, which its replay line must name too. */
export function formatCheckReport(r: CheckReport, file?: string): string {
  const lines: string[] = [];
  const mode = r.mode === null ? '' : ` (${r.mode} mode)`;
  const off = r.guards.off.length === 0 ? 'all guards on' : `guards off: ${r.guards.off.join(', ')}`;
  const marking = r.pageMarking === 'fault' ? ', pages marked dirty at fault time (KVM 6.13 on)' : '';
  // A scenario on raw memory has no VM: no guard or MMU setting reaches its code.
  lines.push(r.mode === null ? `scenario ${r.scenario} (raw memory, no VM)` : `scenario ${r.scenario}${mode}, ${off}${marking}`);
  const rate = r.seconds > 0 ? ` (${Math.round(r.executions / r.seconds)}/s)` : '';
  const name = (x: Reduction): string => `${x === 'optimal' ? 'Optimal' : 'Source'}-DPOR`;
  const first = r.sequentialFirst?.handedOver === true ? r.sequentialFirst.reduction : null;
  const how = r.reduction === null ? '' : first !== null && first !== r.reduction ? ` (${name(first)}, then ${name(r.reduction)})` : ` (${name(r.reduction)})`;
  const split =
    r.jobs !== null
      ? ` on ${r.workers} workers${r.shared === true ? ' shared with other scenarios' : ''} (${r.jobs} job${r.jobs === 1 ? '' : 's'}${r.retried !== undefined && r.retried > 0 ? `, ${r.retried} begun again after their worker stopped answering` : ''})`
      : '';
  if (r.sequentialFirst !== undefined) {
    const f = r.sequentialFirst;
    const fhow = f.reduction !== null ? ` (${name(f.reduction)})` : '';
    lines.push(
      `${r.strategy}${fhow} on one worker: ${f.executions} executions in ${f.seconds.toFixed(2)} s without an end; ` +
        (f.handedOver ? `carried on over ${r.workers} workers from there (counted below)` : `split over ${r.workers} workers from the start (not counted below)`),
    );
  }
  lines.push(`${r.strategy}${how}: ${r.executions} execution${r.executions === 1 ? '' : 's'} in ${r.seconds.toFixed(2)} s${rate}${split}`);
  if (r.strategy !== 'replay' && r.reduction !== null) {
    // Sleep sets let no two complete executions be equivalent: each complete one is a class of its own.
    const classes = completeExecutions(r);
    const perClass = classes > 0 ? `: ${(r.executions / classes).toFixed(2)} begun per class of equivalent executions` : '';
    lines.push(
      `${classes} complete, ${r.abandoned} abandoned as redundant (begun, then cut by sleep sets)` +
        (r.boundCut > 0 ? `, ${r.boundCut} cut at the preemption bound` : '') +
        perClass,
    );
  }
  if (r.unfair > 0)
    lines.push(
      `${r.unfair} of them reached the ${r.maxSteps}-step bound with a thread that could run starved: unfair schedules, not livelocks; each was cut and the starved thread tried earlier`,
    );
  if (r.truncated > 0)
    lines.push(
      `${r.truncated} of them reached the ${r.maxSteps}-step bound on a fair schedule without settling into a cycle: cut there, so what they would do next is unexplored`,
    );
  if (r.interrupted) {
    const pending = r.pending !== null ? `, ${r.pending} alternative${r.pending === 1 ? '' : 's'} left unexplored on the current path` : '';
    lines.push(
      `INTERRUPTED after ${r.executions} execution${r.executions === 1 ? '' : 's'} (longest ${r.maxSteps} steps)${pending}: NOT exhaustive` +
        (r.violation !== null ? '; the counterexample below is the best found so far, not minimized' : '; no violation found so far'),
    );
  }
  if (r.violation !== null) {
    const v = r.violation;
    lines.push(`VIOLATION of ${v.invariant}${v.statement !== '' ? ` (${v.statement})` : ''}:`);
    lines.push(`  ${v.message}`);
    lines.push(`  ${v.steps} steps, ${v.preemptions} preemption${v.preemptions === 1 ? '' : 's'}:`);
    lines.push('');
    lines.push(v.table);
    lines.push('');
    lines.push(`replay: kvmmu check ${file !== undefined ? `--file ${shellWord(file)} ` : ''}--replay '${v.schedule}'`);
  } else if (r.interrupted) {
    // Said above.
  } else if (r.strategy === 'replay') {
    lines.push('no violation on this schedule');
  } else if (r.complete) {
    lines.push(`no violation: every schedule was explored${r.preemptionBound !== null ? ` within ${r.preemptionBound} preemptions` : ' (exhaustive)'}`);
  } else {
    const why = r.boundReached
      ? `the preemption bound (${r.preemptionBound}) cut schedules off`
      : r.truncated > 0
        ? 'executions were cut at the step bound'
        : 'the execution or time budget ran out';
    lines.push(`no violation found, but the exploration is NOT exhaustive: ${why}`);
  }
  return lines.join('\n');
}

/** `kvmmu scenarios`: the built-ins and examples, with the guard each exercises. */
export function scenariosCommand(json: boolean): number {
  const c = loadCatalog();
  const rows = [
    ...c.builtin.map((s) => ({ name: s.name, kind: 'built-in', guard: s.guard ?? null, modes: s.modes ?? ['direct', 'shadow'], fix: s.fix ?? null, threads: Object.keys(s.threads), description: s.description })),
    ...c.examples.map((s) => ({ name: s.name, kind: 'example', guard: null, modes: [], fix: null, threads: Object.keys(s.threads), description: s.description })),
  ];
  if (json) {
    process.stdout.write(JSON.stringify(rows) + '\n');
    return 0;
  }
  for (const r of rows) {
    process.stdout.write(`${r.name.padEnd(18)} ${r.kind === 'example' ? 'example (not KVM)' : `guard ${r.guard}, ${r.modes.join('/')} mode`}; threads: ${r.threads.join(', ')}\n`);
    if (r.fix !== null) process.stdout.write(`${''.padEnd(18)} a real race, fixed in ${r.fix.commit} (${r.fix.year}) "${r.fix.title}"\n`);
    process.stdout.write(`${''.padEnd(18)} ${r.description}\n`);
  }
  return 0;
}

/** `s` as one shell word: as it is when it is plain, else in single quotes. */
function shellWord(s: string): string {
  return /^[\w./@%+=:,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}
