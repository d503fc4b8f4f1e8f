// The execution engine: runs a scenario's threads (compiled to generators) from a memory snapshot, one access-layer operation per step, as a chooser directs.
//
// Each logical thread has its own Mem whose hook is a generator: before every
// operation the thread records the operation as pending and yields. A step
// resumes one thread: its pending operation executes, and the thread runs on
// (local computation only) until its next operation. So the state between
// steps is exactly "every thread paused before an operation", and the
// engine knows each thread's next operation — what the exploration
// strategies and the race analysis need.

import type { AccessHook } from '../shm/access';
import { OP } from '../shm/access';
import { KvmmuError } from '../shm/errors';
import type { ScenarioContext, ScenarioMachine, ScenarioSpec, ScenarioVm } from './gen/scenario';
import { accessOf, isEnabled, metaKey32, readAccessOf, rmwWidth, withExtra, type Access } from './ops';
import { LoopGuardError, loopGuardStep, resetLoopGuard, setSpinHandler, type SpinHandler } from './loop-guard';
import { SpinTracker } from './spin';
import { nameLocation, traceRows } from './trace';

/** The generator-form module the engine drives (dist/gen/src/check/gen/scenario.js, or a bundle of it). */
export interface GenScenarioModule {
  createScenarioMachine(spec: ScenarioSpec, ctx: ScenarioContext): ScenarioMachine;
  threadMem(machine: ScenarioMachine, tid: number): { hook: AccessHook | null; tid: number };
  ScenarioVm: new (machine: ScenarioMachine, mem: never, handles?: Map<number, unknown>) => ScenarioVm;
}

export interface Step {
  readonly thread: number;
  readonly op: number;
  readonly a: number;
  readonly b: number;
  readonly c: number;
  /** The operation's locations, plus what monitors and plain stores touched during the step (Footprint). */
  access: Access;
  /**
   * Set when a read-modify-write changed nothing and `access` counts it as a read (ops.ts rmwWidth): the
   * operation's locations as it would touch them if it wrote. In another order it may (Systematic.insertReversal).
   */
  writing?: Access;
  /** Filled when recording: value of the target word before and after (32/64-bit ops), and the calling functions. */
  before?: bigint | number;
  after?: bigint | number;
  where?: string;
  /** Filled when recording an awaitChange: the words it waited on and the values waited out. */
  detail?: string;
}

export interface Violation {
  /** Name of the invariant (or `deadlock`, `livelock`, `crash`, `check`). */
  readonly invariant: string;
  readonly message: string;
  /** Step index at which it was detected (the trace length for end-of-execution checks). */
  readonly step: number;
}

/**
 * What a monitor reads and writes while it evaluates, as location keys (ops.ts: memory words and pages, and
 * negative ghost keys for the monitor's own state). A monitor that looks at memory at a mark (onNote) or after a
 * step (afterStep) reads it at that point of the execution, as part of the running step; the engine adds these
 * locations to that step's access, so DPOR orders the step against every write of them (Issue: a monitor that
 * read a vCPU's request word at a mark, unseen, let DPOR call a racy scenario clean). Reads at the end (atEnd)
 * need no declaring: the final state is the same in every execution DPOR treats as equivalent.
 */
export interface Footprint {
  read(key: number): void;
  write(key: number): void;
  /** A commutative update (a set insertion): two of them never conflict; either conflicts with a read or write. */
  or(key: number): void;
  /**
   * Say, once, that monitors read meta word `word`, which the MMU writes with plain stores (Mem.storePlain32,
   * plainStoreDone): only such words' plain stores are counted as writes (the rest, hash links, rmaps, free
   * lists, are read by no monitor and ordered by mmu_lock, so counting them would only slow the search).
   */
  watchPlain(word: number): void;
}

/** An invariant monitor. Each method returns a violation message or null. */
export interface Monitor {
  readonly name: string;
  /** One sentence stating the invariant. */
  readonly statement: string;
  reset?(ex: Execution): void;
  onNote?(ex: Execution, thread: number, kind: number, a: number, b: number): string | null;
  afterStep?(ex: Execution, step: Step): string | null;
  atEnd?(ex: Execution): string | null;
}

/** Decides which thread runs at each state. */
export interface Chooser {
  /** Thread to run next (enabled), or -1 to abandon this execution. */
  choose(ex: Execution): number;
  /** Called after each step. */
  stepped?(ex: Execution, step: Step): void;
  /**
   * Called when the engine cuts an unfair execution at the step bound (a thread that could run did not, for the
   * last half of it): the threads still pending never ran their next operation here, so a systematic explorer
   * must order it against the steps it depends on (explore.ts), or it would never try the fair schedules.
   */
  cut?(ex: Execution): void;
}

export interface ExecutionResult {
  readonly violation: Violation | null;
  readonly steps: readonly Step[];
  /** The execution was abandoned by the chooser (a redundant branch), or cut as unfair. */
  readonly abandoned: boolean;
  /** It reached the step bound with a thread that could run starved (not a livelock under a fair scheduler): cut. */
  readonly unfair: boolean;
  /**
   * It reached the step bound on a fair schedule without settling into a cycle (threads still doing something
   * new: a long execution, not one that repeats itself): cut, and the exploration is not exhaustive.
   */
  readonly truncated: boolean;
}

