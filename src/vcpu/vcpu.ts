// A vCPU: its TLB in shared memory, the hardware walk over SPTEs (setting A/D atomically), guest reads/writes/fetches, VM exits and requests.
//
// Region vcpu.tlb: per vCPU `tlbEntries` entries of TLB_WORDS Int32 words,
// direct-mapped by virtual page number:
//   [0] tag: vpn + 1 (0 = empty)   [1] TLB generation at fill (valid iff equal to the vCPU's)
//   [2] pfn                        [3] flags: ACC_* rights | TLB_DIRTY (D was set when filled)
//   [4] gfn (for monitors)         [5] sptep it was filled from (for monitors)
// Only the owning vCPU's thread writes its TLB, so entries are read and written
// with plain accesses (not scheduling points); other threads only inspect them.
// A flush bumps the generation (kvm.vcpus[TLB_GEN]) instead of clearing entries.
//
// The vCPU's guest code runs in IN_GUEST_MODE. At every instruction boundary
// it looks at its mode word: a flusher that found it in guest mode has
// cmpxchg'd it to EXITING_GUEST_MODE (the model's IPI), so the vCPU exits,
// handles its requests (KVM_REQ_TLB_FLUSH empties the TLB) and re-enters.
// Because the vCPU publishes IN_GUEST_MODE before it checks requests and a
// flusher sets the request before it reads the mode, one of them always sees
// the other.
//
// Besides the TLB, the processor keeps a PDE cache (one of the SDM's
// paging-structure caches, 4.10.3): for a 2 MiB region, the leaf table its
// last walk reached, so the next walk there reads only the leaf SPTE. It is
// thread-private (plain fields), filled only from present entries, and valid
// for the TLB generation and root it was filled under, so every TLB flush
// empties it too, as INVEPT/INVVPID do. As the SDM says, invlpg drops it and a
// fault drops the faulting address's entry, so the walk after a fault is a
// full one. KVM relies on this: it frees a shadow page only after a remote TLB
// flush, which is what keeps a cached pointer to it from outliving it.
//
// Under two-dimensional paging (direct and tdp modes) a guest that sets
// CR0.PG (CPU_CR0_PG) has its own tables walked by the processor: each entry is
// read, and its A/D bits set, at a guest-physical address translated through
// the SPTEs (an SPTE that refuses is a VM exit for that gpa, KVM's TDP fault);
// the rights of the guest's translation, its protection key, CR0.WP, CR4.SMEP/
// SMAP/PKE, RFLAGS.AC and PKRU are applied by the processor, and a guest #PF is
// delivered to the guest without a VM exit. The TLB then caches the guest's
// rights and key with the SPTE's, as a processor does; PKRU is read at each
// access (WRPKRU flushes nothing).

import { region, type LayoutBuilder } from '../shm/layout';
import { NOTE } from '../shm/access';
import { KvmmuError } from '../shm/errors';
import {
  CPU_CR0_PG,
  CPU_CR0_WP,
  CPU_CR4_PKE,
  CPU_EFER_NX,
  CPU_RFLAGS_AC,
  CPU_SMM,
  LEVEL_BYTES_INV,
  LEVEL_PAGES,
  PFERR_PRESENT_MASK,
  PT_DIRTY_MASK,
  accessErrorCode,
  hasBits,
  isPermissionFault,
  setBits,
  type AccessKind,
} from '../x86/pte';
import { permissionFault } from '../x86/permission';
import { GuestWalker, type GuestPtAccess } from '../x86/walker';
import {
  SPTE_ACCESSED_MASK,
  SPTE_DIRTY_MASK,
  SPTE_PAGE_SIZE_MASK,
  SPTE_PRESENT_MASK,
  isLargeLow,
  isPresentLow,
  spteAccess,
  spteIndex,
  spteLowToChild,
  spteToPfn,
  SPTE_AD_DISABLED,
} from '../x86/spte';
import type { VmConfig } from '../kvm/config';
import {
  EXITING_GUEST_MODE,
  IN_GUEST_MODE,
  KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,
  KVM_REQ_TLB_FLUSH,
  KvmVcpu,
  OUTSIDE_GUEST_MODE,
  VCPU_CPU,
  VCPU_CR3_GFN,
  VCPU_ROOT,
  VCPU_STAT,
  VCPU_TLB_GEN,
  type Kvm,
} from '../kvm/kvm';
import { RET_PF_EMULATE, RET_PF_GUEST, RET_PF_NAMES } from '../kvm/mmu';

export const TLB_WORDS = 8;

