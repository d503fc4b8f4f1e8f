// Inspecting executions step by step: the machine state that matters after each step, and running a schedule prefix (for the browser view and "play the scheduler").

import { RW_LOCKED, RW_WAITING } from '../shm/access';
import { GUARDS, type GuardName, type IndirectFastPath, type MmuMode, type PageMarking } from '../kvm/config';
import { MODE_NAMES, KVM_REQ_TLB_FLUSH, VCPU_MODE, VCPU_REQUESTS, SLOT_DIRTY_LOG } from '../kvm/kvm';
import { FRAME_DIRTY, FRAME_FREE, FRAME_KSM, MAP_PRESENT, MAP_WRITABLE, mapPfn } from '../host/host';
import {
  SPTE_ACCESSED_MASK,
  SPTE_DIRTY_MASK,
  SPTE_HOST_WRITABLE,
  SPTE_MMU_WRITABLE,
  SPTE_USER_MASK,
  SPTE_WRITABLE_MASK,
  SPTE_PRESENT_MASK,
  FROZEN_SPTE,
  formatSpte,
  spteToPfn,
} from '../x86/spte';
import { readTlb } from '../vcpu/vcpu';
import { ROLE_INVALID, ROLE_SMM, SP_ROLE, SP_ROOT_COUNT, SP_STATE } from '../kvm/mmu-page';
import { ROOT_ZAP_OWED, ROOT_ZAP_TAKEN } from '../kvm/tdp-mmu';
import { ALL_GUARDS } from '../kvm/config';
import { Engine, type Chooser, type Execution, type GenScenarioModule } from './engine';
import { countPreemptions } from './explore';
import { builtinMonitors, Observer } from './invariants';
import { traceRows, type TraceRow } from './trace';
import { touchesOf, type Touch } from './web-api';
import type { ScenarioContext, ScenarioSpec } from './gen/scenario';

export interface SpteView {
  readonly sptep: number;
  readonly sp: number;
  readonly index: number;
  readonly gfn: number;
  readonly pfn: number;
  readonly text: string;
  readonly bits: { P: boolean; W: boolean; U: boolean; A: boolean; D: boolean; HOST_WRITABLE: boolean; MMU_WRITABLE: boolean };
}

export interface VcpuView {
  readonly index: number;
  readonly mode: string;
  readonly flushPending: boolean;
  readonly tlb: { vpn: number; gfn: number; pfn: number; writable: boolean; dirty: boolean }[];
}

export interface FrameView {
  readonly pfn: number;
  readonly refcount: number;
  readonly dirty: boolean;
  readonly ksm: boolean;
}

/** The TDP MMU's own state (mode tdp). */
export interface TdpView {
  /** The root list: each root's page, whether it is SMM's, invalid, its refcount, and its zap (owed: invalidated, not yet zapped). */
  readonly roots: { sp: number; smm: boolean; invalid: boolean; refcount: number; zap: 'none' | 'owed' | 'taken' }[];
  /** Entries frozen (FROZEN_SPTE) in tables in use: someone owns them for a multi-step change. */
  readonly frozen: { sp: number; index: number }[];
  /**
   * RCU over the page tables: the epoch, the grace-period sequence (odd: one running), counted readers (host
   * threads) inside per slot, per vCPU (QSBR readers: their read sections show nowhere) whether it is online
   * and the running grace period still waits for it, and tables waiting for a grace period.
   */
  readonly rcu: { epoch: number; gracePeriod: number; readers: number[]; qsbr: { online: boolean; waitedFor: boolean }[]; waiting: number[] };
  /** Readers inside kvm->srcu (the memslots' SRCU), per slot. */
  readonly srcuReaders: number[];
}

export interface MachineState {
  /** Present leaf SPTEs. */
  readonly sptes: SpteView[];
  readonly vcpus: VcpuView[];
  /** gfns whose dirty-bitmap bit is set (slots that log dirty pages). */
  readonly dirty: number[];
  readonly dirtyLogging: boolean;
  /** Host mapping of each gfn that is mapped. */
  readonly mappings: { gfn: number; pfn: number; writable: boolean }[];
  /** Frames in use. */
  readonly frames: FrameView[];
  readonly mmuLock: string | null;
  readonly hostLock: string | null;
  /** For scenarios without a VM: their first 16 words. */
  readonly words: number[];
  /** TDP mode: roots, frozen entries, RCU; else null. */
  readonly tdp: TdpView | null;
}

function holder(o: Observer, word: number, names: readonly string[], rw = false): string | null {
  const name = (h: number): string => names[h] ?? (h === -1 ? 'setup' : `thread ${h}`);
  if (rw) {
    // The TDP MMU's mmu_lock is a reader-writer lock: its readers are counted, not named.
    const w = o.kvm.mem.rwWriter(word);
    const readers = o.kvm.mem.rwReaders(word);
    if (w.state === RW_LOCKED) return `${name(w.holder)} (write)`;
    const r = readers > 0 ? `${readers} reader${readers === 1 ? '' : 's'}` : null;
    if (w.state === RW_WAITING) return `${r ?? 'no reader'}; ${name(w.holder)} waits to write`;
    return r;
  }
  if (!o.kvm.mem.isLocked(word)) return null;
  return name(o.kvm.mem.lockHolder(word));
}

