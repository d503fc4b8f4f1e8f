// Optimal-DPOR's races of blocked threads (held locks, waits) against exhaustive DFS: every class of executions DFS reaches, each explored once, and no execution begun that the sleep sets then abandon.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { explore, REDUCTIONS, type Reduction } from '../../src/check/explore';
import { rng } from '../helpers/rng';
import { lockyProgram, randomProgramScenario, recordingEngine, type Op } from '../helpers/random-program';

const { gen, spec } = randomProgramScenario('dpor-blocked');

/** An exhaustive exploration's classes of executions (each with how often it was explored), final states and result. */
function explored(program: Op[][], strategy: 'dfs' | 'dpor', reduction?: Reduction) {
  const { engine, states, classes } = recordingEngine(gen, spec, program, true);
  const res = explore(engine, { strategy, reduction, continueAfterViolation: true, maxExecutions: 200_000 });
  assert.ok(res.complete, `${strategy} did not finish: ${JSON.stringify(program)}`);
  return { states, classes, res };
}

/** Optimal-DPOR against DFS on `program`: what it got wrong (nothing, for a pass). */
function optimalFaults(program: Op[][]): Record<string, number> {
  const dfs = explored(program, 'dfs');
  const opt = explored(program, 'dpor', 'optimal');
  return {
    statesMissed: [...dfs.states].filter((s) => !opt.states.has(s)).length,
    classesMissed: [...dfs.classes.keys()].filter((c) => !opt.classes.has(c)).length,
    classesTwice: [...opt.classes.values()].filter((k) => k > 1).length,
    abandoned: opt.res.abandoned,
    wakeupMisses: opt.res.wakeupMisses,
  };
}
const NONE = { statesMissed: 0, classesMissed: 0, classesTwice: 0, abandoned: 0, wakeupMisses: 0 };

test('a wait blocked for good by a word that held the value waited out all along races with no write: one execution, none abandoned', () => {
  // A waits while word 0 is 1 and it always is (B only stores 1 again); C's second wait needs A. The wait's race
  // with B's store was reversed by scheduling every thread at its state (Source-DPOR's rule), and the execution
  // begun with C there was abandoned (seed 1547 of lockyProgram).
  const program: Op[][] = [
    [{ k: 'waitWhile32', l: 0, v: 1, w: 1 }, { k: 'fetchAdd32', l: 2, v: 1, w: 1 }, { k: 'store32', l: 1, v: 2, w: 2 }],
    [{ k: 'store32', l: 0, v: 1, w: 1 }, { k: 'waitWhile32', l: 0, v: 3, w: 2 }, { k: 'cmpxchg32', l: 0, v: 1, w: 0 }],
    [{ k: 'waitWhile32', l: 2, v: 3, w: 1 }, { k: 'waitWhile32', l: 2, v: 1, w: 0 }],
  ];
  assert.deepEqual(optimalFaults(program), NONE);
  assert.equal(explored(program, 'dpor', 'optimal').res.executions, 1);
});

test('a wait that went through only because of the write it read is reversed before the write before it, where the word held another value (a frozen entry and its replacement)', () => {
  // A freezes word 1 (stores 3) and then replaces it (stores 2); B waits while it is 3. Before the replacement B
  // would block, so that order is no alternative; before the freeze it goes through.
  const program: Op[][] = [
    [{ k: 'store32', l: 1, v: 3, w: 0 }, { k: 'store32', l: 1, v: 2, w: 0 }],
    [{ k: 'waitWhile32', l: 1, v: 0, w: 3 }],
    [],
  ];
  assert.deepEqual(optimalFaults(program), NONE);
  assert.equal(explored(program, 'dpor', 'optimal').res.executions, 2);
});

test('a wait whose writes found the value waited out several times: every class DFS reaches, once each (seed 17813 of lockyProgram)', () => {
  // Reversing each wait at the write it read, though it could not run there, lost 3 of these 224 classes (not a
  // final state) after the wakeup sequence's last step found its thread blocked.
  const program: Op[][] = [
    [{ k: 'waitWhile32', l: 1, v: 1, w: 1 }, { k: 'store32', l: 1, v: 3, w: 0 }, { k: 'waitWhile32', l: 2, v: 2, w: 2 }],
    [{ k: 'waitWhile32', l: 1, v: 3, w: 1 }, { k: 'fetchAdd32', l: 1, v: 1, w: 2 }, { k: 'fetchAdd32', l: 2, v: 2, w: 0 }],
    [{ k: 'store32', l: 1, v: 3, w: 2 }, { k: 'waitWhile32', l: 1, v: 3, w: 2 }, { k: 'store32', l: 1, v: 3, w: 2 }, { k: 'cmpxchg32', l: 0, v: 3, w: 2 }],
  ];
  assert.deepEqual(optimalFaults(program), NONE);
});

test('on 400 random programs of locks and waits released late, Optimal-DPOR explores each class DFS reaches exactly once, abandons none and follows every wakeup sequence to its end; Source-DPOR reaches every class too', () => {
  const faults: string[] = [];
  for (let seed = 1; seed <= 400; seed++) {
    const program = lockyProgram(rng(seed * 7919));
    const f = optimalFaults(program);
    if (JSON.stringify(f) !== JSON.stringify(NONE)) faults.push(`seed ${seed}: ${JSON.stringify(f)}: ${JSON.stringify(program)}`);
    if (seed % 4 === 0) {
      const dfs = explored(program, 'dfs');
      for (const reduction of REDUCTIONS) {
        const d = explored(program, 'dpor', reduction);
        const lost = [...dfs.classes.keys()].filter((c) => !d.classes.has(c)).length;
        if (lost > 0) faults.push(`${reduction}, seed ${seed}: ${lost} classes missed`);
      }
    }
  }
  assert.deepEqual(faults, []);
});
