// kvmmu's own access.c: guest PTE/PDE/PDPTE/PML4E flags, leaf sizes, access kinds (implicit ones too), control bits and protection keys run through the whole stack (guest tables in guest memory, the vCPU's TLB, SPTEs, the fault paths, the injected #PF) under shadow or two-dimensional paging, each outcome compared with the SDM reference (x86/sdm.ts).

import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { KvmmuError } from '../shm/errors';
import { createMachine, openKvm } from '../vcpu/machine';
import { GuestPageTables } from '../vcpu/guest-pt';
import { GuestPageFault, Vcpu, VcpuLivelock } from '../vcpu/vcpu';
import {
  CPU_CR0_PG,
  CPU_CR0_WP,
  CPU_CR4_PKE,
  CPU_CR4_SMAP,
  CPU_CR4_SMEP,
  CPU_EFER_NX,
  CPU_RFLAGS_AC,
  PT_ACCESSED_MASK,
  PT_DIRTY_MASK,
  PT_PAGE_SIZE_MASK,
  PT_PRESENT_MASK,
  PT_USER_MASK,
  PT_WRITABLE_MASK,
  PT64_PKEY_MASK,
  PT64_PKEY_SHIFT,
} from '../x86/pte';
import { sdmAccess, type SdmCpu, type SdmEntry, type SdmKind } from '../x86/sdm';

const PT_XD = 1n << 63n;
const FLAG_BITS = PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK | PT_ACCESSED_MASK | PT_DIRTY_MASK | PT_PAGE_SIZE_MASK | PT_XD | PT64_PKEY_MASK;

/** The MMU modes kvmmu access runs: shadow paging (KVM walks the guest's tables), or two-dimensional paging (the processor does). */
export type AccessMode = 'shadow' | 'direct' | 'tdp';
export const ACCESS_MODES: readonly AccessMode[] = ['shadow', 'direct', 'tdp'];

/** Protection keys for one combination (access.c's AC_CPU_CR4_PKE, AC_PKU_PKEY, AC_PKU_AD, AC_PKU_WD). */
export interface AccessPku {
  readonly pke: boolean;
  /** The leaf's key is 1 (else 0); non-leaf entries then carry key 2, which PKRU denies everything (keys there are ignored). */
  readonly key1: boolean;
  /** PKRU's access-disable and write-disable bits for key 1. */
  readonly ad: boolean;
  readonly wd: boolean;
}

const NO_PKU: AccessPku = { pke: false, key1: false, ad: false, wd: false };

/** One combination: each level's P/W/U/XD (PML4E first), the leaf's level, the control bits, the access. */
export interface AccessCase {
  readonly pml4e: SdmEntry;
  readonly pdpte: SdmEntry;
  readonly pde: SdmEntry;
  /** The PDE maps a 2 MiB page (PS): the walk ends there, and `pte` is not used. */
  readonly large: boolean;
  /** The PDPTE maps a 1 GiB page (PS): the walk ends there, and `pde`, `pte` are not used. */
  readonly huge: boolean;
  readonly pte: SdmEntry;
  /** The leaf's (PTE's, or the large PDE's / PDPTE's) A and D bits before the access (the walk sets what the access needs). */
  readonly pteA: boolean;
  readonly pteD: boolean;
  /** The entries above the leaf have A and D set beforehand (else clear: the walk must set A). */
  readonly upperAD: boolean;
  readonly cpu: SdmCpu;
  readonly pku: AccessPku;
  readonly kind: SdmKind;
  /** A user access, or (with `implicit`) an implicit supervisor access; else an explicit supervisor access. */
  readonly user: boolean;
  readonly implicit: boolean;
  /** An access made first, in the same state (index into ACCESSES; -1: none): the combination's access comes after it. */
  readonly before: number;
}

