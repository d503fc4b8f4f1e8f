// The page-fault paths: the lockless fast path, the slow path under mmu_lock (direct and shadow), roots, invlpg, and emulated page-table writes.

import { NOTE } from '../shm/access';
import {
  ACC_ALL,
  ACC_EXEC_MASK,
  ACC_USER_MASK,
  ACC_WRITE_MASK,
  PFERR_FETCH_MASK,
  PFERR_PRESENT_MASK,
  PFERR_RSVD_MASK,
  PFERR_USER_MASK,
  PFERR_WRITE_MASK,
  PT_ACCESSED_MASK,
  PT_DIRTY_MASK,
  PT_PRESENT_MASK,
  CPU_CR0_WP,
  CPU_CR4_SMAP,
  CPU_CR4_SMEP,
  CPU_EFER_NX,
  gpteAccess,
  gpteGfn,
  hasBits,
  isRsvdGpte,
  setBits,
  type AccessKind,
} from '../x86/pte';
import {
  SPTE_WRITABLE_MASK,
  isLastSpte,
  isAccessTrackSpte,
  isMmuWritableSpte,
  restoreAccTrackSpte,
  isLargeLow,
  isLargePte,
  isShadowPresentLow,
  isShadowPresentPte,
  isWritablePte,
  makeHugeSpte,
  makeSpte,
  pagesPerSpte,
  spteIndex,
  spteLowToChild,
  spteToChild,
  spteToPfn,
} from '../x86/spte';
import type { GuestPtAccess } from '../x86/walker';
import { KvmmuError } from '../shm/errors';
import {
  KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,
  MMU_IN_PROGRESS,
  MMU_RANGE_END,
  MMU_RANGE_START,
  MMU_SEQ,
  KVM_STAT,
  OUTSIDE_GUEST_MODE,
  READING_SHADOW_PAGE_TABLES,
  SLOT_DIRTY_LOG,
  SLOT_INVALID,
  VCPU_ROOT,
  VCPU_STAT,
  type Kvm,
  type KvmVcpu,
} from './kvm';
import {
  ROLE_CR0_WP,
  ROLE_EFER_NX,
  ROLE_INVALID,
  ROLE_SMAP_ANDNOT_WP,
  ROLE_SMEP_ANDNOT_WP,
  SP_FLOOD,
  SP_GFN,
  SP_ROLE,
  SP_ROOT_COUNT,
  WRITE_FLOOD_LIMIT,
  makeRole,
  roleAccess,
  roleIsDirect,
  roleLevel,
} from './mmu-page';
import { SpteUpdate } from './spte-update';

/** Page-fault results (KVM's RET_PF_*), plus RET_PF_GUEST: the guest's own tables fault; inject #PF. */
export const RET_PF_RETRY = 1;
export const RET_PF_EMULATE = 2;
export const RET_PF_INVALID = 3;
export const RET_PF_FIXED = 4;
export const RET_PF_SPURIOUS = 5;
export const RET_PF_GUEST = 6;
export const RET_PF_NAMES = ['', 'RETRY', 'EMULATE', 'INVALID', 'FIXED', 'SPURIOUS', 'GUEST'];
/** Not a RET_PF_* of KVM's: a pre-fault refused with -EAGAIN (kvm_mmu_faultin_pfn returns the errno itself). */
export const RET_PF_EAGAIN = -11;
/** Errnos KVM_PRE_FAULT_MEMORY returns (negated, as the kernel does). */
export const EAGAIN = 11;
export const ENOENT = 2;

/** KVM's fast_page_fault tries its cmpxchg at most this many times before leaving it to the slow path. */
const FAST_PF_ATTEMPTS = 5;

/** Outcomes of one fast-path fix attempt: W set; the cmpxchg lost (walk again); not allowed (take the slow path). */
const FAST_FIX_DONE = 0;
const FAST_FIX_LOST = 1;
const FAST_FIX_REFUSED = 2;

/** KVM's PTE_PREFETCH_NUM: a direct fault looks at this aligned group of leaf SPTEs to map ahead. */
const PTE_PREFETCH_NUM = 8;

export function accessFromErrorCode(ec: number): AccessKind {
  return {
    write: (ec & PFERR_WRITE_MASK) !== 0,
    user: (ec & PFERR_USER_MASK) !== 0,
    fetch: (ec & PFERR_FETCH_MASK) !== 0,
  };
}

/**
 * KVM's page_fault_can_be_fast: only a write to a present SPTE (a write-protect
 * fault) can be fixed by setting W. kvmmu has no access-tracked SPTEs (it models
 * SPTEs with A/D bits), the other case KVM fixes there today.
 */
export function pageFaultCanBeFast(ec: number, adBits = true): boolean {
  if ((ec & PFERR_RSVD_MASK) !== 0) return false;
  // Not present to the processor: without A/D bits, perhaps an access-tracked SPTE the fast path restores.
  if ((ec & PFERR_PRESENT_MASK) === 0) return !adBits;
  return (ec & PFERR_WRITE_MASK) !== 0;
}

export class Mmu implements GuestPtAccess {
  private readonly invalid: number[] = [];
  private readonly scratch: number[] = [];
  /** Frames directPtePrefetchMany has pinned. */
  private readonly prefetchPfns = new Int32Array(PTE_PREFETCH_NUM);

  constructor(private readonly kvm: Kvm) {}

  // ---- roots ----

  /**
   * KVM's kvm_mmu_load: give the vCPU its root shadow page — shared by every
   * vCPU in direct mode, keyed by the guest's CR3 in shadow mode (whose table
   * then becomes write-tracked). Roots stay pinned while used.
   */
  kvmMmuLoad(vcpu: KvmVcpu): void {
    const k = this.kvm;
    if (k.isTdp) {
      k.tdp.getVcpuRoot(vcpu);
      return;
    }
    const direct = k.config.mode === 'direct';
    k.mem.lock(k.mmuLock);
    let root: number;
    try {
      k.pages.makeMmuPagesAvailable();
      root = k.pages.getShadowPage(direct ? 0 : Math.floor(vcpu.cr3 / 4096), makeRole(4, direct, ACC_ALL) | this.cpuRole(vcpu.cpu));
    } catch (e) {
      k.mem.unlock(k.mmuLock); // kvmmu's shadow-page pool is too small: report it, do not hang the others
      throw e;
    }
    const rc = k.pages.hdr(root, SP_ROOT_COUNT);
    k.lockedStore(rc, k.lockedLoad(rc) + 1);
    vcpu.root = root;
    k.mem.store32(k.vcpuWord(vcpu.idx, VCPU_ROOT), root + 1);
    k.mem.unlock(k.mmuLock);
  }

  /**
   * KVM's kvm_mmu_reset_context after the guest changed a control bit that its
   * MMU role depends on (CR0.WP, CR4.SMEP/SMAP, EFER.NX, SMM): drop the vCPU's
   * root (kvm_mmu_unload; a root no vCPU holds any more and already zapped is
   * freed) and load the one for the new role. The caller flushes the vCPU's TLB.
   */
  kvmMmuResetContext(vcpu: KvmVcpu): void {
    const k = this.kvm;
    if (k.isTdp) {
      k.tdp.resetContext(vcpu);
      return;
    }
    if (vcpu.root >= 0) {
      k.mem.lock(k.mmuLock);
      const rc = k.pages.hdr(vcpu.root, SP_ROOT_COUNT);
      const n = k.lockedLoad(rc) - 1;
      k.lockedStore(rc, n);
      if (n === 0 && (k.lockedLoad(k.pages.hdr(vcpu.root, SP_ROLE)) & ROLE_INVALID) !== 0) {
        k.pages.prepareZap(vcpu.root, this.invalid);
        k.pages.commitZap(this.invalid);
      }
      k.mem.unlock(k.mmuLock);
      vcpu.root = -1;
    }
    this.kvmMmuLoad(vcpu);
  }

