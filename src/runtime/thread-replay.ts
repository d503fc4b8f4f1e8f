// Replaying a checker schedule with each logical thread on its own worker_thread, the access-layer hook blocking it until the scheduler grants its next operation.
//
// This runs the normal build of the MMU (not the generator form) on real
// threads. Between steps every worker is parked inside `hook.before` with its
// pending operation published in shared memory; a step hands one worker the
// turn (Atomics.notify on its go word) and waits until it parks again at its
// next operation or finishes. Handoffs cost tens of microseconds, so this is
// for replaying one schedule, not for exploring — and for checking that the
// generator build runs the very same operations.

import * as path from 'node:path';
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { KvmmuError } from '../shm/errors';
import { accessOf, isEnabled } from '../check/ops';
import { wordValue, type Step } from '../check/engine';
import { nameLocation, traceRows, type TraceRow } from '../check/trace';
import { OP } from '../shm/access';
import { contextFor } from '../check/check';
import type { ReplaySpec } from '../check/trace';
import { ALL_GUARDS, GUARDS } from '../kvm/config';
import { createScenarioMachine, ScenarioVm, threadMem, type ScenarioSpec } from '../check/gen/scenario';

/** Per-thread control block: Int32 words. */
const SLOT_WORDS = 8;
const S_STATE = 0; // RUNNING, PARKED, DONE, FAILED
const S_GO = 1; // bumped by the scheduler to let the thread run one operation
const S_OP = 2;
const S_A = 3;
const S_B = 4;
const S_C = 5;

/**
 * Per-thread await area (Int32 words): how many words the thread's pending awaitChange waits on, then for each
 * whether it is in the data buffer (1) or the meta buffer (0), its Int32 index, and the value it waits out.
 */
const AW_MAX = 64;
const AW_WORDS = 1 + 3 * AW_MAX;

export const RUNNING = 0;
export const PARKED = 1;
export const DONE = 2;
export const FAILED = 3;

export type ThreadStep = Step;

export interface ThreadReplayResult {
  readonly threads: string[];
  readonly steps: ThreadStep[];
  /** Every thread ran to its end (a counterexample's schedule may stop earlier). */
  readonly finished: boolean;
  /** The scenario's own end-to-end check when finished (null: it held, or not run). */
  readonly check: string | null;
  /** Mean time per handoff in microseconds. */
  readonly handoffMicros: number;
  /** The steps as trace rows (no calling functions: those are known only inside the workers). */
  readonly rows: TraceRow[];
}

/** Where a scenario comes from: the built-in catalog, or a scenario file compiled as it is (compileScenarioFilePlain). */
export interface ThreadScenarioSource {
  /** The compiled file's JavaScript (it requires the normal build); absent: a built-in scenario. */
  readonly js?: string;
}

/** The scenario `name` from `source`, in the normal build (this thread's or a worker's). */
export function loadNormalScenario(name: string, source: ThreadScenarioSource): ScenarioSpec {
  if (source.js === undefined) return findNormalScenario(name);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const mod = require(source.js) as Record<string, unknown>;
  const found = Object.values(mod).find((v): v is ScenarioSpec => v !== null && typeof v === 'object' && (v as ScenarioSpec).name === name);
  if (found === undefined) throw new KvmmuError(`the scenario file has no scenario '${name}'`);
  return found;
}

/** Load the normal (not generator) build of the scenario catalog. */
function catalog(): ScenarioSpec[] {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const m = require(path.join(__dirname, '..', 'check', 'gen', 'scenarios', 'index.js')) as {
    BUILTIN_SCENARIOS: ScenarioSpec[];
    EXAMPLE_SCENARIOS: ScenarioSpec[];
  };
  return [...m.BUILTIN_SCENARIOS, ...m.EXAMPLE_SCENARIOS];
}

export function findNormalScenario(name: string): ScenarioSpec {
  const s = catalog().find((x) => x.name === name);
  if (s === undefined) throw new KvmmuError(`replaying on threads works for built-in scenarios; '${name}' is not one`);
  return s;
}

function waitFor(ctrl: Int32Array, word: number, pred: (v: number) => boolean, what: string): number {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const v = Atomics.load(ctrl, word);
    if (pred(v)) return v;
    if (Date.now() > deadline) throw new Error(`thread replay: timed out waiting for ${what}`);
    Atomics.wait(ctrl, word, v, 50);
  }
}

