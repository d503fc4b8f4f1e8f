// The registry of built-in scenarios (one per guard, DESIGN.md) and the non-KVM examples, classic benchmarks included.

import type { ScenarioSpec } from '../scenario';
import { abaGfnPfn } from './aba-gfn-pfn';
import { dirtyBitLoss } from './dirty-bit-loss';
import { freeDuringWalk } from './free-during-walk';
import { notifierRace } from './notifier-race';
import { wpTlbFlush } from './wp-tlb-flush';
import { tdpRcuFree, tdpRemovedPtFreeze, tdpZapVsFault } from './tdp';
import { REAL_RACE_SCENARIOS } from './real-races';
import { abbaDeadlock, atomicCounter, lostUpdate } from './examples';
import { casRace, lastZero } from './classic';

/** The built-ins: one per guard (DESIGN.md's five, then the TDP MMU's), then the races KVM really had (KVM-BUGS.md). */
export const BUILTIN_SCENARIOS: readonly ScenarioSpec<never>[] = [
  abaGfnPfn,
  wpTlbFlush,
  dirtyBitLoss,
  notifierRace,
  freeDuringWalk,
  tdpRcuFree,
  tdpZapVsFault,
  tdpRemovedPtFreeze,
  ...REAL_RACE_SCENARIOS,
] as unknown as ScenarioSpec<never>[];

/** Sizes of the classic benchmarks kept in the catalogue (bench/check.js measures more). */
export const CLASSIC_SIZES = { lastzero: 10, cas: 8 } as const;

export const EXAMPLE_SCENARIOS: readonly ScenarioSpec<never>[] = [
  lostUpdate,
  atomicCounter,
  abbaDeadlock,
  lastZero(CLASSIC_SIZES.lastzero),
  casRace(CLASSIC_SIZES.cas),
] as unknown as ScenarioSpec<never>[];

export { casRace, lastZero };