/** PDE-cache entries per vCPU, direct-mapped by 2 MiB region (processors keep a few dozen). */
const PDE_CACHE_ENTRIES = 16;
export const TLB_TAG = 0;
export const TLB_GEN = 1;
export const TLB_PFN = 2;
export const TLB_FLAGS = 3;
export const TLB_GFN = 4;
export const TLB_SPTEP = 5;
/** Flag: the SPTE's D bit was set at fill, so a write needs no walk to set it. */
export const TLB_DIRTY = 1 << 8;
/**
 * Under two-dimensional paging the flags keep the guest's rights in bits 0..2,
 * the leaf's protection key in bits 9..12 and the SPTE's rights in bits 13..15:
 * the guest's rules (CR0.WP=0 lets the supervisor write a read-only page) do
 * not reach the SPTE's, which alone decide whether KVM must see the access.
 */
const TLB_PKEY_SHIFT = 9;
const TLB_SPTE_ACC_SHIFT = 13;

/** Exits for one instruction after which the vCPU reports a livelock (KVM keeps fixing what the processor keeps refusing). */
const MAX_EXITS_PER_ACCESS = 100;

export const READ: AccessKind = { write: false, user: false, fetch: false };
export const WRITE: AccessKind = { write: true, user: false, fetch: false };
export const FETCH: AccessKind = { write: false, user: false, fetch: true };
export const USER_READ: AccessKind = { write: false, user: true, fetch: false };
export const USER_WRITE: AccessKind = { write: true, user: true, fetch: false };
export const USER_FETCH: AccessKind = { write: false, user: true, fetch: true };
/** Implicit supervisor-mode accesses: the processor's own (descriptor tables, the TSS), supervisor at any CPL, SMAP whatever RFLAGS.AC. */
export const IMPLICIT_READ: AccessKind = { write: false, user: false, fetch: false, implicit: true };
export const IMPLICIT_WRITE: AccessKind = { write: true, user: false, fetch: false, implicit: true };
/** The accesses of a two-dimensional walk at the SPTE level (EPT knows no user/supervisor). */
const GPA_READ: AccessKind = READ;
const GPA_WRITE: AccessKind = WRITE;

export function reserveVcpus(b: LayoutBuilder, c: VmConfig): void {
  b.metaLines('vcpu.tlb', c.vcpus * c.tlbEntries * TLB_WORDS * 4);
}

/**
 * One instruction took MAX_EXITS_PER_ACCESS VM exits without completing: KVM's
 * fault handler keeps finding the access allowed (a spurious fault) while the
 * processor keeps refusing it. Not a guest-visible event: the guest would hang.
 */
export class VcpuLivelock extends KvmmuError {
  constructor(
    readonly gva: number,
    readonly errorCode: number,
    readonly lastResult: string,
  ) {
    super(
      `vCPU livelock at 0x${gva.toString(16)}: ${MAX_EXITS_PER_ACCESS} page-fault exits (error code 0x${errorCode.toString(16)}, KVM's last answer ${lastResult}) without completing the access`,
    );
  }
}

/**
 * A page fault the guest's own page tables cause: delivered to the guest (#PF).
 * A guest event, not a bug: it carries no stack trace, whose capture cost
 * several times the walk that raised it (kvmmu access raises millions).
 */
export class GuestPageFault extends Error {
  readonly gva: number;
  readonly errorCode: number;

  constructor(gva: number, errorCode: number) {
    // V8's Error.stackTraceLimit (not in the core's lib types): 0 while this error is made. No message either: the getter makes it.
    const v8Error = Error as { stackTraceLimit?: number };
    const limit = v8Error.stackTraceLimit;
    v8Error.stackTraceLimit = 0;
    super();
    v8Error.stackTraceLimit = limit;
    this.gva = gva;
    this.errorCode = errorCode;
  }

  override get message(): string {
    return `guest #PF at 0x${this.gva.toString(16)}, error code 0x${this.errorCode.toString(16)}`;
  }
}

