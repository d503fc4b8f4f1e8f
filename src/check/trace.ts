// Counterexample traces: naming the word each step touched, formatting values, the N-column table, and schedule strings that --replay takes back.

import { LOCK_WORDS, OP_NAMES, OP } from '../shm/access';
import { KvmmuError } from '../shm/errors';
import type { Layout } from '../shm/layout';
import { GUARD_NAMES, INDIRECT_FAST_PATH, MMU_MODES, PAGE_MARKING, type GuardName, type IndirectFastPath, type MmuMode, type PageMarking, type VmConfig } from '../kvm/config';
import { MODE_NAMES, VCPU_WORDS } from '../kvm/kvm';
import { SP_WORDS } from '../kvm/mmu-page';
import { rcuReaderSlots } from '../kvm/tdp-mmu';
import { GPC_VALID } from '../kvm/pfncache';
import { rcuWordName } from '../shm/rcu';
import { MAP_PRESENT, MAP_WRITABLE, mapPfn } from '../host/host';
import { formatSpte } from '../x86/spte';
import { encodeSchedule } from './schedule';
import type { Step } from './engine';

export interface TraceRow {
  /** 1-based step number. */
  readonly step: number;
  readonly thread: number;
  readonly op: string;
  /** The word or range touched, named. */
  readonly target: string;
  /** Calling kvmmu functions, innermost first. */
  readonly where: string;
  readonly before: string | null;
  readonly after: string | null;
}

const VCPU_FIELDS = ['mode', 'requests', 'root', 'cr3', 'cpu', 'tlb generation'];
const MMU_FIELDS = [
  'mmu_invalidate_seq',
  'mmu_invalidate_in_progress',
  'invalidate range start',
  'invalidate range end',
  'LRU head',
  'LRU tail',
  'free shadow pages',
  'mn_active_invalidate_count',
];
const SP_FIELDS = ['role', 'gfn', 'state', 'hash next', 'parents', 'root count', 'generation', 'LRU prev', 'LRU next', 'write-flooding count'];
const FRAME_FIELDS = ['refcount', 'flags', 'last user', 'spare'];

interface Named {
  readonly name: string;
  readonly kind: 'spte' | 'mode' | 'map' | 'word' | 'bytes';
}

/** The region holding meta byte offset `off` (or data byte offset when `data`), and the offset within it. */
export function regionAt(layout: Layout, off: number, data: boolean): { name: string; rel: number } | null {
  for (const [name, r] of Object.entries(layout.regions)) {
    const inData = name === 'host.frameData' || name === 'host.swapData' || name === 'scenario.data';
    if (inData === data && off >= r.off && off < r.off + r.bytes) return { name, rel: off - r.off };
  }
  return null;
}