export interface AccessMismatch {
  readonly case: AccessCase;
  /** What the SDM says: the #PF's error code, or null for success. */
  readonly expected: number | null;
  /** What kvmmu gave: the first of the accesses that differs from the SDM (or the last); 'livelock' when the vCPU never completed it. */
  readonly got: number | null | 'livelock';
  /** On a success: whether every entry got A and the leaf D (for a write), and the dirty log the page (with --dirty-log); else null. */
  readonly adWrong: string | null;
}

/** How a combination's entries are put in place: by the host (shadow pages zapped), or by the guest (emulated writes, invlpg). */
export type AccessEdit = 'host' | 'guest';

export interface AccessReport {
  readonly mode: AccessMode;
  readonly edit: AccessEdit;
  readonly pku: boolean;
  readonly dirtyLog: boolean;
  readonly combinations: number;
  /** Accesses made in all (each combination's twice, plus the one before it when there is one). */
  readonly accesses: number;
  /** How they are counted: the dimensions and their sizes. */
  readonly dimensions: Record<string, number>;
  readonly mismatches: AccessMismatch[];
  readonly mismatchCount: number;
  /**
   * Shadow paging only: implicit supervisor accesses with RFLAGS.AC=1 that SMAP
   * denies and that got, as under KVM, the answer of an explicit access (the
   * access went through, or the vCPU livelocked): KVM's walker cannot tell a
   * hardware fault's access implicit. Counted apart from the mismatches.
   */
  readonly implicitAsExplicit: number;
  readonly seconds: number;
}

const ENTRY_STATES: readonly SdmEntry[] = (() => {
  const out: SdmEntry[] = [{ p: false, w: false, u: false, xd: false }];
  for (let b = 0; b < 8; b++) out.push({ p: true, w: (b & 1) !== 0, u: (b & 2) !== 0, xd: (b & 4) !== 0 });
  return out;
})();
const FULL: SdmEntry = { p: true, w: true, u: true, xd: false };

/** The accesses, as access.c's AC_ACCESS_* with implicit supervisor accesses added (they are data accesses: no implicit fetch). */
export const ACCESSES: readonly { kind: SdmKind; user: boolean; implicit: boolean }[] = [
  { kind: 'read', user: false, implicit: false },
  { kind: 'write', user: false, implicit: false },
  { kind: 'fetch', user: false, implicit: false },
  { kind: 'read', user: true, implicit: false },
  { kind: 'write', user: true, implicit: false },
  { kind: 'fetch', user: true, implicit: false },
  { kind: 'read', user: false, implicit: true },
  { kind: 'write', user: false, implicit: true },
];

const PKU_STATES = (pku: boolean): readonly AccessPku[] => {
  if (!pku) return [NO_PKU];
  const out: AccessPku[] = [NO_PKU];
  for (let b = 0; b < 8; b++) out.push({ pke: true, key1: (b & 1) !== 0, ad: (b & 2) !== 0, wd: (b & 4) !== 0 });
  return out;
};

/** PKRU for a combination, as access.c writes it: key 2 denies everything, key 1 has the combination's AD and WD. */
function pkruOf(p: AccessPku): number {
  return 0x30 | (p.wd ? 8 : 0) | (p.ad ? 4 : 0);
}

function cpuBits(c: SdmCpu, p: AccessPku, paged: boolean): number {
  return (
    (c.wp ? CPU_CR0_WP : 0) |
    (c.nxe ? CPU_EFER_NX : 0) |
    (c.smep ? CPU_CR4_SMEP : 0) |
    (c.smap ? CPU_CR4_SMAP : 0) |
    (c.ac ? CPU_RFLAGS_AC : 0) |
    (p.pke ? CPU_CR4_PKE : 0) |
    (paged ? CPU_CR0_PG : 0)
  );
}

function entryFlags(e: SdmEntry): bigint {
  return (e.p ? PT_PRESENT_MASK : 0n) | (e.w ? PT_WRITABLE_MASK : 0n) | (e.u ? PT_USER_MASK : 0n) | (e.xd ? PT_XD : 0n);
}

