// KVM's TDP MMU (mode `tdp`): faults under mmu_lock held for read with cmpxchg, FROZEN_SPTE for multi-step changes, page tables freed after an RCU grace period, zaps and clears under the write lock.
//
// Page tables are shadow pages of the same pool as the other modes (KVM's
// struct kvm_mmu_page serves both MMUs), with the SPTE format the hardware walk
// reads, but none of the shadow MMU's bookkeeping: no rmaps, no hash, no
// present bitmap (walks read the entries themselves), and their own
// allocation lock (KVM's tdp_mmu_pages_lock), since faults allocate tables in
// parallel under the read lock.
//
// Who takes mmu_lock how (TDP-MMU.md; the rwlock is Mem.readLock/writeLock):
//   read:  vCPU faults (pageFault), write-protecting a slot when dirty logging
//          is enabled (wrprotSlot), zapping invalidated roots (zapInvalidatedRoots),
//          dropping a vCPU's obsolete root (freeObsoleteRoot);
//   write: zapping leaves (MMU-notifier unmap: zapLeafs), zapping everything
//          (zapAll), invalidating every root (invalidateAllRoots), loading a
//          vCPU's root (getVcpuRoot; KVM takes the read lock since 6.10),
//          write-protecting the gfns a dirty-log get or clear hands over
//          (writeProtectGfn) or write-tracking starts on (writeProtectGfnForTracking);
//   none, RCU only: the fast path (Mmu.fastPageFault) and aging (ageGfnRange).
//
// Regions (Int32 words):
//   kvm.rcu           RCU (shm/rcu.ts): readers counted per epoch, removed tables waiting for a grace period
//   kvm.tdpPagesLock  LOCK_WORDS   serializes allocating and freeing tables, and changes to the root list
//   kvm.tdpRoots      ROOT_WORDS per slot, rootSlots(config) slots: the roots (KVM's tdp_mmu_roots list):
//                     [ROOT_SP] root shadow page + 1 (0: a free slot), [ROOT_ZAP] 1 while an invalidated
//                     root waits for kvm_tdp_mmu_zap_invalidated_roots (tdp_mmu_scheduled_root_to_zap), 2 once
//                     a zapper took it (kvmmu's own mark, which lets the leak monitor see a swept root);
//                     a root's refcount is its SP_ROOT_COUNT, its invalid flag ROLE_INVALID in its role

import { LOCK_WORDS, NOTE } from '../shm/access';
import { region, type LayoutBuilder } from '../shm/layout';
import { Rcu, rcuWords } from '../shm/rcu';
import { ACC_ALL, ACC_WRITE_MASK, CPU_SMM } from '../x86/pte';
import {
  FROZEN_SPTE,
  SPTE_ACCESSED_MASK,
  SPTE_MMU_WRITABLE,
  SPTE_WRITABLE_MASK,
  isAccessedSpte,
  isDirtySpte,
  isLastSpte,
  isShadowPresentPte,
  isWritablePte,
  leafChangeNeedsTlbFlush,
  makeHugeSpte,
  makeMmioSpte,
  makeSmallSpte,
  markSpteForAccessTrack,
  spteAdEnabled,
  makeNonleafSpte,
  makeSpte,
  pagesPerSpte,
  spteHasVolatileBits,
  spteToChild,
  spteToPfn,
} from '../x86/spte';
import { clearBits } from '../x86/pte';
import type { VmConfig } from './config';
import { KVM_STAT, MMU_SEQ, SLOT_DELETED, SLOT_INVALID, VCPU_ROOT, VCPU_STAT, type Kvm, type KvmVcpu } from './kvm';
import { ROLE_INVALID, ROLE_SMM, SP_GEN, SP_GFN, SP_ROLE, SP_ROOT_COUNT, SP_STATE, makeRole } from './mmu-page';
import { pageFaultCanBeFast, RET_PF_EAGAIN, RET_PF_EMULATE, RET_PF_FIXED, RET_PF_INVALID, RET_PF_RETRY, RET_PF_SPURIOUS } from './mmu';
import { SpteUpdate } from './spte-update';
import { TdpIter } from './tdp-iter';

/** RCU reader slots (counted readers): one per vCPU, and two for the host's threads. vCPUs that run as vCPUs read as QSBR readers instead (Kvm.vcpuQsbr). */
export function rcuReaderSlots(c: VmConfig): number {
  return c.vcpus + 2;
}

const ROOT_WORDS = 2;
const ROOT_SP = 0;
const ROOT_ZAP = 1;
export const ROOT_ZAP_OWED = 1;
export const ROOT_ZAP_TAKEN = 2;

/**
 * Room for every vCPU's root, the valid one, and one more: an invalidation
 * leaves the old roots to the vCPUs that hold them (each holds one) and to
 * their zapper, and a new root is made only when a vCPU reloads.
 */
export function rootSlots(c: VmConfig): number {
  return c.vcpus + 2;
}

export function reserveTdp(b: LayoutBuilder, c: VmConfig): void {
  b.metaLines('kvm.rcu', rcuWords(c.spPages, rcuReaderSlots(c), c.vcpus) * 4);
  b.metaLines('kvm.tdpPagesLock', LOCK_WORDS * 4);
  b.meta('kvm.tdpRoots', rootSlots(c) * ROOT_WORDS * 4);
}

export class TdpMmu {
  private readonly rcuBase: number;
  private readonly pagesLock: number;
  /** The first word of the root list, and its number of slots. */
  private readonly rootsBase: number;
  readonly nRootSlots: number;
  private readonly freeBase: number;
  private rcuHandle: Rcu | null = null;
  /**
   * The entry a fault found frozen (or -1), and the entry above it with the value the walk stepped down by:
   * before it retries, the fault waits for the frozen entry to change, unless the entry above has changed
   * already (the table was unlinked: the retry's walk from the root will find out where).
   */
  private frozenAt = -1;
  private frozenParent = -1;
  private frozenParentSpte = 0n;
  /** Scratch for objects RCU hands back (reused: no garbage per fault). */
  private readonly freed: number[] = [];
  private readonly iter: TdpIter;

