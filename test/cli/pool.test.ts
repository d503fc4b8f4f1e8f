// CheckPool (cli/parallel.ts) with several searches at once, as `kvmmu check --all` and the tour give it: each keeps its own verdict and budget, one stopped stops no other, and one not begun when interrupted says so.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { contextFor, engineFor } from '../../src/check/check';
import { explore } from '../../src/check/explore';
import { ALL_GUARDS, GUARDS } from '../../src/kvm/config';
import { CheckPool, kvmmuVersion, type SearchSettings } from '../../src/cli/parallel';
import { findScenario, loadCatalog, loadGenModule } from '../../src/cli/scenario-file';

const gen = loadGenModule();
const catalog = loadCatalog();

function search(name: string, guards = ALL_GUARDS): { settings: SearchSettings; threads: number; sequential: () => ReturnType<typeof explore> } {
  const spec = findScenario(catalog, name);
  const ctx = contextFor(spec, { guards });
  const engine = engineFor(gen, spec, ctx);
  return {
    settings: { source: { name }, ctx, strategy: 'dpor', bound: -1, version: kvmmuVersion() },
    threads: engine.threadNames.length,
    sequential: () => explore(engine, { strategy: 'dpor', reduction: 'source' }),
  };
}

test('searches given to a pool at once each get the sequential verdict: a violation found in one stops that one only', async () => {
  const pool = new CheckPool(2);
  try {
    // The violating search first, so that it ends while the clean ones still run beside it.
    const searches = [search('wp-tlb-flush', ALL_GUARDS & ~GUARDS['flush-mmu-writable']), search('dirty-bit-loss'), search('notifier-race'), search('free-during-walk'), search('aba-gfn-pfn')];
    const results = await Promise.all(searches.map((s) => pool.explore(s.settings, s.threads, { workers: 2 })));
    for (const [i, s] of searches.entries()) {
      const seq = s.sequential();
      const r = results[i]!;
      const name = s.settings.source.name;
      assert.equal(r.violation?.violation.invariant ?? null, seq.violation?.violation.invariant ?? null, name);
      assert.equal(r.complete, seq.complete, name);
      assert.equal(r.interrupted, false, name);
      assert.notEqual(r.started, false, name);
      assert.ok(r.executions > 0, name);
    }
    assert.equal(results[0]!.violation?.violation.invariant, 'tlb-after-write-protect');
    // The first two began at once, one on each worker: each says it shared them.
    assert.equal(results[0]!.shared, true);
    assert.equal(results[1]!.shared, true);
    // The pool is idle again, and serves a search after these, alone.
    const again = search('free-during-walk');
    const r = await pool.explore(again.settings, again.threads, { workers: 2 });
    assert.ok(r.complete && r.violation === null);
    assert.equal(r.shared, false);
  } finally {
    await pool.close();
  }
});

test('an interrupted pool: the searches running stop and say so; those no worker had begun say they did not start', async () => {
  const pool = new CheckPool(2);
  try {
    const stop = { requested: false };
    // Four long searches on two workers: the first two begin at once, the other two wait for a free worker.
    const s = search('tdp-removed-pt-freeze');
    const pending = [0, 1, 2, 3].map(() => pool.explore(s.settings, s.threads, { workers: 2, stop }));
    setTimeout(() => (stop.requested = true), 300);
    const results = await Promise.all(pending);
    assert.deepEqual(
      results.map((r) => [r.started !== false, r.interrupted, r.complete]),
      [
        [true, true, false],
        [true, true, false],
        [false, true, false],
        [false, true, false],
      ],
    );
    assert.ok(results[0]!.executions > 0 && results[2]!.executions === 0);
  } finally {
    await pool.close();
  }
});

test('closing a pool ends a search still running on it with an error', async () => {
  const pool = new CheckPool(2);
  const s = search('tdp-removed-pt-freeze');
  const running = pool.explore(s.settings, s.threads, { workers: 2 });
  await new Promise((resolve) => setTimeout(resolve, 100));
  const rejected = assert.rejects(running, /closed before this search ended/);
  await pool.close();
  await rejected;
});
