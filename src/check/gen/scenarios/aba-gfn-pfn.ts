// Scenario aba-gfn-pfn (seed 1, guard pin-indirect): between the guest walk and the fast path's cmpxchg, gfn1's frame is freed, reused for gfn2, and mapped again at the same entry.

import { PFERR_PRESENT_MASK, PFERR_WRITE_MASK } from '../../../x86/pte';
import { defineScenario } from '../scenario';
import { DATA_FLAGS } from './flags';
import { tinyVm } from './common';

const GFN1 = 1;
const GFN2 = 12;

export const abaGfnPfn = defineScenario({
  name: 'aba-gfn-pfn',
  description:
    "vCPU 0 write-faults on an indirect SPTE for gfn1 and takes the fast path with the gfn its guest walk found. " +
    'Meanwhile the host swaps gfn1 out, reuses its frame for gfn2, the guest repoints the PTE at gfn2 and touches it, ' +
    'and a dirty-log pass write-protects it: the SPTE holds the same value again. Without pinning gfn1 to its frame ' +
    "the fast path's cmpxchg succeeds and marks gfn1 dirty: gfn2's write is missing from the dirty log.",
  guard: 'pin-indirect',
  modes: ['shadow'],
  machine: () => tinyVm(2, { swapSlots: 4 }),
  setup(vm) {
    const pt = vm.powerOn(16)!;
    const g = vm.addr(GFN1);
    vm.program(0, [{ op: 'read', gva: g }]); // SPTE pfn1, writable, not dirty
    vm.kvm.dirtyLog.enable(0); // write-protected for dirty logging
    return { g, pteGpa: pt.pteGpa(g) };
  },
  // The two columns of the locking document. vCPU 0's column is its fast page fault path: its write
  // faulted and its guest walk found gfn1 (as in setup). If its cmpxchg succeeds on the SPTE that now maps
  // gfn2, that SPTE is writable while the dirty log names gfn1 (invariant writable-spte-logged).
  threads: {
    'vCPU 0': (vm, d) => {
      const v = vm.vcpu(0);
      v.kvm.mmu.fastPageFault(v.kv, d.g, PFERR_PRESENT_MASK | PFERR_WRITE_MASK, GFN1);
    },
    'host and vCPU 1': (vm, d) => {
      vm.host.swapOut(GFN1); // pfn1 is swapped out: spte = 0
      vm.host.swapIn(GFN2); // pfn1 is re-allocated for gfn2
      // vCPU 1 points the gpte at gfn2: the write is trapped and emulated (the SPTE is zapped) ...
      vm.kvm.mmu.emulateWrite(d.pteGpa, (BigInt(GFN2) << 12n) | DATA_FLAGS);
      // ... and touches the page: a read fault maps pfn1 again, now for gfn2 ...
      const v1 = vm.vcpu(1);
      v1.kvm.mmu.kvmMmuPageFault(v1.kv, d.g, 0);
      // ... and a dirty-log pass write-protects it: spte = pfn1, the value vCPU 0 read
      vm.kvm.dirtyLog.get(0, new Int32Array(vm.kvm.dirtyLog.words(0)));
    },
  },
});