  /** Does going from control bits `a` to `b` change the MMU role (so the context must be reset)? */
  roleChanges(a: number, b: number): boolean {
    return this.cpuRole(a) !== this.cpuRole(b);
  }

  /**
   * The role bits the guest's control bits contribute in shadow mode (KVM's
   * kvm_calc_cpu_role: efer_nx, cr0_wp, and SMEP/SMAP when CR0.WP is off);
   * none in direct mode, which runs the guest with paging off.
   */
  private cpuRole(c: number): number {
    if (this.kvm.config.mode !== 'shadow') return 0;
    const wp = (c & CPU_CR0_WP) !== 0;
    return (
      ((c & CPU_EFER_NX) !== 0 ? ROLE_EFER_NX : 0) |
      (wp ? ROLE_CR0_WP : 0) |
      (!wp && (c & CPU_CR4_SMEP) !== 0 ? ROLE_SMEP_ANDNOT_WP : 0) |
      (!wp && (c & CPU_CR4_SMAP) !== 0 ? ROLE_SMAP_ANDNOT_WP : 0)
    );
  }

  // ---- the fault entry point ----

  /**
   * KVM's kvm_mmu_page_fault: handle a VM exit for a page fault at `gva`
   * (a gpa in direct mode) with hardware error code `ec`. Returns RET_PF_*;
   * for RET_PF_GUEST the guest's error code is in vcpu.walker.errorCode.
   */
  kvmMmuPageFault(vcpu: KvmVcpu, gva: number, ec: number): number {
    const mode = this.kvm.config.mode;
    const ret =
      mode === 'direct'
        ? this.directPageFault(vcpu, gva, ec)
        : mode === 'tdp'
          ? this.kvm.tdp.pageFault(vcpu, gva, ec, (ec & PFERR_WRITE_MASK) !== 0)
          : this.shadowPageFault(vcpu, gva, ec);
    switch (ret) {
      case RET_PF_FIXED:
        vcpu.count(VCPU_STAT.pfFixed);
        break;
      case RET_PF_SPURIOUS:
        vcpu.count(VCPU_STAT.pfSpurious);
        break;
      case RET_PF_RETRY:
        vcpu.count(VCPU_STAT.pfRetry);
        break;
      case RET_PF_EMULATE:
        vcpu.count(VCPU_STAT.pfEmulate);
        break;
      case RET_PF_GUEST:
        vcpu.count(VCPU_STAT.pfGuest);
        break;
    }
    return ret;
  }

  // ---- the lockless fast path ----

  /**
   * KVM's walk_shadow_page_lockless_begin: announce a lockless walk by entering
   * READING_SHADOW_PAGE_TABLES (with interrupts off in KVM). A remote TLB flush
   * waits until the walk ends, and shadow pages are freed only after a flush,
   * so no page this walk reads can be freed under it (guard `lockless-walk-sync`).
   */
  walkShadowPageLocklessBegin(vcpu: KvmVcpu): void {
    this.kvm.mem.note(NOTE.walkBegin, vcpu.idx, 0);
    if (!this.kvm.guardLocklessWalkSync) return;
    // The TDP MMU's kvm_tdp_mmu_walk_lockless_begin: an RCU read section; removed tables are freed after a grace
    // period. For a vCPU's own thread it touches no shared word (the vCPU is a QSBR reader: Kvm.vcpuQsbr).
    if (this.kvm.isTdp) this.kvm.tdp.rcu.readLock();
    else vcpu.setMode(READING_SHADOW_PAGE_TABLES);
  }

  /**
   * The vCPU's task is switched out outside any RCU read section (TDP mode, guard `lockless-walk-sync` off): while
   * it is out it holds no grace period back (offline, for RCU), any number of grace periods may end, and its CPU
   * runs RCU's callbacks meanwhile (rcu_core), freeing tables.
   */
  private rcuPreemptionPoint(vcpu: KvmVcpu): void {
    const tdp = this.kvm.tdp;
    tdp.rcu.setOnline(vcpu.idx, false);
    tdp.reclaim();
    tdp.rcu.setOnline(vcpu.idx, true);
  }

  walkShadowPageLocklessEnd(vcpu: KvmVcpu): void {
    this.kvm.mem.note(NOTE.walkEnd, vcpu.idx, 0);
    if (!this.kvm.guardLocklessWalkSync) return;
    if (this.kvm.isTdp) this.kvm.tdp.rcu.readUnlock();
    else vcpu.setModeRelease(OUTSIDE_GUEST_MODE);
  }