  constructor(private readonly kvm: Kvm) {
    const l = kvm.layout;
    this.rcuBase = region(l, 'kvm.rcu').off / 4;
    this.pagesLock = region(l, 'kvm.tdpPagesLock').off / 4;
    this.rootsBase = region(l, 'kvm.tdpRoots').off / 4;
    this.nRootSlots = rootSlots(kvm.config);
    this.freeBase = region(l, 'kvm.spFree').off / 4;
    this.iter = new TdpIter(kvm);
  }

  /** Forget this thread's private state (a new execution under the checker starts outside any read section). */
  resetThreadState(): void {
    this.rcuHandle = null;
    this.frozenAt = -1;
  }

  /**
   * This thread's RCU handle: a QSBR reader when the thread runs a vCPU (its read sections are free, and the
   * vCPU's guest entries are its quiescent states), else a counted reader. Made again when the thread takes a
   * vCPU outside any read section.
   */
  get rcu(): Rcu {
    const h = this.rcuHandle;
    if (h !== null && h.qsbrSelf === this.kvm.selfVcpu) return h;
    if (h !== null && h.reading) return h;
    const k = this.kvm;
    return (this.rcuHandle = new Rcu(k.mem, this.rcuBase, k.config.spPages, rcuReaderSlots(k.config), k.vcpuQsbr, k.selfVcpu));
  }

  // ---- page tables: allocation, and freeing after a grace period ----

  /** A zeroed table for `role` whose first entry maps `gfn` (KVM's tdp_mmu_alloc_sp); not yet reachable. */
  private allocPage(role: number, gfn: number): number {
    const k = this.kvm;
    const m = k.mem;
    m.lock(this.pagesLock);
    const depth = m.i32[this.freeBase]!; // under tdpPagesLock, as every access to the free stack in this mode
    if (depth === 0) {
      m.unlock(this.pagesLock);
      throw new Error(`tdp mmu: the page-table pool (${k.config.spPages} pages) is empty: give the VM more spPages`);
    }
    const sp = m.i32[this.freeBase + depth]!;
    m.storePlain32(this.freeBase, depth - 1);
    m.storePlain32(k.pages.hdr(sp, SP_STATE), 1);
    const gen = m.i32[k.pages.hdr(sp, SP_GEN)]! + 1;
    m.storePlain32(k.pages.hdr(sp, SP_GEN), gen);
    m.unlock(this.pagesLock);
    m.storePlain32(k.pages.hdr(sp, SP_ROOT_COUNT), 0);
    // Lockless readers (the fast path, monitors) read role and gfn: through the access layer.
    m.store32(k.pages.hdr(sp, SP_ROLE), role);
    m.store32(k.pages.hdr(sp, SP_GFN), gfn);
    k.count(KVM_STAT.spAlloc);
    m.note(NOTE.spAlloc, sp, gen);
    return sp;
  }

  /**
   * Return `sp` to the pool: no walker can reach it any more (it was never
   * linked, or a grace period has passed since it was unlinked). Entries
   * handle_removed_pt left frozen go back to zero, so the next user finds a
   * zeroed table.
   */
  private freePage(sp: number, everReachable = true): void {
    const k = this.kvm;
    const m = k.mem;
    m.lock(this.pagesLock);
    m.storePlain32(k.pages.hdr(sp, SP_STATE), 0);
    const gen = m.i32[k.pages.hdr(sp, SP_GEN)]! + 1;
    m.storePlain32(k.pages.hdr(sp, SP_GEN), gen);
    m.unlock(this.pagesLock);
    k.count(KVM_STAT.spFreed);
    // Freed (for the monitors) before its entries go back to zero, then back on the free stack.
    m.note(everReachable ? NOTE.spFree : NOTE.spDiscard, sp, gen);
    for (let i = 0; i < 512; i++) {
      const sptep = k.pages.sptep(sp, i);
      if (m.u64[sptep] !== 0n) m.store64(sptep, 0n); // nobody else can reach the table: a plain look decides
    }
    m.lock(this.pagesLock);
    const depth = m.i32[this.freeBase]!;
    m.storePlain32(this.freeBase + 1 + depth, sp);
    m.storePlain32(this.freeBase, depth + 1);
    m.unlock(this.pagesLock);
  }

  /**
   * An unlinked table goes to call_rcu (KVM's tdp_mmu_free_sp_rcu_callback
   * runs after a grace period); with guard `lockless-walk-sync` off, walkers
   * take no read section, so nothing holds it back: that is the unfixed code.
   */
  private freeAfterGracePeriod(sp: number): void {
    // Guard `rcu-deferred-free` off: freed at once, under any walker still inside it.
    if (!this.kvm.guardRcuDeferredFree) {
      this.freePage(sp);
      return;
    }
    const n = this.rcu.callRcu(sp, this.freed);
    for (let i = 0; i < n; i++) this.freePage(this.freed[i]!);
  }

  /** Does [gfn, gfn + span) overlap a memslot? Entries outside every memslot are never made present. */
  private inSlots(gfn: number, span: number): boolean {
    const k = this.kvm;
    for (let s = 0; s < k.nSlots; s++) if (gfn < k.slotGfn[s]! + k.slotPages[s]! && gfn + span > k.slotGfn[s]!) return true;
    return false;
  }

  /** Free the tables whose grace period has ended. Call outside read sections (a poller inside one only delays it). */
  reclaim(): void {
    const n = this.rcu.poll(this.freed);
    for (let i = 0; i < n; i++) this.freePage(this.freed[i]!);
  }

  // ---- roots ----

  /** The root in list slot `i`, or -1, with a plain read: for monitors and displays. */
  peekRootAt(i: number): number {
    return this.kvm.mem.i32[this.rootsBase + i * ROOT_WORDS + ROOT_SP]! - 1;
  }

  /** Root list slot `i`'s zap state (0, ROOT_ZAP_OWED or ROOT_ZAP_TAKEN), with a plain read: for monitors. */
  peekRootZap(i: number): number {
    return this.kvm.mem.i32[this.rootsBase + i * ROOT_WORDS + ROOT_ZAP]!;
  }

  /** The root in list slot `i`, or -1 (an access-layer load: lockless walkers of the list read it too). */
  rootAt(i: number): number {
    return this.kvm.mem.load32(this.rootsBase + i * ROOT_WORDS + ROOT_SP) - 1;
  }

