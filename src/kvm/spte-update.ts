// Changing SPTEs under mmu_lock: mmuSpteSet / mmuSpteUpdate / mmuSpteClearTrackBits, drop and zap, rmap write-protection, aging.
//
// Every function here runs with mmu_lock held, but an SPTE can still change
// under the holder: the fast path sets W on an MMU-writable SPTE with cmpxchg,
// and the hardware walk sets A and D. So an SPTE with such volatile bits is
// changed with xchg, and the old value that xchg returns — not one read
// earlier — decides what the host is told (dirty, accessed) and whether TLBs
// must be flushed. The guards `atomic-volatile-clear` and `flush-mmu-writable`
// switch those two rules back to the seed's unfixed code.

import { NOTE } from '../shm/access';
import {
  SPTE_ACCESSED_MASK,
  SPTE_DIRTY_MASK,
  SPTE_MMU_WRITABLE,
  SPTE_WRITABLE_MASK,
  isAccessedSpte,
  isDirtySpte,
  isLargePte,
  isLastSpte,
  isMmuWritableSpte,
  isShadowPresentPte,
  isWritablePte,
  makeNonleafSpte,
  spteHasVolatileBits,
  spteToChild,
  spteToPfn,
} from '../x86/spte';
import { clearBits, setBits } from '../x86/pte';
import { KVM_STAT, type Kvm } from './kvm';
import { SP_PARENTS, SP_ROLE, roleLevel } from './mmu-page';

export class SpteUpdate {
  private readonly scratch: number[] = [];

  constructor(private readonly kvm: Kvm) {}

  /**
   * KVM's mmu_spte_set: make a non-present SPTE present. A plain store suffices:
   * nobody else writes a non-present SPTE (the fast path and the hardware walk
   * act only on present ones). Contract: mmu_lock held, old value not present.
   */
  mmuSpteSet(sptep: number, spte: bigint): void {
    this.kvm.mem.store64(sptep, spte);
    this.kvm.pages.markPresent(sptep);
  }

  /**
   * KVM's mmu_spte_update: change a present SPTE to `newSpte` (same pfn),
   * atomically if it has volatile bits. With `spte` page marking (KVM up to
   * 6.12), tells the host about A/D bits the old value carried and the new one
   * drops; since 6.13 (`fault`) the host was told at the fault.
   *
   * Returns whether a TLB flush is needed. With `flush-mmu-writable` on (KVM
   * since v5 of the seed's series): when the old value — as exchanged, so a W set
   * by the fast path meanwhile counts — was writable or MMU-writable and the new
   * one is not, or A/D were cleared. Off (the seed's unfixed code): only when the
   * value read before the update had W set.
   * Contract: mmu_lock held.
   */
  mmuSpteUpdate(sptep: number, newSpte: bigint): boolean {
    const k = this.kvm;
    const read = k.mem.load64(sptep);
    if (!isShadowPresentPte(read)) {
      this.mmuSpteSet(sptep, newSpte);
      return false;
    }
    let old = read;
    if (!spteHasVolatileBits(read, k.guardAtomicVolatileClear)) k.mem.store64(sptep, newSpte);
    else old = k.mem.xchg64(sptep, newSpte);
    let flush = false;
    // A/D cleared: flush so the processor sets them again; with `spte` page marking, tell the host too.
    if (isAccessedSpte(old) && !isAccessedSpte(newSpte)) {
      if (!k.marksAtFault) this.setPagesAccessed(old);
      flush = true;
    }
    if (isDirtySpte(old) && !isDirtySpte(newSpte)) {
      if (!k.marksAtFault) this.setPagesDirty(old);
      flush = true;
    }
    if (!k.guardFlushMmuWritable) return flush || (isWritablePte(read) && !isWritablePte(newSpte));
    if (isWritablePte(old) && !isWritablePte(newSpte)) flush = true;
    if (isMmuWritableSpte(old) && !isMmuWritableSpte(newSpte)) flush = true;
    return flush;
  }

