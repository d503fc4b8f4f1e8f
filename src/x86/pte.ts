// x86 page-table entry bits (4-level, 64-bit PTEs) and the helpers that test and build 64-bit entries without BigInt cost, page-fault error codes, access masks and the SDM permission rule.

// ---- guest PTE bits (Intel SDM vol. 3, 4.5) ----
export const PT_PRESENT_MASK = 1n << 0n;
export const PT_WRITABLE_MASK = 1n << 1n;
export const PT_USER_MASK = 1n << 2n;
export const PT_PWT_MASK = 1n << 3n;
export const PT_PCD_MASK = 1n << 4n;
export const PT_ACCESSED_MASK = 1n << 5n;
export const PT_DIRTY_MASK = 1n << 6n;
/** PS: in a PDE (level 2) maps a 2 MiB page, in a PDPTE (level 3) a 1 GiB page; reserved in a PML4E. */
export const PT_PAGE_SIZE_MASK = 1n << 7n;
export const PT_GLOBAL_MASK = 1n << 8n;
export const PT64_NX_MASK = 1n << 63n;

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
/** Address bits of a 4 KiB-table entry: 12..51. */
export const PT64_BASE_ADDR_MASK = ((1n << 52n) - 1n) & ~0xfffn;
/** Levels: 4 = PML4, 3 = PDPT, 2 = PD, 1 = PT. */
export const PT64_ROOT_LEVEL = 4;
export const PT64_ENT_PER_PAGE = 512;

/** Physical-address width kvmmu's guest CPU reports (CPUID.80000008H:EAX[7:0]); address bits at and above it are reserved. */
export const MAXPHYADDR = 46;
const RSVD_ADDR_MASK = ((1n << 52n) - 1n) & ~((1n << BigInt(MAXPHYADDR)) - 1n);

// ---- page-fault error code (SDM 4.7) ----
export const PFERR_PRESENT_MASK = 1 << 0;
export const PFERR_WRITE_MASK = 1 << 1;
export const PFERR_USER_MASK = 1 << 2;
export const PFERR_RSVD_MASK = 1 << 3;
export const PFERR_FETCH_MASK = 1 << 4;
export const PFERR_PK_MASK = 1 << 5;

// ---- access rights as KVM combines them (ACC_*): the bits a translation grants ----
export const ACC_EXEC_MASK = 1;
export const ACC_WRITE_MASK = 2;
export const ACC_USER_MASK = 4;
export const ACC_ALL = ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK;

// ---- guest CPU control bits that change the permission rule, packed in one number ----
export const CPU_CR0_WP = 1 << 0;
export const CPU_EFER_NX = 1 << 1;
export const CPU_CR4_SMEP = 1 << 2;
export const CPU_CR4_SMAP = 1 << 3;
/** RFLAGS.AC: with SMAP, lets an explicit supervisor data access reach a user page. */
export const CPU_RFLAGS_AC = 1 << 4;
/** The vCPU is in System Management Mode (KVM's HF_SMM_MASK): its MMU role, and so its TDP root, differ. */
export const CPU_SMM = 1 << 5;
/** CR4.PKE: protection keys for user-mode addresses (the key in bits 62:59 of the leaf, the rights in PKRU). */
export const CPU_CR4_PKE = 1 << 6;
/**
 * CR0.PG for a guest under two-dimensional paging (direct, tdp modes): the
 * processor walks the guest's own tables from CR3, then each guest-physical
 * address through the SPTEs. Shadow mode always runs the guest paged.
 */
export const CPU_CR0_PG = 1 << 7;

/** Bits 62:59 of a leaf entry: its protection key (ignored in non-leaf entries). */
export const PT64_PKEY_SHIFT = 59n;
export const PT64_PKEY_MASK = 0xfn << PT64_PKEY_SHIFT;

