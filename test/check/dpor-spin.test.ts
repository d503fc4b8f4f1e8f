// Spin loops as awaits on random programs: DPOR reaches the final states DFS reaches, and every final state the real (spinning) program reaches under random schedules.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { contextFor } from '../../src/check/check';
import { Engine } from '../../src/check/engine';
import { explore, type Reduction, type Strategy } from '../../src/check/explore';
import { OP } from '../../src/shm/access';
import { loadGenModule, loadScenarioFile } from '../../src/cli/scenario-file';
import { rng } from '../helpers/rng';

interface Op {
  k: string;
  l: number;
  v: number;
  w: number;
}

/**
 * Each spin kind twice: as a plain loop the checker turns into an await, and (`real`) with a counter carried
 * from one iteration to the next, which keeps the checker from treating it as one: the program as it runs.
 * Words at bytes 0, 4, 8.
 */
const INTERP = `import { defineScenario, type ScenarioVm } from 'kvmmu/scenario';
interface Op { k: string; l: number; v: number; w: number }
const g = globalThis as { __kvmmuProgram?: Op[][]; __kvmmuReal?: boolean; __kvmmuSeen?: number[] };
function spin(vm: ScenarioVm, op: Op): number {
  const a = vm.word(op.l * 4);
  const b = vm.word(((op.l + 1) % 3) * 4);
  switch (op.k) {
    case 'spinUntil': while (vm.mem.load32(a) !== op.v) {} return op.v;
    case 'spinWhile2': while (vm.mem.load32(a) === op.w && vm.mem.load32(b) !== op.v) {} return 0;
    case 'tas': while (vm.mem.cmpxchg32(a, 0, op.v) !== 0) {} return 0;
    case 'ttas': while (vm.mem.cmpxchg32(a, 0, op.v) !== 0) { while (vm.mem.load32(a) !== 0) {} } return 0;
    case 'waitUntil': return vm.mem.waitUntil32([a, b], (x) => x[0] === op.v || x[1] === op.w)[0]!;
    case 'spinCount': while (vm.mem.load32(a) !== op.v && vm.mem.load32(b) < 3) { vm.mem.fetchAdd32(b, 1); } return 0;
    case 'spinTwice': for (;;) { const x = vm.mem.load32(a); const y = vm.mem.load32(a); if (x === y && x === op.v) return x; }
  }
  return -1;
}
function spinReal(vm: ScenarioVm, op: Op): number {
  const a = vm.word(op.l * 4);
  const b = vm.word(((op.l + 1) % 3) * 4);
  let n = 0;
  switch (op.k) {
    case 'spinUntil': while (vm.mem.load32(a) !== op.v) { n++; } return op.v;
    case 'spinWhile2': while (vm.mem.load32(a) === op.w && vm.mem.load32(b) !== op.v) { n++; } return 0;
    case 'tas': while (vm.mem.cmpxchg32(a, 0, op.v) !== 0) { n++; } return 0;
    case 'ttas': while (vm.mem.cmpxchg32(a, 0, op.v) !== 0) { while (vm.mem.load32(a) !== 0) { n++; } } return 0;
    case 'waitUntil': for (;;) { n++; const x0 = vm.mem.load32(a); const x1 = vm.mem.load32(b); if (x0 === op.v || x1 === op.w) return x0; }
    case 'spinCount': while (vm.mem.load32(a) !== op.v && vm.mem.load32(b) < 3) { n++; vm.mem.fetchAdd32(b, 1); } return 0;
    case 'spinTwice': for (;;) { n++; const x = vm.mem.load32(a); const y = vm.mem.load32(a); if (x === y && x === op.v) return x; }
  }
  return -1;
}
function one(vm: ScenarioVm, op: Op): number {
  const a = vm.word(op.l * 4);
  switch (op.k) {
    case 'load32': return vm.mem.load32(a);
    case 'store32': vm.mem.store32(a, op.v); return 0;
    case 'fetchAdd32': return vm.mem.fetchAdd32(a, op.v);
    case 'cmpxchg32': return vm.mem.cmpxchg32(a, op.w, op.v);
  }
  return g.__kvmmuReal === true ? spinReal(vm, op) : spin(vm, op);
}
function run(vm: ScenarioVm, ops: Op[], t: number): void {
  let h = 7;
  for (const op of ops) h = (h * 31 + one(vm, op)) | 0;
  g.__kvmmuSeen![t] = h;
}
export const s = defineScenario({
  name: 'random-spins', description: 'interprets a random program with spin loops', memory: { metaBytes: 64 },
  setup() { return { p: g.__kvmmuProgram! }; },
  threads: { A: (vm, d) => run(vm, d.p[0]!, 0), B: (vm, d) => run(vm, d.p[1]!, 1), C: (vm, d) => run(vm, d.p[2]!, 2) },
});
`;

const PLAIN = ['load32', 'store32', 'store32', 'fetchAdd32', 'cmpxchg32'];
const SPINS = ['spinUntil', 'spinWhile2', 'tas', 'ttas', 'waitUntil', 'spinCount', 'spinTwice'];

