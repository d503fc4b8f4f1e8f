// Spin loops without annotation: an iteration that changes nothing blocks its thread until a word it read changes, so Peterson's lock is proven, a broken one loses its update, and a thread spinning for ever is a livelock with its cycle.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { contextFor, runCheck } from '../../src/check/check';
import { Engine } from '../../src/check/engine';
import { explore } from '../../src/check/explore';
import { loadGenModule, loadScenarioFile } from '../../src/cli/scenario-file';

const ROOT = path.join(__dirname, '..', '..', '..');
const gen = loadGenModule();
const PETERSON = path.join(ROOT, 'examples', 'peterson.ts');

function scenarioFile(text: string, pick?: string): ReturnType<typeof loadScenarioFile> {
  const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-spin-')), 'spin.ts');
  fs.writeFileSync(f, `import { defineScenario, threads, type ScenarioVm } from 'kvmmu/scenario';\n${text}`);
  return loadScenarioFile(f, pick);
}

test("Peterson's lock with plain spin loops is exhaustive and clean with DPOR (and plain DFS)", () => {
  const spec = loadScenarioFile(PETERSON, 'peterson');
  const dpor = runCheck(gen, spec);
  assert.equal(dpor.violation, null, dpor.violation?.message);
  assert.equal(dpor.complete, true);
  assert.ok(dpor.executions < 100, `${dpor.executions} executions`);
  const dfs = runCheck(gen, spec, { strategy: 'dfs' });
  assert.equal(dfs.violation, null);
  assert.equal(dfs.complete, true);
});

test("Peterson's lock waiting with waitUntil32 over two words is exhaustive and clean, one blocked operation per wait", () => {
  const r = runCheck(gen, loadScenarioFile(PETERSON, 'peterson-wait-until'));
  assert.equal(r.violation, null);
  assert.equal(r.complete, true);
});

test("Peterson's lock without its turn variable shows its lost update, not a livelock", () => {
  const r = runCheck(gen, loadScenarioFile(PETERSON, 'peterson-no-turn'));
  assert.equal(r.violation?.invariant, 'check');
  assert.match(r.violation!.message, /the counter is 1 after two increments/);
  assert.ok(r.violation!.steps < 20);
});

test('with both flags raised before the waits (the turn removed), both threads spin for ever: a livelock naming each cycle', () => {
  const spec = scenarioFile(`
function body(vm: ScenarioVm, me: number): void {
  vm.mem.store32(vm.word(4 * me), 1);
  while (vm.mem.load32(vm.word(4 * (1 - me))) === 1) {}
  vm.mem.store32(vm.word(4 * me), 0);
}
export const s = defineScenario({ name: 'flags-first', description: '', memory: { metaBytes: 64 }, threads: threads(2, (vm, _d, i) => body(vm, i)) });
`);
  const r = runCheck(gen, spec);
  assert.equal(r.violation?.invariant, 'livelock');
  assert.match(r.violation!.message, /'T0' repeats a loop that reads word\(4\) = 1 and changes nothing \(the cycle\).*'T1' repeats a loop that reads word\(0\) = 1/);
  assert.ok(r.violation!.steps < 20, `${r.violation!.steps} steps`);
});

test('a thread spinning for a value no thread writes is a livelock with its cycle, found in a few steps', () => {
  const spec = scenarioFile(`
export const s = defineScenario({ name: 'never', description: '', memory: { metaBytes: 64 },
  threads: { waiter: (vm) => { while (vm.mem.load32(vm.word(0)) !== 7) {} }, writer: (vm) => { vm.mem.store32(vm.word(0), 1); } } });
`);
  const r = runCheck(gen, spec);
  assert.equal(r.violation?.invariant, 'livelock');
  assert.match(r.violation!.message, /^a thread spins for ever: 'waiter' repeats a loop that reads word\(0\) = [01] and changes nothing \(the cycle\), and no thread left can change those words$/);
  assert.ok(r.violation!.steps < 10);
  // The trace shows the wait as a step of its own once a write let the thread try again.
  assert.ok(r.violation!.trace.every((row) => row.op !== 'awaitChange' || /until one changes: word\(0\) = \d/.test(row.target)));
});