/** An access the guest makes: write / user / fetch as in the error code, plus `implicit` (a supervisor access by the CPU itself, never AC-exempt). */
export interface AccessKind {
  /** A data write (with `implicit`, one the processor makes itself, as to a descriptor table). */
  readonly write: boolean;
  readonly user: boolean;
  readonly fetch: boolean;
  readonly implicit?: boolean;
}

/** The error-code bits that describe an access (without P or RSVD). FETCH is reported only when NX or SMEP is on (SDM 4.7). */
export function accessErrorCode(a: AccessKind, cpu: number): number {
  let ec = 0;
  if (a.write) ec |= PFERR_WRITE_MASK;
  if (a.user) ec |= PFERR_USER_MASK;
  if (a.fetch && (cpu & (CPU_EFER_NX | CPU_CR4_SMEP)) !== 0) ec |= PFERR_FETCH_MASK;
  return ec;
}

/**
 * Does an access with rights `acc` (ACC_* bits combined over all levels) fault?
 * The SDM rule (4.6): user accesses need U, and W for writes; supervisor writes
 * need W only when CR0.WP is set; fetches need X (when EFER.NX) and, from
 * supervisor mode, SMEP forbids user pages; SMAP forbids supervisor data
 * accesses to user pages unless the access is explicit and RFLAGS.AC is set.
 */
export function isPermissionFault(acc: number, a: AccessKind, cpu: number): boolean {
  const userPage = (acc & ACC_USER_MASK) !== 0;
  if (a.fetch) {
    if ((cpu & CPU_EFER_NX) !== 0 && (acc & ACC_EXEC_MASK) === 0) return true;
    if (a.user) return !userPage;
    return (cpu & CPU_CR4_SMEP) !== 0 && userPage;
  }
  if (a.user) {
    if (!userPage) return true;
    return a.write && (acc & ACC_WRITE_MASK) === 0;
  }
  if (userPage && (cpu & CPU_CR4_SMAP) !== 0 && (a.implicit === true || (cpu & CPU_RFLAGS_AC) === 0)) return true;
  return a.write && (acc & ACC_WRITE_MASK) === 0 && (cpu & CPU_CR0_WP) !== 0;
}

// ---- 64-bit bit tests on BigInt entries ----
//
// Page-table entries are 64-bit words read as BigInts. Wrapping an operation in
// BigInt.asUintN(64, ...) changes no value (the operands are 64-bit), but lets
// V8's optimizing compiler do it on a machine word instead of allocating a
// BigInt for the result, which costs about 10 ns. The hardware walk and the
// fast path test several bits of every entry they read, so the model's own
// overhead there would otherwise dwarf the work it models.

// A BigInt becomes a Number only through a runtime call in V8 (about 10 ns),
// so the address field is read through a private scratch word instead: store
// the entry into a BigUint64Array, read its halves through a Uint32Array over
// the same bytes. Each thread has its own copy of this module, hence its own
// scratch word, and nothing runs between the store and the loads.
const scratch64 = new BigUint64Array(1);
const scratch32 = new Uint32Array(scratch64.buffer);
scratch64[0] = 1n;
if (scratch32[0] !== 1) throw new Error('pte: kvmmu assumes a little-endian host');

/** Bits 12..51 of a 64-bit entry (the frame number of a 4 KiB PTE or SPTE), as a Number. */
export function pteFrame(v: bigint): number {
  scratch64[0] = v;
  return (scratch32[0]! >>> 12) + (scratch32[1]! & 0xfffff) * 2 ** 20;
}

/**
 * A 64-bit entry from its flag bits and frame: `lowFlags` are bits 0..31
 * (outside 12..31 when there is a frame), `highFlags` bits 32..63 as a 32-bit
 * Number (outside 32..51), `frame` goes in bits 12..51. Built in the scratch
 * word, so only the result is a BigInt.
 */
export function pteFromParts(lowFlags: number, highFlags: number, frame: number): bigint {
  scratch32[0] = lowFlags | ((frame & 0xfffff) << 12);
  scratch32[1] = highFlags | (Math.floor(frame / 2 ** 20) & 0xfffff);
  return scratch64[0]!;
}

