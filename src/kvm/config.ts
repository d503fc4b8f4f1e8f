// A VM's configuration: MMU mode, sizes, the five guards, the indirect fast-path and page-marking settings; validation with errors a user can act on.

import { KvmmuError } from '../shm/errors';

/**
 * The guards: each protection from the locking document (and its neighbours),
 * on by default; switching one off gives the unfixed code path. Names are part
 * of the interface (DESIGN.md).
 */
export const GUARDS = {
  /** Fast path on an indirect shadow page pins gfn->pfn before its cmpxchg (seed 1: the ABA on pfn reuse). */
  'pin-indirect': 1 << 0,
  /** Write-protection flushes TLBs for a read-only but MMU-writable SPTE (seed 2). */
  'flush-mmu-writable': 1 << 1,
  /** An SPTE the fast path can change is cleared or updated atomically (seed 3: the lost Dirty bit). */
  'atomic-volatile-clear': 1 << 2,
  /** A page fault retries when an MMU-notifier invalidation ran since it looked up the pfn. */
  'notifier-retry': 1 << 3,
  /** A lockless walker announces itself so shadow pages are not freed under it (in TDP mode: the fast path's RCU read section). */
  'lockless-walk-sync': 1 << 4,
  /** TDP MMU: a removed page table is freed after an RCU grace period (call_rcu), not at once. */
  'rcu-deferred-free': 1 << 5,
  /** TDP MMU: the paths KVM runs with mmu_lock held for write (notifier zap, dirty-log write-protection) exclude faults. */
  'write-lock-exclusion': 1 << 6,
  /** TDP MMU: write-protecting a gfn for write-tracking clears MMU-writable too, and flushes, even in an SPTE already read-only (7c8a4742c4ab, 2022). */
  'wrprot-mmu-writable': 1 << 7,
  /** TDP MMU: a fault retries when its root was invalidated (a memslot change) since the vCPU loaded it (a955cad84cda, 2021). */
  'obsolete-root-retry': 1 << 8,
  /** A gfn→pfn cache refresh retries while an MMU-notifier invalidation is active or ran meanwhile (58cd407ca4c6, 2022). */
  'gpc-refresh-retry': 1 << 9,
  /** TDP MMU: a fault on a memslot being deleted or moved (marked invalid) retries instead of mapping the gfn as MMIO (e0c378684b65, 2021). */
  'invalid-slot-retry': 1 << 10,
  /** KVM_PRE_FAULT_MEMORY returns -EAGAIN for a memslot being deleted or moved instead of retrying inside its SRCU read section (3ccbf6f47098, 2025). */
  'prefault-eagain': 1 << 11,
  /** TDP MMU: a range zap that yields mmu_lock first flushes what it zapped in every root so far, not only in the current one (a835429cda91, 2021). */
  'flush-before-yield': 1 << 12,
  /** The fast path never makes a huge SPTE writable in a dirty-logged slot: the slow path maps a 4 KiB page instead (c126d94f2c90, 2013). */
  'fast-skips-huge': 1 << 13,
  /** TDP MMU: a table torn down under the read lock has each entry frozen (xchg to FROZEN_SPTE), so a fault that walked into it cannot set one afterwards. */
  'freeze-removed-pt': 1 << 14,
} as const;

export type GuardName = keyof typeof GUARDS;
export const GUARD_NAMES = Object.keys(GUARDS) as GuardName[];
export const ALL_GUARDS = GUARD_NAMES.reduce((m, n) => m | GUARDS[n], 0);

