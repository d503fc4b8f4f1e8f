// Shadow PTE (SPTE) bit layout, one-line predicates (on the whole SPTE or, for walks, its low word), and constructors (makeSpte, makeNonleafSpte).
//
// kvmmu's SPTEs use the x86 (non-EPT) layout of recent kernels, for both the
// direct and the shadow MMU:
//
//   bit 0     P              present to the hardware walk
//   bit 1     W              writable
//   bit 2     U              user
//   bit 5     A              accessed (hardware sets it)
//   bit 6     D              dirty (hardware sets it on a write)
//   bit 7     PS             large page: a leaf at level 2 maps 2 MiB (TDP mode with huge pages)
//   bit 9     HOST_WRITABLE  the host mapping of the pfn is writable
//   bit 10    MMU_WRITABLE   the guest's and KVM's view allow writes
//   bit 11    MMU_PRESENT    a shadow-present SPTE (KVM's test for "present")
//   bits 12-51               pfn; in a non-leaf SPTE, the index of the child shadow page
//   bit 63    NX             no execute
//
// In 2012 (the seed's time) the two software bits were HOST_WRITEABLE = bit 10
// and MMU_WRITEABLE = bit 11; only the positions moved.
//
// Invariants on the writable bits (KVM spte.h):
//   HOST_WRITABLE clear  =>  W clear
//   MMU_WRITABLE  clear  =>  W clear
//   MMU_WRITABLE  set    =>  HOST_WRITABLE set
// so the allowed (HOST_WRITABLE, MMU_WRITABLE, W) states are:
//   1,1,1 writable
//   1,1,0 write-tracked for dirty logging: the fast path may set W without mmu_lock
//   1,0,0 maps a shadowed guest page table (writes are emulated)
//   0,0,0 read-only memslot or host mapping
//
// Two kinds of write-protection:
//   (a) for shadow paging: clear W and MMU_WRITABLE under mmu_lock and flush TLBs
//       before dropping the lock — flushing even when W was already clear, because
//       (b) or the fast path may have left a writable TLB entry behind (the seed's
//       race 2, guard `flush-mmu-writable`);
//   (b) for dirty logging: clear W only; the TLB flush may be batched, but must
//       happen before the dirty bitmap reaches userspace.

import { ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK, LEVEL_PAGES, pteFrame, pteFromParts, pteIndex } from './pte';

export const SPTE_PRESENT_MASK = 1n << 0n;
export const SPTE_WRITABLE_MASK = 1n << 1n;
export const SPTE_USER_MASK = 1n << 2n;
export const SPTE_ACCESSED_MASK = 1n << 5n;
export const SPTE_DIRTY_MASK = 1n << 6n;
export const SPTE_PAGE_SIZE_MASK = 1n << 7n;
export const SPTE_HOST_WRITABLE = 1n << 9n;
export const SPTE_MMU_WRITABLE = 1n << 10n;
export const SPTE_MMU_PRESENT_MASK = 1n << 11n;
export const SPTE_BASE_ADDR_MASK = ((1n << 52n) - 1n) & ~0xfffn;
export const SPTE_NX_MASK = 1n << 63n;

/**
 * The value the TDP MMU writes while one thread owns an SPTE for a multi-step
 * change (KVM's FROZEN_SPTE, formerly REMOVED_SPTE). kvmmu keeps it for the
 * later TDP MMU; it is never shadow-present.
 */
export const FROZEN_SPTE = 0x5a0n;

/**
 * An MMIO SPTE (KVM's make_mmio_spte): not present, so the access exits, with
 * a pattern no other SPTE has (W and U without P; EPT uses a misconfiguration,
 * write without read, the same way) and the gfn, so the exit is handled as
 * emulated MMIO without a memslot lookup.
 */
const MMIO_LOW_BITS = 0x6n;

export function makeMmioSpte(gfn: number): bigint {
  return (BigInt(gfn) << 12n) | MMIO_LOW_BITS;
}

export function isMmioSpte(spte: bigint): boolean {
  return (spte & 0xfffn) === MMIO_LOW_BITS && (spte & SPTE_NX_MASK) === 0n;
}

