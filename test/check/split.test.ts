// The split search (parallel DPOR's jobs, check/split.ts) against the sequential search: the same final states on random programs, the same verdicts on the built-in scenarios, and kvmmu check --workers 2 end to end.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { contextFor } from '../../src/check/check';
import { Engine } from '../../src/check/engine';
import { explore, type DonatedNode } from '../../src/check/explore';
import { exploreSplitInline } from '../../src/check/split';
import { builtinMonitors } from '../../src/check/invariants';
import type { ScenarioSpec } from '../../src/check/gen/scenario';
import { ALL_GUARDS, GUARDS } from '../../src/kvm/config';
import { rng } from '../helpers/rng';
import { lockyProgram, randomProgram, randomProgramScenario, recordingEngine, type Op } from '../helpers/random-program';

const { gen, spec } = randomProgramScenario('split-random');


type Run = 'dfs' | 'source' | 'split';

/** Every final state an exhaustive exploration reaches; `split` runs the split search, a job giving work away at every chance. */
function finalStates(program: Op[][], how: Run, seed = 1): Set<string> {
  const { engine, states } = recordingEngine(gen, spec, program);
  if (how === 'split') {
    const r = rng(seed);
    const res = exploreSplitInline(engine, { strategy: 'dpor', continueAfterViolation: true, split: () => r(3) > 0, pick: (n) => r(n) });
    assert.ok(res.complete, `split did not finish: ${JSON.stringify(program)}`);
  } else {
    const res = explore(engine, { strategy: how === 'dfs' ? 'dfs' : 'dpor', reduction: 'source', continueAfterViolation: true, maxExecutions: 200_000 });
    assert.ok(res.complete, `${how} did not finish: ${res.executions} executions, ${JSON.stringify(program)}`);
  }
  return states;
}

test('the split search (jobs taken in random order, work given away at random) reaches every final state exhaustive DFS reaches, on 200 random programs', () => {
  for (let seed = 1; seed <= 200; seed++) {
    const program = randomProgram(rng(seed * 7919));
    const dfs = finalStates(program, 'dfs');
    const split = finalStates(program, 'split', seed);
    const missing = [...dfs].filter((s) => !split.has(s));
    const extra = [...split].filter((s) => !dfs.has(s));
    assert.deepEqual({ missing, extra }, { missing: [], extra: [] }, `seed ${seed}: ${JSON.stringify(program)}`);
  }
});

/**
 * Source-DPOR for `first` executions, then its state handed over to the split search (jobs in random
 * order, work given away at random), which carries on: every final state either phase reached.
 */
function handedOverStates(program: Op[][], first: number, seed: number): Set<string> {
  const { engine, states } = recordingEngine(gen, spec, program);
  let nodes: DonatedNode[] | null = null;
  const seq = explore(engine, { strategy: 'dpor', reduction: 'source', continueAfterViolation: true, maxExecutions: first, onHandOff: (n) => (nodes = n) });
  if (seq.complete) return states;
  assert.ok(nodes !== null, 'a search stopped on its budget hands its state over');
  const r = rng(seed);
  const res = exploreSplitInline(engine, { strategy: 'dpor', continueAfterViolation: true, split: () => r(3) > 0, pick: (n) => r(n), handOff: nodes });
  assert.ok(res.complete, `the split search did not finish after the hand-off: ${JSON.stringify(program)}`);
  return states;
}

test('a Source-DPOR search handed over to the split search part way (after 1 to 12 executions) reaches every final state exhaustive DFS reaches, and no other, on 300 random programs', () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = rng(seed * 104_729);
    const program = seed % 2 === 0 ? randomProgram(r) : lockyProgram(r);
    const dfs = finalStates(program, 'dfs');
    const got = handedOverStates(program, 1 + r(12), seed);
    const missing = [...dfs].filter((x) => !got.has(x));
    const extra = [...got].filter((x) => !dfs.has(x));
    assert.deepEqual({ missing, extra }, { missing: [], extra: [] }, `seed ${seed}: ${JSON.stringify(program)}`);
  }
});

test('an Optimal-DPOR search is not handed over: converted to Source-DPOR alternatives, its state lost a class of executions', () => {
  // The lock-and-wait program on which the conversion lost one of 15 classes (campaign seed 1455): it stays sequential.
  const program = lockyProgram(rng(1455 * 7919));
  const { engine } = recordingEngine(gen, spec, program);
  let handed = false;
  const r = explore(engine, { strategy: 'dpor', reduction: 'optimal', continueAfterViolation: true, maxExecutions: 3, onHandOff: () => (handed = true) });
  assert.equal(r.complete, false);
  assert.equal(handed, false);
});

// eslint-disable-next-line @typescript-eslint/no-require-imports
const catalog = require('../../gen/src/check/gen/scenarios/index.js') as { BUILTIN_SCENARIOS: ScenarioSpec[]; EXAMPLE_SCENARIOS: ScenarioSpec[] };