  /**
   * KVM's fast_page_fault: fix a write-protect fault without mmu_lock by setting
   * W with one cmpxchg, then mark the gfn dirty.
   *
   * Why it is safe: every change another thread makes to the SPTE — zap, pfn
   * change, write-protection for shadow paging (which clears MMU_WRITABLE) —
   * changes its value, so the cmpxchg fails and we walk again (up to
   * FAST_PF_ATTEMPTS in all). The value alone cannot tell one gfn from another,
   * though, so which gfn gets marked dirty matters:
   *  - direct mode: the faulting address's (KVM's fault->gfn), which is the
   *    entry's;
   *  - a direct page in shadow mode (below a guest 2 MiB page): the gfn the
   *    page fixes for the entry, its base plus the index, as 2012's
   *    fast_pf_fix_direct_spte took it (kvm_mmu_page_get_gfn). The guest walk's
   *    gfn would be stale once the guest repointed its large PDE and the entry
   *    came to map the new range;
   *  - an indirect page: the gfn the guest walk found before this lockless walk
   *    began (the seed's design; the entry's recorded gfn changes with the
   *    entry, so it proves nothing). Between the guest walk and the cmpxchg the
   *    pfn may have been freed and reused for another gfn that now sits in the
   *    same entry with the same bits (seed 1, the ABA):
   *
   *    vCPU 0                               elsewhere
   *    guest walk: gpte = gfn1
   *                                         host swaps gfn1 out: spte = 0, pfn1 freed
   *                                         pfn1 reused for gfn2; guest points the
   *                                         gpte at gfn2: spte = pfn1 again
   *    spte = *sptep  (pfn1)
   *    cmpxchg succeeds; marks gfn1 dirty   -> gfn2's write is missing from the log
   *
   * Settings for indirect pages (config.indirectFastPath): `pin`, the seed's fix —
   * pin gfn1->pfn with gupFast (the reference stops the frame being freed and
   * reused; a writable mapping cannot be KSM-shared) and require the pinned pfn
   * to equal the SPTE's (guard `pin-indirect`; with it off, as `unsafe`); `off`,
   * KVM today: indirect pages go to the slow path.
   *
   * Contract: called without mmu_lock. Returns RET_PF_FIXED, RET_PF_SPURIOUS or
   * RET_PF_INVALID (take the slow path). It tests pageFaultCanBeFast first, as
   * KVM's does, but the fault handlers test it before calling: otherwise every
   * fault that maps memory for the first time calls it only to return, and V8,
   * which compiles a function from the calls it has seen, compiles the walk and
   * the fix below as cold code (seen: 85-93 ns a fast fault instead of 64-75,
   * `kvmmu bench dirty-log`'s fast-fault line).
   */
  fastPageFault(vcpu: KvmVcpu, gva: number, ec: number, gfn: number): number {
    if (!pageFaultCanBeFast(ec, this.kvm.adBits)) return RET_PF_INVALID;
    const k = this.kvm;
    const mem = k.mem;
    const pages = k.pages;
    let ret = RET_PF_INVALID;
    this.walkShadowPageLocklessBegin(vcpu);
    // TDP mode without the RCU read section (guard `lockless-walk-sync` off): nothing holds a grace period off
    // while the walk is between two tables, so a preemptible kernel may switch the task out there, for as long as
    // it likes. Each step down is such a point (rcuPreemptionPoint).
    const preemptible = k.isTdp && !k.guardLocklessWalkSync;
    for (let attempt = 0; attempt < FAST_PF_ATTEMPTS; attempt++) {
      // KVM's fast_pf_get_last_sptep: walk to the last shadow-present entry or the first absent one
      // (entries above level 1 read by their low word: see spteLowToChild).
      let sp = vcpu.root;
      let level = 4;
      let sptep = pages.sptep(sp, spteIndex(gva, level));
      let low = mem.load64Low(sptep);
      while (level > 1 && isShadowPresentLow(low) && !isLargeLow(low)) {
        sp = spteLowToChild(low);
        level--;
        if (preemptible) this.rcuPreemptionPoint(vcpu);
        sptep = pages.sptep(sp, spteIndex(gva, level));
        if (level > 1) low = mem.load64Low(sptep);
      }
      // Above level 1 only a huge leaf (TDP mode with huge pages) is a last SPTE.
      if (level > 1 && !(isShadowPresentLow(low) && isLargeLow(low))) break;
      const spte = mem.load64(sptep);
      if (!isShadowPresentPte(spte)) break;
      // Read again, the entry is no longer a huge leaf (split meanwhile): walk again.
      if (level > 1 && !isLastSpte(spte, level)) continue;
      // (Only A/D-disabled SPTEs are ever access-tracked: with A/D bits the test is skipped.)
      if (!k.adBits && isAccessTrackSpte(spte)) {
        // The fast path's second job (A/D bits off): restore an SPTE aging made access-tracked — with W too for a
        // write, from MMU-writable — with one cmpxchg, as KVM's fast_page_fault does.
        const fix = this.fastPfRestoreAccTrack(sptep, spte, (ec & PFERR_WRITE_MASK) !== 0, gfn);
        if (fix === FAST_FIX_DONE) {
          ret = RET_PF_FIXED;
          break;
        }
        if (fix === FAST_FIX_REFUSED) break;
        vcpu.count(VCPU_STAT.pfFastRetry);
        continue;
      }
      // Present to the processor: a read fault has nothing left to fix (only A/D-disabled SPTEs bring reads here).
      if ((ec & PFERR_WRITE_MASK) === 0) {
        ret = RET_PF_SPURIOUS;
        break;
      }
      // Another vCPU fixed it, or this is a stale TLB entry: nothing to do (KVM's is_access_allowed).
      if (isWritablePte(spte)) {
        ret = RET_PF_SPURIOUS;
        break;
      }
      if (!isMmuWritableSpte(spte)) break;
      // A huge SPTE has one W bit for 512 pages but the fix marks one gfn dirty: while the slot logs dirty pages the
      // slow path maps a 4 KiB page instead (guard `fast-skips-huge`, c126d94f2c90; before it, the 2013 fast path
      // made the huge SPTE writable and marked only its first page).
      if (level > 1 && k.guardFastSkipsHuge && (k.memslotFlags(gfn) & SLOT_DIRTY_LOG) !== 0) break;
      // A 4 KiB SPTE of a two-dimensional MMU (direct, TDP) maps the faulting gfn (KVM's fault->gfn); TDP tables are
      // all direct, so the TDP MMU's fast path reads no role. A huge SPTE marks the gfn its entry maps first, as
      // 2013's fast_pf_fix_direct_spte took it from the page; a direct page in shadow mode, the gfn it fixes.
      let fix: number;
      if (k.config.mode !== 'shadow' && level === 1) fix = this.fastPfFixDirectSpte(sptep, spte, gfn);
      else {
        const role = pages.role(sp);
        fix = roleIsDirect(role) ? this.fastPfFixDirectSpte(sptep, spte, pages.entryGfn(sp, pages.indexOf(sptep), role)) : this.fastPfFixIndirectSpte(sptep, spte, gfn);
      }
      if (fix === FAST_FIX_DONE) {
        ret = RET_PF_FIXED;
        break;
      }
      if (fix === FAST_FIX_REFUSED) break;
      vcpu.count(VCPU_STAT.pfFastRetry);
    }
    this.walkShadowPageLocklessEnd(vcpu);
    if (ret === RET_PF_FIXED) vcpu.count(VCPU_STAT.pfFast);
    return ret;
  }

  /**
   * KVM's fast_pf_fix_direct_spte: set W on `sptep` if it still holds `spte`,
   * then mark `gfn` dirty. Returns FAST_FIX_DONE, or FAST_FIX_LOST when the
   * cmpxchg found another value (walk again).
   */
  private fastPfFixDirectSpte(sptep: number, spte: bigint, gfn: number): number {
    const k = this.kvm;
    if (k.mem.cmpxchg64(sptep, spte, setBits(spte, SPTE_WRITABLE_MASK)) !== spte) return FAST_FIX_LOST;
    k.markPageDirty(gfn);
    k.mem.note(NOTE.fastFixed, sptep, gfn);
    return FAST_FIX_DONE;
  }

  /**
   * Restore the access-tracked SPTE `spte` at `sptep` (TDP mode, A/D bits off):
   * P back, and W for a write when the SPTE is MMU-writable (then mark `gfn`
   * dirty). A write to an SPTE that is not MMU-writable is the slow path's.
   */
  private fastPfRestoreAccTrack(sptep: number, spte: bigint, write: boolean, gfn: number): number {
    const k = this.kvm;
    let newSpte = restoreAccTrackSpte(spte);
    if (write) {
      if (!isMmuWritableSpte(spte)) return FAST_FIX_REFUSED;
      newSpte = setBits(newSpte, SPTE_WRITABLE_MASK);
    }
    if (k.mem.cmpxchg64(sptep, spte, newSpte) !== spte) return FAST_FIX_LOST;
    if (write) {
      k.markPageDirty(gfn);
      k.mem.note(NOTE.fastFixed, sptep, gfn);
    }
    return FAST_FIX_DONE;
  }

  /**
   * The fast path on an indirect (shadow-paging) page, by config.indirectFastPath:
   * `off` refuses (KVM today); `pin` (guard `pin-indirect` on) first pins the
   * guest-walk gfn's pfn and refuses unless it is the SPTE's, holding the pin
   * across the cmpxchg; `unsafe` (or `pin` with the guard off) fixes it as a
   * direct SPTE. Returns FAST_FIX_DONE, FAST_FIX_LOST or FAST_FIX_REFUSED.
   */
  private fastPfFixIndirectSpte(sptep: number, spte: bigint, gfn: number): number {
    const k = this.kvm;
    const setting = k.config.indirectFastPath;
    if (setting === 'off') return FAST_FIX_REFUSED;
    if (setting === 'unsafe' || !k.guardPinIndirect) return this.fastPfFixDirectSpte(sptep, spte, gfn);
    const pinned = k.host.gupFast(k.gfnToHvpn(gfn), true);
    if (pinned !== spteToPfn(spte)) {
      if (pinned >= 0) k.host.putPage(pinned);
      return FAST_FIX_REFUSED;
    }
    const fix = this.fastPfFixDirectSpte(sptep, spte, gfn);
    k.host.putPage(pinned);
    return fix;
  }

