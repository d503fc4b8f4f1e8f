// Guest page tables built in guest memory (4-level, 4 KiB and 2 MiB pages): what a guest kernel sets up before shadow paging runs it.

import {
  PT64_BASE_ADDR_MASK,
  PT_PAGE_SIZE_MASK,
  PT_PRESENT_MASK,
  PT_USER_MASK,
  PT_WRITABLE_MASK,
  pteIndex,
} from '../x86/pte';
import { KvmmuError } from '../shm/errors';
import type { Kvm } from '../kvm/kvm';

/** Flags of table entries the builder creates: present, writable, user (leaves restrict). */
const TABLE_FLAGS = PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK;

/**
 * Writes page tables into guest memory through the VMM's mapping (as a
 * bootloader would, before the vCPUs run). Table pages come from
 * [firstGfn, firstGfn + count).
 */
export class GuestPageTables {
  private next: number;
  private rootGfn = -1;

  private constructor(
    private readonly kvm: Kvm,
    readonly firstGfn: number,
    readonly count: number,
  ) {
    this.next = firstGfn;
  }

  /** Start a set of tables in [firstGfn, firstGfn + count): allocates the PML4. */
  static build(kvm: Kvm, firstGfn: number, count: number): GuestPageTables {
    const pt = new GuestPageTables(kvm, firstGfn, count);
    pt.rootGfn = pt.allocTable();
    return pt;
  }

  /** Guest frame of the PML4. */
  get root(): number {
    return this.rootGfn;
  }

  /** Guest-physical address of the PML4: the value for CR3. */
  get cr3(): number {
    return this.root * 4096;
  }

  /** Table pages used so far. */
  get used(): number {
    return this.next - this.firstGfn;
  }

  /** Map the 4 KiB page at `gva` to `gfn` with leaf `flags` (default present + writable + user). */
  map(gva: number, gfn: number, flags: bigint = TABLE_FLAGS): void {
    this.setEntry(gva, 1, (BigInt(gfn) << 12n) | flags);
  }

  /** Map the 2 MiB page at `gva` (2 MiB aligned) to the 512 frames from `gfn` (512-aligned). */
  mapLarge(gva: number, gfn: number, flags: bigint = TABLE_FLAGS): void {
    if (gva % (2 << 20) !== 0 || gfn % 512 !== 0) throw new KvmmuError('a 2 MiB mapping needs 2 MiB-aligned gva and gfn');
    this.setEntry(gva, 2, (BigInt(gfn) << 12n) | flags | PT_PAGE_SIZE_MASK);
  }

  /** Identity-map every table page (gva = gpa), so the guest can edit its own tables. Call after building. */
  mapTablesIdentity(): void {
    for (let gfn = this.firstGfn; gfn < this.firstGfn + this.count; gfn++) this.map(gfn * 4096, gfn, TABLE_FLAGS);
  }

  /** Guest-physical address of the entry at `level` that translates `gva` (the tables must exist down to it). */
  pteGpa(gva: number, level = 1): number {
    let table = this.root;
    for (let l = 4; l > level; l--) {
      const e = this.read(table, pteIndex(gva, l));
      if ((e & PT_PRESENT_MASK) === 0n) throw new Error(`guest-pt: no table at level ${l - 1} for 0x${gva.toString(16)}`);
      table = Number((e & PT64_BASE_ADDR_MASK) >> 12n);
    }
    return table * 4096 + pteIndex(gva, level) * 8;
  }

  private setEntry(gva: number, level: number, value: bigint): void {
    let table = this.root;
    for (let l = 4; l > level; l--) {
      const idx = pteIndex(gva, l);
      let e = this.read(table, idx);
      if ((e & PT_PRESENT_MASK) === 0n) {
        e = (BigInt(this.allocTable()) << 12n) | TABLE_FLAGS;
        this.write(table, idx, e);
      }
      table = Number((e & PT64_BASE_ADDR_MASK) >> 12n);
    }
    this.write(table, pteIndex(gva, level), value);
  }

  private allocTable(): number {
    if (this.next >= this.firstGfn + this.count)
      throw new KvmmuError(`guest page tables need more than the ${this.count} pages reserved for them`);
    const gfn = this.next++;
    for (let i = 0; i < 512; i++) this.write(gfn, i, 0n);
    return gfn;
  }

  private read(table: number, idx: number): bigint {
    return this.kvm.host.readUser64(this.kvm.gfnToHvpn(table), idx * 8);
  }

  private write(table: number, idx: number, v: bigint): void {
    this.kvm.host.writeUser64(this.kvm.gfnToHvpn(table), idx * 8, v);
  }
}

/** Table pages needed to map `pages` 4 KiB pages in one window plus an identity map of the tables themselves. */
export function tablePagesFor(pages: number): number {
  let r = Math.ceil(pages / 512) + Math.ceil(pages / 262144) + 6;
  r += Math.ceil(r / 512) + 4;
  return r;
}
