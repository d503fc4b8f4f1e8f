// Optimal-DPOR against Source-DPOR on the classic benchmarks: it begins no execution that it then abandons, explores as many classes, and the report and progress give complete and abandoned executions apart, with an estimate of the executions ahead.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { contextFor } from '../../src/check/check';
import { Engine } from '../../src/check/engine';
import { explore, type ExploreProgress } from '../../src/check/explore';
import { builtinMonitors } from '../../src/check/invariants';
import type { ScenarioSpec } from '../../src/check/gen/scenario';
import { loadGenModule } from '../../src/cli/scenario-file';

const gen = loadGenModule();
// eslint-disable-next-line @typescript-eslint/no-require-imports
const classic = require('../../gen/src/check/gen/scenarios/index.js') as typeof import('../../src/check/gen/scenarios/index');
const CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');

function run(spec: ScenarioSpec, reduction: 'source' | 'optimal', onProgress?: (p: ExploreProgress) => void, now?: () => number) {
  const engine = new Engine(gen, spec, contextFor(spec, {}), { monitorsFor: builtinMonitors });
  return explore(engine, { strategy: 'dpor', reduction, onProgress, now });
}

test('lastzero(N): Source-DPOR abandons most executions it begins; Optimal-DPOR begins only the complete ones, the same number of classes', () => {
  for (const n of [3, 5, 7]) {
    const spec = classic.lastZero(n) as unknown as ScenarioSpec;
    const source = run(spec, 'source');
    const optimal = run(spec, 'optimal');
    assert.ok(source.complete && optimal.complete);
    assert.ok(source.abandoned > 0, `Source-DPOR abandoned none on lastzero(${n}): the benchmark no longer shows the difference`);
    assert.equal(optimal.abandoned, 0, `lastzero(${n})`);
    assert.equal(optimal.wakeupMisses, 0);
    assert.equal(optimal.executions, source.executions - source.abandoned, `lastzero(${n}): one execution per class in both`);
  }
});

test('the progress gives the executions abandoned so far and, once alternatives wait, an estimate of the executions in all', () => {
  const spec = classic.lastZero(7) as unknown as ScenarioSpec;
  // A clock that moves 100 ms a call, so progress is reported often.
  let t = 0;
  const now = (): number => (t += 100);
  const seen: ExploreProgress[] = [];
  const r = run(spec, 'source', (p) => seen.push(p), now);
  assert.ok(seen.length > 10);
  assert.ok(seen.some((p) => p.abandoned > 0), 'Source-DPOR abandons executions on lastzero(7), and the progress says so');
  for (let k = 1; k < seen.length; k++) assert.ok(seen[k]!.abandoned >= seen[k - 1]!.abandoned);
  const estimates = seen.map((p) => p.estimate).filter((e): e is number => e !== null);
  assert.ok(estimates.length > 0, 'an estimate while alternatives wait');
  // An estimate, not a bound; but of the right order: within a factor of 10 of what the search took.
  const last = estimates[estimates.length - 1]!;
  assert.ok(last > r.executions / 10 && last < r.executions * 10, `estimate ${last}, took ${r.executions}`);
});

test('kvmmu check reports complete and abandoned executions apart, in text and JSON, with the reduction', () => {
  const text = spawnSync(process.execPath, [CLI, 'check', '--scenario', 'lastzero-10', '--reduction', 'source', '--workers', '1'], { encoding: 'utf8' });
  assert.equal(text.status, 0, text.stderr);
  assert.match(text.stdout, /dpor \(Source-DPOR\): 37274 executions/);
  assert.match(text.stdout, /3328 complete, 33946 abandoned as redundant .*: 11\.20 begun per class/);
  // One worker: the sequential search, whose reduction is Optimal-DPOR unless told (more workers split Source-DPOR).
  const json = spawnSync(process.execPath, [CLI, 'check', '--scenario', 'lastzero-10', '--workers', '1', '--json'], { encoding: 'utf8' });
  assert.equal(json.status, 0, json.stderr);
  const r = JSON.parse(json.stdout) as { reduction: string; executions: number; completeExecutions: number; abandoned: number; wakeupMisses: number; complete: boolean };
  assert.deepEqual(
    { reduction: r.reduction, executions: r.executions, completeExecutions: r.completeExecutions, abandoned: r.abandoned, wakeupMisses: r.wakeupMisses, complete: r.complete },
    { reduction: 'optimal', executions: 3328, completeExecutions: 3328, abandoned: 0, wakeupMisses: 0, complete: true },
  );
});
