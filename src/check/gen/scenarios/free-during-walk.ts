// Scenario free-during-walk (guard lockless-walk-sync): shadow pages are zapped and freed while a vCPU's fast path walks them.

import { defineScenario, type ScenarioVm } from '../scenario';
import { tinyVm } from './common';

const A = 3;

/**
 * vCPU 0's write to A takes the fast path (A's SPTE is write-protected for dirty logging) while the host zaps
 * every shadow page; shared with the TDP MMU's tdp-rcu-free, which guards the other side of the same walk.
 */
export const fastPathBesideZapAll = {
  machine: () => tinyVm(1),
  setup(vm: ScenarioVm) {
    vm.powerOn(16);
    vm.program(0, [{ op: 'read', gva: vm.addr(A) }]);
    vm.kvm.dirtyLog.enable(0); // the SPTE is write-protected: the next write takes the fast path
    return { gva: vm.addr(A) };
  },
  threads: {
    'vCPU 0': (vm: ScenarioVm, d: { gva: number }) => {
      vm.program(0, [{ op: 'write', gva: d.gva, value: 5n }]);
    },
    host: (vm: ScenarioVm) => {
      vm.kvm.mmu.kvmMmuZapAll();
    },
  },
  check(vm: ScenarioVm, d: { gva: number }) {
    const v = vm.host.readUser64(A, 0);
    void d;
    return v === 5n ? null : `gfn ${A} holds ${v}; the guest wrote 5`;
  },
};

export const freeDuringWalk = defineScenario({
  name: 'free-during-walk',
  description:
    "A vCPU's fast path walks the shadow page tables without mmu_lock while the host zaps every shadow page. The " +
    'zap frees pages only after a remote TLB flush, which waits for vCPUs reading shadow page tables — unless the ' +
    'walker does not announce itself, and then it reads pages that were freed and may be reused.',
  guard: 'lockless-walk-sync',
  modes: ['direct', 'shadow', 'tdp'],
  ...fastPathBesideZapAll,
});
