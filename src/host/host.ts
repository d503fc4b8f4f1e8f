// The host: physical frames and their bytes, refcounts, the VMM's mapping of guest memory, swap, KSM, frame reuse, MMU-notifier calls.
//
// The VMM maps guest memory at "host virtual pages" (hvpn 0..nPages-1); KVM's
// memslots translate gfn -> hvpn. The host owns which frame backs each hvpn.
//
// Meta regions (Int32 words):
//   host.lock      LOCK_WORDS   the mm lock: serializes mapping changes (faults, swap, KSM)
//   host.freeLock  LOCK_WORDS   protects the free-frame stack (taken inside host.lock, never around it)
//   host.frames    nFrames * 4  per frame: [0] refcount, [1] flags (FRAME_*), [2] last hvpn + 1, [3] spare
//   host.free      nFrames + 1  [0] stack depth, [1..] free pfns; the top is reused first (LIFO), so a
//                               freed frame comes back at the next allocation — the seed's pfn reuse
//   host.pgdir     (1 + nPud + nPmd) * 512   the upper levels of the host's page table for the VMM's
//                               mapping of guest memory: the PGD page, then PUD pages, then PMD pages;
//                               entry = next table's page number << 12 | PGDIR_PRESENT (PMD entries name
//                               pages of host.map); built by init and never changed
//   host.map       nPages       the PTE level (512 words a page); the PTE, a "mapping word":
//                               generation << MAP_GEN_SHIFT | pfn << MAP_PFN_SHIFT | MAP_WRITABLE | MAP_PRESENT;
//                               every change bumps the 10-bit generation, so a reader that sees the same word
//                               twice knows the mapping did not change in between (no ABA in practice)
//   host.swapOf    nPages       swap slot + 1 holding a valid copy of the page, or 0 (kept after swap-in: a swap cache)
//   host.swapFree  nSwap + 1    [0] depth, [1..] free swap slots (under host.lock)
//   host.stats     HOST_STAT_*  counters (Atomics.add; not race-relevant)
// Data regions: host.frameData (nFrames * 4 KiB), host.swapData (nSwap * 4 KiB).
//
// Page tables: the VMM maps guest memory at HVA_BASE, so hvpn h is host virtual
// page HVA_BASE / 4096 + h, and its PTE is found as x86's MMU and GUP-fast find
// it: PGD, PUD, PMD, PTE, 9 bits of the page number each. The host never frees
// page-table pages, so only the PTE changes after init.
//
// Refcounts: each mapping of a frame holds one reference, each pin (a fault
// path's get_user_pages) one more. A frame is freed when its count reaches 0,
// so a pinned frame cannot be freed and reused — the seed's fix 1 relies on it.
//
// Dirty: a frame's DIRTY flag says its bytes differ from its swap copy. The
// host sets it for its own writes through the mapping; KVM sets it
// (kvmSetPfnDirty) when it drops an SPTE whose D bit is set. Guest writes
// through an SPTE leave only the D bit, so a lost D bit means swap-out skips
// the write-back and the guest's write is lost (the seed's race 3, end to end).

import { LOCK_WORDS, NOTE, type Mem } from '../shm/access';
import { KvmmuError } from '../shm/errors';
import { region, type Layout, type LayoutBuilder } from '../shm/layout';

export const FRAME_DIRTY = 1 << 0;
export const FRAME_ACCESSED = 1 << 1;
/** A KSM-merged frame: shared read-only by several mappings; a write breaks it (copy on write). */
export const FRAME_KSM = 1 << 2;
export const FRAME_FREE = 1 << 3;
/**
 * PG_referenced as GUP-fast sets it on every page it pins (2012's
 * SetPageReferenced, today's folio_set_referenced): one atomic on the flags
 * word, paid on each pin. The host has no LRU to read it. Kept apart from
 * FRAME_ACCESSED, which records what KVM reported (kvm_set_pfn_accessed), so
 * that tests can tell KVM's reports from GUP's marks; in Linux both end in the
 * page's LRU state.
 */
export const FRAME_REFERENCED = 1 << 4;

export const MAP_PRESENT = 1 << 0;
export const MAP_WRITABLE = 1 << 1;
export const MAP_PFN_SHIFT = 2;
const MAP_PFN_MASK = (1 << 20) - 1;
const MAP_GEN_SHIFT = 22;
/** At most 2^20 frames: a 4 GiB data buffer, Node's limit anyway. */
export const MAX_FRAMES = 1 << 20;

