// Shadow pages: a fixed pool in shared memory, looked up by (gfn, role); allocation, the active list, write-tracking, zap and deferred free.
//
// Regions:
//   kvm.spt       nSp * 512 u64   the SPTEs; shadow page s owns u64 words [sptBase + 512 s, +512)
//   kvm.spHeader  nSp * SP_WORDS  per page (Int32):
//                   [SP_ROLE]      level | direct << 3 | access << 4 | invalid << 7   (read locklessly)
//                   [SP_GFN]       first gfn mapped (direct) or gfn of the shadowed guest table (indirect) (read locklessly)
//                   [SP_STATE]     1 in use, 0 free
//                   [SP_HASH_NEXT] next page + 1 in its hash bucket
//                   [SP_PARENTS]   pte_list head of the SPTEs that point to this page (rmap.ts format)
//                   [SP_ROOT_COUNT] vCPUs using it as their root
//                   [SP_GEN]       generation: +1 at each alloc and free (for monitors)
//                   [SP_LRU_PREV, SP_LRU_NEXT] active list, oldest at the tail
//                   [SP_FLOOD]     emulated writes since the page was last used by a fault
//                   [SP_PRESENT..+16] bitmap of present entries, so a zap visits only those
//   kvm.spGfns    nSp * 512       indirect pages: the gfn each entry maps (KVM's shadowed_translation), read locklessly
//   kvm.spHash    SP_BUCKETS      first page + 1 of each bucket, by gfn
//   kvm.spFree    nSp + 1         [0] depth, [1..] free pages
//   kvm.gfnTrack  pages           per gfn (by hvpn): indirect shadow pages shadowing it (KVM's write-tracking count)
//   kvm.lpageDisallow  pages/512  per 2 MiB of host pages: write-tracked gfns in it (disallow_lpage)
//
// Locking: everything here changes only under mmu_lock. Words that no lockless
// path reads (hash links, parents, LRU, free stack, write-tracking, present
// bitmap) are read and written by lock holders with plain accesses (`locked*`
// in Kvm); SP_ROLE, SP_GFN, spGfns and the SPTEs are read by the lockless fast
// path and so are written through the access layer.
//
// Freeing: a zapped page goes on an invalid list and is freed only after a
// remote TLB flush (commitZap), which waits for every lockless walker that
// could still be reading it (guard `lockless-walk-sync`).

import { NOTE } from '../shm/access';
import { LEVEL_PAGES } from '../x86/pte';
import { region, type LayoutBuilder } from '../shm/layout';
import type { VmConfig } from './config';
import { KVM_STAT, MMU_LRU_HEAD, MMU_LRU_TAIL, MMU_SP_FREE, totalPages, type Kvm } from './kvm';

export const SP_WORDS = 32;
export const SP_ROLE = 0;
export const SP_GFN = 1;
export const SP_STATE = 2;
export const SP_HASH_NEXT = 3;
export const SP_PARENTS = 4;
export const SP_ROOT_COUNT = 5;
export const SP_GEN = 6;
export const SP_LRU_PREV = 7;
export const SP_LRU_NEXT = 8;
export const SP_FLOOD = 9;
export const SP_PRESENT = 16;

export const ROLE_LEVEL_MASK = 7;
export const ROLE_DIRECT = 1 << 3;
export const ROLE_ACCESS_SHIFT = 4;
export const ROLE_INVALID = 1 << 7;
/** role.smm: the page belongs to SMM's address space (a vCPU in SMM has a root of its own). */
export const ROLE_SMM = 1 << 8;
/**
 * Shadow paging: the guest control bits that change what a guest PTE means
 * (KVM's role.efer_nx, cr0_wp, smep_andnot_wp, smap_andnot_wp), so that vCPUs
 * whose settings differ never share a shadow page built under the other's rules.
 */
export const ROLE_EFER_NX = 1 << 9;
export const ROLE_CR0_WP = 1 << 10;
export const ROLE_SMEP_ANDNOT_WP = 1 << 11;
export const ROLE_SMAP_ANDNOT_WP = 1 << 12;

/** Keep at least this many pages free before a fault builds its path (KVM_MIN_FREE_MMU_PAGES is 5; a path needs up to 4). */
const MIN_FREE_PAGES = 5;
/** Emulated writes to a shadowed table without a fault using it, before the shadow page is zapped (KVM's detect_write_flooding). */
export const WRITE_FLOOD_LIMIT = 3;