test('the split search gives every built-in scenario the verdict of the sequential search, its guard on and off, from the start and carrying on from a sequential search', () => {
  for (const s of catalog.BUILTIN_SCENARIOS) {
    for (const guardOn of [true, false]) {
      const guardBit = s.guard !== undefined ? GUARDS[s.guard] : 0;
      const ctx = contextFor(s, { guards: guardOn ? ALL_GUARDS : ALL_GUARDS & ~guardBit });
      const seq = explore(new Engine(gen, s, ctx, { monitorsFor: builtinMonitors }), { strategy: 'dpor', reduction: 'source', preemptions: s.preemptions, maxExecutions: 3_000 });
      // Clean searches larger than that are left to the CLI test and bench/check.js (time).
      if (!seq.complete && seq.violation === null) continue;
      const r = rng(17);
      const split = exploreSplitInline(new Engine(gen, s, ctx, { monitorsFor: builtinMonitors }), { strategy: 'dpor', preemptions: s.preemptions, split: () => r(4) === 0, pick: (n) => r(n) });
      assert.equal(split.violation !== null, seq.violation !== null, `${s.name} guard ${guardOn ? 'on' : 'off'}`);
      if (seq.complete || seq.boundReached) assert.equal(split.complete, seq.complete, `${s.name} guard ${guardOn ? 'on' : 'off'}: exhaustive`);
      if (seq.violation !== null) assert.equal(split.violation!.violation.invariant, seq.violation.violation.invariant, `${s.name}: the invariant broken`);
      // The same, the split search carrying on from 20 executions of Source-DPOR (kvmmu check --reduction source past --split-after).
      let nodes: DonatedNode[] | null = null;
      const first = explore(new Engine(gen, s, ctx, { monitorsFor: builtinMonitors }), { strategy: 'dpor', reduction: 'source', preemptions: s.preemptions, maxExecutions: 20, onHandOff: (x) => (nodes = x) });
      if (first.violation !== null || first.complete) continue;
      const rest = exploreSplitInline(new Engine(gen, s, ctx, { monitorsFor: builtinMonitors }), { strategy: 'dpor', preemptions: s.preemptions, split: () => r(4) === 0, pick: (n) => r(n), handOff: nodes! });
      assert.equal(rest.violation !== null, seq.violation !== null, `${s.name} guard ${guardOn ? 'on' : 'off'}, handed over`);
      if (seq.complete || seq.boundReached) assert.equal(rest.complete, seq.complete, `${s.name} guard ${guardOn ? 'on' : 'off'}, handed over: exhaustive`);
    }
  }
});

const CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');
function check(args: string[]): Record<string, unknown> {
  const r = spawnSync(process.execPath, [CLI, 'check', ...args, '--json'], { encoding: 'utf8' });
  assert.ok(r.status === 0 || r.status === 1, r.stderr);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

test('kvmmu check --workers 2 gives the verdicts of --workers 1, and says how many workers and jobs', () => {
  for (const args of [['--scenario', 'lost-update'], ['--scenario', 'atomic-counter'], ['--scenario', 'dirty-bit-loss', '--guard', 'atomic-volatile-clear=off'], ['--scenario', 'dirty-bit-loss']]) {
    const one = check([...args, '--workers', '1']);
    const two = check([...args, '--workers', '2']);
    assert.equal(two.workers, 2);
    assert.equal(typeof two.jobs, 'number');
    assert.equal(two.reduction, 'source');
    assert.equal(two.complete, one.complete, args.join(' '));
    assert.equal((two.violation as { invariant: string } | null)?.invariant, (one.violation as { invariant: string } | null)?.invariant, args.join(' '));
  }
});

test('kvmmu check refuses --workers 0, and --reduction optimal on more than one worker', () => {
  const zero = spawnSync(process.execPath, [CLI, 'check', '--scenario', 'lost-update', '--workers', '0'], { encoding: 'utf8' });
  assert.notEqual(zero.status, 0);
  assert.match(zero.stderr, /--workers must be from 1/);
  const opt = spawnSync(process.execPath, [CLI, 'check', '--scenario', 'lost-update', '--workers', '2', '--reduction', 'optimal'], { encoding: 'utf8' });
  assert.notEqual(opt.status, 0);
  assert.match(opt.stderr, /--reduction optimal runs on one worker/);
  assert.equal(opt.stdout, '');
});

test('kvmmu check without --workers: a short check stays on one worker; one still running after --split-after splits over the cores, from the start after Optimal-DPOR, from where it stopped after Source-DPOR', { skip: os.availableParallelism() < 2 ? 'one core' : false }, () => {
  const short = check(['--scenario', 'dirty-bit-loss']);
  assert.equal(short.workers, 1);
  assert.equal(short.sequentialFirst, null);
  assert.equal(short.reduction, 'optimal');
  // wp-tlb-flush runs for seconds: with --split-after 0.2 it splits. After Optimal-DPOR (the default) the split
  // search starts afresh; after Source-DPOR it carries on from the sequential search's state, the totals counting both.
  for (const reduction of ['optimal', 'source']) {
    // (The default is Optimal-DPOR; asked for by name, it stays on one worker: its wakeup trees are not split.)
    const long = check(['--scenario', 'wp-tlb-flush', '--split-after', '0.2', ...(reduction === 'source' ? ['--reduction', 'source'] : [])]);
    assert.equal(long.workers, os.availableParallelism());
    assert.equal(long.reduction, 'source');
    const first = long.sequentialFirst as { executions: number; seconds: number; reduction: string; handedOver: boolean };
    assert.equal(first.reduction, reduction);
    assert.equal(first.handedOver, reduction === 'source');
    assert.ok(first.executions > 0 && first.seconds >= 0.2, JSON.stringify(first));
    if (reduction === 'source') assert.ok((long.executions as number) > first.executions);
    assert.equal(long.complete, true);
  }
});