/** Bits a non-leaf SPTE always carries, as KVM's make_nonleaf_spte: present, W, U, A. */
const NONLEAF_BITS =
  SPTE_MMU_PRESENT_MASK | SPTE_PRESENT_MASK | SPTE_WRITABLE_MASK | SPTE_USER_MASK | SPTE_ACCESSED_MASK;

// The masks as 32-bit Numbers, for building SPTEs without BigInt arithmetic
// (pteFromParts): all but NX sit in the low word.
const low = (m: bigint): number => Number(m & 0xffffffffn);
const LOW_PRESENT = low(SPTE_MMU_PRESENT_MASK | SPTE_PRESENT_MASK);
const HIGH_AD_DISABLED = 1 << 20; // bit 52
const LOW_ACCESSED = low(SPTE_ACCESSED_MASK);
const LOW_USER = low(SPTE_USER_MASK);
const LOW_HOST_WRITABLE = low(SPTE_HOST_WRITABLE);
const LOW_WRITABLE = low(SPTE_WRITABLE_MASK | SPTE_MMU_WRITABLE);
const LOW_DIRTY = low(SPTE_DIRTY_MASK);
const LOW_NONLEAF = low(NONLEAF_BITS);
const LOW_MMU_PRESENT = low(SPTE_MMU_PRESENT_MASK);
const LOW_HW_PRESENT = low(SPTE_PRESENT_MASK);
const LOW_PAGE_SIZE = low(SPTE_PAGE_SIZE_MASK);
const HIGH_NX = Number(SPTE_NX_MASK >> 32n);

// Build-time checks, as KVM's static asserts: no two masks overlap, FROZEN is not present.
{
  const masks: Array<[string, bigint]> = [
    ['P', SPTE_PRESENT_MASK],
    ['W', SPTE_WRITABLE_MASK],
    ['U', SPTE_USER_MASK],
    ['A', SPTE_ACCESSED_MASK],
    ['D', SPTE_DIRTY_MASK],
    ['PS', SPTE_PAGE_SIZE_MASK],
    ['HOST_WRITABLE', SPTE_HOST_WRITABLE],
    ['MMU_WRITABLE', SPTE_MMU_WRITABLE],
    ['MMU_PRESENT', SPTE_MMU_PRESENT_MASK],
    ['addr', SPTE_BASE_ADDR_MASK],
    ['NX', SPTE_NX_MASK],
  ];
  for (let i = 0; i < masks.length; i++)
    for (let j = i + 1; j < masks.length; j++)
      if ((masks[i]![1] & masks[j]![1]) !== 0n) throw new Error(`spte: masks ${masks[i]![0]} and ${masks[j]![0]} overlap`);
  if ((FROZEN_SPTE & SPTE_MMU_PRESENT_MASK) !== 0n) throw new Error('spte: FROZEN_SPTE is shadow-present');
  for (const [name, m] of masks)
    if (name !== 'NX' && name !== 'addr' && m >> 32n !== 0n) throw new Error(`spte: mask ${name} is not in the low word`);
}

// The predicates test bits as pte.ts's hasBits does (BigInt.asUintN(64, ...):
// no BigInt allocated), written out so a walk that calls several inlines each
// in one step: V8 stops inlining once a function's inlined code grows too big.

export function isShadowPresentPte(spte: bigint): boolean {
  return BigInt.asUintN(64, spte & SPTE_MMU_PRESENT_MASK) !== 0n;
}

export function isWritablePte(spte: bigint): boolean {
  return BigInt.asUintN(64, spte & SPTE_WRITABLE_MASK) !== 0n;
}

/** KVM's is_mmu_writable_spte (was spte_can_locklessly_be_made_writable / spte_is_locklessly_modifiable). */
export function isMmuWritableSpte(spte: bigint): boolean {
  return BigInt.asUintN(64, spte & SPTE_MMU_WRITABLE) !== 0n;
}

export function isHostWritableSpte(spte: bigint): boolean {
  return BigInt.asUintN(64, spte & SPTE_HOST_WRITABLE) !== 0n;
}

