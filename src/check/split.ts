// A split search's coordinator (parallel DPOR): owns the top of the search tree, hands the subtrees below it out as jobs, and takes back the work the jobs owe to its nodes.
//
// Every node of the search tree belongs to exactly one owner: the coordinator,
// or one job. A job is a schedule prefix — the path to its root — with the
// sleep, done and backtrack sets of the coordinator's nodes on that path
// (JobSeed); the worker replays the prefix (as every execution replays its
// prefix from the snapshot) and runs Source-DPOR below it, owning its root and
// everything under it. The ancestors of a job's root are always the
// coordinator's, so:
//
//   coordinator:   n0 ── n1 ── n2            (owned here: sleep, done, backtrack)
//                         │      └─ q ─▶ job B (root below n2 via q)
//                         └─ p ─▶ job A      (root below n1 via p)
//
// - A race a job finds whose reversal point is above its root (JobSink.race)
//   comes back here: unless the node's backtrack set already holds one of the
//   race's initials, the alternatives are added, and each becomes a job. The
//   worker tests its copy of the set first; copies only lag (sets only grow),
//   so what it skips the coordinator would skip too.
// - A job with an alternative waiting at one of its nodes gives the shallowest
//   such node and the nodes above it to the coordinator when asked
//   (Systematic.donate: work stealing, since DPOR trees are very unbalanced);
//   its root moves below them.
// - Sleep sets: the job for thread q at node X gets X's done set as it is when
//   the job is made (the threads handed out there before q). That is the order
//   a sequential search might have taken them in; Source-DPOR is sound for any
//   order at a node as long as every thread put in a sleep set has its own
//   branch explored, which its job does. A thread whose step at X no job has
//   reported yet (JobSink.full) is taken to conflict with everything: kept out
//   of sleep sets, never wrongly asleep.
//
// So the search explores what Source-DPOR explores in some sequential order: the
// same verdict, violations and exhaustive claim. The execution count differs
// from one run to the next, since sleep sets and which initial a race picks
// depend on the order in which branches are taken.

import type { Access } from './ops';
import type { Engine } from './engine';
import { explore, type DonatedNode, type FoundViolation, type JobSeed, type JobSink, type Strategy } from './explore';

/** A job as the coordinator hands it out: its seed and an id. */
export interface Job extends JobSeed {
  readonly id: number;
}

/** A node of the search tree the coordinator owns. */
interface CNode {
  readonly depth: number;
  readonly parent: CNode | null;
  /** The choices from the start to this node. */
  readonly prefix: readonly number[];
  readonly enabled: number;
  readonly sleep: number;
  done: number;
  backtrack: number;
  readonly prev: number;
  readonly preemptions: number;
  readonly full: (Access | null)[];
  unknown: number;
}

/** One job as recorded for bench/split-sim.js: who made it, when in its maker's run, and how much it explored. */
export interface JobRecord {
  readonly id: number;
  /** The job whose donation or race made it (-1 for the first). */
  readonly from: number;
  /** Executions its maker had run when it was made. */
  readonly at: number;
  /** Depth of its root. */
  readonly depth: number;
  executions: number;
}

/** A running job: the coordinator node above its root (null: its root is the tree's), and the path to its root. */
interface Running {
  parent: CNode | null;
  prefix: number[];
  /** Executions reported so far (progress). */
  executions: number;
}

export class SplitCoordinator {
  /** Jobs not yet taken, oldest first (they are shallower: larger). */
  readonly queue: Job[] = [];
  private readonly running = new Map<number, Running>();
  private readonly jobParent = new Map<number, CNode | null>();
  private nextId = 0;
  /** A preemption bound cut an alternative at a coordinator node. */
  boundReached = false;
  /** Messages taken from jobs (race, full, donate, done): the coordinator's load. */
  messages = 0;
  jobsMade = 0;
  jobsDone = 0;
  /** Every job made, when `record` is on. */
  readonly records: JobRecord[] = [];

  constructor(
    private readonly n: number,
    /** Preemption bound, or -1. */
    private readonly bound: number,
    private readonly record: boolean = false,
  ) {
    this.push({ id: this.nextId++, prefix: [], sleep: [], done: [], backtrack: [], full: [], unknown: 0 }, null, -1, 0);
  }

  private push(job: Job, parent: CNode | null, from: number, at: number): void {
    this.queue.push(job);
    this.jobParent.set(job.id, parent);
    this.jobsMade++;
    if (this.record) this.records.push({ id: job.id, from, at, depth: job.prefix.length, executions: 0 });
  }