export function makeRole(level: number, direct: boolean, access: number): number {
  return level | (direct ? ROLE_DIRECT : 0) | (access << ROLE_ACCESS_SHIFT);
}

export function roleLevel(role: number): number {
  return role & ROLE_LEVEL_MASK;
}

export function roleIsDirect(role: number): boolean {
  return (role & ROLE_DIRECT) !== 0;
}

export function roleAccess(role: number): number {
  return (role >>> ROLE_ACCESS_SHIFT) & 7;
}

function bucketsFor(nSp: number): number {
  let n = 16;
  while (n < nSp) n *= 2;
  return n;
}

export function reserveMmuPages(b: LayoutBuilder, c: VmConfig): void {
  b.meta('kvm.spt', c.spPages * 4096, 4096);
  b.meta('kvm.spHeader', c.spPages * SP_WORDS * 4);
  b.meta('kvm.spGfns', c.spPages * 512 * 4);
  b.meta('kvm.spHash', bucketsFor(c.spPages) * 4);
  b.meta('kvm.spFree', (c.spPages + 1) * 4);
  b.meta('kvm.gfnTrack', totalPages(c) * 4);
  b.meta('kvm.lpageDisallow', Math.ceil(totalPages(c) / 512) * 4);
}

export class MmuPages {
  /** u64 index of shadow page 0's first SPTE. */
  readonly sptBase: number;
  readonly headerBase: number;
  readonly gfnsBase: number;
  private readonly hashBase: number;
  private readonly hashMask: number;
  private readonly freeBase: number;
  readonly trackBase: number;
  /** Per 2 MiB of host pages (hvpn / 512): write-tracked gfns in it (KVM's lpage_info disallow_lpage); a huge SPTE may map it only at 0. */
  readonly lpageDisallowBase: number;
  readonly nSp: number;

  constructor(private readonly kvm: Kvm) {
    const l = kvm.layout;
    this.sptBase = region(l, 'kvm.spt').off / 8;
    this.headerBase = region(l, 'kvm.spHeader').off / 4;
    this.gfnsBase = region(l, 'kvm.spGfns').off / 4;
    this.hashBase = region(l, 'kvm.spHash').off / 4;
    this.hashMask = bucketsFor(kvm.config.spPages) - 1;
    this.freeBase = region(l, 'kvm.spFree').off / 4;
    this.trackBase = region(l, 'kvm.gfnTrack').off / 4;
    this.lpageDisallowBase = region(l, 'kvm.lpageDisallow').off / 4;
    this.nSp = kvm.config.spPages;
    // Walks read a non-leaf SPTE's child from its low word (spteLowToChild).
    if (this.nSp > 2 ** 20) throw new Error(`mmu: ${this.nSp} shadow pages; a non-leaf SPTE's low word holds indexes below 2^20`);
  }

  init(): void {
    const a = this.kvm.mem.i32;
    a[this.freeBase] = this.nSp;
    for (let k = 0; k < this.nSp; k++) a[this.freeBase + 1 + k] = this.nSp - 1 - k;
    a[this.kvm.mmuBase + MMU_SP_FREE] = this.nSp;
  }

  // ---- addressing ----

  hdr(sp: number, field: number): number {
    return this.headerBase + sp * SP_WORDS + field;
  }

  sptep(sp: number, idx: number): number {
    return this.sptBase + sp * 512 + idx;
  }

  spOf(sptep: number): number {
    return (sptep - this.sptBase) >>> 9;
  }

  indexOf(sptep: number): number {
    return (sptep - this.sptBase) & 511;
  }

  /** Role word of `sp`, read through the access layer (safe for lockless readers). */
  role(sp: number): number {
    return this.kvm.mem.load32(this.hdr(sp, SP_ROLE));
  }

  /**
   * The gfn that entry `idx` of `sp` maps (KVM's kvm_mmu_page_get_gfn): fixed by
   * the page for a direct page, recorded per entry for an indirect one. Reads
   * through the access layer, so the lockless fast path may call it.
   */
  entryGfn(sp: number, idx: number, role: number): number {
    if (roleIsDirect(role)) {
      const base = this.kvm.mem.load32(this.hdr(sp, SP_GFN));
      return base + idx * LEVEL_PAGES[roleLevel(role)]!;
    }
    return this.kvm.mem.load32(this.gfnsBase + sp * 512 + idx);
  }

