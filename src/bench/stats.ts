// Summary statistics for benchmark samples: min / median / max, and a distribution-free interval for the median.

import type { MedianInterval, Summary } from './results';

export type { MedianInterval, Summary };

// Node 20's global `performance` is an accessor. Read after a hot loop, it
// deoptimizes the loop's function, and the bailout (about 0.2 ms) lands inside
// the timed region; so it is read once, here.
const perf = performance;

/** Milliseconds from a monotonic clock, for timed regions around hot loops. */
export function now(): number {
  return perf.now();
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error('median of no samples');
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function summarize(xs: readonly number[]): Summary {
  if (xs.length === 0) throw new Error('summary of no samples');
  return { min: Math.min(...xs), median: median(xs), max: Math.max(...xs) };
}

/**
 * The order-statistic interval for a median: with the n samples sorted,
 * [x(j), x(n+1-j)] brackets the population's median unless j or more samples
 * fall on one side of it, so it covers it with probability 1 - 2 P(B < j) for
 * B ~ Binomial(n, 1/2) (when the samples are independent and the distribution
 * continuous). Takes the largest j whose coverage is at least `level`; with too
 * few samples for that (fewer than 6 for 95%) it is [min, max], whose coverage
 * is then below `level` and says so.
 */
export function medianInterval(xs: readonly number[], level = 0.95): MedianInterval {
  const n = xs.length;
  if (n === 0) throw new Error('median interval of no samples');
  const s = [...xs].sort((a, b) => a - b);
  // P(B = k) in log space (2^-n underflows to 0 past n = 1074); cdf = P(B <= j - 1).
  let logPmf = -n * Math.LN2;
  let cdf = Math.exp(logPmf);
  let j = 1;
  let coverage = 1 - 2 * cdf;
  while (2 * (j + 1) <= n + 1) {
    logPmf += Math.log(n - j + 1) - Math.log(j); // P(B = j) from P(B = j - 1)
    const wider = 1 - 2 * (cdf + Math.exp(logPmf)); // coverage of j + 1
    if (wider < level) break;
    cdf += Math.exp(logPmf);
    j++;
    coverage = wider;
  }
  return { low: s[j - 1]!, high: s[n - j]!, coverage };
}