export class Vcpu {
  readonly kv: KvmVcpu;
  readonly mem: Kvm['mem'];
  private readonly tlbBase: number;
  private readonly tlbMask: number;
  private readonly tlbGenWord: number;
  private tlbGen: number;
  /** CPL 3: guest accesses are user accesses. */
  user = false;
  /** Error code of the last hardware walk that faulted. */
  private lastEc = 0;
  /** The VM runs without A/D bits in SPTEs (config.adBits off): the walk looks for A/D-disabled SPTEs. */
  private readonly adDisabled: boolean;
  /** PDE cache: per entry the 2 MiB region number + 1 (0 = empty), the leaf table's shadow page, the TLB generation at fill. */
  private readonly pdeTag = new Int32Array(PDE_CACHE_ENTRIES);
  private readonly pdeSp = new Int32Array(PDE_CACHE_ENTRIES);
  private readonly pdeGen = new Int32Array(PDE_CACHE_ENTRIES);
  /** The root every valid PDE-cache entry was filled under. */
  private pdeRoot = -1;
  /** Two-dimensional paging (direct, tdp): with CR0.PG the processor walks the guest's tables itself. */
  private readonly twoDimensional: boolean;
  /** The processor's walk of the guest's tables under two-dimensional paging (its own, not KVM's vcpu.walker). */
  private readonly hwWalker = new GuestWalker();
  /** The guest's tables as that walk sees them: each entry's gpa through the SPTEs (see nestedPt). */
  private readonly nestedPt: GuestPtAccess;
  /** A gpa whose SPTE refused the walk's access (-1: none): the VM exit the walk ends in, with error code nestedEc. */
  private nestedGpa = -1;
  private nestedEc = 0;
  /** What the last SPTE walk (hwWalk) found: the leaf's rights, D, its sptep and shadow page. */
  private walkAcc = 0;
  private walkDirty = false;
  private walkSptep = 0;
  private walkSp = 0;
  /** The 4 KiB page's offset in a huge leaf (0 for a 4 KiB one). */
  private walkSub = 0;
  /** Address KVM's fault handler gets for the last fault: the gva (shadow, unpaged), or the gpa under two-dimensional paging. */
  private faultAddr = 0;

  constructor(
    readonly kvm: Kvm,
    readonly idx: number,
  ) {
    this.kv = new KvmVcpu(kvm, idx);
    this.mem = kvm.mem;
    this.tlbMask = kvm.config.tlbEntries - 1;
    this.tlbBase = region(kvm.layout, 'vcpu.tlb').off / 4 + idx * kvm.config.tlbEntries * TLB_WORDS;
    this.tlbGenWord = kvm.vcpuWord(idx, VCPU_TLB_GEN);
    this.tlbGen = this.mem.i32[this.tlbGenWord]!;
    this.adDisabled = !kvm.config.adBits;
    this.twoDimensional = kvm.config.mode !== 'shadow';
    this.nestedPt = new NestedGuestPt(this);
  }

  /** The guest's protection-key rights register (PKRU); with CR4.PKE set, the processor applies it to user pages. */
  get pkru(): number {
    return this.kv.pkru;
  }

  /**
   * The guest's WRPKRU. Unprivileged and not intercepted: no VM exit, no TLB
   * flush (a TLB entry keeps the key; PKRU is read at each access). #UD when
   * CR4.PKE is clear.
   */
  wrpkru(value: number): void {
    if ((this.kv.cpu & CPU_CR4_PKE) === 0) throw new KvmmuError('WRPKRU with CR4.PKE clear is #UD: set CPU_CR4_PKE first');
    this.kv.pkru = value >>> 0;
  }

  /** With CR4.PKE, under shadow paging: KVM does not offer protection keys there (the guest's CPUID lacks PKU, so the CR4 write is #GP). */
  private checkPke(cpu: number): void {
    if ((cpu & CPU_CR4_PKE) !== 0 && !this.twoDimensional)
      throw new KvmmuError(
        'CR4.PKE under shadow paging is #GP: KVM offers protection keys only with TDP (cpuid.c clears PKU when tdp_enabled is off); use mode tdp or direct with CPU_CR0_PG',
      );
  }

  /**
   * Control bits the hardware walk applies to SPTE rights. Under direct and tdp
   * modes the SPTEs are the second dimension (EPT-like: W and X only; the
   * guest's own bits apply to its own tables, see hwWalkGuest); shadow paging runs the guest's
   * paging on the shadow tables with CR0.WP and EFER.NX forced on, as KVM does
   * (an SPTE is NX only where the guest's own rules make the page
   * non-executable). With NX on, the hardware's error code says whether a
   * fault was a fetch even when the guest's EFER.NX and CR4.SMEP are off, so
   * KVM walks the guest's tables for the right access; the error code KVM
   * injects drops the fetch bit again where the guest's settings say so.
   */
  private cpuForWalk(): number {
    return this.twoDimensional ? CPU_CR0_WP | CPU_EFER_NX : this.kv.cpu | CPU_CR0_WP | CPU_EFER_NX;
  }

  /** Does the processor walk the guest's own tables (two-dimensional paging with CR0.PG)? */
  private guestPaging(): boolean {
    return this.twoDimensional && (this.kv.cpu & CPU_CR0_PG) !== 0;
  }