  /** As entryGfn, with plain reads: for monitors, displays and TLB bookkeeping, never for MMU decisions. */
  peekEntryGfn(sp: number, idx: number): number {
    const t = this.kvm.mem.i32;
    const role = t[this.hdr(sp, SP_ROLE)]!;
    if (roleIsDirect(role)) return t[this.hdr(sp, SP_GFN)]! + idx * LEVEL_PAGES[roleLevel(role)]!;
    return t[this.gfnsBase + sp * 512 + idx]!;
  }

  setEntryGfn(sp: number, idx: number, gfn: number): void {
    this.kvm.mem.store32(this.gfnsBase + sp * 512 + idx, gfn);
  }

  // ---- present-entry bitmap (mmu_lock holders only) ----

  markPresent(sptep: number): void {
    const sp = this.spOf(sptep);
    const idx = this.indexOf(sptep);
    const w = this.hdr(sp, SP_PRESENT + (idx >>> 5));
    this.kvm.lockedStore(w, this.kvm.lockedLoad(w) | (1 << (idx & 31)));
  }

  clearPresent(sptep: number): void {
    const sp = this.spOf(sptep);
    const idx = this.indexOf(sptep);
    const w = this.hdr(sp, SP_PRESENT + (idx >>> 5));
    this.kvm.lockedStore(w, this.kvm.lockedLoad(w) & ~(1 << (idx & 31)));
  }

  /** Indices of the present entries of `sp`, into `out` (reused scratch); returns how many. */
  presentEntries(sp: number, out: number[]): number {
    let n = 0;
    for (let k = 0; k < 16; k++) {
      let bits = this.kvm.lockedLoad(this.hdr(sp, SP_PRESENT + k));
      while (bits !== 0) {
        const b = 31 - Math.clz32(bits & -bits);
        out[n++] = k * 32 + b;
        bits &= bits - 1;
      }
    }
    return n;
  }

  // ---- write-tracking of guest page tables ----

  /** Indirect shadow pages shadowing `gfn`; writes to it must be emulated while > 0. */
  gfnTrackCount(hvpn: number): number {
    return this.kvm.lockedLoad(this.trackBase + hvpn);
  }

  // ---- lookup and creation ----

  /**
   * KVM's kvm_mmu_get_page: the valid page for (gfn, role), created if absent.
   * Creating an indirect page write-tracks its gfn and, on the first such page,
   * write-protects the gfn (clearing MMU_WRITABLE) and flushes TLBs at once, so
   * from now on every guest write to that table traps and is emulated.
   * Contract: mmu_lock held; makeMmuPagesAvailable ran first.
   */
  getShadowPage(gfn: number, role: number): number {
    const k = this.kvm;
    const bucket = this.hashBase + (gfn & this.hashMask);
    for (let sp = k.lockedLoad(bucket) - 1; sp >= 0; sp = k.lockedLoad(this.hdr(sp, SP_HASH_NEXT)) - 1) {
      if (k.lockedLoad(this.hdr(sp, SP_GFN)) === gfn && k.lockedLoad(this.hdr(sp, SP_ROLE)) === role) {
        return sp;
      }
    }
    const sp = this.alloc();
    k.mem.store32(this.hdr(sp, SP_ROLE), role);
    k.mem.store32(this.hdr(sp, SP_GFN), gfn);
    k.lockedStore(this.hdr(sp, SP_HASH_NEXT), k.lockedLoad(bucket));
    k.lockedStore(bucket, sp + 1);
    if (!roleIsDirect(role)) {
      const hvpn = k.gfnToHvpn(gfn);
      const n = k.lockedLoad(this.trackBase + hvpn);
      k.lockedStore(this.trackBase + hvpn, n + 1);
      if (n === 0) {
        if (k.spte.rmapWriteProtect(gfn, true)) k.kvmFlushRemoteTlbs();
        k.spte.noteWriteProtected(gfn);
      }
    }
    return sp;
  }