/** Where the VMM maps guest memory in its address space: in the mmap area, 512 GiB aligned (one PGD entry). */
export const HVA_BASE = 0x7f00_0000_0000;
const HVA_BASE_PAGE = HVA_BASE / 4096;
/** A present upper-level entry (x86's _PAGE_PRESENT); the next table's page number is in bits 12 and up. */
const PGDIR_PRESENT = 1;
const PT_ENTRIES = 512;

/** Upper-level table pages for `nPages` host pages from HVA_BASE: [PUD pages, PMD pages] (the PGD is one page). */
function pgdirPages(nPages: number): [number, number] {
  const pte = Math.ceil(nPages / PT_ENTRIES);
  const pmd = Math.ceil(pte / PT_ENTRIES);
  return [Math.ceil(pmd / PT_ENTRIES), pmd];
}

/** The frame a present mapping word names. */
export function mapPfn(w: number): number {
  return (w >>> MAP_PFN_SHIFT) & MAP_PFN_MASK;
}

/** A mapping word replacing `old`: `pfn` with `flags` (MAP_*), one generation later. */
function nextMapWord(old: number, pfn: number, flags: number): number {
  const gen = ((old >>> MAP_GEN_SHIFT) + 1) & 0x3ff;
  return (gen << MAP_GEN_SHIFT) | (pfn << MAP_PFN_SHIFT) | flags;
}

const FRAME_WORDS = 4;
const FR_REF = 0;
const FR_FLAGS = 1;
const FR_LAST = 2;

export const HOST_STAT = {
  swapOuts: 0,
  writebacks: 1,
  swapIns: 2,
  zeroFills: 3,
  ksmMerges: 4,
  cowBreaks: 5,
  frameReuses: 6,
  frameAllocs: 7,
  frameFrees: 8,
  notifierCalls: 9,
} as const;
const HOST_STAT_COUNT = Object.keys(HOST_STAT).length;

export interface HostParams {
  /** Host virtual pages the VMM maps for guest memory. */
  readonly nPages: number;
  /** Physical frames. */
  readonly nFrames: number;
  /** Swap slots (0: no swap). */
  readonly nSwap: number;
  /**
   * Guest memory is backed by 2 MiB HugeTLB pages: every page is allocated
   * and mapped at init (as a VMM that maps hugetlbfs memory with MAP_POPULATE),
   * hvpn h by frame h, so each 512-page run is one physically contiguous,
   * aligned huge page. HugeTLB pages are never swapped or merged by KSM, so
   * these mappings never change.
   */
  readonly hugetlb?: boolean;
}

/**
 * The MMU-notifier callbacks the host calls (KVM implements them). Ranges are
 * [start, end) in host virtual pages. Called with the host mm lock held.
 */
export interface MmuNotifier {
  invalidateRangeStart(start: number, end: number): void;
  invalidateRangeEnd(start: number, end: number): void;
  /** Clear the accessed state of the range; true if any of it was young. No TLB flush (x86 skips it for aging). */
  clearFlushYoung(start: number, end: number): boolean;
}

export function reserveHost(b: LayoutBuilder, p: HostParams): void {
  if (p.nFrames > MAX_FRAMES) throw new KvmmuError(`at most ${MAX_FRAMES} host frames (4 GiB), not ${p.nFrames}`);
  b.metaLines('host.lock', LOCK_WORDS * 4);
  b.metaLines('host.freeLock', LOCK_WORDS * 4);
  b.meta('host.frames', p.nFrames * FRAME_WORDS * 4);
  b.meta('host.free', (p.nFrames + 1) * 4);
  const [pud, pmd] = pgdirPages(p.nPages);
  b.meta('host.pgdir', (1 + pud + pmd) * PT_ENTRIES * 4);
  b.meta('host.map', p.nPages * 4);
  b.meta('host.swapOf', p.nPages * 4);
  b.meta('host.swapFree', (p.nSwap + 1) * 4);
  b.meta('host.stats', HOST_STAT_COUNT * 4);
  b.data('host.frameData', p.nFrames * 4096);
  b.data('host.swapData', p.nSwap * 4096);
}

const ZERO_PAGE = new Uint8Array(4096);

// Index of host virtual page `page` in its PGD, PUD and PMD (bits 39-47, 30-38, 21-29 of the address).
function pgdIndex(page: number): number {
  return Math.floor(page / PT_ENTRIES ** 3) & (PT_ENTRIES - 1);
}
function pudIndex(page: number): number {
  return Math.floor(page / PT_ENTRIES ** 2) & (PT_ENTRIES - 1);
}
function pmdIndex(page: number): number {
  return Math.floor(page / PT_ENTRIES) & (PT_ENTRIES - 1);
}