export const GUARD_HELP: Readonly<Record<GuardName, string>> = {
  'pin-indirect': 'fast path on an indirect shadow page marks the wrong gfn dirty after pfn reuse (ABA)',
  'flush-mmu-writable': 'write-protection skips the TLB flush for a read-only but MMU-writable SPTE',
  'atomic-volatile-clear': 'a non-atomic clear of an SPTE the fast path can change loses the Dirty bit',
  'notifier-retry': 'a page fault installs a pfn that an MMU-notifier invalidation has just removed',
  'lockless-walk-sync': 'a shadow page is freed and reused while a lockless walker still reads it',
  'rcu-deferred-free': 'TDP: a removed page table is freed while a fault or the fast path still walks it',
  'write-lock-exclusion': 'TDP: an MMU-notifier zap runs beside a fault under the read lock, which maps the pfn being removed',
  'wrprot-mmu-writable': 'TDP: write-tracking a gfn skips its read-only SPTE, which stays MMU-writable: the fast path makes it writable again',
  'obsolete-root-retry': 'TDP: a fault links a table into an invalidated root its zap has already passed: the table leaks',
  'gpc-refresh-retry': 'a gfn→pfn cache refresh publishes a pfn an MMU-notifier invalidation has already passed by: KVM writes a freed page',
  'invalid-slot-retry': 'TDP: a fault on a memslot being deleted maps the gfn as MMIO, replacing a present SPTE without a TLB flush',
  'prefault-eagain': 'TDP: pre-faulting memory retries for ever inside SRCU while the memslot update it waits for waits for SRCU: a deadlock',
  'flush-before-yield': "TDP: a range zap yields mmu_lock in one root with another root's zaps unflushed: a vCPU writes a page the host then frees",
  'fast-skips-huge': 'the fast path makes a read-only huge SPTE writable while the slot logs dirty pages and marks one 4 KiB page dirty: writes to the other 511 are never logged',
  'freeze-removed-pt': 'TDP: a table torn down under the read lock is cleared entry by entry without freezing them: a fault that walked into it sets an entry after the teardown passed it, and the mapping vanishes with the table',
};

/** direct and shadow: the shadow MMU of 2012; tdp: KVM's TDP MMU (tdp-mmu.ts), the default on today's hosts. */
export type MmuMode = 'direct' | 'shadow' | 'tdp';
export const MMU_MODES: readonly MmuMode[] = ['direct', 'shadow', 'tdp'];

/** Fast path on indirect shadow pages: the seed's pinning design, KVM today (never), or no protection. */
export type IndirectFastPath = 'pin' | 'off' | 'unsafe';
export const INDIRECT_FAST_PATH: readonly IndirectFastPath[] = ['pin', 'off', 'unsafe'];

/**
 * When KVM marks the host's page dirty and accessed. `spte` (2012 through
 * 6.12, the default): from an SPTE's A/D bits when KVM clears or changes the
 * SPTE, so a lost D bit is a lost write (the seed's race 3). `fault` (6.13 on):
 * when a fault or a prefetch maps the page from a writable host mapping, under
 * mmu_lock; SPTEs' A/D bits are no longer passed to the page.
 */
export type PageMarking = 'spte' | 'fault';
export const PAGE_MARKING: readonly PageMarking[] = ['spte', 'fault'];

export interface MemslotConfig {
  readonly baseGfn: number;
  readonly npages: number;
}

/** A fully resolved configuration (every field set); what workers receive. */
export interface VmConfig {
  readonly mode: MmuMode;
  readonly vcpus: number;
  /** Memslots; their pages are numbered consecutively as host virtual pages. */
  readonly slots: readonly MemslotConfig[];
  readonly hostFrames: number;
  readonly swapSlots: number;
  /** Shadow pages in the pool (KVM's n_max_mmu_pages). */
  readonly spPages: number;
  /** TLB entries per vCPU (a power of two). */
  readonly tlbEntries: number;
  /** Bitmask of GUARDS that are on. */
  readonly guards: number;
  /** The lockless fast page fault (KVM's fast_page_fault); off sends every fault to the slow path. */
  readonly fastPath: boolean;
  readonly indirectFastPath: IndirectFastPath;
  readonly pageMarking: PageMarking;
  /**
   * The processor maintains A/D bits in SPTEs (EPT with A/D). Off (TDP mode):
   * SPTEs are A/D-disabled, host aging makes them access-tracked, and the
   * fast path restores them (KVM without EPT A/D bits).
   */
  readonly adBits: boolean;
  /**
   * Guest memory is backed by 2 MiB HugeTLB pages (preallocated, never
   * swapped or merged), and faults map a 2 MiB SPTE where the memslot and
   * the host allow it (direct and TDP modes).
   */
  readonly hugePages: boolean;
  /** KVM's eager_page_split module parameter: enabling dirty logging splits huge SPTEs first. */
  readonly eagerSplit: boolean;
}

