// The VM: its shared regions, memslots and dirty bitmaps, vCPU mode/request words, remote TLB flush, and the per-thread handle tying the MMU together.
//
// Meta regions (Int32 words unless noted):
//   kvm.mmuLock    LOCK_WORDS          mmu_lock (a fair ticket spinlock)
//   kvm.mmu        MMU_WORDS           [SEQ] mmu_invalidate_seq, [IN_PROGRESS] mmu_invalidate_in_progress,
//                                      [RANGE_START, RANGE_END) the hvpn range being invalidated,
//                                      [LRU_HEAD, LRU_TAIL] active shadow-page list (sp + 1), [SP_FREE] free count,
//                                      [MN_ACTIVE] mn_active_invalidate_count
//   kvm.slots      MAX_SLOTS * 4       per memslot: [0] flags (SLOT_DIRTY_LOG, SLOT_INVALID, SLOT_DELETED); geometry is in VmConfig, fixed
//   kvm.srcu       kvm->srcu (shm/rcu.ts): readers of the memslots (TDP faults, pre-faulting); a memslot update waits for them
//   kvm.bitmap     sum(npages / 32)    dirty bitmaps, one bit per page, word per 32 pages
//   kvm.vcpus      vcpus * VCPU_WORDS  per vCPU: [MODE] generation << 2 | mode, [REQUESTS] KVM_REQ_* bits,
//                                      [ROOT] root shadow page + 1, [CR3_GFN], [CPU] CPU_* control bits,
//                                      [TLB_GEN] TLB generation (owner-written)
//   kvm.vcpuStats  vcpus * 32 doubles  per-vCPU counters (owner-written, plain stores)
//   kvm.stats      KVM_STAT_*          VM-wide counters (Atomics.add, not race-relevant)
// Shadow pages and rmaps add their own regions (mmu-page.ts, rmap.ts).
//
// vCPU modes (KVM's vcpu->mode): OUTSIDE_GUEST_MODE 0, IN_GUEST_MODE 1,
// EXITING_GUEST_MODE 2, READING_SHADOW_PAGE_TABLES 3. Only the vCPU itself
// stores its mode; a flusher only cmpxchg's IN_GUEST_MODE to EXITING_GUEST_MODE.
// The word also counts the vCPU's own changes (generation << 2), so a flusher
// waiting for "this vCPU left the state I saw" cannot miss a quick exit and re-entry.

import { LOCK_WORDS, NOTE, type Mem } from '../shm/access';
import { Rcu, layoutRcu, type QsbrReaders } from '../shm/rcu';
import { KvmmuError } from '../shm/errors';
import { region, type Layout, type LayoutBuilder } from '../shm/layout';
import { Host } from '../host/host';
import { GuestWalker } from '../x86/walker';
import { CPU_CR0_WP, CPU_EFER_NX } from '../x86/pte';
import { GUARDS, MAX_SLOTS, type VmConfig } from './config';
import { MmuPages, reserveMmuPages } from './mmu-page';
import { Rmaps, reserveRmaps } from './rmap';
import { Mmu } from './mmu';
import { SpteUpdate } from './spte-update';
import { DirtyLog } from './dirty-log';
import { KvmNotifier } from './notifier';
import { TdpMmu, reserveTdp } from './tdp-mmu';
import { GfnToPfnCache, reserveGpc } from './pfncache';

export const OUTSIDE_GUEST_MODE = 0;
export const IN_GUEST_MODE = 1;
export const EXITING_GUEST_MODE = 2;
export const READING_SHADOW_PAGE_TABLES = 3;
/** Is a vCPU whose mode word holds `w` in a quiescent state for RCU (in guest mode, kicked or not)? */
export function vcpuModeIsQuiescent(w: number): boolean {
  const mode = w & 3;
  return mode === IN_GUEST_MODE || mode === EXITING_GUEST_MODE;
}

export const MODE_NAMES = ['OUTSIDE_GUEST_MODE', 'IN_GUEST_MODE', 'EXITING_GUEST_MODE', 'READING_SHADOW_PAGE_TABLES'];

