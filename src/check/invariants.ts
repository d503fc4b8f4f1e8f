// The checker's built-in invariants for VM scenarios: monitors that watch each execution's steps and ghost notes and read shared state directly.
//
// They read the machine through a handle of the normal (not generator) build
// and plain typed-array reads, so watching changes nothing and is not a
// scheduling point. But a read is a read: what a monitor reads at a mark or
// after a step belongs to the step that is running, and DPOR must order that
// step against every write of what it read, or it may explore only the order in
// which the monitor looks before the write that breaks the invariant (the
// scenario then reads as "exhaustive, clean"). So every read below goes through
// the Observer, which declares it to the engine (Footprint), and every piece of
// a monitor's own state that another thread's mark changes is a ghost location
// declared the same way. Each monitor's comment says what it reads and writes.
// Reads at the end of an execution (atEnd) need no declaring: DPOR's
// equivalent executions end in the same state.

import { Mem, NOTE, OP } from '../shm/access';
import { region } from '../shm/layout';
import { MAP_PRESENT, MAP_WRITABLE, mapPfn } from '../host/host';
import {
  IN_GUEST_MODE,
  KVM_REQ_TLB_FLUSH,
  Kvm,
  MODE_NAMES,
  SLOT_DIRTY_LOG,
  VCPU_MODE,
  VCPU_REQUESTS,
  VCPU_TLB_GEN,
} from '../kvm/kvm';
import { SP_GFN, SP_PRESENT, SP_ROLE, SP_STATE, roleAccess, roleIsDirect, roleLevel } from '../kvm/mmu-page';
import { LEVEL_PAGES } from '../x86/pte';
import { ACC_USER_MASK, ACC_WRITE_MASK, PT_PRESENT_MASK, PT_USER_MASK, PT_WRITABLE_MASK, gpteGfn } from '../x86/pte';
import {
  FROZEN_SPTE,
  formatSpte,
  isLastSpte,
  isMmuWritableSpte,
  isShadowPresentPte,
  isWritablePte,
  spteToChild,
  spteToPfn,
  SPTE_BASE_ADDR_MASK,
  SPTE_USER_MASK,
} from '../x86/spte';
import { ROOT_ZAP_TAKEN } from '../kvm/tdp-mmu';
import { readTlb, type TlbEntry } from '../vcpu/vcpu';
import type { Execution, Footprint, Monitor, Step } from './engine';
import type { ScenarioMachine } from './gen/scenario';
import { ghostKey, metaKey32, metaKey64, dataPageKey } from './ops';

const ALL_ENTRIES: readonly number[] = Array.from({ length: 512 }, (_, i) => i);

/** Ghost spaces (ops.ts ghostKey) of the monitors' own state. */
const G_WALKING = 0; // by thread: its lockless walk began (NoFreedPageWalk)
const G_FREED = 1; // by thread: pages freed since its walk began (NoFreedPageWalk)
const G_GUEST_WROTE_FRAME = 2; // by pfn: written through an SPTE since it was last written back (FrameDirtyBeforeDrop)
const G_LOG_PENDING = 3; // by gfn: written while logging, not yet reported (DirtyLogComplete)
const G_LOG_REPORTED = 4; // by gfn: when a get last reported it (WritableSpteLogged)
const G_ENTERING = 5; // by vCPU: it published IN_GUEST_MODE and has not read its requests yet (VcpuFlushes)
const G_MARK_OWED = 6; // by gfn: a thread made an SPTE writable and has not marked the gfn yet (DirtyOrWriteProtected)
const G_LOG_ENABLED = 7; // by slot: enabling dirty logging returned, and disabling it has not begun (DirtyLogComplete)


/** A leaf SPTE as the monitors see it. */
export interface LeafSpte {
  readonly sp: number;
  readonly idx: number;
  readonly sptep: number;
  readonly spte: bigint;
  /** The first gfn it maps. */
  readonly gfn: number;
  /** Pages it maps from `gfn`: 1, or 512 for a huge leaf (PS at level 2). */
  readonly pages: number;
}

/** The 4 KiB view of page `j` of leaf `l`: its gfn, and its SPTE with that page's pfn (PS kept, for the text). */
export function leafPage(l: LeafSpte, j: number): LeafSpte {
  if (l.pages === 1) return l;
  return { ...l, gfn: l.gfn + j, spte: BigInt.asUintN(64, (l.spte & ~SPTE_BASE_ADDR_MASK) | (BigInt(spteToPfn(l.spte) + j) << 12n)), pages: 1 };
}

/**
 * Plain-read views of the MMU's shared state, for monitors. Every read is declared to the footprint (when one is
 * given): the word it reads, by its key. Words written with plain stores (shadow-page state and present bits under
 * mmu_lock, a vCPU's TLB) are declared by their writers too (Mem.storePlain32, plainStoreDone), so a monitor's
 * read of them is ordered against those stores as well.
 */
export class Observer {
  readonly kvm: Kvm;
  readonly sptLo: number;
  readonly sptHi: number;
  readonly mapLo: number;
  readonly mapHi: number;

  constructor(
    machine: ScenarioMachine,
    private readonly fp: Footprint | null = null,
  ) {
    if (machine.config === null) throw new Error('observer: no VM');
    this.kvm = new Kvm(new Mem(machine.shm), machine.shm.layout, machine.config);
    const spt = region(machine.shm.layout, 'kvm.spt');
    this.sptLo = spt.off / 8;
    this.sptHi = (spt.off + spt.bytes) / 8;
    const map = region(machine.shm.layout, 'host.map');
    this.mapLo = map.off / 4;
    this.mapHi = (map.off + map.bytes) / 4;
    if (fp !== null) {
      // The plain-stored words read below: shadow pages' state and present bits (mmu_lock), each vCPU's TLB (its own).
      const pages = this.kvm.pages;
      for (let sp = 0; sp < pages.nSp; sp++) {
        fp.watchPlain(pages.hdr(sp, SP_STATE));
        for (let w = 0; w < 16; w++) fp.watchPlain(pages.hdr(sp, SP_PRESENT + w));
      }
      for (let v = 0; v < this.kvm.config.vcpus; v++) fp.watchPlain(this.kvm.vcpuWord(v, VCPU_TLB_GEN));
    }
  }

  /** Meta Int32 word `i`, declared as read. */
  r32(i: number): number {
    this.fp?.read(metaKey32(i));
    return this.kvm.mem.i32[i]!;
  }

  /** Meta 64-bit word at u64 index `i`, declared as read. */
  r64(i: number): bigint {
    this.fp?.read(metaKey64(i));
    return this.kvm.mem.u64[i]!;
  }