/** Name the location of meta byte offset `off` (or data byte offset when `data`). */
export function nameLocation(layout: Layout, config: VmConfig | null, off: number, data: boolean): Named {
  const at = regionAt(layout, off, data);
  if (at !== null) {
    const { name, rel } = at;
    switch (name) {
      case 'kvm.spt': {
        const i = rel / 8;
        return { name: `spte (sp ${Math.floor(i / 512)}, #${i % 512})`, kind: 'spte' };
      }
      case 'kvm.vcpus': {
        const w = rel / 4;
        const f = w % VCPU_WORDS;
        return { name: `vCPU ${Math.floor(w / VCPU_WORDS)} ${VCPU_FIELDS[f] ?? `word ${f}`}`, kind: f === 0 ? 'mode' : 'word' };
      }
      case 'kvm.mmuLock':
        return { name: 'mmu_lock', kind: 'word' };
      case 'kvm.tdpPagesLock':
        return { name: 'tdp_mmu_pages_lock', kind: 'word' };
      case 'kvm.srcu':
        return { name: `kvm->srcu: ${config === null ? `word ${rel / 4}` : rcuWordName(rel / 4, 1, config.vcpus + 2).replace(/^rcu /, '')}`, kind: 'word' };
      case 'kvm.gpc':
        return { name: rel / 4 < GPC_VALID ? 'gpc lock' : ['gpc valid', 'gpc gfn', 'gpc pfn'][rel / 4 - GPC_VALID] ?? 'gpc', kind: 'word' };
      case 'kvm.tdpRoots':
        return { name: rel % 8 === 0 ? `TDP root slot ${rel >> 3}` : `TDP root slot ${rel >> 3} zap state`, kind: 'word' };
      case 'kvm.rcu':
        return { name: config === null ? `rcu word ${rel / 4}` : rcuWordName(rel / 4, config.spPages, rcuReaderSlots(config), config.vcpus).replace('QSBR reader', 'vCPU'), kind: 'word' };
      case 'host.lock':
        return { name: 'host mm lock', kind: 'word' };
      case 'host.freeLock':
        return { name: 'free-frame lock', kind: 'word' };
      case 'kvm.mmu':
        return { name: MMU_FIELDS[rel / 4] ?? `mmu word ${rel / 4}`, kind: 'word' };
      case 'kvm.slots':
        return { name: `memslot ${Math.floor(rel / 16)} flags`, kind: 'word' };
      case 'kvm.bitmap':
        return { name: `dirty bitmap word ${rel / 4}`, kind: 'word' };
      case 'kvm.spHeader': {
        const w = rel / 4;
        const f = w % SP_WORDS;
        return { name: `shadow page ${Math.floor(w / SP_WORDS)} ${SP_FIELDS[f] ?? 'present bitmap'}`, kind: 'word' };
      }
      case 'kvm.spGfns': {
        const w = rel / 4;
        return { name: `shadow page ${Math.floor(w / 512)} gfn of #${w % 512}`, kind: 'word' };
      }
      case 'host.frames': {
        const w = rel / 4;
        return { name: `frame 0x${Math.floor(w / 4).toString(16)} ${FRAME_FIELDS[w % 4]}`, kind: 'word' };
      }
      case 'host.map':
        return { name: `host mapping of ${gfnName(config, rel / 4)}`, kind: 'map' };
      case 'host.swapOf':
        return { name: `swap slot of ${gfnName(config, rel / 4)}`, kind: 'word' };
      case 'host.free':
        return { name: rel === 0 ? 'free-frame stack depth' : `free-frame stack[${rel / 4 - 1}]`, kind: 'word' };
      case 'host.frameData':
        return { name: `frame 0x${Math.floor(rel / 4096).toString(16)} bytes +0x${(rel % 4096).toString(16)}`, kind: 'bytes' };
      case 'host.swapData':
        return { name: `swap slot ${Math.floor(rel / 4096)} bytes`, kind: 'bytes' };
      case 'scenario.words':
        // As the scenario addresses it: vm.word(byte offset).
        return { name: `word(${rel})`, kind: 'word' };
      default:
        return { name: `${name}+${rel}`, kind: 'word' };
    }
  }
  return { name: `${data ? 'data' : 'meta'}+${off}`, kind: 'word' };
}

function gfnName(config: VmConfig | null, hvpn: number): string {
  if (config === null) return `page ${hvpn}`;
  let base = 0;
  for (const s of config.slots) {
    if (hvpn < base + s.npages) return `gfn 0x${(s.baseGfn + hvpn - base).toString(16)}`;
    base += s.npages;
  }
  return `page ${hvpn}`;
}

const DATA_OPS = new Set<number>([OP.loadData64, OP.storeData64, OP.cmpxchgData64, OP.copyData, OP.readData, OP.writeData, OP.compareData]);
const WIDE = new Set<number>([OP.load64, OP.store64, OP.cmpxchg64, OP.xchg64]);

