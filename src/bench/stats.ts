// Summary statistics for benchmark samples: min / median / max.

import type { Summary } from './results';

export type { Summary };


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