/** vCPU request bits (KVM_REQ_*). */
export const KVM_REQ_TLB_FLUSH = 1 << 0;
/** TDP MMU: the vCPU's root was invalidated; drop it and load a valid one before entering the guest. */
export const KVM_REQ_MMU_FREE_OBSOLETE_ROOTS = 1 << 1;

export const SLOT_DIRTY_LOG = 1 << 0;
/** KVM_MEMSLOT_INVALID: the slot is being deleted (or moved); its SPTEs are not zapped yet. */
export const SLOT_INVALID = 1 << 1;
/** kvmmu's mark for a deleted slot (KVM drops it from the memslot array): its gfns have no memslot (MMIO). */
export const SLOT_DELETED = 1 << 2;

const MMU_WORDS = 16;
export const MMU_SEQ = 0;
export const MMU_IN_PROGRESS = 1;
export const MMU_RANGE_START = 2;
export const MMU_RANGE_END = 3;
export const MMU_LRU_HEAD = 4;
export const MMU_LRU_TAIL = 5;
export const MMU_SP_FREE = 6;
/** KVM's mn_active_invalidate_count: MMU-notifier invalidations between their start and end (gfn→pfn caches wait on it). */
export const MMU_MN_ACTIVE = 7;

const SLOT_WORDS = 4;

export const VCPU_WORDS = 16;
export const VCPU_MODE = 0;
export const VCPU_REQUESTS = 1;
export const VCPU_ROOT = 2;
export const VCPU_CR3_GFN = 3;
export const VCPU_CPU = 4;
export const VCPU_TLB_GEN = 5;

const VCPU_STAT_WORDS = 32;
/** Per-vCPU counters; pf_* as KVM's kvm_vcpu_stat. */
export const VCPU_STAT = {
  pfFast: 0,
  pfFixed: 1,
  pfSpurious: 2,
  pfRetry: 3,
  pfEmulate: 4,
  pfGuest: 5,
  pfFastRetry: 6,
  exits: 7,
  tlbFlushes: 8,
  tlbMisses: 9,
  accesses: 10,
  invlpg: 11,
  /** Faults the slow path fixed (KVM's pf_fixed counts fast ones too). */
  pfSlow: 12,
  /** Slow-path faults that found mmu_lock held or queued for (lock_stat's contentions, counted for faults). */
  pfLockContended: 13,
} as const;
export type VcpuStatName = keyof typeof VCPU_STAT;
/**
 * A counter's index, as callers pass it (`count(VCPU_STAT.pfFast)`): a name
 * looked up inside count() would make that lookup megamorphic, which costs
 * more than the fast path's own atomics.
 */
export type VcpuStat = (typeof VCPU_STAT)[VcpuStatName];

export const KVM_STAT = {
  remoteFlushes: 0,
  spAlloc: 1,
  spZapped: 2,
  spFreed: 3,
  spRecycled: 4,
  writeProtects: 5,
  invalidations: 6,
  emulatedPteWrites: 7,
  dirtyLogGets: 8,
  dirtyLogClears: 9,
  rmapRecycles: 10,
  hugeSplits: 11,
} as const;
export type KvmStatName = keyof typeof KVM_STAT;
export type KvmStat = (typeof KVM_STAT)[KvmStatName];
const KVM_STAT_COUNT = Object.keys(KVM_STAT).length;

let debugLocks = false;

/** Check on every mmu_lock-protected plain access that the lock is held (tests turn it on). */
export function setDebugLocks(on: boolean): void {
  debugLocks = on;
}

/** Total pages across memslots (= host virtual pages). */
export function totalPages(c: VmConfig): number {
  return c.slots.reduce((n, s) => n + s.npages, 0);
}

export function reserveKvm(b: LayoutBuilder, c: VmConfig): void {
  b.metaLines('kvm.mmuLock', LOCK_WORDS * 4);
  layoutRcu(b, 'kvm.srcu', 1, c.vcpus + 2);
  b.metaLines('kvm.mmu', MMU_WORDS * 4);
  b.meta('kvm.slots', MAX_SLOTS * SLOT_WORDS * 4);
  b.meta('kvm.bitmap', c.slots.reduce((n, s) => n + Math.ceil(s.npages / 32), 0) * 4);
  b.metaLines('kvm.vcpus', c.vcpus * VCPU_WORDS * 4);
  b.metaLines('kvm.vcpuStats', c.vcpus * VCPU_STAT_WORDS * 8);
  b.meta('kvm.stats', KVM_STAT_COUNT * 4);
  reserveMmuPages(b, c);
  reserveRmaps(b, c);
  reserveTdp(b, c);
  reserveGpc(b);
}