  // ---- the slow path, direct mode ----

  /** KVM's direct_page_fault: the fast path first, else the slow path (faultInAndMap). */
  directPageFault(vcpu: KvmVcpu, gpa: number, ec: number): number {
    const k = this.kvm;
    // With huge pages the fault reads the memslot's flags (may it map 2 MiB?) inside kvm->srcu, which enabling
    // dirty logging waits for (kvmmu models that SRCU section only where a memslot change depends on it).
    if (!k.config.hugePages) return this.directPageFaultInSrcu(vcpu, gpa, ec, -1);
    const srcu = k.srcu;
    srcu.readLock();
    try {
      return this.directPageFaultInSrcu(vcpu, gpa, ec, k.memslotFlags(Math.floor(gpa / 4096)));
    } finally {
      srcu.readUnlock();
    }
  }

  private directPageFaultInSrcu(vcpu: KvmVcpu, gpa: number, ec: number, flags: number): number {
    const k = this.kvm;
    if (k.fastPath && pageFaultCanBeFast(ec, k.adBits)) {
      const r = this.fastPageFault(vcpu, gpa, ec, Math.floor(gpa / 4096));
      if (r !== RET_PF_INVALID) return r;
    }
    return this.faultInAndMap(vcpu, gpa, Math.floor(gpa / 4096), (ec & PFERR_WRITE_MASK) !== 0, flags);
  }

  /**
   * The slow path both MMUs share (KVM's kvm_faultin_pfn, the notifier check
   * and the map under mmu_lock): snapshot the invalidation sequence, look up
   * and pin the pfn without the lock, then under mmu_lock retry if an
   * invalidation ran meanwhile (guard `notifier-retry`), else build the path
   * of shadow pages and install the SPTE (direct_map or FNAME(fetch)).
   */
  private faultInAndMap(vcpu: KvmVcpu, gva: number, gfn: number, write: boolean, flags = -1): number {
    const k = this.kvm;
    const hvpn = k.gfnToHvpn(gfn);
    const mmuSeq = k.mem.load32(k.mmuBase + MMU_SEQ);
    const pfn = k.host.getUserPage(hvpn, write);
    const hostWritable = k.host.lastWritable;
    if (k.mem.lock(k.mmuLock)) vcpu.count(VCPU_STAT.pfLockContended);
    // The reference is dropped before mmu_lock is (KVM's kvm_mmu_finish_page_fault
    // runs before write_unlock; in 2012 mmu_set_spte's kvm_release_pfn_clean did).
    if (k.guardNotifierRetry && this.isPageFaultStale(mmuSeq, hvpn)) {
      k.host.putPage(pfn); // unused: not marked
      k.mem.unlock(k.mmuLock);
      this.waitForInvalidation();
      return RET_PF_RETRY;
    }
    let ret: number;
    try {
      k.pages.makeMmuPagesAvailable();
      ret = k.config.mode === 'direct' ? this.directMap(vcpu, gfn, pfn, hostWritable, write, flags) : this.fetch(vcpu, gva, pfn, hostWritable, write);
    } catch (e) {
      // kvmmu's pools ran dry (KVM fills its caches before taking the lock, so it
      // cannot fail here): let the error reach the caller, not leave every other
      // thread spinning on mmu_lock or a frame pinned forever.
      k.host.putPage(pfn);
      k.mem.unlock(k.mmuLock);
      throw e;
    }
    this.releaseFaultinPage(pfn, ret !== RET_PF_RETRY, hostWritable);
    k.mem.unlock(k.mmuLock);
    if (ret === RET_PF_FIXED) vcpu.count(VCPU_STAT.pfSlow);
    return ret;
  }

  /**
   * Drop a fault's (or a prefetch's) reference on `pfn`. With page marking at
   * fault time (config.pageMarking `fault`, KVM since 6.13:
   * kvm_release_faultin_page) a page the fault `used` is first marked accessed,
   * and dirty if it came from a writable host mapping: KVM may make the SPTE
   * writable later without telling the host (the fast path), so it marks the
   * page when it could. Folios can only be marked safely under mmu_lock, which
   * the caller holds. With `spte` marking the page is marked later, from the
   * SPTE's A/D bits, so only the reference goes.
   */
  releaseFaultinPage(pfn: number, used: boolean, hostWritable: boolean): void {
    const k = this.kvm;
    if (k.marksAtFault && used) {
      if (hostWritable) k.host.setPfnDirty(pfn);
      k.host.setPfnAccessed(pfn);
    }
    k.host.putPage(pfn);
  }

  /**
   * KVM's mmu_invalidate_retry_gfn: did an MMU-notifier invalidation start or
   * finish since the fault read `mmuSeq`, or is one covering `hvpn` running?
   * Without this check (guard `notifier-retry` off) a fault can install a pfn
   * the host has just unmapped and will free. Contract: mmu_lock held.
   */
  isPageFaultStale(mmuSeq: number, hvpn: number): boolean {
    const k = this.kvm;
    if (
      k.lockedLoad(k.mmuBase + MMU_IN_PROGRESS) > 0 &&
      hvpn >= k.lockedLoad(k.mmuBase + MMU_RANGE_START) &&
      hvpn < k.lockedLoad(k.mmuBase + MMU_RANGE_END)
    )
      return true;
    return k.mem.load32(k.mmuBase + MMU_SEQ) !== mmuSeq;
  }

  /**
   * The level a fault may map `gfn` at (KVM's kvm_mmu_hugepage_adjust with
   * kvm_mmu_max_mapping_level): 2 (a 2 MiB SPTE) when the VM has huge pages,
   * the memslot does not log dirty pages (`flags`, as the fault read them
   * inside kvm->srcu), the aligned 2 MiB around `gfn` lies in the memslot at
   * the same alignment in host memory, the host maps it with a huge page, and
   * no gfn in it is write-tracked; else 1. Contract: mmu_lock held (the
   * tracking count changes under the write lock).
   */
  maxMappingLevel(gfn: number, flags: number): number {
    const k = this.kvm;
    if (!k.config.hugePages || (flags & SLOT_DIRTY_LOG) !== 0) return 1;
    const s = k.slotOf(gfn);
    const g0 = gfn - (gfn % 512);
    if (s < 0 || g0 < k.slotGfn[s]! || g0 + 512 > k.slotGfn[s]! + k.slotPages[s]!) return 1;
    const h0 = k.gfnToHvpn(g0);
    if (h0 % 512 !== 0 || k.host.mappingLevel(h0) < 2) return 1;
    return k.lockedLoad(k.pages.lpageDisallowBase + h0 / 512) > 0 ? 1 : 2;
  }

  /**
   * Before retrying a fault that raced with an invalidation, wait until the
   * invalidation in progress (if any) ends: retrying at once would only find
   * it still running. KVM's vCPU re-enters the guest and faults again; here the
   * wait is one access-layer operation, so the checker blocks the vCPU instead
   * of spinning it.
   */
  waitForInvalidation(): void {
    const k = this.kvm;
    const n = k.mem.load32(k.mmuBase + MMU_IN_PROGRESS);
    if (n > 0) k.mem.waitWhile32(k.mmuBase + MMU_IN_PROGRESS, n);
  }

