// Random programs for differential tests of the checker: three threads of a few shared-memory operations (32- and 64-bit words, data bytes, a ticket lock and a reader-writer lock), the scenario file that interprets them, and each execution's final state and class of equivalent executions.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadGenModule, loadScenarioFile } from '../../src/cli/scenario-file';
import type { ScenarioSpec } from '../../src/check/gen/scenario';
import { contextFor } from '../../src/check/check';
import { Engine, type Step } from '../../src/check/engine';
import { builtinMonitors } from '../../src/check/invariants';

/** One operation of a random program: kind, location, values; `then` runs only when this one returned `when`. */
export interface Op {
  k: string;
  l: number;
  v: number;
  w: number;
  then?: Op;
  when?: number;
}

/**
 * The scenario interprets the program setup finds on globalThis. Locations:
 * i32 words at bytes 0, 4, 8; i64 words at 16, 24; a lock at 32 (16 bytes); a reader-writer lock at 48;
 * 16 data bytes at 0 and 4088 (the second across a page boundary); each
 * thread's hash of what its operations returned goes to globalThis. Widths stay fixed per location.
 */
const INTERP = `import { defineScenario, type ScenarioVm } from 'kvmmu/scenario';
interface Op { k: string; l: number; v: number; w: number; then?: Op; when?: number }
const b64 = (x: number): bigint => BigInt(x) * 0x0101010101010101n;
function one(vm: ScenarioVm, op: Op): number {
  const w32 = vm.word(op.l * 4);
  const w64 = vm.word(16 + op.l * 8) / 2;
  const lk = vm.word(32);
  const d = vm.machine.shm.layout.regions['scenario.data']!.off + (op.l === 0 ? 0 : 4088);
  switch (op.k) {
    case 'load32': return vm.mem.load32(w32);
    case 'store32': vm.mem.store32(w32, op.v); return 0;
    case 'storeRelease32': vm.mem.storeRelease32(w32, op.v); return 0;
    case 'cmpxchg32': return vm.mem.cmpxchg32(w32, op.w, op.v);
    case 'xchg32': return vm.mem.xchg32(w32, op.v);
    case 'fetchAdd32': return vm.mem.fetchAdd32(w32, op.v);
    case 'fetchOr32': return vm.mem.fetchOr32(w32, op.v);
    case 'fetchAnd32': return vm.mem.fetchAnd32(w32, ~op.v);
    case 'or32': vm.mem.or32(w32, op.v); return 0;
    case 'waitWhile32': return vm.mem.waitWhile32(w32, op.w);
    case 'load64': return Number(vm.mem.load64(w64) & 0xffn);
    case 'store64': vm.mem.store64(w64, b64(op.v)); return 0;
    case 'cmpxchg64': return Number(vm.mem.cmpxchg64(w64, b64(op.w), b64(op.v)) & 0xffn);
    case 'xchg64': return Number(vm.mem.xchg64(w64, b64(op.v)) & 0xffn);
    case 'lock': vm.mem.lock(lk); return 0;
    case 'unlock': vm.mem.unlock(lk); return 0;
    case 'readLock': vm.mem.readLock(vm.word(48)); return 0;
    case 'readUnlock': vm.mem.readUnlock(vm.word(48)); return 0;
    case 'writeLock': vm.mem.writeLock(vm.word(48)); return 0;
    case 'writeUnlock': vm.mem.writeUnlock(vm.word(48)); return 0;
    case 'loadData64': return Number(vm.mem.loadData64((d + 8 * (op.w & 1)) / 8) & 0xffn);
    case 'storeData64': vm.mem.storeData64((d + 8 * (op.w & 1)) / 8, b64(op.v)); return 0;
    case 'cmpxchgData64': return Number(vm.mem.cmpxchgData64((d + 8 * (op.w & 1)) / 8, 0n, b64(op.v)) & 0xffn);
    case 'copyData': vm.mem.copyData(d + (op.w & 1) * 8, d + 4 - (op.w & 1) * 4, 8); return 0;
    case 'writeData': vm.mem.writeData(d + 4 * (op.w % 3), new Uint8Array(4).fill(op.v), 0, 4); return 0;
    case 'compareData': return vm.mem.compareData(d, d + 8, 8) ? 1 : 0;
  }
  throw new Error('unknown op ' + op.k);
}
function run(vm: ScenarioVm, ops: Op[], t: number): void {
  let h = 7;
  for (const op of ops) {
    const r = one(vm, op);
    h = (h * 31 + r) | 0;
    if (op.then !== undefined && r === op.when) h = (h * 37 + one(vm, op.then) + 1) | 0;
  }
  // Kept outside shared memory (a step fewer per thread); no thread reads it.
  (globalThis as { __kvmmuSeen?: number[] }).__kvmmuSeen![t] = h;
}
export const s = defineScenario({
  name: 'random-program', description: 'interprets a random program', memory: { metaBytes: 64, dataBytes: 8192 },
  setup(vm) {
    const p = (globalThis as { __kvmmuProgram?: Op[][] }).__kvmmuProgram!;
    vm.mem.store32(vm.word(0), 1);
    return { p };
  },
  threads: { A: (vm, d) => run(vm, d.p[0]!, 0), B: (vm, d) => run(vm, d.p[1]!, 1), C: (vm, d) => run(vm, d.p[2]!, 2) },
});
`;