/** One access by the vCPU (in guest mode, and still in it after a #PF): the #PF's error code, null, or 'livelock'. */
function accessOnce(v: Vcpu, gva: number, a: { kind: SdmKind; user: boolean; implicit: boolean }): number | null | 'livelock' {
  v.user = a.user;
  try {
    if (a.implicit) {
      if (a.kind === 'read') v.implicitRead64(gva);
      else v.implicitWrite64(gva, 1n);
    } else if (a.kind === 'read') v.read64(gva);
    else if (a.kind === 'write') v.write64(gva, 1n);
    else v.fetch(gva);
    return null;
  } catch (e) {
    if (e instanceof VcpuLivelock) return 'livelock';
    if (!(e instanceof GuestPageFault)) throw e;
    return e.errorCode;
  } finally {
    v.user = false;
  }
}

/** `e` with protection key `key`, one object per entry and key (made once: the matrix asks millions of times). */
const keyedEntries = new Map<SdmEntry, SdmEntry[]>();
function withKey(e: SdmEntry, key: number): SdmEntry {
  let byKey = keyedEntries.get(e);
  if (byKey === undefined) {
    byKey = [];
    keyedEntries.set(e, byKey);
  }
  return (byKey[key] ??= { ...e, pkey: key });
}

/** An outcome as text: no fault, a #PF's error code, or a livelock. */
export function ecText(v: number | null | 'livelock'): string {
  return v === null ? 'no fault' : v === 'livelock' ? 'a livelock (the access never completes)' : `#PF 0x${v.toString(16)}`;
}

/** Entries below the leaf (not walked): how many states each level takes for one leaf level. */
const LEAVES: readonly { large: boolean; huge: boolean }[] = [
  { large: false, huge: false },
  { large: true, huge: false },
  { large: false, huge: true },
];

/** Control-bit settings: CR0.WP, EFER.NXE, CR4.SMEP, CR4.SMAP, RFLAGS.AC. */
const CPU_SETTINGS = 32;

/**
 * Every combination, in a fixed order: with `upper`, the PML4E and PDPTE
 * take every state too (else they grant everything). `part`/`parts` deal the
 * combinations out by control bits, for workers. The access made before each
 * (`before`) goes round the 8 accesses and none, a step per combination, so
 * every pair of an access and one before it occurs.
 */
export function* accessCases(upper: boolean, pku = false, part = 0, parts = 1): Generator<AccessCase> {
  const uppers = upper ? ENTRY_STATES : [FULL];
  const pkus = PKU_STATES(pku);
  for (let c = part; c < CPU_SETTINGS * pkus.length; c += parts) {
    let n = 0;
    const cb = c % CPU_SETTINGS;
    const cpu0: SdmCpu = { wp: (cb & 1) !== 0, nxe: (cb & 2) !== 0, smep: (cb & 4) !== 0, smap: (cb & 8) !== 0, ac: (cb & 16) !== 0 };
    const pkuState = pkus[Math.floor(c / CPU_SETTINGS)]!;
    const cpu: SdmCpu = pkuState.pke ? { ...cpu0, pke: true, pkru: pkruOf(pkuState) } : cpu0;
    for (const pml4e of uppers)
      for (const leaf of LEAVES)
        for (const pdpte of leaf.huge ? ENTRY_STATES : uppers)
          for (const pde of leaf.huge ? [FULL] : ENTRY_STATES)
            for (const pte of leaf.huge || leaf.large ? [FULL] : ENTRY_STATES)
              for (let ad = 0; ad < 4; ad++)
                for (const a of ACCESSES) {
                  const before = ((c * 7 + n) % (ACCESSES.length + 1)) - 1;
                  // The entries above the leaf have A and D set beforehand in half the combinations, by a hash of the
                  // combination's number (not a dimension: it would double the count).
                  const upperAD = (Math.imul(c * 1_000_003 + n++, 0x9e3779b1) >>> 31) !== 0;
                  yield { pml4e, pdpte, pde, large: leaf.large, huge: leaf.huge, pte, pteA: (ad & 1) !== 0, pteD: (ad & 2) !== 0, upperAD, cpu, pku: pkuState, kind: a.kind, user: a.user, implicit: a.implicit, before };
                }
  }
}