  /**
   * Power on: set the guest's CR3 (shadow mode) and control bits, load the MMU
   * root. Call once, on the thread that will run this vCPU, before entering the guest.
   */
  setup(cr3 = 0, cpu = this.kv.cpu): void {
    this.checkPke(cpu);
    this.kv.cr3 = cr3;
    this.kv.cpu = cpu;
    this.mem.i32[this.kvm.vcpuWord(this.idx, VCPU_CR3_GFN)] = Math.floor(cr3 / 4096);
    this.mem.i32[this.kvm.vcpuWord(this.idx, VCPU_CPU)] = cpu;
    this.kvm.selfVcpu = this.idx;
    this.enterRun();
    this.kvm.mmu.kvmMmuLoad(this.kv);
  }

  /**
   * The vCPU's thread enters KVM_RUN (setup does, and a thread the VMM let go again): in TDP mode it is an online
   * reader of the TDP MMU's RCU from here, its read sections free and its guest entries its quiescent states.
   */
  enterRun(): void {
    if (this.kvm.isTdp) this.kvm.tdp.rcu.setOnline(this.idx, true);
  }

  /**
   * The vCPU's thread leaves KVM_RUN for its VMM (a pause, the end of its work), outside guest mode: quiescent
   * for RCU until enterRun, so no grace period waits for a vCPU that is not running.
   */
  leaveRun(): void {
    if (this.kvm.isTdp) this.kvm.tdp.rcu.setOnline(this.idx, false);
  }

  /**
   * The guest writes CR0, CR4, EFER or RFLAGS so that its control bits (CPU_*)
   * become `cpu`. Under shadow paging KVM intercepts the control registers;
   * when a bit the MMU role depends on changes it resets the MMU context
   * (kvm_mmu_reset_context: the vCPU's root for the new role) and the TLB is
   * flushed. Call in guest mode, as the instruction runs.
   */
  setControlBits(cpu: number): void {
    const old = this.kv.cpu;
    if ((old & CPU_SMM) !== (cpu & CPU_SMM)) throw new KvmmuError('SMM is entered with enterSmm, not by writing control bits');
    this.checkPke(cpu);
    this.exitGuest();
    this.kv.cpu = cpu;
    this.mem.i32[this.kvm.vcpuWord(this.idx, VCPU_CPU)] = cpu;
    if (this.kvm.mmu.roleChanges(old, cpu)) {
      this.kvm.mmu.kvmMmuResetContext(this.kv);
      this.flushTlb();
    } else if (this.twoDimensional && ((old ^ cpu) & ~CPU_RFLAGS_AC) !== 0) {
      // The TLB holds the guest's rights as the old bits computed them (EFER.NX decides X; CR0.PG whether gva is gpa).
      this.flushTlb();
    }
    this.enterGuest();
  }

  /**
   * Enter System Management Mode (TDP mode): the MMU role changes, so KVM
   * resets the MMU context and the vCPU gets the SMM root. Outside guest mode.
   */
  enterSmm(): void {
    if (!this.kvm.isTdp) throw new KvmmuError('kvmmu models SMM in tdp mode only (a root of its own)');
    this.kv.cpu |= CPU_SMM;
    this.mem.i32[this.kvm.vcpuWord(this.idx, VCPU_CPU)] = this.kv.cpu;
    this.kvm.mmu.kvmMmuResetContext(this.kv);
    this.flushTlb();
  }

  /**
   * Take over a vCPU that was set up earlier (possibly by another handle or
   * thread): read its root, CR3 and control bits from shared memory. The vCPU
   * must be outside guest mode.
   */
  attach(): this {
    const t = this.mem.i32;
    this.kv.root = t[this.kvm.vcpuWord(this.idx, VCPU_ROOT)]! - 1;
    if (this.kv.root < 0) throw new Error(`vcpu ${this.idx}: attach before setup`);
    this.kv.cr3 = t[this.kvm.vcpuWord(this.idx, VCPU_CR3_GFN)]! * 4096;
    this.kv.cpu = t[this.kvm.vcpuWord(this.idx, VCPU_CPU)]!;
    this.kvm.selfVcpu = this.idx;
    if (this.kvm.isTdp && !this.kvm.tdp.rcu.isOnline(this.idx)) this.enterRun();
    return this;
  }

  // ---- guest mode ----

  /**
   * KVM's vcpu_enter_guest: publish IN_GUEST_MODE, then handle requests that raced in (and try again). In TDP mode
   * guest mode is a quiescent state for the TDP MMU's RCU (rcu_virt_note_context_switch): no read section may be
   * open here.
   */
  enterGuest(): void {
    if (this.kvm.isTdp) this.kvm.tdp.rcu.quiescentState();
    for (;;) {
      this.kv.setMode(IN_GUEST_MODE);
      if (this.mem.load32(this.kv.reqWord) === 0) return;
      this.leaveGuestMode();
      this.handleRequests();
    }
  }

  exitGuest(): void {
    this.leaveGuestMode();
    this.kv.count(VCPU_STAT.exits);
  }