/** A per-thread handle on the host's shared state. */
export class Host {
  readonly lockWord: number;
  private readonly freeLockWord: number;
  private readonly frames: number;
  private readonly freeStack: number;
  private readonly pgdir: number;
  private readonly map: number;
  private readonly swapOf: number;
  private readonly swapFree: number;
  private readonly stats: number;
  /** Byte offset of frame 0's bytes in the data buffer. */
  readonly frameDataByte: number;
  private readonly swapDataByte: number;
  /** Whether the last getUserPage / gupFast returned a writable mapping. */
  lastWritable = false;
  /** KVM's notifier for this thread's handle, or null before a VM registers. */
  notifier: MmuNotifier | null = null;

  constructor(
    readonly mem: Mem,
    layout: Layout,
    readonly p: HostParams,
  ) {
    this.lockWord = region(layout, 'host.lock').off / 4;
    this.freeLockWord = region(layout, 'host.freeLock').off / 4;
    this.frames = region(layout, 'host.frames').off / 4;
    this.freeStack = region(layout, 'host.free').off / 4;
    this.pgdir = region(layout, 'host.pgdir').off / 4;
    this.map = region(layout, 'host.map').off / 4;
    this.swapOf = region(layout, 'host.swapOf').off / 4;
    this.swapFree = region(layout, 'host.swapFree').off / 4;
    this.stats = region(layout, 'host.stats').off / 4;
    this.frameDataByte = region(layout, 'host.frameData').off;
    this.swapDataByte = region(layout, 'host.swapData').off;
  }

  /** Put every frame and swap slot on its free stack, lowest number on top. Single-threaded setup. */
  init(): void {
    const a = this.mem.i32;
    const n = this.p.nFrames;
    a[this.freeStack] = n;
    for (let k = 0; k < n; k++) {
      a[this.freeStack + 1 + k] = n - 1 - k;
      a[this.frames + k * FRAME_WORDS + FR_FLAGS] = FRAME_FREE;
    }
    const s = this.p.nSwap;
    a[this.swapFree] = s;
    for (let k = 0; k < s; k++) a[this.swapFree + 1 + k] = s - 1 - k;
    this.buildPageTables();
    if (this.p.hugetlb === true) this.populateHugetlb();
  }

  /**
   * Back every host virtual page with its frame from the start: hvpn h gets
   * frame h (the free stack hands out frame 0 first), mapped writable, with the
   * mapping's reference. Single-threaded setup.
   */
  private populateHugetlb(): void {
    const a = this.mem.i32;
    const n = this.p.nPages;
    if (this.p.nFrames < n) throw new KvmmuError(`host: ${n} huge-page-backed pages need as many frames, not ${this.p.nFrames}`);
    for (let h = 0; h < n; h++) {
      const f = this.frames + h * FRAME_WORDS;
      a[f + FR_REF] = 1;
      a[f + FR_FLAGS] = 0;
      a[f + FR_LAST] = h + 1;
      a[this.ptep(h)] = (h << MAP_PFN_SHIFT) | MAP_PRESENT | MAP_WRITABLE;
    }
    a[this.freeStack] = this.p.nFrames - n;
  }

  /**
   * The level at which the host maps `hvpn` (KVM's host_pfn_mapping_level): 2
   * for a page of a whole 2 MiB HugeTLB page, else 1. HugeTLB mappings are
   * fixed at init, so this reads no shared state.
   */
  mappingLevel(hvpn: number): number {
    if (this.p.hugetlb !== true) return 1;
    return hvpn - (hvpn % PT_ENTRIES) + PT_ENTRIES <= this.p.nPages ? 2 : 1;
  }

  /**
   * Link the upper levels of the page table over host.map: table page t of
   * host.pgdir is the PGD (t = 0), a PUD (1..nPud) or a PMD (after those).
   * Every table the mapping needs is allocated here, so a walk never meets a
   * hole. Single-threaded setup.
   */
  private buildPageTables(): void {
    const a = this.mem.i32;
    const [nPud, nPmd] = pgdirPages(this.p.nPages);
    const nPte = Math.ceil(this.p.nPages / PT_ENTRIES);
    const link = (table: number, idx: number, next: number): void => {
      a[this.pgdir + table * PT_ENTRIES + idx] = (next << 12) | PGDIR_PRESENT;
    };
    for (let t = 0; t < nPte; t++) {
      const page = HVA_BASE_PAGE + t * PT_ENTRIES;
      link(1 + nPud + Math.floor(t / PT_ENTRIES), pmdIndex(page), t);
    }
    for (let t = 0; t < nPmd; t++) link(1 + Math.floor(t / PT_ENTRIES), pudIndex(HVA_BASE_PAGE + t * PT_ENTRIES ** 2), 1 + nPud + t);
    for (let t = 0; t < nPud; t++) link(0, pgdIndex(HVA_BASE_PAGE + t * PT_ENTRIES ** 3), 1 + t);
  }