function formatValue(kind: Named['kind'], v: bigint | number | undefined): string | null {
  if (v === undefined) return null;
  if (kind === 'spte' && typeof v === 'bigint') return formatSpte(v);
  if (kind === 'mode' && typeof v === 'number') return MODE_NAMES[v & 3]!.replace('_MODE', '').replace('_GUEST', ' GUEST');
  if (kind === 'map' && typeof v === 'number')
    return (v & MAP_PRESENT) === 0 ? 'not present' : `pfn 0x${(mapPfn(v)).toString(16)}${(v & MAP_WRITABLE) !== 0 ? ' W' : ' RO'}`;
  return typeof v === 'bigint' ? `0x${v.toString(16)}` : String(v);
}

/** Describe recorded steps as table rows. */
export function traceRows(layout: Layout, config: VmConfig | null, steps: readonly Step[]): TraceRow[] {
  return steps.map((s, k) => {
    const data = DATA_OPS.has(s.op);
    const off = data ? (s.op === OP.loadData64 || s.op === OP.storeData64 || s.op === OP.cmpxchgData64 ? s.a * 8 : s.a) : WIDE.has(s.op) ? s.a * 8 : s.a * 4;
    const named = nameLocation(layout, config, off, data);
    let target = named.name;
    if (s.op === OP.copyData) target = `${named.name} ← ${nameLocation(layout, config, s.c, true).name}`;
    if (s.op === OP.compareData) target = `${named.name} vs ${nameLocation(layout, config, s.c, true).name}`;
    if (s.op === OP.waitWhile32) target = `${named.name} (until it is no longer ${formatValue(named.kind, s.b)})`;
    // A spin loop's iteration that changed nothing, or a hand-written awaitChange32: the words and the values waited out.
    if (s.op === OP.awaitChange) target = s.detail !== undefined ? `until one changes: ${s.detail}` : 'until a word it read changes';
    return {
      step: k + 1,
      thread: s.thread,
      op: OP_NAMES[s.op] ?? `op${s.op}`,
      target,
      where: s.where ?? '',
      before: formatValue(named.kind, s.before),
      after: formatValue(named.kind, s.after),
    };
  });
}

function cell(r: TraceRow): string {
  const change = r.before === null ? '' : r.after === null || r.after === r.before ? ` = ${r.before}` : `: ${r.before} → ${r.after}`;
  return `${r.where !== '' ? `${r.where.split(' ← ')[0]}: ` : ''}${r.op} ${r.target}${change}`;
}

function wrap(text: string, width: number): string[] {
  const out: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line.length > 0 && line.length + 1 + word.length > width) {
      out.push(line);
      line = '  ' + word;
    } else line = line.length === 0 ? word : `${line} ${word}`;
  }
  if (line.length > 0) out.push(line);
  return out;
}

/** Steps a rendered table shows at most (half from the start, half from the end). */
export const TABLE_MAX_ROWS = 400;

/**
 * The trace as a table in the locking document's style: one column per
 * thread, one row per step (the step number at the left), each cell the
 * function, the operation, the word and its value before → after.
 */
export function renderTable(rows: readonly TraceRow[], threadNames: readonly string[], width = 160): string {
  // A livelock's trace runs to the step limit: its first and last steps say what happened.
  if (rows.length > TABLE_MAX_ROWS) {
    const keep = TABLE_MAX_ROWS / 2;
    const head = renderTable(rows.slice(0, keep), threadNames, width);
    const tail = renderTable(rows.slice(rows.length - keep), threadNames, width).split('\n').slice(2).join('\n');
    return `${head}\n   …  (${rows.length - 2 * keep} steps left out here; --json has them all)\n${tail}`;
  }
  const n = threadNames.length;
  const colW = Math.max(30, Math.floor((width - 6) / n) - 2);
  const pad = (s: string): string => s + ' '.repeat(Math.max(0, colW - s.length));
  const lines: string[] = [];
  lines.push('      ' + threadNames.map((t) => pad(t)).join('  '));
  lines.push('      ' + threadNames.map(() => pad('-'.repeat(Math.min(colW, 24)))).join('  '));
  for (const r of rows) {
    const parts = wrap(cell(r), colW);
    parts.forEach((p, i) => {
      const cols = Array.from({ length: n }, (_, t) => (t === r.thread ? pad(p) : pad('')));
      lines.push((i === 0 ? String(r.step).padStart(4) + '  ' : '      ') + cols.join('  ').trimEnd());
    });
  }
  return lines.join('\n');
}

