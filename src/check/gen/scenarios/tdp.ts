// Scenarios for the TDP MMU's own guards: rcu-deferred-free and write-lock-exclusion.

import { defineScenario } from '../scenario';
import { fastPathBesideZapAll } from './free-during-walk';
import { faultBesideSwapOut } from './notifier-race';

export const tdpRcuFree = defineScenario({
  name: 'tdp-rcu-free',
  description:
    "A vCPU's fast path walks the TDP page tables without mmu_lock, inside an RCU read section, while the host zaps " +
    'everything under the write lock and tears the tables down. Torn-down tables must wait for a grace period before ' +
    'they are freed; freed at once, the fast path walks freed tables, which may already map something else.',
  guard: 'rcu-deferred-free',
  ...fastPathBesideZapAll,
  modes: ['tdp'],
});

export const tdpZapVsFault = defineScenario({
  name: 'tdp-zap-vs-fault',
  description:
    "The host swaps gfn X out (an MMU-notifier invalidation) and reuses its frame for gfn Z while a vCPU's fault on " +
    'X runs under the read lock. The notifier zaps with mmu_lock held for write, so it runs before the fault checks the ' +
    'invalidation sequence or after it has mapped X (and then zaps it); taken for read, it runs beside the fault, ' +
    'which saw no invalidation and maps the frame now Z\'s.',
  guard: 'write-lock-exclusion',
  ...faultBesideSwapOut,
  modes: ['tdp'],
});
