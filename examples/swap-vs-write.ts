// Example scenario file: an MMU race, a guest write through the fast path while the host swaps the page out; with the guard atomic-volatile-clear off the write is lost.
import { defineScenario } from 'kvmmu/scenario';

/** The guest page (gfn) the race is about. */
const PAGE = 4;

export const swapVsWrite = defineScenario({
  name: 'swap-vs-write',
  description:
    `vCPU 0 writes page ${PAGE}, write-protected for dirty logging (so the fast path makes its SPTE writable again), ` +
    'while the host swaps the page out: the swapped-out copy must hold the write.',
  modes: ['direct', 'shadow', 'tdp'],
  machine: () => ({ vcpus: 1, memBytes: 24 * 4096, hostFrames: 32, swapSlots: 4, spPages: 24, tlbEntries: 4 }),
  setup(vm) {
    vm.powerOn(16);
    vm.program(0, [{ op: 'write', gva: vm.addr(PAGE), value: 1n }]);
    vm.host.swapOut(PAGE); // the swap copy holds 1 ...
    vm.host.swapIn(PAGE); // ... and stays valid: the frame is clean
    vm.program(0, [{ op: 'read', gva: vm.addr(PAGE) }]); // mapped again, accessed, not dirty
    vm.kvm.dirtyLog.enable(0); // the SPTE loses W; the next write takes the fast path
    return { gva: vm.addr(PAGE) };
  },
  threads: {
    'vCPU 0': (vm, d) => {
      vm.program(0, [{ op: 'write', gva: d.gva, value: 2n }]);
    },
    host: (vm) => {
      vm.host.swapOut(PAGE);
    },
  },
  check(vm) {
    const v = vm.host.readUser64(PAGE, 0);
    return v === 2n ? null : `page ${PAGE} reads ${v} after the swap-out, but the guest wrote 2`;
  },
});
