// What each thread would do next after a schedule prefix (for "play the scheduler" in the browser view): its pending operation, named like a trace row.

import { Engine, type Chooser, type Execution, type GenScenarioModule, type Step } from './engine';
import { builtinMonitors } from './invariants';
import { accessOf } from './ops';
import { traceRows } from './trace';
import type { ScenarioContext, ScenarioSpec } from './gen/scenario';

export interface NextOperation {
  readonly thread: number;
  /** `ready`: it can run now; `blocked`: it waits (a lock held, a word that has to change); `done`: it finished. */
  readonly status: 'ready' | 'blocked' | 'done';
  /** The access-layer operation it stops before (null when done). */
  readonly op: string | null;
  /** The word or range that operation touches, named as in traces. */
  readonly target: string | null;
  /** Calling kvmmu functions, innermost first. */
  readonly where: string | null;
}

/** Follows the schedule, then reads every thread's pending operation and stops. */
class PeekChooser implements Chooser {
  next: NextOperation[] | null = null;
  constructor(
    private readonly schedule: readonly number[],
    private readonly engine: Engine,
  ) {}

  choose(ex: Execution): number {
    const k = ex.steps.length;
    if (k < this.schedule.length) {
      const t = this.schedule[k]!;
      if (t < 0 || t >= ex.nThreads || !ex.isEnabled(t)) throw new RangeError(`step ${k + 1}: thread ${t} cannot run there`);
      return t;
    }
    const m = this.engine.machine;
    this.next = [];
    for (let t = 0; t < ex.nThreads; t++) {
      if (ex.done[t]) {
        this.next.push({ thread: t, status: 'done', op: null, target: null, where: null });
        continue;
      }
      const op = ex.pendOp[t]!;
      const a = ex.pendA[t]!;
      const b = ex.pendB[t]!;
      const c = ex.pendC[t]!;
      const step: Step = { thread: t, op, a, b, c, access: accessOf(op, a, b, c), where: ex.pendWhere[t] };
      const row = traceRows(m.shm.layout, m.config, [step])[0]!;
      this.next.push({ thread: t, status: ex.isEnabled(t) ? 'ready' : 'blocked', op: row.op, target: row.target, where: row.where });
    }
    return -1;
  }
}

/**
 * Run `schedule` and report, for each thread, the operation it would run
 * next. Returns [] when the execution ends (finished, or an invariant broke)
 * within the schedule. Throws RangeError if a step names a thread that
 * cannot run, as runPrefix does.
 */
export function nextOperations(gen: GenScenarioModule, spec: ScenarioSpec, ctx: ScenarioContext, schedule: readonly number[]): NextOperation[] {
  const engine = new Engine(gen, spec, ctx, { monitorsFor: builtinMonitors });
  engine.recording = true;
  const chooser = new PeekChooser(schedule, engine);
  engine.execute(chooser);
  return chooser.next ?? [];
}