  /** The next job to hand out, now running; undefined when none waits. */
  take(): Job | undefined {
    const job = this.queue.shift();
    if (job !== undefined) {
      this.running.set(job.id, { parent: this.jobParent.get(job.id) ?? null, prefix: [...job.prefix], executions: 0 });
      this.origin.set(job.id, { parent: this.jobParent.get(job.id) ?? null, prefix: [...job.prefix] });
    }
    this.jobParent.delete(job?.id ?? -1);
    return job;
  }

  /** Each job's root as made (restart). */
  private readonly origin = new Map<number, { parent: CNode | null; prefix: number[] }>();

  /**
   * Job `id` runs again from its root (a queue's worker died in it, and another took it over): it owns its
   * subtree again. Work it gave away before is the coordinator's still, and may be explored twice: sound.
   */
  restart(id: number): void {
    const o = this.origin.get(id);
    const r = this.running.get(id);
    if (o === undefined || r === undefined) return;
    r.parent = o.parent;
    r.prefix = [...o.prefix];
    r.executions = 0;
  }

  /** No job waits and none runs: the search is over. */
  get finished(): boolean {
    return this.queue.length === 0 && this.running.size === 0;
  }

  get runningJobs(): number {
    return this.running.size;
  }

  /**
   * The coordinator node at `depth` above job `id`'s root; null when the job is not running (a late message
   * of a queue's job that was handed to another worker and has ended: what it says is known already).
   */
  private nodeAt(id: number, depth: number): CNode | null {
    if (!this.running.has(id)) return null;
    let x = this.running.get(id)?.parent ?? null;
    while (x !== null && x.depth > depth) x = x.parent;
    if (x === null || x.depth !== depth) throw new Error(`split search: job ${id} names node ${depth}, which is not above its root`);
    return x;
  }

  /** JobSink.race, from job `id`. */
  race(id: number, depth: number, initials: number, add: number): void {
    this.messages++;
    const x = this.nodeAt(id, depth);
    if (x === null || (x.backtrack & initials) !== 0) return;
    x.backtrack |= add;
    this.expand(x, id);
  }

  /** JobSink.full, from job `id`. */
  full(id: number, depth: number, thread: number, access: Access): void {
    this.messages++;
    const x = this.nodeAt(id, depth);
    if (x === null) return;
    x.full[thread] = access;
    x.unknown &= ~(1 << thread);
  }

  /** JobSink.donate, from job `id`: the nodes from its root down become the coordinator's. */
  donate(id: number, nodes: readonly DonatedNode[]): void {
    this.messages++;
    const r = this.running.get(id);
    if (r === undefined) return;
    let parent = r.parent;
    const made: CNode[] = [];
    for (const nd of nodes) {
      const x: CNode = {
        depth: r.prefix.length,
        parent,
        prefix: [...r.prefix],
        enabled: nd.enabled,
        sleep: nd.sleep,
        done: nd.done,
        backtrack: nd.backtrack,
        prev: nd.prev,
        preemptions: nd.preemptions,
        full: nd.full.slice(),
        unknown: nd.unknown,
      };
      made.push(x);
      r.prefix.push(nd.chosen);
      parent = x;
    }
    r.parent = parent;
    for (const x of made) this.expand(x, id);
  }

  /**
   * Carry on a sequential search (explore's onHandOff, Systematic.handOff): the first job, the whole tree, is taken
   * as the sequential search that ran it, which gives every node of its path to this coordinator and ends. Each
   * alternative still waiting on that path becomes a job. Call before any job is taken.
   */
  handOff(nodes: readonly DonatedNode[]): void {
    if (this.jobsMade !== 1 || this.queue.length !== 1) throw new Error('split search: a hand-off comes before any job runs');
    const first = this.take()!;
    this.donate(first.id, nodes);
    this.done(first.id, 0);
  }

  /** Progress of job `id`: executions so far. */
  progress(id: number, executions: number): void {
    const r = this.running.get(id);
    if (r !== undefined) r.executions = executions;
  }

  /** Executions reported by running jobs (progress). */
  runningExecutions(): number {
    let k = 0;
    for (const r of this.running.values()) k += r.executions;
    return k;
  }