  /** The valid indirect pages shadowing guest table `gfn`, into `out`; returns how many. Contract: mmu_lock held. */
  collectShadowsOf(gfn: number, out: number[]): number {
    const k = this.kvm;
    let n = 0;
    const bucket = this.hashBase + (gfn & this.hashMask);
    for (let sp = k.lockedLoad(bucket) - 1; sp >= 0; sp = k.lockedLoad(this.hdr(sp, SP_HASH_NEXT)) - 1) {
      const role = k.lockedLoad(this.hdr(sp, SP_ROLE));
      if (k.lockedLoad(this.hdr(sp, SP_GFN)) === gfn && !roleIsDirect(role) && (role & ROLE_INVALID) === 0) out[n++] = sp;
    }
    return n;
  }

  private alloc(): number {
    const k = this.kvm;
    const depth = k.lockedLoad(this.freeBase);
    if (depth === 0) throw new Error('mmu: shadow-page pool empty although makeMmuPagesAvailable ran');
    const sp = k.lockedLoad(this.freeBase + depth);
    k.lockedStore(this.freeBase, depth - 1);
    k.lockedStore(k.mmuBase + MMU_SP_FREE, depth - 1);
    for (let f = SP_STATE; f < SP_WORDS; f++) if (f !== SP_GEN) k.lockedStore(this.hdr(sp, f), 0);
    k.lockedStore(this.hdr(sp, SP_STATE), 1);
    const gen = k.lockedLoad(this.hdr(sp, SP_GEN)) + 1;
    k.lockedStore(this.hdr(sp, SP_GEN), gen);
    this.lruPushHead(sp);
    k.count(KVM_STAT.spAlloc);
    k.mem.note(NOTE.spAlloc, sp, gen);
    return sp;
  }

  // ---- the active list (creation order; recycling takes the oldest) ----

  private lruPushHead(sp: number): void {
    const k = this.kvm;
    const head = k.lockedLoad(k.mmuBase + MMU_LRU_HEAD);
    k.lockedStore(this.hdr(sp, SP_LRU_PREV), 0);
    k.lockedStore(this.hdr(sp, SP_LRU_NEXT), head);
    if (head !== 0) k.lockedStore(this.hdr(head - 1, SP_LRU_PREV), sp + 1);
    else k.lockedStore(k.mmuBase + MMU_LRU_TAIL, sp + 1);
    k.lockedStore(k.mmuBase + MMU_LRU_HEAD, sp + 1);
  }

  private lruRemove(sp: number): void {
    const k = this.kvm;
    const prev = k.lockedLoad(this.hdr(sp, SP_LRU_PREV));
    const next = k.lockedLoad(this.hdr(sp, SP_LRU_NEXT));
    if (prev !== 0) k.lockedStore(this.hdr(prev - 1, SP_LRU_NEXT), next);
    else k.lockedStore(k.mmuBase + MMU_LRU_HEAD, next);
    if (next !== 0) k.lockedStore(this.hdr(next - 1, SP_LRU_PREV), prev);
    else k.lockedStore(k.mmuBase + MMU_LRU_TAIL, prev);
  }

  private unhash(sp: number): void {
    const k = this.kvm;
    const gfn = k.lockedLoad(this.hdr(sp, SP_GFN));
    let link = this.hashBase + (gfn & this.hashMask);
    for (let cur = k.lockedLoad(link) - 1; cur >= 0; cur = k.lockedLoad(link) - 1) {
      if (cur === sp) {
        k.lockedStore(link, k.lockedLoad(this.hdr(sp, SP_HASH_NEXT)));
        return;
      }
      link = this.hdr(cur, SP_HASH_NEXT);
    }
    throw new Error(`mmu: shadow page ${sp} is not in its hash bucket`);
  }

  /** Free pages in the pool (mmu_lock holders). */
  freeCount(): number {
    return this.kvm.lockedLoad(this.kvm.mmuBase + MMU_SP_FREE);
  }

  // ---- zap and free ----