/** What a user may set; everything else gets a default sized from it. */
export interface VmOptions {
  mode?: MmuMode;
  vcpus?: number;
  /** Guest memory in bytes (one memslot at gfn 0), unless `slots` is given. */
  memBytes?: number;
  slots?: MemslotConfig[];
  hostFrames?: number;
  swapSlots?: number;
  spPages?: number;
  tlbEntries?: number;
  guards?: number;
  fastPath?: boolean;
  indirectFastPath?: IndirectFastPath;
  pageMarking?: PageMarking;
  adBits?: boolean;
  hugePages?: boolean;
  eagerSplit?: boolean;
}

export const MAX_VCPUS = 64;
export const MAX_SLOTS = 8;
/** Frames above the guest's pages, for copy-on-write breaks and frames pinned while being freed. */
export const SPARE_FRAMES = 64;

export function resolveConfig(o: VmOptions = {}): VmConfig {
  const mode = o.mode ?? 'direct';
  if (!MMU_MODES.includes(mode)) throw new KvmmuError(`unknown mode '${String(mode)}': use direct, shadow or tdp`);
  const vcpus = o.vcpus ?? 1;
  if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > MAX_VCPUS)
    throw new KvmmuError(`--vcpus must be an integer from 1 to ${MAX_VCPUS}, not ${vcpus}`);
  let slots: MemslotConfig[];
  if (o.slots !== undefined) {
    slots = o.slots;
  } else {
    const memBytes = o.memBytes ?? 16 * 1024 * 1024;
    if (!Number.isSafeInteger(memBytes) || memBytes < 4096 * 16)
      throw new KvmmuError(`guest memory must be at least 64 KiB, not ${memBytes} bytes`);
    if (memBytes % 4096 !== 0) throw new KvmmuError(`guest memory must be a multiple of 4 KiB, not ${memBytes} bytes`);
    slots = [{ baseGfn: 0, npages: memBytes / 4096 }];
  }
  validateSlots(slots);
  const pages = slots.reduce((n, s) => n + s.npages, 0);
  const hostFrames = o.hostFrames ?? pages + SPARE_FRAMES;
  const swapSlots = o.swapSlots ?? 0;
  // Direct mode needs one leaf shadow page per 512 pages plus the levels above; shadow mode
  // shadows the guest's tables, which map each page once or twice: leave room for both, and a floor.
  const spPages = o.spPages ?? Math.max(64, Math.ceil(pages / 512) * (mode === 'direct' ? 1 : 3) + 32);
  const tlbEntries = o.tlbEntries ?? 64;
  if (!Number.isInteger(hostFrames) || hostFrames < 16) throw new KvmmuError(`host frames must be at least 16, not ${hostFrames}`);
  if (!Number.isInteger(swapSlots) || swapSlots < 0) throw new KvmmuError(`swap slots must be 0 or more, not ${swapSlots}`);
  if (!Number.isInteger(spPages) || spPages < 8) throw new KvmmuError(`the shadow-page pool needs at least 8 pages, not ${spPages}`);
  if (!Number.isInteger(tlbEntries) || tlbEntries < 1 || (tlbEntries & (tlbEntries - 1)) !== 0)
    throw new KvmmuError(`TLB entries must be a power of two, not ${tlbEntries}`);
  const indirectFastPath = o.indirectFastPath ?? 'pin';
  if (!INDIRECT_FAST_PATH.includes(indirectFastPath))
    throw new KvmmuError(`unknown indirect fast-path setting '${String(indirectFastPath)}': use pin, off or unsafe`);
  if (o.fastPath !== undefined && typeof o.fastPath !== 'boolean') throw new KvmmuError(`fastPath is true or false, not ${String(o.fastPath)}`);
  const pageMarking = o.pageMarking ?? 'spte';
  if (!PAGE_MARKING.includes(pageMarking))
    throw new KvmmuError(`unknown page-marking setting '${String(pageMarking)}': use spte or fault`);
  if (o.adBits !== undefined && typeof o.adBits !== 'boolean') throw new KvmmuError(`adBits is true or false, not ${String(o.adBits)}`);
  const adBits = o.adBits ?? true;
  if (!adBits && mode !== 'tdp') throw new KvmmuError(`A/D bits off (access tracking) is modelled in tdp mode only, not ${mode}`);
  for (const [name, v] of [['hugePages', o.hugePages], ['eagerSplit', o.eagerSplit]] as const)
    if (v !== undefined && typeof v !== 'boolean') throw new KvmmuError(`${name} is true or false, not ${String(v)}`);
  const hugePages = o.hugePages ?? false;
  if (hugePages && mode === 'shadow')
    throw new KvmmuError('huge pages are modelled in direct and tdp mode: shadow mode shadows 4 KiB guest mappings only');
  return {
    mode,
    vcpus,
    slots,
    hostFrames,
    swapSlots,
    spPages,
    tlbEntries,
    guards: o.guards ?? ALL_GUARDS,
    fastPath: o.fastPath ?? true,
    indirectFastPath,
    pageMarking,
    adBits,
    hugePages,
    eagerSplit: o.eagerSplit ?? true,
  };
}