  /**
   * KVM's mmu_spte_clear_track_bits: clear a leaf SPTE and, with `spte` page
   * marking (KVM up to 6.12), report its A/D bits to the host
   * (kvm_set_pfn_accessed / kvm_set_pfn_dirty) from the old value.
   *
   * Race (seed 3, guard `atomic-volatile-clear`): with the guard off an SPTE that
   * is read-only with A set looks stable and is cleared with a plain store. But
   * the fast path can set W after our read, and the guest's write then sets D:
   *
   *    mmu_lock holder                       vCPU
   *    old = *sptep   (W=0, A=1, D=0)
   *                                          fast path: cmpxchg W=1
   *                                          guest write: D=1
   *    *sptep = 0
   *    old.D == 0: frame not marked dirty    -> the write is lost at swap-out
   *
   * With the guard on, an MMU-writable SPTE counts as volatile and is cleared
   * with xchg, which returns the D bit the guest set. With `fault` page marking
   * (KVM since 6.13) the D bit is still lost but nothing depends on it: the
   * fault that made the SPTE MMU-writable marked the frame dirty.
   * Contract: mmu_lock held. Returns the old value.
   */
  mmuSpteClearTrackBits(sptep: number): bigint {
    const k = this.kvm;
    let old = k.mem.load64(sptep);
    if (!spteHasVolatileBits(old, k.guardAtomicVolatileClear)) k.mem.store64(sptep, 0n);
    else old = k.mem.xchg64(sptep, 0n);
    k.pages.clearPresent(sptep);
    if (!isShadowPresentPte(old) || k.marksAtFault) return old;
    if (isAccessedSpte(old)) this.setPagesAccessed(old);
    if (isDirtySpte(old)) this.setPagesDirty(old);
    return old;
  }

  /** kvm_set_pfn_accessed for the page(s) of leaf `spte`: a huge SPTE's A stands for each of its 512 frames. */
  setPagesAccessed(spte: bigint): void {
    const pfn = spteToPfn(spte);
    const n = isLargePte(spte) ? 512 : 1;
    for (let j = 0; j < n; j++) this.kvm.host.setPfnAccessed(pfn + j);
  }

  /** kvm_set_pfn_dirty for the page(s) of leaf `spte` (KVM marks a huge page's folio dirty). */
  setPagesDirty(spte: bigint): void {
    const pfn = spteToPfn(spte);
    const n = isLargePte(spte) ? 512 : 1;
    for (let j = 0; j < n; j++) this.kvm.host.setPfnDirty(pfn + j);
  }

  /** KVM's mmu_spte_clear_no_track: clear a non-leaf SPTE (no A/D to report). Contract: mmu_lock held. */
  mmuSpteClearNoTrack(sptep: number): void {
    this.kvm.mem.store64(sptep, 0n);
    this.kvm.pages.clearPresent(sptep);
  }

  /** KVM's drop_spte: clear a leaf SPTE and remove it from its gfn's rmap (at its level). Contract: mmu_lock held. */
  dropSpte(sptep: number): void {
    const k = this.kvm;
    const old = this.mmuSpteClearTrackBits(sptep);
    if (!isShadowPresentPte(old)) return;
    const sp = k.pages.spOf(sptep);
    const gfn = k.pages.entryGfn(sp, k.pages.indexOf(sptep), k.lockedLoad(k.pages.hdr(sp, SP_ROLE)));
    const hvpn = k.gfnToHvpn(gfn);
    k.rmaps.remove(isLargePte(old) ? k.rmaps.rmapHugeHead(hvpn) : k.rmaps.rmapHead(hvpn), sptep);
  }

  /**
   * Record a new leaf SPTE in its gfn's rmap (`huge`: the 2 MiB level's); if the descriptor pool is empty, zap that
   * rmap first (KVM's rmap recycling).
   */
  rmapAdd(gfn: number, sptep: number, huge = false): void {
    const k = this.kvm;
    const head = huge ? k.rmaps.rmapHugeHead(k.gfnToHvpn(gfn)) : k.rmaps.rmapHead(k.gfnToHvpn(gfn));
    if (k.rmaps.add(head, sptep)) return;
    k.count(KVM_STAT.rmapRecycles);
    if (this.zapRmapAt(head)) k.kvmFlushRemoteTlbs();
    if (!k.rmaps.add(head, sptep)) throw new Error('rmap: descriptor pool empty after recycling');
  }

  /** Point `sptep` at shadow page `child` and record the parent link. Contract: mmu_lock held, `sptep` not present. */
  linkShadowPage(sptep: number, child: number): void {
    const k = this.kvm;
    this.mmuSpteSet(sptep, makeNonleafSpte(child));
    if (!k.rmaps.add(k.pages.hdr(child, SP_PARENTS), sptep)) throw new Error('rmap: descriptor pool empty for a parent link');
  }

