// DPOR against plain DFS on scenarios small enough for DFS to finish: the same verdict, lock orders reversed, independent steps pruned.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCheck, type CheckReport } from '../../src/check/check';
import type { ScenarioSpec } from '../../src/check/gen/scenario';
import { findScenario, loadCatalog, loadGenModule, loadScenarioFile } from '../../src/cli/scenario-file';

const gen = loadGenModule();
const catalog = loadCatalog();

/** Scenario files for these tests, each exporting one scenario; `vm.word` takes a byte offset, a lock spans 16 bytes. */
const FILES: Record<string, string> = {
  // The check holds only if A's critical section runs first: the checker must try B's lock first.
  'section-order': `
    A: (vm) => { vm.mem.lock(vm.word(0)); vm.mem.store32(vm.word(64), 1); vm.mem.unlock(vm.word(0)); },
    B: (vm) => { vm.mem.lock(vm.word(0)); vm.mem.store32(vm.word(68), vm.mem.load32(vm.word(64))); vm.mem.unlock(vm.word(0)); },
  }, check: (vm) => (vm.mem.load32(vm.word(68)) === 1 ? null : 'B entered its critical section first'),`,
  // Three threads, one lock: the last to enter sees both others' writes; the check wants C last.
  'three-sections': `
    A: (vm) => { vm.mem.lock(vm.word(0)); vm.mem.fetchAdd32(vm.word(64), 1); vm.mem.unlock(vm.word(0)); },
    B: (vm) => { vm.mem.lock(vm.word(0)); vm.mem.fetchAdd32(vm.word(64), 1); vm.mem.unlock(vm.word(0)); },
    C: (vm) => { vm.mem.lock(vm.word(0)); vm.mem.store32(vm.word(68), vm.mem.load32(vm.word(64))); vm.mem.unlock(vm.word(0)); },
  }, check: (vm) => (vm.mem.load32(vm.word(68)) === 2 ? null : 'C did not enter last'),`,
  // A counter under a lock: clean in every order.
  'locked-counter': `
    A: (vm) => { vm.mem.lock(vm.word(0)); vm.mem.store32(vm.word(64), vm.mem.load32(vm.word(64)) + 1); vm.mem.unlock(vm.word(0)); },
    B: (vm) => { vm.mem.lock(vm.word(0)); vm.mem.store32(vm.word(64), vm.mem.load32(vm.word(64)) + 1); vm.mem.unlock(vm.word(0)); },
  }, check: (vm) => (vm.mem.load32(vm.word(64)) === 2 ? null : 'an update was lost'),`,
  // B waits while word 0 is 0; A's 1 is visible to it only between A's first two stores. B blocked at A's
  // second store never runs there, so only a race with a blocked operation shows that window.
  'wait-window': `
    A: (vm) => { vm.mem.store32(vm.word(0), 1); vm.mem.store32(vm.word(0), 0); vm.mem.store32(vm.word(0), 5); },
    B: (vm) => { vm.mem.store32(vm.word(4), vm.mem.waitWhile32(vm.word(0), 0)); },
  }, check: (vm) => (vm.mem.load32(vm.word(4)) === 1 ? 'B saw 1' : null),`,
  // The same window leading to a deadlock: B, having seen 1, waits on a word nobody writes.
  'wait-window-deadlock': `
    A: (vm) => { vm.mem.store32(vm.word(0), 1); vm.mem.store32(vm.word(0), 0); vm.mem.store32(vm.word(0), 5); },
    B: (vm) => { if (vm.mem.waitWhile32(vm.word(0), 0) === 1) vm.mem.waitWhile32(vm.word(4), 0); },
  }, check: () => null,`,
  // Three writes each to locations of their own: every order is equivalent.
  'independent-writes': `
    A: (vm) => { vm.mem.store32(vm.word(0), 1); vm.mem.store32(vm.word(4), 1); vm.mem.store32(vm.word(8), 1); },
    B: (vm) => { vm.mem.store32(vm.word(12), 1); vm.mem.store32(vm.word(16), 1); vm.mem.store32(vm.word(20), 1); },
  }, check: () => null,`,
};

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-dpor-'));
function scenario(name: string): ScenarioSpec {
  const body = FILES[name];
  if (body === undefined) return findScenario(catalog, name);
  const f = path.join(dir, `${name}.ts`);
  fs.writeFileSync(
    f,
    `import { defineScenario } from 'kvmmu/scenario';\nexport const s = defineScenario({ name: '${name}', description: 'dpor test', memory: { metaBytes: 256 }, threads: {${body} });\n`,
  );
  return loadScenarioFile(f);
}

function verdict(r: CheckReport): string {
  return r.violation === null ? 'clean' : r.violation.invariant;
}

for (const name of ['section-order', 'three-sections', 'locked-counter', 'independent-writes', 'wait-window', 'wait-window-deadlock', 'lost-update', 'atomic-counter', 'abba-deadlock']) {
  test(`${name}: DPOR reaches the verdict exhaustive DFS reaches`, () => {
    const spec = scenario(name);
    const dfs = runCheck(gen, spec, { strategy: 'dfs', minimize: false });
    const dpor = runCheck(gen, spec, { strategy: 'dpor', minimize: false });
    assert.equal(dfs.complete || dfs.violation !== null, true, 'DFS must finish or find something for the comparison to mean anything');
    assert.equal(verdict(dpor), verdict(dfs));
    assert.ok(dpor.executions <= dfs.executions, `DPOR ${dpor.executions} executions, DFS ${dfs.executions}`);
  });
}

test('DPOR tries the other order of two critical sections of one lock (the unlock that orders them is not the race)', () => {
  const r = runCheck(gen, scenario('section-order'));
  assert.equal(r.violation?.message, 'B entered its critical section first');
  // All three orders of entry, on a lock three threads take.
  const three = runCheck(gen, scenario('three-sections'));
  assert.equal(three.violation?.message, 'C did not enter last');
});

test('DPOR finds the lock-order deadlock, and a clean locked counter in as many executions as there are lock orders', () => {
  const abba = runCheck(gen, scenario('abba-deadlock'));
  assert.equal(abba.violation?.invariant, 'deadlock');
  // The locks named as the scenario addresses them (vm.word(byte)), not by their index in the machine's buffer.
  assert.match(abba.violation!.message, /'A' waits for a lock \(word\(32\)\); 'B' waits for a lock \(word\(0\)\)/);
  const counter = runCheck(gen, scenario('locked-counter'));
  assert.equal(counter.violation, null);
  assert.equal(counter.complete, true);
  assert.equal(counter.executions, 2, 'A first or B first: nothing else differs');
});

test('DPOR explores one execution of steps that touch nothing in common; DFS explores every interleaving', () => {
  const spec = scenario('independent-writes');
  const dfs = runCheck(gen, spec, { strategy: 'dfs' });
  const dpor = runCheck(gen, spec, { strategy: 'dpor' });
  assert.equal(dfs.complete && dpor.complete, true);
  assert.equal(dfs.executions, 20, 'C(6,3) interleavings of two threads of three steps');
  assert.equal(dpor.executions, 1);
});