function validateSlots(slots: readonly MemslotConfig[]): void {
  if (slots.length < 1 || slots.length > MAX_SLOTS) throw new KvmmuError(`a VM has 1 to ${MAX_SLOTS} memslots, not ${slots.length}`);
  const sorted = [...slots].sort((a, b) => a.baseGfn - b.baseGfn);
  for (let i = 0; i < sorted.length; i++) {
    const s = sorted[i]!;
    if (!Number.isInteger(s.baseGfn) || s.baseGfn < 0 || !Number.isInteger(s.npages) || s.npages < 1)
      throw new KvmmuError(`memslot ${i} has bad geometry (base gfn ${s.baseGfn}, ${s.npages} pages)`);
    if (s.baseGfn + s.npages > 2 ** 31) throw new KvmmuError(`memslot ${i} ends beyond gfn 2^31`);
    if (i > 0 && sorted[i - 1]!.baseGfn + sorted[i - 1]!.npages > s.baseGfn)
      throw new KvmmuError(`memslots overlap at gfn ${s.baseGfn}`);
  }
}

/** Parse `NAME=off` / `NAME=on` settings onto a guard mask (all on to start with). */
export function parseGuards(settings: readonly string[], start = ALL_GUARDS): number {
  let mask = start;
  for (const s of settings) {
    const m = /^([a-z-]+)=(on|off)$/.exec(s);
    if (m === null) throw new KvmmuError(`bad guard setting '${s}': write NAME=off or NAME=on`);
    const name = m[1] as GuardName;
    if (!(name in GUARDS)) throw new KvmmuError(`unknown guard '${m[1]}': the guards are ${GUARD_NAMES.join(', ')}`);
    mask = m[2] === 'off' ? mask & ~GUARDS[name] : mask | GUARDS[name];
  }
  return mask;
}

/** Names of the guards that are off in `mask`. */
export function guardsOff(mask: number): GuardName[] {
  return GUARD_NAMES.filter((n) => (mask & GUARDS[n]) === 0);
}

/** Parse a size such as 64M, 1G, 4096, 2MiB into bytes. */
export function parseSize(s: string): number {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(s.trim());
  if (m === null) throw new KvmmuError(`bad size '${s}': write a number with an optional K, M, G or T suffix`);
  const mult: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };
  const v = Number(m[1]) * mult[m[2]!.toLowerCase()]!;
  if (!Number.isSafeInteger(v)) throw new KvmmuError(`size '${s}' is too large`);
  return v;
}