/**
 * The KVM side of one vCPU, owned by the thread that runs it. Holds the
 * private half of its state (mode generation, walker scratch, control
 * registers); the shared half is in kvm.vcpus.
 */
export class KvmVcpu {
  readonly modeWord: number;
  readonly reqWord: number;
  private modeGen = 0;
  /** Guest control bits (CPU_* in x86/pte.ts). */
  cpu = CPU_CR0_WP | CPU_EFER_NX;
  /** Guest-physical address of the guest's PML4 (shadow mode; two-dimensional paging with CPU_CR0_PG). */
  cr3 = 0;
  /** The guest's PKRU (vcpu->arch.pkru): the rights of each protection key, which KVM's walker applies with CR4.PKE. */
  pkru = 0;
  /** Root shadow page. */
  root = -1;
  readonly walker = new GuestWalker();
  private readonly statBase: number;

  constructor(
    readonly kvm: Kvm,
    readonly idx: number,
  ) {
    this.modeWord = kvm.vcpuWord(idx, VCPU_MODE);
    this.reqWord = kvm.vcpuWord(idx, VCPU_REQUESTS);
    this.statBase = kvm.vcpuStatBase + idx * VCPU_STAT_WORDS;
    this.modeGen = Atomics.load(kvm.mem.i32, this.modeWord) >>> 2;
  }

  /** Publish a new vCPU mode (one store; the generation makes every change visible). */
  setMode(mode: number): void {
    this.kvm.mem.store32(this.modeWord, this.nextModeWord(mode));
  }

  /**
   * Leave a mode with a release store, as KVM does on the way out of guest mode
   * (vcpu->mode = OUTSIDE_GUEST_MODE, then smp_wmb) and at the end of a lockless
   * walk (smp_store_release): everything this vCPU read before is ordered
   * before it, and a flusher waiting on the word sees it soon after. Entering a
   * mode a flusher must not miss uses setMode, a full barrier (smp_store_mb).
   */
  setModeRelease(mode: number): void {
    this.kvm.mem.storeRelease32(this.modeWord, this.nextModeWord(mode));
  }

  /** The mode word for a new mode: the next generation, then the mode in the low 2 bits. */
  private nextModeWord(mode: number): number {
    this.modeGen = (this.modeGen + 1) & 0x1fffffff;
    return (this.modeGen << 2) | mode;
  }

  /** Counters are owned by this vCPU's thread: plain stores, not scheduling points. */
  count(stat: VcpuStat): void {
    this.kvm.mem.f64[this.statBase + stat]! += 1;
  }

  stat(name: VcpuStatName): number {
    return this.kvm.mem.f64[this.statBase + VCPU_STAT[name]]!;
  }
}

/** A per-thread handle on one VM: everything the MMU code needs, with region offsets resolved once. */
export class Kvm {
  readonly host: Host;
  readonly mmuLock: number;
  readonly mmuBase: number;
  private readonly slotBase: number;
  readonly vcpuBase: number;
  readonly vcpuStatBase: number;
  private readonly statBase: number;
  readonly pages: MmuPages;
  readonly rmaps: Rmaps;
  readonly spte: SpteUpdate;
  readonly mmu: Mmu;
  readonly dirtyLog: DirtyLog;
  readonly notifier: KvmNotifier;
  /** The TDP MMU (mode tdp); constructed in every mode, used only in that one. */
  readonly tdp: TdpMmu;
  /** The VM's gfn→pfn cache (one, as for Xen's shared info page). */
  readonly gpc: GfnToPfnCache;
  /** config.mode is tdp: mmu_lock is a reader-writer lock (Mem.readLock/writeLock), not the spinlock. */
  readonly isTdp: boolean;

  // Memslot geometry, fixed at creation (so read without the access layer).
  readonly nSlots: number;
  readonly slotGfn: Int32Array;
  readonly slotPages: Int32Array;
  readonly slotHvpn: Int32Array;
  readonly slotBitmap: Int32Array;