  /**
   * OUTSIDE_GUEST_MODE: a release store (smp_wmb after the store, in KVM), but a full barrier in TDP mode, where
   * the word tells RCU the vCPU may now read page tables: a store held back behind the vCPU's next loads would
   * let an updater see it quiescent, in guest mode, while it already walks (context tracking's transitions are
   * fully ordered for the same reason).
   */
  private leaveGuestMode(): void {
    if (this.kvm.isTdp) this.kv.setMode(OUTSIDE_GUEST_MODE);
    else this.kv.setModeRelease(OUTSIDE_GUEST_MODE);
  }

  private handleRequests(): void {
    const r = this.mem.xchg32(this.kv.reqWord, 0);
    // A new root (TDP: the old one was invalidated) comes with a flush of what the old one translated.
    if ((r & KVM_REQ_MMU_FREE_OBSOLETE_ROOTS) !== 0 && this.kvm.tdp.freeObsoleteRoot(this.kv)) this.flushTlb();
    else if ((r & KVM_REQ_TLB_FLUSH) !== 0) this.flushTlb();
  }

  /** Empty this vCPU's TLB (bump its generation: a plain store, the TLB is this thread's own). */
  flushTlb(): void {
    this.tlbGen = (this.tlbGen + 1) | 0;
    this.mem.storePlain32(this.tlbGenWord, this.tlbGen);
    this.kv.count(VCPU_STAT.tlbFlushes);
  }

  /**
   * An instruction boundary: if a flusher kicked this vCPU (its mode is now
   * EXITING_GUEST_MODE: the model's IPI), exit, handle requests and re-enter.
   */
  private boundary(): void {
    if ((this.mem.load32(this.kv.modeWord) & 3) !== EXITING_GUEST_MODE) return;
    this.exitGuest();
    this.handleRequests();
    this.enterGuest();
  }

  // ---- guest instructions (call between enterGuest and exitGuest) ----

  read64(gva: number): bigint {
    return this.readAs(gva, this.user ? USER_READ : READ);
  }

  write64(gva: number, value: bigint): void {
    this.writeAs(gva, value, this.user ? USER_WRITE : WRITE);
  }

  /**
   * An implicit supervisor-mode read, as the processor makes of a descriptor
   * table or the TSS: a supervisor access whatever the CPL (`user`), and SMAP
   * applies to it whatever RFLAGS.AC says.
   */
  implicitRead64(gva: number): bigint {
    return this.readAs(gva, IMPLICIT_READ);
  }

  /** An implicit supervisor-mode write (the processor setting a descriptor's accessed or busy flag): see implicitRead64. */
  implicitWrite64(gva: number, value: bigint): void {
    this.writeAs(gva, value, IMPLICIT_WRITE);
  }

  private readAs(gva: number, kind: AccessKind): bigint {
    for (let exits = 0; ; exits++) {
      this.boundary();
      const pfn = this.translate(gva, kind);
      if (pfn >= 0) {
        this.kv.count(VCPU_STAT.accesses);
        return this.mem.loadData64((this.kvm.host.frameByte(pfn) + (gva % 4096)) / 8);
      }
      this.pageFaultExit(gva, null, exits);
    }
  }

  private writeAs(gva: number, value: bigint, kind: AccessKind): void {
    for (let exits = 0; ; exits++) {
      this.boundary();
      const pfn = this.translate(gva, kind);
      if (pfn >= 0) {
        this.kv.count(VCPU_STAT.accesses);
        this.mem.storeData64((this.kvm.host.frameByte(pfn) + (gva % 4096)) / 8, value);
        // Ghost note for monitors; looking the gfn up costs a little, so only when one is attached.
        if (this.mem.hook !== null) this.mem.note(NOTE.guestWrite, this.tlbGfn(gva), pfn);
        return;
      }
      if (this.pageFaultExit(gva, value, exits)) return;
    }
  }

  /** An instruction fetch from `gva` (no bytes are executed; the translation and its rights are what matter). */
  fetch(gva: number): void {
    const kind = this.user ? USER_FETCH : FETCH;
    for (let exits = 0; ; exits++) {
      this.boundary();
      if (this.translate(gva, kind) >= 0) {
        this.kv.count(VCPU_STAT.accesses);
        return;
      }
      this.pageFaultExit(gva, null, exits);
    }
  }

  /** The guest's invlpg: shadow mode intercepts it (KVM drops the shadow entry); the local TLB entry goes either way. */
  invlpg(gva: number): void {
    this.kv.count(VCPU_STAT.invlpg);
    if (this.kvm.config.mode === 'shadow') {
      this.exitGuest();
      this.kvm.mmu.kvmMmuInvlpg(this.kv, gva);
      this.tlbInvalidate(gva);
      this.enterGuest();
      return;
    }
    this.tlbInvalidate(gva);
  }

