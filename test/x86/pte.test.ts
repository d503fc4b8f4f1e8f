// Guest PTE helpers: the SDM permission rule, error-code bits, reserved bits, table indices and large-page frames.

import { test } from 'node:test';
import assert from 'node:assert/strict';
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
  PFERR_USER_MASK,
  PFERR_WRITE_MASK,
  PT64_BASE_ADDR_MASK,
  PT64_NX_MASK,
  PT_PAGE_SIZE_MASK,
  PT_PRESENT_MASK,
  PT_USER_MASK,
  PT_WRITABLE_MASK,
  accessErrorCode,
  gpteAccess,
  gpteGfn,
  isPermissionFault,
  isRsvdGpte,
  largeGpteGfn,
  pteIndex,
  type AccessKind,
} from '../../src/x86/pte';

const bit = (n: number): bigint => 1n << BigInt(n);

const UR: AccessKind = { write: false, user: true, fetch: false };
const UW: AccessKind = { write: true, user: true, fetch: false };
const UF: AccessKind = { write: false, user: true, fetch: true };
const SR: AccessKind = { write: false, user: false, fetch: false };
const SW: AccessKind = { write: true, user: false, fetch: false };
const SF: AccessKind = { write: false, user: false, fetch: true };
const SR_IMPLICIT: AccessKind = { ...SR, implicit: true };
const SW_IMPLICIT: AccessKind = { ...SW, implicit: true };

const X = ACC_EXEC_MASK;
const Wr = ACC_WRITE_MASK;
const Us = ACC_USER_MASK;

test('guest PTE bit masks are at their SDM positions', () => {
  assert.deepEqual(
    [PT_PRESENT_MASK, PT_WRITABLE_MASK, PT_USER_MASK, PT_PAGE_SIZE_MASK, PT64_NX_MASK, PT64_BASE_ADDR_MASK],
    [bit(0), bit(1), bit(2), bit(7), bit(63), (bit(52) - 1n) & ~0xfffn],
  );
});

test('isPermissionFault follows SDM 4.6 for user and supervisor reads, writes and fetches', () => {
  const cases: Array<[string, number, AccessKind, number, boolean]> = [
    // [what, acc, access, cpu, faults]
    ['user read of a user page', Us | X, UR, CPU_CR0_WP, false],
    ['user read of a supervisor page', Wr | X, UR, 0, true],
    ['user write to a read-only user page, WP clear', Us | X, UW, 0, true],
    ['user write to a read-only user page, WP set', Us | X, UW, CPU_CR0_WP, true],
    ['user write to a writable user page', ACC_ALL, UW, CPU_CR0_WP, false],
    ['supervisor write to a read-only page, WP clear', X, SW, 0, false],
    ['supervisor write to a read-only page, WP set', X, SW, CPU_CR0_WP, true],
    ['supervisor write to a read-only user page, WP clear', Us | X, SW, 0, false],
    ['supervisor read of a user page, no SMAP', Us, SR, 0, false],
    ['supervisor read of a user page, SMAP, AC clear', Us | X, SR, CPU_CR4_SMAP, true],
    ['supervisor read of a user page, SMAP, AC set', Us | X, SR, CPU_CR4_SMAP | CPU_RFLAGS_AC, false],
    ['implicit supervisor read of a user page, SMAP, AC set', Us | X, SR_IMPLICIT, CPU_CR4_SMAP | CPU_RFLAGS_AC, true],
    ['implicit supervisor write of a user page, SMAP, AC set', ACC_ALL, SW_IMPLICIT, CPU_CR4_SMAP | CPU_RFLAGS_AC, true],
    ['implicit supervisor read of a user page, no SMAP', Us | X, SR_IMPLICIT, CPU_RFLAGS_AC, false],
    ['implicit supervisor read of a supervisor page, SMAP', X, SR_IMPLICIT, CPU_CR4_SMAP, false],
    ['supervisor write to a read-only user page, SMAP with AC, WP set', Us | X, SW, CPU_CR4_SMAP | CPU_RFLAGS_AC | CPU_CR0_WP, true],
    ['user fetch from an NX user page, EFER.NX', Us | Wr, UF, CPU_EFER_NX, true],
    ['user fetch from an executable user page, EFER.NX', Us | X, UF, CPU_EFER_NX, false],
    ['user fetch from a supervisor page', X | Wr, UF, 0, true],
    ['supervisor fetch from a user page, no SMEP', Us | X, SF, 0, false],
    ['supervisor fetch from a user page, SMEP', Us | X, SF, CPU_CR4_SMEP, true],
    ['supervisor fetch from a supervisor page, SMEP', X, SF, CPU_CR4_SMEP, false],
    ['supervisor fetch from an NX supervisor page, EFER.NX', Wr, SF, CPU_EFER_NX, true],
    ['supervisor fetch from a user page, SMAP only (SMAP is for data)', Us | X, SF, CPU_CR4_SMAP, false],
    ['supervisor fetch from a read-only page, WP (writes only)', X, SF, CPU_CR0_WP, false],
  ];
  for (const [what, acc, a, cpu, faults] of cases) assert.equal(isPermissionFault(acc, a, cpu), faults, what);
});

