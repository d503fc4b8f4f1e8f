// kvmmu's own access.c: guest PTE and PDE flags, access kinds and control bits run through the whole shadow-paging stack (guest tables in guest memory, the vCPU's TLB, SPTEs, the fault paths, the injected #PF), each outcome compared with the SDM reference (x86/sdm.ts).

import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { KvmmuError } from '../shm/errors';
import { createMachine, openKvm } from '../vcpu/machine';
import { GuestPageTables } from '../vcpu/guest-pt';
import { GuestPageFault, Vcpu } from '../vcpu/vcpu';
import {
  CPU_CR0_WP,
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
} from '../x86/pte';
import { sdmAccess, type SdmCpu, type SdmEntry, type SdmKind } from '../x86/sdm';

const PT_XD = 1n << 63n;
const FLAG_BITS = PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK | PT_ACCESSED_MASK | PT_DIRTY_MASK | PT_PAGE_SIZE_MASK | PT_XD;

/** One combination: each level's P/W/U/XD (PML4E first), the control bits, the access. */
export interface AccessCase {
  readonly pml4e: SdmEntry;
  readonly pdpte: SdmEntry;
  readonly pde: SdmEntry;
  /** The PDE maps a 2 MiB page (PS): the walk ends there, and `pte` is not used. */
  readonly large: boolean;
  readonly pte: SdmEntry;
  /** The leaf's (PTE's, or the large PDE's) A and D bits before the access (the walk sets what the access needs). */
  readonly pteA: boolean;
  readonly pteD: boolean;
  readonly cpu: SdmCpu;
  readonly kind: SdmKind;
  readonly user: boolean;
}

export interface AccessMismatch {
  readonly case: AccessCase;
  /** What the SDM says: the #PF's error code, or null for success. */
  readonly expected: number | null;
  /** What kvmmu gave: the first of the two accesses that differs from the SDM (or the second). */
  readonly got: number | null;
  /** On a success: whether every entry got A and the PTE D (for a write); else null. */
  readonly adWrong: string | null;
}

/** How a combination's entries are put in place: by the host (shadow pages zapped), or by the guest (emulated writes, invlpg). */
export type AccessEdit = 'host' | 'guest';

export interface AccessReport {
  readonly mode: 'shadow';
  readonly edit: AccessEdit;
  readonly combinations: number;
  /** How they are counted: the dimensions and their sizes. */
  readonly dimensions: Record<string, number>;
  readonly mismatches: AccessMismatch[];
  readonly mismatchCount: number;
  readonly seconds: number;
}

const ENTRY_STATES: readonly SdmEntry[] = (() => {
  const out: SdmEntry[] = [{ p: false, w: false, u: false, xd: false }];
  for (let b = 0; b < 8; b++) out.push({ p: true, w: (b & 1) !== 0, u: (b & 2) !== 0, xd: (b & 4) !== 0 });
  return out;
})();
const KINDS: readonly SdmKind[] = ['read', 'write', 'fetch'];
const FULL: SdmEntry = { p: true, w: true, u: true, xd: false };

function cpuBits(c: SdmCpu): number {
  return (c.wp ? CPU_CR0_WP : 0) | (c.nxe ? CPU_EFER_NX : 0) | (c.smep ? CPU_CR4_SMEP : 0) | (c.smap ? CPU_CR4_SMAP : 0) | (c.ac ? CPU_RFLAGS_AC : 0);
}

function entryFlags(e: SdmEntry): bigint {
  return (e.p ? PT_PRESENT_MASK : 0n) | (e.w ? PT_WRITABLE_MASK : 0n) | (e.u ? PT_USER_MASK : 0n) | (e.xd ? PT_XD : 0n);
}

/** One access by the vCPU (in guest mode, and still in it after a #PF): the #PF's error code, or null. */
function accessOnce(v: Vcpu, gva: number, kind: SdmKind): number | null {
  try {
    if (kind === 'read') v.read64(gva);
    else if (kind === 'write') v.write64(gva, 1n);
    else v.fetch(gva);
    return null;
  } catch (e) {
    if (!(e instanceof GuestPageFault)) throw e;
    return e.errorCode;
  }
}

/**
 * Every combination, in a fixed order: with `upper`, the PML4E and PDPTE
 * take every state too (else they grant everything). `part`/`parts` deal the
 * combinations out by control bits, for workers.
 */
