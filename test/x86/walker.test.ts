// Guest walker against an SDM oracle, in the spirit of kvm-unit-tests x86/access.c: faults, error codes, gfn, rights, A/D, retries.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestWalker, type GuestPtAccess } from '../../src/x86/walker';
import {
  ACC_ALL,
  ACC_EXEC_MASK,
  ACC_USER_MASK,
  ACC_WRITE_MASK,
  CPU_CR0_WP,
  CPU_CR4_SMAP,
  CPU_CR4_SMEP,
  CPU_EFER_NX,
  CPU_RFLAGS_AC,
  MAXPHYADDR,
  PFERR_FETCH_MASK,
  PFERR_PRESENT_MASK,
  PFERR_RSVD_MASK,
  PFERR_USER_MASK,
  PFERR_WRITE_MASK,
  type AccessKind,
} from '../../src/x86/pte';

// ---------------------------------------------------------------------------
// Guest memory: a Map from gpa to 64-bit entry, counting cmpxchg calls.
// ---------------------------------------------------------------------------

class MapPt implements GuestPtAccess {
  readonly mem: Map<number, bigint>;
  cmpxchgCalls = 0;
  constructor(init: ReadonlyMap<number, bigint>) {
    this.mem = new Map(init);
  }
  readGpte(gpa: number): bigint {
    return this.mem.get(gpa) ?? 0n;
  }
  cmpxchgGpte(gpa: number, expected: bigint, v: bigint): bigint {
    this.cmpxchgCalls++;
    const old = this.mem.get(gpa) ?? 0n;
    if (old === expected) this.mem.set(gpa, v);
    return old;
  }
}

// ---------------------------------------------------------------------------
// Bits written out here from the SDM (vol. 3, 4.5), not imported, so a wrong
// constant in pte.ts shows up as a failure.
// ---------------------------------------------------------------------------

const P = 1n << 0n;
const W = 1n << 1n;
const U = 1n << 2n;
const A = 1n << 5n;
const D = 1n << 6n;
const PS = 1n << 7n;
const NX = 1n << 63n;
const ADDR = 0x000f_ffff_ffff_f000n; // bits 12..51

const EC_P = 1;
const EC_W = 2;
const EC_U = 4;
const EC_RSVD = 8;
const EC_FETCH = 16;

// The error-code and ACC constants of pte.ts must agree with the SDM values above.
test('error-code and access-right constants have their SDM / KVM values', () => {
  assert.deepEqual(
    [PFERR_PRESENT_MASK, PFERR_WRITE_MASK, PFERR_USER_MASK, PFERR_RSVD_MASK, PFERR_FETCH_MASK],
    [EC_P, EC_W, EC_U, EC_RSVD, EC_FETCH],
  );
  assert.deepEqual([ACC_EXEC_MASK, ACC_WRITE_MASK, ACC_USER_MASK, ACC_ALL], [1, 2, 4, 7]);
});

// ---------------------------------------------------------------------------
// Table layout: PML4 -> PDPT -> PD -> PT -> data, at fixed guest frames.
// ---------------------------------------------------------------------------

const PML4_GFN = 0x10;
const PDPT_GFN = 0x11;
const PD_GFN = 0x12;
const PT_GFN = 0x13;
const DATA_GFN = 0x1234;
/** A 2 MiB-aligned frame (multiple of 512) for PS PDEs. */
const LARGE_GFN = 0x4_0000;
/** A 1 GiB-aligned frame (multiple of 512 * 512) for PS PDPTEs. */
const HUGE_GFN = 0x80_0000;
const CR3 = PML4_GFN * 4096;

const IDX = { 4: 5, 3: 7, 2: 9, 1: 11 } as const;
const OFFSET = 0xabc;
/** gva with index 5 in the PML4, 7 in the PDPT, 9 in the PD, 11 in the PT. */
const GVA = IDX[4] * 2 ** 39 + IDX[3] * 2 ** 30 + IDX[2] * 2 ** 21 + IDX[1] * 2 ** 12 + OFFSET;

const PML4E_GPA = PML4_GFN * 4096 + IDX[4] * 8;
const PDPTE_GPA = PDPT_GFN * 4096 + IDX[3] * 8;
const PDE_GPA = PD_GFN * 4096 + IDX[2] * 8;
const PTE_GPA = PT_GFN * 4096 + IDX[1] * 8;

function frame(gfn: number): bigint {
  return BigInt(gfn) << 12n;
}

interface Tables {
  pml4e: bigint;
  pdpte: bigint;
  pde: bigint;
  pte: bigint;
}

function memOf(t: Tables): Map<number, bigint> {
  return new Map([
    [PML4E_GPA, t.pml4e],
    [PDPTE_GPA, t.pdpte],
    [PDE_GPA, t.pde],
    [PTE_GPA, t.pte],
  ]);
}

/** Default tables: every level present, writable, user, A clear; leaf D clear. */
function defaultTables(): Tables {
  return {
    pml4e: frame(PDPT_GFN) | P | W | U,
    pdpte: frame(PD_GFN) | P | W | U,
    pde: frame(PT_GFN) | P | W | U,
    pte: frame(DATA_GFN) | P | W | U,
  };
}