/** Replay `replay` with one worker thread per scenario thread. */
export async function replayOnThreads(replay: ReplaySpec, source: ThreadScenarioSource = {}): Promise<ThreadReplayResult> {
  const spec = loadNormalScenario(replay.scenario, source);
  let guards = ALL_GUARDS;
  for (const g of replay.guardsOff) guards &= ~GUARDS[g];
  const ctx = contextFor(spec, { mode: replay.mode, guards, indirectFastPath: replay.indirectFastPath, pageMarking: replay.pageMarking });
  const machine = createScenarioMachine(spec, ctx);
  const setupVm = new ScenarioVm(machine, threadMem(machine, -1));
  setupVm.setupPhase = true;
  const data = spec.setup === undefined ? undefined : spec.setup(setupVm);
  if (machine.config !== null) setupVm.settle();
  const names = Object.keys(spec.threads);
  const n = names.length;
  const ctrl = new Int32Array(new SharedArrayBuffer(n * SLOT_WORDS * 4));
  const awaits = new Int32Array(new SharedArrayBuffer(n * AW_WORDS * 4));
  const i32 = new Int32Array(machine.shm.meta);
  const d32 = new Int32Array(machine.shm.data, 0, machine.shm.data.byteLength >> 2);
  // A thread's awaitChange (a spin loop's iteration that changed nothing, or awaitChange32) can go on once one of
  // its words no longer holds the value it waits out.
  const awaitEnabled = (t: number): boolean => {
    const base = t * AW_WORDS;
    for (let k = 0; k < awaits[base]!; k++) {
      const at = base + 1 + 3 * k;
      if ((awaits[at] === 1 ? d32 : i32)[awaits[at + 1]!] !== awaits[at + 2]) return true;
    }
    return false;
  };
  const awaitDetail = (t: number): string => {
    const base = t * AW_WORDS;
    const words: string[] = [];
    for (let k = 0; k < awaits[base]!; k++) {
      const at = base + 1 + 3 * k;
      const w = `${nameLocation(machine.shm.layout, machine.config, awaits[at + 1]! * 4, awaits[at] === 1).name} = ${awaits[at + 2]}`;
      if (!words.includes(w)) words.push(w);
    }
    return words.join(', ');
  };
  const workers: Worker[] = [];
  // This thread waits synchronously (Atomics.wait), so worker events never reach it: a failing thread's
  // error comes through a port read with receiveMessageOnPort.
  const errorPorts: MessagePort[] = [];
  const failed = (t: number): never => {
    const m = receiveMessageOnPort(errorPorts[t]!);
    throw new Error(`thread replay: thread '${names[t]}' failed: ${m === undefined ? 'it did not say why' : String(m.message)}`);
  };
  try {
    for (let t = 0; t < n; t++) {
      const { port1, port2 } = new MessageChannel();
      errorPorts.push(port1);
      const w = new Worker(path.join(__dirname, 'thread-replay-worker.js'), {
        workerData: { scenario: spec.name, source, thread: t, shm: machine.shm, config: machine.config, ctrl, awaits, data, errors: port2 },
        transferList: [port2],
      });
      workers.push(w);
    }
    const settled = (t: number): number => {
      const st = waitFor(ctrl, t * SLOT_WORDS + S_STATE, (v) => v !== RUNNING, `thread '${names[t]}'`);
      return st === FAILED ? failed(t) : st;
    };
    for (let t = 0; t < n; t++) settled(t);
    const steps: ThreadStep[] = [];
    const t0 = performance.now();
    for (let k = 0; k < replay.schedule.length; k++) {
      const t = replay.schedule[k]!;
      const base = t * SLOT_WORDS;
      if (t >= n || Atomics.load(ctrl, base + S_STATE) !== PARKED)
        throw new KvmmuError(`the schedule does not fit scenario ${spec.name}: step ${k + 1} runs thread ${t}, which is not waiting at an operation`);
      const op = Atomics.load(ctrl, base + S_OP);
      const a = Atomics.load(ctrl, base + S_A);
      if (!(op === OP.awaitChange ? awaitEnabled(t) : isEnabled(i32, op, a, Atomics.load(ctrl, base + S_B))))
        throw new KvmmuError(`the schedule does not fit scenario ${spec.name}: step ${k + 1} runs thread ${t}, which cannot run there`);
      const b = Atomics.load(ctrl, base + S_B);
      const c = Atomics.load(ctrl, base + S_C);
      const step: Step =
        op === OP.awaitChange
          ? { thread: t, op, a, b, c, access: { keys: [], writes: [], ors: [] }, detail: awaitDetail(t) }
          : { thread: t, op, a, b, c, access: accessOf(op, a, b, c), before: wordValue(machine.shm, op, a) };
      steps.push(step);
      Atomics.store(ctrl, base + S_STATE, RUNNING);
      Atomics.add(ctrl, base + S_GO, 1);
      Atomics.notify(ctrl, base + S_GO);
      settled(t);
      step.after = wordValue(machine.shm, op, a);
    }
    const handoffMicros = steps.length === 0 ? 0 : ((performance.now() - t0) * 1000) / steps.length;
    // A counterexample's schedule may stop where the checker saw the violation, with threads still parked.
    let finished = true;
    for (let t = 0; t < n; t++) if (Atomics.load(ctrl, t * SLOT_WORDS + S_STATE) !== DONE) finished = false;
    let check: string | null = null;
    if (finished && spec.check !== undefined) check = spec.check(new ScenarioVm(machine, threadMem(machine, -1)), data);
    return { threads: names, steps, finished, check, handoffMicros, rows: traceRows(machine.shm.layout, machine.config, steps) };
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
    for (const p of errorPorts) p.close();
  }
}

export const THREAD_SLOT = { SLOT_WORDS, S_STATE, S_GO, S_OP, S_A, S_B, S_C, AW_WORDS, AW_MAX };