  /**
   * The word index of `hvpn`'s PTE in the meta buffer, found by walking the
   * page table from the PGD. The upper levels never change after init, so they
   * are read plainly; callers read and write the PTE itself through the access
   * layer. Public for tests and displays.
   */
  ptep(hvpn: number): number {
    const a = this.mem.i32;
    const page = HVA_BASE_PAGE + hvpn;
    const pgd = a[this.pgdir + pgdIndex(page)]!;
    if ((pgd & PGDIR_PRESENT) === 0) throw new Error(`host: hvpn ${hvpn} is outside the VMM's mapping`);
    const pud = a[this.pgdir + (pgd >>> 12) * PT_ENTRIES + pudIndex(page)]!;
    if ((pud & PGDIR_PRESENT) === 0) throw new Error(`host: hvpn ${hvpn} is outside the VMM's mapping`);
    const pmd = a[this.pgdir + (pud >>> 12) * PT_ENTRIES + pmdIndex(page)]!;
    if ((pmd & PGDIR_PRESENT) === 0) throw new Error(`host: hvpn ${hvpn} is outside the VMM's mapping`);
    return this.map + (pmd >>> 12) * PT_ENTRIES + (page & (PT_ENTRIES - 1));
  }

  // ---- reading state (monitors, displays, tests) ----

  /** The mapping word of `hvpn` (an access-layer load). */
  mapping(hvpn: number): number {
    return this.mem.load32(this.ptep(hvpn));
  }

  /** The pfn mapping `hvpn`, or -1 (not a scheduling point: for monitors and tests). */
  peekPfn(hvpn: number): number {
    const w = Atomics.load(this.mem.i32, this.ptep(hvpn));
    return (w & MAP_PRESENT) !== 0 ? mapPfn(w) : -1;
  }

  peekMapping(hvpn: number): number {
    return Atomics.load(this.mem.i32, this.ptep(hvpn));
  }

  peekRefcount(pfn: number): number {
    return Atomics.load(this.mem.i32, this.frames + pfn * FRAME_WORDS + FR_REF);
  }

  peekFrameFlags(pfn: number): number {
    return Atomics.load(this.mem.i32, this.frames + pfn * FRAME_WORDS + FR_FLAGS);
  }

  peekSwapSlot(hvpn: number): number {
    return Atomics.load(this.mem.i32, this.swapOf + hvpn) - 1;
  }

  stat(name: keyof typeof HOST_STAT): number {
    return Atomics.load(this.mem.i32, this.stats + HOST_STAT[name]);
  }

  freeFrames(): number {
    return Atomics.load(this.mem.i32, this.freeStack);
  }

  /** Byte offset of frame `pfn` in the data buffer. */
  frameByte(pfn: number): number {
    return this.frameDataByte + pfn * 4096;
  }

  // ---- refcounts and pins ----

  /**
   * GUP-fast: pin the frame mapping `hvpn` without the mm lock (KVM's
   * gfn_to_pfn_atomic): walk the page table to the PTE, fail (-1) if the page
   * is not present, or not writable for a write; take a reference with
   * get-unless-zero, then re-read the PTE: if it moved meanwhile, drop the
   * reference and fail; else mark the page referenced, as Linux's GUP-fast
   * does after the same re-check.
   */
  gupFast(hvpn: number, write: boolean): number {
    const ptep = this.ptep(hvpn);
    const w = this.mem.load32(ptep);
    if ((w & MAP_PRESENT) === 0) return -1;
    if (write && (w & MAP_WRITABLE) === 0) return -1;
    const pfn = mapPfn(w);
    if (!this.getPageUnlessZero(pfn)) return -1;
    if (this.mem.load32(ptep) !== w) {
      this.putPage(pfn);
      return -1;
    }
    this.mem.or32(this.frames + pfn * FRAME_WORDS + FR_FLAGS, FRAME_REFERENCED);
    this.lastWritable = (w & MAP_WRITABLE) !== 0;
    return pfn;
  }

  private getPageUnlessZero(pfn: number): boolean {
    const ref = this.frames + pfn * FRAME_WORDS + FR_REF;
    let c = this.mem.load32(ref);
    for (;;) {
      if (c === 0) return false;
      const old = this.mem.cmpxchg32(ref, c, c + 1);
      if (old === c) return true;
      c = old;
    }
  }

  /** Drop a reference; the last one frees the frame. */
  putPage(pfn: number): void {
    const old = this.mem.fetchAdd32(this.frames + pfn * FRAME_WORDS + FR_REF, -1);
    if (old === 1) this.freeFrame(pfn);
    else if (old <= 0) throw new Error(`host: refcount of pfn ${pfn} was ${old} at put`);
  }

