// The registry of built-in scenarios (one per guard, DESIGN.md) and the non-KVM examples.

import type { ScenarioSpec } from '../scenario';
import { abaGfnPfn } from './aba-gfn-pfn';
import { dirtyBitLoss } from './dirty-bit-loss';
import { freeDuringWalk } from './free-during-walk';
import { notifierRace } from './notifier-race';
import { wpTlbFlush } from './wp-tlb-flush';
import { abbaDeadlock, atomicCounter, lostUpdate } from './examples';

/** The five built-ins, in DESIGN.md's order. */
export const BUILTIN_SCENARIOS: readonly ScenarioSpec<never>[] = [
  abaGfnPfn,
  wpTlbFlush,
  dirtyBitLoss,
  notifierRace,
  freeDuringWalk,
] as unknown as ScenarioSpec<never>[];

export const EXAMPLE_SCENARIOS: readonly ScenarioSpec<never>[] = [lostUpdate, atomicCounter, abbaDeadlock] as unknown as ScenarioSpec<never>[];