  /** Declare a read, write or commutative update of ghost location (space, i). */
  ghostRead(space: number, i: number): void {
    this.fp?.read(ghostKey(space, i));
  }
  ghostWrite(space: number, i: number): void {
    this.fp?.write(ghostKey(space, i));
  }
  ghostOr(space: number, i: number): void {
    this.fp?.or(ghostKey(space, i));
  }

  spInUse(sp: number): boolean {
    return this.r32(this.kvm.pages.hdr(sp, SP_STATE)) === 1;
  }

  private role(sp: number): number {
    return this.r32(this.kvm.pages.hdr(sp, SP_ROLE));
  }

  /** The gfn entry `idx` of shadow page `sp` (with role `role`) maps (KVM's shadowed translation). */
  private entryGfn(sp: number, idx: number, role: number): number {
    const k = this.kvm;
    if (roleIsDirect(role)) return this.r32(k.pages.hdr(sp, SP_GFN)) + idx * LEVEL_PAGES[roleLevel(role)]!;
    return this.r32(k.pages.gfnsBase + sp * 512 + idx);
  }

  /** Indices of the entries marked present in shadow page `sp` (in TDP mode, which keeps no present bitmap, every entry). */
  presentIndices(sp: number): readonly number[] {
    if (this.kvm.isTdp) return ALL_ENTRIES;
    const out: number[] = [];
    for (let w = 0; w < 16; w++) {
      let bits = this.r32(this.kvm.pages.hdr(sp, SP_PRESENT + w));
      while (bits !== 0) {
        out.push(w * 32 + (31 - Math.clz32(bits & -bits)));
        bits &= bits - 1;
      }
    }
    return out;
  }

  /** The leaf SPTE at `sptep` if it is present in an allocated last-level page, else null. */
  leafAt(sptep: number): LeafSpte | null {
    const k = this.kvm;
    const sp = k.pages.spOf(sptep);
    if (!this.spInUse(sp)) return null;
    const role = this.role(sp);
    const level = roleLevel(role);
    if (level !== 1 && !(level === 2 && k.config.hugePages)) return null;
    const spte = this.r64(sptep);
    if (!isShadowPresentPte(spte) || !isLastSpte(spte, level)) return null;
    const idx = k.pages.indexOf(sptep);
    return { sp, idx, sptep, spte, gfn: this.entryGfn(sp, idx, role), pages: LEVEL_PAGES[level]! };
  }

  /** Every present leaf SPTE in allocated shadow pages (only those mapping a gfn `want` accepts: the others' SPTEs are not read). */
  leafSptes(want?: (gfn: number) => boolean, hugeAsPages = true): LeafSpte[] {
    const k = this.kvm;
    const out: LeafSpte[] = [];
    for (let sp = 0; sp < k.pages.nSp; sp++) {
      if (!this.spInUse(sp)) continue;
      const role = this.role(sp);
      if (roleLevel(role) === 2 && k.config.hugePages) {
        this.hugeLeaves(sp, want, hugeAsPages, out);
        continue;
      }
      if (roleLevel(role) !== 1) continue;
      // A direct leaf page maps gfn base + idx: its gfn word is read once, not per entry.
      const direct = roleIsDirect(role);
      const base = direct ? this.r32(k.pages.hdr(sp, SP_GFN)) : 0;
      for (const idx of this.presentIndices(sp)) {
        const gfn = direct ? base + idx : this.r32(k.pages.gfnsBase + sp * 512 + idx);
        if (want !== undefined && !want(gfn)) continue;
        const sptep = k.pages.sptep(sp, idx);
        const spte = this.r64(sptep);
        if (!isShadowPresentPte(spte)) continue;
        out.push({ sp, idx, sptep, spte, gfn, pages: 1 });
      }
    }
    return out;
  }

  /** The huge leaves of level-2 table `sp` (TDP mode with huge pages), each as 512 pages or as one entry, into `out`. */
  private hugeLeaves(sp: number, want: ((gfn: number) => boolean) | undefined, asPages: boolean, out: LeafSpte[]): void {
    const k = this.kvm;
    const base = this.r32(k.pages.hdr(sp, SP_GFN));
    for (let idx = 0; idx < 512; idx++) {
      const first = base + idx * 512;
      if (k.slotOf(first) < 0) continue; // never mapped: not read
      let wanted = want === undefined;
      for (let j = 0; j < 512 && !wanted; j++) wanted = want!(first + j);
      if (!wanted) continue;
      const sptep = k.pages.sptep(sp, idx);
      const spte = this.r64(sptep);
      if (!isShadowPresentPte(spte) || !isLastSpte(spte, 2)) continue;
      const l: LeafSpte = { sp, idx, sptep, spte, gfn: first, pages: 512 };
      if (!asPages) out.push(l);
      else for (let j = 0; j < 512; j++) if (want === undefined || want(first + j)) out.push(leafPage(l, j));
    }
  }

  vcpuMode(v: number): number {
    return this.r32(this.kvm.vcpuWord(v, VCPU_MODE)) & 3;
  }

  flushPending(v: number): boolean {
    return (this.r32(this.kvm.vcpuWord(v, VCPU_REQUESTS)) & KVM_REQ_TLB_FLUSH) !== 0;
  }

  /** vCPU v's valid TLB entries. Its owner writes them with plain stores and declares the TLB as one location, its generation word. */
  tlb(v: number): TlbEntry[] {
    this.fp?.read(metaKey32(this.kvm.vcpuWord(v, VCPU_TLB_GEN)));
    return readTlb(this.kvm, v);
  }

  /** Is `gfn`'s bit set in its slot's dirty bitmap? (Slot geometry is fixed after setup: no read to declare.) */
  bitmapHas(gfn: number): boolean {
    const k = this.kvm;
    const s = k.slotOf(gfn);
    if (s < 0) return false;
    const rel = gfn - k.slotGfn[s]!;
    return (this.r32(k.slotBitmap[s]! + (rel >>> 5)) & (1 << (rel & 31))) !== 0;
  }

  loggingOn(gfn: number): boolean {
    const s = this.kvm.slotOf(gfn);
    return s >= 0 && (this.r32(this.kvm.slotFlagsWord(s)) & SLOT_DIRTY_LOG) !== 0;
  }

  /** The host's mapping word for `gfn` (MAP_* bits and the pfn). */
  hostMapping(gfn: number): number {
    return this.r32(this.kvm.host.ptep(this.kvm.gfnToHvpn(gfn)));
  }

  /** The guest word at gpa, read from the frame or swap copy (0 if the page was never touched). For atEnd checks. */
  guestWord(gpa: number): bigint {
    const k = this.kvm;
    const hvpn = k.gfnToHvpn(Math.floor(gpa / 4096));
    const byte = k.host.quietPageByte(hvpn);
    if (byte >= 0) this.fp?.read(dataPageKey(Math.floor(byte / 4096)));
    return byte < 0 ? 0n : k.mem.d64[(byte + (gpa % 4096)) / 8]!;
  }
}

