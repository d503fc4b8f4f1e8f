// Summary statistics for benchmark samples: min / median / max.

import type { Summary } from './results';

export type { Summary };

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