// ---------------------------------------------------------------------------
// Access kinds and control bits.
// ---------------------------------------------------------------------------

interface NamedAccess {
  readonly name: string;
  readonly a: AccessKind;
}

const ACCESSES: readonly NamedAccess[] = [
  { name: 'user read', a: { write: false, user: true, fetch: false } },
  { name: 'user write', a: { write: true, user: true, fetch: false } },
  { name: 'user fetch', a: { write: false, user: true, fetch: true } },
  { name: 'supervisor read', a: { write: false, user: false, fetch: false } },
  { name: 'supervisor write', a: { write: true, user: false, fetch: false } },
  { name: 'supervisor fetch', a: { write: false, user: false, fetch: true } },
  { name: 'implicit supervisor read', a: { write: false, user: false, fetch: false, implicit: true } },
  { name: 'implicit supervisor write', a: { write: true, user: false, fetch: false, implicit: true } },
];

const ALL_CPU = CPU_CR0_WP | CPU_EFER_NX | CPU_CR4_SMEP | CPU_CR4_SMAP | CPU_RFLAGS_AC;

function cpuName(cpu: number): string {
  const n: string[] = [];
  if (cpu & CPU_CR0_WP) n.push('WP');
  if (cpu & CPU_EFER_NX) n.push('NXE');
  if (cpu & CPU_CR4_SMEP) n.push('SMEP');
  if (cpu & CPU_CR4_SMAP) n.push('SMAP');
  if (cpu & CPU_RFLAGS_AC) n.push('AC');
  return n.length ? n.join('|') : 'none';
}

function pteName(pte: bigint): string {
  const n: string[] = [`0x${((pte & ADDR) >> 12n).toString(16)}`];
  if (pte & P) n.push('P');
  if (pte & W) n.push('W');
  if (pte & U) n.push('U');
  if (pte & A) n.push('A');
  if (pte & D) n.push('D');
  if (pte & PS) n.push('PS');
  if (pte & NX) n.push('NX');
  return n.join(' ');
}

// ---------------------------------------------------------------------------
// The oracle: a direct reading of SDM vol. 3 §4.5-4.7, independent of pte.ts.
// ---------------------------------------------------------------------------

interface Outcome {
  ok: boolean;
  errorCode: number;
  /** On success: the translated frame, the leaf level and the rights of the translation. */
  gfn: number;
  level: number;
  acc: number;
  /** Guest memory after the access. */
  mem: ReadonlyMap<number, bigint>;
}

/** The 9-bit index of `gva` for each level (1..4), memoised: the enumerations walk one gva millions of times. */
const indexCache = new Map<number, readonly number[]>();
function oracleIndex(gva: number, level: number): number {
  let idx = indexCache.get(gva);
  if (idx === undefined) {
    const g = BigInt(gva);
    idx = [0, 1, 2, 3, 4].map((l) => (l === 0 ? 0 : Number((g >> BigInt(12 + 9 * (l - 1))) & 511n)));
    indexCache.set(gva, idx);
  }
  return idx[level]!;
}

/** Address bits MAXPHYADDR..51. */
const ABOVE_MAXPHYADDR = (1n << 52n) - (1n << BigInt(MAXPHYADDR));

/** Bits the SDM reserves in a present entry at `level` (4-level paging, MAXPHYADDR address bits). */
function oracleReserved(pte: bigint, level: number, nxe: boolean): boolean {
  if (!nxe && (pte & NX) !== 0n) return true; // XD is reserved unless IA32_EFER.NXE
  if ((pte & ABOVE_MAXPHYADDR) !== 0n) return true;
  if (level === 4 && (pte & PS) !== 0n) return true; // PML4E bit 7 is reserved
  if (level === 2 && (pte & PS) !== 0n && (pte & 0x1f_e000n) !== 0n) return true; // 2 MiB: bits 20:13
  if (level === 3 && (pte & PS) !== 0n && (pte & 0x3fff_e000n) !== 0n) return true; // 1 GiB: bits 29:13
  return false;
}