const hex = (n: number): string => `0x${n.toString(16)}`;

/**
 * Which vCPUs are about to drop their TLB. A vCPU with a flush pending is, when it is outside guest mode (it
 * handles requests on entry), and also when it has published IN_GUEST_MODE but not yet read its requests:
 * vcpu_enter_guest checks them after publishing the mode, so it turns back before running guest code. A request
 * set after that check is seen only when a kick makes the vCPU exit, so until then it does not count. Ghost state:
 * per vCPU, whether it is between the two (G_ENTERING), written by its own mode store and its own read of its
 * request word (unless that read saw a flush request: then it turns back). (Reading the request word at the mode store instead would order every entry against every flush
 * request, many more races to explore, for the same answer.)
 */
class VcpuFlushes {
  private readonly modeWords: number[];
  private readonly reqWords: number[];
  /** By vCPU: the thread that published IN_GUEST_MODE and has not read its requests since, or -1. */
  private entering: number[] = [];
  constructor(private readonly o: Observer) {
    this.modeWords = Array.from({ length: o.kvm.config.vcpus }, (_, v) => o.kvm.vcpuWord(v, VCPU_MODE));
    this.reqWords = Array.from({ length: o.kvm.config.vcpus }, (_, v) => o.kvm.vcpuWord(v, VCPU_REQUESTS));
  }
  reset(): void {
    this.entering = new Array<number>(this.modeWords.length).fill(-1);
  }
  afterStep(s: Step): void {
    if (s.op === OP.store32) {
      // setMode and setModeRelease both store32
      const v = this.modeWords.indexOf(s.a);
      if (v < 0) return;
      this.o.ghostWrite(G_ENTERING, v);
      this.entering[v] = (this.o.kvm.mem.i32[s.a]! & 3) === IN_GUEST_MODE ? s.thread : -1;
    } else if (s.op === OP.load32) {
      const v = this.reqWords.indexOf(s.a);
      // The check itself: seeing a flush request (the step's own word), the vCPU turns back and handles it.
      if (v < 0 || this.entering[v] !== s.thread || (this.o.kvm.mem.i32[s.a]! & KVM_REQ_TLB_FLUSH) !== 0) return;
      this.o.ghostWrite(G_ENTERING, v);
      this.entering[v] = -1;
    }
  }
  /** A writable TLB entry of vCPU v for a gfn `want` accepts that it may still write through (not about to flush), or null. */
  writableEntry(v: number, want: (gfn: number) => boolean): { mode: number; gfn: number } | null {
    return this.usableEntry(v, want, true);
  }

  /** A TLB entry of vCPU v (only writable ones if `writable`) for a gfn `want` accepts that it may still use (not about to flush), or null. */
  usableEntry(v: number, want: (gfn: number) => boolean, writable: boolean): { mode: number; gfn: number } | null {
    for (const e of this.o.tlb(v)) {
      if ((writable && (e.acc & ACC_WRITE_MASK) === 0) || !want(e.gfn)) continue;
      // Only with such an entry does the answer depend on the vCPU's mode and requests: read them then.
      const mode = this.o.vcpuMode(v);
      const pending = this.o.flushPending(v);
      this.o.ghostRead(G_ENTERING, v);
      return pending && (mode !== IN_GUEST_MODE || this.entering[v]! >= 0) ? null : { mode, gfn: e.gfn };
    }
    return null;
  }
}

/**
 * No vCPU may use a writable TLB entry for a gfn once its write-protection for shadow paging has returned.
 * Reads, at the wpDone mark: every vCPU's mode, request word and TLB (VcpuFlushes); every present leaf SPTE (page
 * state, role, present bits, its gfn, and the SPTE of those mapping the gfn). A flush that sets a request word, a
 * vCPU entering guest mode or filling its TLB, an SPTE made writable: each writes something read here, so DPOR
 * tries it on both sides of the mark.
 */
class TlbAfterWriteProtect implements Monitor {
  readonly name = 'tlb-after-write-protect';
  readonly statement =
    'after a write-protection of a gfn returns, no vCPU holds a writable TLB entry for it (unless it is about to flush) and no SPTE maps it writable';
  constructor(
    private readonly o: Observer,
    private readonly flushes: VcpuFlushes,
  ) {}
  reset(): void {
    this.flushes.reset();
  }
  afterStep(_ex: Execution, s: Step): string | null {
    this.flushes.afterStep(s);
    return null;
  }
  onNote(_ex: Execution, _t: number, kind: number, gfn: number): string | null {
    if (kind !== NOTE.wpDone) return null;
    const k = this.o.kvm;
    for (let v = 0; v < k.config.vcpus; v++) {
      const e = this.flushes.writableEntry(v, (g) => g === gfn);
      if (e !== null)
        return (
          `vCPU ${v} still holds a writable TLB entry for gfn ${hex(gfn)} after the write-protection of that gfn (it became a ` +
          `shadowed guest page table) returned, with no flush pending (vCPU in ${MODE_NAMES[e.mode]}): its writes skip the MMU`
        );
    }
    for (const s of this.o.leafSptes((g) => g === gfn)) {
      if (isWritablePte(s.spte) || isMmuWritableSpte(s.spte))
        return `an SPTE still maps gfn ${hex(gfn)} as ${formatSpte(s.spte)} after its write-protection returned`;
    }
    return null;
  }
}

/**
 * The MMU notifier's contract: once invalidate_range_start returns, no vCPU can reach a page of the range (the host
 * goes on to unmap and may free it), so no vCPU holds a TLB entry for one unless it is about to flush. Every path
 * that zaps an SPTE flushes before it drops mmu_lock for this reason (a835429cda91: a zap that yielded with a
 * flush owed let the notifier find nothing to zap and skip its own). Reads, at the unmapDone mark: every vCPU's
 * TLB, and its mode and requests when it holds such an entry (VcpuFlushes, kept up to date by
 * tlb-after-write-protect).
 */
class TlbAfterUnmap implements Monitor {
  readonly name = 'tlb-after-unmap';
  readonly statement =
    'after an MMU-notifier invalidation of a range returns, no vCPU holds a TLB entry for a page in it (unless it is about to flush)';
  constructor(
    private readonly o: Observer,
    private readonly flushes: VcpuFlushes,
  ) {}
  onNote(_ex: Execution, _t: number, kind: number, start: number, end: number): string | null {
    if (kind !== NOTE.unmapDone) return null;
    const k = this.o.kvm;
    const inRange = (gfn: number): boolean => {
      if (k.slotOf(gfn) < 0) return false;
      const hvpn = k.gfnToHvpn(gfn);
      return hvpn >= start && hvpn < end;
    };
    for (let v = 0; v < k.config.vcpus; v++) {
      const e = this.flushes.usableEntry(v, inRange, false);
      if (e !== null)
        return (
          `vCPU ${v} still holds a TLB entry for gfn ${hex(e.gfn)} after the MMU-notifier invalidation of its page returned, ` +
          `with no flush pending (vCPU in ${MODE_NAMES[e.mode]}): it can reach a page the host may now free`
        );
    }
    return null;
  }
}