/** Combinations per control-bit setting: PML4E × (PDPTE × PDE × (PTE + 2 MiB) + 1 GiB PDPTE) × A/D × accesses. */
function perSetting(upper: boolean): number {
  const u = upper ? ENTRY_STATES.length : 1;
  const s = ENTRY_STATES.length;
  return u * (u * s * (s + 1) + s) * 4 * ACCESSES.length;
}

/** How many combinations accessCases yields for one part. */
export function accessCaseCount(upper: boolean, pku = false, part = 0, parts = 1): number {
  let settings = 0;
  for (let c = part; c < CPU_SETTINGS * PKU_STATES(pku).length; c += parts) settings++;
  return settings * perSetting(upper);
}

/** The dimensions and their sizes, whose product is the count (the 1 GiB leaf folds PDE and PTE away, so the walk's shape is one dimension). */
function dimensions(upper: boolean, pku: boolean): Record<string, number> {
  const s = ENTRY_STATES.length;
  const u = upper ? s : 1;
  return {
    ...(upper ? { 'PML4E (P=0, or P with W/U/XD)': s } : {}),
    [`walk shape: PDPTE × PDE × PTE (${upper ? s : 1}×${s}×${s}), PDPTE × 2 MiB PDE (${u}×${s}), or 1 GiB PDPTE (${s})`]: u * s * (s + 1) + s,
    "the leaf's A and D beforehand": 4,
    'CR0.WP, EFER.NXE, CR4.SMEP, CR4.SMAP, RFLAGS.AC': CPU_SETTINGS,
    ...(pku ? { 'CR4.PKE off, or on with leaf key 0/1 × PKRU AD × WD for key 1': PKU_STATES(true).length } : {}),
    'read, write, fetch × supervisor, user; implicit supervisor read, write': ACCESSES.length,
  };
}

/**
 * Run every combination on one VM, reused: for each, the guest's entries are
 * rewritten, the control bits set (resetting the MMU context when the role
 * changes) and PKRU written, the TLB flushed, then the access made before (if
 * any) and the access twice; each outcome, and on success the A/D bits left in
 * the guest's entries, are compared with sdmAccess. Under shadow paging
 * (`mode`) KVM's walker and SPTEs decide; under direct / tdp the processor's
 * two-dimensional walk does, over SPTEs KVM builds for the guest's memory.
 * With `dirtyLog` the memory's slot is dirty-logged, the log fetched (and so
 * everything write-protected again) before each combination, and a write that
 * succeeded must be in it.
 */
