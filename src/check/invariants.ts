// The checker's built-in invariants for VM scenarios: monitors that watch each execution's steps and ghost notes and read shared state directly.
//
// They read the machine through a handle of the normal (not generator) build
// and plain typed-array reads, so watching changes nothing and is not a
// scheduling point.

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
} from '../kvm/kvm';
import { SP_GFN, SP_PRESENT, SP_ROLE, roleAccess, roleIsDirect, roleLevel } from '../kvm/mmu-page';
import { ACC_USER_MASK, ACC_WRITE_MASK, PT_PRESENT_MASK, PT_USER_MASK, PT_WRITABLE_MASK, gpteGfn } from '../x86/pte';
import {
  formatSpte,
  isMmuWritableSpte,
  isShadowPresentPte,
  isWritablePte,
  spteToChild,
  spteToPfn,
  SPTE_USER_MASK,
} from '../x86/spte';
import { readTlb } from '../vcpu/vcpu';
import type { Execution, Monitor, Step } from './engine';
import type { ScenarioMachine } from './gen/scenario';

/** A leaf SPTE as the monitors see it. */
export interface LeafSpte {
  readonly sp: number;
  readonly idx: number;
  readonly sptep: number;
  readonly spte: bigint;
  readonly gfn: number;
}

/** Plain-read views of the MMU's shared state. */
export class Observer {
  readonly kvm: Kvm;
  readonly sptLo: number;
  readonly sptHi: number;
  readonly mapLo: number;
  readonly mapHi: number;

  constructor(machine: ScenarioMachine) {
    if (machine.config === null) throw new Error('observer: no VM');
    this.kvm = new Kvm(new Mem(machine.shm), machine.shm.layout, machine.config);
    const spt = region(machine.shm.layout, 'kvm.spt');
    this.sptLo = spt.off / 8;
    this.sptHi = (spt.off + spt.bytes) / 8;
    const map = region(machine.shm.layout, 'host.map');
    this.mapLo = map.off / 4;
    this.mapHi = (map.off + map.bytes) / 4;
  }

  private get i32(): Int32Array {
    return this.kvm.mem.i32;
  }

  spInUse(sp: number): boolean {
    return this.kvm.pages.peekInUse(sp);
  }

