// Scenarios for races KVM really had (KVM-BUGS.md), each named after its bug, with the fix's commit; the fix is a guard whose "off" is the code before it.

import { PFERR_WRITE_MASK } from '../../../x86/pte';
import { defineScenario } from '../scenario';
import { tinyVm } from './common';
import { dirtyLossBody } from './dirty-bit-loss';

const X = 5;

/**
 * 7c8a4742c4ab: write-tracking a gfn (the TDP MMU's kvm_tdp_mmu_write_protect_gfn) skipped an SPTE that dirty
 * logging had already made read-only, leaving it MMU-writable and flushing nothing.
 */
export const tdpPtWrprot = defineScenario({
  name: 'tdp-pt-wrprot',
  description:
    "Gfn X's SPTE is read-only but MMU-writable (dirty logging write-protected it). KVM starts tracking writes to X " +
    "(X becomes a page table of a nested guest, which KVM shadows) while vCPU 0 writes X. Before the fix the TDP " +
    "MMU's write-protection skipped an SPTE already read-only, MMU-writable bit and all, so the fast path makes it " +
    'writable again and the guest writes a tracked page without KVM seeing it.',
  guard: 'wrprot-mmu-writable',
  fix: { commit: '7c8a4742c4ab', year: 2022, title: 'KVM: x86/mmu: Fix write-protection of PTs mapped by the TDP MMU' },
  modes: ['tdp'],
  machine: () => tinyVm(1),
  setup(vm) {
    vm.powerOn(16);
    vm.program(0, [{ op: 'write', gva: vm.addr(X), value: 1n }]);
    vm.kvm.dirtyLog.enable(0); // X's SPTE: W clear, MMU-writable
    return { gva: vm.addr(X) };
  },
  threads: {
    'vCPU 0': (vm, d) => {
      vm.program(0, [{ op: 'write', gva: d.gva + 8, value: 2n }]);
    },
    host: (vm) => {
      vm.kvm.mmu.kvmWriteTrackAddGfn(X);
    },
  },
  check(vm) {
    const v = vm.host.readUser64(X, 8);
    return v === 2n ? null : `gfn ${X} holds ${v} at offset 8; the guest wrote 2`;
  },
});

/**
 * ba3a6120a4e7: the TDP MMU wrote SPTEs under the write lock with a plain store, racing the processor's A/D
 * updates and the fast path: the seed's race 3 in the TDP MMU, reached through the MMU notifier's zap.
 */
export const tdpVolatileXchg = defineScenario({
  name: 'tdp-volatile-xchg',
  description:
    "An MMU-notifier invalidation (here a swap-out) zaps gfn X's leaf under mmu_lock held for write while the fast " +
    "path makes it writable and the guest's write sets its Dirty bit. Before the fix kvm_tdp_mmu_write_spte was a " +
    'plain store for every SPTE, so the zap read the old value, stored zero, and the D bit set in between was lost: ' +
    'the swap-out skips the write-back and the guest\'s write is gone.',
  guard: 'atomic-volatile-clear',
  fix: { commit: 'ba3a6120a4e7', year: 2022, title: 'KVM: x86/mmu: Use atomic XCHG to write TDP MMU SPTEs with volatile bits' },
  modes: ['tdp'],
  ...dirtyLossBody,
});

const B = 6;

const P = 3;

/**
 * a835429cda91: a range zap across roots yielded mmu_lock in the second root while the flush for what it zapped in
 * the first was still owed, and whoever took the lock next could find nothing left to zap and skip its own flush.
 */
export const zapYieldFlush = defineScenario({
  name: 'zap-yield-flush',
  description:
    "vCPU 0's TLB holds gfn P; vCPU 1 is in SMM, which has a TDP root of its own. KVM zaps P in every root, and may " +
    'yield mmu_lock between roots. Before the fix it flushed before yielding only what the current root had zapped, ' +
    "so after zapping P in vCPU 0's root it yielded with that flush owed. An MMU-notifier invalidation of P (the host " +
    "unmapping it) then found no SPTE for P, flushed nothing and returned, while vCPU 0 could still reach P's page " +
    'through its TLB.',
  guard: 'flush-before-yield',
  fix: { commit: 'a835429cda91', year: 2021, title: 'KVM: x86/mmu: Ensure TLBs are flushed when yielding during GFN range zap' },
  modes: ['tdp'],
  machine: () => tinyVm(2),
  setup(vm) {
    vm.powerOn(16);
    vm.vcpu(1).enterSmm(); // a second root, after vCPU 0's in the list
    vm.program(0, [{ op: 'write', gva: vm.addr(P), value: 1n }]); // vCPU 0's root maps P; its TLB holds it
  },
  threads: {
    kvm_zap_gfn_range: (vm) => {
      vm.kvm.kvmZapGfnRange(P, P + 1);
    },
    // The host unmaps P (mprotect, say): KVM's invalidate_range_start and _end.
    'MMU notifier': (vm) => {
      vm.kvm.notifier.invalidateRangeStart(P, P + 1);
      vm.kvm.notifier.invalidateRangeEnd(P, P + 1);
    },
  },
});