  /**
   * KVM's mmu_page_zap_pte: clear one entry of a shadow page — a leaf is dropped
   * (A/D reported), a link to a child page is cut (the child stays, unlinked).
   * Returns true if the entry was present. Contract: mmu_lock held.
   */
  mmuPageZapPte(sptep: number): boolean {
    const k = this.kvm;
    const spte = k.mem.load64(sptep);
    if (!isShadowPresentPte(spte)) return false;
    const level = roleLevel(k.lockedLoad(k.pages.hdr(k.pages.spOf(sptep), SP_ROLE)));
    if (isLastSpte(spte, level)) {
      this.dropSpte(sptep);
    } else {
      this.mmuSpteClearNoTrack(sptep);
      k.rmaps.remove(k.pages.hdr(spteToChild(spte), SP_PARENTS), sptep);
    }
    return true;
  }

  /** Clear every SPTE that points to `sp` (KVM's kvm_mmu_unlink_parents). Contract: mmu_lock held. */
  unlinkParents(sp: number): void {
    const k = this.kvm;
    const head = k.pages.hdr(sp, SP_PARENTS);
    const n = k.rmaps.collect(head, this.scratch);
    for (let i = 0; i < n; i++) {
      const sptep = this.scratch[i]!;
      this.mmuSpteClearNoTrack(sptep);
      k.rmaps.remove(head, sptep);
    }
  }

  /**
   * KVM's spte_write_protect: clear W, and for shadow paging (`ptProtect`) also
   * MMU_WRITABLE, so the fast path cannot make it writable again.
   *
   * Race (seed 2, guard `flush-mmu-writable`): a read-only SPTE may still be
   * MMU-writable, and the fast path can make it writable — and a vCPU cache it
   * in its TLB — just before we write-protect it:
   *
   *    mmu_lock holder                       vCPU
   *    spte = *sptep  (W=0, MMU_WRITABLE)
   *    flush = spte.W   -> false
   *                                          fast path: cmpxchg W=1
   *                                          TLB caches the writable SPTE
   *    *sptep = spte & ~W & ~MMU_WRITABLE
   *    no flush: the TLB entry stays writable
   *
   * With the guard on, an MMU-writable SPTE always asks for a flush.
   * Returns whether TLBs must be flushed. Contract: mmu_lock held.
   */
  spteWriteProtect(sptep: number, ptProtect: boolean): boolean {
    const k = this.kvm;
    const spte = k.mem.load64(sptep);
    if (!isWritablePte(spte) && !(ptProtect && isMmuWritableSpte(spte))) return false;
    let newSpte = clearBits(spte, SPTE_WRITABLE_MASK);
    if (ptProtect) newSpte &= ~SPTE_MMU_WRITABLE;
    const flush = this.mmuSpteUpdate(sptep, newSpte);
    if (!k.guardFlushMmuWritable) return isWritablePte(spte);
    return flush || isWritablePte(spte) || isMmuWritableSpte(spte);
  }

  /**
   * KVM's rmap_write_protect: write-protect every SPTE mapping the gfn at `hvpn`.
   * Returns whether TLBs must be flushed; the caller flushes (before the
   * protection is relied on). Contract: mmu_lock held.
   */
  rmapWriteProtectHvpn(hvpn: number, ptProtect: boolean, allLevels = false): boolean {
    const k = this.kvm;
    let flush = false;
    for (const head of this.heads(hvpn, allLevels)) {
      const n = k.rmaps.collect(head, this.scratch);
      for (let i = 0; i < n; i++) if (this.spteWriteProtect(this.scratch[i]!, ptProtect)) flush = true;
    }
    k.count(KVM_STAT.writeProtects);
    return flush;
  }

  /**
   * Write-protect every SPTE that maps `gfn`, huge ones included (KVM's
   * kvm_mmu_slot_gfn_write_protect from PG_LEVEL_4K up: write tracking, shadow
   * paging). Contract: mmu_lock held.
   */
  rmapWriteProtect(gfn: number, ptProtect: boolean): boolean {
    return this.rmapWriteProtectHvpn(this.kvm.gfnToHvpn(gfn), ptProtect, true);
  }