function oracle(init: ReadonlyMap<number, bigint>, cr3: number, gva: number, a: AccessKind, cpu: number): Outcome {
  const nxe = (cpu & CPU_EFER_NX) !== 0;
  const wp = (cpu & CPU_CR0_WP) !== 0;
  const smep = (cpu & CPU_CR4_SMEP) !== 0;
  const smap = (cpu & CPU_CR4_SMAP) !== 0;
  const ac = (cpu & CPU_RFLAGS_AC) !== 0;
  // Error-code bits W, U, I/D (I/D only when NXE or SMEP).
  const accessBits = (a.write ? EC_W : 0) | (a.user ? EC_U : 0) | (a.fetch && (nxe || smep) ? EC_FETCH : 0);
  const fault = (errorCode: number): Outcome => ({ ok: false, errorCode, gfn: -1, level: -1, acc: -1, mem: init });

  const usedGpa: number[] = [];
  // Rights of the translation: the most restrictive over all entries (SDM 4.6.1).
  let userAddr = true;
  let writableAll = true;
  let anyNx = false;
  let tableBase = BigInt(cr3) & ADDR;
  let level = 4;
  let gfn = -1;
  for (;;) {
    const gpa = Number(tableBase) + oracleIndex(gva, level) * 8;
    const pte = init.get(gpa) ?? 0n;
    if ((pte & P) === 0n) return fault(accessBits);
    if (oracleReserved(pte, level, nxe)) return fault(EC_P | EC_RSVD | accessBits);
    usedGpa.push(gpa);
    userAddr &&= (pte & U) !== 0n;
    writableAll &&= (pte & W) !== 0n;
    anyNx ||= (pte & NX) !== 0n;
    if (level === 1) {
      gfn = Number((pte & ADDR) >> 12n);
      break;
    }
    if ((level === 2 || level === 3) && (pte & PS) !== 0n) {
      // Physical address = frame bits above the page size + the gva's offset within the page.
      const pageBits = BigInt(12 + 9 * (level - 1));
      const base = (pte & ADDR) & ~((1n << pageBits) - 1n);
      const pa = base | (BigInt(gva) & ((1n << pageBits) - 1n));
      gfn = Number(pa >> 12n);
      break;
    }
    tableBase = pte & ADDR;
    level--;
  }

  const execDisabled = nxe && anyNx;

  let denied: boolean;
  if (a.fetch) {
    if (a.user) denied = !userAddr || execDisabled;
    else denied = execDisabled || (smep && userAddr);
  } else if (a.user) {
    denied = !userAddr || (a.write && !writableAll);
  } else {
    // Supervisor data access. SMAP: to a user-mode address, allowed only when explicit and AC=1.
    const smapBlocks = smap && userAddr && (a.implicit === true || !ac);
    const wpBlocks = a.write && wp && !writableAll;
    denied = smapBlocks || wpBlocks;
  }
  if (denied) return fault(EC_P | accessBits);

  const mem = new Map(init);
  for (let i = 0; i < usedGpa.length; i++) {
    let v = init.get(usedGpa[i]!)! | A;
    if (i === usedGpa.length - 1 && a.write) v |= D;
    mem.set(usedGpa[i]!, v);
  }
  const acc = (writableAll ? ACC_WRITE_MASK : 0) | (userAddr ? ACC_USER_MASK : 0) | (execDisabled ? 0 : ACC_EXEC_MASK);
  return { ok: true, errorCode: 0, gfn, level, acc, mem };
}

// ---------------------------------------------------------------------------
// Running one case against the walker.
// ---------------------------------------------------------------------------

interface Tally {
  cases: number;
  ok: number;
  notPresent: number;
  rsvd: number;
  protection: number;
  fetchBit: number;
  mismatches: number;
  /** The first 20 mismatches, described. */
  failures: string[];
}

function newTally(): Tally {
  return { cases: 0, ok: 0, notPresent: 0, rsvd: 0, protection: 0, fetchBit: 0, mismatches: 0, failures: [] };
}

function mapsEqual(x: ReadonlyMap<number, bigint>, y: ReadonlyMap<number, bigint>): boolean {
  if (x.size !== y.size) return false;
  for (const [k, v] of x) if (y.get(k) !== v) return false;
  return true;
}

function countChanged(before: ReadonlyMap<number, bigint>, after: ReadonlyMap<number, bigint>): number {
  let n = 0;
  for (const [k, v] of after) if (before.get(k) !== v) n++;
  return n;
}

const walker = new GuestWalker();

/** Walk once, compare with the oracle, record any mismatch in `t` (first 20 kept). */
function runCase(t: Tally, init: ReadonlyMap<number, bigint>, na: NamedAccess, cpu: number, describe: () => string): void {
  const pt = new MapPt(init);
  const exp = oracle(init, CR3, GVA, na.a, cpu);
  const ok = walker.walk(pt, CR3, GVA, na.a, cpu);
  t.cases++;
  if (exp.ok) t.ok++;
  else if ((exp.errorCode & EC_RSVD) !== 0) t.rsvd++;
  else if ((exp.errorCode & EC_P) !== 0) t.protection++;
  else t.notPresent++;
  if ((exp.errorCode & EC_FETCH) !== 0) t.fetchBit++;

  const problems: string[] = [];
  if (ok !== exp.ok) problems.push(`walk returned ${ok}, expected ${exp.ok}`);
  else if (ok) {
    if (walker.gfn !== exp.gfn) problems.push(`gfn 0x${walker.gfn.toString(16)}, expected 0x${exp.gfn.toString(16)}`);
    if (walker.level !== exp.level) problems.push(`level ${walker.level}, expected ${exp.level}`);
    if (walker.pteAccess !== exp.acc) problems.push(`pteAccess ${walker.pteAccess}, expected ${exp.acc}`);
    const changed = countChanged(init, exp.mem);
    if (pt.cmpxchgCalls !== changed) problems.push(`${pt.cmpxchgCalls} cmpxchg calls for ${changed} changed entries`);
  } else {
    if (walker.errorCode !== exp.errorCode)
      problems.push(`error code 0x${walker.errorCode.toString(16)}, expected 0x${exp.errorCode.toString(16)}`);
    if (pt.cmpxchgCalls !== 0) problems.push(`${pt.cmpxchgCalls} cmpxchg calls on a faulting walk`);
  }
  if (!mapsEqual(pt.mem, exp.mem)) {
    const diff: string[] = [];
    for (const [k, v] of exp.mem) {
      const got = pt.mem.get(k) ?? 0n;
      if (got !== v) diff.push(`@0x${k.toString(16)}: ${pteName(got)} expected ${pteName(v)}`);
    }
    problems.push(`memory after walk: ${diff.join('; ')}`);
  }
  if (problems.length > 0) t.mismatches++;
  if (problems.length > 0 && t.failures.length < 20)
    t.failures.push(`${describe()} | ${na.name} | cpu ${cpuName(cpu)}: ${problems.join(', ')}`);
}