test('gpteAccess grants W and U from the entry and drops X for an NX entry only under EFER.NX', () => {
  assert.equal(gpteAccess(PT64_NX_MASK | PT_PRESENT_MASK, 0), X);
  assert.equal(gpteAccess(PT64_NX_MASK | PT_PRESENT_MASK, CPU_EFER_NX), 0);
  assert.equal(gpteAccess(PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK, CPU_EFER_NX), ACC_ALL);
  assert.equal(gpteAccess(PT_PRESENT_MASK, CPU_EFER_NX), X);
});

test('accessErrorCode sets W and U from the access and FETCH only when EFER.NX or CR4.SMEP is on', () => {
  assert.equal(accessErrorCode(SR, ~0 >>> 0), 0);
  assert.equal(accessErrorCode(UW, 0), PFERR_WRITE_MASK | PFERR_USER_MASK);
  assert.equal(accessErrorCode(SW_IMPLICIT, CPU_CR4_SMAP), PFERR_WRITE_MASK, 'implicit is not in the error code');
  for (const a of [UF, SF]) {
    const u = a.user ? PFERR_USER_MASK : 0;
    assert.equal(accessErrorCode(a, 0), u);
    assert.equal(accessErrorCode(a, CPU_CR0_WP | CPU_CR4_SMAP | CPU_RFLAGS_AC), u);
    assert.equal(accessErrorCode(a, CPU_EFER_NX), u | PFERR_FETCH_MASK);
    assert.equal(accessErrorCode(a, CPU_CR4_SMEP), u | PFERR_FETCH_MASK);
    assert.equal(accessErrorCode(a, CPU_EFER_NX | CPU_CR4_SMEP), u | PFERR_FETCH_MASK);
  }
});

const PS = PT_PAGE_SIZE_MASK;
const PRESENT = PT_PRESENT_MASK | PT_WRITABLE_MASK;

test('isRsvdGpte: a 2 MiB PDE reserves frame bits 13..20, not PAT (bit 12) nor bit 21', () => {
  for (let b = 13; b <= 20; b++) assert.equal(isRsvdGpte(PRESENT | PS | bit(b), 2, CPU_EFER_NX), true, `bit ${b}`);
  assert.equal(isRsvdGpte(PRESENT | PS | bit(12), 2, CPU_EFER_NX), false, 'PAT');
  assert.equal(isRsvdGpte(PRESENT | PS | bit(21), 2, CPU_EFER_NX), false);
  // Without PS the same bits are table-address bits.
  for (let b = 12; b <= 20; b++) assert.equal(isRsvdGpte(PRESENT | bit(b), 2, 0), false, `no PS, bit ${b}`);
});