  /**
   * A VM exit for a page fault: run KVM's handler outside guest mode, emulate
   * the write if it asks (`value` is what the instruction writes), re-enter.
   * Returns true when emulation completed the instruction; throws GuestPageFault
   * when the guest's own tables fault.
   */
  private pageFaultExit(gva: number, value: bigint | null, exits: number): boolean {
    this.exitGuest();
    const r = this.kvm.mmu.kvmMmuPageFault(this.kv, this.faultAddr, this.lastEc);
    let done = false;
    if (r === RET_PF_EMULATE) {
      if (value === null) throw new Error('vcpu: KVM asked to emulate an access that writes nothing');
      // Shadow paging: the guest's walk found the gpa; with two-dimensional paging (direct, TDP) the fault was on the gpa.
      const gpa = this.kvm.config.mode === 'shadow' ? this.kv.walker.gfn * 4096 + (gva % 4096) : this.faultAddr;
      this.kvm.mmu.emulateWrite(gpa, value);
      done = true;
    }
    this.enterGuest();
    if (r === RET_PF_GUEST) throw new GuestPageFault(gva, this.kv.walker.errorCode);
    if (!done && exits + 1 >= MAX_EXITS_PER_ACCESS) throw new VcpuLivelock(gva, this.lastEc, RET_PF_NAMES[r] ?? String(r));
    return done;
  }

  // ---- translation: TLB, then the hardware walk ----

  /**
   * The pfn `gva` translates to for `kind`, from the TLB or a hardware walk;
   * -1 on a VM exit (error code in lastEc, the address for KVM in faultAddr).
   * A guest #PF under two-dimensional paging is thrown (GuestPageFault) with no exit.
   */
  private translate(gva: number, kind: AccessKind): number {
    const vpn = Math.floor(gva / 4096);
    const e = this.tlbBase + (vpn & this.tlbMask) * TLB_WORDS;
    const t = this.mem.i32;
    const paged = this.guestPaging();
    if (t[e + TLB_TAG] === vpn + 1 && t[e + TLB_GEN] === this.tlbGen) {
      const flags = t[e + TLB_FLAGS]!;
      const denied = paged
        ? permissionFault(this.kv.cpu, this.kv.pkru, flags & 7, (flags >>> TLB_PKEY_SHIFT) & 15, kind) !== 0 ||
          isPermissionFault((flags >>> TLB_SPTE_ACC_SHIFT) & 7, kind.fetch ? FETCH : kind.write ? GPA_WRITE : GPA_READ, this.cpuForWalk())
        : isPermissionFault(flags & 7, kind, this.cpuForWalk());
      if (!denied && (!kind.write || (flags & TLB_DIRTY) !== 0)) return t[e + TLB_PFN]!;
    }
    this.kv.count(VCPU_STAT.tlbMisses);
    return paged ? this.hwWalkGuest(gva, kind, e) : this.hwWalkFill(gva, kind, e);
  }

  /**
   * The processor's two-dimensional walk: the guest's tables from its CR3,
   * each entry through the SPTEs (nestedPt), then the page's gpa through the
   * SPTEs for the access itself. A refusal by the guest's tables is a #PF
   * delivered to the guest; one by an SPTE a VM exit for that gpa. Fills TLB
   * entry `e` with the guest's rights, its key and the SPTE's rights, and
   * dirty only when both the guest's leaf and the SPTE have D.
   */
  private hwWalkGuest(gva: number, kind: AccessKind, e: number): number {
    const w = this.hwWalker;
    this.nestedGpa = -1;
    const ok = w.walk(this.nestedPt, this.kv.cr3, gva, kind, this.kv.cpu, this.kv.pkru);
    if (this.nestedGpa >= 0) {
      this.faultAddr = this.nestedGpa;
      this.lastEc = this.nestedEc;
      return -1;
    }
    if (!ok) throw new GuestPageFault(gva, w.errorCode);
    const gpa = w.gfn * 4096 + (gva % 4096);
    const pfn = this.hwWalk(gpa, kind.write ? GPA_WRITE : kind.fetch ? FETCH : GPA_READ);
    if (pfn < 0) {
      this.faultAddr = gpa;
      return -1;
    }
    const dirty = this.walkDirty && hasBits(w.ptes[w.level]!, PT_DIRTY_MASK);
    this.tlbFill(e, gva, pfn, w.pteAccess | (w.pteKey << TLB_PKEY_SHIFT) | (this.walkAcc << TLB_SPTE_ACC_SHIFT), dirty);
    return pfn;
  }