export function* accessCases(upper: boolean, part = 0, parts = 1): Generator<AccessCase> {
  const uppers = upper ? ENTRY_STATES : [FULL];
  for (let c = part; c < 32; c += parts) {
    const cpu: SdmCpu = { wp: (c & 1) !== 0, nxe: (c & 2) !== 0, smep: (c & 4) !== 0, smap: (c & 8) !== 0, ac: (c & 16) !== 0 };
    for (const pml4e of uppers)
      for (const pdpte of uppers)
        for (const pde of ENTRY_STATES)
          for (const large of [false, true])
            for (const pte of large ? [FULL] : ENTRY_STATES)
              for (let ad = 0; ad < 4; ad++)
                for (const kind of KINDS)
                  for (const user of [false, true]) yield { pml4e, pdpte, pde, large, pte, pteA: (ad & 1) !== 0, pteD: (ad & 2) !== 0, cpu, kind, user };
  }
}

/** How many combinations accessCases yields for one part. */
export function accessCaseCount(upper: boolean, part = 0, parts = 1): number {
  let cpus = 0;
  for (let c = part; c < 32; c += parts) cpus++;
  const u = upper ? ENTRY_STATES.length ** 2 : 1;
  return cpus * u * ENTRY_STATES.length * (ENTRY_STATES.length + 1) * 4 * KINDS.length * 2;
}

/**
 * Run every combination on one shadow-mode VM, reused: for each, the guest's
 * entries are rewritten (A and D clear), every shadow page is zapped (as a
 * guest's invlpg after editing its tables leads KVM to), the control bits set
 * (resetting the MMU context when the role changes), the TLB flushed, and the
 * access made twice; then both outcomes, and on success the A/D bits left in
 * the guest's entries, are compared with sdmAccess.
 */