  readonly guardPinIndirect: boolean;
  readonly guardFlushMmuWritable: boolean;
  readonly guardAtomicVolatileClear: boolean;
  readonly guardNotifierRetry: boolean;
  readonly guardLocklessWalkSync: boolean;
  readonly guardRcuDeferredFree: boolean;
  readonly guardWriteLockExclusion: boolean;
  readonly guardWrprotMmuWritable: boolean;
  readonly guardObsoleteRootRetry: boolean;
  readonly guardGpcRefreshRetry: boolean;
  readonly guardInvalidSlotRetry: boolean;
  readonly guardPrefaultEagain: boolean;
  readonly guardFlushBeforeYield: boolean;
  readonly guardFastSkipsHuge: boolean;
  readonly guardFreezeRemovedPt: boolean;
  /** config.pageMarking is `fault` (6.13 on): pages are marked when faults map them, not from SPTEs' A/D bits. */
  readonly marksAtFault: boolean;
  /** config.adBits: SPTEs carry A/D bits the processor sets; off, they are A/D-disabled and aging access-tracks them. */
  readonly adBits: boolean;

  /** The vCPU this thread runs, or -1 (host, migration and test threads); a remote flush does not wait for itself. */
  selfVcpu = -1;

  /**
   * The vCPUs as the TDP MMU's RCU sees them (QSBR, shm/rcu.ts): a vCPU in guest mode (or kicked out of it, not yet
   * out) is in a quiescent state, and each entry and exit changes its mode word, so a changed word means it passed
   * one. Its read sections outside guest mode cost it nothing, as rcu_read_lock() costs the kernel nothing.
   */
  readonly vcpuQsbr: QsbrReaders;

  /**
   * Whether this thread's faults try the lockless fast path first; starts as
   * config.fastPath. KVM compiles it in; a benchmark that runs both ways on
   * one VM switches it on each vCPU's thread between passes, when none of its
   * faults is in flight.
   */
  fastPath: boolean;

  constructor(
    readonly mem: Mem,
    readonly layout: Layout,
    readonly config: VmConfig,
  ) {
    const pages = totalPages(config);
    this.host = new Host(mem, layout, { nPages: pages, nFrames: config.hostFrames, nSwap: config.swapSlots, hugetlb: config.hugePages });
    this.mmuLock = region(layout, 'kvm.mmuLock').off / 4;
    this.mmuBase = region(layout, 'kvm.mmu').off / 4;
    this.slotBase = region(layout, 'kvm.slots').off / 4;
    this.vcpuBase = region(layout, 'kvm.vcpus').off / 4;
    this.vcpuQsbr = {
      words: Array.from({ length: config.vcpus }, (_, v) => this.vcpuWord(v, VCPU_MODE)),
      quiescent: vcpuModeIsQuiescent,
    };
    this.vcpuStatBase = region(layout, 'kvm.vcpuStats').off / 8;
    this.statBase = region(layout, 'kvm.stats').off / 4;
    const bitmapBase = region(layout, 'kvm.bitmap').off / 4;

    this.nSlots = config.slots.length;
    this.slotGfn = new Int32Array(this.nSlots);
    this.slotPages = new Int32Array(this.nSlots);
    this.slotHvpn = new Int32Array(this.nSlots);
    this.slotBitmap = new Int32Array(this.nSlots);
    let hvpn = 0;
    let bm = bitmapBase;
    config.slots.forEach((s, i) => {
      this.slotGfn[i] = s.baseGfn;
      this.slotPages[i] = s.npages;
      this.slotHvpn[i] = hvpn;
      this.slotBitmap[i] = bm;
      hvpn += s.npages;
      bm += Math.ceil(s.npages / 32);
    });

    const g = config.guards;
    this.guardPinIndirect = (g & GUARDS['pin-indirect']) !== 0;
    this.guardFlushMmuWritable = (g & GUARDS['flush-mmu-writable']) !== 0;
    this.guardAtomicVolatileClear = (g & GUARDS['atomic-volatile-clear']) !== 0;
    this.guardNotifierRetry = (g & GUARDS['notifier-retry']) !== 0;
    this.guardLocklessWalkSync = (g & GUARDS['lockless-walk-sync']) !== 0;
    this.guardRcuDeferredFree = (g & GUARDS['rcu-deferred-free']) !== 0;
    this.guardWriteLockExclusion = (g & GUARDS['write-lock-exclusion']) !== 0;
    this.guardWrprotMmuWritable = (g & GUARDS['wrprot-mmu-writable']) !== 0;
    this.guardObsoleteRootRetry = (g & GUARDS['obsolete-root-retry']) !== 0;
    this.guardGpcRefreshRetry = (g & GUARDS['gpc-refresh-retry']) !== 0;
    this.guardInvalidSlotRetry = (g & GUARDS['invalid-slot-retry']) !== 0;
    this.guardPrefaultEagain = (g & GUARDS['prefault-eagain']) !== 0;
    this.guardFlushBeforeYield = (g & GUARDS['flush-before-yield']) !== 0;
    this.guardFastSkipsHuge = (g & GUARDS['fast-skips-huge']) !== 0;
    this.guardFreezeRemovedPt = (g & GUARDS['freeze-removed-pt']) !== 0;
    this.marksAtFault = config.pageMarking === 'fault';
    this.adBits = config.adBits;
    this.fastPath = config.fastPath;

    this.pages = new MmuPages(this);
    this.rmaps = new Rmaps(this);
    this.spte = new SpteUpdate(this);
    this.mmu = new Mmu(this);
    this.dirtyLog = new DirtyLog(this);
    this.notifier = new KvmNotifier(this);
    this.host.notifier = this.notifier;
    this.isTdp = config.mode === 'tdp';
    this.tdp = new TdpMmu(this);
    this.gpc = new GfnToPfnCache(this);
  }