  /** KVM's direct_map: walk from the root, creating direct shadow pages, and map gfn -> pfn. Contract: mmu_lock held. */
  private directMap(vcpu: KvmVcpu, gfn: number, pfn: number, hostWritable: boolean, write: boolean, flags = -1): number {
    const k = this.kvm;
    const gpa = gfn * 4096;
    // kvm_mmu_hugepage_adjust: a 2 MiB SPTE of the huge page's first frame where one may map gfn.
    const goal = this.maxMappingLevel(gfn, flags);
    let sp = vcpu.root;
    for (let level = 4; level > goal; level--) {
      const sptep = k.pages.sptep(sp, spteIndex(gpa, level));
      let low = k.mem.load64Low(sptep);
      if (isShadowPresentLow(low) && isLargeLow(low)) {
        // drop_large_spte: a huge SPTE where a smaller page must go is zapped (and flushed) first.
        k.spte.dropSpte(sptep);
        k.kvmFlushRemoteTlbs();
        low = 0;
      }
      if (isShadowPresentLow(low)) {
        sp = spteLowToChild(low);
        continue;
      }
      const span = pagesPerSpte(level);
      const child = k.pages.getShadowPage(Math.floor(gfn / span) * span, makeRole(level - 1, true, ACC_ALL));
      k.spte.linkShadowPage(sptep, child);
      sp = child;
    }
    const sptep = k.pages.sptep(sp, spteIndex(gpa, goal));
    // A huge page: one SPTE for the 2 MiB from its first gfn, mapping the huge page's first frame; no prefetch
    // (KVM prefetches into 4 KiB tables only).
    if (goal === 2) return this.mmuSetSpte(sp, sptep, ACC_ALL, gfn - (gfn % 512), pfn - (gfn % 512), hostWritable, write, false, 2);
    const ret = this.mmuSetSpte(sp, sptep, ACC_ALL, gfn, pfn, hostWritable, write, false);
    if (ret !== RET_PF_SPURIOUS && !this.invalidationInProgress()) this.directPtePrefetch(sptep, gfn, ACC_ALL);
    return ret;
  }


  /** Is an MMU-notifier invalidation running? Prefetching then could map what it is removing. Contract: mmu_lock held. */
  private invalidationInProgress(): boolean {
    return this.kvm.lockedLoad(this.kvm.mmuBase + MMU_IN_PROGRESS) > 0;
  }

  /**
   * KVM's __direct_pte_prefetch, run after a fault installs `sptep` (mapping
   * `gfn`) in a direct leaf page: read the aligned group of PTE_PREFETCH_NUM
   * SPTEs around it and map each run of absent neighbours with rights `acc`
   * (the page's role) ahead of use. KVM does this because SPTEs have an
   * Accessed bit (prefetched ones are made without it, so aging can tell them
   * apart). During dirty logging the memslot refuses writable prefetches, so
   * then it only reads the group — a cost of the slow path the fast path does
   * not pay. The caller checks that no invalidation is running. Contract:
   * mmu_lock held.
   */
  private directPtePrefetch(sptep: number, gfn: number, acc: number): void {
    const k = this.kvm;
    const first = sptep - (k.pages.indexOf(sptep) & (PTE_PREFETCH_NUM - 1));
    const end = first + PTE_PREFETCH_NUM;
    let start = -1;
    for (let p = first; p < end; p++) {
      if (isShadowPresentLow(k.mem.load64Low(p)) || p === sptep) {
        if (start < 0) continue;
        if (!this.directPtePrefetchMany(start, p, gfn + (start - sptep), acc)) return;
        start = -1;
      } else if (start < 0) start = p;
    }
    if (start >= 0) this.directPtePrefetchMany(start, end, gfn + (start - sptep), acc);
  }

  /**
   * KVM's gfn_to_memslot_dirty_bitmap: a prefetch with rights `acc` into
   * memslot `slot` may go ahead unless it is writable and the slot logs dirty
   * pages — a writable SPTE made without a write would let the guest's first
   * write bypass the log.
   */
  private slotTakesPrefetch(slot: number, acc: number): boolean {
    const k = this.kvm;
    return (acc & ACC_WRITE_MASK) === 0 || (k.mem.load32(k.slotFlagsWord(slot)) & SLOT_DIRTY_LOG) === 0;
  }

  /**
   * KVM's direct_pte_prefetch_many: map the absent SPTEs [start, end) of a
   * direct leaf page, which map consecutive gfns from `gfn`, with rights
   * `acc`. The memslot must hold the whole run and take the prefetch
   * (slotTakesPrefetch); then the host pages are pinned with GUP-fast,
   * stopping at the first that is not present and writable (no host faults:
   * KVM's kvm_prefetch_pages), and each is mapped without the Accessed bit and
   * released. Returns false when nothing could be mapped, which ends the
   * prefetch. Contract: mmu_lock held.
   */
  private directPtePrefetchMany(start: number, end: number, gfn: number, acc: number): boolean {
    const k = this.kvm;
    const slot = k.slotOf(gfn);
    if (slot < 0 || k.slotOf(gfn + (end - start) - 1) !== slot) return false;
    if (!this.slotTakesPrefetch(slot, acc)) return false;
    const pfns = this.prefetchPfns;
    const hvpn = k.gfnToHvpn(gfn); // the run lies in one memslot, so its host pages are consecutive too
    let n = 0;
    while (n < end - start) {
      const pfn = k.host.gupFast(hvpn + n, true);
      if (pfn < 0) break;
      pfns[n++] = pfn;
    }
    const sp = k.pages.spOf(start);
    for (let i = 0; i < n; i++) {
      this.mmuSetSpte(sp, start + i, acc, gfn + i, pfns[i]!, true, false, true);
      // Prefetch pins only writable host pages (kvm_release_page_dirty in 6.13's kvm_mmu_prefetch_sptes).
      this.releaseFaultinPage(pfns[i]!, true, true);
    }
    return n > 0;
  }