/**
 * The rule the 2010 fix to KVM_GET_DIRTY_LOG states ("all pages are either dirty in the current bitmap, or
 * write-protected"; KVM then write-protected before swapping the bitmap, so a fault between the two logged its
 * page in the bitmap handed over and left it writable under a clean one): whenever a get or clear hands bits to
 * userspace, every page of a slot that logs is dirty in the bitmap the next get reads, or no SPTE maps it
 * writable and no vCPU can still write it through its TLB. Stricter than writable-spte-logged, which accepts a
 * page reported since its SPTE became writable. One exception, by design: a thread that has just made an SPTE
 * writable and will mark its gfn next (the fast path's cmpxchg, then mark_page_dirty) owes that mark, and the
 * page counts as dirty until it pays.
 * Reads at the hand-over mark (dirtyLogReturned): the slot's flags and bitmap words, its present leaves, every
 * vCPU's TLB (VcpuFlushes), and the owed marks. Ghost state: the marks owed, by gfn (G_MARK_OWED), written after a
 * step that makes an SPTE writable in a logging slot and after the owing thread's bitmap update.
 */
class DirtyOrWriteProtected implements Monitor {
  readonly name = 'dirty-or-write-protected';
  readonly statement =
    'when a dirty-log get or clear returns, every page of a slot that logs is dirty in the bitmap the next get reads, or write-protected (SPTEs and TLBs)';
  /** gfn → the threads that made one of its SPTEs writable and have not marked it since. */
  private owed = new Map<number, Set<number>>();
  /** SPTEs writable after the last step that wrote them. */
  private writable = new Set<number>();
  private readonly bitmapLo: number[];
  private readonly bitmapHi: number[];
  constructor(
    private readonly o: Observer,
    private readonly flushes: VcpuFlushes,
  ) {
    const k = o.kvm;
    this.bitmapLo = Array.from({ length: k.nSlots }, (_, s) => k.slotBitmap[s]!);
    this.bitmapHi = Array.from({ length: k.nSlots }, (_, s) => k.slotBitmap[s]! + Math.ceil(k.slotPages[s]! / 32));
  }
  reset(): void {
    this.owed.clear();
    this.writable.clear();
    this.splitting.length = 0;
  }
  /** By thread: the table it is filling for a split (NOTE.splitFill), until its next SPTE write elsewhere. */
  private readonly splitting: number[] = [];
  afterStep(_ex: Execution, s: Step): string | null {
    const o = this.o;
    if ((s.op === OP.store64 || s.op === OP.xchg64 || s.op === OP.cmpxchg64) && s.a >= o.sptLo && s.a < o.sptHi) {
      const spte = o.kvm.mem.u64[s.a]!; // the step's own word
      const now = isShadowPresentPte(spte) && isWritablePte(spte);
      // A split copies a writable huge SPTE into a table nobody reaches yet: the mapping was writable already. The
      // thread's first SPTE write elsewhere (the cmpxchg that links the table) ends the copy.
      const sp = o.kvm.pages.spOf(s.a);
      if (this.splitting[s.thread] !== undefined && this.splitting[s.thread] !== sp) this.splitting[s.thread] = -1;
      if (now && !this.writable.has(s.a) && sp !== this.splitting[s.thread]) {
        const leaf = o.leafAt(s.a);
        for (let j = 0; leaf !== null && j < leaf.pages; j++) {
          const gfn = leaf.gfn + j;
          if (!o.loggingOn(gfn)) continue;
          o.ghostOr(G_MARK_OWED, gfn);
          let who = this.owed.get(gfn);
          if (who === undefined) this.owed.set(gfn, (who = new Set()));
          who.add(s.thread);
        }
      }
      if (now) this.writable.add(s.a);
      else this.writable.delete(s.a);
      return null;
    }
    if (s.op !== OP.or32 && s.op !== OP.fetchOr32) return null;
    const slot = this.bitmapLo.findIndex((lo, i) => s.a >= lo && s.a < this.bitmapHi[i]!);
    if (slot < 0) return null;
    // The owing thread's mark: it no longer owes the gfns whose bits are now set in this word.
    const k = o.kvm;
    const bits = k.mem.i32[s.a]!; // the step's own word
    const first = k.slotGfn[slot]! + (s.a - this.bitmapLo[slot]!) * 32;
    for (const [gfn, who] of this.owed) {
      if (gfn < first || gfn >= first + 32 || (bits & (1 << (gfn - first))) === 0 || !who.has(s.thread)) continue;
      o.ghostWrite(G_MARK_OWED, gfn);
      who.delete(s.thread);
      if (who.size === 0) this.owed.delete(gfn);
    }
    return null;
  }
  onNote(_ex: Execution, t: number, kind: number, slot: number): string | null {
    if (kind === NOTE.splitFill) this.splitting[t] = slot; // (`slot` is the table, here)
    if (kind !== NOTE.dirtyLogReturned) return null;
    const o = this.o;
    const k = o.kvm;
    if ((o.r32(k.slotFlagsWord(slot)) & SLOT_DIRTY_LOG) === 0) return null;
    const lo = k.slotGfn[slot]!;
    const hi = lo + k.slotPages[slot]!;
    const clean = (gfn: number): boolean => {
      if (o.bitmapHas(gfn)) return false;
      o.ghostRead(G_MARK_OWED, gfn);
      return !this.owed.has(gfn);
    };
    for (const l of o.leafSptes((g) => g >= lo && g < hi)) {
      if (isWritablePte(l.spte) && clean(l.gfn))
        return (
          `a dirty-log get or clear returned while an SPTE maps gfn ${hex(l.gfn)} writable (${formatSpte(l.spte)}) and its bit is ` +
          `clear in the bitmap the next get reads: the guest's writes to it from now on are never reported`
        );
    }
    for (let v = 0; v < k.config.vcpus; v++) {
      const w = this.flushes.writableEntry(v, (g) => g >= lo && g < hi && clean(g));
      if (w !== null)
        return (
          `a dirty-log get or clear returned while vCPU ${v} can still write gfn ${hex(w.gfn)} through its TLB (in ` +
          `${MODE_NAMES[w.mode]}, no flush pending) and its bit is clear in the bitmap the next get reads: those writes are never reported`
        );
    }
    return null;
  }
  /** Every path that makes an SPTE writable while its slot logs marks the gfn (mark_page_dirty): no mark stays owed. */
  atEnd(): string | null {
    for (const gfn of this.owed.keys())
      if (this.o.loggingOn(gfn))
        return `an SPTE of gfn ${hex(gfn)} was made writable while dirty logging was on, and the thread that did it never marked the gfn dirty`;
    return null;
  }
}