  /** Forget what this handle keeps for its thread between calls (the checker starts each execution afresh). */
  resetThreadState(): void {
    this.tdp.resetThreadState();
    this.srcuHandle = null;
  }

  private srcuHandle: Rcu | null = null;

  /** This thread's handle on kvm->srcu, the memslots' SRCU. */
  get srcu(): Rcu {
    if (this.srcuHandle === null) this.srcuHandle = new Rcu(this.mem, region(this.layout, 'kvm.srcu').off / 4, 1, this.config.vcpus + 2);
    return this.srcuHandle;
  }

  /** One-time setup of a fresh machine (single-threaded, before any worker starts). */
  init(): void {
    this.host.init();
    this.pages.init();
    this.rmaps.init();
  }

  // ---- memslots ----

  /** Memslot holding `gfn`, or -1. */
  slotOf(gfn: number): number {
    for (let s = 0; s < this.nSlots; s++) {
      const rel = gfn - this.slotGfn[s]!;
      if (rel >= 0 && rel < this.slotPages[s]!) return s;
    }
    return -1;
  }

  /** Host virtual page backing `gfn` (also the index of its rmap head); throws for a gfn outside every memslot. */
  gfnToHvpn(gfn: number): number {
    const s = this.slotOf(gfn);
    if (s < 0) throw new GuestMemoryError(gfn);
    return this.slotHvpn[s]! + gfn - this.slotGfn[s]!;
  }

  hvpnToGfn(hvpn: number): number {
    for (let s = 0; s < this.nSlots; s++) {
      const rel = hvpn - this.slotHvpn[s]!;
      if (rel >= 0 && rel < this.slotPages[s]!) return this.slotGfn[s]! + rel;
    }
    throw new Error(`kvm: hvpn ${hvpn} is outside every memslot`);
  }

  slotFlagsWord(slot: number): number {
    return this.slotBase + slot * SLOT_WORDS;
  }

  /** The flags of the memslot holding `gfn` (SLOT_*), or -1 if none does. Contract: inside kvm->srcu (or the only thread). */
  memslotFlags(gfn: number): number {
    const s = this.slotOf(gfn);
    return s < 0 ? -1 : this.mem.load32(this.slotFlagsWord(s));
  }

