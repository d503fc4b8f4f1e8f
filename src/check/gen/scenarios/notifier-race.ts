// Scenario notifier-race (guard notifier-retry): a fault looks up a pfn, the host unmaps and reuses it, the fault installs it anyway.

import { defineScenario, type ScenarioVm } from '../scenario';
import { tinyVm } from './common';

const X = 9;
const Z = 12;

/** vCPU 0's slow fault on X beside the host swapping X out and reusing its frame for Z; shared with tdp-zap-vs-fault. */
export const faultBesideSwapOut = {
  machine: () => tinyVm(1, { swapSlots: 4 }),
  setup(vm: ScenarioVm) {
    vm.powerOn(16);
    vm.host.writeUser64(X, 0, 0x1111n); // X is present in the host, not yet mapped by an SPTE
    return { gva: vm.addr(X) };
  },
  threads: {
    'vCPU 0': (vm: ScenarioVm, d: { gva: number }) => {
      vm.program(0, [{ op: 'write', gva: d.gva, value: 0x2222n }]);
    },
    host: (vm: ScenarioVm) => {
      vm.host.swapOut(X);
      vm.host.swapIn(Z); // takes the most recently freed frame
    },
  },
  check(vm: ScenarioVm) {
    const z = vm.host.readUser64(Z, 0);
    const x = vm.host.readUser64(X, 0);
    if (z !== 0n) return `gfn ${Z} holds 0x${z.toString(16)}, written by the guest to gfn ${X} through a stale mapping`;
    return x === 0x2222n ? null : `gfn ${X} holds 0x${x.toString(16)}; the guest wrote 0x2222`;
  },
};

export const notifierRace = defineScenario({
  name: 'notifier-race',
  description:
    "A vCPU's slow fault looks up gfn X's frame; before it takes mmu_lock the host swaps X out (an MMU-notifier " +
    'invalidation) and reuses the frame for gfn Z. Without the invalidation-sequence check the fault maps the freed ' +
    "frame, and the guest's write to X lands in Z.",
  guard: 'notifier-retry',
  modes: ['direct', 'shadow', 'tdp'],
  ...faultBesideSwapOut,
});