// ---- schedules ----

export { encodeSchedule };

/**
 * The longest schedule decodeSchedule accepts: several times the checker's
 * bound on an execution (20,000 steps, then it is a livelock), and small
 * enough that a short string cannot make it allocate much.
 */
export const MAX_SCHEDULE_STEPS = 100_000;

export function decodeSchedule(s: string): number[] {
  const out: number[] = [];
  if (s.trim() === '') return out;
  const runs: Array<[number, number]> = [];
  let total = 0;
  for (const run of s.split(',')) {
    const m = /^(\d+)(?:\*(\d+))?$/.exec(run.trim());
    if (m === null) throw new KvmmuError(`malformed schedule at '${run}': write runs like 0*12,1*3,0`);
    const t = Number(m[1]);
    const times = m[2] === undefined ? 1 : Number(m[2]);
    if (times < 1) throw new KvmmuError(`malformed schedule: a run of ${times}`);
    total += times;
    // Counted before anything is expanded: a few bytes of runs must not become millions of steps.
    if (total > MAX_SCHEDULE_STEPS) throw new KvmmuError(`malformed schedule: more than ${MAX_SCHEDULE_STEPS} steps, longer than any execution`);
    runs.push([t, times]);
  }
  for (const [t, times] of runs) for (let k = 0; k < times; k++) out.push(t);
  return out;
}

export interface ReplaySpec {
  readonly scenario: string;
  readonly mode: MmuMode;
  readonly guardsOff: readonly GuardName[];
  readonly indirectFastPath: IndirectFastPath;
  /** Absent: `spte`. */
  readonly pageMarking?: PageMarking;
  readonly schedule: readonly number[];
}

/**
 * The string --replay takes: scenario:mode:guards-off:indirect-fast-path:schedule,
 * with a page-marking field before the schedule only when it is not the
 * default `spte` (so strings printed before the setting existed still replay).
 */
export function encodeReplay(r: ReplaySpec): string {
  const marking = (r.pageMarking ?? 'spte') === 'spte' ? '' : `${r.pageMarking}:`;
  return `${r.scenario}:${r.mode}:${r.guardsOff.length === 0 ? 'none' : r.guardsOff.join('+')}:${r.indirectFastPath}:${marking}${encodeSchedule(r.schedule)}`;
}

export function decodeReplay(s: string): ReplaySpec {
  const parts = s.trim().split(':');
  if (parts.length !== 5 && parts.length !== 6)
    throw new KvmmuError(
      `malformed replay string: expected scenario:mode:guards-off:indirect-fast-path[:page-marking]:schedule, got ${parts.length} fields`,
    );
  const [scenario, mode, off, ifp] = parts as [string, string, string, string];
  const marking = parts.length === 6 ? parts[4]! : 'spte';
  const sched = parts[parts.length - 1]!;
  if (!MMU_MODES.includes(mode as MmuMode)) throw new KvmmuError(`malformed replay string: unknown mode '${mode}'`);
  const guardsOff = off === 'none' ? [] : off.split('+');
  for (const g of guardsOff) if (!GUARD_NAMES.includes(g as GuardName)) throw new KvmmuError(`malformed replay string: unknown guard '${g}'`);
  if (!INDIRECT_FAST_PATH.includes(ifp as IndirectFastPath)) throw new KvmmuError(`malformed replay string: unknown setting '${ifp}'`);
  if (!PAGE_MARKING.includes(marking as PageMarking)) throw new KvmmuError(`malformed replay string: unknown page marking '${marking}'`);
  return {
    scenario,
    mode: mode as MmuMode,
    guardsOff: guardsOff as GuardName[],
    indirectFastPath: ifp as IndirectFastPath,
    pageMarking: marking as PageMarking,
    schedule: decodeSchedule(sched),
  };
}