/**
 * The dirty log names every gfn the guest wrote while logging was on.
 * Reads at a guest write's mark: the slot's flags word (is logging on). Ghost state: the gfns written and not yet
 * reported (G_LOG_PENDING by gfn): a guest write adds (commutative: two writes of one gfn need no order), a
 * get's report removes. At the end: the bitmap (what the next get would report).
 */
class DirtyLogComplete implements Monitor {
  readonly name = 'dirty-log-complete';
  readonly statement = 'every gfn the guest writes after enabling dirty logging returned (and before disabling it) is reported by a later dirty-log get or clear';
  private pending = new Map<number, number>();
  /** Slots whose enabling of dirty logging has returned (and whose disabling has not begun). */
  private readonly on = new Set<number>();
  constructor(private readonly o: Observer) {}
  reset(): void {
    this.pending.clear();
    // Logging enabled before the execution began (in setup) is on from the start.
    this.on.clear();
    const k = this.o.kvm;
    for (let s = 0; s < k.nSlots; s++) if ((k.mem.i32[k.slotFlagsWord(s)]! & SLOT_DIRTY_LOG) !== 0) this.on.add(s);
  }
  onNote(ex: Execution, t: number, kind: number, a: number, b: number): string | null {
    if (kind === NOTE.dirtyLogState) {
      this.o.ghostWrite(G_LOG_ENABLED, a);
      if (b === 1) this.on.add(a);
      else this.on.delete(a);
    } else if (kind === NOTE.guestWrite && this.loggingOn(a)) {
      this.o.ghostOr(G_LOG_PENDING, a);
      if (!this.pending.has(a)) this.pending.set(a, ex.steps.length);
    } else if (kind === NOTE.dirtyLogTaken) {
      this.o.ghostWrite(G_LOG_PENDING, a);
      this.pending.delete(a);
    }
    void t;
    return null;
  }
  /**
   * Must a write of `gfn` be logged? Once enabling dirty logging has returned: a write while the enable runs (between
   * the flag and the write-protection's flush) need not be, as in KVM, where userspace counts logging from the
   * ioctl's return (its first pass sends every page).
   */
  private loggingOn(gfn: number): boolean {
    const s = this.o.kvm.slotOf(gfn);
    if (s < 0) return false;
    this.o.ghostRead(G_LOG_ENABLED, s);
    return this.on.has(s);
  }
  atEnd(): string | null {
    for (const [gfn, step] of this.pending) {
      // What is still in the bitmap would be reported by the next get.
      if (this.o.bitmapHas(gfn)) continue;
      return `the guest wrote gfn ${hex(gfn)} (step ${step}) while dirty logging was on, but no dirty-log get reported it and its bit is clear: a migration would not resend it`;
    }
    return null;
  }
}

/**
 * While a slot logs dirty pages, a writable SPTE's gfn must be dirty in the bitmap or reported since the SPTE
 * became writable: otherwise the guest's next write through it is never logged.
 * Reads after a step that writes an SPTE: that leaf (page state, role, its gfn). Ghost state: when each gfn was
 * last reported (G_LOG_REPORTED by gfn), written at a get's report and read where an SPTE becomes writable, so
 * the two keep their order in every execution DPOR explores (the end compares their step numbers).
 */
class WritableSpteLogged implements Monitor {
  readonly name = 'writable-spte-logged';
  readonly statement =
    'while dirty logging is on, every writable SPTE maps a gfn that is dirty in the bitmap or was reported since the SPTE became writable';
  private writableSince = new Map<number, number>();
  private reported = new Map<number, number>();
  constructor(private readonly o: Observer) {}
  reset(): void {
    this.writableSince.clear();
    this.reported.clear();
  }
  onNote(ex: Execution, _t: number, kind: number, a: number): string | null {
    if (kind === NOTE.dirtyLogTaken) {
      this.o.ghostWrite(G_LOG_REPORTED, a);
      this.reported.set(a, ex.steps.length);
    }
    return null;
  }
  afterStep(ex: Execution, s: Step): string | null {
    if ((s.op !== OP.store64 && s.op !== OP.xchg64 && s.op !== OP.cmpxchg64) || s.a < this.o.sptLo || s.a >= this.o.sptHi) return null;
    const spte = this.o.kvm.mem.u64[s.a]!; // the step's own word
    if (isShadowPresentPte(spte) && isWritablePte(spte)) {
      if (!this.writableSince.has(s.a)) {
        this.writableSince.set(s.a, ex.steps.length);
        const leaf = this.o.leafAt(s.a);
        for (let j = 0; leaf !== null && j < leaf.pages; j++) this.o.ghostRead(G_LOG_REPORTED, leaf.gfn + j);
      }
    } else this.writableSince.delete(s.a);
    return null;
  }
  atEnd(): string | null {
    for (const [sptep, since] of this.writableSince) {
      const leaf = this.o.leafAt(sptep);
      if (leaf === null || !isWritablePte(leaf.spte)) continue;
      let gfn = -1;
      for (let j = 0; j < leaf.pages && gfn < 0; j++) {
        const g = leaf.gfn + j;
        if (this.o.loggingOn(g) && !this.o.bitmapHas(g) && (this.reported.get(g) ?? -1) < since) gfn = g;
      }
      if (gfn < 0) continue;
      return (
        `the SPTE for gfn ${hex(gfn)} became writable (step ${since}) while dirty logging was on, but gfn ${hex(gfn)} is neither ` +
        `dirty in the bitmap nor reported since: the guest's writes through it go unlogged`
      );
    }
    return null;
  }
}

/**
 * A frame the guest wrote through an SPTE must be dirty (written back) when the host drops it.
 * Ghost state only: which frames the guest wrote since their last write-back (G_GUEST_WROTE_FRAME by pfn), written
 * by a guest write's mark, a write-back or a frame's allocation, read by a clean drop.
 */