  /** Indices of the entries marked present in shadow page `sp`. */
  presentIndices(sp: number): number[] {
    const out: number[] = [];
    for (let w = 0; w < 16; w++) {
      let bits = this.i32[this.kvm.pages.hdr(sp, SP_PRESENT + w)]!;
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
    const role = this.i32[k.pages.hdr(sp, SP_ROLE)]!;
    if (roleLevel(role) !== 1) return null;
    const spte = k.mem.u64[sptep]!;
    if (!isShadowPresentPte(spte)) return null;
    const idx = k.pages.indexOf(sptep);
    return { sp, idx, sptep, spte, gfn: k.pages.peekEntryGfn(sp, idx) };
  }

  /** Every present leaf SPTE in allocated shadow pages. */
  leafSptes(): LeafSpte[] {
    const k = this.kvm;
    const out: LeafSpte[] = [];
    for (let sp = 0; sp < k.pages.nSp; sp++) {
      if (!this.spInUse(sp)) continue;
      const role = this.i32[k.pages.hdr(sp, SP_ROLE)]!;
      if (roleLevel(role) !== 1) continue;
      for (let w = 0; w < 16; w++) {
        let bits = this.i32[k.pages.hdr(sp, SP_PRESENT + w)]!;
        while (bits !== 0) {
          const idx = w * 32 + (31 - Math.clz32(bits & -bits));
          bits &= bits - 1;
          const sptep = k.pages.sptep(sp, idx);
          const spte = k.mem.u64[sptep]!;
          if (!isShadowPresentPte(spte)) continue;
          out.push({ sp, idx, sptep, spte, gfn: k.pages.peekEntryGfn(sp, idx) });
        }
      }
    }
    return out;
  }

  vcpuMode(v: number): number {
    return this.i32[this.kvm.vcpuWord(v, VCPU_MODE)]! & 3;
  }

  flushPending(v: number): boolean {
    return (this.i32[this.kvm.vcpuWord(v, VCPU_REQUESTS)]! & KVM_REQ_TLB_FLUSH) !== 0;
  }

  bitmapHas(gfn: number): boolean {
    const k = this.kvm;
    const s = k.slotOf(gfn);
    if (s < 0) return false;
    const rel = gfn - k.slotGfn[s]!;
    return (this.i32[k.slotBitmap[s]! + (rel >>> 5)]! & (1 << (rel & 31))) !== 0;
  }

  loggingOn(gfn: number): boolean {
    const s = this.kvm.slotOf(gfn);
    return s >= 0 && (this.i32[this.kvm.slotFlagsWord(s)]! & SLOT_DIRTY_LOG) !== 0;
  }

  /** The guest word at gpa, read from the frame or swap copy (0 if the page was never touched). */
  guestWord(gpa: number): bigint {
    const k = this.kvm;
    const hvpn = k.gfnToHvpn(Math.floor(gpa / 4096));
    const byte = k.host.quietPageByte(hvpn);
    return byte < 0 ? 0n : k.mem.d64[(byte + (gpa % 4096)) / 8]!;
  }
}

const hex = (n: number): string => `0x${n.toString(16)}`;

/** No vCPU may use a writable TLB entry for a gfn once its write-protection for shadow paging has returned. */
class TlbAfterWriteProtect implements Monitor {
  readonly name = 'tlb-after-write-protect';
  readonly statement =
    'after a write-protection of a gfn returns, no vCPU holds a writable TLB entry for it (unless it is about to flush) and no SPTE maps it writable';
  constructor(private readonly o: Observer) {}
  onNote(ex: Execution, _t: number, kind: number, gfn: number): string | null {
    if (kind !== NOTE.wpDone) return null;
    const k = this.o.kvm;
    for (let v = 0; v < k.config.vcpus; v++) {
      const mode = this.o.vcpuMode(v);
      for (const e of readTlb(k, v)) {
        if (e.gfn !== gfn || (e.acc & ACC_WRITE_MASK) === 0) continue;
        if (mode !== IN_GUEST_MODE && this.o.flushPending(v)) continue;
        return (
          `vCPU ${v} still holds a writable TLB entry for gfn ${hex(gfn)} after the write-protection of that gfn (it became a ` +
          `shadowed guest page table) returned, with no flush pending (vCPU in ${MODE_NAMES[mode]}): its writes skip the MMU`
        );
      }
    }
    for (const s of this.o.leafSptes()) {
      if (s.gfn === gfn && (isWritablePte(s.spte) || isMmuWritableSpte(s.spte)))
        return `an SPTE still maps gfn ${hex(gfn)} as ${formatSpte(s.spte)} after its write-protection returned`;
    }
    void ex;
    return null;
  }
}

/** The dirty log names every gfn the guest wrote while logging was on. */
class DirtyLogComplete implements Monitor {
  readonly name = 'dirty-log-complete';
  readonly statement = 'every gfn the guest writes while dirty logging is on is reported by a later dirty-log get or clear';
  private pending = new Map<number, number>();
  constructor(private readonly o: Observer) {}
  reset(): void {
    this.pending.clear();
  }
  onNote(ex: Execution, t: number, kind: number, a: number): string | null {
    if (kind === NOTE.guestWrite && this.o.loggingOn(a)) {
      if (!this.pending.has(a)) this.pending.set(a, ex.steps.length);
    } else if (kind === NOTE.dirtyLogTaken) {
      this.pending.delete(a);
    }
    void t;
    return null;
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
    if (kind === NOTE.dirtyLogTaken) this.reported.set(a, ex.steps.length);
    return null;
  }
  afterStep(ex: Execution, s: Step): string | null {
    if ((s.op !== OP.store64 && s.op !== OP.xchg64 && s.op !== OP.cmpxchg64) || s.a < this.o.sptLo || s.a >= this.o.sptHi) return null;
    const spte = this.o.kvm.mem.u64[s.a]!;
    if (isShadowPresentPte(spte) && isWritablePte(spte)) {
      if (!this.writableSince.has(s.a)) this.writableSince.set(s.a, ex.steps.length);
    } else this.writableSince.delete(s.a);
    return null;
  }
  atEnd(): string | null {
    for (const [sptep, since] of this.writableSince) {
      const leaf = this.o.leafAt(sptep);
      if (leaf === null || !isWritablePte(leaf.spte)) continue;
      const gfn = leaf.gfn;
      if (!this.o.loggingOn(gfn) || this.o.bitmapHas(gfn) || (this.reported.get(gfn) ?? -1) >= since) continue;
      return (
        `the SPTE for gfn ${hex(gfn)} became writable (step ${since}) while dirty logging was on, but gfn ${hex(gfn)} is neither ` +
        `dirty in the bitmap nor reported since: the guest's writes through it go unlogged`
      );
    }
    return null;
  }
}

/** A frame the guest wrote through an SPTE must be dirty (written back) when the host drops it. */
class FrameDirtyBeforeDrop implements Monitor {
  readonly name = 'frame-dirty-before-drop';
  readonly statement = 'a frame written through an SPTE is marked dirty before that SPTE is dropped, so swap-out writes it back';
  private written = new Map<number, number>();
  reset(): void {
    this.written.clear();
  }
  onNote(ex: Execution, _t: number, kind: number, a: number, b: number): string | null {
    if (kind === NOTE.guestWrite) this.written.set(b, a);
    else if (kind === NOTE.swapOutWriteback || kind === NOTE.frameAlloc) this.written.delete(a);
    else if (kind === NOTE.swapOutClean && this.written.has(a))
      return (
        `gfn ${hex(this.written.get(a)!)} was written through an SPTE into frame ${hex(a)}, but the frame was not marked dirty when ` +
        `the SPTE was dropped: swap-out kept the stale swap copy and the guest's write is lost (step ${ex.steps.length})`
      );
    return null;
  }
}

/** A lockless walker must never read a shadow page that was freed after its walk began. */
class NoFreedPageWalk implements Monitor {
  readonly name = 'no-freed-page-walk';
  readonly statement = 'no lockless walker accesses a shadow page that was freed (and may be reused) after its walk began';
  private walking: (number | null)[] = [];
  private freed: Set<number>[] = [];
  constructor(private readonly o: Observer) {}
  reset(ex: Execution): void {
    this.walking = new Array<number | null>(ex.nThreads).fill(null);
    this.freed = Array.from({ length: ex.nThreads }, () => new Set<number>());
  }
  onNote(_ex: Execution, t: number, kind: number, a: number): string | null {
    if (kind === NOTE.walkBegin) {
      this.walking[t] = a;
      this.freed[t]!.clear();
    } else if (kind === NOTE.walkEnd) {
      this.walking[t] = null;
    } else if (kind === NOTE.spFree) {
      for (let u = 0; u < this.walking.length; u++) if (this.walking[u] !== null) this.freed[u]!.add(a);
    }
    return null;
  }
  afterStep(ex: Execution, s: Step): string | null {
    const v = this.walking[s.thread];
    if (v === null || v === undefined) return null;
    if (s.op !== OP.load64 && s.op !== OP.cmpxchg64) return null;
    if (s.a < this.o.sptLo || s.a >= this.o.sptHi) return null;
    const sp = this.o.kvm.pages.spOf(s.a);
    if (!this.freed[s.thread]!.has(sp)) return null;
    return `vCPU ${v}'s lockless walk ${s.op === OP.cmpxchg64 ? 'changed' : 'read'} an entry of shadow page ${sp} after that page was freed (step ${ex.steps.length}): the page may already map something else`;
  }
}

/** A present SPTE maps the frame the host maps for its gfn, and is writable only if the host mapping is. */
class SpteWithinHostMapping implements Monitor {
  readonly name = 'spte-within-host-mapping';
  readonly statement = 'no SPTE maps a frame other than the host mapping of its gfn, or grants write when the host mapping does not';
  constructor(private readonly o: Observer) {}
  afterStep(ex: Execution, s: Step): string | null {
    const writesSpte = (s.op === OP.store64 || s.op === OP.xchg64 || s.op === OP.cmpxchg64) && s.a >= this.o.sptLo && s.a < this.o.sptHi;
    const writesMap = (s.op === OP.store32 || s.op === OP.cmpxchg32) && s.a >= this.o.mapLo && s.a < this.o.mapHi;
    if (writesSpte) {
      // Only the SPTE this step wrote can have changed.
      const l = this.o.leafAt(s.a);
      return l === null ? null : this.verify(ex, l);
    }
    if (!writesMap) return null;
    for (const l of this.o.leafSptes()) {
      const msg = this.verify(ex, l);
      if (msg !== null) return msg;
    }
    return null;
  }

  private verify(ex: Execution, l: LeafSpte): string | null {
    const k = this.o.kvm;
    const m = k.host.peekMapping(k.gfnToHvpn(l.gfn));
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

/** The built-in invariants for a scenario's machine (none for a scenario without a VM). */
export function builtinMonitors(machine: ScenarioMachine): Monitor[] {
  if (machine.config === null) return [];
  const o = new Observer(machine);
  return [
    new TlbAfterWriteProtect(o),
    new NoFreedPageWalk(o),
    new SpteWithinHostMapping(o),
    new FrameDirtyBeforeDrop(),
    new DirtyLogComplete(o),
    new WritableSpteLogged(o),
    new SpteWithinGuestPte(o),
  ];
}

export const INVARIANT_NAMES = [
  'tlb-after-write-protect',
  'no-freed-page-walk',
  'spte-within-host-mapping',
  'frame-dirty-before-drop',
  'dirty-log-complete',
  'writable-spte-logged',
  'spte-within-guest-pte',
] as const;
