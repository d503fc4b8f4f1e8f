// KVM's tdp_iter: a pre-order walk over the TDP page tables below a root for a gfn range, reading each entry through the access layer and re-reading it before stepping down.
//
// The iterator keeps the value it read at the current entry (oldSpte), so a
// caller can change the entry with that value as the expected old one, and it
// steps down into a table only if the entry, read again, still points to one
// (KVM's try_step_down): a table another thread unlinked meanwhile is left to
// whoever unlinked it.
//
// Contract: the caller is inside an RCU read section or holds mmu_lock for
// write, so no table it walks is freed under it.

import type { Kvm } from './kvm';
import { isLastSpte, isShadowPresentPte, pagesPerSpte, spteToChild } from '../x86/spte';

export class TdpIter {
  /** Current level (1..4). */
  level = 4;
  /** Current entry, and the value last read there (KVM's iter->old_spte). */
  sptep = -1;
  oldSpte = 0n;
  /** The first gfn the current entry maps. */
  gfn = 0;
  /** False once the walk has passed its range. */
  valid = false;
  private readonly tables = [0, 0, 0, 0, 0];
  private start = 0;
  private end = 0;
  private minLevel = 1;

  constructor(private readonly kvm: Kvm) {}

  /** Walk the entries of `root` down to `minLevel` that map gfns in [start, end), starting at the top. */
  begin(root: number, start: number, end: number, minLevel = 1): void {
    this.tables[4] = root;
    this.level = 4;
    this.start = start;
    this.end = end;
    this.minLevel = minLevel;
    this.parentSptep = -1;
    this.gfn = alignDown(start, pagesPerSpte(4));
    this.valid = start < end;
    if (this.valid) this.read();
  }

  /** Re-read the current entry (after a failed cmpxchg, say). */
  refresh(): void {
    this.oldSpte = this.kvm.mem.load64(this.sptep);
  }

  /** The next entry in pre-order: into the current entry's table if it still points to one, else onwards. */
  next(): void {
    if (this.tryStepDown()) return;
    for (;;) {
      const span = pagesPerSpte(this.level);
      const nextGfn = this.gfn + span;
      if (nextGfn >= this.end) {
        this.valid = false;
        return;
      }
      if (nextGfn % (span * 512) === 0) {
        if (this.level === 4) {
          this.valid = false;
          return;
        }
        // The end of this table: continue after the parent entry.
        this.level++;
        this.gfn = alignDown(this.gfn, pagesPerSpte(this.level));
        continue;
      }
      this.gfn = nextGfn;
      this.read();
      return;
    }
  }

  private read(): void {
    const span = pagesPerSpte(this.level);
    this.sptep = this.kvm.pages.sptep(this.tables[this.level]!, Math.floor(this.gfn / span) % 512);
    this.oldSpte = this.kvm.mem.load64(this.sptep);
  }

  /**
   * Step down into the current entry's table, as next() would, but nowhere
   * else: false when the entry, read again, no longer points to a table (the
   * walker's view is stale: a fault then retries). The parent entry and the
   * value it was entered by stay in parentSptep / parentSpte.
   */
  stepDown(): boolean {
    const sptep = this.sptep;
    if (!this.tryStepDown()) return false;
    this.parentSptep = sptep;
    this.parentSpte = this.entered;
    return true;
  }

  /** The entry the walk last stepped down through with stepDown(), and its value then. */
  parentSptep = -1;
  parentSpte = 0n;
  private entered = 0n;

  private tryStepDown(): boolean {
    if (this.level <= this.minLevel) return false;
    if (!isShadowPresentPte(this.oldSpte) || isLastSpte(this.oldSpte, this.level)) return false;
    const spte = this.kvm.mem.load64(this.sptep);
    if (!isShadowPresentPte(spte) || isLastSpte(spte, this.level)) {
      this.oldSpte = spte;
      return false;
    }
    this.entered = spte;
    this.level--;
    this.tables[this.level] = spteToChild(spte);
    this.gfn = alignDown(Math.max(this.gfn, this.start), pagesPerSpte(this.level));
    this.read();
    return true;
  }
}

function alignDown(gfn: number, span: number): number {
  return gfn - (gfn % span);
}