/** Is any bit of `mask` set in the 64-bit entry `v`? */
export function hasBits(v: bigint, mask: bigint): boolean {
  return BigInt.asUintN(64, v & mask) !== 0n;
}

/** `v` with the bits of `mask` set. */
export function setBits(v: bigint, mask: bigint): bigint {
  return BigInt.asUintN(64, v | mask);
}

/** `v` with the bits of `mask` clear. */
export function clearBits(v: bigint, mask: bigint): bigint {
  return BigInt.asUintN(64, v & ~mask);
}

/** The ACC_* rights one guest PTE grants (NX counts only when EFER.NX is on). */
export function gpteAccess(pte: bigint, cpu: number): number {
  let acc = 0;
  if (hasBits(pte, PT_WRITABLE_MASK)) acc |= ACC_WRITE_MASK;
  if (hasBits(pte, PT_USER_MASK)) acc |= ACC_USER_MASK;
  if ((cpu & CPU_EFER_NX) === 0 || !hasBits(pte, PT64_NX_MASK)) acc |= ACC_EXEC_MASK;
  return acc;
}

/** True when a present guest PTE at `level` sets a bit the SDM reserves (a #PF with RSVD). */
export function isRsvdGpte(pte: bigint, level: number, cpu: number): boolean {
  if ((cpu & CPU_EFER_NX) === 0 && hasBits(pte, PT64_NX_MASK)) return true;
  if (hasBits(pte, RSVD_ADDR_MASK)) return true;
  const ps = hasBits(pte, PT_PAGE_SIZE_MASK);
  if (level === 4 && ps) return true;
  if (ps && (level === 2 || level === 3)) {
    // A large page's frame must be aligned to its size; bit 12 is PAT, bits 13..(shift-1) are reserved.
    const shift = BigInt(PAGE_SHIFT + 9 * (level - 1));
    const rsvd = ((1n << shift) - 1n) & ~((1n << 13n) - 1n);
    if ((pte & rsvd) !== 0n) return true;
  }
  return false;
}

/**
 * Index of `gva` in the table at `level`. Every walk calls it at every level,
 * so it multiplies by the entry size's reciprocal (a power of two, so the
 * product is exact and equals the quotient) rather than dividing: a division
 * costs several times a multiplication.
 */
export function pteIndex(gva: number, level: number): number {
  return Math.floor(gva * LEVEL_BYTES_INV[level]!) & 511;
}

/** Bytes one entry at `level` 1..4 maps: 4 KiB, 2 MiB, 1 GiB, 512 GiB (a table, not a power: this is on every walk). */
export const LEVEL_BYTES: readonly number[] = [0, 2 ** 12, 2 ** 21, 2 ** 30, 2 ** 39];

/** 1 / LEVEL_BYTES[level], exactly. */
export const LEVEL_BYTES_INV: readonly number[] = [0, 2 ** -12, 2 ** -21, 2 ** -30, 2 ** -39];

/** Pages one entry at `level` 1..4 maps: 1, 512, 512^2, 512^3. */
export const LEVEL_PAGES: readonly number[] = [0, 1, 512, 512 ** 2, 512 ** 3];

/** The protection key of a leaf guest PTE (bits 62:59; KVM's FNAME(gpte_pkeys)). */
export function gptePkey(pte: bigint): number {
  scratch64[0] = pte;
  return (scratch32[1]! >>> 27) & 0xf;
}

/** Frame number a non-leaf or 4 KiB guest PTE points to. */
export function gpteGfn(pte: bigint): number {
  return pteFrame(pte);
}

/** First frame number of a large page mapped by a PS entry at `level` (bit 12, PAT, is not an address bit there). */
export function largeGpteGfn(pte: bigint, level: number): number {
  const shift = BigInt(PAGE_SHIFT + 9 * (level - 1));
  return Number(((pte & PT64_BASE_ADDR_MASK) >> shift) << (shift - 12n));
}
