// The checker's front door: explore a scenario under a strategy, minimize the counterexample, render it, and replay a schedule string.

import { KvmmuError } from '../shm/errors';
import { ALL_GUARDS, GUARDS, GUARD_NAMES, guardsOff, type GuardName, type IndirectFastPath, type MmuMode, type PageMarking } from '../kvm/config';
import { Engine, type GenScenarioModule } from './engine';
import { ReplayChooser, ScheduleMismatch, exploreSlices, replaySchedule, runSlices, type ExploreProgress, type ExploreResult, type DonatedNode, type FoundViolation, type Reduction, type StopRequest, type Strategy } from './explore';
import { builtinMonitors } from './invariants';
import { encodeReplay, renderTable, traceRows, type ReplaySpec, type TraceRow } from './trace';
import type { ScenarioContext, ScenarioSpec } from './gen/scenario';

export interface CheckOptions {
  readonly mode?: MmuMode;
  /** Mask of guards that are on (default: all). */
  readonly guards?: number;
  readonly indirectFastPath?: IndirectFastPath;
  readonly pageMarking?: PageMarking;
  readonly strategy?: Strategy;
  /** DPOR's reduction (explore.ts DEFAULT_REDUCTION unless given; Source-DPOR under a preemption bound). */
  readonly reduction?: Reduction;
  readonly preemptions?: number;
  readonly executions?: number;
  readonly seconds?: number;
  readonly seed?: number;
  readonly pctDepth?: number;
  /** Search for a counterexample with fewer preemptions, then fewer steps (default true). */
  readonly minimize?: boolean;
  /** Look for violations of this invariant only (a monitor's name, or deadlock / livelock / crash / check); others are passed over. */
  readonly invariant?: string;
  readonly onProgress?: (p: ExploreProgress) => void;
  readonly now?: () => number;
  /** Stop early when set (runCheckAsync lets a signal handler set it); the report then says how far it got. */
  readonly stop?: StopRequest;
  /** A search stopped on its budget hands its state here, for a split search to carry on (explore's onHandOff). */
  readonly onHandOff?: (nodes: DonatedNode[]) => void;
}

export interface CheckViolation {
  /** The invariant that broke (a monitor's name, or deadlock / livelock / crash / check). */
  readonly invariant: string;
  readonly statement: string;
  readonly message: string;
  /** What `--replay` takes. */
  readonly schedule: string;
  readonly preemptions: number;
  readonly steps: number;
  readonly trace: TraceRow[];
  /** The trace as an N-column table. */
  readonly table: string;
}

export interface CheckReport {
  readonly scenario: string;
  readonly mode: MmuMode | null;
  readonly guards: { readonly on: GuardName[]; readonly off: GuardName[] };
  readonly indirectFastPath: IndirectFastPath;
  readonly pageMarking: PageMarking;
  readonly strategy: Strategy | 'replay';
  readonly preemptionBound: number | null;
  /** Every schedule was explored (within the preemption bound, if one was given). */
  readonly complete: boolean;
  readonly boundReached: boolean;
  readonly executions: number;
  /** DPOR's reduction; null for the other strategies and replays. */
  readonly reduction: Reduction | null;
  /** Executions begun and then abandoned as redundant (sleep-set blocked); the complete ones are the rest, less the cut ones. */
  readonly abandoned: number;
  /** Optimal-DPOR: wakeup sequences whose last step could not run where they put it (ExploreResult); absent from a split search's report. */
  readonly wakeupMisses?: number;
  /** Executions cut at the preemption bound. */
  readonly boundCut: number;
  /** Executions cut at the step bound because a thread that could run was starved (no livelock under a fair scheduler). */
  readonly unfair: number;
  /** Executions cut at the step bound that had not settled into a cycle: the exploration is then not exhaustive. */
  readonly truncated: number;
  readonly seconds: number;
  readonly maxSteps: number;
  readonly threads: string[];
  readonly violation: CheckViolation | null;
  /** Stopped by a StopRequest (Ctrl-C): the figures say how far it got, the violation is the best found so far. */
  readonly interrupted: boolean;
  /** DPOR/DFS: alternatives left unexplored when it stopped (0 when complete); null for random, PCT and replay. */
  readonly pending: number | null;
  /** Worker threads or processes that explored (1: the sequential search). */
  readonly workers: number;
  /** A split search's jobs (parallel DPOR); null for the sequential search. */
  readonly jobs: number | null;
  /** Over a queue: jobs begun again on another worker after theirs stopped answering (BullMQ's stalled-job retry). */
  readonly retried?: number;
  /** Its workers explored other scenarios' searches beside it at some time (`check --all`): its seconds count that time. */
  readonly shared?: boolean;
  /**
   * A split search begun after the sequential search had run for a while without an answer (kvmmu check
   * without --workers): that first search's figures. Handed over (DPOR), the split search carried on from where
   * it stopped, and the totals count both; else (DFS) the split search started afresh, and they count it alone.
   */
  readonly sequentialFirst?: {
    readonly executions: number;
    readonly seconds: number;
    readonly reduction: Reduction | null;
    /** The split search carried on from the sequential search's state (counted in the totals), rather than from the start. */
    readonly handedOver: boolean;
  };
}