/**
 * An SPTE whose A/D bits the processor does not maintain (KVM's
 * SPTE_TDP_AD_DISABLED, as when EPT runs without A/D bits): KVM tracks
 * accesses by making the SPTE not present to the processor instead
 * (mark_spte_for_access_track), and counts it dirty while it is writable.
 */
export const SPTE_AD_DISABLED = 1n << 52n;
/** Where an access-tracked SPTE keeps its P bit (KVM's SHADOW_ACC_TRACK_SAVED_BITS, at bit 54). */
export const SPTE_ACC_TRACK_SAVED = 1n << 54n;

export function spteAdEnabled(spte: bigint): boolean {
  return BigInt.asUintN(64, spte & SPTE_AD_DISABLED) === 0n;
}

/** KVM's is_access_track_spte: an A/D-disabled SPTE made not present to the processor, to see the next access. */
export function isAccessTrackSpte(spte: bigint): boolean {
  return !spteAdEnabled(spte) && isShadowPresentPte(spte) && BigInt.asUintN(64, spte & SPTE_PRESENT_MASK) === 0n;
}

/** KVM's is_accessed_spte: A, or for an A/D-disabled SPTE, not access-tracked. */
export function isAccessedSpte(spte: bigint): boolean {
  if (!spteAdEnabled(spte)) return isShadowPresentPte(spte) && !isAccessTrackSpte(spte);
  return BigInt.asUintN(64, spte & SPTE_ACCESSED_MASK) !== 0n;
}

/** KVM's is_dirty_spte: D, or for an A/D-disabled SPTE, W (a writable page may have been written). */
export function isDirtySpte(spte: bigint): boolean {
  if (!spteAdEnabled(spte)) return BigInt.asUintN(64, spte & SPTE_WRITABLE_MASK) !== 0n;
  return BigInt.asUintN(64, spte & SPTE_DIRTY_MASK) !== 0n;
}

/**
 * KVM's mark_spte_for_access_track: for an A/D-enabled SPTE, clear A; else
 * save P and clear P and W, so the next access faults (and the fast path
 * restores the SPTE). W comes back only on a write, from MMU-writable.
 */
export function markSpteForAccessTrack(spte: bigint): bigint {
  if (spteAdEnabled(spte)) return BigInt.asUintN(64, spte & ~SPTE_ACCESSED_MASK);
  if (isAccessTrackSpte(spte)) return spte;
  return BigInt.asUintN(64, (spte & ~(SPTE_PRESENT_MASK | SPTE_WRITABLE_MASK)) | SPTE_ACC_TRACK_SAVED);
}

/** KVM's restore_acc_track_spte: the P bit back from where markSpteForAccessTrack saved it. */
export function restoreAccTrackSpte(spte: bigint): bigint {
  return BigInt.asUintN(64, (spte & ~SPTE_ACC_TRACK_SAVED) | SPTE_PRESENT_MASK);
}

/** A leaf: the last level, or a large page (KVM's is_last_spte). */
export function isLastSpte(spte: bigint, level: number): boolean {
  return level === 1 || BigInt.asUintN(64, spte & SPTE_PAGE_SIZE_MASK) !== 0n;
}

/** A present SPTE above level 1 that maps a huge page (KVM's is_large_pte). */
export function isLargePte(spte: bigint): boolean {
  return BigInt.asUintN(64, spte & SPTE_PAGE_SIZE_MASK) !== 0n;
}

/** A huge leaf: `spte` as made for level 1, with PS (make_spte at a level above 1). */
export function makeHugeSpte(leaf: bigint): bigint {
  return BigInt.asUintN(64, leaf | SPTE_PAGE_SIZE_MASK);
}

/**
 * KVM's make_small_spte (make_huge_page_split_spte): entry `index` of the
 * table that replaces the 2 MiB leaf `huge` — the same bits (W, D, A,
 * MMU-writable all kept, so splitting needs no TLB flush) without PS, mapping
 * the index'th 4 KiB page of the huge page.
 */