  /**
   * KVM's mmu_set_spte: install or update the leaf SPTE for gfn -> pfn with
   * rights `acc`. A gfn that holds a shadowed guest page table is mapped without
   * W or MMU_WRITABLE (KVM's mmu_try_to_unsync_pages refusing), and a write to it
   * is emulated. A writable SPTE marks the gfn dirty. A prefetched SPTE (no
   * access asked for it yet) is made without the Accessed bit. At `level` 2 it
   * is a huge SPTE for the 2 MiB from `gfn` (its first page), on the 2 MiB
   * rmap. Contract: mmu_lock held.
   */
  private mmuSetSpte(
    sp: number,
    sptep: number,
    acc: number,
    gfn: number,
    pfn: number,
    hostWritable: boolean,
    write: boolean,
    prefetch: boolean,
    level = 1,
  ): number {
    const k = this.kvm;
    let wrprot = false;
    if ((acc & ACC_WRITE_MASK) !== 0 && k.pages.gfnTrackCount(k.gfnToHvpn(gfn)) > 0) {
      acc &= ~ACC_WRITE_MASK;
      wrprot = true;
    }
    let newSpte = makeSpte(acc, pfn, hostWritable, !prefetch, write);
    if (level > 1) newSpte = makeHugeSpte(newSpte);
    let old = k.mem.load64(sptep);
    let flush = false;
    let ret = RET_PF_FIXED;
    if (isShadowPresentPte(old) && level > 1 && !isLargePte(old)) {
      // A huge page over a table (the 2 MiB was mapped by 4 KiB pages while dirty logging was on): the table is
      // unlinked (drop_parent_pte; it stays until it is zapped).
      k.spte.mmuPageZapPte(sptep);
      flush = true;
      old = 0n;
    } else if (isShadowPresentPte(old) && spteToPfn(old) !== pfn) {
      k.spte.dropSpte(sptep);
      flush = true;
      old = 0n;
    }
    if (isShadowPresentPte(old)) {
      newSpte = SpteUpdate.keepDirty(old, newSpte);
      if (old === newSpte) ret = RET_PF_SPURIOUS;
      else if (k.spte.mmuSpteUpdate(sptep, newSpte)) flush = true;
    } else {
      // Record the gfn before the SPTE becomes present, so a lockless reader never pairs it with a stale gfn.
      if (!roleIsDirect(k.lockedLoad(k.pages.hdr(sp, SP_ROLE)))) k.pages.setEntryGfn(sp, k.pages.indexOf(sptep), gfn);
      k.spte.mmuSpteSet(sptep, newSpte);
      k.spte.rmapAdd(gfn, sptep, level > 1);
    }
    if (isWritablePte(newSpte)) k.markPageDirty(gfn);
    if (flush) k.kvmFlushRemoteTlbs();
    if (wrprot && write) return RET_PF_EMULATE;
    return ret;
  }

  // ---- the slow path, shadow mode ----

  /**
   * KVM's FNAME(page_fault) for 64-bit guests: walk the guest's tables (a guest
   * fault is injected), try the fast path with the gfn the walk found (only
   * with the `pin`/`unsafe` settings, as the seed proposed: KVM today never calls
   * it for shadow paging), else look up the pfn and under mmu_lock build the
   * shadow path (FNAME(fetch)).
   */
  shadowPageFault(vcpu: KvmVcpu, gva: number, ec: number): number {
    const k = this.kvm;
    const w = vcpu.walker;
    if (!w.walk(this, vcpu.cr3, gva, accessFromErrorCode(ec), vcpu.cpu, vcpu.pkru)) return RET_PF_GUEST;
    // CR0.WP=0: the guest's supervisor may write a read-only page, but the shadow tables run with WP=1. KVM makes
    // the SPTE writable and supervisor-only (and, with SMEP, not executable); a user access then faults and
    // remakes it from the guest PTE (FNAME(page_fault)).
    if ((ec & PFERR_WRITE_MASK) !== 0 && (ec & PFERR_USER_MASK) === 0 && (w.pteAccess & ACC_WRITE_MASK) === 0 && (vcpu.cpu & CPU_CR0_WP) === 0) {
      w.pteAccess = (w.pteAccess | ACC_WRITE_MASK) & ~ACC_USER_MASK;
      if ((vcpu.cpu & CPU_CR4_SMEP) !== 0) w.pteAccess &= ~ACC_EXEC_MASK;
    }
    if (k.fastPath && k.config.indirectFastPath !== 'off' && pageFaultCanBeFast(ec, k.adBits)) {
      const r = this.fastPageFault(vcpu, gva, ec, w.gfn);
      if (r !== RET_PF_INVALID) return r;
    }
    return this.faultInAndMap(vcpu, gva, w.gfn, (ec & PFERR_WRITE_MASK) !== 0);
  }

  /**
   * KVM's FNAME(fetch): walk the shadow tables for `gva`, creating an indirect
   * shadow page for each guest table on the way (which write-tracks it), and
   * direct pages below a guest large page. After write-protecting each guest
   * table, re-read its entry: if the guest changed it since the walk, retry.
   * Contract: mmu_lock held.
   */
  private fetch(vcpu: KvmVcpu, gva: number, pfn: number, hostWritable: boolean, write: boolean): number {
    const k = this.kvm;
    const w = vcpu.walker;
    if (this.gpteChanged(vcpu, 4)) return RET_PF_RETRY;
    let sp = vcpu.root;
    for (let level = 4; level > w.level; level--) {
      k.lockedStore(k.pages.hdr(sp, SP_FLOOD), 0);
      const sptep = k.pages.sptep(sp, spteIndex(gva, level));
      const low = k.mem.load64Low(sptep);
      const present = isShadowPresentLow(low);
      const child = present
        ? spteLowToChild(low)
        : k.pages.getShadowPage(w.tableGfn[level - 1]!, makeRole(level - 1, false, w.tableAccess[level - 1]!) | this.cpuRole(vcpu.cpu));
      if (this.gpteChanged(vcpu, level - 1)) return RET_PF_RETRY;
      if (!present) k.spte.linkShadowPage(sptep, child);
      sp = child;
    }
    // A clean guest PTE is mapped read-only, so the first write faults and the
    // walker sets its D bit (KVM's protect_clean_gpte). Below a guest large page
    // that goes for the direct pages' rights too (KVM's direct_access), or a
    // prefetch would map the neighbours writable and the guest's D bit would never be set.
    const acc = !write && !hasBits(w.ptes[w.level]!, PT_DIRTY_MASK) ? w.pteAccess & ~ACC_WRITE_MASK : w.pteAccess;
    for (let level = w.level; level > 1; level--) {
      const sptep = k.pages.sptep(sp, spteIndex(gva, level));
      const low = k.mem.load64Low(sptep);
      if (isShadowPresentLow(low)) {
        const child = spteLowToChild(low);
        if (roleAccess(k.lockedLoad(k.pages.hdr(child, SP_ROLE))) === acc) {
          sp = child;
          continue;
        }
        // KVM's validate_direct_spte: the page was built for other rights (the
        // guest page was clean then, or is clean again): drop the link and build
        // one for these, so no entry keeps rights the guest PTE no longer gives.
        k.spte.mmuPageZapPte(sptep);
        k.kvmFlushRemoteTlbs();
      }
      const span = pagesPerSpte(level);
      const child = k.pages.getShadowPage(Math.floor(w.gfn / span) * span, makeRole(level - 1, true, acc) | this.cpuRole(vcpu.cpu));
      k.spte.linkShadowPage(sptep, child);
      sp = child;
    }
    k.lockedStore(k.pages.hdr(sp, SP_FLOOD), 0);
    const sptep = k.pages.sptep(sp, spteIndex(gva, 1));
    const ret = this.mmuSetSpte(sp, sptep, acc, w.gfn, pfn, hostWritable, write, false);
    if (ret !== RET_PF_SPURIOUS && !this.invalidationInProgress()) this.ptePrefetch(vcpu, sp, sptep);
    return ret;
  }

  /**
   * KVM's FNAME(pte_prefetch), after FNAME(fetch) installs `sptep`: below a
   * guest large page (a direct leaf page) as direct_pte_prefetch; otherwise
   * for each absent SPTE of the aligned group, in order, map what its guest
   * PTE (read with the group by gpteChanged) says, until one cannot be.
   * Contract: mmu_lock held; no invalidation running.
   */
  private ptePrefetch(vcpu: KvmVcpu, sp: number, sptep: number): void {
    const k = this.kvm;
    const role = k.lockedLoad(k.pages.hdr(sp, SP_ROLE));
    if (roleIsDirect(role)) {
      this.directPtePrefetch(sptep, vcpu.walker.gfn, roleAccess(role));
      return;
    }
    const first = sptep - (k.pages.indexOf(sptep) & (PTE_PREFETCH_NUM - 1));
    for (let i = 0; i < PTE_PREFETCH_NUM; i++) {
      const p = first + i;
      if (p === sptep || isShadowPresentLow(k.mem.load64Low(p))) continue;
      if (!this.prefetchGpte(vcpu, sp, role, p, vcpu.walker.prefetchPtes[i]!)) return;
    }
  }