  /** Is `root` invalid (obsolete: a memslot change or zap-all marked it; KVM's is_obsolete_root for the TDP MMU)? */
  isObsoleteRoot(root: number): boolean {
    return (this.kvm.mem.load32(this.kvm.pages.hdr(root, SP_ROLE)) & ROLE_INVALID) !== 0;
  }

  /**
   * KVM's kvm_tdp_mmu_get_vcpu_root_hpa / kvm_tdp_mmu_alloc_root: a reference
   * on a valid root, made if there is none — with a reference for the vCPU and
   * one that stands for the root being valid, dropped once it has been
   * invalidated and zapped. Under the write lock (KVM takes the read lock
   * since 6.10, rechecking the list under tdp_mmu_pages_lock).
   */
  getVcpuRoot(vcpu: KvmVcpu): void {
    const k = this.kvm;
    const m = k.mem;
    m.writeLock(k.mmuLock);
    // The vCPU's MMU role picks its root: SMM has an address space, and so a root, of its own.
    const role = makeRole(4, true, ACC_ALL) | ((vcpu.cpu & CPU_SMM) !== 0 ? ROLE_SMM : 0);
    let root = -1;
    for (let i = 0; i < this.nRootSlots && root < 0; i++) {
      const r = this.rootAt(i);
      if (r >= 0 && m.load32(k.pages.hdr(r, SP_ROLE)) === role) {
        // A valid root (its role without ROLE_INVALID) holds its validity reference, so under mmu_lock the count is
        // never zero here.
        m.fetchAdd32(k.pages.hdr(r, SP_ROOT_COUNT), 1);
        root = r;
      }
    }
    if (root < 0) {
      root = this.allocPage(role, 0);
      m.store32(k.pages.hdr(root, SP_ROOT_COUNT), 2);
      m.lock(this.pagesLock);
      let slot = -1;
      for (let i = 0; i < this.nRootSlots && slot < 0; i++) if (this.rootAt(i) < 0) slot = i;
      if (slot < 0) {
        m.unlock(this.pagesLock);
        m.writeUnlock(k.mmuLock);
        throw new Error(`tdp mmu: more than ${this.nRootSlots} roots at once (invalidated roots not yet zapped and freed)`);
      }
      m.store32(this.rootsBase + slot * ROOT_WORDS + ROOT_SP, root + 1);
      m.unlock(this.pagesLock);
    }
    vcpu.root = root;
    m.store32(k.vcpuWord(vcpu.idx, VCPU_ROOT), root + 1);
    m.writeUnlock(k.mmuLock);
  }

  /**
   * KVM's kvm_tdp_mmu_put_root: drop a reference; the last one takes the root
   * off the list and frees it after a grace period. The root must have been
   * zapped already (KVM today does not zap at the last put): a table still
   * linked into it is leaked.
   */
  putRoot(root: number): void {
    const k = this.kvm;
    const m = k.mem;
    if (m.fetchAdd32(k.pages.hdr(root, SP_ROOT_COUNT), -1) !== 1) return;
    m.lock(this.pagesLock);
    for (let i = 0; i < this.nRootSlots; i++) {
      if (this.rootAt(i) !== root) continue;
      m.store32(this.rootsBase + i * ROOT_WORDS + ROOT_SP, 0);
      m.store32(this.rootsBase + i * ROOT_WORDS + ROOT_ZAP, 0);
      break;
    }
    m.unlock(this.pagesLock);
    this.freeAfterGracePeriod(root);
  }

  /** KVM's kvm_tdp_mmu_get_root: a reference on `root` unless its last one is already gone (refcount_inc_not_zero). */
  private getRootUnlessZero(root: number): boolean {
    const m = this.kvm.mem;
    const w = this.kvm.pages.hdr(root, SP_ROOT_COUNT);
    let c = m.load32(w);
    for (;;) {
      if (c === 0) return false;
      const old = m.cmpxchg32(w, c, c + 1);
      if (old === c) return true;
      c = old;
    }
  }

  /**
   * KVM's kvm_mmu_reset_context as a change of MMU role needs it (entering or
   * leaving SMM): drop the vCPU's root and load the one of its new role.
   */
  resetContext(vcpu: KvmVcpu): void {
    const k = this.kvm;
    if (vcpu.root >= 0) {
      k.mem.readLock(k.mmuLock);
      this.putRoot(vcpu.root);
      k.mem.readUnlock(k.mmuLock);
      this.reclaim();
    }
    vcpu.root = -1;
    this.getVcpuRoot(vcpu);
  }

  /**
   * KVM's kvm_mmu_free_obsolete_roots then kvm_mmu_reload, when a vCPU handles
   * KVM_REQ_MMU_FREE_OBSOLETE_ROOTS before entering the guest: an invalidated
   * root is dropped (under the read lock) and a valid one loaded. Returns
   * whether the vCPU changed roots (its TLB must then be flushed, as
   * kvm_mmu_load does for a new root).
   */
  freeObsoleteRoot(vcpu: KvmVcpu): boolean {
    if (vcpu.root >= 0 && !this.isObsoleteRoot(vcpu.root)) return false;
    this.resetContext(vcpu);
    return true;
  }

  /**
   * KVM's kvm_tdp_mmu_invalidate_all_roots (from kvm_mmu_zap_all_fast, on a
   * memslot change): mark every valid root invalid and owed a zap. vCPUs must
   * then be told to reload (the caller's request) and the roots zapped under
   * the read lock (zapInvalidatedRoots). Contract: mmu_lock held for write.
   */
  invalidateAllRoots(): void {
    const k = this.kvm;
    for (let i = 0; i < this.nRootSlots; i++) {
      const r = this.rootAt(i);
      if (r < 0 || this.isObsoleteRoot(r)) continue;
      k.mem.store32(k.pages.hdr(r, SP_ROLE), k.mem.load32(k.pages.hdr(r, SP_ROLE)) | ROLE_INVALID);
      k.mem.store32(this.rootsBase + i * ROOT_WORDS + ROOT_ZAP, ROOT_ZAP_OWED);
    }
  }