export function makeSmallSpte(huge: bigint, index: number): bigint {
  const base = BigInt.asUintN(64, huge & ~(SPTE_PAGE_SIZE_MASK | SPTE_BASE_ADDR_MASK));
  return base | (BigInt(spteToPfn(huge) + index) << 12n);
}

// Reading a non-leaf SPTE by its low word. Everything a walk uses of a
// non-leaf SPTE is in its low 32 bits: its present bits, and its child's index,
// which is below 2^20 since the meta buffer holding the shadow pages' 4 KiB
// tables is at most 4 GiB (MmuPages checks). A walk reads an entry above level
// 1 with Mem.load64Low, one 32-bit read instead of a 64-bit one and the BigInt
// that costs. Such an entry may be a huge leaf (PS set) in TDP mode with huge
// pages: walks test isLargeLow before following it.

/** isShadowPresentPte on an SPTE's low 32 bits (Mem.load64Low), where its bit is. */
export function isShadowPresentLow(low32: number): boolean {
  return (low32 & LOW_MMU_PRESENT) !== 0;
}

/** Hardware-present (P) on an SPTE's low 32 bits. */
export function isPresentLow(low32: number): boolean {
  return (low32 & LOW_HW_PRESENT) !== 0;
}

/** PS on an SPTE's low 32 bits: above level 1, a huge leaf, not a table. */
export function isLargeLow(low32: number): boolean {
  return (low32 & LOW_PAGE_SIZE) !== 0;
}

/** The child shadow page a present non-leaf SPTE points to, from its low 32 bits. */
export function spteLowToChild(low32: number): number {
  if ((low32 & LOW_PAGE_SIZE) !== 0) throw new Error('spte: a huge leaf followed as a table (test isLargeLow first)');
  return low32 >>> 12;
}

/** The pfn a leaf SPTE maps (its address field, bits 12..51, as for any x86 entry). */
export function spteToPfn(spte: bigint): number {
  return pteFrame(spte);
}

/** Index of the child shadow page a non-leaf SPTE points to. */
export function spteToChild(spte: bigint): number {
  return pteFrame(spte);
}

/**
 * Index of `addr` in a shadow page at `level` 1..4 (KVM's SPTE_INDEX): the same
 * split of the address as the guest's tables use, so x86's pteIndex itself
 * (the same function, not a wrapper: walks call it at every level).
 */
export const spteIndex: (addr: number, level: number) => number = pteIndex;

/** Pages one entry at `level` 1..4 maps (1, 512, 512^2, 512^3). */
export function pagesPerSpte(level: number): number {
  return LEVEL_PAGES[level]!;
}

/** The ACC_* rights a leaf SPTE grants. */
export function spteAccess(spte: bigint): number {
  let acc = 0;
  if (BigInt.asUintN(64, spte & SPTE_WRITABLE_MASK) !== 0n) acc |= ACC_WRITE_MASK;
  if (BigInt.asUintN(64, spte & SPTE_USER_MASK) !== 0n) acc |= ACC_USER_MASK;
  if (BigInt.asUintN(64, spte & SPTE_NX_MASK) === 0n) acc |= ACC_EXEC_MASK;
  return acc;
}

/**
 * Can a bit of this SPTE change while mmu_lock is held (KVM's spte_has_volatile_bits)?
 * If so it must be updated or cleared with xchg/cmpxchg, not a plain store.
 * Volatile when:
 *   - the fast path may set W locklessly (MMU_WRITABLE) — the seed's fix for
 *     race 3, dropped when the `atomic-volatile-clear` guard is off, which gives
 *     the 2012 rule before the fix;
 *   - the hardware walk may still set A (A clear), or D (W set, D clear).
 */
/**
 * KVM's leaf_spte_change_needs_tlb_flush: would changing the leaf `old` to
 * `newSpte` leave a stale translation in a TLB (the mapping goes, moves to
 * another pfn, or loses W)?
 */
export function leafChangeNeedsTlbFlush(old: bigint, newSpte: bigint): boolean {
  if (!isShadowPresentPte(old)) return false;
  if (!isShadowPresentPte(newSpte)) return true;
  if (spteToPfn(old) !== spteToPfn(newSpte)) return true;
  return isWritablePte(old) && !isWritablePte(newSpte);
}

