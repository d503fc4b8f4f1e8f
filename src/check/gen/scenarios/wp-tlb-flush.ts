// Scenario wp-tlb-flush (seed 2, guard flush-mmu-writable): a page becomes a guest page table while the fast path makes its SPTE writable.

import { defineScenario } from '../scenario';
import { tinyVm } from './common';

const X = 5;

export const wpTlbFlush = defineScenario({
  name: 'wp-tlb-flush',
  description:
    "vCPU 1 walks through data page X as a guest page table, so KVM write-protects X for shadow paging. X's SPTE was read-only " +
    'but MMU-writable (dirty logging), so vCPU 0 can make it writable with the fast path and cache it in its TLB just ' +
    'before the write-protection. Unless that protection flushes TLBs for an MMU-writable SPTE, vCPU 0 keeps a writable ' +
    'TLB entry for a page table: its next write to it skips the MMU and the shadow page tables go stale.',
  guard: 'flush-mmu-writable',
  modes: ['shadow'],
  machine: () => tinyVm(2),
  setup(vm) {
    const pt = vm.powerOn(16)!;
    const g = vm.addr(X);
    vm.program(0, [{ op: 'write', gva: g, value: (7n << 12n) | 0x67n }]); // X's entry 0 maps gfn 7
    vm.kvm.dirtyLog.enable(0); // X's SPTE: W clear, MMU-writable
    const h = vm.addr(0) + 4 * (2 << 20); // an unmapped 2 MiB region: its PDE now points at X
    vm.program(1, [{ op: 'write', gva: pt.pteGpa(h, 2), value: (BigInt(X) << 12n) | 0x67n }]);
    return { g, h };
  },
  threads: {
    'vCPU 0': (vm, d) => {
      vm.program(0, [{ op: 'write', gva: d.g + 8, value: 1n }]);
    },
    'vCPU 1': (vm, d) => {
      vm.program(1, [{ op: 'read', gva: d.h }]); // walks through X: X becomes a shadowed page table
    },
  },
});