export function runAccessMatrix(
  o: {
    upper?: boolean;
    mode?: AccessMode;
    pku?: boolean;
    dirtyLog?: boolean;
    /** How each combination's entries are written: by the host with every shadow page zapped, or by the guest itself and invlpg. */
    edit?: AccessEdit;
    part?: number;
    parts?: number;
    keep?: number;
    /** Run only every `stride`-th combination (a sample, for tests). */
    stride?: number;
    onProgress?: (done: number, total: number) => void;
  } = {},
): AccessReport {
  const upper = o.upper ?? false;
  const mode = o.mode ?? 'shadow';
  const pku = o.pku ?? false;
  const dirtyLog = o.dirtyLog ?? false;
  const edit = o.edit ?? 'host';
  const keep = o.keep ?? 20;
  const stride = o.stride ?? 1;
  if (pku && mode === 'shadow')
    throw new KvmmuError('kvmmu access --pku needs --mode tdp or direct: KVM offers protection keys only with TDP (under shadow paging the guest has no PKU and CR4.PKE is #GP)');
  const paged = mode !== 'shadow';
  // 512 data pages, so that a large PDE can map gfns 0-511 (G's page is gfn 5 either way), then the tables.
  const dataPages = 512;
  const tablePages = 8;
  const spec = createMachine({ mode, vcpus: 1, memBytes: (dataPages + tablePages) * 4096, spPages: 64 });
  const k = openKvm(spec, -2);
  const pt = GuestPageTables.build(k, dataPages, tablePages);
  const G = 2 ** 39 + 5 * 4096;
  pt.map(G, 5, PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK);
  pt.mapTablesIdentity();
  const v = new Vcpu(openKvm(spec, 0), 0);
  const baseCpu = CPU_CR0_WP | CPU_EFER_NX | (paged ? CPU_CR0_PG : 0);
  v.setup(pt.cr3, baseCpu);
  const gpa = [4, 3, 2, 1].map((l) => pt.pteGpa(G, l));
  const entryAt = (level: number): bigint => k.host.readUser64(Math.floor(gpa[4 - level]! / 4096), gpa[4 - level]! % 4096);
  const write = (level: number, value: bigint): void => {
    const a = gpa[4 - level]!;
    k.host.writeUser64(Math.floor(a / 4096), a % 4096, value);
  };
  // The address parts: the next table's frame for a walk through; gfn 0 (the large page's first frame) with PS.
  const tableOf = [0n, 0n, ...[2, 3, 4].map((l) => entryAt(l) & ~FLAG_BITS)];
  const pteFrame = entryAt(1) & ~FLAG_BITS;
  // With edit 'guest' the entries are written by the guest itself through the identity mapping of its tables
  // (a separate tree from G's): under shadow paging each write to a shadowed table is emulated and zaps what it made
  // stale; unchanged entries are not written, as a guest would not.
  const writeAsGuest = (level: number, value: bigint): void => {
    if (entryAt(level) !== value) v.write64(gpa[4 - level]!, value);
  };
  const leafOf = (c: AccessCase): number => (c.huge ? 3 : c.large ? 2 : 1);
  const values = (c: AccessCase): bigint[] => {
    const leaf = leafOf(c);
    // As access.c: the leaf carries key 1 when the combination says so, entries above it key 2 (ignored there).
    const key = (level: number): bigint => (!c.pku.key1 ? 0n : level === leaf ? 1n << PT64_PKEY_SHIFT : 2n << PT64_PKEY_SHIFT);
    const ad = (level: number): bigint =>
      level === leaf ? (c.pteA ? PT_ACCESSED_MASK : 0n) | (c.pteD ? PT_DIRTY_MASK : 0n) : c.upperAD ? PT_ACCESSED_MASK | PT_DIRTY_MASK : 0n;
    const at = (level: number, e: SdmEntry): bigint =>
      (level === leaf && level > 1 ? PT_PAGE_SIZE_MASK : level === 1 ? pteFrame : tableOf[level]!) | entryFlags(e) | ad(level) | key(level);
    return [at(4, c.pml4e), at(3, c.pdpte), at(2, c.pde), at(1, c.pte)];
  };
  const slotBits = new Int32Array(k.dirtyLog.words(0) + 1);
  if (dirtyLog) k.dirtyLog.enable(0);
  const total = Math.ceil(accessCaseCount(upper, pku, o.part, o.parts) / stride);
  const mismatches: AccessMismatch[] = [];
  let count = 0;
  let index = 0;
  let wrong = 0;
  let implicitAsExplicit = 0;
  let accesses = 0;
  const t0 = performance.now();
  for (const c of accessCases(upper, pku, o.part, o.parts)) {
    if (index++ % stride !== 0) continue;
    const leaf = leafOf(c);
    // The keys as values() writes them: the leaf's is 1 or 0, the others' 2 (ignored there).
    const keyed = (e: SdmEntry, level: number): SdmEntry => (c.pku.key1 ? withKey(e, level === leaf ? 1 : 2) : e);
    const walked = (c.huge ? [c.pml4e, c.pdpte] : c.large ? [c.pml4e, c.pdpte, c.pde] : [c.pml4e, c.pdpte, c.pde, c.pte]).map((e, i) => keyed(e, 4 - i));
    const want = values(c);
    const cpu = cpuBits(c.cpu, c.pku, paged);
    if (dirtyLog) k.dirtyLog.get(0, slotBits);
    if (edit === 'host') {
      for (let level = 4; level >= 1; level--) write(level, want[4 - level]!);
      if (!paged) k.mmu.kvmMmuZapAll();
      v.enterGuest();
      v.setControlBits(cpu);
      v.flushTlb();
    } else {
      v.enterGuest();
      // Edit with settings that let the supervisor write its tables (they are mapped user: no SMAP), then switch.
      v.setControlBits(baseCpu);
      for (let level = 4; level >= 1; level--) writeAsGuest(level, want[4 - level]!);
      v.invlpg(G);
      v.setControlBits(cpu);
    }
    if (c.pku.pke) v.wrpkru(pkruOf(c.pku));
    // The access before (access.c's "after other accesses"), then the access twice, as access.c repeats one: the
    // later ones meet what the earlier left (TLB entry, SPTE, A/D bits) and must each give the SDM's answer.
    const sdmOf = (a: { kind: SdmKind; user: boolean; implicit: boolean }): number | null =>
      sdmAccess(walked, c.cpu, a.kind, a.implicit ? 'implicit' : a.user ? 'user' : 'supervisor').errorCode;
    const self = { kind: c.kind, user: c.user, implicit: c.implicit };
    const expected = sdmOf(self);
    let got: number | null | 'livelock';
    let prior: { a: (typeof ACCESSES)[number]; expected: number | null; got: number | null | 'livelock' } | null = null;
    try {
      if (c.before >= 0) {
        const a = ACCESSES[c.before]!;
        prior = { a, expected: sdmOf(a), got: accessOnce(v, G, a) };
        accesses++;
      }
      const first = accessOnce(v, G, self);
      const second = first === 'livelock' ? first : accessOnce(v, G, self);
      accesses += 2;
      got = first !== expected ? first : second;
    } finally {
      v.exitGuest();
    }
    // Under shadow paging, KVM cannot tell an implicit supervisor access from an explicit one: a hardware page
    // fault's error code does not say (PFERR_IMPLICIT_ACCESS is KVM's own bit, set by its emulator only). With
    // RFLAGS.AC=1 its walker therefore lets SMAP be overridden: where the SDM denies the implicit access and would
    // allow the explicit one, KVM either keeps finding the access allowed while the processor refuses it (the
    // vCPU livelocks) or, with CR0.WP=0, makes the SPTE a writable supervisor page and the access goes through.
    const asKvm = (x: { a: { kind: SdmKind; implicit: boolean }; expected: number | null; got: number | null | 'livelock' }): boolean => {
      if (mode !== 'shadow' || !x.a.implicit || !c.cpu.ac || x.expected === null) return false;
      const explicit = sdmOf({ kind: x.a.kind, user: false, implicit: false });
      return explicit === null && (x.got === 'livelock' || x.got === null);
    };
    if (asKvm({ a: self, expected, got })) {
      implicitAsExplicit++;
      got = expected;
    }
    let adWrong: string | null = null;
    if (prior !== null && asKvm(prior)) implicitAsExplicit++;
    else if (prior !== null && prior.got !== prior.expected) {
      const who = prior.a.implicit ? 'implicit ' : prior.a.user ? 'user ' : 'supervisor ';
      adWrong = `the access before (${who}${prior.a.kind}) got ${ecText(prior.got)}, the SDM says ${ecText(prior.expected)}`;
    } else if (expected === null && got === null) {
      const missingA = [4, 3, 2, 1].filter((l) => l >= leaf && (entryAt(l) & PT_ACCESSED_MASK) === 0n);
      const d = (entryAt(leaf) & PT_DIRTY_MASK) !== 0n;
      const wrote = c.kind === 'write' || (prior !== null && prior.a.kind === 'write' && prior.got === null);
      if (missingA.length > 0) adWrong = `A not set at level${missingA.length > 1 ? 's' : ''} ${missingA.join(', ')}`;
      else if (d !== (c.pteD || wrote)) adWrong = d ? 'D set by a read or fetch' : c.pteD ? 'D cleared' : 'D not set by the write';
      else if (dirtyLog && wrote) {
        k.dirtyLog.get(0, slotBits);
        if ((slotBits[0]! & (1 << 5)) === 0) adWrong = "the write's page is not in the dirty log";
      }
    }
    if (got !== expected || adWrong !== null) {
      wrong++;
      if (mismatches.length < keep) mismatches.push({ case: c, expected, got, adWrong });
    }
    count++;
    if (o.onProgress !== undefined && (count & 1023) === 0) o.onProgress(count, total);
  }
  if (count !== total) throw new KvmmuError(`access matrix: ran ${count} combinations, expected ${total}`);
  return {
    mode,
    edit,
    pku,
    dirtyLog,
    combinations: count,
    accesses,
    dimensions: dimensions(upper, pku),
    mismatches,
    mismatchCount: wrong,
    implicitAsExplicit,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** What runAccessMatrixParallel runs: the whole space (PML4E and PDPTE included) in one mode. */
export interface AccessRunOptions {
  mode?: AccessMode;
  pku?: boolean;
  dirtyLog?: boolean;
  edit?: AccessEdit;
  workers?: number;
  keep?: number;
  onProgress?: (done: number, total: number) => void;
}

/**
 * The whole space split over `workers` threads (default: the cores), each on
 * a VM of its own, dealt out by control-bit setting; the reports summed
 * (mismatches kept up to `keep`).
 */
export async function runAccessMatrixParallel(o: AccessRunOptions = {}): Promise<AccessReport> {
  const upper = true;
  const mode = o.mode ?? 'shadow';
  const pku = o.pku ?? false;
  const dirtyLog = o.dirtyLog ?? false;
  const edit = o.edit ?? 'host';
  if (pku && mode === 'shadow')
    throw new KvmmuError('kvmmu access --pku needs --mode tdp or direct: KVM offers protection keys only with TDP (under shadow paging the guest has no PKU and CR4.PKE is #GP)');
  const workers = Math.max(1, Math.min(32, o.workers ?? os.availableParallelism()));
  const keep = o.keep ?? 20;
  const total = accessCaseCount(upper, pku);
  const done = new Array<number>(workers).fill(0);
  const t0 = performance.now();
  const reports = await Promise.all(
    Array.from(
      { length: workers },
      (_, part) =>
        new Promise<AccessReport>((resolve, reject) => {
          const w = new Worker(path.join(__dirname, 'access-worker.js'), { workerData: { upper, mode, pku, dirtyLog, edit, part, parts: workers, keep } });
          w.on('message', (m: { progress?: number; report?: AccessReport }) => {
            if (m.report !== undefined) resolve(m.report);
            else if (m.progress !== undefined) {
              done[part] = m.progress;
              o.onProgress?.(done.reduce((a, b) => a + b, 0), total);
            }
          });
          w.on('error', reject);
          w.on('exit', (code) => {
            if (code !== 0) reject(new Error(`kvmmu access: worker ${part} exited with ${code}`));
          });
        }),
    ),
  );
  const combinations = reports.reduce((n, r) => n + r.combinations, 0);
  if (combinations !== total) throw new KvmmuError(`access matrix: the workers ran ${combinations} combinations, expected ${total}`);
  return {
    mode,
    edit,
    pku,
    dirtyLog,
    combinations,
    accesses: reports.reduce((n, r) => n + r.accesses, 0),
    dimensions: dimensions(upper, pku),
    mismatches: reports.flatMap((r) => r.mismatches).slice(0, keep),
    mismatchCount: reports.reduce((n, r) => n + r.mismatchCount, 0),
    implicitAsExplicit: reports.reduce((n, r) => n + r.implicitAsExplicit, 0),
    seconds: (performance.now() - t0) / 1000,
  };
}
