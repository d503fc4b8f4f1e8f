// Classic model-checking benchmarks as checker programs: lastzero(N) (N writers each copying their left neighbour's cell plus one, one reader scanning backwards for the last zero) and cas(N) (N threads each trying one compare-and-swap on one word).

import { defineScenario, threads, type ScenarioSpec } from '../scenario';

/**
 * lastzero(N) (Abdulla et al., "Source sets", POPL 2014): an array a[0..N] of zeros; thread 0 reads it from the
 * end for the last zero; thread i (1..N) sets a[i] = a[i-1] + 1. Source-DPOR begins many executions here that its
 * sleep sets then cut as redundant; optimal DPOR begins none.
 */
export function lastZero(n: number): ScenarioSpec<undefined> {
  return defineScenario<undefined>({
    name: `lastzero-${n}`,
    description: `lastzero(${n}): ${n} threads each set a[i] = a[i-1] + 1 while one thread reads the array backwards for the last zero.`,
    memory: { metaBytes: 4 * (n + 1) },
    threads: threads(n + 1, (vm, _d, i) => {
      if (i === 0) {
        for (let k = n; k >= 0; k--) if (vm.mem.load32(vm.word(4 * k)) === 0) break;
        return;
      }
      const left = vm.mem.load32(vm.word(4 * (i - 1)));
      vm.mem.store32(vm.word(4 * i), left + 1);
    }),
  });
}

/**
 * cas(N): N threads each compare-and-swap one word from 0 to their own number. One of them succeeds; the others
 * fail, and a failed compare-and-swap writes nothing: it is a read, and reads commute. So there are N classes of
 * executions (who wins), not N! orders of N writes.
 */
export function casRace(n: number): ScenarioSpec<undefined> {
  return defineScenario<undefined>({
    name: `cas-${n}`,
    description: `cas(${n}): ${n} threads each try to compare-and-swap one word from 0 to their own number; exactly one succeeds.`,
    memory: { metaBytes: 64 },
    threads: threads(n, (vm, _d, i) => {
      vm.mem.cmpxchg32(vm.word(0), 0, i + 1);
    }),
    check: (vm) => {
      const v = vm.mem.load32(vm.word(0));
      return v >= 1 && v <= n ? null : `the word is ${v}: no compare-and-swap succeeded`;
    },
  });
}
