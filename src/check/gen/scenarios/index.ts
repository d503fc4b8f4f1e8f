// The registry of built-in scenarios (one per guard, DESIGN.md) and the non-KVM examples.

import type { ScenarioSpec } from '../scenario';
import { abaGfnPfn } from './aba-gfn-pfn';
import { dirtyBitLoss } from './dirty-bit-loss';
import { freeDuringWalk } from './free-during-walk';
import { notifierRace } from './notifier-race';
import { wpTlbFlush } from './wp-tlb-flush';
import { tdpRcuFree, tdpRemovedPtFreeze, tdpZapVsFault } from './tdp';
import { REAL_RACE_SCENARIOS } from './real-races';
import { abbaDeadlock, atomicCounter, lostUpdate } from './examples';

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

export const EXAMPLE_SCENARIOS: readonly ScenarioSpec<never>[] = [lostUpdate, atomicCounter, abbaDeadlock] as unknown as ScenarioSpec<never>[];