  /** Job `id` ended (its subtree explored, or stopped). */
  done(id: number, executions: number): void {
    this.messages++;
    if (!this.running.delete(id)) return;
    this.origin.delete(id);
    this.jobsDone++;
    if (this.record) {
      const rec = this.records.find((x) => x.id === id);
      if (rec !== undefined) rec.executions = executions;
    }
  }

  /** Make a job of every alternative waiting at `x`. */
  private expand(x: CNode, from: number): void {
    for (let m = x.backtrack & ~x.done & ~x.sleep & x.enabled; m !== 0; m &= m - 1) {
      const q = 31 - Math.clz32(m & -m);
      if (this.bound >= 0 && x.preemptions + (x.prev >= 0 && q !== x.prev && (x.enabled & (1 << x.prev)) !== 0 ? 1 : 0) > this.bound) {
        x.done |= 1 << q;
        this.boundReached = true;
        continue;
      }
      x.done |= 1 << q;
      const path: CNode[] = [];
      for (let y: CNode | null = x; y !== null; y = y.parent) path.push(y);
      path.reverse();
      const job: Job = {
        id: this.nextId++,
        prefix: [...x.prefix, q],
        sleep: path.map((y) => y.sleep),
        done: path.map((y) => y.done),
        backtrack: path.map((y) => y.backtrack),
        full: x.full.slice(),
        unknown: x.unknown,
      };
      // Until q's job says what q's step touches here, later jobs at x keep q awake.
      x.unknown |= 1 << q;
      this.push(job, x, from, this.running.get(from)?.executions ?? 0);
    }
  }

  /** The thread count the search was made for. */
  get threads(): number {
    return this.n;
  }
}

/**
 * The split search run on one thread, one job at a time (tests, and recording job trees): jobs are taken in the
 * order `pick` chooses among those waiting, and a job gives work away whenever `split` says so. The same
 * coordinator and jobs as on workers; what differs is only when messages arrive.
 */
export function exploreSplitInline(
  engine: Engine,
  o: {
    strategy: Strategy;
    preemptions?: number;
    continueAfterViolation?: boolean;
    /** Asked between executions of job `id` (its executions so far): give work away now? */
    split: (id: number, executions: number) => boolean;
    /** Index of the waiting job to run next (default 0: the oldest). */
    pick?: (waiting: number) => number;
    record?: boolean;
    /** Asked between executions: stop the search here (not exhaustive then). */
    stopWhen?: () => boolean;
    /** Carry on from a sequential search's state (SplitCoordinator.handOff). */
    handOff?: readonly DonatedNode[];
  },
): { executions: number; complete: boolean; violation: FoundViolation | null; jobs: number; messages: number; records: JobRecord[] } {
  const coord = new SplitCoordinator(engine.threadNames.length, o.preemptions ?? -1, o.record === true);
  if (o.handOff !== undefined) coord.handOff(o.handOff);
  let executions = 0;
  let complete = true;
  let violation: FoundViolation | null = null;
  const stop = {
    get requested(): boolean {
      return o.stopWhen?.() ?? false;
    },
    set requested(_v: boolean) {},
  };
  while (coord.queue.length > 0) {
    if (stop.requested) {
      complete = false;
      break;
    }
    const k = o.pick?.(coord.queue.length) ?? 0;
    const [job] = coord.queue.splice(k, 1);
    coord.queue.unshift(job!);
    const j = coord.take()!;
    let ran = 0;
    const sink: JobSink = {
      race: (depth, initials, add) => coord.race(j.id, depth, initials, add),
      full: (depth, thread, access) => coord.full(j.id, depth, thread, access),
      splitWanted: () => {
        coord.progress(j.id, ++ran);
        return o.split(j.id, ran);
      },
      donate: (nodes) => coord.donate(j.id, nodes),
    };
    const r = explore(engine, { strategy: o.strategy, reduction: 'source', preemptions: o.preemptions, continueAfterViolation: o.continueAfterViolation, job: j, sink, stop });
    coord.progress(j.id, r.executions);
    coord.done(j.id, r.executions);
    executions += r.executions;
    if (!r.complete) complete = false;
    if (r.violation !== null && (violation === null || r.violation.schedule.length < violation.schedule.length)) violation = r.violation;
    if (r.violation !== null && o.continueAfterViolation !== true) {
      complete = false;
      break;
    }
  }
  if (coord.boundReached) complete = false;
  return { executions, complete, violation, jobs: coord.jobsMade, messages: coord.messages, records: coord.records };
}
