// Scenarios for the TDP MMU's own guards: rcu-deferred-free and write-lock-exclusion.

import { defineScenario } from '../scenario';
import { tinyVm } from './common';

const A = 3;

export const tdpRcuFree = defineScenario({
  name: 'tdp-rcu-free',
  description:
    "A vCPU's fast path walks the TDP page tables without mmu_lock, inside an RCU read section, while the host zaps " +
    'everything under the write lock and tears the tables down. Torn-down tables must wait for a grace period before ' +
    'they are freed; freed at once, the fast path walks freed tables, which may already map something else.',
  guard: 'rcu-deferred-free',
  modes: ['tdp'],
  machine: () => tinyVm(1),
  setup(vm) {
    vm.powerOn(16);
    vm.program(0, [{ op: 'read', gva: vm.addr(A) }]);
    vm.kvm.dirtyLog.enable(0); // the SPTE is write-protected: the next write takes the fast path
    return { gva: vm.addr(A) };
  },
  threads: {
    'vCPU 0': (vm, d) => {
      vm.program(0, [{ op: 'write', gva: d.gva, value: 5n }]);
    },
    host: (vm) => {
      vm.kvm.mmu.kvmMmuZapAll();
    },
  },
  check(vm) {
    const v = vm.host.readUser64(A, 0);
    return v === 5n ? null : `gfn ${A} holds ${v}; the guest wrote 5`;
  },
});

const X = 9;
const Z = 12;

export const tdpZapVsFault = defineScenario({
  name: 'tdp-zap-vs-fault',
  description:
    "The host swaps gfn X out (an MMU-notifier invalidation) and reuses its frame for gfn Z while a vCPU's fault on " +
    'X runs under the read lock. The notifier zaps with mmu_lock held for write, so it runs before the fault checks the ' +
    'invalidation sequence or after it has mapped X (and then zaps it); taken for read, it runs beside the fault, ' +
    'which saw no invalidation and maps the frame now Z\'s.',
  guard: 'write-lock-exclusion',
  modes: ['tdp'],
  machine: () => tinyVm(1, { swapSlots: 4 }),
  setup(vm) {
    vm.powerOn(16);
    vm.host.writeUser64(X, 0, 0x1111n);
    return { gva: vm.addr(X) };
  },
  threads: {
    'vCPU 0': (vm, d) => {
      vm.program(0, [{ op: 'write', gva: d.gva, value: 0x2222n }]);
    },
    host: (vm) => {
      vm.host.swapOut(X);
      vm.host.swapIn(Z);
    },
  },
  check(vm) {
    const z = vm.host.readUser64(Z, 0);
    const x = vm.host.readUser64(X, 0);
    if (z !== 0n) return `gfn ${Z} holds 0x${z.toString(16)}, written by the guest to gfn ${X} through a stale mapping`;
    return x === 0x2222n ? null : `gfn ${X} holds 0x${x.toString(16)}; the guest wrote 0x2222`;
  },
});