class FrameDirtyBeforeDrop implements Monitor {
  readonly name = 'frame-dirty-before-drop';
  readonly statement = 'a frame written through an SPTE is marked dirty before that SPTE is dropped, so swap-out writes it back';
  private written = new Map<number, number>();
  constructor(private readonly o: Observer) {}
  reset(): void {
    this.written.clear();
  }
  onNote(ex: Execution, _t: number, kind: number, a: number, b: number): string | null {
    if (kind === NOTE.guestWrite) {
      this.o.ghostWrite(G_GUEST_WROTE_FRAME, b);
      this.written.set(b, a);
    } else if (kind === NOTE.swapOutWriteback || kind === NOTE.frameAlloc) {
      this.o.ghostWrite(G_GUEST_WROTE_FRAME, a);
      this.written.delete(a);
    } else if (kind === NOTE.swapOutClean) {
      this.o.ghostRead(G_GUEST_WROTE_FRAME, a);
      if (this.written.has(a))
        return (
          `gfn ${hex(this.written.get(a)!)} was written through an SPTE into frame ${hex(a)}, but the frame was not marked dirty when ` +
          `the SPTE was dropped: swap-out kept the stale swap copy and the guest's write is lost (step ${ex.steps.length})`
        );
    }
    return null;
  }
}

/**
 * A lockless walker must never read a shadow page that was freed after its walk began.
 * Ghost state: whether each thread walks (G_WALKING, written by its own begin and end marks, read by every free)
 * and the pages freed since its walk began (G_FREED, cleared at its begin, added to by frees — commutative —
 * and read when the walker then reads or changes an SPTE).
 */
class NoFreedPageWalk implements Monitor {
  readonly name = 'no-freed-page-walk';
  readonly statement = 'no lockless walker accesses a shadow page that was freed (and may be reused) after its walk began';
  private walking: (number | null)[] = [];
  private freed: Set<number>[] = [];
  /**
   * The thread's walk ended after its latest step, within the same run of its code: that step is still the walk's.
   * (A thread's code runs on from a step to its next one before afterStep hears of the step, so a walk that reads a
   * freed table's entry, finds it empty and ends, has ended by then.)
   */
  private ending: boolean[] = [];
  constructor(private readonly o: Observer) {}
  reset(ex: Execution): void {
    this.walking = new Array<number | null>(ex.nThreads).fill(null);
    this.freed = Array.from({ length: ex.nThreads }, () => new Set<number>());
    this.ending = new Array<boolean>(ex.nThreads).fill(false);
  }
  onNote(_ex: Execution, t: number, kind: number, a: number): string | null {
    if (kind === NOTE.walkBegin) {
      this.o.ghostWrite(G_WALKING, t);
      this.o.ghostWrite(G_FREED, t);
      this.walking[t] = a;
      this.ending[t] = false;
      this.freed[t]!.clear();
    } else if (kind === NOTE.walkEnd) {
      this.o.ghostWrite(G_WALKING, t);
      this.ending[t] = true;
    } else if (kind === NOTE.spAlloc) {
      // A walker that allocates a page itself (a TDP fault building its path) reaches it through its own new link.
      if (this.walking[t] !== null && this.freed[t]!.delete(a)) this.o.ghostWrite(G_FREED, t);
    } else if (kind === NOTE.spFree) {
      for (let u = 0; u < this.walking.length; u++) {
        this.o.ghostRead(G_WALKING, u);
        if (this.walking[u] === null || this.ending[u]) continue;
        this.o.ghostOr(G_FREED, u);
        this.freed[u]!.add(a);
      }
    }
    return null;
  }
  afterStep(ex: Execution, s: Step): string | null {
    const v = this.walking[s.thread]; // the thread's own state: only its own marks write it
    if (v === null || v === undefined) return null;
    if (this.ending[s.thread]) {
      this.ending[s.thread] = false;
      this.walking[s.thread] = null;
    }
    if (s.op !== OP.load64 && s.op !== OP.cmpxchg64) return null;
    if (s.a < this.o.sptLo || s.a >= this.o.sptHi) return null;
    const sp = this.o.kvm.pages.spOf(s.a);
    this.o.ghostRead(G_FREED, s.thread);
    if (!this.freed[s.thread]!.has(sp)) return null;
    return `vCPU ${v}'s lockless walk ${s.op === OP.cmpxchg64 ? 'changed' : 'read'} an entry of shadow page ${sp} after that page was freed (step ${ex.steps.length}): the page may already map something else`;
  }
}

/**
 * A present SPTE maps the frame the host maps for its gfn, and is writable only if the host mapping is.
 * Reads after a step that writes an SPTE: that leaf (page state, role, its gfn) and its gfn's host mapping; after
 * a step that writes a host mapping: which leaves are present and their gfns, and the SPTEs of those that map that
 * mapping's page (only that mapping changed, and every other pair was checked when it last changed).
 */
class SpteWithinHostMapping implements Monitor {
  readonly name = 'spte-within-host-mapping';
  readonly statement = 'no SPTE maps a frame other than the host mapping of its gfn, or grants write when the host mapping does not';
  /** The gfn each host mapping word maps (host page tables are fixed after init, so this is computed once). */
  private readonly gfnOfMapWord = new Map<number, number>();
  constructor(private readonly o: Observer) {
    const k = o.kvm;
    for (let s = 0; s < k.nSlots; s++)
      for (let g = k.slotGfn[s]!; g < k.slotGfn[s]! + k.slotPages[s]!; g++) this.gfnOfMapWord.set(k.host.ptep(k.gfnToHvpn(g)), g);
  }
  afterStep(ex: Execution, s: Step): string | null {
    const writesSpte = (s.op === OP.store64 || s.op === OP.xchg64 || s.op === OP.cmpxchg64) && s.a >= this.o.sptLo && s.a < this.o.sptHi;
    const writesMap = (s.op === OP.store32 || s.op === OP.cmpxchg32) && s.a >= this.o.mapLo && s.a < this.o.mapHi;
    if (writesSpte) {
      // Only the SPTE this step wrote can have changed.
      const l = this.o.leafAt(s.a);
      for (let j = 0; l !== null && j < l.pages; j++) {
        const p = leafPage(l, j);
        const msg = this.verify(ex, p, this.o.hostMapping(p.gfn));
        if (msg !== null) return msg;
      }
      return null;
    }
    if (!writesMap) return null;
    const m = this.o.kvm.mem.i32[s.a]!; // the step's own word
    const gfn = this.gfnOfMapWord.get(s.a);
    if (gfn === undefined) return null;
    for (const l of this.o.leafSptes((g) => g === gfn)) {
      const msg = this.verify(ex, l, m);
      if (msg !== null) return msg;
    }
    return null;
  }

  private verify(ex: Execution, l: LeafSpte, m: number): string | null {
    const pfn = spteToPfn(l.spte);
    if ((m & MAP_PRESENT) === 0 || mapPfn(m) !== pfn)
      return `an SPTE maps gfn ${hex(l.gfn)} to frame ${hex(pfn)}, but the host ${(m & MAP_PRESENT) === 0 ? 'no longer maps that gfn' : `maps it to frame ${hex(mapPfn(m))}`} (step ${ex.steps.length}): the guest reaches a frame it does not own`;
    if (isWritablePte(l.spte) && (m & MAP_WRITABLE) === 0)
      return `an SPTE lets the guest write gfn ${hex(l.gfn)} while the host maps it read-only (step ${ex.steps.length})`;
    return null;
  }
}