  /**
   * KVM's kvm_tdp_mmu_zap_invalidated_roots: zap each root invalidateAllRoots
   * marked (claimed with a cmpxchg, so two zappers never zap one root), then drop
   * its validity reference. Faults may run beside it on the same roots: each
   * top-level entry goes with a cmpxchg, its tables torn down with every entry
   * frozen. No TLB flush: every vCPU was made to leave the guest and reload
   * before this runs. Contract: mmu_lock held for read.
   */
  zapInvalidatedRoots(): void {
    const k = this.kvm;
    const m = k.mem;
    this.rcu.readLock();
    for (let i = 0; i < this.nRootSlots; i++) {
      const zap = this.rootsBase + i * ROOT_WORDS + ROOT_ZAP;
      if (m.load32(zap) !== ROOT_ZAP_OWED || m.cmpxchg32(zap, ROOT_ZAP_OWED, ROOT_ZAP_TAKEN) !== ROOT_ZAP_OWED) continue;
      const root = this.rootAt(i);
      this.zapRootShared(root);
      this.putRoot(root);
    }
    this.rcu.readUnlock();
  }

  /** KVM's tdp_mmu_zap_root under the read lock: each present top-level entry set to 0 with cmpxchg (retried on a change, waited out while frozen). */
  private zapRootShared(root: number): void {
    const k = this.kvm;
    const m = k.mem;
    const span = pagesPerSpte(4);
    for (let i = 0; i < 512; i++) {
      if (!this.inSlots(i * span, span)) continue;
      const sptep = k.pages.sptep(root, i);
      for (;;) {
        const old = m.load64(sptep);
        if (!isShadowPresentPte(old)) break;
        if (old === FROZEN_SPTE) {
          m.waitWhile32(2 * sptep, Number(FROZEN_SPTE));
          continue;
        }
        if (m.cmpxchg64(sptep, old, 0n) !== old) continue;
        this.handleChangedSpte(i * span, old, 0n, 4, true);
        break;
      }
    }
  }

  /** The roots on the list, valid ones only if `validOnly` (KVM's for_each_valid_tdp_mmu_root / for_each_tdp_mmu_root), into `out`. */
  private roots(validOnly: boolean): number[] {
    const out = this.rootScratch;
    out.length = 0;
    for (let i = 0; i < this.nRootSlots; i++) {
      const r = this.rootAt(i);
      if (r >= 0 && (!validOnly || !this.isObsoleteRoot(r))) out.push(r);
    }
    return out;
  }
  private readonly rootScratch: number[] = [];

  // ---- the fault ----

  /**
   * KVM's kvm_tdp_mmu_page_fault: the fast path first, else look up the pfn,
   * take mmu_lock for read, retry if an invalidation ran since (guard
   * `notifier-retry`), and map inside an RCU read section.
   */
  pageFault(vcpu: KvmVcpu, gpa: number, ec: number, write: boolean, prefetch = false): number {
    // The fault reads the memslots: inside kvm->srcu, which a memslot update waits for.
    const srcu = this.kvm.srcu;
    srcu.readLock();
    let r: number;
    try {
      r = this.faultInSrcu(vcpu, gpa, ec, write, prefetch);
    } catch (e) {
      srcu.readUnlock();
      throw e;
    }
    srcu.readUnlock();
    return r;
  }

  private faultInSrcu(vcpu: KvmVcpu, gpa: number, ec: number, write: boolean, prefetch: boolean): number {
    const k = this.kvm;
    const mmu = k.mmu;
    const gfn = Math.floor(gpa / 4096);
    if (k.fastPath && !prefetch && pageFaultCanBeFast(ec, k.adBits)) {
      const r = mmu.fastPageFault(vcpu, gpa, ec, gfn);
      if (r !== RET_PF_INVALID) return r;
    }
    // kvm_mmu_faultin_pfn's memslot check. A slot being deleted or moved (marked invalid, its SPTEs not yet zapped)
    // sends the fault back to retry (guard `invalid-slot-retry`, e0c378684b65) — or, pre-faulting, back to
    // userspace with -EAGAIN (guard `prefault-eagain`, 3ccbf6f47098); before those, it had no usable slot and was
    // mapped as MMIO, over whatever SPTE was there.
    const flags = k.memslotFlags(gfn);
    if (flags >= 0 && (flags & SLOT_INVALID) !== 0 && k.guardInvalidSlotRetry) return prefetch && k.guardPrefaultEagain ? RET_PF_EAGAIN : RET_PF_RETRY;
    if (flags < 0 || (flags & (SLOT_INVALID | SLOT_DELETED)) !== 0) return this.mapMmio(vcpu, gfn);
    const hvpn = k.gfnToHvpn(gfn);
    const mmuSeq = k.mem.load32(k.mmuBase + MMU_SEQ);
    const pfn = k.host.getUserPage(hvpn, write);
    const hostWritable = k.host.lastWritable;
    k.mem.readLock(k.mmuLock);
    // KVM's is_page_fault_stale: a root invalidated since the vCPU loaded it (guard `obsolete-root-retry`,
    // a955cad84cda) — the vCPU reloads before it faults again — or an invalidation since the pfn was looked up.
    if (k.guardObsoleteRootRetry && this.isObsoleteRoot(vcpu.root)) {
      k.host.putPage(pfn);
      k.mem.readUnlock(k.mmuLock);
      return RET_PF_RETRY;
    }
    if (k.guardNotifierRetry && mmu.isPageFaultStale(mmuSeq, hvpn)) {
      k.host.putPage(pfn);
      k.mem.readUnlock(k.mmuLock);
      mmu.waitForInvalidation();
      return RET_PF_RETRY;
    }
    const rcu = this.rcu;
    rcu.readLock();
    k.mem.note(NOTE.walkBegin, vcpu.idx, 0); // a walker the monitors watch, as the fast path's
    let ret: number;
    try {
      ret = this.map(vcpu, gfn, pfn, hostWritable, write, flags);
    } catch (e) {
      k.mem.note(NOTE.walkEnd, vcpu.idx, 0);
      rcu.readUnlock();
      k.host.putPage(pfn);
      k.mem.readUnlock(k.mmuLock);
      throw e;
    }
    k.mem.note(NOTE.walkEnd, vcpu.idx, 0);
    rcu.readUnlock();
    mmu.releaseFaultinPage(pfn, ret !== RET_PF_RETRY, hostWritable);
    k.mem.readUnlock(k.mmuLock);
    this.reclaim();
    if (this.frozenAt >= 0) {
      // KVM's vCPU re-enters and faults again until the entry's owner is done with it; here that spin is one
      // wait, so the checker blocks the vCPU instead of spinning it.
      if (this.frozenParent < 0 || k.mem.load64(this.frozenParent) === this.frozenParentSpte) k.mem.waitWhile32(2 * this.frozenAt, Number(FROZEN_SPTE));
      this.frozenAt = -1;
    }
    if (ret === RET_PF_FIXED) vcpu.count(VCPU_STAT.pfSlow);
    return ret;
  }