  /**
   * KVM's kvm_zap_gfn_range (an MTRR or CR0.CD change, a memory attribute
   * update): drop every SPTE mapping a gfn in [start, end), in every root,
   * under the write lock — yielding it between roots, as the TDP MMU's walk may
   * whenever it has made progress — and flush before returning. TDP mode only.
   */
  kvmZapGfnRange(start: number, end: number): void {
    if (!this.isTdp) throw new KvmmuError('kvmmu models kvm_zap_gfn_range in tdp mode only');
    this.mem.writeLock(this.mmuLock);
    if (this.tdp.zapLeafsYielding(start, end)) this.kvmFlushRemoteTlbs();
    this.mem.writeUnlock(this.mmuLock);
    this.tdp.reclaim();
  }

  /**
   * KVM_SET_USER_MEMORY_REGION deleting `slot` (kvm_set_memslot, TDP mode):
   * mark it invalid and wait for every SRCU reader that may have seen it
   * valid (kvm_invalidate_memslot); zap its SPTEs under the write lock and
   * flush (kvm_arch_flush_shadow_memslot, as KVM zaps a slot's leaves today);
   * then drop it and wait for SRCU again. Afterwards no vCPU maps its memory.
   */
  deleteMemslot(slot: number): void {
    if (!this.isTdp) throw new KvmmuError('kvmmu models memslot deletion in tdp mode only');
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.nSlots) throw new KvmmuError(`no memslot ${slot}: the VM has ${this.nSlots}`);
    const w = this.slotFlagsWord(slot);
    const m = this.mem;
    if ((m.load32(w) & (SLOT_INVALID | SLOT_DELETED)) !== 0) throw new KvmmuError(`memslot ${slot} is already being deleted`);
    m.store32(w, m.load32(w) | SLOT_INVALID);
    this.srcu.synchronize();
    m.writeLock(this.mmuLock);
    if (this.tdp.zapLeafs(this.slotGfn[slot]!, this.slotGfn[slot]! + this.slotPages[slot]!)) this.kvmFlushRemoteTlbs();
    m.writeUnlock(this.mmuLock);
    m.store32(w, (m.load32(w) & ~SLOT_INVALID) | SLOT_DELETED);
    this.srcu.synchronize();
    this.tdp.reclaim();
  }

  /**
   * KVM's mark_page_dirty: set `gfn`'s bit in its memslot's dirty bitmap if the
   * slot logs dirty pages. Lockless (an atomic or), so the fast path may call it.
   */
  markPageDirty(gfn: number): void {
    const s = this.slotOf(gfn);
    if (s < 0) return;
    if ((this.mem.load32(this.slotFlagsWord(s)) & SLOT_DIRTY_LOG) === 0) return;
    const rel = gfn - this.slotGfn[s]!;
    this.mem.or32(this.slotBitmap[s]! + (rel >>> 5), 1 << (rel & 31));
  }

  // ---- vCPUs and remote TLB flush ----

  vcpuWord(v: number, field: number): number {
    return this.vcpuBase + v * VCPU_WORDS + field;
  }

  /**
   * KVM's kvm_flush_remote_tlbs: set KVM_REQ_TLB_FLUSH on every vCPU, then
   * make each vCPU that may be using its TLB acknowledge, as KVM's IPI does:
   *   - IN_GUEST_MODE: cmpxchg it to EXITING_GUEST_MODE (the kick); the vCPU
   *     sees that at its next instruction boundary, exits, and handles the
   *     request before it re-enters. Wait until it has left EXITING.
   *   - READING_SHADOW_PAGE_TABLES: a lockless walk with interrupts off; wait
   *     until the walk ends.
   *   - OUTSIDE_GUEST_MODE: nothing to wait for; it checks requests on entry.
   * So when this returns no vCPU uses a TLB entry from before the call, and no
   * lockless walk that began before it is still running — which is what lets a
   * zapped shadow page be freed afterwards. Waiting for an acknowledgement
   * rather than for "some mode change" matters: a vCPU may already have exited,
   * flushed and re-entered before we read its mode, and then nothing else
   * would make it exit again.
   *
   * Contract: callers may hold mmu_lock; vCPUs never wait for mmu_lock while
   * in guest mode or in a lockless walk, so this cannot deadlock.
   * `alsoRequest` adds request bits made the same way (KVM's
   * kvm_make_all_cpus_request with KVM_REQUEST_WAIT), such as
   * KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, whose new root also means a flush.
   */
  kvmFlushRemoteTlbs(alsoRequest = 0): void {
    const n = this.config.vcpus;
    const req = KVM_REQ_TLB_FLUSH | alsoRequest;
    for (let v = 0; v < n; v++) this.mem.fetchOr32(this.vcpuWord(v, VCPU_REQUESTS), req);
    for (let v = 0; v < n; v++) {
      if (v === this.selfVcpu) continue;
      const word = this.vcpuWord(v, VCPU_MODE);
      let w = this.mem.load32(word);
      for (;;) {
        const mode = w & 3;
        if (mode === OUTSIDE_GUEST_MODE) break;
        if (mode === IN_GUEST_MODE) {
          const kicked = (w & ~3) | EXITING_GUEST_MODE;
          const old = this.mem.cmpxchg32(word, w, kicked);
          if (old !== w) {
            w = old;
            continue;
          }
          w = kicked;
        }
        this.mem.waitWhile32(word, w);
        break;
      }
    }
    this.count(KVM_STAT.remoteFlushes);
    this.mem.note(NOTE.flushDone, 0, 0);
  }

  // ---- words only mmu_lock holders touch ----

  /**
   * Plain read of a word that only mmu_lock holders read or write (hash links,
   * rmaps, free lists...). The lock orders these accesses, so they need not be
   * atomic or scheduling points; with debugLocks on, each checks the lock is held.
   */
  lockedLoad(i: number): number {
    if (debugLocks) this.assertMmuLockHeld();
    return this.mem.i32[i]!;
  }

  lockedStore(i: number, v: number): void {
    if (debugLocks) this.assertMmuLockHeld();
    this.mem.storePlain32(i, v);
  }

  /**
   * Take mmu_lock for exclusive use: the spinlock, or in TDP mode the rwlock
   * for write — for read with guard `write-lock-exclusion` off, the unfixed
   * code that lets faults run beside the path.
   */
  mmuLockWrite(): boolean {
    if (!this.isTdp) return this.mem.lock(this.mmuLock);
    if (this.guardWriteLockExclusion) this.mem.writeLock(this.mmuLock);
    else this.mem.readLock(this.mmuLock);
    return false;
  }

  mmuUnlockWrite(): void {
    if (!this.isTdp) this.mem.unlock(this.mmuLock);
    else if (this.guardWriteLockExclusion) this.mem.writeUnlock(this.mmuLock);
    else this.mem.readUnlock(this.mmuLock);
  }

  /** Take mmu_lock to read what its holders write: the read lock in TDP mode, the spinlock otherwise. */
  mmuLockRead(): void {
    if (this.isTdp) this.mem.readLock(this.mmuLock);
    else this.mem.lock(this.mmuLock);
  }

  mmuUnlockRead(): void {
    if (this.isTdp) this.mem.readUnlock(this.mmuLock);
    else this.mem.unlock(this.mmuLock);
  }

  assertMmuLockHeld(): void {
    if (this.isTdp) {
      if (this.mem.rwWriter(this.mmuLock).holder !== this.mem.tid && this.mem.rwReaders(this.mmuLock) === 0)
        throw new Error(`mmu_lock is not held (thread ${this.mem.tid})`);
      return;
    }
    if (this.mem.lockHolder(this.mmuLock) !== this.mem.tid)
      throw new Error(`mmu_lock is not held by thread ${this.mem.tid} (holder: ${this.mem.lockHolder(this.mmuLock)})`);
  }

  // ---- statistics ----

  count(stat: KvmStat): void {
    Atomics.add(this.mem.i32, this.statBase + stat, 1);
  }

  stat(name: KvmStatName): number {
    return Atomics.load(this.mem.i32, this.statBase + KVM_STAT[name]);
  }

  vcpuStat(v: number, name: VcpuStatName): number {
    return this.mem.f64[this.vcpuStatBase + v * VCPU_STAT_WORDS + VCPU_STAT[name]]!;
  }
}

/** A guest access to a gfn no memslot covers (kvmmu models no MMIO). */
export class GuestMemoryError extends KvmmuError {
  constructor(readonly gfn: number) {
    super(`guest accessed gfn 0x${gfn.toString(16)}, which no memslot covers (kvmmu models no MMIO)`);
  }
}
