// An example scenario file for `kvmmu check --file`: the host enables dirty logging on a 2 MiB huge page (eager splitting, then write-protection) while two vCPUs write it, then takes the log.
import { defineScenario } from 'kvmmu/scenario';

export const hugeSplitLog = defineScenario({
  name: 'huge-split-log',
  description:
    'Guest memory is one 2 MiB HugeTLB page mapped by one writable huge SPTE. The host enables dirty logging ' +
    '(in tdp mode: split the huge SPTE into 512 entries, then write-protect them; in direct mode, which does not ' +
    'split eagerly: write-protect the huge SPTE) and takes the log, while vCPU 0 writes ' +
    'page 2 and vCPU 1 writes page 9: every write after logging began must be logged, and none lost.',
  modes: ['tdp', 'direct'],
  machine: () => ({ vcpus: 2, memBytes: 512 * 4096, hostFrames: 520, spPages: 24, tlbEntries: 4, hugePages: true }),
  setup(vm) {
    vm.powerOn(16);
    vm.program(0, [{ op: 'write', gva: vm.addr(0), value: 1n }]); // one huge SPTE, writable
    return { a: vm.addr(2), b: vm.addr(9) };
  },
  threads: {
    'vCPU 0': (vm, d) => {
      vm.program(0, [{ op: 'write', gva: d.a, value: 2n }]);
    },
    'vCPU 1': (vm, d) => {
      vm.program(1, [{ op: 'write', gva: d.b, value: 3n }]);
    },
    host: (vm) => {
      vm.kvm.dirtyLog.enable(0);
      vm.kvm.dirtyLog.get(0, new Int32Array(16));
    },
  },
  check(vm) {
    const a = vm.host.readUser64(2, 0);
    const b = vm.host.readUser64(9, 0);
    return a === 2n && b === 3n ? null : `pages 2 and 9 hold ${a} and ${b}; the vCPUs wrote 2 and 3`;
  },
});
