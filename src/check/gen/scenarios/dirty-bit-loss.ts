// Scenario dirty-bit-loss (seed 3, guard atomic-volatile-clear): swap-out clears an SPTE while the fast path makes it writable and the guest dirties it.

import { defineScenario, type ScenarioVm } from '../scenario';
import { tinyVm } from './common';

const X = 3;

/** The guest's write to X (its SPTE write-protected for dirty logging) beside a swap-out of X; shared with tdp-volatile-xchg. */
export const dirtyLossBody = {
  machine: () => tinyVm(1, { swapSlots: 4 }),
  setup(vm: ScenarioVm) {
    vm.powerOn(16);
    vm.program(0, [{ op: 'write', gva: vm.addr(X), value: 1n }]);
    vm.host.swapOut(X); // the swap copy now holds 1
    vm.host.swapIn(X); // a clean frame; the swap copy stays valid
    vm.program(0, [{ op: 'read', gva: vm.addr(X) }]); // SPTE: W, A, no D
    vm.kvm.dirtyLog.enable(0); // SPTE: no W, A, no D, MMU-writable
    return { gva: vm.addr(X) };
  },
  threads: {
    'vCPU 0': (vm: ScenarioVm, d: { gva: number }) => {
      vm.program(0, [{ op: 'write', gva: d.gva, value: 2n }]);
    },
    host: (vm: ScenarioVm) => {
      vm.host.swapOut(X);
    },
  },
  check(vm: ScenarioVm) {
    const v = vm.host.readUser64(X, 0);
    return v === 2n ? null : `gfn ${X} reads ${v} after the swap-out; the guest wrote 2: its write was lost`;
  },
};

export const dirtyBitLoss = defineScenario({
  name: 'dirty-bit-loss',
  description:
    'A read-only, accessed, MMU-writable SPTE (write-protected for dirty logging) is cleared by a swap-out while the ' +
    "fast path makes it writable and the guest's write sets its Dirty bit. A plain store in the clear loses that D bit: " +
    'swap-out skips the write-back and the write is gone. (With page marking at fault time, KVM since 6.13, the ' +
    'fault already marked the page dirty and nothing is lost.)',
  guard: 'atomic-volatile-clear',
  modes: ['direct', 'shadow', 'tdp'],
  ...dirtyLossBody,
});
