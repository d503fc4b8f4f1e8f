// The benchmarks' statistics: min / median / max, the order-statistic interval for a median (checked against binomial sums worked by hand), and the trial-by-trial comparison of bench scale's gains.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { median, medianInterval, summarize } from '../../src/bench/stats';
import { trialsFastGainedMore, type ScalePoint } from '../../src/bench/results';

/** 1 - 2 P(B <= j - 1) for B ~ Binomial(n, 1/2), by exact integer sums (n small). */
function coverageOf(n: number, j: number): number {
  let c = 1;
  let below = 0;
  for (let k = 0; k < j; k++) {
    below += c;
    c = (c * (n - k)) / (k + 1);
  }
  return 1 - (2 * below) / 2 ** n;
}

const ramp = (n: number): number[] => Array.from({ length: n }, (_, i) => i + 1);

test('median and summarize take the middle (or the mean of the two middles) of unsorted samples', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.deepEqual(summarize([2.5, 0.5, 1.5]), { min: 0.5, median: 1.5, max: 2.5 });
  assert.throws(() => median([]), /no samples/);
});

test('the median interval of 19 samples is the 5th to the 15th, covering 98.1% (the 6th to 14th would cover only 93.6%)', () => {
  const shuffled = [12, 3, 19, 7, 1, 15, 9, 5, 17, 11, 2, 14, 6, 18, 8, 4, 16, 10, 13];
  const m = medianInterval(shuffled);
  assert.equal(m.low, 5);
  assert.equal(m.high, 15);
  assert.ok(Math.abs(m.coverage - coverageOf(19, 5)) < 1e-12);
  assert.ok(Math.abs(m.coverage - (1 - 2 * (1 + 19 + 171 + 969 + 3876) / 2 ** 19)) < 1e-12);
  assert.ok(coverageOf(19, 6) < 0.95 && m.coverage >= 0.95);
});

test('for every n up to 60 the interval is the widest-j one whose coverage reaches the level', () => {
  for (const level of [0.9, 0.95, 0.99]) {
    for (let n = 1; n <= 60; n++) {
      const m = medianInterval(ramp(n), level);
      const j = m.low;
      assert.equal(m.high, n + 1 - j, `n=${n}: symmetric order statistics`);
      assert.ok(Math.abs(m.coverage - coverageOf(n, j)) < 1e-9, `n=${n}: coverage of j=${j}`);
      if (j > 1) assert.ok(m.coverage >= level, `n=${n}: j=${j} reaches ${level}`);
      if (2 * (j + 1) <= n + 1) assert.ok(coverageOf(n, j + 1) < level, `n=${n}: j=${j + 1} would not reach ${level}`);
    }
  }
});

test('with too few samples the interval is [min, max] and says it covers less than asked', () => {
  const m = medianInterval([2.1, 1.9, 2.4, 1.7, 2.0]);
  assert.deepEqual(m, { low: 1.7, high: 2.4, coverage: 1 - 2 / 32 });
  assert.ok(m.coverage < 0.95);
  assert.deepEqual(medianInterval([1.5]), { low: 1.5, high: 1.5, coverage: 0 });
  assert.ok(medianInterval(ramp(6)).coverage >= 0.95, '6 samples are the fewest for 95%');
  assert.throws(() => medianInterval([]), /no samples/);
});

test('a large sample stays finite where 2^-n underflows, and narrows around the middle', () => {
  const n = 2001;
  const m = medianInterval(ramp(n));
  assert.ok(m.coverage >= 0.95 && m.coverage < 0.96, `coverage ${m.coverage}`);
  // Normal approximation: j is about n/2 - 1.96 sqrt(n)/2, i.e. near 957.
  assert.ok(Math.abs(m.low - 957) <= 2, `low ${m.low}`);
  assert.equal(m.high, n + 1 - m.low);
});

test('trialsFastGainedMore compares the two ways within each trial, not their medians', () => {
  const pt = (vcpus: number, fastPath: boolean, pagesPerSecond: number): ScalePoint => ({ vcpus, fastPath, pagesPerSecond, redirtySeconds: 1, slowFaults: 0, lockContended: 0 });
  // Gains (fast, slow): (1.9, 1.4), (1.5, 1.6), (1.2, 1.2): only the first is a win; a tie is not.
  const trial = (f1: number, f2: number, s1: number, s2: number) => ({ points: [pt(1, true, f1), pt(1, false, s1), pt(2, true, f2), pt(2, false, s2)] });
  const trials = [trial(10, 19, 5, 7), trial(20, 30, 5, 8), trial(10, 12, 5, 6)];
  assert.equal(trialsFastGainedMore({ config: { maxVcpus: 2 } as never, trials }), 1);
  assert.equal(trialsFastGainedMore({ config: { maxVcpus: 1 } as never, trials }), null);
});
