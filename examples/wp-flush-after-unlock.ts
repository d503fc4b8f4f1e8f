// Example scenario file: a hand-written dirty-log get that flushes TLBs after releasing mmu_lock, racing with a vCPU that shadows the same page as a guest page table (KVM's 6dbf79e7164e, 2012).
import { defineScenario, type ScenarioVm } from 'kvmmu/scenario';

/** The page vCPU 0 keeps writable in its TLB, and that vCPU 1 then uses as a guest page table. */
const X = 5;

/**
 * KVM_GET_DIRTY_LOG written out by hand: under mmu_lock take the bitmap word and
 * write-protect each page it names (for dirty logging: W only), then flush TLBs —
 * before releasing the lock, or (as KVM did before 6dbf79e7164e) after.
 */
function dirtyLogGet(vm: ScenarioVm, flushBeforeUnlock: boolean): void {
  const k = vm.kvm;
  k.mem.lock(k.mmuLock);
  const mask = k.mem.xchg32(k.slotBitmap[0]!, 0);
  let flush = false;
  for (let b = 0; b < 32; b++) if ((mask & (1 << b)) !== 0 && k.spte.rmapWriteProtectHvpn(k.slotHvpn[0]! + b, false)) flush = true;
  if (flush && flushBeforeUnlock) k.kvmFlushRemoteTlbs();
  k.mem.unlock(k.mmuLock);
  if (flush && !flushBeforeUnlock) k.kvmFlushRemoteTlbs();
  // Where KVM's get returns: the bits now belong to userspace (marks for the checker's dirty-log invariants).
  k.dirtyLog.handOver(0, 0, new Int32Array([mask]));
}

function scenario(name: string, flushBeforeUnlock: boolean) {
  return defineScenario({
    name,
    description:
      `A dirty-log get write-protects page ${X} and flushes TLBs ${flushBeforeUnlock ? 'before' : 'after'} releasing mmu_lock, while ` +
      `vCPU 1 walks through ${X} as a guest page table, so KVM write-protects it for shadow paging, finds W already clear and ` +
      'skips its own flush (with flush-mmu-writable off). vCPU 0, not a thread, cached the page writable during setup.',
    modes: ['shadow'],
    machine: () => ({ vcpus: 2, memBytes: 24 * 4096, hostFrames: 40, spPages: 24, tlbEntries: 4 }),
    setup(vm) {
      const pt = vm.powerOn(16)!;
      const h = vm.addr(0) + 4 * (2 << 20); // an unmapped 2 MiB region; its PDE will point at page X
      vm.program(1, [{ op: 'write', gva: pt.pteGpa(h, 2), value: (BigInt(X) << 12n) | 0x67n }]);
      vm.kvm.dirtyLog.enable(0);
      vm.program(0, [{ op: 'write', gva: vm.addr(X), value: (7n << 12n) | 0x67n }]); // X writable, dirty, in vCPU 0's TLB
      return { h };
    },
    threads: {
      'dirty-log get': (vm) => dirtyLogGet(vm, flushBeforeUnlock),
      'vCPU 1': (vm, d) => {
        vm.program(1, [{ op: 'read', gva: d.h }]); // walks through X: X becomes a shadowed guest page table
      },
    },
  });
}

export const flushAfterUnlock = scenario('wp-flush-after-unlock', false);
export const flushBeforeUnlock = scenario('wp-flush-before-unlock', true);