  /**
   * KVM's FNAME(prefetch_gpte): map absent SPTE `sptep` of indirect page `sp`
   * as guest PTE `gpte` says, without the Accessed bit — only a present,
   * accessed, well-formed gpte; read-only if it is clean; never writable into a
   * dirty-logged memslot; only if GUP-fast pins the frame. False stops the prefetch.
   */
  private prefetchGpte(vcpu: KvmVcpu, sp: number, role: number, sptep: number, gpte: bigint): boolean {
    const k = this.kvm;
    if ((gpte & PT_PRESENT_MASK) === 0n || (gpte & PT_ACCESSED_MASK) === 0n || isRsvdGpte(gpte, 1, vcpu.cpu)) return false;
    const gfn = gpteGfn(gpte);
    let acc = roleAccess(role) & gpteAccess(gpte, vcpu.cpu);
    if (!hasBits(gpte, PT_DIRTY_MASK)) acc &= ~ACC_WRITE_MASK;
    const slot = k.slotOf(gfn);
    if (slot < 0 || !this.slotTakesPrefetch(slot, acc)) return false;
    const pfn = k.host.gupFast(k.gfnToHvpn(gfn), true);
    if (pfn < 0) return false;
    this.mmuSetSpte(sp, sptep, acc, gfn, pfn, true, false, true);
    this.releaseFaultinPage(pfn, true, true);
    return true;
  }

  /** KVM's FNAME(gpte_changed): re-read the walker's entry at `level` without faulting; true if it differs (or cannot be read). */
  private gpteChanged(vcpu: KvmVcpu, level: number): boolean {
    const w = vcpu.walker;
    const gpa = w.pteGpa[level]!;
    if (level !== 1) return this.readGpteAtomic(gpa) !== w.ptes[level]!;
    // At the leaf level KVM reads the whole aligned group, for FNAME(pte_prefetch).
    const group = w.prefetchPteBytes.length; // PTE_PREFETCH_NUM entries of 8 bytes
    const base = gpa - (gpa % group);
    const gfn = Math.floor(base / 4096);
    const k = this.kvm;
    if (k.slotOf(gfn) < 0 || !k.host.readUserRangeAtomic(k.gfnToHvpn(gfn), base % 4096, w.prefetchPteBytes, group)) {
      w.prefetchPtes.fill(0n);
      return true;
    }
    return w.prefetchPtes[(gpa - base) / 8] !== w.ptes[level]!;
  }

  // ---- guest memory for the walker (KVM's kvm_vcpu_read_guest / cmpxchg_gpte) ----

  readGpte(gpa: number): bigint {
    const k = this.kvm;
    const gfn = Math.floor(gpa / 4096);
    return k.host.readUser64(k.gfnToHvpn(gfn), gpa % 4096);
  }

  /** Set A/D in a guest PTE; the table's page is then dirty for migration (KVM marks it). */
  cmpxchgGpte(gpa: number, expected: bigint, v: bigint): bigint {
    const k = this.kvm;
    const gfn = Math.floor(gpa / 4096);
    const old = k.host.cmpxchgUser64(k.gfnToHvpn(gfn), gpa % 4096, expected, v);
    if (old === expected) k.markPageDirty(gfn);
    return old;
  }

  /** Read a guest PTE without faulting the page in (safe under mmu_lock); -1n if not present. */
  readGpteAtomic(gpa: number): bigint {
    const k = this.kvm;
    const gfn = Math.floor(gpa / 4096);
    if (k.slotOf(gfn) < 0) return -1n;
    return k.host.readUserAtomic(k.gfnToHvpn(gfn), gpa % 4096);
  }

  // ---- pre-faulting ----

  /**
   * KVM_PRE_FAULT_MEMORY for one page (kvm_vcpu_pre_fault_memory, then
   * kvm_tdp_map_page): map `gpa` as a read fault would, without the guest
   * touching it, retrying while the fault says RET_PF_RETRY — all inside one
   * kvm->srcu read section. Returns 0, -EAGAIN (a memslot is being deleted or
   * moved: userspace must retry) or -ENOENT (no memslot: MMIO).
   */
  kvmPreFaultMemory(vcpu: KvmVcpu, gpa: number): number {
    const k = this.kvm;
    if (!k.isTdp) throw new KvmmuError('KVM_PRE_FAULT_MEMORY needs the TDP MMU (mode tdp)');
    const gfn = Math.floor(gpa / 4096);
    const srcu = k.srcu;
    srcu.readLock();
    let r: number;
    for (;;) {
      r = k.tdp.pageFault(vcpu, gpa, 0, false, true);
      if (r !== RET_PF_RETRY) break;
      // KVM retries at once (until a signal). A retry for a slot being deleted can only end once the slot changes,
      // so the checker blocks the thread until it does rather than spinning it.
      const s = k.slotOf(gfn);
      const f = s < 0 ? -1 : k.mem.load32(k.slotFlagsWord(s));
      if (f >= 0 && (f & SLOT_INVALID) !== 0) k.mem.waitWhile32(k.slotFlagsWord(s), f);
    }
    srcu.readUnlock();
    if (r === RET_PF_EAGAIN) return -EAGAIN;
    return r === RET_PF_EMULATE ? -ENOENT : 0;
  }

  // ---- write-tracking ----

  /**
   * KVM's kvm_write_track_add_gfn: writes to `gfn` must exit to KVM from now
   * on (it holds a page table KVM shadows, or a device model watches it).
   * Under mmu_lock held for write: count the tracker, write-protect every SPTE
   * mapping the gfn — clearing MMU-writable too, so the fast path cannot undo
   * it — and flush before the lock is dropped. Shadow pages track the gfns of
   * the guest tables they shadow through the same count (mmu-page.ts).
   */
  kvmWriteTrackAddGfn(gfn: number): void {
    const k = this.kvm;
    const hvpn = k.gfnToHvpn(gfn);
    k.mmuLockWrite();
    const n = k.lockedLoad(k.pages.trackBase + hvpn);
    k.lockedStore(k.pages.trackBase + hvpn, n + 1);
    // kvm_mmu_gfn_disallow_lpage: no huge SPTE may map a tracked gfn (the write-protection below catches one that does).
    const lp = k.pages.lpageDisallowBase + Math.floor(hvpn / 512);
    k.lockedStore(lp, k.lockedLoad(lp) + 1);
    const flush = k.isTdp ? k.tdp.writeProtectGfnForTracking(gfn) : k.spte.rmapWriteProtect(gfn, true);
    if (flush) k.kvmFlushRemoteTlbs();
    k.spte.noteWriteProtected(gfn);
    k.mmuUnlockWrite();
  }

