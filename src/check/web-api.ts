// For the browser view: what each thread would do next after a schedule prefix ("play the scheduler"), and which state objects each step touched.

import { Engine, type Chooser, type Execution, type GenScenarioModule, type Step } from './engine';
import { builtinMonitors } from './invariants';
import { accessOf } from './ops';
import { OP } from '../shm/access';
import { nameLocation, regionAt, traceRows } from './trace';
import type { Layout } from '../shm/layout';
import type { VmConfig } from '../kvm/config';
import { VCPU_WORDS } from '../kvm/kvm';
import { SP_WORDS } from '../kvm/mmu-page';
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

// ---- what each step touched (the browser view's causal highlighting) ----

/** One state object a step touched. */
export interface Touch {
  /**
   * The object, as the browser view's state panel names it: `spte:SP:INDEX`, `frame:PFN` (its words and its
   * bytes), `bitmap:FIRST-LAST` (the dirty-bitmap word for gfns FIRST..LAST), `lock:NAME`, `map:GFN` (the host
   * mapping), `vcpu:N`, `sp:N` (a shadow page's header), `word:BYTE` (a raw scenario word), `ghost:KEY` (an
   * invariant monitor's own state), else `loc:NAME` (the location's trace name).
   */
  readonly id: string;
  /** The step read it (a load, the old value of a read-modify-write, a lock taken, a monitor's look). */
  readonly read: boolean;
  /** The step wrote it. */
  readonly write: boolean;
  /** Its value changed (a write whose value before and after the step differ, or one whose values are not recorded). */
  readonly changed: boolean;
  /** The thread's own access (its operation, or a plain store it declared); false: an invariant monitor's read or its ghost state. */
  readonly thread: boolean;
}

function gfnOfPage(config: VmConfig | null, hvpn: number): number | null {
  if (config === null) return null;
  let base = 0;
  for (const s of config.slots) {
    if (hvpn < base + s.npages) return s.baseGfn + hvpn - base;
    base += s.npages;
  }
  return null;
}

/** The object holding meta byte offset `off` (or data byte offset `off` when `data`). */
export function objectAt(layout: Layout, config: VmConfig | null, off: number, data: boolean): string {
  const at = regionAt(layout, off, data);
  if (at !== null) {
    const { name, rel } = at;
    switch (name) {
      case 'kvm.spt': {
        const i = Math.floor(rel / 8);
        return `spte:${Math.floor(i / 512)}:${i % 512}`;
      }
      case 'kvm.vcpus':
        return `vcpu:${Math.floor(rel / 4 / VCPU_WORDS)}`;
      case 'kvm.mmuLock':
        return 'lock:mmu_lock';
      case 'kvm.tdpPagesLock':
        return 'lock:tdp_mmu_pages_lock';
      case 'host.lock':
        return 'lock:host mm lock';
      case 'host.freeLock':
        return 'lock:free-frame lock';
      case 'kvm.bitmap': {
        const w = Math.floor(rel / 4);
        let first = 0;
        for (const s of config?.slots ?? []) {
          const words = Math.ceil(s.npages / 32);
          if (w < first + words) {
            const g = s.baseGfn + (w - first) * 32;
            return `bitmap:${g}-${Math.min(g + 31, s.baseGfn + s.npages - 1)}`;
          }
          first += words;
        }
        return `loc:dirty bitmap word ${w}`;
      }
      case 'kvm.spHeader':
        return `sp:${Math.floor(rel / 4 / SP_WORDS)}`;
      case 'kvm.spGfns':
        return `sp:${Math.floor(rel / 4 / 512)}`;
      case 'host.frames':
        return `frame:${Math.floor(rel / 4 / 4)}`;
      case 'host.frameData':
        return `frame:${Math.floor(rel / 4096)}`;
      case 'host.map': {
        const g = gfnOfPage(config, Math.floor(rel / 4));
        return g === null ? `loc:host mapping ${rel / 4}` : `map:${g}`;
      }
      case 'scenario.words':
        return `word:${rel - (rel % 4)}`;
      default:
        return `loc:${nameLocation(layout, config, off, data).name}`;
    }
  }
  return `loc:${nameLocation(layout, config, off, data).name}`;
}

/** Operations that write without reading what they overwrite. */
const PURE_WRITES = new Set<number>([OP.store32, OP.store64, OP.storeData64, OP.writeData, OP.or32, OP.unlock, OP.readUnlock, OP.writeUnlock]);

/** A location key (ops.ts) as a byte offset: an even key is a meta Int32 word, an odd one a 4 KiB data page. */
function offsetOfKey(key: number): { off: number; data: boolean } {
  return key % 2 === 0 ? { off: key * 2, data: false } : { off: ((key - 1) / 2) * 4096, data: true };
}

/**
 * The objects each recorded step touched: its operation's locations and the plain stores it declared (the
 * thread's), and what invariant monitors read or kept during it (not the thread's). A data operation touches the
 * frame of each 4 KiB page it covers.
 */
export function touchesOf(layout: Layout, config: VmConfig | null, steps: readonly Step[]): Touch[][] {
  return steps.map((s) => {
    const own = accessOf(s.op, s.a, s.b, s.c);
    const valueChanged = s.before === undefined || s.after === undefined || s.before !== s.after;
    const out = new Map<string, { read: boolean; write: boolean; changed: boolean; thread: boolean }>();
    const add = (id: string, read: boolean, write: boolean, changed: boolean, thread: boolean): void => {
      const t = out.get(id);
      if (t === undefined) out.set(id, { read, write, changed, thread });
      else out.set(id, { read: t.read || read, write: t.write || write, changed: t.changed || changed, thread: t.thread || thread });
    };
    const ownKeys = new Set(own.keys);
    own.keys.forEach((key, i) => {
      const w = own.writes[i]!;
      const { off, data } = offsetOfKey(key);
      add(objectAt(layout, config, off, data), !w || !PURE_WRITES.has(s.op), w, w && valueChanged, true);
    });
    s.access.keys.forEach((key, i) => {
      if (ownKeys.has(key)) return;
      const w = s.access.writes[i]!;
      if (key < 0) {
        add(`ghost:${-key}`, !w, w, w, false);
        return;
      }
      const { off, data } = offsetOfKey(key);
      // A write beyond the operation is a plain store the thread declared; a read is a monitor's.
      add(objectAt(layout, config, off, data), !w, w, w, w);
    });
    return [...out].map(([id, t]) => ({ id, ...t }));
  });
}