export interface EngineOptions {
  /** Steps after which an execution is a livelock. */
  readonly maxSteps?: number;
  /** The invariants to watch, made for the scenario's machine; they declare what they touch to `fp`. */
  readonly monitorsFor?: (machine: ScenarioMachine, fp: Footprint) => Monitor[];
  /**
   * A read-modify-write that leaves its word as it was (a failed compare-and-swap) counts as a read for the
   * reduction (ops.ts rmwWidth). Default true; false counts every one a write, as kvmmu did before 2026-12-07
   * (bench/check.js measures the two side by side).
   */
  readonly unchangedRmwIsRead?: boolean;
}

const DEFAULT_MAX_STEPS = 20_000;

/** A thread's stack at an operation, as "callee ← caller ← ..." of kvmmu functions (recording only). */
function whereNow(): string {
  const stack = new Error().stack ?? '';
  const names: string[] = [];
  for (const line of stack.split('\n').slice(1)) {
    const m = /at (?:Object\.)?(?:(\S+?)\.)?(\*?[\w$<>]+) \(/.exec(line.trim()) ?? /at (?:(\S+?)\.)?([\w$]+) \[as/.exec(line.trim());
    if (m === null) continue;
    const cls = m[1] ?? '';
    const fn = m[2]!.replace(/^\*/, '');
    if (cls === 'Mem' || fn === 'before' || fn === 'next' || fn === 'whereNow' || fn === 'tick' || fn === 'spinTick' || cls === 'Engine' || cls === 'Execution') continue;
    if (/check[\\/](engine|explore|dpor)/.test(line)) continue;
    names.push(fn);
    if (names.length === 4) break;
  }
  return names.join(' ← ');
}

/** One execution's live state, as choosers and monitors see it. */
export class Execution {
  readonly steps: Step[] = [];
  readonly pendOp: Int32Array;
  readonly pendA: Float64Array;
  readonly pendB: Float64Array;
  readonly pendC: Float64Array;
  /** The locations each thread's pending operation touches (computed once, when it parks). */
  readonly pendAcc: Access[];
  readonly pendWhere: string[];
  readonly done: boolean[];
  /** Thread currently running a step (or -1 between steps). */
  running = -1;
  violation: Violation | null = null;
  /** Locations the running step touched besides its operation (Footprint): n of them in the arrays below. */
  xn = 0;
  readonly xKeys: number[] = [];
  readonly xWrites: boolean[] = [];
  readonly xOrs: boolean[] = [];

  /** Add location `key` to the running step's footprint (no-op between steps, or when no one needs footprints). */
  touch(key: number, write: boolean, or: boolean): void {
    if (this.running < 0 || !this.engine.trackFootprints) return;
    const n = this.xn;
    for (let i = 0; i < n; i++) {
      if (this.xKeys[i] !== key) continue;
      if (this.xWrites[i] !== write || this.xOrs[i] !== or) {
        this.xWrites[i] = true;
        this.xOrs[i] = false;
      }
      return;
    }
    this.xKeys[n] = key;
    this.xWrites[n] = write;
    this.xOrs[n] = or;
    this.xn = n + 1;
  }

  constructor(
    readonly engine: Engine,
    readonly i32: Int32Array,
  ) {
    const n = engine.threadNames.length;
    this.pendOp = new Int32Array(n);
    this.pendA = new Float64Array(n);
    this.pendB = new Float64Array(n);
    this.pendC = new Float64Array(n);
    this.pendAcc = new Array<Access>(n);
    this.pendWhere = new Array<string>(n).fill('');
    this.done = new Array<boolean>(n).fill(false);
    this.lastRan = new Int32Array(n).fill(-1);
  }

  get nThreads(): number {
    return this.done.length;
  }

  isEnabled(t: number): boolean {
    if (this.done[t]) return false;
    const op = this.pendOp[t]!;
    return op === OP.awaitChange ? this.engine.trackers[t]!.awaitEnabled() : isEnabled(this.i32, op, this.pendA[t]!, this.pendB[t]!);
  }

  /** The step at which each thread last ran (-1: not yet). */
  readonly lastRan: Int32Array;

  /** Bit mask of enabled threads (computed once per state). */
  enabledMask(): number {
    if (this.enabledAt === this.steps.length) return this.enabledCache;
    let m = 0;
    for (let t = 0; t < this.nThreads; t++) if (this.isEnabled(t)) m |= 1 << t;
    this.enabledCache = m;
    this.enabledAt = this.steps.length;
    return m;
  }

  private enabledCache = 0;
  private enabledAt = -1;

  allDone(): boolean {
    for (let t = 0; t < this.done.length; t++) if (!this.done[t]) return false;
    return true;
  }

  /** The locations thread `t`'s pending operation touches. */
  pendingAccess(t: number): Access {
    return this.pendAcc[t]!;
  }

  /** The thread that ran the previous step, or -1. */
  get lastThread(): number {
    return this.steps.length === 0 ? -1 : this.steps[this.steps.length - 1]!.thread;
  }
}

/**
 * Owns a scenario's machine and threads across executions. Construct once per
 * (scenario, guards, mode); call `execute` once per execution.
 */
export class Engine {
  readonly threadNames: string[];
  /** Each thread as the loop guard names it. */
  private readonly threadLabels: string[];
  readonly machine: ScenarioMachine;
  private readonly meta8: Uint8Array;
  /** Views for reading the word a read-modify-write targets, before and after it (rmwValue). */
  private readonly metaI32: Int32Array;
  private readonly metaU64: BigUint64Array;
  private readonly dataU64: BigUint64Array;
  private readonly data8: Uint8Array;
  private readonly snapMeta: Uint8Array;
  private readonly snapData: Uint8Array;
  /** Meta-buffer ranges restored before every execution: regions written with plain stores too. */
  private readonly alwaysRestore: [number, number][] = [];
  /** 4 KiB chunks of the large regions written (through the access layer) since the last restore. */
  private readonly dirtyMeta: Uint8Array;
  private readonly dirtyData: Uint8Array;
  private readonly dirtyList: number[] = [];
  private readonly mems: { hook: AccessHook | null; tid: number }[] = [];
  private readonly handles: Map<number, unknown>[] = [];
  private readonly setupData: unknown;
  /** Steps after which an execution is a livelock, or, with a thread starved, an unfair one (cut). */
  readonly maxSteps: number;
  /** EngineOptions.unchangedRmwIsRead. */
  private readonly unchangedRmwIsRead: boolean;
  readonly monitors: readonly Monitor[];
  /** The monitors that look at every step (most only watch notes or the end). */
  private readonly stepMonitors: readonly Monitor[];
  private current: Execution | null = null;
  /** Meta words monitors read that the MMU writes with plain stores (Footprint.watchPlain). */
  private readonly plainWatched: Uint8Array;
  /** Capture values and stacks for each step (for rendering a counterexample). */
  recording = false;
  /**
   * Collect each step's footprint beyond its operation (Footprint): what partial-order reduction needs. Plain DFS,
   * random walks, PCT and replays run every schedule they choose and need none, so they skip the cost.
   */
  trackFootprints = true;
  /** A sequential hook that still records writes (for the end-of-execution check). */
  private readonly trackingHook: AccessHook;
  /** Each thread's spin-loop record (check/spin.ts), and the sequential phases' (setup, final check). */
  readonly trackers: SpinTracker[] = [];
  private readonly seqTracker: SpinTracker;
  /** A spin loop ticked or a hand-written await ran: the trackers must hear of every operation from now on. */
  private spinUsed = false;
  /** Judges spin loops in threads: an iteration that changed nothing blocks the thread (an awaitChange). */
  private readonly threadSpin: SpinHandler;

  constructor(
    readonly gen: GenScenarioModule,
    readonly spec: ScenarioSpec,
    readonly ctx: ScenarioContext,
    o: EngineOptions = {},
  ) {
    this.threadNames = Object.keys(spec.threads);
    this.threadLabels = this.threadNames.map((name) => `scenario ${spec.name}'s thread '${name}'`);
    if (this.threadNames.length === 0) throw new KvmmuError(`scenario ${spec.name} has no threads`);
    if (this.threadNames.length > 30) throw new KvmmuError(`scenario ${spec.name} has ${this.threadNames.length} threads; the checker runs at most 30`);
    for (const name of this.threadNames) checkThreadName(spec.name, name);
    this.maxSteps = o.maxSteps ?? DEFAULT_MAX_STEPS;
    this.unchangedRmwIsRead = o.unchangedRmwIsRead ?? true;
    this.machine = gen.createScenarioMachine(spec, ctx);
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    const watched = new Uint8Array(this.machine.shm.meta.byteLength / 4);
    this.plainWatched = watched;
    const footprint: Footprint = {
      read: (key) => self.current?.touch(key, false, false),
      write: (key) => self.current?.touch(key, true, false),
      or: (key) => self.current?.touch(key, true, true),
      watchPlain: (word) => {
        watched[word] = 1;
      },
    };
    this.monitors = o.monitorsFor?.(this.machine, footprint) ?? [];
    this.stepMonitors = this.monitors.filter((m) => m.afterStep !== undefined);
    this.meta8 = new Uint8Array(this.machine.shm.meta);
    this.data8 = new Uint8Array(this.machine.shm.data);
    this.metaI32 = new Int32Array(this.machine.shm.meta);
    this.metaU64 = new BigUint64Array(this.machine.shm.meta, 0, this.machine.shm.meta.byteLength >> 3);
    this.dataU64 = new BigUint64Array(this.machine.shm.data, 0, this.machine.shm.data.byteLength >> 3);
    // Setup runs sequentially on its own handle (thread id -1), with a hook that never yields.
    const setupMem = gen.threadMem(this.machine, -1);
    const i32 = new Int32Array(this.machine.shm.meta);
    const data32 = new Int32Array(this.machine.shm.data, 0, this.machine.shm.data.byteLength >> 2);
    for (let t = 0; t < this.threadNames.length; t++) this.trackers.push(new SpinTracker(i32, data32));
    this.seqTracker = new SpinTracker(i32, data32);
    this.threadSpin = {
      tick: (loop) => {
        const ex = self.current;
        const t = ex === null ? -1 : ex.running;
        self.spinUsed = true;
        if (t < 0 || !self.trackers[t]!.tick(loop)) return false;
        // The iteration changed nothing: the thread's next operation is the wait for one of the words it read.
        self.mems[t]!.hook!.before(OP.awaitChange, self.trackers[t]!.awIdx.length, 0, 0);
        return true;
      },
      end: (loop) => {
        const ex = self.current;
        if (ex !== null && ex.running >= 0) self.trackers[ex.running]!.end(loop);
      },
    };
    setupMem.hook = sequentialHook(`scenario ${spec.name}'s setup`, i32, null, this.seqTracker);
    setSpinHandler(sequentialSpin(`scenario ${spec.name}'s setup`, this.seqTracker, (w) => this.wordName(w)));
    const setupVm = new gen.ScenarioVm(this.machine, setupMem as never);
    setupVm.setupPhase = true;
    resetLoopGuard(`scenario ${spec.name}'s setup`);
    try {
      // Frozen: every execution starts from this same data, so a thread must keep what it changes in shared memory.
      this.setupData = spec.setup === undefined ? undefined : freezePlain(drain(spec.setup(setupVm)));
      if (this.machine.config !== null) drain(setupVm.settle());
    } catch (e) {
      setSpinHandler(null);
      if (e instanceof KvmmuError) throw e;
      // A user's scenario file's setup failing is the user's error; the CLI says so for files (check-command).
      throw new Error(`scenario ${spec.name}: its setup failed: ${(e as Error).message}`, { cause: e });
    }
    this.snapMeta = this.meta8.slice();
    this.snapData = this.data8.slice();
    this.dirtyMeta = new Uint8Array(Math.ceil(this.meta8.length / CHUNK));
    this.dirtyData = new Uint8Array(Math.ceil(this.data8.length / CHUNK));
    // SPTE pages and per-entry gfns are written only through the access layer, so tracking those writes is
    // enough to restore them; everything else in the meta buffer (headers, rmaps, locks, TLBs, counters) is small
    // and may be written with plain stores, so it is copied back whole.
    const layer = new Set(['kvm.spt', 'kvm.spGfns']);
    const ranges = Object.entries(this.machine.shm.layout.regions)
      .filter(([name, r]) => !layer.has(name) && !DATA_REGIONS.has(name) && r.bytes > 0)
      .map(([, r]) => [r.off, r.off + r.bytes] as [number, number])
      .sort((x, y) => x[0] - y[0]);
    for (const r of ranges) {
      const last = this.alwaysRestore[this.alwaysRestore.length - 1];
      if (last !== undefined && r[0] <= last[1] + 64) last[1] = Math.max(last[1], r[1]);
      else this.alwaysRestore.push([r[0], r[1]]);
    }
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const engine = this;
    // The final check's: bounded as setup is, and it records writes so the next restore undoes them.
    this.trackingHook = sequentialHook(`scenario ${spec.name}'s final check`, i32, (op, acc) => engine.noteWrite(op, acc), this.seqTracker);
    setSpinHandler(null);
    for (let t = 0; t < this.threadNames.length; t++) {
      const mem = gen.threadMem(this.machine, t);
      mem.hook = this.makeHook(t);
      this.mems.push(mem);
      this.handles.push(new Map());
    }
  }

  /** Remember which chunks a write operation touches, so the next restore copies them back. */
  noteWrite(op: number, acc: Access): void {
    // The operation's locations (ops.ts): an even key is meta Int32 word key/2, an odd key data page (key-1)/2.
    for (let k = 0; k < acc.keys.length; k++) {
      if (!acc.writes[k]) continue;
      const key = acc.keys[k]!;
      if ((key & 1) === 0) this.dirtyChunk(false, key * 2, op === OP.store64 || op === OP.cmpxchg64 || op === OP.xchg64 ? 8 : 4);
      else this.dirtyChunk(true, ((key - 1) / 2) * 4096, 4096);
    }
  }

  private dirtyChunk(data: boolean, byte: number, len: number): void {
    const marks = data ? this.dirtyData : this.dirtyMeta;
    for (let ch = Math.floor(byte / CHUNK); ch <= Math.floor((byte + len - 1) / CHUNK); ch++) {
      if (marks[ch] !== 0) continue;
      marks[ch] = 1;
      this.dirtyList.push(data ? -ch - 1 : ch);
    }
  }

  /** Put memory back to the snapshot: the always-restored ranges and the chunks written since. */
  private restore(): void {
    for (const [lo, hi] of this.alwaysRestore) this.meta8.set(this.snapMeta.subarray(lo, hi), lo);
    for (const e of this.dirtyList) {
      if (e >= 0) {
        this.meta8.set(this.snapMeta.subarray(e * CHUNK, (e + 1) * CHUNK), e * CHUNK);
        this.dirtyMeta[e] = 0;
      } else {
        const ch = -e - 1;
        this.data8.set(this.snapData.subarray(ch * CHUNK, (ch + 1) * CHUNK), ch * CHUNK);
        this.dirtyData[ch] = 0;
      }
    }
    this.dirtyList.length = 0;
  }

  private makeHook(t: number): AccessHook {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const engine = this;
    // In the generator build the access layer calls `before` and then yields: record the pending operation here.
    const hook = {
      before(op: number, a: number, b: number, c: number) {
        loopGuardStep();
        let acc: Access;
        if (engine.spinUsed) {
          const tr = engine.trackers[t]!;
          tr.op(op, a);
          acc = op === OP.awaitChange ? tr.awaitAccess() : accessOf(op, a, b, c);
        } else acc = accessOf(op, a, b, c);
        engine.noteWrite(op, acc);
        const ex = engine.current!;
        ex.pendOp[t] = op;
        ex.pendA[t] = a;
        ex.pendB[t] = b;
        ex.pendC[t] = c;
        ex.pendAcc[t] = acc;
        if (engine.recording) ex.pendWhere[t] = whereNow();
      },
      plainStore(a: number) {
        if (engine.plainWatched[a] === 1) engine.current?.touch(metaKey32(a), true, false);
      },
      awaitSet(words: readonly number[], seen: readonly number[]) {
        engine.spinUsed = true;
        engine.trackers[t]!.setHandAwait(words, seen);
      },
      note(kind: number, a: number, b: number) {
        const ex = engine.current;
        if (ex === null || ex.violation !== null) return;
        for (const m of engine.monitors) {
          const msg = m.onNote?.(ex, t, kind, a, b) ?? null;
          if (msg !== null) {
            ex.violation = { invariant: m.name, message: msg, step: ex.steps.length };
            return;
          }
        }
      },
    };
    return hook;
  }

  /** Run one execution from the snapshot, asking `chooser` at every state. */
  execute(chooser: Chooser): ExecutionResult {
    this.restore();
    const ex = new Execution(this, new Int32Array(this.machine.shm.meta));
    this.current = ex;
    const n = this.threadNames.length;
    // Trackers hear of operations only once a spin loop or an await has been met (spinUsed); until then they are clean.
    if (this.spinUsed) for (const tr of this.trackers) tr.reset();
    setSpinHandler(this.threadSpin);
    const gens: Generator[] = [];
    for (let t = 0; t < n; t++) {
      const vm = new this.gen.ScenarioVm(this.machine, this.mems[t] as never, this.handles[t]);
      const body = this.spec.threads[this.threadNames[t]!]!;
      // A body that never reaches the access layer is a plain function, and runs whole right here.
      resetLoopGuard(this.threadLabels[t]!);
      gens.push(asGenerator(body(vm, this.setupData)));
    }
    for (const m of this.monitors) m.reset?.(ex);
    for (let t = 0; t < n && ex.violation === null; t++) this.advance(ex, gens, t);
    // What threads touched before their first operation is the same in every execution: no step owns it.
    ex.xn = 0;
    let abandoned = false;
    let unfair = false;
    let truncated = false;
    while (ex.violation === null) {
      if (ex.allDone()) break;
      if (ex.enabledMask() === 0) {
        ex.violation = this.stuck(ex);
        break;
      }
      if (ex.steps.length >= this.maxSteps) {
        const starved = this.starved(ex);
        if (starved.length > 0) {
          // Not a livelock under a fair scheduler: the schedule kept a thread that could run from running.
          unfair = true;
          abandoned = true;
          chooser.cut?.(ex);
          break;
        }
        const cycle = this.cycle(ex);
        if (cycle === 0) {
          truncated = true;
          abandoned = true;
          break;
        }
        ex.violation = { invariant: 'livelock', message: this.describeLivelock(ex, cycle), step: ex.steps.length };
        break;
      }
      const t = chooser.choose(ex);
      if (t < 0) {
        abandoned = true;
        break;
      }
      if (!ex.isEnabled(t)) throw notRepeatable(this.spec.name, `thread ${this.threadNames[t]} cannot run at step ${ex.steps.length + 1}, where it could before`);
      const step: Step = {
        thread: t,
        op: ex.pendOp[t]!,
        a: ex.pendA[t]!,
        b: ex.pendB[t]!,
        c: ex.pendC[t]!,
        access: ex.pendAcc[t]!,
      };
      if (this.recording) {
        step.before = this.valueOf(step);
        step.where = ex.pendWhere[t];
        if (step.op === OP.awaitChange) step.detail = this.describeAwait(t);
      }
      ex.lastRan[t] = ex.steps.length;
      ex.steps.push(step);
      if (this.spinUsed) this.trackers[t]!.preExecute();
      // A read-modify-write that leaves its word as it was is a read (ops.ts rmwWidth): only the reduction cares.
      const rmw = this.trackFootprints && this.unchangedRmwIsRead ? rmwWidth(step.op) : 0;
      const old = rmw === 0 ? 0 : this.rmwValue(rmw, step.a);
      this.advance(ex, gens, t);
      if (rmw !== 0 && this.rmwValue(rmw, step.a) === old) {
        step.writing = step.access;
        step.access = readAccessOf(step.op, step.a);
      }
      if (this.recording) step.after = this.valueOf(step);
      if (ex.violation === null) {
        ex.running = t; // monitors' reads after the step are the step's
        for (const m of this.stepMonitors) {
          const msg = m.afterStep!(ex, step);
          if (msg !== null) {
            ex.violation = { invariant: m.name, message: msg, step: ex.steps.length };
            break;
          }
        }
        ex.running = -1;
      }
      if (ex.xn > 0) {
        step.access = withExtra(step.access, ex.xKeys, ex.xWrites, ex.xOrs, ex.xn);
        ex.xn = 0;
      }
      chooser.stepped?.(ex, step);
    }
    setSpinHandler(null);
    if (ex.violation === null && !abandoned) this.finish(ex);
    this.current = null;
    return { violation: ex.violation, steps: ex.steps, abandoned, unfair, truncated };
  }

  /** End-of-execution checks: monitors, then the scenario's own oracle (run sequentially). */
  private finish(ex: Execution): void {
    for (const m of this.monitors) {
      const msg = m.atEnd?.(ex) ?? null;
      if (msg !== null) {
        ex.violation = { invariant: m.name, message: msg, step: ex.steps.length };
        return;
      }
    }
    if (this.spec.check === undefined) return;
    const mem = this.gen.threadMem(this.machine, -1);
    (this.trackingHook as SequentialHook).ops = 0;
    mem.hook = this.trackingHook;
    const vm = new this.gen.ScenarioVm(this.machine, mem as never);
    resetLoopGuard(`scenario ${this.spec.name}'s final check`);
    this.seqTracker.reset();
    setSpinHandler(sequentialSpin(`scenario ${this.spec.name}'s final check`, this.seqTracker, (w) => this.wordName(w)));
    try {
      const msg = drain(this.spec.check(vm, this.setupData)) as unknown;
      // JavaScript files are not type-checked: a check returning true or nothing would read as a violation.
      if (msg !== null && typeof msg !== 'string')
        throw new KvmmuError(`scenario ${this.spec.name}'s check must return null (it holds) or a string saying what is wrong, not ${msg === undefined ? 'undefined' : typeof msg}`);
      if (msg !== null) ex.violation = { invariant: 'check', message: msg, step: ex.steps.length };
    } catch (e) {
      if (e instanceof KvmmuError) throw e;
      ex.violation = { invariant: 'check', message: `the final check crashed: ${(e as Error).message}`, step: ex.steps.length };
    } finally {
      setSpinHandler(null);
    }
  }

  private advance(ex: Execution, gens: Generator[], t: number): void {
    ex.running = t;
    resetLoopGuard(this.threadLabels[t]!);
    try {
      if (gens[t]!.next().done === true) ex.done[t] = true;
    } catch (e) {
      // Not the thread's failure but the scenario's: the checker cannot run it (the user's error).
      if (e instanceof LoopGuardError) throw e;
      if ((e as { isScenarioUsageError?: unknown } | null)?.isScenarioUsageError === true) throw new KvmmuError(`${this.threadLabels[t]}: ${(e as Error).message}`);
      if (e instanceof TypeError && FROZEN_WRITE.test(e.message))
        throw new KvmmuError(
          `${this.threadLabels[t]} changed the data its setup returned (${e.message}): every execution starts from that same data, so keep what a thread changes in the scenario's memory`,
        );
      ex.done[t] = true;
      ex.violation ??= {
        invariant: 'crash',
        message: `thread '${this.threadNames[t]}' failed: ${(e as Error).message}`,
        step: ex.steps.length,
      };
    }
    ex.running = -1;
  }

  /** The word a read-modify-write of width `w` (rmwWidth) targets at index `a`. */
  private rmwValue(w: number, a: number): bigint | number {
    return w === 32 ? this.metaI32[a]! : w === 64 ? this.metaU64[a]! : this.dataU64[a]!;
  }

  private valueOf(s: Step): bigint | number | undefined {
    return wordValue(this.machine.shm, s.op, s.a);
  }

  /**
   * No thread can run: a deadlock, or, when a thread is stuck in a spin loop (an iteration that changed nothing,
   * words no thread left can change), a livelock: that thread would spin for ever. The message shows each
   * thread's wait; a spinning thread's is its loop's cycle, the words it reads and the values it keeps reading.
   */
  private stuck(ex: Execution): Violation {
    let spinning = false;
    for (let t = 0; t < ex.nThreads; t++) if (!ex.done[t] && ex.pendOp[t] === OP.awaitChange && this.trackers[t]!.fromSpin) spinning = true;
    return spinning
      ? { invariant: 'livelock', message: `a thread spins for ever: ${this.describeWaits(ex)}`, step: ex.steps.length }
      : { invariant: 'deadlock', message: `no thread can run: ${this.describeWaits(ex)}`, step: ex.steps.length };
  }

  /** The words thread `t`'s awaitChange waits on, as `word = value` (the values it keeps reading). */
  private describeAwait(t: number): string {
    return describeWords(this.trackers[t]!, (w) => this.wordName(w));
  }

  /** A watched 32-bit word's name, as traces give it. */
  private wordName(w: { data: boolean; index: number }): string {
    return nameLocation(this.machine.shm.layout, this.machine.config, w.index * 4, w.data).name;
  }

  /** Threads that could run at the step bound but ran in none of the last half of the steps. */
  private starved(ex: Execution): number[] {
    const since = ex.steps.length - Math.floor(this.maxSteps / 2);
    const out: number[] = [];
    for (let t = 0; t < ex.nThreads; t++) if (ex.isEnabled(t) && ex.lastRan[t]! < since) out.push(t);
    return out;
  }

  /**
   * The period of the cycle the last quarter of the execution repeats (the same threads doing the same
   * operations on the same words, over and over), or 0 if it does not settle into one of at most 200 steps.
   */
  private cycle(ex: Execution): number {
    const steps = ex.steps;
    const n = steps.length;
    const tail = Math.max(1, this.maxSteps >> 2);
    const same = (x: Step, y: Step): boolean => x.thread === y.thread && x.op === y.op && x.a === y.a && x.b === y.b;
    for (let p = 1; p <= 200 && p + tail <= n; p++) {
      let ok = true;
      for (let k = n - 1; k >= n - tail && ok; k--) ok = same(steps[k]!, steps[k - p]!);
      if (ok) return p;
    }
    return 0;
  }

  /**
   * A livelock under a fair scheduler: at the step bound every thread that can run has run in the last half of
   * the execution, and the last quarter repeats a cycle of `period` steps, which the message shows.
   */
  private describeLivelock(ex: Execution, period: number): string {
    const steps = ex.steps;
    const n = steps.length;
    const shown = steps.slice(n - period);
    const rows = traceRows(this.machine.shm.layout, this.machine.config, shown).map((r) => `'${this.threadNames[r.thread]}' ${r.op} ${r.target}`);
    const running = [...new Set(shown.map((s) => `'${this.threadNames[s.thread]}'`))];
    return (
      `${n} steps and no end, on a fair schedule (every thread that could run did): ${running.join(' and ')} ${running.length === 1 ? 'repeats' : 'repeat'} ` +
      `a cycle of ${period} step${period === 1 ? '' : 's'}: ${rows.join('; ')}`
    );
  }

  /** What each unfinished thread waits for. */
  private describeWaits(ex: Execution): string {
    const parts: string[] = [];
    for (let t = 0; t < ex.nThreads; t++) {
      if (ex.done[t]) continue;
      const op = ex.pendOp[t];
      if (op === OP.awaitChange) {
        parts.push(
          this.trackers[t]!.fromSpin
            ? `'${this.threadNames[t]}' repeats a loop that reads ${this.describeAwait(t)} and changes nothing (the cycle), and no thread left can change those words`
            : `'${this.threadNames[t]}' waits for a change of ${this.describeAwait(t)}, which no thread left can make`,
        );
        continue;
      }
      const what =
        op === OP.lock || op === OP.writeLock
          ? 'waits for a lock'
          : op === OP.readLock
            ? 'waits to read-lock'
            : op === OP.writeLockWait
              ? 'waits for the readers of a lock it claimed'
              : op === OP.waitWhile32
                ? 'waits for a word to change'
                : 'is runnable';
      parts.push(`'${this.threadNames[t]}' ${what} (${nameLocation(this.machine.shm.layout, this.machine.config, ex.pendA[t]! * 4, false).name})`);
    }
    return parts.join('; ');
  }
}

/**
 * A thread's name goes into trace headers, deadlock messages and the browser view as it is: it must be
 * non-empty and printable (no newline, no control character, so no terminal escape code).
 */
export function checkThreadName(scenario: string, name: string): void {
  if (name.trim() === '') throw new KvmmuError(`scenario ${scenario} has a thread with an empty name: name each thread (its column in traces)`);
  // C0 and C1 control characters (ESC starts a terminal escape code), and the Unicode line and paragraph separators.
  if (/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(name))
    throw new KvmmuError(`scenario ${scenario}'s thread ${JSON.stringify(name)}: a thread name must be printable (no newline, tab or other control character)`);
}

/** Chunk size for tracking written memory between executions. */
const CHUNK = 4096;
const DATA_REGIONS = new Set(['host.frameData', 'host.swapData', 'scenario.data']);

/**
 * Operations a sequential phase (a scenario's setup, its final check) may run: the same kind of bound as an
 * execution's step bound, larger because a setup builds the machine (a shadow-mode setup's guest page tables
 * take about 18,600 operations). About a second of operations here.
 */
export const SEQUENTIAL_MAX_OPS = 1_000_000;

interface SequentialHook extends AccessHook {
  ops: number;
}

/**
 * A hook for a sequential phase (`what` names it in errors): every operation proceeds at once (drain() resumes
 * through each yield). No other thread runs there, so an operation that would block (a lock held, a
 * waitWhile32 on the value the word holds) could never go on, and a phase that runs more than
 * SEQUENTIAL_MAX_OPS operations is spinning on memory nothing else will change: both end the check with an error.
 */
function sequentialHook(what: string, i32: Int32Array, onOp: ((op: number, acc: Access) => void) | null, spin: SpinTracker): SequentialHook {
  const hook: SequentialHook = {
    ops: 0,
    awaitSet(words: readonly number[], seen: readonly number[]) {
      spin.setHandAwait(words, seen);
    },
    before(op: number, a: number, b: number, c: number) {
      loopGuardStep();
      // It runs at once, with nothing else between: the spin record sees it before and after.
      spin.op(op, a);
      spin.preExecute();
      if (op === OP.awaitChange) {
        if (spin.awaitEnabled()) return;
        throw new KvmmuError(`${what} waits for a change of words it runs alone with (${spin.awaitWords().map((w) => `word ${w.index} = ${w.value}`).join(', ')}): nothing else can change them`);
      }
      if (++hook.ops > SEQUENTIAL_MAX_OPS)
        throw new KvmmuError(
          `${what} ran ${SEQUENTIAL_MAX_OPS.toLocaleString('en-US')} memory operations without finishing: it runs alone, so a loop waiting for shared memory to change never ends (wait for other threads in a thread, not in setup or check)`,
        );
      if (!isEnabled(i32, op, a, b))
        throw new KvmmuError(
          `${what} ${op === OP.waitWhile32 ? `waits for word ${a} to change from ${b}` : 'waits for a lock that is held'}: it runs alone, so nothing else can change it`,
        );
      onOp?.(op, accessOf(op, a, b, c));
    },
    note() {},
  };
  return hook;
}

/** A tracker's await set as `name = value`, a 64-bit word's two halves once. */
function describeWords(spin: SpinTracker, name: (w: { data: boolean; index: number }) => string): string {
  const words: string[] = [];
  const seen = new Set<string>();
  for (const w of spin.awaitWords()) {
    const named = name(w);
    if (seen.has(named)) continue;
    seen.add(named);
    words.push(`${named} = ${w.value}`);
  }
  return words.join(', ');
}

/** The spin-loop handler of a sequential phase: a loop iteration that changed nothing there would repeat for ever. */
function sequentialSpin(what: string, spin: SpinTracker, name: (w: { data: boolean; index: number }) => string): SpinHandler {
  return {
    tick(loop) {
      if (!spin.tick(loop)) return false;
      throw new KvmmuError(
        `${what} spins for ever: an iteration of its loop read ${describeWords(spin, name)} and changed nothing, and it runs alone, so nothing else can change them (wait for other threads in a thread, not in setup or check)`,
      );
    },
    end(loop) {
      spin.end(loop);
    },
  };
}

/** V8's messages for a write to a frozen object (in strict code; sloppy code's writes are dropped silently). */
const FROZEN_WRITE = /read only property|not extensible|Cannot delete property/;

/** Freeze `v` and every plain object and array it holds (class instances, such as kvmmu's own objects, stay as they are). */
function freezePlain<T>(v: T): T {
  if (v === null || typeof v !== 'object' || Object.isFrozen(v)) return v;
  const proto = Object.getPrototypeOf(v) as unknown;
  if (!Array.isArray(v) && proto !== Object.prototype && proto !== null) return v;
  Object.freeze(v);
  for (const x of Object.values(v)) freezePlain(x);
  return v;
}

function asGenerator(v: unknown): Generator {
  if (v !== null && typeof v === 'object' && typeof (v as Generator).next === 'function') return v as Generator;
  // A thread body that never touches shared memory was not compiled to a generator.
  return (function* () {})();
}

/** The value of the word an operation targets (32/64-bit and data-word operations), for traces. */
export function wordValue(shm: { meta: SharedArrayBuffer; data: SharedArrayBuffer }, op: number, a: number): bigint | number | undefined {
  switch (op) {
    case OP.load64:
    case OP.store64:
    case OP.cmpxchg64:
    case OP.xchg64:
      return new BigUint64Array(shm.meta)[a];
    case OP.loadData64:
    case OP.storeData64:
    case OP.cmpxchgData64:
      return new BigUint64Array(shm.data)[a];
    case OP.lock:
    case OP.unlock:
      return undefined;
    default:
      return (op >= OP.load32 && op <= OP.waitWhile32) || op === OP.or32 ? new Int32Array(shm.meta)[a] : undefined;
  }
}

/**
 * Every execution starts from the same snapshot, and the explorer replays a
 * schedule's prefix expecting the same operations; a scenario that keeps state
 * between executions (a module-level variable, a clock, Math.random) breaks
 * that, and what was explored means nothing. The user's error, not kvmmu's.
 */
export function notRepeatable(scenario: string, what: string): KvmmuError {
  return new KvmmuError(
    `scenario ${scenario} does not repeat itself: replaying the same schedule, ${what}. ` +
      'A scenario must not keep state between executions (module-level variables, clocks, Math.random)',
  );
}

/** Run a generator-form function's result to completion, without scheduling. */
export function drain(v: unknown): unknown {
  if (v === null || typeof v !== 'object' || typeof (v as Generator).next !== 'function') return v;
  const g = v as Generator;
  let r = g.next();
  while (r.done !== true) r = g.next();
  return r.value;
}
