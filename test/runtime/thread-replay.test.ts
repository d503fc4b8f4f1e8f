// The generator build and the real-thread build run the same operations: a schedule replayed with one worker_thread per scenario thread matches the checker's engine step for step.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ALL_GUARDS, GUARDS, guardsOff } from '../../src/kvm/config';
import { contextFor, runCheck } from '../../src/check/check';
import { Engine, type Execution } from '../../src/check/engine';
import { builtinMonitors } from '../../src/check/invariants';
import { replayOnThreads } from '../../src/runtime/thread-replay';
import { findScenario, loadCatalog, loadGenModule } from '../../src/cli/scenario-file';

const gen = loadGenModule();
const catalog = loadCatalog();

/** One full execution in the generator engine, switching threads at every step it can (round robin). */
function roundRobin(name: string): { schedule: number[]; ops: string[]; check: string | null; deadlock: boolean } {
  const spec = findScenario(catalog, name);
  const engine = new Engine(gen, spec, contextFor(spec, {}), { monitorsFor: builtinMonitors });
  let next = 0;
  const r = engine.execute({
    choose(ex: Execution): number {
      for (let k = 0; k < ex.nThreads; k++) {
        const t = (next + k) % ex.nThreads;
        if (ex.isEnabled(t)) {
          next = t + 1;
          return t;
        }
      }
      return -1;
    },
  });
  const check = r.violation?.invariant === 'check' ? r.violation.message : null;
  const deadlock = r.violation?.invariant === 'deadlock';
  return { schedule: r.steps.map((s) => s.thread), ops: r.steps.map((s) => `${s.thread}:${s.op}:${s.a}`), check, deadlock };
}

for (const spec of [...catalog.builtin, ...catalog.examples]) {
  test(`${spec.name}: a round-robin schedule runs the same operations on worker threads as in the generator engine`, async () => {
    const g = roundRobin(spec.name);
    const ctx = contextFor(spec, {});
    const t = await replayOnThreads({ scenario: spec.name, mode: ctx.mode, guardsOff: [], indirectFastPath: ctx.indirectFastPath, schedule: g.schedule });
    // abba-deadlock deadlocks round robin: both engines stop at the same step with the threads stuck.
    assert.equal(t.finished, !g.deadlock);
    assert.deepEqual(t.steps.map((s) => `${s.thread}:${s.op}:${s.a}`), g.ops);
    assert.equal(t.check, g.check);
  });
}

test('a counterexample replayed on worker threads runs the operations the checker reported', async () => {
  const spec = findScenario(catalog, 'dirty-bit-loss');
  const guards = ALL_GUARDS & ~GUARDS['atomic-volatile-clear'];
  const r = runCheck(gen, spec, { guards });
  assert.ok(r.violation !== null);
  const ctx = contextFor(spec, { guards });
  const schedule = r.violation.schedule.split(':')[4]!;
  const { decodeSchedule } = await import('../../src/check/trace');
  const t = await replayOnThreads({ scenario: spec.name, mode: ctx.mode, guardsOff: guardsOff(guards), indirectFastPath: 'pin', schedule: decodeSchedule(schedule) });
  assert.deepEqual(
    t.rows.map((x) => `${x.thread} ${x.op} ${x.target} ${x.before} ${x.after}`),
    r.violation.trace.map((x) => `${x.thread} ${x.op} ${x.target} ${x.before} ${x.after}`),
  );
});
