// Dirty logging: enable/disable on a memslot, KVM_GET_DIRTY_LOG (take, write-protect, flush, then hand over) and KVM_CLEAR_DIRTY_LOG.

import { NOTE } from '../shm/access';
import { KvmmuError } from '../shm/errors';
import { KVM_STAT, SLOT_DIRTY_LOG, type Kvm } from './kvm';

export class DirtyLog {
  constructor(private readonly kvm: Kvm) {}

  words(slot: number): number {
    return Math.ceil(this.kvm.slotPages[slot]! / 32);
  }

  isEnabled(slot: number): boolean {
    return (this.kvm.mem.load32(this.kvm.slotFlagsWord(slot)) & SLOT_DIRTY_LOG) !== 0;
  }

  /**
   * Turn on dirty logging for `slot` (KVM_MEM_LOG_DIRTY_PAGES): start from an
   * empty bitmap (or, with `initiallySet`, KVM_DIRTY_LOG_INITIALLY_SET: all bits
   * set and nothing write-protected until the first clear), set the flag so new
   * writable SPTEs are logged, then write-protect every SPTE of the slot
   * (clearing W only) and flush.
   */
  enable(slot: number, initiallySet = false): void {
    const k = this.kvm;
    this.checkSlot(slot);
    const bm = k.slotBitmap[slot]!;
    const n = this.words(slot);
    const pages = k.slotPages[slot]!;
    for (let i = 0; i < n; i++) {
      const bits = initiallySet ? (i === n - 1 && pages % 32 !== 0 ? (1 << pages % 32) - 1 : -1) : 0;
      k.mem.store32(bm + i, bits);
    }
    k.mem.fetchOr32(k.slotFlagsWord(slot), SLOT_DIRTY_LOG);
    // A memslot update waits for the faults that may have read the slot without the flag (kvm_swap_active_memslots'
    // synchronize_srcu): one of them could still map a huge page. kvmmu waits where huge pages exist; a 4 KiB fault
    // reads the flag again when it marks the page (markPageDirty).
    if (k.config.hugePages) k.srcu.synchronize();
    if (initiallySet) {
      k.mem.note(NOTE.dirtyLogState, slot, 1);
      return;
    }
    if (k.isTdp) {
      // kvm_mmu_slot_apply_flags: eager page splitting (the eager_page_split parameter), then
      // kvm_tdp_mmu_wrprot_slot, both under the read lock, with cmpxchg per SPTE, racing with faults.
      k.mem.readLock(k.mmuLock);
      if (k.config.hugePages && k.config.eagerSplit) k.tdp.splitHugePagesOfSlot(slot);
      const wrprot = k.tdp.wrprotSlot(slot);
      k.mem.readUnlock(k.mmuLock);
      if (wrprot) k.kvmFlushRemoteTlbs();
      k.tdp.reclaim();
      k.mem.note(NOTE.dirtyLogState, slot, 1);
      return;
    }
    k.mem.lock(k.mmuLock);
    let flush = false;
    const base = k.slotHvpn[slot]!;
    // kvm_mmu_slot_remove_write_access from PG_LEVEL_4K up: huge SPTEs too. No eager split here, as in KVM: the shadow
    // MMU splits eagerly only a nested MMU's huge SPTEs (shadow_mmu_try_split_huge_pages), the TDP MMU the rest.
    for (let p = 0; p < pages; p++) if (k.spte.rmapWriteProtectHvpn(base + p, false, true)) flush = true;
    k.mem.unlock(k.mmuLock);
    if (flush) k.kvmFlushRemoteTlbs();
    k.mem.note(NOTE.dirtyLogState, slot, 1);
  }

  /**
   * Turn dirty logging off; SPTEs regain W through later faults (the fast path
   * among them). With huge pages (TDP mode), once no fault still holds the
   * slot as it was (synchronize_srcu), the tables that split huge pages are
   * zapped under the read lock (kvm_mmu_zap_collapsible_sptes), so faults map
   * huge pages again.
   */
  disable(slot: number): void {
    const k = this.kvm;
    this.checkSlot(slot);
    k.mem.note(NOTE.dirtyLogState, slot, 0);
    k.mem.fetchAnd32(k.slotFlagsWord(slot), ~SLOT_DIRTY_LOG);
    if (!k.config.hugePages) return;
    k.srcu.synchronize();
    if (k.isTdp) {
      k.mem.readLock(k.mmuLock);
      k.tdp.zapCollapsibleSptes(slot);
      k.mem.readUnlock(k.mmuLock);
      k.tdp.reclaim();
      return;
    }
    // The shadow MMU (kvm_rmap_zap_collapsible_sptes): the 4 KiB SPTEs of each 2 MiB that could be mapped huge go.
    k.mem.lock(k.mmuLock);
    let flush = false;
    const base = k.slotHvpn[slot]!;
    const flags = k.mem.load32(k.slotFlagsWord(slot));
    for (let p = 0; p < k.slotPages[slot]!; p++) {
      if (k.mmu.maxMappingLevel(k.slotGfn[slot]! + p, flags) < 2) continue;
      if (k.spte.zapCollapsibleRmap(base + p)) flush = true;
    }
    k.mem.unlock(k.mmuLock);
    if (flush) k.kvmFlushRemoteTlbs();
  }