  /** A fault on a gfn no usable memslot covers: an MMIO SPTE, under the read lock, and the access emulated. */
  private mapMmio(vcpu: KvmVcpu, gfn: number): number {
    const k = this.kvm;
    k.mem.readLock(k.mmuLock);
    if (k.guardObsoleteRootRetry && this.isObsoleteRoot(vcpu.root)) {
      k.mem.readUnlock(k.mmuLock);
      return RET_PF_RETRY;
    }
    const rcu = this.rcu;
    rcu.readLock();
    let ret: number;
    try {
      ret = this.map(vcpu, gfn, -1, false, false);
    } catch (e) {
      rcu.readUnlock();
      k.mem.readUnlock(k.mmuLock);
      throw e;
    }
    rcu.readUnlock();
    k.mem.readUnlock(k.mmuLock);
    this.reclaim();
    this.frozenAt = -1;
    return ret === RET_PF_RETRY ? RET_PF_RETRY : RET_PF_EMULATE;
  }

  /**
   * KVM's kvm_tdp_mmu_map: walk from the root, linking a new table where an
   * entry is absent and setting the leaf, each with one cmpxchg against the
   * value the walk read (tdp_mmu_set_spte_atomic). Anything another thread did
   * meanwhile — linked the same table, froze the entry to zap it — fails the
   * cmpxchg or shows FROZEN_SPTE, and the fault is retried whole.
   * Contract: mmu_lock held for read, inside an RCU read section.
   */
  private map(vcpu: KvmVcpu, gfn: number, pfn: number, hostWritable: boolean, write: boolean, flags = -1): number {
    const k = this.kvm;
    const it = this.iter;
    // kvm_mmu_hugepage_adjust: the level to map at (2: a 2 MiB SPTE of the aligned huge page's first frame).
    const goal = pfn >= 0 ? k.mmu.maxMappingLevel(gfn, flags) : 1;
    if (goal === 2) pfn -= gfn % 512;
    it.begin(vcpu.root, gfn, gfn + 1);
    while (it.level > goal) {
      if (it.oldSpte === FROZEN_SPTE) return this.retryFrozen(it);
      const present = isShadowPresentPte(it.oldSpte);
      if (!present || isLastSpte(it.oldSpte, it.level)) {
        // Absent: link a new table. A huge leaf where a smaller page must go: replace it by a table of 512 entries
        // that map the same pages with the same bits (tdp_mmu_split_huge_page, as KVM's faults do since 6.x).
        const span = pagesPerSpte(it.level);
        const child = this.allocPage(makeRole(it.level - 1, true, ACC_ALL), gfn - (gfn % span));
        if (present) this.fillSplitTable(child, it.oldSpte);
        const linked = makeNonleafSpte(child);
        if (k.mem.cmpxchg64(it.sptep, it.oldSpte, linked) !== it.oldSpte) {
          this.freePage(child, false); // never reachable: no grace period needed
          return RET_PF_RETRY;
        }
        if (present) this.handleChangedSpte(gfn - (gfn % span), it.oldSpte, linked, it.level, true);
        it.oldSpte = linked;
      }
      // The entry read again (try_step_down): unlinked or frozen meanwhile, the fault starts over.
      if (!it.stepDown()) return it.oldSpte === FROZEN_SPTE ? this.retryFrozen(it) : RET_PF_RETRY;
    }
    const old = it.oldSpte;
    if (old === FROZEN_SPTE) return this.retryFrozen(it);
    // A write-tracked gfn (a page table KVM shadows, a page a device model watches) is mapped neither writable nor
    // MMU-writable, and a write to it is emulated (make_spte's mmu_try_to_unsync_pages refusing). The count changes
    // only under the write lock, so the read lock held here keeps it steady.
    // pfn < 0: an MMIO SPTE (mapMmio).
    const tracked = pfn >= 0 && k.pages.gfnTrackCount(k.gfnToHvpn(gfn)) > 0;
    let newSpte = pfn < 0 ? makeMmioSpte(gfn) : makeSpte(tracked ? ACC_ALL & ~ACC_WRITE_MASK : ACC_ALL, pfn, hostWritable, true, write, !k.adBits);
    if (goal === 2) newSpte = makeHugeSpte(newSpte);
    const oldLeaf = isShadowPresentPte(old) && isLastSpte(old, goal);
    if (pfn >= 0 && oldLeaf && spteToPfn(old) === spteToPfn(newSpte)) newSpte = SpteUpdate.keepDirty(old, newSpte);
    // Nothing to change; but a write to a tracked gfn is still emulated, as after any change (KVM's
    // tdp_mmu_map_handle_target_level): returned as spurious, the vCPU would retry the write and fault for ever.
    if (old === newSpte) return tracked && write ? RET_PF_EMULATE : RET_PF_SPURIOUS;
    if (k.mem.cmpxchg64(it.sptep, old, newSpte) !== old) return RET_PF_RETRY;
    // A fault does not flush TLBs for a leaf, so it must never make a change that needs it (KVM WARNs since 2022).
    if (oldLeaf && leafChangeNeedsTlbFlush(old, newSpte)) k.mem.note(NOTE.faultNeedsFlush, gfn, 1);
    const first = gfn - (gfn % pagesPerSpte(goal));
    this.handleChangedSpte(first, old, newSpte, goal, true);
    // A huge leaf over a table (the 2 MiB became mappable again): the table's translations must go (KVM flushes the range).
    if (isShadowPresentPte(old) && !oldLeaf) k.kvmFlushRemoteTlbs();
    if (isWritablePte(newSpte)) k.markPageDirty(gfn);
    return tracked && write ? RET_PF_EMULATE : RET_PF_FIXED;
  }