  /**
   * Pin the frame backing `hvpn`, faulting it in (swap-in, zero-fill, COW break)
   * as the host's page-fault handler would (KVM's hva_to_pfn). For a read, a
   * writable mapping is reported as such (`lastWritable`) so KVM can map it
   * writable. Returns the pfn; the caller must putPage it.
   */
  getUserPage(hvpn: number, write: boolean): number {
    const fast = this.gupFast(hvpn, write);
    if (fast >= 0) return fast;
    this.mem.lock(this.lockWord);
    let pfn: number;
    try {
      pfn = this.faultInLocked(hvpn, write);
    } catch (e) {
      // Out of frames (allocFrame throws before it changes anything): do not leave the mm lock held.
      this.mem.unlock(this.lockWord);
      throw e;
    }
    // The mm lock keeps the mapping's own reference alive, so a plain increment is safe here.
    this.mem.fetchAdd32(this.frames + pfn * FRAME_WORDS + FR_REF, 1);
    this.lastWritable = (this.mem.load32(this.ptep(hvpn)) & MAP_WRITABLE) !== 0;
    this.mem.unlock(this.lockWord);
    return pfn;
  }

  /** Make `hvpn` present (and writable for a write); mm lock held. Returns the pfn. */
  private faultInLocked(hvpn: number, write: boolean): number {
    const ptep = this.ptep(hvpn);
    const w = this.mem.load32(ptep);
    if ((w & MAP_PRESENT) === 0) return this.swapInLocked(hvpn);
    const pfn = mapPfn(w);
    if (!write || (w & MAP_WRITABLE) !== 0) return pfn;
    const flags = this.mem.load32(this.frames + pfn * FRAME_WORDS + FR_FLAGS);
    if ((flags & FRAME_KSM) === 0) {
      // Only this mapping uses the frame: reuse it, just writable again (do_wp_page's reuse case).
      // Raising a permission needs no invalidation: no SPTE can grant more than the old mapping did.
      this.mem.store32(ptep, nextMapWord(w, pfn, MAP_PRESENT | MAP_WRITABLE));
      return pfn;
    }
    return this.breakCowLocked(hvpn, pfn);
  }

  /** Copy a KSM-shared frame into a private one for `hvpn`; mm lock held. */
  private breakCowLocked(hvpn: number, oldPfn: number): number {
    const pfn = this.allocFrame(hvpn);
    this.mem.copyData(this.frameByte(pfn), this.frameByte(oldPfn), 4096);
    const ptep = this.ptep(hvpn);
    this.notifyStart(hvpn);
    this.mem.store32(ptep, nextMapWord(this.mem.load32(ptep), pfn, MAP_PRESENT | MAP_WRITABLE));
    this.notifyEnd(hvpn);
    this.dropSwapSlotLocked(hvpn);
    this.putPage(oldPfn);
    this.count(HOST_STAT.cowBreaks);
    return pfn;
  }

  private swapInLocked(hvpn: number): number {
    const pfn = this.allocFrame(hvpn);
    const slot = this.mem.load32(this.swapOf + hvpn) - 1;
    if (slot >= 0) {
      this.mem.copyData(this.frameByte(pfn), this.swapDataByte + slot * 4096, 4096);
      this.count(HOST_STAT.swapIns);
    } else {
      this.mem.writeData(this.frameByte(pfn), ZERO_PAGE, 0, 4096);
      this.count(HOST_STAT.zeroFills);
    }
    // A fresh frame is clean: it equals its swap copy, or has none (then swap-out always writes it).
    const ptep = this.ptep(hvpn);
    this.mem.store32(ptep, nextMapWord(this.mem.load32(ptep), pfn, MAP_PRESENT | MAP_WRITABLE));
    return pfn;
  }

  /** Take a frame off the free stack for `hvpn` with refcount 1 (the mapping's reference). */
  private allocFrame(hvpn: number): number {
    this.mem.lock(this.freeLockWord);
    const depth = this.mem.load32(this.freeStack);
    if (depth === 0) {
      this.mem.unlock(this.freeLockWord);
      throw new KvmmuError('host: out of physical frames; give the host more frames than guest pages');
    }
    const pfn = this.mem.load32(this.freeStack + depth);
    this.mem.store32(this.freeStack, depth - 1);
    this.mem.unlock(this.freeLockWord);
    const base = this.frames + pfn * FRAME_WORDS;
    this.mem.store32(base + FR_FLAGS, 0);
    this.mem.store32(base + FR_REF, 1);
    const last = this.mem.xchg32(base + FR_LAST, hvpn + 1);
    if (last !== 0 && last !== hvpn + 1) this.count(HOST_STAT.frameReuses);
    this.count(HOST_STAT.frameAllocs);
    this.mem.note(NOTE.frameAlloc, pfn, hvpn);
    return pfn;
  }