export function spteHasVolatileBits(spte: bigint, atomicVolatileClear: boolean): boolean {
  if (!isShadowPresentPte(spte)) return false;
  if (atomicVolatileClear && isMmuWritableSpte(spte)) return true;
  if (!isAccessedSpte(spte)) return true;
  return isWritablePte(spte) && !isDirtySpte(spte);
}

/**
 * Build a leaf SPTE (KVM's make_spte).
 * `acc`: ACC_* rights to grant; write is dropped unless the host mapping is writable.
 * `accessed`: set A (a real fault, not a prefetch). `dirty`: set D with W (the fault is a write).
 * Returns the SPTE; writable SPTEs carry MMU_WRITABLE and HOST_WRITABLE.
 */
export function makeSpte(acc: number, pfn: number, hostWritable: boolean, accessed: boolean, dirty: boolean, adDisabled = false): bigint {
  let lo = LOW_PRESENT;
  let hi = 0;
  if (accessed && !adDisabled) lo |= LOW_ACCESSED;
  if ((acc & ACC_EXEC_MASK) === 0) hi |= HIGH_NX;
  if ((acc & ACC_USER_MASK) !== 0) lo |= LOW_USER;
  if (hostWritable) lo |= LOW_HOST_WRITABLE;
  if (hostWritable && (acc & ACC_WRITE_MASK) !== 0) {
    lo |= LOW_WRITABLE;
    if (dirty && !adDisabled) lo |= LOW_DIRTY;
  }
  if (!adDisabled) return pteFromParts(lo, hi, pfn);
  // Without A/D bits a prefetched SPTE starts access-tracked (KVM's make_spte), so its first access is seen.
  const spte = pteFromParts(lo, hi | HIGH_AD_DISABLED, pfn);
  return accessed ? spte : markSpteForAccessTrack(spte);
}

/** A non-leaf SPTE pointing to shadow page `child` (KVM's make_nonleaf_spte). */
export function makeNonleafSpte(child: number): bigint {
  return pteFromParts(LOW_NONLEAF, 0, child);
}

/** For a leaf SPTE: null when the writable bits are in one of the four allowed states, else what is wrong. (Non-leaf SPTEs carry W without the software bits, as in KVM.) */
export function checkWritableBits(spte: bigint): string | null {
  if (!isShadowPresentPte(spte)) return null;
  const w = isWritablePte(spte);
  const mmu = isMmuWritableSpte(spte);
  const host = isHostWritableSpte(spte);
  if (w && !host) return 'W set without HOST_WRITABLE';
  if (w && !mmu) return 'W set without MMU_WRITABLE';
  if (mmu && !host) return 'MMU_WRITABLE set without HOST_WRITABLE';
  return null;
}

/** A readable rendering: "pfn=0x1f P W A D HW MW" (for traces and errors). */
export function formatSpte(spte: bigint): string {
  if (spte === 0n) return '0';
  if (spte === FROZEN_SPTE) return 'FROZEN';
  if (isMmioSpte(spte)) return `MMIO gfn=0x${(spte >> 12n).toString(16)}`;
  const bits: string[] = [];
  if (isShadowPresentPte(spte)) bits.push('SP');
  if ((spte & SPTE_PRESENT_MASK) !== 0n) bits.push('P');
  if (isWritablePte(spte)) bits.push('W');
  if ((spte & SPTE_USER_MASK) !== 0n) bits.push('U');
  if (isAccessedSpte(spte)) bits.push('A');
  if (isDirtySpte(spte)) bits.push('D');
  if (isHostWritableSpte(spte)) bits.push('HW');
  if (isMmuWritableSpte(spte)) bits.push('MW');
  if ((spte & SPTE_NX_MASK) !== 0n) bits.push('NX');
  if (isLargePte(spte)) bits.push('2M');
  if (!spteAdEnabled(spte)) bits.push(isAccessTrackSpte(spte) ? 'noAD ACC-TRACKED' : 'noAD');
  return `pfn=0x${spteToPfn(spte).toString(16)} ${bits.join(' ')}`;
}
