// An example scenario file for `kvmmu check --file`: two vCPUs write one dirty-logged page while the host runs a dirty-log get (a search large enough to split over workers).
import { defineScenario } from 'kvmmu/scenario';

export const dirtyLogTwoVcpus = defineScenario({
  name: 'dirty-log-two-vcpus',
  description: 'Two vCPUs write the same dirty-logged page while the host runs KVM_GET_DIRTY_LOG: both writes land, and the dirty-log monitors hold on every interleaving.',
  modes: ['direct', 'shadow', 'tdp'],
  machine: () => ({ vcpus: 2, memBytes: 24 * 4096, hostFrames: 32, spPages: 24, tlbEntries: 4 }),
  setup(vm) {
    vm.powerOn(16); // guest page tables in shadow mode, then every vCPU's MMU root
    vm.program(0, [{ op: 'read', gva: vm.addr(3) }]);
    vm.kvm.dirtyLog.enable(0); // the SPTE loses W: the next write faults
    return { gva: vm.addr(3), words: vm.kvm.dirtyLog.words(0) };
  },
  threads: {
    'vCPU 0': (vm, d) => {
      vm.program(0, [{ op: 'write', gva: d.gva, value: 1n }]);
    },
    'vCPU 1': (vm, d) => {
      vm.program(1, [{ op: 'write', gva: d.gva + 8, value: 2n }]);
    },
    host: (vm, d) => {
      vm.kvm.dirtyLog.get(0, new Int32Array(d.words));
    },
  },
  check(vm) {
    const a = vm.host.readUser64(3, 0);
    const b = vm.host.readUser64(3, 8);
    return a === 1n && b === 2n ? null : `page 3 holds ${a}, ${b}; the vCPUs wrote 1 and 2`;
  },
});