test('a loop that changes memory every iteration for ever is a livelock under a fair schedule, shown as its cycle', () => {
  const spec = scenarioFile(`
export const s = defineScenario({ name: 'counts', description: '', memory: { metaBytes: 64 },
  threads: { counter: (vm) => { while (vm.mem.load32(vm.word(0)) === 0) { vm.mem.fetchAdd32(vm.word(4), 1); } }, other: (vm) => { vm.mem.store32(vm.word(8), 1); } } });
`);
  const r = runCheck(gen, spec);
  assert.equal(r.violation?.invariant, 'livelock');
  assert.match(r.violation!.message, /on a fair schedule \(every thread that could run did\): 'counter' repeats a cycle of 2 steps: 'counter' (fetchAdd32 word\(4\); 'counter' load32 word\(0\)|load32 word\(0\); 'counter' fetchAdd32 word\(4\))$/);
});

test('a long but finite loop is no livelock: executions that reach the step bound are cut (fair: not exhaustive; starved: the starved thread runs earlier)', () => {
  // The counter stops once the other thread sets the flag; a 400-step bound cuts the schedules that delay it.
  const spec = scenarioFile(`
export const s = defineScenario({ name: 'stops', description: '', memory: { metaBytes: 64 },
  threads: { counter: (vm) => { while (vm.mem.load32(vm.word(0)) === 0) { vm.mem.fetchAdd32(vm.word(4), 1); } }, stopper: (vm) => { vm.mem.store32(vm.word(0), 1); } } });
`);
  const engine = new Engine(gen, spec, contextFor(spec, {}), { maxSteps: 400 });
  const r = explore(engine, { strategy: 'dpor' });
  assert.equal(r.violation, null, r.violation?.violation.message);
  assert.equal(r.complete, false, 'cut executions are not explored to their end');
  assert.ok(r.truncated > 0);
});

test('an iteration that changes a variable it carries to the next one is not a wait: a bounded retry loop runs its iterations', () => {
  // Each try reads the same value, but the count makes the tries differ: blocking after the first would report a livelock.
  const spec = scenarioFile(`
export const s = defineScenario({ name: 'retries', description: '', memory: { metaBytes: 64 },
  threads: { A: (vm) => { let tries = 0; while (vm.mem.load32(vm.word(0)) === 0 && tries < 3) { tries++; } vm.mem.store32(vm.word(4), tries); } },
  check: (vm) => (vm.mem.load32(vm.word(4)) === 3 ? null : 'fewer than 3 tries') });
`);
  const r = runCheck(gen, spec);
  assert.equal(r.violation, null, r.violation?.message);
  assert.equal(r.complete, true);
});

test('a test-and-set lock (cmpxchg spin, a failed cmpxchg writes nothing) protects its section: exhaustive and clean; without the lock the update is lost', () => {
  const text = (locked: boolean): string => `
function body(vm: ScenarioVm): void {
  ${locked ? 'while (vm.mem.cmpxchg32(vm.word(0), 0, 1) !== 0) {}' : ''}
  const c = vm.mem.load32(vm.word(4));
  vm.mem.store32(vm.word(4), c + 1);
  ${locked ? 'vm.mem.store32(vm.word(0), 0);' : ''}
}
export const s = defineScenario({ name: 'tas', description: '', memory: { metaBytes: 64 }, threads: threads(3, (vm) => body(vm)),
  check: (vm) => (vm.mem.load32(vm.word(4)) === 3 ? null : 'lost') });
`;
  const ok = runCheck(gen, scenarioFile(text(true)));
  assert.equal(ok.violation, null, ok.violation?.message);
  assert.equal(ok.complete, true);
  assert.equal(runCheck(gen, scenarioFile(text(false))).violation?.invariant, 'check');
});
