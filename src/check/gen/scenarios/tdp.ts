// Scenarios for the TDP MMU's own guards: rcu-deferred-free, write-lock-exclusion and freeze-removed-pt.

import { defineScenario } from '../scenario';
import { tinyVm } from './common';
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

/**
 * The freeze of a torn-down table's entries ("Mark SPTEs in disconnected pages as removed", 2021): under the read
 * lock a fault may still hold a pointer into a table another thread is tearing down.
 */
export const tdpRemovedPtFreeze = defineScenario({
  name: 'tdp-removed-pt-freeze',
  description:
    'Guest memory is one 2 MiB HugeTLB page, mapped by 4 KiB SPTEs in table T while dirty logging was on. The host ' +
    'turns logging off. vCPU 0, whose fault on page 5 began while logging was on, walks into T to map 4 KiB; vCPU 1, ' +
    'faulting on page 9 after logging went off, maps the whole 2 MiB with one huge SPTE and tears T down, under the ' +
    'read lock too. Each entry of T must be frozen as it is torn down: cleared plainly, vCPU 0 sets its entry after the ' +
    'teardown passed it, and the mapping vanishes with the table.',
  guard: 'freeze-removed-pt',
  modes: ['tdp'],
  // Three threads, each taking kvm->srcu, RCU and mmu_lock for read: the largest built-in. Exhaustive with the guard
  // on in 40,786 executions (Source-DPOR), 90 s on two workers (2026-12-07); it carried a preemption bound of 3
  // before the checker split over cores, and a bounded search proves nothing (README, "a bug search").
  machine: () => tinyVm(2, { memBytes: 512 * 4096, hostFrames: 512 + 8, hugePages: true, eagerSplit: false }),
  setup(vm) {
    vm.powerOn(16);
    vm.kvm.dirtyLog.enable(0);
    vm.program(0, [{ op: 'write', gva: vm.addr(3), value: 1n }]); // table T, mapping page 3
    return { a: vm.addr(5), b: vm.addr(9) };
  },
  threads: {
    // The fault handlers themselves (the VM exits for the two reads already taken): the walks, guest entries and
    // TLB fills around them only multiply the interleavings.
    'vCPU 0': (vm, d) => {
      vm.kvm.mmu.kvmMmuPageFault(vm.vcpu(0).kv, d.a, 0);
    },
    'vCPU 1': (vm, d) => {
      vm.kvm.mmu.kvmMmuPageFault(vm.vcpu(1).kv, d.b, 0);
    },
    host: (vm) => {
      vm.kvm.dirtyLog.disable(0);
    },
  },
  check(vm) {
    const v = vm.host.readUser64(3, 0);
    return v === 1n ? null : `page 3 holds ${v}; the guest wrote 1`;
  },
});
