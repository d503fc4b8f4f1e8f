// KVM's gfn→pfn cache (virt/kvm/pfncache.c): a pfn KVM itself reads and writes guest memory through (Xen's shared info and runstate areas, say), refreshed outside mmu_lock and invalidated by the MMU notifier.
//
// The cache holds no reference on its page (since 85165781c5d9, 2022): it is
// only as good as its invalidation. An MMU-notifier invalidation marks it
// invalid before the host changes its mapping; a refresh looks up the pfn
// without any lock and must not publish a pfn an invalidation has already
// passed by. KVM's protocol (58cd407ca4c6, 2022; guard `gpc-refresh-retry`):
// the refresh snapshots mmu_invalidate_seq, looks up the pfn, and retries
// while an invalidation is active (mn_active_invalidate_count, raised before
// the notifier invalidates caches and dropped only after the sequence moved)
// or the sequence moved. The code before it (982ed0de4753) marked the cache
// valid before the lookup, and checked only mmu_invalidate_in_progress and
// the sequence, which the notifier moves after it has invalidated the caches.
//
// Region kvm.gpc (Int32 words): [0, RWLOCK_WORDS) gpc->lock, [GPC_VALID],
// [GPC_GFN] gfn + 1 (0: not activated), [GPC_PFN] pfn + 1 (0: none).
// The VM's mn_active_invalidate_count is word MMU_MN_ACTIVE of kvm.mmu.

import { NOTE, RWLOCK_WORDS } from '../shm/access';
import { KvmmuError } from '../shm/errors';
import { region, type LayoutBuilder } from '../shm/layout';
import { MMU_MN_ACTIVE, MMU_SEQ, type Kvm } from './kvm';

export const GPC_VALID = RWLOCK_WORDS;
export const GPC_GFN = RWLOCK_WORDS + 1;
export const GPC_PFN = RWLOCK_WORDS + 2;
const GPC_WORDS = RWLOCK_WORDS + 4;

export function reserveGpc(b: LayoutBuilder): void {
  b.metaLines('kvm.gpc', GPC_WORDS * 4);
}

export class GfnToPfnCache {
  readonly base: number;

  constructor(private readonly kvm: Kvm) {
    this.base = region(kvm.layout, 'kvm.gpc').off / 4;
  }

  /** KVM's kvm_gpc_activate: the cache will map `gfn` (invalid until the first refresh). */
  activate(gfn: number): void {
    const k = this.kvm;
    k.gfnToHvpn(gfn); // a gfn outside every memslot is the caller's error
    const m = k.mem;
    m.writeLock(this.base);
    m.store32(this.base + GPC_GFN, gfn + 1);
    m.store32(this.base + GPC_VALID, 0);
    m.store32(this.base + GPC_PFN, 0);
    m.writeUnlock(this.base);
  }

  /** KVM's kvm_gpc_check: is the cache valid for its gfn? Contract: gpc->lock held for read. */
  private check(): boolean {
    return this.kvm.mem.load32(this.base + GPC_VALID) !== 0;
  }

  /**
   * KVM's kvm_gpc_refresh: look up the pfn of the cache's gfn and publish it.
   * With guard `gpc-refresh-retry` the lookup is retried until no invalidation
   * ran or is running meanwhile (hva_to_pfn_retry since 58cd407ca4c6);
   * without, the code before it.
   */
  refresh(): void {
    const k = this.kvm;
    const m = k.mem;
    const b = this.base;
    m.writeLock(b);
    const gfn = m.load32(b + GPC_GFN) - 1;
    if (gfn < 0) {
      m.writeUnlock(b);
      throw new KvmmuError('gfn→pfn cache: refresh before activate');
    }
    const hvpn = k.gfnToHvpn(gfn);
    if (!k.guardGpcRefreshRetry) {
      // 982ed0de4753: valid at once (the pfn is a placeholder), then a lookup checked only against
      // mmu_invalidate_in_progress and the sequence, under mmu_lock.
      m.store32(b + GPC_PFN, 0);
      m.store32(b + GPC_VALID, 1);
      m.writeUnlock(b);
      let pfn: number;
      for (;;) {
        const seq = m.load32(k.mmuBase + MMU_SEQ);
        pfn = this.lookup(hvpn);
        // mmu_notifier_retry_hva under mmu_lock: the check a fault makes.
        k.mmuLockRead();
        const stale = k.mmu.isPageFaultStale(seq, hvpn);
        k.mmuUnlockRead();
        if (!stale) break;
        k.mmu.waitForInvalidation();
      }
      m.writeLock(b);
      m.store32(b + GPC_PFN, pfn + 1);
      m.writeUnlock(b);
      return;
    }
    // hva_to_pfn_retry: invalid while the lookup runs without the lock.
    m.store32(b + GPC_VALID, 0);
    let pfn: number;
    for (;;) {
      const seq = m.load32(k.mmuBase + MMU_SEQ);
      m.writeUnlock(b);
      pfn = this.lookup(hvpn);
      m.writeLock(b);
      // An invalidation that began before the lookup may already have passed this cache by: retry once it ends.
      const active = m.load32(k.mmuBase + MMU_MN_ACTIVE);
      if (active === 0 && m.load32(k.mmuBase + MMU_SEQ) === seq) break;
      m.writeUnlock(b);
      // KVM loops (cond_resched); the checker blocks the thread until the count moves instead of spinning it.
      if (active !== 0) m.waitWhile32(k.mmuBase + MMU_MN_ACTIVE, active);
      m.writeLock(b);
    }
    m.store32(b + GPC_PFN, pfn + 1);
    m.store32(b + GPC_VALID, 1);
    m.writeUnlock(b);
  }

  /** hva_to_pfn without keeping the reference: the cache pins nothing. */
  private lookup(hvpn: number): number {
    const host = this.kvm.host;
    const pfn = host.getUserPage(hvpn, true);
    host.putPage(pfn);
    return pfn;
  }

  /**
   * A write through the cache, as KVM updates a vCPU's Xen runstate area:
   * under gpc->lock for read, refreshing while the cache is invalid, then the
   * write to the cached pfn, and the page marked dirty (in the log too).
   */
  write64(off: number, value: bigint): void {
    const k = this.kvm;
    const m = k.mem;
    const b = this.base;
    m.readLock(b);
    while (!this.check()) {
      m.readUnlock(b);
      this.refresh();
      m.readLock(b);
    }
    const gfn = m.load32(b + GPC_GFN) - 1;
    const pfn = m.load32(b + GPC_PFN) - 1;
    m.note(NOTE.gpcAccess, k.gfnToHvpn(gfn), pfn);
    if (pfn >= 0) {
      m.storeData64((k.host.frameByte(pfn) + (off & ~7)) / 8, value);
      m.note(NOTE.guestWrite, gfn, pfn);
      k.host.setPfnDirty(pfn);
    }
    m.readUnlock(b);
    k.markPageDirty(gfn);
  }

  /**
   * The notifier's part (gfn_to_pfn_cache_invalidate_start), called after it
   * raised mn_active_invalidate_count and before it takes mmu_lock: a valid
   * cache of a page in [start, end) becomes invalid.
   */
  invalidateStart(start: number, end: number): void {
    const k = this.kvm;
    const m = k.mem;
    const b = this.base;
    const gfn = m.load32(b + GPC_GFN) - 1;
    if (gfn < 0) return;
    const hvpn = k.gfnToHvpn(gfn);
    if (hvpn < start || hvpn >= end) return;
    m.writeLock(b);
    if (m.load32(b + GPC_VALID) !== 0) m.store32(b + GPC_VALID, 0);
    m.writeUnlock(b);
  }
}