  /**
   * KVM_GET_DIRTY_LOG without manual protection: under mmu_lock take each
   * bitmap word (xchg to 0) into `out` and write-protect the gfns it names; after
   * the loop flush TLBs, and only then hand `out` to the caller — so every write
   * is reported by this get or the next: a write after the write-protection
   * faults and is logged again; one before it went through an SPTE whose gfn was
   * marked when it became writable — before the xchg (in `out`), or, for a fast
   * path that marks after its cmpxchg, just after it (in the next bitmap).
   * Returns the number of dirty pages.
   */
  get(slot: number, out: Int32Array): number {
    const k = this.kvm;
    this.checkLogging(slot, out);
    const bm = k.slotBitmap[slot]!;
    const n = this.words(slot);
    let flush = false;
    let dirty = 0;
    k.mmuLockWrite();
    for (let i = 0; i < n; i++) {
      if (k.mem.load32(bm + i) === 0) {
        out[i] = 0;
        continue;
      }
      const mask = k.mem.xchg32(bm + i, 0);
      out[i] = mask;
      if (mask === 0) continue;
      flush = true;
      dirty += this.protectMask(slot, i, mask);
    }
    k.mmuUnlockWrite();
    if (flush) k.kvmFlushRemoteTlbs();
    this.handOver(slot, 0, out.subarray(0, n));
    k.count(KVM_STAT.dirtyLogGets);
    return dirty;
  }

  /** KVM_GET_DIRTY_LOG with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: copy the bitmap, change nothing. */
  getManual(slot: number, out: Int32Array): number {
    const k = this.kvm;
    this.checkLogging(slot, out);
    const bm = k.slotBitmap[slot]!;
    let dirty = 0;
    for (let i = 0; i < this.words(slot); i++) {
      const v = k.mem.load32(bm + i);
      out[i] = v;
      dirty += popcount(v);
    }
    k.count(KVM_STAT.dirtyLogGets);
    return dirty;
  }

  /**
   * KVM_CLEAR_DIRTY_LOG: for each set bit of `bits` (covering pages from
   * `firstPage`, a multiple of 32), clear it in the bitmap if set there and
   * write-protect that gfn; flush once at the end. Returns pages cleared.
   */
  clear(slot: number, firstPage: number, bits: Int32Array): number {
    const k = this.kvm;
    this.checkSlot(slot);
    if (firstPage % 32 !== 0) throw new KvmmuError(`clear-dirty-log: first page ${firstPage} is not a multiple of 32`);
    const n = this.words(slot);
    const w0 = firstPage / 32;
    if (w0 + bits.length > n) throw new KvmmuError('clear-dirty-log: range runs past the end of the memslot');
    const bm = k.slotBitmap[slot]!;
    let flush = false;
    let cleared = 0;
    k.mmuLockWrite();
    for (let i = 0; i < bits.length; i++) {
      let mask = bits[i]!;
      if (mask === 0) continue;
      mask &= k.mem.fetchAnd32(bm + w0 + i, ~mask);
      bits[i] = mask;
      if (mask === 0) continue;
      // With KVM_DIRTY_LOG_INITIALLY_SET huge SPTEs were never write-protected: the 2 MiB leaves around the range
      // lose W and MMU-writable first (kvm_arch_mmu_enable_log_dirty_pt_masked).
      if (k.config.hugePages) {
        const g = k.slotGfn[slot]! + (w0 + i) * 32;
        for (const gfn of [g + 31 - Math.clz32(mask & -mask), g + 31 - Math.clz32(mask)])
          if (k.isTdp ? k.tdp.writeProtectHugeGfn(gfn) : k.spte.writeProtectHuge(k.gfnToHvpn(gfn))) flush = true;
      }
      flush = true;
      cleared += this.protectMask(slot, w0 + i, mask);
    }
    k.mmuUnlockWrite();
    if (flush) k.kvmFlushRemoteTlbs();
    this.handOver(slot, w0, bits);
    k.count(KVM_STAT.dirtyLogClears);
    return cleared;
  }

  /** Write-protect (dirty-logging kind: W only) the gfns named by `mask` in bitmap word `word`. Contract: mmu_lock held. */
  private protectMask(slot: number, word: number, mask: number): number {
    const k = this.kvm;
    const base = k.slotHvpn[slot]! + word * 32;
    let n = 0;
    for (let m = mask; m !== 0; m &= m - 1) {
      const b = 31 - Math.clz32(m & -m);
      if (k.isTdp) k.tdp.writeProtectGfn(k.slotGfn[slot]! + word * 32 + b);
      else k.spte.rmapWriteProtectHvpn(base + b, false);
      n++;
    }
    return n;
  }

  /**
   * Marks for the checker's monitors (nothing else): the bits `words` (bitmap words from `firstWord` of `slot`)
   * now belong to userspace — one dirtyLogTaken mark per gfn, then dirtyLogReturned for the slot. get and clear
   * call it where they return; a scenario that writes its own get calls it at the point its get would return.
   */
  handOver(slot: number, firstWord: number, words: Int32Array): void {
    const k = this.kvm;
    if (k.mem.hook === null) return;
    for (let i = 0; i < words.length; i++)
      for (let m = words[i]!; m !== 0; m &= m - 1) {
        const b = 31 - Math.clz32(m & -m);
        k.mem.note(NOTE.dirtyLogTaken, k.slotGfn[slot]! + (firstWord + i) * 32 + b, 0);
      }
    k.mem.note(NOTE.dirtyLogReturned, slot, 0);
  }

  private checkSlot(slot: number): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.kvm.nSlots) throw new KvmmuError(`no memslot ${slot}`);
  }

  private checkLogging(slot: number, out: Int32Array): void {
    this.checkSlot(slot);
    if (!this.isEnabled(slot)) throw new KvmmuError(`memslot ${slot} does not log dirty pages`);
    if (out.length < this.words(slot)) throw new KvmmuError(`dirty bitmap buffer too small: ${out.length} words for ${this.words(slot)}`);
  }
}

export function popcount(v: number): number {
  let x = v >>> 0;
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}