  private freeFrame(pfn: number): void {
    this.mem.store32(this.frames + pfn * FRAME_WORDS + FR_FLAGS, FRAME_FREE);
    this.mem.lock(this.freeLockWord);
    const depth = this.mem.load32(this.freeStack);
    this.mem.store32(this.freeStack + depth + 1, pfn);
    this.mem.store32(this.freeStack, depth + 1);
    this.mem.unlock(this.freeLockWord);
    this.count(HOST_STAT.frameFrees);
  }

  // ---- frame state KVM reports ----

  /** KVM's kvm_set_pfn_dirty: the frame's bytes changed through an SPTE. */
  setPfnDirty(pfn: number): void {
    this.mem.or32(this.frames + pfn * FRAME_WORDS + FR_FLAGS, FRAME_DIRTY);
  }

  /** KVM's kvm_set_pfn_accessed. */
  setPfnAccessed(pfn: number): void {
    this.mem.or32(this.frames + pfn * FRAME_WORDS + FR_FLAGS, FRAME_ACCESSED);
  }

  // ---- the VMM's own accesses to guest memory (copy_to/from_user) ----

  /**
   * Read the 64-bit word at byte `off` of page `hvpn`, faulting it in (KVM's
   * kvm_vcpu_read_guest: a user copy, no pin). A CPU's load is atomic with its
   * translation; here the translation is one read and the load another, so
   * read the mapping again: if it changed, the frame may have been freed and
   * reused meanwhile, and the load is repeated. Only reads: readers never
   * conflict with each other.
   */
  readUser64(hvpn: number, off: number): bigint {
    for (;;) {
      const v = this.readUserAtomic(hvpn, off);
      if (v >= 0n) return v;
      this.swapIn(hvpn);
    }
  }

  /** As readUser64 without faulting: -1n if the page is not present (KVM's read_guest_atomic). */
  readUserAtomic(hvpn: number, off: number): bigint {
    const ptep = this.ptep(hvpn);
    for (;;) {
      const w = this.mem.load32(ptep);
      if ((w & MAP_PRESENT) === 0) return -1n;
      const v = this.mem.loadData64((this.frameByte(mapPfn(w)) + off) / 8);
      if (this.mem.load32(ptep) === w) return v;
    }
  }

  /**
   * As readUserAtomic for `len` bytes from byte `off` (within the page) into
   * `dst`: one translation, one copy, the translation checked again (KVM's
   * kvm_vcpu_read_guest_atomic of a range). False if the page is not present.
   */
  readUserRangeAtomic(hvpn: number, off: number, dst: Uint8Array, len: number): boolean {
    const ptep = this.ptep(hvpn);
    for (;;) {
      const w = this.mem.load32(ptep);
      if ((w & MAP_PRESENT) === 0) return false;
      this.mem.readData(this.frameByte(mapPfn(w)) + off, dst, 0, len);
      if (this.mem.load32(ptep) === w) return true;
    }
  }

  /**
   * Write the 64-bit word at byte `off` of page `hvpn`; the host's own write
   * dirties the frame (KVM's kvm_vcpu_write_guest: a user copy).
   *
   * A CPU's store is atomic with its translation. Here the translation, the
   * store and the dirty mark are separate steps, so they are made under the mm
   * lock, which every change of a mapping (swap, KSM, fault-in) takes: no
   * swap-out can unmap the frame between them and decide it is clean before the
   * mark lands (the write would be lost), and no KSM merge can share it. Linux's
   * copy_to_user takes no lock; it gets the same effect from the MMU.
   */
  writeUser64(hvpn: number, off: number, v: bigint): void {
    this.mem.lock(this.lockWord);
    try {
      const pfn = this.faultInLocked(hvpn, true);
      this.mem.storeData64((this.frameByte(pfn) + off) / 8, v);
      this.setPfnDirty(pfn);
    } finally {
      this.mem.unlock(this.lockWord);
    }
  }

  /**
   * Compare-and-exchange the word at byte `off` of page `hvpn` (a user-space
   * cmpxchg), under the mm lock as writeUser64; returns the old value. (Written
   * out rather than sharing a callback with writeUser64: the checker's
   * generator build cannot follow a callback that reaches the access layer.)
   */
  cmpxchgUser64(hvpn: number, off: number, expected: bigint, v: bigint): bigint {
    this.mem.lock(this.lockWord);
    try {
      const pfn = this.faultInLocked(hvpn, true);
      const old = this.mem.cmpxchgData64((this.frameByte(pfn) + off) / 8, expected, v);
      if (old === expected) this.setPfnDirty(pfn);
      return old;
    } finally {
      this.mem.unlock(this.lockWord);
    }
  }