/** At the end, in shadow mode: every shadow entry agrees with the guest's own page tables. */
class SpteWithinGuestPte implements Monitor {
  readonly name = 'spte-within-guest-pte';
  readonly statement = 'no SPTE grants more than the guest PTE it shadows';
  constructor(private readonly o: Observer) {}
  atEnd(): string | null {
    const k = this.o.kvm;
    if (k.config.mode !== 'shadow') return null;
    const t = k.mem.i32;
    for (let sp = 0; sp < k.pages.nSp; sp++) {
      if (!this.o.spInUse(sp)) continue;
      const role = t[k.pages.hdr(sp, SP_ROLE)]!;
      if (roleIsDirect(role)) continue;
      const table = t[k.pages.hdr(sp, SP_GFN)]!;
      for (const idx of this.o.presentIndices(sp)) {
        const spte = k.mem.u64[k.pages.sptep(sp, idx)]!;
        if (!isShadowPresentPte(spte)) continue;
        const gpte = this.o.guestWord(table * 4096 + idx * 8);
        const where = `entry ${idx} of guest table gfn ${hex(table)}`;
        if ((gpte & PT_PRESENT_MASK) === 0n) return `the shadow of ${where} is present (${formatSpte(spte)}) but the guest PTE is not`;
        if (roleLevel(role) === 1) {
          const gfn = k.pages.peekEntryGfn(sp, idx);
          if (gpteGfn(gpte) !== gfn) return `the shadow of ${where} maps gfn ${hex(gfn)}, the guest PTE maps ${hex(gpteGfn(gpte))}`;
          if (isWritablePte(spte) && ((gpte & PT_WRITABLE_MASK) === 0n || (roleAccess(role) & ACC_WRITE_MASK) === 0))
            return `the shadow of ${where} is writable but the guest's translation is not`;
          if ((spte & SPTE_USER_MASK) !== 0n && ((gpte & PT_USER_MASK) === 0n || (roleAccess(role) & ACC_USER_MASK) === 0))
            return `the shadow of ${where} allows user access but the guest's translation does not`;
        } else {
          const child = spteToChild(spte);
          const childGfn = t[k.pages.hdr(child, SP_GFN)]!;
          if (!roleIsDirect(t[k.pages.hdr(child, SP_ROLE)]!) && childGfn !== gpteGfn(gpte))
            return `the shadow of ${where} links the shadow of table ${hex(childGfn)}, the guest PTE points to ${hex(gpteGfn(gpte))}`;
        }
      }
    }
    return null;
  }
}

/**
 * A page fault never changes a present leaf SPTE in a way that would need a TLB flush (the mapping removed, moved
 * to another pfn, or made read-only): faults do not flush, so a vCPU would go on using the old translation. KVM
 * WARNs on it in tdp_mmu_map_handle_target_level; in 2021 a fault on a memslot being deleted replaced a present
 * leaf with an MMIO SPTE (e0c378684b65). The fault path marks such a change; nothing is read.
 */
class FaultLeafNoFlush implements Monitor {
  readonly name = 'fault-leaf-no-flush';
  readonly statement = 'a page fault never changes a present leaf SPTE in a way that needs a TLB flush (faults do not flush)';
  onNote(_ex: Execution, _t: number, kind: number, gfn: number): string | null {
    if (kind !== NOTE.faultNeedsFlush) return null;
    return `a page fault replaced the present leaf SPTE of gfn ${hex(gfn)} with one that needs a TLB flush, and faults do not flush: a vCPU keeps the old translation`;
  }
}

/**
 * A gfn→pfn cache holds no reference on its page, so it is only as good as its invalidation: whenever KVM
 * accesses guest memory through a valid cache, the cached pfn is the frame the host maps at the cache's page
 * (58cd407ca4c6: a refresh that raced an MMU-notifier invalidation published a pfn the host went on to free).
 * Reads, at the access mark: the host's mapping word of that page.
 */
class GpcPfnMapped implements Monitor {
  readonly name = 'gpc-pfn-mapped';
  readonly statement = 'an access through a valid gfn→pfn cache reaches the frame the host maps at that page';
  constructor(private readonly o: Observer) {}
  onNote(_ex: Execution, _t: number, kind: number, hvpn: number, pfn: number): string | null {
    if (kind !== NOTE.gpcAccess) return null;
    const k = this.o.kvm;
    const w = this.o.r32(k.host.ptep(hvpn));
    const mapped = (w & MAP_PRESENT) !== 0 ? mapPfn(w) : -1;
    if (mapped === pfn) return null;
    const gfn = k.hvpnToGfn(hvpn);
    if (pfn < 0) return `KVM found the gfn→pfn cache of gfn ${hex(gfn)} valid with no pfn in it yet (a refresh marked it valid before its lookup)`;
    return (
      `KVM accessed gfn ${hex(gfn)} through its gfn→pfn cache at pfn ${hex(pfn)}, but the host maps ` +
      `${mapped < 0 ? 'nothing' : `pfn ${hex(mapped)}`} there: an invalidation passed the cache by, and the frame may be another page's`
    );
  }
}

/**
 * TDP mode: at the end, every page table in use is reachable from the root or waits for a grace period on the
 * RCU queue (KVM's a955cad84cda names the leak: a table linked into a root already zapped stays allocated and
 * maps memory no notifier reaches). A fault that loses its cmpxchg must free the table it made; a zap must
 * hand every table it unlinks to call_rcu. Reads at the end only.
 */