/**
 * a955cad84cda: a TDP fault did not check, once it held mmu_lock, whether its root had been invalidated, so it
 * could link a table into a root that kvm_tdp_mmu_zap_invalidated_roots had already swept.
 */
export const obsoleteRootFault = defineScenario({
  name: 'obsolete-root-fault',
  description:
    'A memslot update zaps everything the fast way: it invalidates every root under the write lock, makes the vCPUs ' +
    'reload, then zaps the invalidated roots under the read lock, beside faults. vCPU 0 has exited for a fault on ' +
    'gfn B in the root it loaded before. Before the fix the fault did not check for an obsolete root after taking ' +
    "mmu_lock: when the zap has already swept the root, the fault links new tables into it, and they leak when the " +
    'root is freed (the vCPU would reload on its next entry).',
  guard: 'obsolete-root-retry',
  fix: { commit: 'a955cad84cda', year: 2021, title: 'KVM: x86/mmu: Retry page fault if root is invalidated by memslot update' },
  modes: ['tdp'],
  machine: () => tinyVm(1),
  setup(vm) {
    vm.powerOn(16);
    return { gpa: vm.addr(B) };
  },
  threads: {
    // The fault handler itself (the VM exit already taken), so that the vCPU does not re-enter and reload.
    'vCPU 0': (vm, d) => {
      vm.kvm.mmu.kvmMmuPageFault(vm.vcpu(0).kv, d.gpa, PFERR_WRITE_MASK);
    },
    host: (vm) => {
      vm.kvm.mmu.kvmMmuZapAllFast();
    },
  },
});

const G = 9;
const Z = 12;

/**
 * 58cd407ca4c6: a gfn→pfn cache refresh raced an MMU-notifier invalidation that had already invalidated the cache
 * but not yet raised mmu_invalidate_in_progress, and published the pfn the host was about to free.
 */
export const gpcRefreshRace = defineScenario({
  name: 'gpc-refresh-race',
  description:
    "KVM writes guest gfn X twice through its gfn→pfn cache (as it updates a vCPU's Xen runstate area) while the " +
    'host swaps X out and reuses its frame for gfn Z. The MMU notifier invalidates the cache before it counts the ' +
    "invalidation as in progress. Before the fix a refresh in that window saw nothing wrong, cached X's frame as " +
    "valid, and KVM's second write went to the frame after the host had given it to Z.",
  guard: 'gpc-refresh-retry',
  fix: { commit: '58cd407ca4c6', year: 2022, title: 'KVM: Fix multiple races in gfn=>pfn cache refresh' },
  modes: ['tdp', 'direct'],
  machine: () => tinyVm(1, { swapSlots: 4 }),
  setup(vm) {
    vm.powerOn(16);
    vm.host.writeUser64(G, 0, 0x1111n);
    vm.kvm.gpc.activate(G);
    vm.kvm.gpc.refresh();
  },
  threads: {
    KVM: (vm) => {
      vm.kvm.gpc.write64(0, 0x2222n);
      vm.kvm.gpc.write64(8, 0x3333n);
    },
    host: (vm) => {
      vm.host.swapOut(G);
      vm.host.swapIn(Z); // takes the most recently freed frame
    },
  },
  check(vm) {
    const z0 = vm.host.readUser64(Z, 0);
    const z8 = vm.host.readUser64(Z, 8);
    if (z0 !== 0n || z8 !== 0n) return `gfn ${Z} holds 0x${z0.toString(16)}, 0x${z8.toString(16)}: KVM wrote gfn ${G} through a stale cache`;
    const x0 = vm.host.readUser64(G, 0);
    const x8 = vm.host.readUser64(G, 8);
    return x0 === 0x2222n && x8 === 0x3333n ? null : `gfn ${G} holds 0x${x0.toString(16)}, 0x${x8.toString(16)}; KVM wrote 0x2222, 0x3333`;
  },
});

/** A VM with a second memslot (gfns 32 to 39, as a hot-pluggable DIMM), which the memslot scenarios delete. */
const twoSlotVm = () => tinyVm(1, { slots: [{ baseGfn: 0, npages: 24 }, { baseGfn: 32, npages: 8 }], hostFrames: 40 });
const D = 33;

/**
 * e0c378684b65: a fault on a memslot being deleted (marked invalid, its SPTEs not yet zapped) treated the gfn as
 * MMIO and replaced a present SPTE with an MMIO SPTE, without the TLB flush a zap does.
 */