const KINDS32 = ['load32', 'store32', 'storeRelease32', 'cmpxchg32', 'xchg32', 'fetchAdd32', 'fetchOr32', 'fetchAnd32', 'or32', 'waitWhile32'];
const KINDS64 = ['load64', 'store64', 'cmpxchg64', 'xchg64'];
const KINDS_DATA = ['loadData64', 'storeData64', 'cmpxchgData64', 'copyData', 'writeData', 'compareData'];

/** How a random program's threads are drawn (programOf); every draw comes from the program's random stream, in this order. */
interface ProgramShape {
  /** Operations of a thread, when the program has `n` threads. */
  len(n: number): number;
  /** Open a lock section here, with `room` operations left to place? */
  section(room: number): boolean;
  /** The section's lock operations: take, release. */
  lock(): [string, string];
  /** Is the section released (else never)? */
  released(): boolean;
  /** One operation outside the lock words. */
  op(): Op;
}

/** Two or three threads drawn to `shape`: operations, and lock sections holding some of them. */
function programOf(r: (n: number) => number, shape: ProgramShape): Op[][] {
  const threads: Op[][] = [];
  const n = 2 + r(2);
  for (let t = 0; t < 3; t++) {
    const ops: Op[] = [];
    if (t < n) {
      const len = shape.len(n);
      while (ops.length < len) {
        const room = len - ops.length;
        if (shape.section(room)) {
          const [take, release] = shape.lock();
          ops.push({ k: take, l: 0, v: 0, w: 0 });
          for (let i = r(room - 1); i > 0; i--) ops.push(shape.op());
          if (shape.released()) ops.push({ k: release, l: 0, v: 0, w: 0 });
        } else ops.push(shape.op());
      }
    }
    threads.push(ops);
  }
  return threads;
}

/** Two or three threads of one to four operations (a lock section's included), on a few locations. */
export function randomProgram(r: (n: number) => number): Op[][] {
  const pools = [KINDS32, KINDS64, KINDS_DATA].filter(() => r(3) > 0);
  if (pools.length === 0) pools.push(KINDS32);
  const lockUsed = r(2) === 0;
  return programOf(r, {
    len: (n) => 1 + r(n === 3 ? 3 : 4),
    // A section of the ticket lock, or of the reader-writer lock for reading or writing; sometimes never released.
    section: (room) => lockUsed && room >= 2 && r(3) === 0,
    lock: () => {
      const kind = r(3);
      return kind === 0 ? ['lock', 'unlock'] : kind === 1 ? ['readLock', 'readUnlock'] : ['writeLock', 'writeUnlock'];
    },
    released: () => r(5) > 0,
    op: () => {
      const kinds = pools[r(pools.length)]!;
      const k = kinds[r(kinds.length)]!;
      const op: Op = { k, l: r(k.endsWith('64') && !k.includes('Data') ? 2 : k.includes('Data') ? 2 : 3), v: 1 + r(3), w: r(3) };
      if (r(6) === 0) {
        op.then = { k: KINDS32[r(KINDS32.length)]!, l: r(3), v: 1 + r(3), w: r(3) };
        op.when = r(3);
      }
      return op;
    },
  });
}

/**
 * Like randomProgram, but most threads take a lock (the ticket lock or the reader-writer lock) or wait on a word,
 * and release late or never: the blocked threads' races (explore.ts pendingRace) come up in most programs.
 */