/** The state that matters, read plainly from the machine between steps. */
export function snapshotState(engine: Engine, observer: Observer | null): MachineState {
  if (observer === null) {
    const r = engine.machine.shm.layout.regions['scenario.words'];
    const i32 = new Int32Array(engine.machine.shm.meta);
    const words = r === undefined ? [] : Array.from(i32.subarray(r.off / 4, r.off / 4 + Math.min(16, r.bytes / 4)));
    return { sptes: [], vcpus: [], dirty: [], dirtyLogging: false, mappings: [], frames: [], mmuLock: null, hostLock: null, words, tdp: null };
  }
  const k = observer.kvm;
  const i32 = k.mem.i32;
  const sptes: SpteView[] = observer.leafSptes(undefined, false).map((l) => ({
    sptep: l.sptep,
    sp: l.sp,
    index: l.idx,
    gfn: l.gfn,
    pfn: spteToPfn(l.spte),
    text: formatSpte(l.spte),
    bits: {
      P: (l.spte & SPTE_PRESENT_MASK) !== 0n,
      W: (l.spte & SPTE_WRITABLE_MASK) !== 0n,
      U: (l.spte & SPTE_USER_MASK) !== 0n,
      A: (l.spte & SPTE_ACCESSED_MASK) !== 0n,
      D: (l.spte & SPTE_DIRTY_MASK) !== 0n,
      HOST_WRITABLE: (l.spte & SPTE_HOST_WRITABLE) !== 0n,
      MMU_WRITABLE: (l.spte & SPTE_MMU_WRITABLE) !== 0n,
    },
  }));
  const vcpus: VcpuView[] = [];
  for (let v = 0; v < k.config.vcpus; v++) {
    vcpus.push({
      index: v,
      mode: MODE_NAMES[i32[k.vcpuWord(v, VCPU_MODE)]! & 3]!,
      flushPending: (i32[k.vcpuWord(v, VCPU_REQUESTS)]! & KVM_REQ_TLB_FLUSH) !== 0,
      tlb: readTlb(k, v).map((e) => ({ vpn: e.vpn, gfn: e.gfn, pfn: e.pfn, writable: (e.acc & 2) !== 0, dirty: e.dirty })),
    });
  }
  const dirty: number[] = [];
  let dirtyLogging = false;
  for (let s = 0; s < k.nSlots; s++) {
    if ((i32[k.slotFlagsWord(s)]! & SLOT_DIRTY_LOG) !== 0) dirtyLogging = true;
    for (let p = 0; p < k.slotPages[s]!; p++) if ((i32[k.slotBitmap[s]! + (p >>> 5)]! & (1 << (p & 31))) !== 0) dirty.push(k.slotGfn[s]! + p);
  }
  const mappings: MachineState['mappings'] = [];
  const used = new Set<number>();
  for (let s = 0; s < k.nSlots; s++) {
    for (let p = 0; p < k.slotPages[s]!; p++) {
      const w = k.host.peekMapping(k.slotHvpn[s]! + p);
      if ((w & MAP_PRESENT) === 0) continue;
      mappings.push({ gfn: k.slotGfn[s]! + p, pfn: mapPfn(w), writable: (w & MAP_WRITABLE) !== 0 });
      used.add(mapPfn(w));
    }
  }
  const frames: FrameView[] = [];
  for (let pfn = 0; pfn < k.config.hostFrames; pfn++) {
    const flags = k.host.peekFrameFlags(pfn);
    if ((flags & FRAME_FREE) !== 0 && !used.has(pfn)) continue;
    frames.push({ pfn, refcount: k.host.peekRefcount(pfn), dirty: (flags & FRAME_DIRTY) !== 0, ksm: (flags & FRAME_KSM) !== 0 });
  }
  return {
    sptes,
    vcpus,
    dirty,
    dirtyLogging,
    mappings,
    frames,
    mmuLock: holder(observer, k.mmuLock, engine.threadNames, k.isTdp),
    hostLock: holder(observer, k.host.lockWord, engine.threadNames),
    words: [],
    tdp: k.isTdp ? tdpState(observer) : null,
  };
}