// Flag sets enumerated per entry (6 bits): P, W, U, NX, A, D.
const FLAG_BITS: readonly bigint[] = [P, W, U, NX, A, D];
function flagsOf(n: number): bigint {
  let f = 0n;
  for (let i = 0; i < FLAG_BITS.length; i++) if ((n >> i) & 1) f |= FLAG_BITS[i]!;
  return f;
}

function assertTally(t: Tally, expectedCases: number): void {
  assert.deepEqual(t.failures, [], `${t.mismatches} of ${t.cases} cases differ from the SDM oracle (first ${t.failures.length} shown)`);
  assert.equal(t.cases, expectedCases);
  // The enumeration must reach every kind of outcome, or the oracle could be vacuous.
  assert.ok(t.ok > 0, 'some accesses succeed');
  assert.ok(t.notPresent > 0, 'some accesses hit a not-present entry');
  assert.ok(t.rsvd > 0, 'some accesses hit reserved bits');
  assert.ok(t.protection > 0, 'some accesses are protection faults');
  assert.ok(t.fetchBit > 0, 'some error codes carry the fetch bit');
}

// ---------------------------------------------------------------------------
// Enumerated cases.
// ---------------------------------------------------------------------------

test('every PDE flag combination with every PTE flag combination behind a present PDE, for every access kind and control-bit setting, gives the SDM outcome, error code, gfn, rights and A/D (4 KiB pages)', () => {
  const t = newTally();
  const base = defaultTables();
  let combos = 0;
  for (let pdeFlags = 0; pdeFlags < 64; pdeFlags++) {
    const pdePresent = (flagsOf(pdeFlags) & P) !== 0n;
    for (let pteFlags = 0; pteFlags < 64; pteFlags++) {
      // Behind a not-present PDE the PTE is unreachable: two PTEs (none and all flags) are enough there.
      if (!pdePresent && pteFlags !== 0 && pteFlags !== 63) continue;
      combos++;
      const tables: Tables = {
        ...base,
        pde: frame(PT_GFN) | flagsOf(pdeFlags),
        pte: frame(DATA_GFN) | flagsOf(pteFlags),
      };
      const init = memOf(tables);
      for (const na of ACCESSES)
        for (let cpu = 0; cpu <= ALL_CPU; cpu++)
          runCase(t, init, na, cpu, () => `PDE ${pteName(tables.pde)}, PTE ${pteName(tables.pte)}`);
    }
  }
  assert.equal(combos, 32 * 64 + 32 * 2);
  assertTally(t, combos * ACCESSES.length * 32);
});

test('every 2 MiB PS PDE flag combination, access kind and control-bit setting gives the SDM outcome, the page offset in the gfn, and leaves the PT alone', () => {
  const t = newTally();
  const base = defaultTables();
  for (let pdeFlags = 0; pdeFlags < 64; pdeFlags++) {
    // The PD entry maps LARGE_GFN. PTEs sit both in the real PT and where a walker that took the PS PDE
    // for a table pointer would look; neither may be used or touched.
    const tables: Tables = { ...base, pde: frame(LARGE_GFN) | PS | flagsOf(pdeFlags) };
    const init = memOf(tables);
    init.set(LARGE_GFN * 4096 + IDX[1] * 8, frame(DATA_GFN) | P | W | U);
    for (const na of ACCESSES)
      for (let cpu = 0; cpu <= ALL_CPU; cpu++) runCase(t, init, na, cpu, () => `PS PDE ${pteName(tables.pde)}`);
  }
  // Misaligned 2 MiB frames (bits 13..20) are reserved; bit 12 is PAT, not an address bit.
  for (const extra of [1n << 12n, 1n << 13n, 1n << 20n, 1n << 21n]) {
    const tables: Tables = { ...base, pde: frame(LARGE_GFN) | extra | PS | P | W | U };
    const init = memOf(tables);
    for (const na of ACCESSES)
      for (let cpu = 0; cpu <= ALL_CPU; cpu++) runCase(t, init, na, cpu, () => `PS PDE ${pteName(tables.pde)}`);
  }
  assertTally(t, (64 + 4) * ACCESSES.length * 32);
});