/** Two threads of one to three operations or three of one or two, about half of them spins. */
function randomProgram(r: (n: number) => number): Op[][] {
  const n = 2 + r(2);
  const threads: Op[][] = [];
  for (let t = 0; t < 3; t++) {
    const ops: Op[] = [];
    for (let len = t < n ? 1 + r(n === 3 ? 2 : 3) : 0; ops.length < len; ) {
      const kinds = r(2) === 0 ? SPINS : PLAIN;
      ops.push({ k: kinds[r(kinds.length)]!, l: r(3), v: r(3), w: r(3) });
    }
    threads.push(ops);
  }
  return threads;
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-dpor-spin-'));
const file = path.join(dir, 'random-spins.ts');
fs.writeFileSync(file, INTERP);
const gen = loadGenModule();
const spec = loadScenarioFile(file);
const g = globalThis as { __kvmmuProgram?: Op[][]; __kvmmuReal?: boolean; __kvmmuSeen?: number[] };

/**
 * The final states of the executions `strategy` explores: how each ended ('ok', 'deadlock', 'livelock'...),
 * what each thread's operations returned, the words. Also whether any step was an await.
 */
function finalStates(program: Op[][], strategy: Strategy, real: boolean, o: { maxSteps?: number; executions?: number; reduction?: Reduction } = {}): { states: Set<string>; complete: boolean; awaits: boolean } {
  g.__kvmmuProgram = program;
  g.__kvmmuReal = real;
  const engine = new Engine(gen, spec, contextFor(spec, {}), { maxSteps: o.maxSteps });
  const { meta, layout } = engine.machine.shm;
  const words = new Uint8Array(meta, layout.regions['scenario.words']!.off, 12);
  const states = new Set<string>();
  let awaits = false;
  const execute = engine.execute.bind(engine);
  const seen = (g.__kvmmuSeen = [0, 0, 0]);
  engine.execute = (chooser) => {
    seen.fill(0);
    const r = execute(chooser);
    if (r.steps.some((s) => s.op === OP.awaitChange)) awaits = true;
    if (!r.abandoned) states.add([r.violation?.invariant ?? 'ok', seen.join(','), Buffer.from(words).toString('hex')].join('|'));
    return r;
  };
  const res = explore(engine, { strategy, reduction: o.reduction, continueAfterViolation: true, maxExecutions: o.executions ?? 200_000, seed: 1 });
  return { states, complete: res.complete, awaits };
}

const finished = (states: Set<string>): string[] => [...states].filter((s) => s.startsWith('ok|'));

test('with spin loops as awaits, DPOR (Source and Optimal) reaches every final state DFS reaches (spins that end, spin for ever, or take a lock) on 300 random programs', (t) => {
  let withAwaits = 0;
  let tooBig = 0;
  for (let seed = 1; seed <= 300; seed++) {
    const program = randomProgram(rng(seed * 104729));
    const dpor = finalStates(program, 'dpor', false, { reduction: 'source' });
    const optimal = finalStates(program, 'dpor', false, { reduction: 'optimal' });
    assert.ok(dpor.complete && optimal.complete, `seed ${seed}: DPOR not exhaustive: ${JSON.stringify(program)}`);
    // A few programs take DFS hundreds of thousands of executions (one took 456,500): left out, and counted.
    const dfs = finalStates(program, 'dfs', false, { executions: 30_000 });
    if (!dfs.complete) {
      tooBig++;
      continue;
    }
    if (dfs.awaits) withAwaits++;
    const missing = [...dfs.states].filter((s) => !dpor.states.has(s));
    const extra = [...dpor.states].filter((s) => !dfs.states.has(s));
    assert.deepEqual({ missing, extra }, { missing: [], extra: [] }, `source, seed ${seed}: ${JSON.stringify(program)}`);
    const missingOptimal = [...dfs.states].filter((s) => !optimal.states.has(s));
    const extraOptimal = [...optimal.states].filter((s) => !dfs.states.has(s));
    assert.deepEqual({ missing: missingOptimal, extra: extraOptimal }, { missing: [], extra: [] }, `optimal, seed ${seed}: ${JSON.stringify(program)}`);
  }
  t.diagnostic(`${withAwaits} programs ran an await; ${tooBig} left out as too big for DFS`);
  assert.ok(withAwaits > 50, `only ${withAwaits} programs blocked a spin loop`);
  assert.ok(tooBig < 30, `${tooBig} programs too big for DFS`);
});

test('blocking a spin loop loses no final state: every one the spinning program reaches in 1,500 random schedules, exhaustive DPOR over the awaits reaches', (t) => {
  let compared = 0;
  for (let seed = 1; seed <= 150; seed++) {
    const program = randomProgram(rng(seed * 7907));
    const real = finalStates(program, 'random', true, { maxSteps: 300, executions: 1500 });
    const awaited = finalStates(program, 'dpor', false);
    const missing = finished(real.states).filter((s) => !awaited.states.has(s));
    compared += finished(real.states).length;
    assert.deepEqual(missing, [], `seed ${seed}: ${JSON.stringify(program)}`);
  }
  t.diagnostic(`${compared} final states of the spinning programs found by DPOR over the awaits`);
  assert.ok(compared > 100);
});