export function lockyProgram(r: (n: number) => number): Op[][] {
  const kinds = ['load32', 'store32', 'cmpxchg32', 'fetchAdd32', 'waitWhile32', 'waitWhile32'];
  return programOf(r, {
    len: (n) => 1 + r(n === 3 ? 4 : 5),
    section: (room) => room >= 2 && r(2) === 0,
    lock: () => {
      const kind = r(4);
      return kind === 0 ? ['lock', 'unlock'] : kind === 1 ? ['writeLock', 'writeUnlock'] : ['readLock', 'readUnlock'];
    },
    released: () => r(4) > 0,
    op: () => ({ k: kinds[r(kinds.length)]!, l: r(3), v: 1 + r(3), w: r(3) }),
  });
}

/**
 * The interpreter compiled as a scenario file (in a fresh temporary directory named after `tag`), and the
 * generator runtime; a test sets globalThis.__kvmmuProgram before each exploration.
 */
export function randomProgramScenario(tag: string): { gen: ReturnType<typeof loadGenModule>; spec: ScenarioSpec } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `kvmmu-${tag}-`));
  const file = path.join(dir, 'random-program.ts');
  fs.writeFileSync(file, INTERP);
  return { gen: loadGenModule(), spec: loadScenarioFile(file) };
}

/**
 * An execution's class of equivalent executions (its Mazurkiewicz trace) under the reduction's dependency: for
 * each location, the order of the steps that touch it, the reads between two other uses (and the ors between two
 * other uses) as a set; a step is named by its thread and its number in that thread. Two executions DPOR counts
 * as equivalent have the same class, and two with the same class are equivalent.
 */
export function classOf(steps: readonly Step[]): string {
  const per = new Map<number, { kind: string; ids: string[] }[]>();
  const count = new Map<number, number>();
  for (const s of steps) {
    const c = (count.get(s.thread) ?? 0) + 1;
    count.set(s.thread, c);
    const id = `${s.thread}.${c}`;
    const a = s.access;
    for (let x = 0; x < a.keys.length; x++) {
      const kind = a.ors[x] ? 'o' : a.writes[x] ? 'w' : 'r';
      let l = per.get(a.keys[x]!);
      if (l === undefined) per.set(a.keys[x]!, (l = []));
      const last = l[l.length - 1];
      if (kind !== 'w' && last !== undefined && last.kind === kind) last.ids.push(id);
      else l.push({ kind, ids: [id] });
    }
  }
  return [...per.keys()]
    .sort((x, y) => x - y)
    .map((k) => `${k}:${per.get(k)!.map((g) => g.kind + g.ids.sort().join(',')).join(';')}`)
    .join('|');
}

/**
 * An engine for `program` whose executions add their final state to `states` as they end (abandoned ones
 * excepted): how it ended, what each thread's operations returned, the words and the data bytes. With `classes`,
 * each complete execution's class (classOf) is counted in `classes` too, and the engine tracks what monitors and
 * plain stores touch whatever the strategy (DFS does not otherwise: exploreSlices), so classes compare across
 * strategies.
 */
export function recordingEngine(
  gen: ReturnType<typeof loadGenModule>,
  spec: ScenarioSpec,
  program: Op[][],
  withClasses = false,
): { engine: Engine; states: Set<string>; classes: Map<string, number> } {
  (globalThis as { __kvmmuProgram?: Op[][] }).__kvmmuProgram = program;
  const engine = new Engine(gen, spec, contextFor(spec, {}), { monitorsFor: builtinMonitors });
  if (withClasses) Object.defineProperty(engine, 'trackFootprints', { get: () => true, set: () => {} });
  const classes = new Map<string, number>();
  const { meta, data, layout } = engine.machine.shm;
  const words = new Uint8Array(meta, layout.regions['scenario.words']!.off, 64);
  const d = layout.regions['scenario.data']!.off;
  const bytes = [new Uint8Array(data, d, 16), new Uint8Array(data, d + 4088, 16)];
  const states = new Set<string>();
  const execute = engine.execute.bind(engine);
  const seen = ((globalThis as { __kvmmuSeen?: number[] }).__kvmmuSeen = [0, 0, 0]);
  engine.execute = (chooser) => {
    seen.fill(0);
    const r = execute(chooser);
    if (!r.abandoned) {
      states.add([r.violation?.invariant ?? 'ok', seen.join(','), Buffer.from(words).toString('hex'), ...bytes.map((b) => Buffer.from(b).toString('hex'))].join('|'));
      if (withClasses) {
        const c = classOf(r.steps);
        classes.set(c, (classes.get(c) ?? 0) + 1);
      }
    }
    return r;
  };
  return { engine, states, classes };
}