const STATEMENTS: Readonly<Record<string, string>> = {
  deadlock: 'some thread can always make progress',
  livelock: 'every thread ends: none spins for ever on words no other thread will change, and no execution under a fair schedule runs past the step bound',
  crash: 'no thread fails with an internal error',
  check: "the scenario's end-to-end check holds",
};

export function contextFor(
  spec: ScenarioSpec,
  o: { mode?: MmuMode; guards?: number; indirectFastPath?: IndirectFastPath; pageMarking?: PageMarking },
): ScenarioContext {
  return {
    mode: o.mode ?? spec.modes?.[0] ?? 'direct',
    guards: o.guards ?? ALL_GUARDS,
    indirectFastPath: o.indirectFastPath ?? 'pin',
    pageMarking: o.pageMarking ?? 'spte',
  };
}

export function engineFor(gen: GenScenarioModule, spec: ScenarioSpec, ctx: ScenarioContext): Engine {
  return new Engine(gen, spec, ctx, { monitorsFor: builtinMonitors });
}

/** Explore `spec`; on a violation, look for a simpler one and render it. */
export function runCheck(gen: GenScenarioModule, spec: ScenarioSpec, o: CheckOptions = {}): CheckReport {
  return runSlices(checkSlices(gen, spec, o));
}

/**
 * runCheck in slices: it yields about every 100 ms, so an asynchronous caller can let the event loop run between
 * slices (a SIGINT or SIGTERM handler setting `o.stop`; see kvmmu check); a stopped check reports what it explored
 * and the best counterexample so far.
 */
export function* checkSlices(gen: GenScenarioModule, spec: ScenarioSpec, o: CheckOptions): Generator<void, CheckReport> {
  const ctx = contextFor(spec, o);
  const engine = engineFor(gen, spec, ctx);
  const strategy = o.strategy ?? 'dpor';
  const bound = searchBound(spec, o);
  const result = yield* exploreSlices(engine, {
    strategy,
    reduction: o.reduction,
    preemptions: bound,
    maxExecutions: o.executions,
    seconds: o.seconds,
    seed: o.seed,
    pctDepth: o.pctDepth,
    onProgress: o.onProgress,
    now: o.now,
    stop: o.stop,
    invariant: o.invariant,
    onHandOff: o.onHandOff,
  });
  return yield* finishCheck(engine, spec, ctx, o, result);
}

/** The preemption bound a check explores under: the user's, else, for the systematic strategies, the scenario's own. */
export function searchBound(spec: ScenarioSpec, o: Pick<CheckOptions, 'preemptions' | 'strategy'>): number | undefined {
  const strategy = o.strategy ?? 'dpor';
  return o.preemptions ?? (strategy === 'dpor' || strategy === 'dfs' ? spec.preemptions : undefined);
}

/**
 * What follows an exploration, wherever it ran (here, or split over workers: cli/parallel.ts): minimize the
 * counterexample on `engine`, then report.
 */
export function* finishCheck(
  engine: Engine,
  spec: ScenarioSpec,
  ctx: ScenarioContext,
  o: CheckOptions,
  result: ExploreResult,
  split: { workers: number; jobs: number; retried?: number; shared?: boolean } | null = null,
): Generator<void, CheckReport> {
  const strategy = o.strategy ?? 'dpor';
  let found = result.violation;
  // Interrupted: the counterexample as found (the user asked to stop, not to wait for a simpler one).
  let interrupted = result.interrupted;
  if (found !== null && o.minimize !== false && !interrupted) {
    const m = yield* minimize(engine, found, o);
    found = m.best;
    interrupted = m.interrupted;
  }
  const r = report(engine, spec, ctx, strategy, searchBound(spec, o) ?? null, { ...result, interrupted }, found);
  if (split === null) return r;
  return { ...r, workers: split.workers, jobs: split.jobs, ...(split.retried !== undefined ? { retried: split.retried } : {}), ...(split.shared === true ? { shared: true } : {}) };
}

/**
 * Look for a counterexample with fewer preemptions (DPOR with bounds 0, 1, ...
 * below the one found), then, at that bound, for a shorter one. Budgeted: a
 * few seconds at most. Only a counterexample of the same invariant counts: a
 * simpler schedule that breaks another one is another bug, and reporting it
 * instead would hide the one the search found (a lost update reported as the
 * livelock met on the way).
 */