  /**
   * Fill `child`, not yet linked, with the 512 entries that replace the huge
   * leaf `huge` (tdp_mmu_split_huge_page): plain stores, since no other thread
   * can reach the table before the cmpxchg that links it.
   */
  private fillSplitTable(child: number, huge: bigint): void {
    const k = this.kvm;
    k.mem.note(NOTE.splitFill, child, 0);
    for (let i = 0; i < 512; i++) k.mem.store64(k.pages.sptep(child, i), makeSmallSpte(huge, i));
  }

  /** Note where the walk met a frozen entry (see frozenAt) and retry the fault. */
  private retryFrozen(it: TdpIter): number {
    this.frozenAt = it.sptep;
    this.frozenParent = it.level < 4 ? it.parentSptep : -1;
    this.frozenParentSpte = it.parentSpte;
    return RET_PF_RETRY;
  }

  // ---- bookkeeping for a changed SPTE ----

  /**
   * KVM's handle_changed_spte, after an SPTE mapping `gfn` at `level` went from
   * `old` to `newSpte`: a present leaf never becomes a present leaf with
   * another pfn (KVM's BUG(): the notifier zaps before the host remaps);
   * a leaf that goes away or loses A/D tells the host (with `spte` page
   * marking); a table that is unlinked is torn down (handleRemovedPt).
   */
  private handleChangedSpte(gfn: number, old: bigint, newSpte: bigint, level: number, shared: boolean): void {
    const k = this.kvm;
    const wasPresent = isShadowPresentPte(old);
    const isPresent = isShadowPresentPte(newSpte);
    const wasLeaf = wasPresent && isLastSpte(old, level);
    const isLeaf = isPresent && isLastSpte(newSpte, level);
    if (wasLeaf && isLeaf && spteToPfn(old) !== spteToPfn(newSpte))
      throw new Error(`tdp mmu: BUG: the present leaf for gfn 0x${gfn.toString(16)} changed to another pfn (0x${spteToPfn(old).toString(16)} → 0x${spteToPfn(newSpte).toString(16)})`);
    if (wasLeaf && !k.marksAtFault) {
      // (A huge leaf's A and D stand for each of its pages.)
      if (isAccessedSpte(old) && !(isLeaf && isAccessedSpte(newSpte))) k.spte.setPagesAccessed(old);
      if (isDirtySpte(old) && !(isLeaf && isDirtySpte(newSpte))) k.spte.setPagesDirty(old);
    }
    if (wasPresent && !wasLeaf && (!isPresent || isLeaf)) this.handleRemovedPt(spteToChild(old), level - 1, shared);
  }

  /**
   * KVM's handle_removed_pt: `sp`, a table at `level` just unlinked, is torn
   * down entry by entry — each frozen, so nobody changes it any more, with its
   * old value handed to handleChangedSpte (dirty state to the host, child
   * tables recursively) — and freed after a grace period. Under the read lock
   * (`shared`) another thread may still be setting an entry: every entry is
   * frozen with xchg, waiting while it is frozen by someone else. Under the
   * write lock only present entries are, and still atomically: the processor
   * and the fast path may set A/D/W in them.
   */
  private handleRemovedPt(sp: number, level: number, shared: boolean): void {
    const k = this.kvm;
    const m = k.mem;
    const base = m.load32(k.pages.hdr(sp, SP_GFN));
    const span = pagesPerSpte(level);
    for (let i = 0; i < 512; i++) {
      // KVM visits all 512 entries; one outside every memslot is never made present, so kvmmu skips it.
      if (!this.inSlots(base + i * span, span)) continue;
      const sptep = k.pages.sptep(sp, i);
      let old: bigint;
      if (shared && !k.guardFreezeRemovedPt) {
        // Guard `freeze-removed-pt` off: the first TDP MMU's teardown under the read lock (2021, before "Mark SPTEs
        // in disconnected pages as removed"), a read and a plain clear: a fault that walked into the table before it
        // was unlinked can still set the entry afterwards.
        old = m.load64(sptep);
        m.store64(sptep, 0n);
        this.handleChangedSpte(base + i * span, old, 0n, level, shared);
        continue;
      }
      if (shared) {
        for (;;) {
          old = m.xchg64(sptep, FROZEN_SPTE);
          if (old !== FROZEN_SPTE) break;
          m.waitWhile32(2 * sptep, Number(FROZEN_SPTE)); // another thread's multi-step change: wait it out
        }
      } else {
        // Under the write lock nobody makes an absent entry present (faults need the read lock; the fast path and
        // the processor change present entries only), so a plain look skips it without a scheduling point.
        if (!isShadowPresentPte(m.u64[sptep]!)) continue;
        old = m.load64(sptep);
        if (!isShadowPresentPte(old)) continue;
        old = this.writeSpte(sptep, old, FROZEN_SPTE);
      }
      this.handleChangedSpte(base + i * span, old, FROZEN_SPTE, level, shared);
    }
    this.freeAfterGracePeriod(sp);
  }

  /** KVM's kvm_tdp_mmu_write_spte under the write lock: xchg when the fast path or the processor may change the SPTE meanwhile. Returns the old value. */
  private writeSpte(sptep: number, old: bigint, newSpte: bigint): bigint {
    const m = this.kvm.mem;
    if (spteHasVolatileBits(old, this.kvm.guardAtomicVolatileClear)) return m.xchg64(sptep, newSpte);
    m.store64(sptep, newSpte);
    return old;
  }

  // ---- the write-lock paths ----

  /**
   * KVM's kvm_tdp_mmu_zap_leafs (the MMU-notifier unmap): drop every leaf
   * mapping a gfn in [start, end). Returns whether TLBs must be flushed; the
   * caller flushes before it drops the lock. Contract: mmu_lock held for write.
   */
  zapLeafs(start: number, end: number): boolean {
    let flush = false;
    // Invalid roots too: until they are zapped they still map the range.
    for (const root of this.roots(false)) if (this.zapLeafsOfRoot(root, start, end)) flush = true;
    return flush;
  }

  /** Drop every leaf of `root` mapping a gfn in [start, end); true if any was. Contract: mmu_lock held for write. */
  private zapLeafsOfRoot(root: number, start: number, end: number): boolean {
    const it = this.iter;
    let zapped = false;
    for (it.begin(root, start, end); it.valid; it.next()) {
      if (!isShadowPresentPte(it.oldSpte) || !isLastSpte(it.oldSpte, it.level)) continue;
      const old = this.writeSpte(it.sptep, it.oldSpte, 0n);
      this.handleChangedSpte(it.gfn, old, 0n, it.level, false);
      it.oldSpte = 0n;
      zapped = true;
    }
    return zapped;
  }