test('rights combine over all four levels: every PML4E x PDPTE x PTE choice of W, U, NX (with A varied above) gives the SDM outcome', () => {
  const t = newTally();
  const three: readonly bigint[] = [W, U, NX];
  const bitsOf = (n: number): bigint => three.reduce((f, b, i) => ((n >> i) & 1 ? f | b : f), 0n);
  for (let upper = 0; upper < 8; upper++) {
    for (let mid = 0; mid < 8; mid++) {
      for (let leaf = 0; leaf < 8; leaf++) {
        const tables: Tables = {
          pml4e: frame(PDPT_GFN) | P | bitsOf(upper) | (upper & 1 ? A : 0n),
          pdpte: frame(PD_GFN) | P | bitsOf(mid) | (mid & 2 ? A : 0n),
          pde: frame(PT_GFN) | P | W | U,
          pte: frame(DATA_GFN) | P | bitsOf(leaf),
        };
        const init = memOf(tables);
        for (const na of ACCESSES)
          for (let cpu = 0; cpu <= ALL_CPU; cpu++)
            runCase(t, init, na, cpu, () => `PML4E ${pteName(tables.pml4e)}, PDPTE ${pteName(tables.pdpte)}, PTE ${pteName(tables.pte)}`);
      }
    }
  }
  // Not-present and reserved PML4E / PDPTE (NX without NXE, PS in the PML4E, bit above MAXPHYADDR) reach every outcome.
  const odd: ReadonlyArray<Partial<Tables>> = [
    { pml4e: frame(PDPT_GFN) | W | U | NX },
    { pdpte: frame(PD_GFN) | W | U | NX },
    { pml4e: frame(PDPT_GFN) | P | W | U | PS },
    { pdpte: frame(PD_GFN) | P | W | U | (1n << BigInt(MAXPHYADDR)) },
  ];
  for (const o of odd) {
    const tables: Tables = { ...defaultTables(), ...o };
    const init = memOf(tables);
    for (const na of ACCESSES)
      for (let cpu = 0; cpu <= ALL_CPU; cpu++)
        runCase(t, init, na, cpu, () => `PML4E ${pteName(tables.pml4e)}, PDPTE ${pteName(tables.pdpte)}`);
  }
  assertTally(t, (8 * 8 * 8 + odd.length) * ACCESSES.length * 32);
});

// ---------------------------------------------------------------------------
// Named cases.
// ---------------------------------------------------------------------------

const USER_WRITE: AccessKind = { write: true, user: true, fetch: false };
const USER_READ: AccessKind = { write: false, user: true, fetch: false };
const SUP_READ: AccessKind = { write: false, user: false, fetch: false };
const SUP_WRITE: AccessKind = { write: true, user: false, fetch: false };
const SUP_FETCH: AccessKind = { write: false, user: false, fetch: true };
const USER_FETCH: AccessKind = { write: false, user: true, fetch: true };

test('a user write through a read-only PDE faults with P|W|U even when CR0.WP is clear', () => {
  const t = { ...defaultTables(), pde: frame(PT_GFN) | P | U };
  const pt = new MapPt(memOf(t));
  const w = new GuestWalker();
  assert.equal(w.walk(pt, CR3, GVA, USER_WRITE, 0), false);
  assert.equal(w.errorCode, EC_P | EC_W | EC_U);
  assert.ok(mapsEqual(pt.mem, memOf(t)), 'no entry changed');
});

test('a supervisor write through a read-only PTE succeeds and sets D when CR0.WP is clear, and faults with P|W when it is set', () => {
  const t = { ...defaultTables(), pte: frame(DATA_GFN) | P }; // supervisor page, read-only
  const w = new GuestWalker();
  const pt = new MapPt(memOf(t));
  assert.equal(w.walk(pt, CR3, GVA, SUP_WRITE, 0), true);
  assert.equal(w.gfn, DATA_GFN);
  assert.equal(w.pteAccess, ACC_EXEC_MASK);
  assert.equal(pt.mem.get(PTE_GPA), frame(DATA_GFN) | P | A | D);

  const pt2 = new MapPt(memOf(t));
  assert.equal(w.walk(pt2, CR3, GVA, SUP_WRITE, CPU_CR0_WP), false);
  assert.equal(w.errorCode, EC_P | EC_W);
  assert.ok(mapsEqual(pt2.mem, memOf(t)));
});

test('a supervisor fetch from a user page faults with P|FETCH only under CR4.SMEP', () => {
  const t = defaultTables();
  const w = new GuestWalker();
  assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, SUP_FETCH, 0), true);
  assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, SUP_FETCH, CPU_CR4_SMEP), false);
  assert.equal(w.errorCode, EC_P | EC_FETCH);
  // A supervisor page anywhere on the path makes the address supervisor-mode: SMEP allows the fetch.
  const sup = { ...t, pdpte: frame(PD_GFN) | P | W };
  assert.equal(w.walk(new MapPt(memOf(sup)), CR3, GVA, SUP_FETCH, CPU_CR4_SMEP), true);
});

