// KVM's MMU-notifier handlers: zap SPTEs for a host range being invalidated, bump the invalidation sequence, age pages.

import type { MmuNotifier } from '../host/host';
import { NOTE } from '../shm/access';
import { KVM_STAT, MMU_IN_PROGRESS, MMU_MN_ACTIVE, MMU_RANGE_END, MMU_RANGE_START, MMU_SEQ, type Kvm } from './kvm';

export class KvmNotifier implements MmuNotifier {
  constructor(private readonly kvm: Kvm) {}

  /**
   * KVM's kvm_mmu_notifier_invalidate_range_start: count the invalidation in
   * progress (widening the recorded range), drop every SPTE mapping the range —
   * reporting their A/D bits to the host — and flush TLBs before returning, so
   * the host may change its mapping once this returns. A page fault that looked
   * up its pfn before this will see the count or the sequence move and retry.
   */
  invalidateRangeStart(start: number, end: number): void {
    const k = this.kvm;
    // Before anything else: an active invalidation, then the gfn→pfn caches it covers invalidated (a refresh that
    // completes after this sees the count and retries).
    k.mem.fetchAdd32(k.mmuBase + MMU_MN_ACTIVE, 1);
    k.gpc.invalidateStart(start, end);
    k.mmuLockWrite();
    const n = k.lockedLoad(k.mmuBase + MMU_IN_PROGRESS);
    if (n === 0) {
      k.lockedStore(k.mmuBase + MMU_RANGE_START, start);
      k.lockedStore(k.mmuBase + MMU_RANGE_END, end);
    } else {
      k.lockedStore(k.mmuBase + MMU_RANGE_START, Math.min(start, k.lockedLoad(k.mmuBase + MMU_RANGE_START)));
      k.lockedStore(k.mmuBase + MMU_RANGE_END, Math.max(end, k.lockedLoad(k.mmuBase + MMU_RANGE_END)));
    }
    // Through the access layer: a retrying fault waits on this word (Mmu.waitForInvalidation).
    k.mem.store32(k.mmuBase + MMU_IN_PROGRESS, n + 1);
    let flush = false;
    for (let hvpn = start; hvpn < end; hvpn++)
      if (k.isTdp ? k.tdp.zapLeafs(k.hvpnToGfn(hvpn), k.hvpnToGfn(hvpn) + 1) : k.spte.kvmZapRmap(hvpn)) flush = true;
    if (flush) k.kvmFlushRemoteTlbs();
    k.mmuUnlockWrite();
    k.count(KVM_STAT.invalidations);
    k.mem.note(NOTE.unmapDone, start, end);
  }

  /**
   * KVM's kvm_mmu_notifier_invalidate_range_end: bump mmu_invalidate_seq, then
   * drop the in-progress count (in that order, so a fault that sees the count
   * at zero also sees the new sequence), then mn_active_invalidate_count.
   */
  invalidateRangeEnd(_start: number, _end: number): void {
    const k = this.kvm;
    k.mmuLockWrite();
    k.mem.fetchAdd32(k.mmuBase + MMU_SEQ, 1);
    k.mem.store32(k.mmuBase + MMU_IN_PROGRESS, k.lockedLoad(k.mmuBase + MMU_IN_PROGRESS) - 1);
    k.mmuUnlockWrite();
    // Only after the sequence moved: a refresh that sees the count drop also sees the new sequence.
    k.mem.fetchAdd32(k.mmuBase + MMU_MN_ACTIVE, -1);
  }

  /** KVM's kvm_mmu_notifier_clear_flush_young: clear A in the range's SPTEs; true if any was set. */
  clearFlushYoung(start: number, end: number): boolean {
    const k = this.kvm;
    // The TDP MMU ages without mmu_lock, inside an RCU read section, with atomic bit clears.
    if (k.isTdp) {
      let young = false;
      for (let hvpn = start; hvpn < end; hvpn++) if (k.tdp.ageGfnRange(k.hvpnToGfn(hvpn), k.hvpnToGfn(hvpn) + 1)) young = true;
      return young;
    }
    k.mem.lock(k.mmuLock);
    let young = false;
    for (let hvpn = start; hvpn < end; hvpn++) if (k.spte.kvmAgeRmap(hvpn)) young = true;
    k.mem.unlock(k.mmuLock);
    return young;
  }
}
