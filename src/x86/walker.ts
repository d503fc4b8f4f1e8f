// The guest page-table walker (KVM's paging_tmpl.h walk_addr): 4-level x86-64 paging with 2 MiB / 1 GiB pages, SDM permissions, A/D updates.

import {
  ACC_ALL,
  PFERR_PRESENT_MASK,
  PFERR_RSVD_MASK,
  PT_ACCESSED_MASK,
  PT_DIRTY_MASK,
  PT_PAGE_SIZE_MASK,
  PT_PRESENT_MASK,
  LEVEL_BYTES,
  LEVEL_PAGES,
  accessErrorCode,
  gpteAccess,
  gpteGfn,
  gptePkey,
  hasBits,
  isRsvdGpte,
  largeGpteGfn,
  pteIndex,
  type AccessKind,
} from './pte';
import { permissionFault } from './permission';

/**
 * How the walker reads and updates guest page-table entries, by guest-physical
 * address. The kvm layer implements it over memslots and host frames (and
 * marks a table's gfn dirty when it sets A/D there, as KVM does); tests
 * implement it over a plain array.
 */
export interface GuestPtAccess {
  readGpte(gpa: number): bigint;
  /** Returns the old value; the exchange happened iff it equals `expected`. */
  cmpxchgGpte(gpa: number, expected: bigint, v: bigint): bigint;
}

/**
 * One walk's result (KVM's struct guest_walker). A vCPU reuses one object.
 * Arrays are indexed by level (1..4); entries below `level` are not used.
 */
export class GuestWalker {
  /** Level of the leaf entry: 1 (4 KiB), 2 (2 MiB) or 3 (1 GiB). */
  level = 0;
  /** Guest frame the address translates to. */
  gfn = 0;
  /** Guest frame of the table read at each level. */
  readonly tableGfn: number[] = [0, 0, 0, 0, 0];
  /** Guest-physical address of the entry read at each level. */
  readonly pteGpa: number[] = [0, 0, 0, 0, 0];
  /** The entry read at each level (after the walker's own A/D update). */
  readonly ptes: bigint[] = [0n, 0n, 0n, 0n, 0n];
  /** ACC_* rights of the entries above each level's table: the rights a shadow page for that table may grant. */
  readonly tableAccess: number[] = [0, 0, 0, 0, 0];
  /** ACC_* rights of the whole translation. */
  pteAccess = 0;
  /** Protection key of the leaf (bits 62:59; it counts only with CR4.PKE, for user pages). */
  pteKey = 0;
  /** Page-fault error code when the walk faulted. */
  errorCode = 0;
  /**
   * The aligned group of 8 leaf entries around the leaf, as the fault path
   * last re-read them (KVM's prefetch_ptes, which FNAME(gpte_changed) fills
   * and FNAME(pte_prefetch) maps from); `prefetchPteBytes` views the same memory.
   */
  readonly prefetchPtes = new BigUint64Array(8);
  readonly prefetchPteBytes = new Uint8Array(this.prefetchPtes.buffer);

  /**
   * Translate `gva` for access `a` with CR3 = `cr3` (the PML4's guest-physical
   * address) under control bits `cpu` (CPU_* in pte.ts) and PKRU `pkru`
   * (with CR4.PKE, the rights of each protection key).
   *
   * Returns true on success, with A set in every entry used and D in the leaf
   * for a write; false on a fault, with `errorCode` set and no entry changed.
   */
  walk(pt: GuestPtAccess, cr3: number, gva: number, a: AccessKind, cpu: number, pkru = 0): boolean {
    const accessEc = accessErrorCode(a, cpu);
    // As KVM's walk_addr_generic: if an entry changed under us before our A/D update, walk again (no bound:
    // only a guest rewriting its own tables endlessly keeps this going).
    for (;;) {
      let acc = ACC_ALL;
      let table = Math.floor(cr3 / 4096);
      let level = 4;
      for (;;) {
        this.tableAccess[level] = acc;
        this.tableGfn[level] = table;
        const gpa = table * 4096 + pteIndex(gva, level) * 8;
        const pte = pt.readGpte(gpa);
        this.ptes[level] = pte;
        this.pteGpa[level] = gpa;
        if (!hasBits(pte, PT_PRESENT_MASK)) {
          this.errorCode = accessEc;
          return false;
        }
        if (isRsvdGpte(pte, level, cpu)) {
          this.errorCode = PFERR_PRESENT_MASK | PFERR_RSVD_MASK | accessEc;
          return false;
        }
        acc &= gpteAccess(pte, cpu);
        if (level === 1) {
          this.gfn = gpteGfn(pte);
          break;
        }
        if (level <= 3 && hasBits(pte, PT_PAGE_SIZE_MASK)) {
          this.gfn = largeGpteGfn(pte, level) + (Math.floor(gva / LEVEL_BYTES[1]!) % LEVEL_PAGES[level]!);
          break;
        }
        table = gpteGfn(pte);
        level--;
      }
      this.level = level;
      this.pteAccess = acc;
      this.pteKey = gptePkey(this.ptes[level]!);
      const fault = permissionFault(cpu, pkru, acc, this.pteKey, a);
      if (fault !== 0) {
        this.errorCode = fault | accessEc;
        return false;
      }
      if (this.setAccessedDirty(pt, a.write)) return true;
    }
  }

  /** Set A in every entry used and D in the leaf (on a write), each by cmpxchg; false if an entry changed (walk again). */
  private setAccessedDirty(pt: GuestPtAccess, write: boolean): boolean {
    for (let level = 4; level >= this.level; level--) {
      const pte = this.ptes[level]!;
      let want = pte | PT_ACCESSED_MASK;
      if (write && level === this.level) want |= PT_DIRTY_MASK;
      if (want === pte) continue;
      if (pt.cmpxchgGpte(this.pteGpa[level]!, pte, want) !== pte) return false;
      this.ptes[level] = want;
    }
    return true;
  }
}
