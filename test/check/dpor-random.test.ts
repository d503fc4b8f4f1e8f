// DPOR against exhaustive DFS on random small programs over every access-layer operation kind: both must reach the same set of final states.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { explore, REDUCTIONS, type Reduction } from '../../src/check/explore';
import { rng } from '../helpers/rng';
import { randomProgram, randomProgramScenario, recordingEngine, type Op } from '../helpers/random-program';

const { gen, spec } = randomProgramScenario('dpor-random');

/** Every final state an exhaustive exploration reaches: how it ended, the words and the data bytes. */
function finalStates(program: Op[][], strategy: 'dfs' | 'dpor', reduction?: Reduction, preemptions?: number): Set<string> {
  const { engine, states } = recordingEngine(gen, spec, program);
  const res = explore(engine, { strategy, reduction, preemptions, continueAfterViolation: true, maxExecutions: 200_000 });
  // Under a bound, complete means the bound cut nothing; finished (nothing left pending) is what is needed here.
  assert.ok(res.complete || (preemptions !== undefined && res.pending === 0 && res.executions < 200_000), `${strategy} did not finish: ${res.executions} executions, ${JSON.stringify(program)}`);
  return states;
}

test('DPOR (Source and Optimal) reaches every final state exhaustive DFS reaches, on 300 random programs over every operation kind (blocked waits, reader-writer locks and unreleased locks included)', () => {
  for (let seed = 1; seed <= 300; seed++) {
    const program = randomProgram(rng(seed * 7919));
    const dfs = finalStates(program, 'dfs');
    for (const reduction of REDUCTIONS) {
      const dpor = finalStates(program, 'dpor', reduction);
      const missing = [...dfs].filter((s) => !dpor.has(s));
      const extra = [...dpor].filter((s) => !dfs.has(s));
      assert.deepEqual({ missing, extra }, { missing: [], extra: [] }, `${reduction}, seed ${seed}: ${JSON.stringify(program)}`);
    }
  }
});

test("Optimal-DPOR reverses a blocked wait's race as a whole sequence: a wait that in one order never runs still gets the order where it runs before the store that blocks it, after the other thread's store", () => {
  // Found by the test above over more seeds (seed 1223 of 2,300): B's wait for word 0 to leave 2 runs only when B goes
  // before A's store; the state where also C's 64-bit store comes first was missed when the wait's race was
  // reversed by scheduling B alone (Source-DPOR's rule), since a sleeping A then covered C's race.
  const program: Op[][] = [
    [{ k: 'store32', l: 0, v: 2, w: 0 }],
    [{ k: 'store64', l: 1, v: 2, w: 2, then: { k: 'xchg32', l: 2, v: 1, w: 2 }, when: 0 }, { k: 'waitWhile32', l: 0, v: 1, w: 2 }],
    [{ k: 'store64', l: 1, v: 3, w: 0 }],
  ];
  const dfs = finalStates(program, 'dfs');
  assert.equal(dfs.size, 4, 'the wait passes or blocks for good, with either 64-bit store last');
  for (const reduction of REDUCTIONS) assert.deepEqual([...finalStates(program, 'dpor', reduction)].sort(), [...dfs].sort(), reduction);
});

/** Final states DPOR under a preemption bound misses (`missing`) and adds (`extra`) against DFS under the same bound. */
function boundedDifferences(seeds: number): { missing: string[]; extra: string[] } {
  const missing: string[] = [];
  const extra: string[] = [];
  for (let seed = 1; seed <= seeds; seed++) {
    const program = randomProgram(rng(seed * 7919));
    for (const bound of [0, 1, 2, 3]) {
      const dfs = finalStates(program, 'dfs', undefined, bound);
      for (const reduction of REDUCTIONS) {
        const dpor = finalStates(program, 'dpor', reduction, bound);
        if ([...dfs].some((s) => !dpor.has(s))) missing.push(`${reduction}, bound ${bound}, seed ${seed}`);
        if ([...dpor].some((s) => !dfs.has(s))) extra.push(`${reduction}, bound ${bound}, seed ${seed}: ${JSON.stringify(program)}`);
      }
    }
  }
  return { missing, extra };
}

test('DPOR under a preemption bound of 0 to 3 reaches no final state that DFS under the same bound does not: every execution it runs to the end is within the bound', () => {
  assert.deepEqual(boundedDifferences(300).extra, []);
});

// A known gap (explore.ts exploreWith): DPOR under a bound only prunes at it, so it misses final states DFS reaches
// within the bound; on 2026-12-07, 15 of the first 31 programs here, mostly at bound 0 (BPOR's conservative branches made it
// none of 3,000, at a cost too high for the default). Unskip when a bounded search is a proof within its bound.
test('DPOR under a preemption bound of 0 to 3 reaches every final state DFS under the same bound reaches', { skip: 'known gap: a bounded DPOR search is a bug search, not a proof within the bound (explore.ts exploreWith)' }, () => {
  assert.deepEqual(boundedDifferences(300).missing, []);
});