  /**
   * Write-protect the huge SPTE over the gfn at `hvpn`, W and MMU-writable
   * (kvm_mmu_slot_gfn_write_protect at PG_LEVEL_2M, as a clear with
   * KVM_DIRTY_LOG_INITIALLY_SET does). Returns whether TLBs must be flushed.
   * Contract: mmu_lock held.
   */
  writeProtectHuge(hvpn: number): boolean {
    const n = this.kvm.rmaps.collect(this.kvm.rmaps.rmapHugeHead(hvpn), this.scratch);
    let flush = false;
    for (let i = 0; i < n; i++) if (this.spteWriteProtect(this.scratch[i]!, true)) flush = true;
    return flush;
  }

  /**
   * KVM's kvm_rmap_zap_collapsible_sptes for the gfn at `hvpn` (disabling
   * dirty logging): drop its 4 KiB SPTEs (the caller asks only where its
   * 2 MiB could now be mapped huge), so the next fault maps a huge page.
   * Returns whether TLBs must be flushed. Contract: mmu_lock held.
   */
  zapCollapsibleRmap(hvpn: number): boolean {
    return this.zapRmapAt(this.kvm.rmaps.rmapHead(hvpn));
  }

  /** The rmap heads for the gfn at `hvpn`: its 4 KiB rmap, and with `allLevels` (and huge pages) its 2 MiB one. */
  private heads(hvpn: number, allLevels: boolean): number[] {
    const k = this.kvm;
    const h = this.headScratch;
    h.length = 0;
    h.push(k.rmaps.rmapHead(hvpn));
    if (allLevels && k.config.hugePages) h.push(k.rmaps.rmapHugeHead(hvpn));
    return h;
  }
  private readonly headScratch: number[] = [];

  /** KVM's kvm_zap_rmap over every level (kvm_unmap_gfn_range): drop every SPTE mapping the gfn at `hvpn`; true if any was. Contract: mmu_lock held. */
  kvmZapRmap(hvpn: number): boolean {
    let any = false;
    for (const head of [...this.heads(hvpn, true)]) if (this.zapRmapAt(head)) any = true;
    return any;
  }

  /** Drop every SPTE on the rmap at `head`; true if any was. Contract: mmu_lock held. */
  private zapRmapAt(head: number): boolean {
    const n = this.kvm.rmaps.collect(head, this.scratch);
    for (let i = 0; i < n; i++) this.dropSpte(this.scratch[i]!);
    return n > 0;
  }

  /**
   * KVM's kvm_age_rmap: clear A in every SPTE mapping the gfn at `hvpn` (an
   * atomic bit clear: the fast path and the hardware walk may change the SPTE
   * meanwhile); true if any had A set. No TLB flush, as on x86. Contract: mmu_lock held.
   */
  kvmAgeRmap(hvpn: number): boolean {
    const k = this.kvm;
    let young = false;
    for (const head of [...this.heads(hvpn, true)]) if (this.ageRmapAt(head)) young = true;
    return young;
  }

  private ageRmapAt(head: number): boolean {
    const k = this.kvm;
    const n = k.rmaps.collect(head, this.scratch);
    let young = false;
    for (let i = 0; i < n; i++) {
      const sptep = this.scratch[i]!;
      let spte = k.mem.load64(sptep);
      while (isAccessedSpte(spte)) {
        const old = k.mem.cmpxchg64(sptep, spte, clearBits(spte, SPTE_ACCESSED_MASK));
        if (old === spte) {
          young = true;
          // Since 6.13 the answer (young) is all the host gets.
          if (!k.marksAtFault) this.setPagesAccessed(spte);
          break;
        }
        spte = old;
      }
    }
    return young;
  }

  /** A leaf SPTE's D bit is kept when an update leaves it writable (KVM 2012: new_spte |= old_spte & dirty). */
  static keepDirty(old: bigint, newSpte: bigint): bigint {
    return isWritablePte(newSpte) ? setBits(newSpte, old & SPTE_DIRTY_MASK) : newSpte;
  }

  /** Ghost note for monitors: a write-protection of `gfn` for shadow paging has returned (its flush done). */
  noteWriteProtected(gfn: number): void {
    this.kvm.mem.note(NOTE.wpDone, gfn, 0);
  }
}