  /** Copy page `hvpn` as the VMM sees it (frame, else swap copy, else zeros) into `dst` at `dstOff`, without faulting it in. */
  readPage(hvpn: number, dst: Uint8Array, dstOff: number): void {
    this.mem.lock(this.lockWord);
    const w = this.mem.load32(this.ptep(hvpn));
    if ((w & MAP_PRESENT) !== 0) {
      this.mem.readData(this.frameByte(mapPfn(w)), dst, dstOff, 4096);
    } else {
      const slot = this.mem.load32(this.swapOf + hvpn) - 1;
      if (slot >= 0) this.mem.readData(this.swapDataByte + slot * 4096, dst, dstOff, 4096);
      else dst.fill(0, dstOff, dstOff + 4096);
    }
    this.mem.unlock(this.lockWord);
  }

  /**
   * Byte offset in the data buffer where page `hvpn`'s bytes are as the VMM
   * sees them (its frame, else its swap copy), or -1 for a never-touched page.
   * Plain reads and no lock: for monitors and displays between steps, never for MMU code.
   */
  quietPageByte(hvpn: number): number {
    const a = this.mem.i32;
    const w = a[this.ptep(hvpn)]!;
    if ((w & MAP_PRESENT) !== 0) return this.frameByte(mapPfn(w));
    const slot = a[this.swapOf + hvpn]! - 1;
    return slot >= 0 ? this.swapDataByte + slot * 4096 : -1;
  }

  // ---- memory pressure: swap, KSM, aging ----

  /**
   * Swap page `hvpn` out: invalidate KVM's mappings (KVM zaps its SPTEs and
   * reports D bits as frame dirtiness), unmap, write the bytes to swap if the
   * frame is dirty or has no swap copy, and drop the mapping's reference — the
   * frame is freed unless someone pins it. Returns false if the page was not
   * present, is KSM-shared, is a HugeTLB page, or swap is full.
   */
  swapOut(hvpn: number): boolean {
    if (this.p.hugetlb === true) return false; // HugeTLB pages are not swapped
    this.mem.lock(this.lockWord);
    const ptep = this.ptep(hvpn);
    const w = this.mem.load32(ptep);
    if ((w & MAP_PRESENT) === 0) return this.unlockAnd(false);
    const pfn = mapPfn(w);
    const fl = this.frames + pfn * FRAME_WORDS + FR_FLAGS;
    if ((this.mem.load32(fl) & FRAME_KSM) !== 0) return this.unlockAnd(false);
    let slot = this.mem.load32(this.swapOf + hvpn) - 1;
    const hadCopy = slot >= 0;
    if (!hadCopy) {
      slot = this.allocSwapSlotLocked();
      if (slot < 0) return this.unlockAnd(false);
    }
    this.notifyStart(hvpn);
    this.mem.store32(ptep, nextMapWord(w, 0, 0));
    this.notifyEnd(hvpn);
    // After the invalidation no SPTE maps the frame, and the VMM's own writes
    // take the mm lock we hold (writeUser64): its DIRTY flag is final.
    const wasDirty = (this.mem.fetchAnd32(fl, ~FRAME_DIRTY) & FRAME_DIRTY) !== 0;
    if (!hadCopy || wasDirty) {
      this.mem.copyData(this.swapDataByte + slot * 4096, this.frameByte(pfn), 4096);
      this.count(HOST_STAT.writebacks);
      this.mem.note(NOTE.swapOutWriteback, pfn, hvpn);
    } else {
      this.mem.note(NOTE.swapOutClean, pfn, hvpn);
    }
    this.mem.store32(this.swapOf + hvpn, slot + 1);
    this.count(HOST_STAT.swapOuts);
    this.mem.unlock(this.lockWord);
    this.putPage(pfn);
    return true;
  }

  /** Bring page `hvpn` back (swap-in or zero-fill) if it is not present; returns its pfn. */
  swapIn(hvpn: number): number {
    const pfn = this.getUserPage(hvpn, false);
    this.putPage(pfn);
    return pfn;
  }