  /**
   * KVM's kvm_mmu_prepare_zap_page: unlink every child SPTE, clear every parent
   * SPTE pointing here, stop write-tracking the gfn, unhash, and put the page on
   * `invalid` to be freed by commitZap. A root in use is only marked invalid.
   * Contract: mmu_lock held. Returns nothing; the caller must commitZap.
   */
  prepareZap(sp: number, invalid: number[]): void {
    const k = this.kvm;
    const role = k.lockedLoad(this.hdr(sp, SP_ROLE));
    if ((role & ROLE_INVALID) !== 0) return;
    this.unlinkChildren(sp);
    k.spte.unlinkParents(sp);
    if (!roleIsDirect(role)) {
      const hvpn = k.gfnToHvpn(k.lockedLoad(this.hdr(sp, SP_GFN)));
      k.lockedStore(this.trackBase + hvpn, k.lockedLoad(this.trackBase + hvpn) - 1);
    }
    this.unhash(sp);
    this.lruRemove(sp);
    k.mem.store32(this.hdr(sp, SP_ROLE), role | ROLE_INVALID);
    k.count(KVM_STAT.spZapped);
    if (k.lockedLoad(this.hdr(sp, SP_ROOT_COUNT)) === 0) invalid.push(sp);
  }

  /** KVM's kvm_mmu_page_unlink_children: zap every present entry of `sp`. Contract: mmu_lock held. */
  unlinkChildren(sp: number): void {
    const n = this.presentEntries(sp, this.scratch);
    for (let i = 0; i < n; i++) this.kvm.spte.mmuPageZapPte(this.sptep(sp, this.scratch[i]!));
  }

  /** Every allocated, valid shadow page, newest first (as KVM walks active_mmu_pages), into `out`; returns how many. Contract: mmu_lock held. */
  collectInUse(out: number[]): number {
    const k = this.kvm;
    let n = 0;
    for (let sp = k.lockedLoad(k.mmuBase + MMU_LRU_HEAD) - 1; sp >= 0; sp = k.lockedLoad(this.hdr(sp, SP_LRU_NEXT)) - 1)
      out[n++] = sp;
    return n;
  }

  /**
   * KVM's kvm_mmu_commit_zap_page: flush remote TLBs — which also waits out
   * every lockless walker that began before — then free the pages.
   * Contract: mmu_lock held.
   */
  commitZap(invalid: number[]): void {
    if (invalid.length === 0) return;
    this.kvm.kvmFlushRemoteTlbs();
    for (const sp of invalid) this.free(sp);
    invalid.length = 0;
  }

  private free(sp: number): void {
    const k = this.kvm;
    const gen = k.lockedLoad(this.hdr(sp, SP_GEN)) + 1;
    k.lockedStore(this.hdr(sp, SP_GEN), gen);
    k.lockedStore(this.hdr(sp, SP_STATE), 0);
    const depth = k.lockedLoad(this.freeBase);
    k.lockedStore(this.freeBase + depth + 1, sp);
    k.lockedStore(this.freeBase, depth + 1);
    k.lockedStore(k.mmuBase + MMU_SP_FREE, depth + 1);
    k.count(KVM_STAT.spFreed);
    k.mem.note(NOTE.spFree, sp, gen);
  }

  /**
   * KVM's make_mmu_pages_available: recycle the oldest pages (never a root in
   * use) until at least MIN_FREE_PAGES are free. Contract: mmu_lock held.
   */
  makeMmuPagesAvailable(): void {
    const k = this.kvm;
    if (this.freeCount() >= MIN_FREE_PAGES) return;
    const invalid = this.invalidScratch;
    let sp = k.lockedLoad(k.mmuBase + MMU_LRU_TAIL) - 1;
    while (sp >= 0 && this.freeCount() + invalid.length < MIN_FREE_PAGES) {
      const prev = k.lockedLoad(this.hdr(sp, SP_LRU_PREV)) - 1;
      if (k.lockedLoad(this.hdr(sp, SP_ROOT_COUNT)) === 0) {
        this.prepareZap(sp, invalid);
        k.count(KVM_STAT.spRecycled);
        // Zapping takes `sp` off the list (its children stay on it, unlinked); restarting from the tail
        // costs little and stays right should a zap ever take other pages with it.
        sp = k.lockedLoad(k.mmuBase + MMU_LRU_TAIL) - 1;
        continue;
      }
      sp = prev;
    }
    this.commitZap(invalid);
    if (this.freeCount() < 1) throw new Error('mmu: every shadow page is a root in use; the pool is too small');
  }

  /** Is `sp` allocated (for monitors; not a scheduling point)? */
  peekInUse(sp: number): boolean {
    return this.kvm.mem.i32[this.hdr(sp, SP_STATE)] === 1;
  }


  private readonly scratch: number[] = [];
  private readonly invalidScratch: number[] = [];
}