test('SMAP blocks a supervisor read of a user page unless the access is explicit and RFLAGS.AC is set', () => {
  const t = defaultTables();
  const w = new GuestWalker();
  const implicitRead: AccessKind = { ...SUP_READ, implicit: true };
  assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, SUP_READ, CPU_CR4_SMAP), false);
  assert.equal(w.errorCode, EC_P);
  assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, SUP_READ, CPU_CR4_SMAP | CPU_RFLAGS_AC), true);
  assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, implicitRead, CPU_CR4_SMAP | CPU_RFLAGS_AC), false);
  assert.equal(w.errorCode, EC_P);
  // SMAP does not apply to supervisor fetches (that is SMEP's job) nor to user accesses.
  assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, SUP_FETCH, CPU_CR4_SMAP), true);
  assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, USER_READ, CPU_CR4_SMAP), true);
});

test('with EFER.NX a fetch faults if any level sets NX; without it NX in a present entry is a reserved-bit fault', () => {
  for (const where of ['pml4e', 'pdpte', 'pde', 'pte'] as const) {
    const t: Tables = { ...defaultTables() };
    t[where] |= NX;
    const w = new GuestWalker();
    assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, USER_FETCH, CPU_EFER_NX), false, where);
    assert.equal(w.errorCode, EC_P | EC_U | EC_FETCH, where);
    assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, USER_READ, CPU_EFER_NX), true, where);
    assert.equal(w.pteAccess, ACC_WRITE_MASK | ACC_USER_MASK, where);
    const pt = new MapPt(memOf(t));
    assert.equal(w.walk(pt, CR3, GVA, USER_READ, 0), false, where);
    assert.equal(w.errorCode, EC_P | EC_RSVD | EC_U, where);
    assert.equal(pt.cmpxchgCalls, 0, where);
  }
});

test('a not-present PML4E, PDPTE, PDE or PTE faults with P clear and only the access bits, changing nothing', () => {
  for (const where of ['pml4e', 'pdpte', 'pde', 'pte'] as const) {
    for (const { a, ec, cpu } of [
      { a: USER_WRITE, ec: EC_W | EC_U, cpu: CPU_CR0_WP },
      { a: SUP_READ, ec: 0, cpu: 0 },
      { a: SUP_FETCH, ec: 0, cpu: 0 },
      { a: USER_FETCH, ec: EC_U | EC_FETCH, cpu: CPU_EFER_NX },
    ]) {
      const t: Tables = { ...defaultTables() };
      // Everything but P, including bits that would be reserved if the entry were present.
      t[where] = (t[where] & ~P) | NX | (1n << 51n) | A;
      const pt = new MapPt(memOf(t));
      const w = new GuestWalker();
      assert.equal(w.walk(pt, CR3, GVA, a, cpu), false, where);
      assert.equal(w.errorCode, ec, where);
      assert.equal(pt.cmpxchgCalls, 0, where);
      assert.ok(mapsEqual(pt.mem, memOf(t)), where);
    }
  }
});

test('address bits at and above MAXPHYADDR are reserved at every level; the bit just below is an address bit', () => {
  for (const where of ['pml4e', 'pdpte', 'pde', 'pte'] as const) {
    for (const bit of [MAXPHYADDR, 47, 51]) {
      const t: Tables = { ...defaultTables() };
      t[where] |= 1n << BigInt(bit);
      const pt = new MapPt(memOf(t));
      const w = new GuestWalker();
      assert.equal(w.walk(pt, CR3, GVA, USER_WRITE, 0), false, `${where} bit ${bit}`);
      assert.equal(w.errorCode, EC_P | EC_RSVD | EC_W | EC_U, `${where} bit ${bit}`);
      assert.equal(pt.cmpxchgCalls, 0);
    }
  }
  const t: Tables = { ...defaultTables(), pte: frame(DATA_GFN) | (1n << BigInt(MAXPHYADDR - 1)) | P | W | U };
  const w = new GuestWalker();
  assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, USER_READ, 0), true);
  assert.equal(w.gfn, DATA_GFN + 2 ** (MAXPHYADDR - 1 - 12));
});

test('PS in a PML4E is a reserved-bit fault', () => {
  const t: Tables = { ...defaultTables(), pml4e: frame(PDPT_GFN) | P | W | U | PS };
  const w = new GuestWalker();
  assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, SUP_READ, 0), false);
  assert.equal(w.errorCode, EC_P | EC_RSVD);
});

test('a reserved bit in an upper entry is reported even though a lower entry is not present', () => {
  const t: Tables = { ...defaultTables(), pdpte: frame(PD_GFN) | P | W | U | NX, pte: 0n };
  const w = new GuestWalker();
  assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, USER_READ, 0), false);
  assert.equal(w.errorCode, EC_P | EC_RSVD | EC_U);
  // And the other way round: the walk stops at the not-present entry and never sees the reserved bit below.
  const t2: Tables = { ...defaultTables(), pdpte: frame(PD_GFN) | W | U, pte: frame(DATA_GFN) | P | NX };
  assert.equal(w.walk(new MapPt(memOf(t2)), CR3, GVA, USER_READ, 0), false);
  assert.equal(w.errorCode, EC_U);
});