export const invalidSlotFault = defineScenario({
  name: 'invalid-slot-fault',
  description:
    'Userspace deletes memslot 1 while vCPU 0 handles a fault on gfn D in it that another vCPU has already fixed ' +
    '(D is mapped). Deletion marks the slot invalid, waits for SRCU readers, then zaps its SPTEs. Before the fix a ' +
    "fault in that window found no usable slot, treated D as MMIO, and replaced D's present SPTE with an MMIO SPTE " +
    'without flushing: a vCPU keeps its translation to the memory being deleted.',
  guard: 'invalid-slot-retry',
  fix: { commit: 'e0c378684b65', year: 2021, title: 'KVM: x86/mmu: Retry page faults that hit an invalid memslot' },
  modes: ['tdp'],
  machine: twoSlotVm,
  setup(vm) {
    vm.powerOn(16);
    vm.program(0, [{ op: 'read', gva: D * 4096 }]);
    return { gpa: D * 4096 };
  },
  threads: {
    // The fault handler itself: the exit was taken before the other vCPU's fault mapped D.
    'vCPU 0': (vm, d) => {
      vm.kvm.mmu.kvmMmuPageFault(vm.vcpu(0).kv, d.gpa, 0);
    },
    userspace: (vm) => {
      vm.kvm.deleteMemslot(1);
    },
  },
});

/**
 * 3ccbf6f47098: KVM_PRE_FAULT_MEMORY retried a fault on an invalid memslot inside its SRCU read section, and the
 * memslot deletion waited for that section to end: a deadlock.
 */
export const prefaultSlotDeadlock = defineScenario({
  name: 'prefault-slot-deadlock',
  description:
    'Userspace pre-faults gfn D (KVM_PRE_FAULT_MEMORY) while another thread deletes its memslot. Pre-faulting holds ' +
    'kvm->srcu across its retries; deletion marks the slot invalid and waits for SRCU readers. Since e0c378684b65 a ' +
    'fault on an invalid slot retries, so before the fix the pre-fault retried until the slot changed while the ' +
    'deletion waited for the pre-fault: a deadlock. Now the pre-fault returns -EAGAIN.',
  guard: 'prefault-eagain',
  fix: { commit: '3ccbf6f47098', year: 2025, title: 'KVM: x86/mmu: Return -EAGAIN if userspace deletes/moves memslot during prefault' },
  modes: ['tdp'],
  machine: twoSlotVm,
  setup(vm) {
    vm.powerOn(16);
    return { gpa: D * 4096 };
  },
  threads: {
    'KVM_PRE_FAULT_MEMORY': (vm, d) => {
      vm.kvm.mmu.kvmPreFaultMemory(vm.vcpu(0).kv, d.gpa);
    },
    'KVM_SET_USER_MEMORY_REGION': (vm) => {
      vm.kvm.deleteMemslot(1);
    },
  },
});

/** The scenarios of real races, in KVM-BUGS.md's order. */
/** A VM whose one memslot is a single 2 MiB HugeTLB page: the fault maps it with one huge SPTE. */
const hugeVm = () => tinyVm(1, { memBytes: 512 * 4096, hostFrames: 512 + 8, hugePages: true, eagerSplit: false });
const H = 0;
const H2 = 7;

/**
 * c126d94f2c90: "lazily drop large spte" kept huge SPTEs mapped read-only when dirty logging began; its first
 * version let the fast path make such an SPTE writable again while marking one 4 KiB page dirty.
 */
export const hugeFastDirtyLog = defineScenario({
  name: 'huge-fast-dirty-log',
  description:
    'Guest memory is one 2 MiB huge page, mapped by one huge SPTE; dirty logging write-protected it (W clear, ' +
    "MMU-writable kept; eager page splitting off, as before it existed). vCPU 0 writes page 0, then page 7; the host " +
    "takes the dirty log. Before the fix the fast path fixed the huge SPTE's write fault like any other: W set, only " +
    'the first page marked dirty. The write to page 7 then needs no fault and is never logged: a migration misses it.',
  guard: 'fast-skips-huge',
  fix: { commit: 'c126d94f2c90', year: 2013, title: 'KVM: MMU: lazily drop large spte' },
  modes: ['direct', 'tdp'],
  machine: hugeVm,
  setup(vm) {
    vm.powerOn(16);
    vm.program(0, [{ op: 'write', gva: vm.addr(H), value: 1n }]); // one huge SPTE, writable
    vm.kvm.dirtyLog.enable(0); // W cleared in it, MMU-writable kept
    return { a: vm.addr(H), b: vm.addr(H2) };
  },
  threads: {
    'vCPU 0': (vm, d) => {
      vm.program(0, [
        { op: 'write', gva: d.a + 8, value: 2n },
        { op: 'write', gva: d.b, value: 3n },
      ]);
    },
    host: (vm) => {
      vm.kvm.dirtyLog.get(0, new Int32Array(16));
    },
  },
  check(vm) {
    const v = vm.host.readUser64(H2, 0);
    return v === 3n ? null : `gfn ${H2} holds ${v}; the guest wrote 3`;
  },
});

export const REAL_RACE_SCENARIOS = [hugeFastDirtyLog, invalidSlotFault, zapYieldFlush, obsoleteRootFault, tdpPtWrprot, tdpVolatileXchg, gpcRefreshRace, prefaultSlotDeadlock];