test('isRsvdGpte: a 1 GiB PDPTE reserves frame bits 13..29, not PAT (bit 12) nor bit 30', () => {
  for (let b = 13; b <= 29; b++) assert.equal(isRsvdGpte(PRESENT | PS | bit(b), 3, 0), true, `bit ${b}`);
  assert.equal(isRsvdGpte(PRESENT | PS | bit(12), 3, 0), false, 'PAT');
  assert.equal(isRsvdGpte(PRESENT | PS | bit(30), 3, 0), false);
  for (let b = 12; b <= 29; b++) assert.equal(isRsvdGpte(PRESENT | bit(b), 3, 0), false, `no PS, bit ${b}`);
});

test('isRsvdGpte: PS is reserved in a PML4E; in a PTE bit 7 is PAT', () => {
  assert.equal(isRsvdGpte(PRESENT | PS, 4, CPU_EFER_NX), true);
  assert.equal(isRsvdGpte(PRESENT | PS, 1, CPU_EFER_NX), false);
  assert.equal(isRsvdGpte(PRESENT | PS | bit(13), 1, CPU_EFER_NX), false, 'bit 13 is an address bit of a PTE');
});

test('isRsvdGpte: NX is reserved at every level unless EFER.NX; address bits from MAXPHYADDR to 51 are reserved; bits 52..62 are not', () => {
  for (let level = 1; level <= 4; level++) {
    assert.equal(isRsvdGpte(PRESENT | PT64_NX_MASK, level, 0), true, `NX level ${level}`);
    assert.equal(isRsvdGpte(PRESENT | PT64_NX_MASK, level, CPU_EFER_NX), false, `NX+NXE level ${level}`);
    for (let b = MAXPHYADDR; b <= 51; b++)
      assert.equal(isRsvdGpte(PRESENT | bit(b), level, CPU_EFER_NX), true, `level ${level} bit ${b}`);
    assert.equal(isRsvdGpte(PRESENT | bit(MAXPHYADDR - 1), level, 0), false, `level ${level} bit ${MAXPHYADDR - 1}`);
    for (let b = 52; b <= 62; b++) assert.equal(isRsvdGpte(PRESENT | bit(b), level, 0), false, `level ${level} bit ${b}`);
    assert.equal(isRsvdGpte(PRESENT | (0xfffn & ~PS), level, 0), false, `level ${level} low flag bits`);
  }
});

test('pteIndex picks the 9-bit index of each level from the gva and ignores the page offset', () => {
  const idx = [0, 0x1a3, 0x0, 0x1ff, 0x12];
  const gva = idx[4]! * 2 ** 39 + idx[3]! * 2 ** 30 + idx[2]! * 2 ** 21 + idx[1]! * 2 ** 12 + 0xfff;
  for (let level = 1; level <= 4; level++) assert.equal(pteIndex(gva, level), idx[level], `level ${level}`);
  for (let level = 1; level <= 4; level++) assert.equal(pteIndex(2 ** 48 - 1, level), 511, `top of the 48-bit space, level ${level}`);
  for (let level = 1; level <= 4; level++) assert.equal(pteIndex(0xfff, level), 0);
  assert.equal(pteIndex(0x1000, 1), 1);
  assert.equal(pteIndex(0x20_0000, 2), 1);
  assert.equal(pteIndex(0x20_0000, 1), 0);
});

test('gpteGfn reads address bits 12..51; largeGpteGfn drops PAT and the bits below the page size', () => {
  assert.equal(gpteGfn(PRESENT | PT64_NX_MASK | (0x12345n << 12n)), 0x12345);
  assert.equal(gpteGfn(PRESENT | ((bit(40) - 1n) << 12n) | bit(52)), 2 ** 40 - 1);
  const large = PRESENT | PS | bit(12) | ((0x200n * 0x37n) << 12n);
  assert.equal(largeGpteGfn(large, 2), 0x200 * 0x37);
  assert.equal(largeGpteGfn(large | PT64_NX_MASK, 2), 0x200 * 0x37);
  const huge = PRESENT | PS | bit(12) | (BigInt(0x40000 * 3) << 12n);
  assert.equal(largeGpteGfn(huge, 3), 0x40000 * 3);
  assert.equal(largeGpteGfn(PRESENT | PS | bit(51), 2), 2 ** 39);
});