  /**
   * KVM's kvm_tdp_mmu_zap_leafs as kvm_zap_gfn_range calls it (may yield):
   * every leaf mapping a gfn in [start, end), root after root, each root held
   * by a reference while the walk is in it (for_each_tdp_mmu_root_yield_safe).
   * KVM's walk may drop mmu_lock at any step once it has made progress
   * (tdp_mmu_iter_cond_resched, when the scheduler or a waiter asks); kvmmu
   * drops it where that matters, as the walk of the next root begins. Before
   * dropping it, the flush owed for every root zapped so far is done (guard
   * `flush-before-yield`); before a835429cda91 the walk flushed only what the
   * current root owed — nothing yet — and kept the rest for the end. Returns
   * whether TLBs must still be flushed. Contract: mmu_lock held for write.
   */
  zapLeafsYielding(start: number, end: number): boolean {
    const k = this.kvm;
    let flush = false;
    let prev = -1;
    for (let i = 0; i < this.nRootSlots; i++) {
      const root = this.rootAt(i);
      if (root < 0 || !this.getRootUnlessZero(root)) continue;
      if (prev >= 0) {
        if (flush && k.guardFlushBeforeYield) {
          k.kvmFlushRemoteTlbs();
          flush = false;
        }
        k.mem.writeUnlock(k.mmuLock);
        k.mem.writeLock(k.mmuLock);
        this.putRoot(prev);
      }
      if (this.zapLeafsOfRoot(root, start, end)) flush = true;
      prev = root;
    }
    if (prev >= 0) this.putRoot(prev);
    return flush;
  }

  /**
   * Zap everything below the root (KVM's kvm_tdp_mmu_zap_all: memslot
   * changes, teardown): each present top-level entry is cleared and its table
   * torn down (handleRemovedPt under the write lock: present entries frozen
   * atomically, since the fast path and the processor may still set bits in
   * them), the tables freed after a grace period, TLBs flushed. kvmmu keeps the
   * root itself (its vCPUs load one root for life; KVM would invalidate it and
   * have the vCPUs load a new one, and zap invalidated roots under the read
   * lock, which kvmmu does not model yet). Contract: mmu_lock held for write.
   */
  zapAll(): void {
    const k = this.kvm;
    const span = pagesPerSpte(4);
    let flush = false;
    // Inside a read section until the flush is done: the torn-down tables' grace period cannot end before it, so
    // no processor still holding a translation through them (a vCPU in guest mode, its paging-structure cache)
    // sees them freed.
    this.rcu.readLock();
    for (const root of this.roots(false)) {
      for (let i = 0; i < 512; i++) {
        if (!this.inSlots(i * span, span)) continue;
        const sptep = k.pages.sptep(root, i);
        const old = k.mem.load64(sptep);
        if (!isShadowPresentPte(old)) continue;
        k.mem.store64(sptep, 0n); // a non-leaf: nothing sets bits in it that matter
        this.handleChangedSpte(i * span, old, 0n, 4, false);
        flush = true;
      }
    }
    if (flush) k.kvmFlushRemoteTlbs();
    this.rcu.readUnlock();
  }

  /**
   * Write-protect the leaf mapping `gfn` for dirty logging (KVM's
   * kvm_tdp_mmu_clear_dirty_pt_masked with write-protection, as a get or clear
   * of the dirty log does for each gfn it hands over): clear W, keeping
   * MMU-writable so the fast path may set it again. Returns whether TLBs must
   * be flushed. Contract: mmu_lock held for write.
   */
  writeProtectGfn(gfn: number): boolean {
    const k = this.kvm;
    const it = this.iter;
    let flush = false;
    for (const root of this.roots(true)) {
      for (it.begin(root, gfn, gfn + 1); it.valid; it.next()) {
        if (it.level !== 1 || !isShadowPresentPte(it.oldSpte)) continue;
        if (k.spte.spteWriteProtect(it.sptep, false)) flush = true;
        break;
      }
    }
    return flush;
  }

  /**
   * KVM's kvm_tdp_mmu_write_protect_gfn (write_protect_gfn), for write-tracking:
   * the leaf mapping `gfn` made neither writable nor MMU-writable, so that
   * neither the processor nor the fast path writes the page until tracking
   * ends. Returns whether TLBs must be flushed. With guard
   * `wrprot-mmu-writable` off, the code before 7c8a4742c4ab (2022): an SPTE
   * already read-only is skipped (`if (!is_writable_pte(old)) break;`), so one
   * that dirty logging write-protected keeps MMU-writable, nothing is flushed,
   * and the fast path makes it writable again.
   * Contract: mmu_lock held for write.
   */
  writeProtectGfnForTracking(gfn: number): boolean {
    const it = this.iter;
    let flush = false;
    for (const root of this.roots(true)) {
      for (it.begin(root, gfn, gfn + 1); it.valid; it.next()) {
        const old = it.oldSpte;
        if (!isShadowPresentPte(old) || !isLastSpte(old, it.level)) continue;
        if (!this.kvm.guardWrprotMmuWritable && !isWritablePte(old)) break;
        const newSpte = clearBits(old, SPTE_WRITABLE_MASK | SPTE_MMU_WRITABLE);
        if (newSpte === old) break;
        const was = this.writeSpte(it.sptep, old, newSpte);
        this.handleChangedSpte(gfn, was, newSpte, it.level, false);
        flush = true;
        break;
      }
    }
    return flush;
  }

  // ---- the read-lock paths ----

  /**
   * KVM's kvm_tdp_mmu_wrprot_slot, when dirty logging is enabled: clear W in
   * every leaf of the slot with cmpxchg, retrying an entry whose value moved.
   * Returns whether TLBs must be flushed. Contract: mmu_lock held for read.
   */
  wrprotSlot(slot: number): boolean {
    const k = this.kvm;
    const it = this.iter;
    const rcu = this.rcu;
    let flush = false;
    rcu.readLock();
    const start = k.slotGfn[slot]!;
    for (const root of this.roots(true)) {
      for (it.begin(root, start, start + k.slotPages[slot]!); it.valid; it.next()) {
        for (;;) {
          const old = it.oldSpte;
          if (!isShadowPresentPte(old) || !isLastSpte(old, it.level) || !isWritablePte(old)) break;
          const newSpte = clearBits(old, SPTE_WRITABLE_MASK);
          if (k.mem.cmpxchg64(it.sptep, old, newSpte) === old) {
            this.handleChangedSpte(it.gfn, old, newSpte, it.level, true);
            flush = true;
            break;
          }
          it.refresh();
        }
      }
    }
    rcu.readUnlock();
    return flush;
  }