  /** The walk's read of a guest entry at `gpa`: through the SPTEs; 0n (and a pending exit) once an SPTE refused. */
  nestedRead(gpa: number): bigint {
    if (this.nestedGpa >= 0) return 0n;
    const pfn = this.hwWalk(gpa, GPA_READ);
    if (pfn < 0) {
      this.nestedGpa = gpa;
      this.nestedEc = this.lastEc;
      return 0n;
    }
    return this.mem.loadData64((this.kvm.host.frameByte(pfn) + (gpa % 4096)) / 8);
  }

  /** The walk's A/D update of a guest entry: a write through the SPTEs (so dirty logging sees the table page), then a locked cmpxchg. */
  nestedCmpxchg(gpa: number, expected: bigint, v: bigint): bigint {
    if (this.nestedGpa >= 0) return ~expected;
    const pfn = this.hwWalk(gpa, GPA_WRITE);
    if (pfn < 0) {
      this.nestedGpa = gpa;
      this.nestedEc = this.lastEc;
      return ~expected;
    }
    return this.mem.cmpxchgData64((this.kvm.host.frameByte(pfn) + (gpa % 4096)) / 8, expected, v);
  }

  /** The processor's walk over the SPTEs for `gva` (hwWalk), filling TLB entry `e`. Returns the pfn, or -1 with `lastEc` set. */
  private hwWalkFill(gva: number, kind: AccessKind, e: number): number {
    const pfn = this.hwWalk(gva, kind);
    if (pfn < 0) {
      this.faultAddr = gva;
      return -1;
    }
    this.tlbFill(e, gva, pfn, this.walkAcc, this.walkDirty);
    return pfn;
  }

  /** Fill TLB entry `e` for `gva` from the last hwWalk: `flags` are the rights (and key), `dirty` whether a write needs no walk. */
  private tlbFill(e: number, gva: number, pfn: number, flags: number, dirty: boolean): void {
    const pages = this.kvm.pages;
    const t = this.mem.i32;
    t[e + TLB_TAG] = Math.floor(gva / 4096) + 1;
    t[e + TLB_GEN] = this.tlbGen;
    t[e + TLB_PFN] = pfn;
    t[e + TLB_FLAGS] = flags | (dirty ? TLB_DIRTY : 0);
    t[e + TLB_GFN] = pages.peekEntryGfn(this.walkSp, pages.indexOf(this.walkSptep)) + this.walkSub;
    t[e + TLB_SPTEP] = this.walkSptep;
    // For the checker, the whole TLB is one location keyed by its generation word (monitors read it: readTlb).
    this.mem.plainStoreDone(this.tlbGenWord);
  }

  /**
   * The processor's walk over the SPTEs for `gva` (a gpa under two-dimensional
   * paging): from the root, follow present non-leaf SPTEs; at the leaf check
   * the rights for `kind`, then set A (and D for a write) with a locked cmpxchg
   * as x86 does — if the SPTE changed under us, walk again. Returns the pfn,
   * with walkAcc/walkDirty/walkSptep/walkSp/walkSub set; or -1 with lastEc set.
   */
  private hwWalk(gva: number, kind: AccessKind): number {
    const pages = this.kvm.pages;
    const cpu = this.cpuForWalk();
    const region = Math.floor(gva * LEVEL_BYTES_INV[2]!);
    const pi = region & (PDE_CACHE_ENTRIES - 1);
    for (;;) {
      let sp: number;
      let level: number;
      if (this.pdeTag[pi] === region + 1 && this.pdeGen[pi] === this.tlbGen && this.pdeRoot === this.kv.root) {
        sp = this.pdeSp[pi]!;
        level = 1;
      } else {
        sp = this.kv.root;
        level = 4;
      }
      // Above level 1 the walk reads an entry's low word (see spteLowToChild).
      let sptep = pages.sptep(sp, spteIndex(gva, level));
      let low = level > 1 ? this.mem.load64Low(sptep) : 0;
      while (level > 1 && isPresentLow(low) && !isLargeLow(low)) {
        sp = spteLowToChild(low);
        level--;
        sptep = pages.sptep(sp, spteIndex(gva, level));
        if (level > 1) low = this.mem.load64Low(sptep);
        else this.pdeFill(pi, region, sp);
      }
      // A huge leaf (PS at level 2) ends the walk above level 1; it maps the 4 KiB page at gva's offset in it.
      const huge = level > 1 && isPresentLow(low);
      const spte = level > 1 && !huge ? 0n : this.mem.load64(sptep);
      // The whole entry, read again, is no longer a huge leaf (split meanwhile): walk again.
      if (huge && !hasBits(spte, SPTE_PAGE_SIZE_MASK)) continue;
      if (!hasBits(spte, SPTE_PRESENT_MASK)) {
        this.pdeTag[pi] = 0;
        this.lastEc = accessErrorCode(kind, cpu);
        return -1;
      }
      const acc = spteAccess(spte);
      if (isPermissionFault(acc, kind, cpu)) {
        this.pdeTag[pi] = 0;
        this.lastEc = PFERR_PRESENT_MASK | accessErrorCode(kind, cpu);
        return -1;
      }
      // Usually A (and D for a write) are set already: test the bits before building a new value (no BigInt to allocate).
      // An A/D-disabled SPTE (EPT without A/D) gets neither: a write through it is allowed by W alone.
      let dirty = hasBits(spte, SPTE_DIRTY_MASK);
      if (this.adDisabled && hasBits(spte, SPTE_AD_DISABLED)) dirty = kind.write;
      else if (!hasBits(spte, SPTE_ACCESSED_MASK) || (kind.write && !dirty)) {
        const want = setBits(spte, kind.write ? SPTE_ACCESSED_MASK | SPTE_DIRTY_MASK : SPTE_ACCESSED_MASK);
        if (this.mem.cmpxchg64(sptep, spte, want) !== spte) continue;
        dirty ||= kind.write;
      }
      // A huge leaf maps gva's 4 KiB page at its offset in it.
      const sub = huge ? Math.floor(gva / 4096) % LEVEL_PAGES[level]! : 0;
      this.walkAcc = acc;
      this.walkDirty = dirty;
      this.walkSptep = sptep;
      this.walkSp = sp;
      this.walkSub = sub;
      return spteToPfn(spte) + sub;
    }
  }