/** The TDP MMU's roots, frozen entries and RCU, read plainly. */
function tdpState(o: Observer): TdpView {
  const k = o.kvm;
  const i32 = k.mem.i32;
  const roots: TdpView['roots'] = [];
  for (let i = 0; i < k.tdp.nRootSlots; i++) {
    const sp = k.tdp.peekRootAt(i);
    if (sp < 0) continue;
    const role = i32[k.pages.hdr(sp, SP_ROLE)]!;
    const zap = k.tdp.peekRootZap(i);
    roots.push({
      sp,
      smm: (role & ROLE_SMM) !== 0,
      invalid: (role & ROLE_INVALID) !== 0,
      refcount: i32[k.pages.hdr(sp, SP_ROOT_COUNT)]!,
      zap: zap === ROOT_ZAP_OWED ? 'owed' : zap === ROOT_ZAP_TAKEN ? 'taken' : 'none',
    });
  }
  const frozen: TdpView['frozen'] = [];
  for (let sp = 0; sp < k.pages.nSp; sp++) {
    if (i32[k.pages.hdr(sp, SP_STATE)] !== 1) continue;
    for (let e = 0; e < 512; e++) if (k.mem.u64[k.pages.sptep(sp, e)] === FROZEN_SPTE) frozen.push({ sp, index: e });
  }
  const r = k.tdp.rcu.peekState();
  return {
    roots,
    frozen,
    rcu: { ...r, waiting: k.tdp.rcu.peekQueued() },
    srcuReaders: k.srcu.peekState().readers,
  };
}

export interface PrefixResult {
  readonly threads: string[];
  /** One row per step run. */
  readonly rows: TraceRow[];
  /** The state before any step, then after each step. */
  readonly states: MachineState[];
  /** Threads that can run next (empty when finished or deadlocked). */
  readonly enabled: number[];
  readonly finished: boolean;
  readonly preemptions: number;
  readonly violation: { invariant: string; statement: string; message: string; step: number } | null;
  /** For each step, the state objects it touched (web-api.ts, Touch). */
  readonly touches: Touch[][];
}

/** Runs the given schedule, then stops (the threads not finished stay paused). */
class PrefixChooser implements Chooser {
  readonly enabledAt: number[] = [];
  constructor(
    private readonly schedule: readonly number[],
    private readonly onState: (ex: Execution) => void,
  ) {}
  choose(ex: Execution): number {
    const k = ex.steps.length;
    this.onState(ex);
    this.enabledAt.push(ex.enabledMask());
    if (k >= this.schedule.length) return -1;
    const t = this.schedule[k]!;
    if (t < 0 || t >= ex.nThreads || !ex.isEnabled(t)) throw new RangeError(`step ${k + 1}: thread ${t} cannot run there`);
    return t;
  }
}

export function contextOf(
  spec: ScenarioSpec,
  o: { mode?: MmuMode; guardsOff?: readonly GuardName[]; indirectFastPath?: IndirectFastPath; pageMarking?: PageMarking },
): ScenarioContext {
  let guards = ALL_GUARDS;
  for (const g of o.guardsOff ?? []) guards &= ~GUARDS[g];
  return { mode: o.mode ?? spec.modes?.[0] ?? 'direct', guards, indirectFastPath: o.indirectFastPath ?? 'pin', pageMarking: o.pageMarking ?? 'spte' };
}

/**
 * Run `schedule` (thread indices) on the scenario and report every step with
 * the state after it, what can run next, and the first invariant broken.
 * A schedule shorter than the execution just stops early: this is how a user
 * plays the scheduler one step at a time. Throws RangeError if a step names a
 * thread that cannot run.
 */
export function runPrefix(gen: GenScenarioModule, spec: ScenarioSpec, ctx: ScenarioContext, schedule: readonly number[]): PrefixResult {
  const engine = new Engine(gen, spec, ctx, { monitorsFor: builtinMonitors });
  const observer = engine.machine.config === null ? null : new Observer(engine.machine);
  const states: MachineState[] = [];
  engine.recording = true;
  const chooser = new PrefixChooser(schedule, () => states.push(snapshotState(engine, observer)));
  const r = engine.execute(chooser);
  if (states.length === r.steps.length) states.push(snapshotState(engine, observer));
  const finished = !r.abandoned;
  const probe = finished ? [] : bitsOf(chooser.enabledAt[chooser.enabledAt.length - 1] ?? 0);
  const v = r.violation;
  return {
    threads: engine.threadNames,
    rows: traceRows(engine.machine.shm.layout, engine.machine.config, r.steps),
    touches: touchesOf(engine.machine.shm.layout, engine.machine.config, r.steps),
    states,
    enabled: v !== null ? [] : probe,
    finished: finished || v !== null,
    preemptions: countPreemptions(r.steps.map((s) => s.thread), chooser.enabledAt),
    violation:
      v === null
        ? null
        : { invariant: v.invariant, statement: engine.monitors.find((m) => m.name === v.invariant)?.statement ?? '', message: v.message, step: v.step },
  };
}

function bitsOf(m: number): number[] {
  const out: number[] = [];
  for (let t = 0; m !== 0; t++, m >>>= 1) if ((m & 1) !== 0) out.push(t);
  return out;
}