function* minimize(engine: Engine, found: FoundViolation, o: CheckOptions): Generator<void, { best: FoundViolation; interrupted: boolean }> {
  let best = found;
  const invariant = found.violation.invariant;
  for (let k = 0; k < best.preemptions; k++) {
    const r = yield* exploreSlices(engine, { strategy: 'dpor', preemptions: k, maxExecutions: 20_000, seconds: 3, invariant, now: o.now, stop: o.stop });
    if (r.interrupted) return { best, interrupted: true };
    if (r.violation !== null) {
      best = r.violation.preemptions <= best.preemptions ? r.violation : best;
      break;
    }
  }
  const r = yield* exploreSlices(engine, {
    strategy: 'dpor',
    preemptions: best.preemptions,
    maxExecutions: 3_000,
    seconds: 2,
    continueAfterViolation: true,
    invariant,
    now: o.now,
    stop: o.stop,
  });
  if (r.violation !== null && r.violation.preemptions <= best.preemptions && r.violation.schedule.length < best.schedule.length) best = r.violation;
  return { best, interrupted: r.interrupted };
}

function report(
  engine: Engine,
  spec: ScenarioSpec,
  ctx: ScenarioContext,
  strategy: Strategy | 'replay',
  bound: number | null,
  r: Pick<ExploreResult, 'executions' | 'reduction' | 'abandoned' | 'wakeupMisses' | 'boundCut' | 'unfair' | 'truncated' | 'complete' | 'boundReached' | 'seconds' | 'maxSteps' | 'interrupted' | 'pending'>,
  found: FoundViolation | null,
): CheckReport {
  const off = guardsOff(ctx.guards);
  const isVm = engine.machine.config !== null;
  let violation: CheckViolation | null = null;
  if (found !== null) {
    engine.recording = true;
    const replayed = engine.execute(new ReplayChooser(found.schedule));
    engine.recording = false;
    const trace = traceRows(engine.machine.shm.layout, engine.machine.config, replayed.steps);
    const v = replayed.violation ?? found.violation;
    violation = {
      invariant: v.invariant,
      statement: engine.monitors.find((m) => m.name === v.invariant)?.statement ?? STATEMENTS[v.invariant] ?? '',
      message: v.message,
      schedule: encodeReplay({
        scenario: spec.name,
        mode: ctx.mode,
        guardsOff: off,
        indirectFastPath: ctx.indirectFastPath,
        pageMarking: ctx.pageMarking,
        schedule: found.schedule,
      }),
      preemptions: found.preemptions,
      // What ran: the rows of the trace (a schedule is replayed strictly, so it is the schedule's length too).
      steps: replayed.steps.length,
      trace,
      table: renderTable(trace, engine.threadNames),
    };
  }
  return {
    scenario: spec.name,
    mode: isVm ? ctx.mode : null,
    guards: { on: GUARD_NAMES.filter((g) => (ctx.guards & GUARDS[g]) !== 0), off },
    indirectFastPath: ctx.indirectFastPath,
    pageMarking: ctx.pageMarking ?? 'spte',
    strategy,
    preemptionBound: bound,
    complete: r.complete,
    boundReached: r.boundReached,
    executions: r.executions,
    reduction: r.reduction,
    abandoned: r.abandoned,
    wakeupMisses: r.wakeupMisses,
    boundCut: r.boundCut,
    unfair: r.unfair,
    truncated: r.truncated,
    seconds: r.seconds,
    maxSteps: r.maxSteps,
    threads: engine.threadNames,
    violation,
    interrupted: r.interrupted,
    pending: r.pending,
    workers: 1,
    jobs: null,
  };
}

/** Re-run exactly the schedule in `replay` (which names the scenario's settings) and report what happens. */
export function replayCheck(gen: GenScenarioModule, spec: ScenarioSpec, replay: ReplaySpec, now: () => number = () => performance.now()): CheckReport {
  if (replay.scenario !== spec.name) throw new KvmmuError(`the replay string is for scenario ${replay.scenario}, not ${spec.name}`);
  let guards = ALL_GUARDS;
  for (const g of replay.guardsOff) guards &= ~GUARDS[g];
  const ctx = contextFor(spec, { mode: replay.mode, guards, indirectFastPath: replay.indirectFastPath, pageMarking: replay.pageMarking });
  const engine = engineFor(gen, spec, ctx);
  const t0 = now();
  let run;
  try {
    run = replaySchedule(engine, replay.schedule);
  } catch (e) {
    if (e instanceof ScheduleMismatch) throw new KvmmuError(`the schedule does not fit scenario ${spec.name}: ${e.message}`);
    throw e;
  }
  const seconds = (now() - t0) / 1000;
  const r = run.result;
  const found: FoundViolation | null =
    r.violation === null ? null : { violation: r.violation, schedule: [...replay.schedule], preemptions: run.preemptions };
  return report(engine, spec, ctx, 'replay', null, { executions: 1, reduction: null, abandoned: 0, wakeupMisses: 0, boundCut: 0, unfair: 0, truncated: 0, complete: false, boundReached: false, seconds, maxSteps: r.steps.length, interrupted: false, pending: null }, found);
}