test('a 2 MiB page translates to the large frame plus the gva page offset, keeps PAT (bit 12) out of the address, and sets A and D in the PDE', () => {
  const t: Tables = { ...defaultTables(), pde: frame(LARGE_GFN) | (1n << 12n) | PS | P | W | U };
  const init = memOf(t);
  const pt = new MapPt(init);
  const w = new GuestWalker();
  assert.equal(w.walk(pt, CR3, GVA, USER_WRITE, CPU_CR0_WP), true);
  assert.equal(w.level, 2);
  assert.equal(w.gfn, LARGE_GFN + IDX[1]);
  assert.equal(pt.mem.get(PDE_GPA), t.pde | A | D);
  assert.equal(pt.mem.get(PDPTE_GPA), t.pdpte | A);
  assert.equal(pt.mem.get(PML4E_GPA), t.pml4e | A);
  assert.equal(pt.mem.get(PTE_GPA), t.pte, 'the PT slot is not part of a 2 MiB walk');
  // Another gva in the same 2 MiB page.
  const gva2 = GVA - IDX[1] * 4096 + 0x1ff * 4096;
  assert.equal(w.walk(new MapPt(init), CR3, gva2, USER_READ, 0), true);
  assert.equal(w.gfn, LARGE_GFN + 0x1ff);
});

test('a 1 GiB PDPTE translates to the huge frame plus the gva offset within it; frame bits 13..29 are reserved', () => {
  const t: Tables = { ...defaultTables(), pdpte: frame(HUGE_GFN) | PS | P | W | U };
  const pt = new MapPt(memOf(t));
  const w = new GuestWalker();
  assert.equal(w.walk(pt, CR3, GVA, USER_WRITE, 0), true);
  assert.equal(w.level, 3);
  assert.equal(w.gfn, HUGE_GFN + IDX[2] * 512 + IDX[1]);
  assert.equal(pt.mem.get(PDPTE_GPA), t.pdpte | A | D);
  assert.equal(pt.mem.get(PDE_GPA), t.pde, 'the PD slot is not part of a 1 GiB walk');
  for (const bit of [13n, 20n, 21n, 29n]) {
    const bad: Tables = { ...t, pdpte: t.pdpte | (1n << bit) };
    assert.equal(w.walk(new MapPt(memOf(bad)), CR3, GVA, USER_READ, 0), false, `bit ${bit}`);
    assert.equal(w.errorCode, EC_P | EC_RSVD | EC_U, `bit ${bit}`);
  }
  const pat: Tables = { ...t, pdpte: t.pdpte | (1n << 12n) };
  assert.equal(w.walk(new MapPt(memOf(pat)), CR3, GVA, USER_READ, 0), true);
  assert.equal(w.gfn, HUGE_GFN + IDX[2] * 512 + IDX[1]);
});

test('a 4-level walk records each level\'s table gfn, entry gpa, entry (after A/D) and the rights of the levels above', () => {
  const t: Tables = {
    pml4e: frame(PDPT_GFN) | P | W | U,
    pdpte: frame(PD_GFN) | P | U, // read-only
    pde: frame(PT_GFN) | P | W | U | NX,
    pte: frame(DATA_GFN) | P | W | U | D,
  };
  const pt = new MapPt(memOf(t));
  const w = new GuestWalker();
  assert.equal(w.walk(pt, CR3, GVA, USER_READ, CPU_EFER_NX), true);
  assert.equal(w.level, 1);
  assert.equal(w.gfn, DATA_GFN);
  assert.deepEqual(w.tableGfn.slice(1), [PT_GFN, PD_GFN, PDPT_GFN, PML4_GFN]);
  assert.deepEqual(w.pteGpa.slice(1), [PTE_GPA, PDE_GPA, PDPTE_GPA, PML4E_GPA]);
  assert.deepEqual(w.ptes.slice(1), [t.pte | A, t.pde | A, t.pdpte | A, t.pml4e | A]);
  assert.deepEqual(
    w.ptes.slice(1),
    [PTE_GPA, PDE_GPA, PDPTE_GPA, PML4E_GPA].map((g) => pt.mem.get(g)),
    'the recorded entries are what memory holds after the walk',
  );
  assert.deepEqual(w.tableAccess.slice(1), [
    ACC_USER_MASK, // PT: below the read-only PDPTE and the NX PDE
    ACC_USER_MASK | ACC_EXEC_MASK, // PD: below the read-only PDPTE
    ACC_ALL, // PDPT: below the PML4E
    ACC_ALL, // PML4: nothing above
  ]);
  assert.equal(w.pteAccess, ACC_USER_MASK);
  assert.equal(pt.cmpxchgCalls, 4);
});

test('a walk whose entries already have A (and D in the leaf for a write) does no cmpxchg', () => {
  const t = defaultTables();
  for (const k of ['pml4e', 'pdpte', 'pde', 'pte'] as const) t[k] |= A;
  t.pte |= D;
  const pt = new MapPt(memOf(t));
  const w = new GuestWalker();
  assert.equal(w.walk(pt, CR3, GVA, USER_WRITE, CPU_CR0_WP), true);
  assert.equal(pt.cmpxchgCalls, 0);
  assert.ok(mapsEqual(pt.mem, memOf(t)));
});