  /**
   * KVM's tdp_mmu_split_huge_pages_root over a slot (eager page splitting,
   * kvm_mmu_slot_try_split_huge_pages, when dirty logging is enabled): each
   * huge leaf of the slot is replaced by a table whose 512 entries map the
   * same pages with the same bits, filled before a cmpxchg links it. No TLB
   * flush: a TLB entry from the huge leaf translates as the new entries do.
   * An entry that changed meanwhile is read again and retried. Contract:
   * mmu_lock held for read.
   */
  splitHugePagesOfSlot(slot: number): void {
    const k = this.kvm;
    const it = this.iter;
    const rcu = this.rcu;
    rcu.readLock();
    const start = k.slotGfn[slot]!;
    for (const root of this.roots(true)) {
      for (it.begin(root, start, start + k.slotPages[slot]!, 2); it.valid; it.next()) {
        for (;;) {
          const old = it.oldSpte;
          if (it.level !== 2 || !isShadowPresentPte(old) || !isLastSpte(old, 2)) break;
          const child = this.allocPage(makeRole(1, true, ACC_ALL), it.gfn);
          this.fillSplitTable(child, old);
          const linked = makeNonleafSpte(child);
          if (k.mem.cmpxchg64(it.sptep, old, linked) === old) {
            this.handleChangedSpte(it.gfn, old, linked, 2, true);
            k.count(KVM_STAT.hugeSplits);
            break;
          }
          this.freePage(child, false);
          it.refresh();
        }
      }
    }
    rcu.readUnlock();
  }

  /**
   * KVM's zap_collapsible_spte_range (kvm_mmu_zap_collapsible_sptes, when
   * dirty logging is disabled): a table at level 1 whose 2 MiB could now be
   * mapped by one huge SPTE is zapped — frozen with a cmpxchg, its entries
   * torn down (handleRemovedPt, each frozen in turn), TLBs flushed, then
   * cleared — so the next fault there maps a huge page. Contract: mmu_lock
   * held for read.
   */
  zapCollapsibleSptes(slot: number): void {
    const k = this.kvm;
    const it = this.iter;
    const rcu = this.rcu;
    const mmu = k.mmu;
    rcu.readLock();
    const start = k.slotGfn[slot]!;
    const flags = k.mem.load32(k.slotFlagsWord(slot));
    for (const root of this.roots(true)) {
      for (it.begin(root, start, start + k.slotPages[slot]!, 2); it.valid; it.next()) {
        const old = it.oldSpte;
        if (it.level !== 2 || !isShadowPresentPte(old) || isLastSpte(old, 2)) continue;
        if (mmu.maxMappingLevel(it.gfn, flags) < 2) continue;
        // tdp_mmu_zap_spte_atomic: freeze, tear down, flush, then clear.
        if (k.mem.cmpxchg64(it.sptep, old, FROZEN_SPTE) !== old) continue; // changed meanwhile: leave it to its changer
        this.handleChangedSpte(it.gfn, old, FROZEN_SPTE, 2, true);
        k.kvmFlushRemoteTlbs();
        k.mem.store64(it.sptep, 0n);
        it.oldSpte = 0n;
      }
    }
    rcu.readUnlock();
  }

  /**
   * KVM's kvm_mmu_slot_gfn_write_protect at PG_LEVEL_2M, as a clear of the
   * dirty log with KVM_DIRTY_LOG_INITIALLY_SET does before write-protecting the
   * 4 KiB pages it clears: a huge leaf mapping `gfn` loses W and MMU-writable
   * (write_protect_gfn), so a write faults and the slow path maps a 4 KiB page.
   * Returns whether TLBs must be flushed. Contract: mmu_lock held for write.
   */
  writeProtectHugeGfn(gfn: number): boolean {
    const it = this.iter;
    let flush = false;
    for (const root of this.roots(true)) {
      for (it.begin(root, gfn, gfn + 1, 2); it.valid; it.next()) {
        const old = it.oldSpte;
        if (it.level !== 2 || !isShadowPresentPte(old) || !isLastSpte(old, 2)) continue;
        const newSpte = clearBits(old, SPTE_WRITABLE_MASK | SPTE_MMU_WRITABLE);
        if (newSpte === old) break;
        const was = this.writeSpte(it.sptep, old, newSpte);
        this.handleChangedSpte(it.gfn, was, newSpte, 2, false);
        flush = true;
        break;
      }
    }
    return flush;
  }

  // ---- no lock: aging ----

  /**
   * KVM's kvm_tdp_mmu_age_gfn_range: clear A in the leaves mapping [start,
   * end) with an atomic bit clear — or, for A/D-disabled SPTEs, make them
   * access-tracked — inside an RCU read section and without mmu_lock; true if
   * any was accessed. No flush, as on x86.
   */
  ageGfnRange(start: number, end: number): boolean {
    const k = this.kvm;
    const it = this.iter;
    let young = false;
    this.rcu.readLock();
    for (const root of this.roots(false)) {
      for (it.begin(root, start, end); it.valid; it.next()) {
        for (;;) {
          const old = it.oldSpte;
          if (!isShadowPresentPte(old) || !isLastSpte(old, it.level) || !isAccessedSpte(old)) break;
          // A clear of A; an A/D-disabled SPTE is access-tracked instead: P and W go, and the next access faults.
          if (k.mem.cmpxchg64(it.sptep, old, markSpteForAccessTrack(old)) === old) {
            young = true;
            if (!k.marksAtFault) {
              k.spte.setPagesAccessed(old);
              // Without a D bit a writable SPTE counts as dirty, and it loses W here (as KVM before 6.13 did).
              if (!spteAdEnabled(old) && isDirtySpte(old)) k.spte.setPagesDirty(old);
            }
            break;
          }
          it.refresh();
        }
      }
    }
    this.rcu.readUnlock();
    return young;
  }
}