class NoLeakedTable implements Monitor {
  readonly name = 'no-leaked-table';
  readonly statement =
    'in TDP mode, every page table in use at the end is reachable from a root or waiting on RCU to be freed, and nothing is linked into an invalidated root after its zap';
  constructor(private readonly o: Observer) {}
  atEnd(): string | null {
    const k = this.o.kvm;
    if (!k.isTdp) return null;
    const t = k.mem.i32;
    const seen = new Set<number>();
    const visit = (sp: number, level: number): void => {
      seen.add(sp);
      if (level === 1) return;
      for (let i = 0; i < 512; i++) {
        const spte = k.mem.u64[k.pages.sptep(sp, i)]!;
        if (isShadowPresentPte(spte) && !isLastSpte(spte, level)) visit(spteToChild(spte), level - 1);
      }
    };
    for (let i = 0; i < k.tdp.nRootSlots; i++) {
      const root = k.tdp.peekRootAt(i);
      if (root < 0) continue;
      // A root whose zap (kvm_tdp_mmu_zap_invalidated_roots) is over is freed at its last put without another
      // sweep: anything still linked into it then is lost with it.
      if (k.tdp.peekRootZap(i) === ROOT_ZAP_TAKEN) {
        for (let e = 0; e < 512; e++) {
          const spte = k.mem.u64[k.pages.sptep(root, e)]!;
          if (isShadowPresentPte(spte) && !isLastSpte(spte, 4))
            return `page table ${spteToChild(spte)} is linked into root ${root} (entry #${e}) after that invalidated root was zapped: it leaks when the root is freed`;
        }
      }
      visit(root, 4);
    }
    for (const sp of k.tdp.rcu.peekQueued()) seen.add(sp);
    for (let sp = 0; sp < k.pages.nSp; sp++)
      if (t[k.pages.hdr(sp, SP_STATE)] === 1 && !seen.has(sp))
        return `page table ${sp} (level ${roleLevel(t[k.pages.hdr(sp, SP_ROLE)]!)}, gfn 0x${t[k.pages.hdr(sp, SP_GFN)]!.toString(16)}) is in use but neither reachable from a root nor waiting on RCU: it leaked`;
    return null;
  }
}

/**
 * TDP mode: FROZEN_SPTE means one thread owns the entry for a multi-step change, so no other thread changes a
 * frozen entry; and a table is freed only with no present entry left in it (a fault that set one in a table being
 * torn down leaves a mapping that vanishes with the table, its dirty state never handed to the host).
 * Reads: the value a step wrote to an SPTE (its own word); at a table's free, the table's entries that can be
 * present (those in a memslot). The frozen entries' owners are kept per entry, which only writes of that entry
 * change: they conflict on the entry itself.
 */
class FrozenEntryOwned implements Monitor {
  readonly name = 'frozen-entry-owned';
  readonly statement =
    'in TDP mode, no thread changes an SPTE another thread froze, and no page table is freed (or left to RCU to free) while one of its entries is present';
  private frozenBy = new Map<number, number>();
  constructor(private readonly o: Observer) {}
  reset(): void {
    this.frozenBy.clear();
  }
  afterStep(ex: Execution, s: Step): string | null {
    if (!this.o.kvm.isTdp) return null;
    if ((s.op !== OP.store64 && s.op !== OP.xchg64 && s.op !== OP.cmpxchg64) || s.a < this.o.sptLo || s.a >= this.o.sptHi) return null;
    const v = this.o.kvm.mem.u64[s.a]!; // the step's own word
    const owner = this.frozenBy.get(s.a);
    if (v === FROZEN_SPTE) {
      if (owner === undefined) this.frozenBy.set(s.a, s.thread);
      return null;
    }
    if (owner === undefined) return null;
    this.frozenBy.delete(s.a);
    if (owner === s.thread) return null;
    const k = this.o.kvm;
    return `thread '${ex.engine.threadNames[s.thread]}' changed SPTE (sp ${k.pages.spOf(s.a)}, #${k.pages.indexOf(s.a)}) to ${formatSpte(v)} while thread '${ex.engine.threadNames[owner]}' had it frozen (step ${ex.steps.length})`;
  }
  onNote(ex: Execution, _t: number, kind: number, sp: number): string | null {
    const k = this.o.kvm;
    if ((kind !== NOTE.spFree && kind !== NOTE.spDiscard) || !k.isTdp) return null;
    const role = this.o.r32(k.pages.hdr(sp, SP_ROLE));
    const level = roleLevel(role);
    const base = this.o.r32(k.pages.hdr(sp, SP_GFN));
    const span = LEVEL_PAGES[level]!;
    for (let i = 0; i < 512; i++) {
      const sptep = k.pages.sptep(sp, i);
      this.frozenBy.delete(sptep); // the table is gone: its frozen entries go back to zero
      const g = base + i * span;
      if (k.slotOf(g) < 0) continue;
      const spte = this.o.r64(sptep);
      if (isShadowPresentPte(spte))
        return `page table ${sp} (level ${level}) was freed while its entry #${i} (gfn 0x${g.toString(16)}) was present (${formatSpte(spte)}): a fault set it after the table was torn down, and the mapping vanishes with the table (step ${ex.steps.length})`;
    }
    return null;
  }
  /** A table torn down and waiting for its grace period is as good as freed: none of its entries may be present. */
  atEnd(): string | null {
    const k = this.o.kvm;
    if (!k.isTdp) return null;
    for (const sp of k.tdp.rcu.peekQueued()) {
      const t = k.mem.i32;
      const level = roleLevel(t[k.pages.hdr(sp, SP_ROLE)]!);
      const base = t[k.pages.hdr(sp, SP_GFN)]!;
      for (let i = 0; i < 512; i++) {
        const g = base + i * LEVEL_PAGES[level]!;
        if (k.slotOf(g) < 0) continue;
        const spte = k.mem.u64[k.pages.sptep(sp, i)]!;
        if (isShadowPresentPte(spte))
          return `page table ${sp} (level ${level}) was torn down and waits to be freed, but its entry #${i} (gfn 0x${g.toString(16)}) is present (${formatSpte(spte)}): a fault set it after the teardown passed it, and the mapping vanishes with the table`;
      }
    }
    return null;
  }
}

/** The built-in invariants for a scenario's machine (none for a scenario without a VM); they declare their reads to `fp`. */
export function builtinMonitors(machine: ScenarioMachine, fp?: Footprint): Monitor[] {
  if (machine.config === null) return [];
  const o = new Observer(machine, fp ?? null);
  const flushes = new VcpuFlushes(o);
  return [
    new TlbAfterWriteProtect(o, flushes),
    new TlbAfterUnmap(o, flushes),
    new NoFreedPageWalk(o),
    new SpteWithinHostMapping(o),
    new FrameDirtyBeforeDrop(o),
    new DirtyLogComplete(o),
    new WritableSpteLogged(o),
    new DirtyOrWriteProtected(o, flushes),
    new NoLeakedTable(o),
    new FrozenEntryOwned(o),
    new SpteWithinGuestPte(o),
    new GpcPfnMapped(o),
    new FaultLeafNoFlush(),
  ];
}

export const INVARIANT_NAMES = [
  'tlb-after-write-protect',
  'tlb-after-unmap',
  'no-freed-page-walk',
  'spte-within-host-mapping',
  'frame-dirty-before-drop',
  'dirty-log-complete',
  'writable-spte-logged',
  'dirty-or-write-protected',
  'no-leaked-table',
  'frozen-entry-owned',
  'spte-within-guest-pte',
  'gpc-pfn-mapped',
  'fault-leaf-no-flush',
] as const;
