// Reverse maps: for each gfn the SPTEs that map it, and for each shadow page the SPTEs that point to it (KVM's pte_list).
//
// A pte_list head is one Int32 word:
//   0        empty
//   > 0      one SPTE: sptep + 1
//   < 0      a chain of descriptors starting at desc -(head) - 1
// A descriptor is DESC_WORDS Int32 words: [0] next (same encoding as a chain
// head, 0 at the end), [1..7] sptep + 1 or 0 for an empty slot.
//
// Regions: kvm.rmap (one head per gfn, indexed by hvpn), kvm.rmapHuge (one head
// per 2 MiB of host pages, for huge SPTEs: KVM's rmap at PG_LEVEL_2M), kvm.pteDesc
// (descriptors), kvm.pteDescFree ([0] depth, [1..] free descriptors).
// Only mmu_lock holders touch any of it (plain accesses via Kvm.locked*).

import { region, type LayoutBuilder } from '../shm/layout';
import type { VmConfig } from './config';
import { totalPages, type Kvm } from './kvm';

const DESC_WORDS = 8;
const DESC_SLOTS = DESC_WORDS - 1;

function descCount(c: VmConfig): number {
  return c.mode === 'shadow' ? Math.max(256, Math.ceil(totalPages(c) / 2)) : 256;
}

export function reserveRmaps(b: LayoutBuilder, c: VmConfig): void {
  const n = descCount(c);
  b.meta('kvm.rmap', totalPages(c) * 4);
  b.meta('kvm.rmapHuge', Math.ceil(totalPages(c) / 512) * 4);
  b.meta('kvm.pteDesc', n * DESC_WORDS * 4);
  b.meta('kvm.pteDescFree', (n + 1) * 4);
}

export class Rmaps {
  readonly rmapBase: number;
  private readonly rmapHugeBase: number;
  private readonly descBase: number;
  private readonly freeBase: number;
  private readonly nDesc: number;

  constructor(private readonly kvm: Kvm) {
    this.rmapBase = region(kvm.layout, 'kvm.rmap').off / 4;
    this.rmapHugeBase = region(kvm.layout, 'kvm.rmapHuge').off / 4;
    this.descBase = region(kvm.layout, 'kvm.pteDesc').off / 4;
    this.freeBase = region(kvm.layout, 'kvm.pteDescFree').off / 4;
    this.nDesc = descCount(kvm.config);
  }

  init(): void {
    const a = this.kvm.mem.i32;
    a[this.freeBase] = this.nDesc;
    for (let k = 0; k < this.nDesc; k++) a[this.freeBase + 1 + k] = this.nDesc - 1 - k;
  }

  /** Head word of `gfn`'s rmap, by its hvpn. */
  rmapHead(hvpn: number): number {
    return this.rmapBase + hvpn;
  }

  /** Head word of the rmap of the huge SPTEs mapping the 2 MiB that holds `hvpn` (a huge page is 512-aligned in host memory). */
  rmapHugeHead(hvpn: number): number {
    return this.rmapHugeBase + Math.floor(hvpn / 512);
  }

  private desc(d: number, slot: number): number {
    return this.descBase + d * DESC_WORDS + slot;
  }

  /** Add `sptep` to the list at `head`; false if the descriptor pool is empty (nothing changed). */
  add(head: number, sptep: number): boolean {
    const k = this.kvm;
    const h = k.lockedLoad(head);
    if (h === 0) {
      k.lockedStore(head, sptep + 1);
      return true;
    }
    if (h > 0) {
      const d = this.allocDesc();
      if (d < 0) return false;
      k.lockedStore(this.desc(d, 1), h);
      k.lockedStore(this.desc(d, 2), sptep + 1);
      k.lockedStore(head, -d - 1);
      return true;
    }
    // Find a free slot along the chain, else prepend a new descriptor.
    for (let d = -h - 1; ; ) {
      for (let s = 1; s <= DESC_SLOTS; s++) {
        if (k.lockedLoad(this.desc(d, s)) === 0) {
          k.lockedStore(this.desc(d, s), sptep + 1);
          return true;
        }
      }
      const next = k.lockedLoad(this.desc(d, 0));
      if (next === 0) break;
      d = -next - 1;
    }
    const d = this.allocDesc();
    if (d < 0) return false;
    k.lockedStore(this.desc(d, 0), h);
    k.lockedStore(this.desc(d, 1), sptep + 1);
    k.lockedStore(head, -d - 1);
    return true;
  }

  /** Remove `sptep` from the list at `head`; throws if it is not there (an rmap bug). */
  remove(head: number, sptep: number): void {
    const k = this.kvm;
    const h = k.lockedLoad(head);
    if (h === sptep + 1) {
      k.lockedStore(head, 0);
      return;
    }
    let prevLink = head;
    for (let link = h; link < 0; ) {
      const d = -link - 1;
      for (let s = 1; s <= DESC_SLOTS; s++) {
        if (k.lockedLoad(this.desc(d, s)) !== sptep + 1) continue;
        k.lockedStore(this.desc(d, s), 0);
        if (this.descEmpty(d)) {
          k.lockedStore(prevLink, k.lockedLoad(this.desc(d, 0)));
          this.freeDesc(d);
        }
        this.shrink(head);
        return;
      }
      prevLink = this.desc(d, 0);
      link = k.lockedLoad(prevLink);
    }
    throw new Error(`rmap: sptep ${sptep} is not in the list at word ${head}`);
  }

  /** A chain left with a single entry in a single descriptor goes back to the one-word form. */
  private shrink(head: number): void {
    const k = this.kvm;
    const h = k.lockedLoad(head);
    if (h >= 0) return;
    const d = -h - 1;
    if (k.lockedLoad(this.desc(d, 0)) !== 0) return;
    let only = 0;
    for (let s = 1; s <= DESC_SLOTS; s++) {
      const v = k.lockedLoad(this.desc(d, s));
      if (v === 0) continue;
      if (only !== 0) return;
      only = v;
    }
    k.lockedStore(head, only);
    this.freeDesc(d);
  }

  private descEmpty(d: number): boolean {
    for (let s = 1; s <= DESC_SLOTS; s++) if (this.kvm.lockedLoad(this.desc(d, s)) !== 0) return false;
    return true;
  }

  /** The SPTEs on the list at `head`, into `out`; returns how many. */
  collect(head: number, out: number[]): number {
    const k = this.kvm;
    const h = k.lockedLoad(head);
    if (h === 0) return 0;
    if (h > 0) {
      out[0] = h - 1;
      return 1;
    }
    let n = 0;
    for (let link = h; link < 0; ) {
      const d = -link - 1;
      for (let s = 1; s <= DESC_SLOTS; s++) {
        const v = k.lockedLoad(this.desc(d, s));
        if (v !== 0) out[n++] = v - 1;
      }
      link = k.lockedLoad(this.desc(d, 0));
    }
    return n;
  }

  isEmpty(head: number): boolean {
    return this.kvm.lockedLoad(head) === 0;
  }

  private allocDesc(): number {
    const k = this.kvm;
    const depth = k.lockedLoad(this.freeBase);
    if (depth === 0) return -1;
    const d = k.lockedLoad(this.freeBase + depth);
    k.lockedStore(this.freeBase, depth - 1);
    for (let s = 0; s < DESC_WORDS; s++) k.lockedStore(this.desc(d, s), 0);
    return d;
  }

  private freeDesc(d: number): void {
    const k = this.kvm;
    const depth = k.lockedLoad(this.freeBase);
    k.lockedStore(this.freeBase + depth + 1, d);
    k.lockedStore(this.freeBase, depth + 1);
  }
}