  /** Cache `sp` as the leaf table of 2 MiB region `region` (entry `pi`); a new root empties the cache first. */
  private pdeFill(pi: number, region: number, sp: number): void {
    if (this.pdeRoot !== this.kv.root) {
      this.pdeTag.fill(0);
      this.pdeRoot = this.kv.root;
    }
    this.pdeTag[pi] = region + 1;
    this.pdeSp[pi] = sp;
    this.pdeGen[pi] = this.tlbGen;
  }

  private tlbGfn(gva: number): number {
    const e = this.tlbBase + (Math.floor(gva / 4096) & this.tlbMask) * TLB_WORDS;
    return this.mem.i32[e + TLB_GFN]!;
  }

  /** invlpg's effect on this vCPU: the TLB entry for `gva`, and (as the SDM has it) the whole PDE cache. */
  private tlbInvalidate(gva: number): void {
    this.pdeTag.fill(0);
    const vpn = Math.floor(gva / 4096);
    const e = this.tlbBase + (vpn & this.tlbMask) * TLB_WORDS;
    if (this.mem.i32[e + TLB_TAG] === vpn + 1) {
      this.mem.i32[e + TLB_TAG] = 0;
      this.mem.plainStoreDone(this.tlbGenWord);
    }
  }
}

/** The guest's tables as the processor's two-dimensional walk reads them (each entry's gpa through the SPTEs). */
class NestedGuestPt implements GuestPtAccess {
  constructor(private readonly v: Vcpu) {}

  readGpte(gpa: number): bigint {
    return this.v.nestedRead(gpa);
  }

  cmpxchgGpte(gpa: number, expected: bigint, v: bigint): bigint {
    return this.v.nestedCmpxchg(gpa, expected, v);
  }
}

/** Valid TLB entries of vCPU `idx` (for monitors, displays and tests; plain reads). */
export interface TlbEntry {
  vpn: number;
  pfn: number;
  gfn: number;
  sptep: number;
  acc: number;
  dirty: boolean;
}

export function readTlb(kvm: Kvm, idx: number): TlbEntry[] {
  const base = region(kvm.layout, 'vcpu.tlb').off / 4 + idx * kvm.config.tlbEntries * TLB_WORDS;
  const t = kvm.mem.i32;
  const gen = t[kvm.vcpuWord(idx, VCPU_TLB_GEN)];
  const out: TlbEntry[] = [];
  for (let i = 0; i < kvm.config.tlbEntries; i++) {
    const e = base + i * TLB_WORDS;
    if (t[e + TLB_TAG] === 0 || t[e + TLB_GEN] !== gen) continue;
    out.push({
      vpn: t[e + TLB_TAG]! - 1,
      pfn: t[e + TLB_PFN]!,
      gfn: t[e + TLB_GFN]!,
      sptep: t[e + TLB_SPTEP]!,
      acc: t[e + TLB_FLAGS]! & 7,
      dirty: (t[e + TLB_FLAGS]! & TLB_DIRTY) !== 0,
    });
  }
  return out;
}