export function runAccessMatrix(
  o: {
    upper?: boolean;
    /** How each combination's entries are written: by the host with every shadow page zapped, or by the guest itself and invlpg. */
    edit?: AccessEdit;
    part?: number;
    parts?: number;
    keep?: number;
    onProgress?: (done: number, total: number) => void;
  } = {},
): AccessReport {
  const upper = o.upper ?? false;
  const edit = o.edit ?? 'host';
  const keep = o.keep ?? 20;
  // 512 data pages, so that a large PDE can map gfns 0-511 (G's page is gfn 5 either way), then the tables.
  const dataPages = 512;
  const tablePages = 8;
  const spec = createMachine({ mode: 'shadow', vcpus: 1, memBytes: (dataPages + tablePages) * 4096, spPages: 64 });
  const k = openKvm(spec, -2);
  const pt = GuestPageTables.build(k, dataPages, tablePages);
  const G = 2 ** 39 + 5 * 4096;
  pt.map(G, 5, PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK);
  pt.mapTablesIdentity();
  const v = new Vcpu(openKvm(spec, 0), 0);
  v.setup(pt.cr3, CPU_CR0_WP | CPU_EFER_NX);
  const gpa = [4, 3, 2, 1].map((l) => pt.pteGpa(G, l));
  const entryAt = (level: number): bigint => k.host.readUser64(Math.floor(gpa[4 - level]! / 4096), gpa[4 - level]! % 4096);
  const write = (level: number, value: bigint): void => {
    const a = gpa[4 - level]!;
    k.host.writeUser64(Math.floor(a / 4096), a % 4096, value);
  };
  // The PDE's address part: the PT's frame for a 4 KiB walk; gfn 0 (the large page's first frame) with PS.
  const pdeTable = entryAt(2) & ~FLAG_BITS;
  // With edit 'guest' the entries are written by the guest itself through the identity mapping of its tables
  // (a separate tree from G's): each write to a shadowed table is emulated and zaps what it made stale; unchanged
  // entries are not written, as a guest would not.
  const writeAsGuest = (level: number, value: bigint): void => {
    if (entryAt(level) !== value) v.write64(gpa[4 - level]!, value);
  };
  const values = (c: AccessCase): bigint[] => {
    const leaf = c.large ? 2 : 1;
    const ad = (level: number): bigint => (level === leaf ? (c.pteA ? PT_ACCESSED_MASK : 0n) | (c.pteD ? PT_DIRTY_MASK : 0n) : 0n);
    return [
      (entryAt(4) & ~FLAG_BITS) | entryFlags(c.pml4e) | ad(4),
      (entryAt(3) & ~FLAG_BITS) | entryFlags(c.pdpte) | ad(3),
      (c.large ? PT_PAGE_SIZE_MASK : pdeTable) | entryFlags(c.pde) | ad(2),
      (entryAt(1) & ~FLAG_BITS) | entryFlags(c.pte) | ad(1),
    ];
  };
  const total = accessCaseCount(upper, o.part, o.parts);
  const mismatches: AccessMismatch[] = [];
  let count = 0;
  let wrong = 0;
  const t0 = performance.now();
  for (const c of accessCases(upper, o.part, o.parts)) {
    const leaf = c.large ? 2 : 1;
    const want = values(c);
    if (edit === 'host') {
      for (let level = 4; level >= 1; level--) write(level, want[4 - level]!);
      k.mmu.kvmMmuZapAll();
      v.enterGuest();
      v.setControlBits(cpuBits(c.cpu));
      v.flushTlb();
    } else {
      v.enterGuest();
      // Edit with settings that let the supervisor write its tables (they are mapped user: no SMAP), then switch.
      v.setControlBits(CPU_CR0_WP | CPU_EFER_NX);
      for (let level = 4; level >= 1; level--) writeAsGuest(level, want[4 - level]!);
      v.invlpg(G);
      v.setControlBits(cpuBits(c.cpu));
    }
    v.user = c.user;
    // The access twice, as access.c repeats one: the second meets what the first left (TLB entry, SPTE, A/D bits)
    // and must give the same answer; a mismatch reports the one that differs from the SDM.
    let first: number | null;
    let second: number | null;
    try {
      first = accessOnce(v, G, c.kind);
      second = accessOnce(v, G, c.kind);
    } finally {
      v.user = false;
      v.exitGuest();
    }
    const expected = sdmAccess(c.large ? [c.pml4e, c.pdpte, c.pde] : [c.pml4e, c.pdpte, c.pde, c.pte], c.cpu, c.kind, c.user).errorCode;
    const got = first !== expected ? first : second;
    let adWrong: string | null = null;
    if (expected === null && got === null) {
      const missingA = (c.large ? [4, 3, 2] : [4, 3, 2, 1]).filter((l) => (entryAt(l) & PT_ACCESSED_MASK) === 0n);
      const d = (entryAt(leaf) & PT_DIRTY_MASK) !== 0n;
      if (missingA.length > 0) adWrong = `A not set at level${missingA.length > 1 ? 's' : ''} ${missingA.join(', ')}`;
      else if (d !== (c.pteD || c.kind === 'write')) adWrong = d ? 'D set by a read or fetch' : c.pteD ? 'D cleared' : 'D not set by the write';
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
    mode: 'shadow',
    edit,
    combinations: count,
    dimensions: {
      ...(upper ? { 'PML4E (P=0, or P with W/U/XD)': ENTRY_STATES.length, 'PDPTE (the same)': ENTRY_STATES.length } : {}),
      'PDE (P=0, or P with W/U/XD)': ENTRY_STATES.length,
      'PTE (the same), or none: the PDE maps 2 MiB': ENTRY_STATES.length + 1,
      "the leaf's A and D beforehand": 4,
      'CR0.WP, EFER.NXE, CR4.SMEP, CR4.SMAP, RFLAGS.AC': Math.round(total / ((upper ? ENTRY_STATES.length ** 2 : 1) * ENTRY_STATES.length * (ENTRY_STATES.length + 1) * 4 * 6)),
      'read, write, fetch': 3,
      'supervisor, user': 2,
    },
    mismatches,
    mismatchCount: wrong,
    seconds: (performance.now() - t0) / 1000,
  };
}

/**
 * The whole space split over `workers` threads (default: the cores), each on
 * a VM of its own; the reports summed (mismatches kept up to `keep`).
 */
export async function runAccessMatrixParallel(
  o: { upper?: boolean; edit?: AccessEdit; workers?: number; keep?: number; onProgress?: (done: number, total: number) => void } = {},
): Promise<AccessReport> {
  const upper = o.upper ?? true;
  const edit = o.edit ?? 'host';
  const workers = Math.max(1, Math.min(32, o.workers ?? os.availableParallelism()));
  const keep = o.keep ?? 20;
  const total = accessCaseCount(upper);
  const done = new Array<number>(workers).fill(0);
  const t0 = performance.now();
  const reports = await Promise.all(
    Array.from(
      { length: workers },
      (_, part) =>
        new Promise<AccessReport>((resolve, reject) => {
          const w = new Worker(path.join(__dirname, 'access-worker.js'), { workerData: { upper, edit, part, parts: workers, keep } });
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
  const first = reports[0]!;
  const combinations = reports.reduce((n, r) => n + r.combinations, 0);
  if (combinations !== total) throw new KvmmuError(`access matrix: the workers ran ${combinations} combinations, expected ${total}`);
  return {
    mode: 'shadow',
    edit,
    combinations,
    dimensions: { ...first.dimensions, 'CR0.WP, EFER.NXE, CR4.SMEP, CR4.SMAP, RFLAGS.AC': 32 },
    mismatches: reports.flatMap((r) => r.mismatches).slice(0, keep),
    mismatchCount: reports.reduce((n, r) => n + r.mismatchCount, 0),
    seconds: (performance.now() - t0) / 1000,
  };
}