  /** KVM's kvm_write_track_remove_gfn: one tracker fewer; the next fault may map the gfn writable again. */
  kvmWriteTrackRemoveGfn(gfn: number): void {
    const k = this.kvm;
    const hvpn = k.gfnToHvpn(gfn);
    k.mmuLockWrite();
    const n = k.lockedLoad(k.pages.trackBase + hvpn);
    if (n === 0) {
      k.mmuUnlockWrite();
      throw new KvmmuError(`gfn 0x${gfn.toString(16)} is not write-tracked`);
    }
    k.lockedStore(k.pages.trackBase + hvpn, n - 1);
    const lp = k.pages.lpageDisallowBase + Math.floor(hvpn / 512);
    k.lockedStore(lp, k.lockedLoad(lp) - 1);
    k.mmuUnlockWrite();
  }

  // ---- emulated writes to write-tracked guest page tables ----

  /**
   * Emulate a guest write of the 64-bit `value` at `gpa` that faulted because
   * the page holds a shadowed guest page table: write guest memory as the
   * emulator does (the host's write dirties the frame), log it, then let the
   * MMU drop the shadow entries the write made stale (KVM's kvm_mmu_track_write).
   */
  emulateWrite(gpa: number, value: bigint): void {
    const k = this.kvm;
    const gfn = Math.floor(gpa / 4096);
    k.host.writeUser64(k.gfnToHvpn(gfn), gpa % 4096 & ~7, value);
    k.markPageDirty(gfn);
    // kvm_mmu_track_write has work only where indirect shadow pages exist (not under the TDP MMU).
    if (!k.isTdp) this.kvmMmuPteWrite(gpa);
  }

  /**
   * KVM's kvm_mmu_track_write: for each indirect shadow page of the written
   * table, zap the entry the write hit — or the whole page if the table is
   * written again and again without being used (write flooding) — and flush.
   */
  kvmMmuPteWrite(gpa: number): void {
    const k = this.kvm;
    const gfn = Math.floor(gpa / 4096);
    const hvpn = k.gfnToHvpn(gfn);
    const idx = (gpa % 4096) >>> 3;
    k.mem.lock(k.mmuLock);
    if (k.pages.gfnTrackCount(hvpn) === 0) {
      k.mem.unlock(k.mmuLock);
      return;
    }
    k.count(KVM_STAT.emulatedPteWrites);
    const n = k.pages.collectShadowsOf(gfn, this.scratch);
    let flush = false;
    for (let i = 0; i < n; i++) {
      const sp = this.scratch[i]!;
      if (this.detectWriteFlooding(sp)) {
        k.pages.prepareZap(sp, this.invalid);
        continue;
      }
      if (k.spte.mmuPageZapPte(k.pages.sptep(sp, idx))) flush = true;
    }
    if (this.invalid.length > 0) k.pages.commitZap(this.invalid);
    else if (flush) k.kvmFlushRemoteTlbs();
    k.mem.unlock(k.mmuLock);
  }

  /**
   * KVM's detect_write_flooding: a shadowed table written again and again
   * without a fault using it is probably no longer a page table; zap its shadow
   * page. Last-level pages are exempt, as in KVM (there they would be unsynced
   * instead; kvmmu keeps them write-protected), and so are roots in use.
   * Contract: mmu_lock held.
   */
  private detectWriteFlooding(sp: number): boolean {
    const k = this.kvm;
    if (roleLevel(k.lockedLoad(k.pages.hdr(sp, SP_ROLE))) === 1) return false;
    const floods = k.lockedLoad(k.pages.hdr(sp, SP_FLOOD)) + 1;
    k.lockedStore(k.pages.hdr(sp, SP_FLOOD), floods);
    return floods >= WRITE_FLOOD_LIMIT && k.lockedLoad(k.pages.hdr(sp, SP_ROOT_COUNT)) === 0;
  }

  // ---- invlpg ----

  /**
   * The guest invalidated its translation of `gva`. In shadow mode KVM
   * intercepts invlpg and drops the shadow entry (which the guest may have
   * changed without a trapped write, e.g. a non-present to present change is
   * trapped too, so this only matters for prefetched entries); the vCPU layer
   * drops its own TLB entry. Direct mode does not intercept invlpg.
   */
  kvmMmuInvlpg(vcpu: KvmVcpu, gva: number): void {
    const k = this.kvm;
    if (k.config.mode !== 'shadow') return;
    k.mem.lock(k.mmuLock);
    let sp = vcpu.root;
    let zapped = false;
    for (let level = 4; level >= 1; level--) {
      const sptep = k.pages.sptep(sp, spteIndex(gva, level));
      const spte = k.mem.load64(sptep);
      if (!isShadowPresentPte(spte)) break;
      if (isLastSpte(spte, level)) {
        zapped = k.spte.mmuPageZapPte(sptep);
        break;
      }
      sp = spteToChild(spte);
    }
    if (zapped) k.kvmFlushRemoteTlbs();
    k.mem.unlock(k.mmuLock);
  }

  /**
   * KVM's kvm_mmu_zap_all (memslot changes, VM teardown): zap every shadow
   * page and free it after the remote flush. Roots in use are emptied but kept
   * (kvmmu's vCPUs hold one root for life; KVM would reload them).
   */
  kvmMmuZapAll(): void {
    const k = this.kvm;
    if (k.isTdp) {
      k.mem.writeLock(k.mmuLock);
      k.tdp.zapAll();
      k.mem.writeUnlock(k.mmuLock);
      k.tdp.reclaim();
      return;
    }
    k.mem.lock(k.mmuLock);
    const n = k.pages.collectInUse(this.scratch);
    const pages = this.scratch.slice(0, n);
    for (const sp of pages) {
      if (k.lockedLoad(k.pages.hdr(sp, SP_ROOT_COUNT)) > 0) k.pages.unlinkChildren(sp);
      else k.pages.prepareZap(sp, this.invalid);
    }
    k.pages.commitZap(this.invalid);
    k.mem.unlock(k.mmuLock);
  }

  /**
   * KVM's kvm_mmu_zap_all_fast, as a memslot deletion or move runs it: in TDP
   * mode, every root is invalidated under the write lock and every vCPU made
   * to leave the guest and reload before it re-enters
   * (KVM_REQ_MMU_FREE_OBSOLETE_ROOTS); then the invalidated roots are zapped
   * under the read lock, beside the faults that run meanwhile, and freed when
   * their last vCPU lets go. The shadow MMU's generation-based fast zap is not
   * modelled: in direct and shadow mode this is kvmMmuZapAll.
   */
  kvmMmuZapAllFast(): void {
    const k = this.kvm;
    if (!k.isTdp) {
      this.kvmMmuZapAll();
      return;
    }
    k.mem.writeLock(k.mmuLock);
    k.tdp.invalidateAllRoots();
    k.kvmFlushRemoteTlbs(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS);
    k.mem.writeUnlock(k.mmuLock);
    k.mem.readLock(k.mmuLock);
    k.tdp.zapInvalidatedRoots();
    k.mem.readUnlock(k.mmuLock);
    k.tdp.reclaim();
  }

  /** The valid indirect shadow pages of guest table `gfn` (for monitors and tests); takes mmu_lock. */
  shadowPagesOf(gfn: number): number[] {
    const k = this.kvm;
    k.mem.lock(k.mmuLock);
    const out: number[] = [];
    const n = k.pages.collectShadowsOf(gfn, out);
    out.length = n;
    k.mem.unlock(k.mmuLock);
    return out;
  }

  /** Read a shadow page's gfn (lock holders; for tests and displays). */
  spGfn(sp: number): number {
    return this.kvm.mem.i32[this.kvm.pages.hdr(sp, SP_GFN)]!;
  }
}