  /**
   * KSM: merge page `b` into page `a` if their bytes are equal. Both are first
   * write-protected (with invalidation, so no SPTE can write them while they are
   * compared), then compared; if equal, `b` is remapped read-only to `a`'s frame,
   * which becomes KSM-shared, and `b`'s frame is released. Returns true if merged.
   */
  ksmMerge(a: number, b: number): boolean {
    if (a === b || this.p.hugetlb === true) return false; // KSM does not merge HugeTLB pages
    this.mem.lock(this.lockWord);
    const wa = this.mem.load32(this.ptep(a));
    const wb = this.mem.load32(this.ptep(b));
    if ((wa & MAP_PRESENT) === 0 || (wb & MAP_PRESENT) === 0) return this.unlockAnd(false);
    const pa = mapPfn(wa);
    const pb = mapPfn(wb);
    if (pa === pb || (this.mem.load32(this.frames + pb * FRAME_WORDS + FR_FLAGS) & FRAME_KSM) !== 0)
      return this.unlockAnd(false);
    this.writeProtectLocked(a, wa);
    this.writeProtectLocked(b, wb);
    // Linux's write_protect_page refuses a page with references beyond its
    // mappings: someone pinned it (a KVM fault between its GUP and mapping the
    // SPTE) and may still use it. (The VMM's own writes hold the mm lock, so they
    // never meet a merge.) Once
    // both are write-protected no new pin for a write can find them (GUP-fast
    // re-reads the mapping after taking its reference), so the counts read here hold.
    if (this.pinnedBeyondMapping(pa) || this.pinnedBeyondMapping(pb)) return this.unlockAnd(false);
    if (!this.mem.compareData(this.frameByte(pa), this.frameByte(pb), 4096)) return this.unlockAnd(false);
    this.mem.fetchOr32(this.frames + pa * FRAME_WORDS + FR_FLAGS, FRAME_KSM);
    this.mem.fetchAdd32(this.frames + pa * FRAME_WORDS + FR_REF, 1);
    const ptepB = this.ptep(b);
    this.notifyStart(b);
    this.mem.store32(ptepB, nextMapWord(this.mem.load32(ptepB), pa, MAP_PRESENT));
    this.notifyEnd(b);
    this.dropSwapSlotLocked(b);
    this.count(HOST_STAT.ksmMerges);
    this.mem.unlock(this.lockWord);
    this.putPage(pb);
    return true;
  }

  /**
   * Does frame `pfn` (mapped by one page, or KSM-shared) have references beyond
   * its mappings? A KSM frame's mappings are not counted apart from its pins,
   * so it counts as unpinned: no one can pin it for a write (it is read-only).
   */
  private pinnedBeyondMapping(pfn: number): boolean {
    const f = this.frames + pfn * FRAME_WORDS;
    if ((this.mem.load32(f + FR_FLAGS) & FRAME_KSM) !== 0) return false;
    return this.mem.load32(f + FR_REF) > 1;
  }

  private writeProtectLocked(hvpn: number, w: number): void {
    if ((w & MAP_WRITABLE) === 0) return;
    this.notifyStart(hvpn);
    this.mem.store32(this.ptep(hvpn), nextMapWord(w, mapPfn(w), MAP_PRESENT));
    this.notifyEnd(hvpn);
  }

  /** Page aging: ask KVM whether the page was accessed since the last call, clearing that state. */
  clearYoung(hvpn: number): boolean {
    this.mem.lock(this.lockWord);
    const young = this.notifier !== null && this.notifier.clearFlushYoung(hvpn, hvpn + 1);
    this.mem.unlock(this.lockWord);
    return young;
  }

  // ---- helpers ----

  private allocSwapSlotLocked(): number {
    const depth = this.mem.load32(this.swapFree);
    if (depth === 0) return -1;
    const slot = this.mem.load32(this.swapFree + depth);
    this.mem.store32(this.swapFree, depth - 1);
    return slot;
  }

  private dropSwapSlotLocked(hvpn: number): void {
    const slot = this.mem.xchg32(this.swapOf + hvpn, 0) - 1;
    if (slot < 0) return;
    const depth = this.mem.load32(this.swapFree);
    this.mem.store32(this.swapFree + depth + 1, slot);
    this.mem.store32(this.swapFree, depth + 1);
  }

  private notifyStart(hvpn: number): void {
    this.count(HOST_STAT.notifierCalls);
    if (this.notifier !== null) this.notifier.invalidateRangeStart(hvpn, hvpn + 1);
  }

  private notifyEnd(hvpn: number): void {
    if (this.notifier !== null) this.notifier.invalidateRangeEnd(hvpn, hvpn + 1);
  }

  private unlockAnd(v: boolean): boolean {
    this.mem.unlock(this.lockWord);
    return v;
  }

  /** Statistics: plain atomic adds, not race-relevant, so not scheduling points. */
  private count(stat: (typeof HOST_STAT)[keyof typeof HOST_STAT]): void {
    Atomics.add(this.mem.i32, this.stats + stat, 1);
  }
}