// ---------------------------------------------------------------------------
// Races: another agent changes an entry between the walker's read and its cmpxchg.
// ---------------------------------------------------------------------------

/** Guest memory where another agent rewrites entries just before chosen cmpxchg calls (1-based call numbers). */
class RacyPt extends MapPt {
  readCalls = 0;
  constructor(
    init: ReadonlyMap<number, bigint>,
    private readonly interfere: (pt: RacyPt, call: number, gpa: number) => void,
  ) {
    super(init);
  }
  override readGpte(gpa: number): bigint {
    this.readCalls++;
    return super.readGpte(gpa);
  }
  override cmpxchgGpte(gpa: number, expected: bigint, v: bigint): bigint {
    this.interfere(this, this.cmpxchgCalls + 1, gpa);
    return super.cmpxchgGpte(gpa, expected, v);
  }
}

test('a cmpxchg that fails because another agent set A in the PDE makes the walker re-walk and succeed', () => {
  const t = defaultTables();
  const pt = new RacyPt(memOf(t), (p, call, gpa) => {
    if (call === 3) {
      assert.equal(gpa, PDE_GPA);
      p.mem.set(PDE_GPA, t.pde | A);
    }
  });
  const w = new GuestWalker();
  assert.equal(w.walk(pt, CR3, GVA, USER_WRITE, CPU_CR0_WP), true);
  assert.equal(w.gfn, DATA_GFN);
  assert.equal(pt.readCalls, 8, 'two full walks of four reads');
  // First walk: PML4E, PDPTE ok, PDE fails. Second walk: PDE already has A, only the PTE is updated.
  assert.equal(pt.cmpxchgCalls, 4);
  assert.equal(pt.mem.get(PML4E_GPA), t.pml4e | A);
  assert.equal(pt.mem.get(PDPTE_GPA), t.pdpte | A);
  assert.equal(pt.mem.get(PDE_GPA), t.pde | A);
  assert.equal(pt.mem.get(PTE_GPA), t.pte | A | D);
});

test('when another agent repoints the PTE before the walker sets its A bit, the re-walk translates to the new frame', () => {
  const t = defaultTables();
  const NEW_GFN = 0x777;
  const pt = new RacyPt(memOf(t), (p, call, gpa) => {
    if (gpa === PTE_GPA && call === 4) p.mem.set(PTE_GPA, frame(NEW_GFN) | P | W | U);
  });
  const w = new GuestWalker();
  assert.equal(w.walk(pt, CR3, GVA, USER_READ, 0), true);
  assert.equal(w.gfn, NEW_GFN);
  assert.equal(pt.mem.get(PTE_GPA), frame(NEW_GFN) | P | W | U | A, 'A set in the new entry, D not (a read)');
  assert.equal(w.ptes[1], frame(NEW_GFN) | P | W | U | A);
});

test('when another agent clears P in the PTE before the walker sets its A bit, the re-walk faults with P clear', () => {
  const t = defaultTables();
  const pt = new RacyPt(memOf(t), (p, call, gpa) => {
    if (gpa === PTE_GPA && call === 4) p.mem.set(PTE_GPA, 0n);
  });
  const w = new GuestWalker();
  assert.equal(w.walk(pt, CR3, GVA, USER_WRITE, 0), false);
  assert.equal(w.errorCode, EC_W | EC_U);
  assert.equal(pt.mem.get(PTE_GPA), 0n);
});

test('when another agent write-protects the PDE before the walker sets its A bit, the re-walk of a user write faults with P|W|U', () => {
  const t = defaultTables();
  const pt = new RacyPt(memOf(t), (p, call, gpa) => {
    if (gpa === PDE_GPA && call === 3) p.mem.set(PDE_GPA, t.pde & ~W);
  });
  const w = new GuestWalker();
  assert.equal(w.walk(pt, CR3, GVA, USER_WRITE, 0), false);
  assert.equal(w.errorCode, EC_P | EC_W | EC_U);
  assert.equal(pt.mem.get(PTE_GPA), t.pte, 'the leaf was never marked accessed or dirty');
});

test('a walker object reused for a 2 MiB walk after a 4 KiB walk reports the second walk', () => {
  const w = new GuestWalker();
  assert.equal(w.walk(new MapPt(memOf(defaultTables())), CR3, GVA, USER_READ, 0), true);
  assert.equal(w.level, 1);
  const t: Tables = { ...defaultTables(), pde: frame(LARGE_GFN) | PS | P | U };
  assert.equal(w.walk(new MapPt(memOf(t)), CR3, GVA, USER_READ, 0), true);
  assert.equal(w.level, 2);
  assert.equal(w.gfn, LARGE_GFN + IDX[1]);
  assert.equal(w.pteAccess, ACC_USER_MASK | ACC_EXEC_MASK);
  assert.equal(w.tableGfn[2], PD_GFN);
  assert.equal(w.pteGpa[2], PDE_GPA);
});
