// KVM's permission check for a guest walk (mmu.h permission_fault over the bitmaps update_permission_bitmask and update_pkru_bitmask build per control-bit setting): which ACC_* rights fault for which access, and protection keys.
//
// Both bitmaps are indexed by an access's error-code bits shifted right by one:
//   index bit 0: write     bit 1: user     bit 2: (see below)     bit 3: fetch
// The error code's RSVD position (bit 3, index bit 2) never describes an
// access, so each bitmap reuses it: the permission bitmap for "SMAP is
// overridden" (an explicit supervisor access with RFLAGS.AC), the PKRU bitmap
// for "the translation is a user page".

import {
  ACC_EXEC_MASK,
  ACC_USER_MASK,
  ACC_WRITE_MASK,
  CPU_CR0_WP,
  CPU_CR4_PKE,
  CPU_CR4_SMAP,
  CPU_CR4_SMEP,
  CPU_RFLAGS_AC,
  PFERR_FETCH_MASK,
  PFERR_PK_MASK,
  PFERR_PRESENT_MASK,
  PFERR_RSVD_MASK,
  PFERR_USER_MASK,
  PFERR_WRITE_MASK,
  type AccessKind,
} from './pte';

/** The control bits the two bitmaps depend on (RFLAGS.AC and the rest are read per access). */
const BITMAP_CPU_BITS = CPU_CR0_WP | CPU_CR4_SMEP | CPU_CR4_SMAP | CPU_CR4_PKE;

/**
 * KVM's update_permission_bitmask: for each of the 16 access indexes, a byte
 * whose bit `a` says that rights `a` (ACC_* 0..7, combined over the levels)
 * fault. The SDM's rules (4.6): a user access needs U, a user write W, every
 * fetch X (X is clear only where EFER.NX made XD count); a supervisor write
 * needs W when CR0.WP is set; SMEP forbids supervisor fetches from user
 * pages; SMAP forbids supervisor data accesses to user pages unless the index
 * says SMAP is overridden.
 */
export function updatePermissionBitmask(cpu: number): Uint8Array {
  const wp = (cpu & CPU_CR0_WP) !== 0;
  const smep = (cpu & CPU_CR4_SMEP) !== 0;
  const smap = (cpu & CPU_CR4_SMAP) !== 0;
  const permissions = new Uint8Array(16);
  for (let index = 0; index < 16; index++) {
    const write = (index & 1) !== 0;
    const user = (index & 2) !== 0;
    const smapOverridden = (index & 4) !== 0;
    const fetch = (index & 8) !== 0;
    let faults = 0;
    for (let acc = 0; acc < 8; acc++) {
      const x = (acc & ACC_EXEC_MASK) !== 0;
      const w = (acc & ACC_WRITE_MASK) !== 0;
      const u = (acc & ACC_USER_MASK) !== 0;
      let fault: boolean;
      if (user) fault = !u || (write && !w) || (fetch && !x);
      else if (fetch) fault = !x || (smep && u);
      else fault = (write && !w && wp) || (smap && u && !smapOverridden);
      if (fault) faults |= 1 << acc;
    }
    permissions[index] = faults;
  }
  return permissions;
}

/**
 * KVM's update_pkru_bitmask: two bits for each access index (at bit
 * `index * 2`, the error code of the access with the RSVD position meaning
 * "user page"): the low one says PKRU's access-disable bit for the page's key
 * applies, the high one that its write-disable bit does. Zero without CR4.PKE.
 * Keys apply to data accesses to user pages only; write-disable stops user
 * writes, and supervisor writes only while CR0.WP is set.
 */
export function updatePkruBitmask(cpu: number): number {
  if ((cpu & CPU_CR4_PKE) === 0) return 0;
  const wp = (cpu & CPU_CR0_WP) !== 0;
  let mask = 0;
  for (let index = 0; index < 16; index++) {
    const write = (index & 1) !== 0;
    const user = (index & 2) !== 0;
    const userPage = (index & 4) !== 0;
    const fetch = (index & 8) !== 0;
    const checkPkey = !fetch && userPage;
    const checkWrite = checkPkey && write && (user || wp);
    mask |= ((checkPkey ? 1 : 0) | (checkWrite ? 2 : 0)) << (index * 2);
  }
  return mask >>> 0;
}

/** The two bitmaps for one setting of the control bits (KVM keeps them in struct kvm_mmu, rebuilt when CR0/CR4 change). */
export interface MmuPermissions {
  readonly permissions: Uint8Array;
  readonly pkruMask: number;
}

/** Built once per setting of BITMAP_CPU_BITS (there are 16), so a walk only indexes them. */
const byCpu: (MmuPermissions | undefined)[] = [];

export function mmuPermissions(cpu: number): MmuPermissions {
  const key = cpu & BITMAP_CPU_BITS;
  let p = byCpu[key];
  if (p === undefined) {
    p = { permissions: updatePermissionBitmask(key), pkruMask: updatePkruBitmask(key) };
    byCpu[key] = p;
  }
  return p;
}

/**
 * KVM's permission_fault: does access `a` through a translation with rights
 * `pteAccess` (ACC_*, combined over the levels) and leaf protection key
 * `pteKey` fault under control bits `cpu` and PKRU `pkru`?
 *
 * Returns 0, or the error-code bits the fault adds to the access's own:
 * PRESENT, and PK when PKRU's bits for the key denied it (even if the rights
 * denied it too). SMAP is overridden only for an explicit access with
 * RFLAGS.AC set; an implicit supervisor access (the processor's own, such as a
 * descriptor-table read) is never exempt.
 */
export function permissionFault(cpu: number, pkru: number, pteAccess: number, pteKey: number, a: AccessKind): number {
  const mmu = mmuPermissions(cpu);
  const smapOverridden = (cpu & CPU_RFLAGS_AC) !== 0 && a.implicit !== true;
  const pfec = (a.write ? PFERR_WRITE_MASK : 0) | (a.user ? PFERR_USER_MASK : 0) | (a.fetch ? PFERR_FETCH_MASK : 0);
  let fault = (mmu.permissions[(pfec | (smapOverridden ? PFERR_RSVD_MASK : 0)) >> 1]! >> pteAccess) & 1;
  let ec = PFERR_PRESENT_MASK;
  if (mmu.pkruMask !== 0) {
    // The key's AD bit is at 2 * key, its WD bit just above: keep the ones this access is subject to.
    const offset = pfec | ((pteAccess & ACC_USER_MASK) !== 0 ? PFERR_RSVD_MASK : 0);
    const pkruBits = (pkru >>> (pteKey * 2)) & 3 & (mmu.pkruMask >>> offset);
    if (pkruBits !== 0) {
      fault = 1;
      ec |= PFERR_PK_MASK;
    }
  }
  return fault !== 0 ? ec : 0;
}
