// The floor under one fast page fault (a 64-bit Atomics.load plus Atomics.compareExchange), the cost of kvm.mmu.fastPageFault itself, and of the whole fault handler with the fast path on and off, measured in the same run.

import type { MmuMode, PageMarking } from '../kvm/config';
import type { Kvm, KvmVcpu } from '../kvm/kvm';
import { RET_PF_FIXED, type Mmu } from '../kvm/mmu';
import { createMachine, openKvm } from '../vcpu/machine';
import { GuestPageTables, tablePagesFor } from '../vcpu/guest-pt';
import { Vcpu } from '../vcpu/vcpu';
import { PFERR_PRESENT_MASK, PFERR_WRITE_MASK } from '../x86/pte';
import { median, now } from './stats';

export interface FloorResult {
  /** Median ns of one Atomics.load + one Atomics.compareExchange on a BigUint64Array over a SharedArrayBuffer. */
  readonly nsPerOp: number;
  /** Median ns of one kvm.mmu.fastPageFault call that fixes a write-protected SPTE. */
  readonly fastFaultNs: number;
  /** fastFaultNs / nsPerOp. */
  readonly multiple: number;
  /** Median ns of one kvm.mmu.kvmMmuPageFault call (the whole handler) fixing a write-protected SPTE, fast path on and off. */
  readonly handlerNs: { readonly fastPathOn: number; readonly fastPathOff: number };
  /** MMU mode the fast faults ran in, and how many pages each round fixed. */
  readonly mode: MmuMode;
  readonly pages: number;
  readonly rounds: number;
}

/** Words the floor loop cycles over (8 KiB: always in L1, as the SPTEs a fast fault touches are in cache). */
const FLOOR_WORDS = 1024;
const ROUNDS = 15;
const WARMUP = 5;
const SHADOW_BASE = 2 ** 39;

/**
 * The floor: a bare loop, each step one 64-bit Atomics.load and one
 * Atomics.compareExchange (setting bit 1, as the fast path sets W) on a
 * BigUint64Array over a SharedArrayBuffer. Returns ns per step for one round;
 * the loop's own counter and index arithmetic are included.
 */
export function floorRound(a: BigUint64Array, ops: number): number {
  const t0 = now();
  const sink = floorLoop(a, ops);
  const ns = ((now() - t0) * 1e6) / ops;
  if (sink === -1n) throw new Error('unreachable');
  return ns;
}

// The timed loops live in functions of their own that end right after the
// loop. V8 compiles a hot loop on entry (OSR) before the code after it has run;
// code there with no type feedback (a clock read) would deoptimize on every
// call, inside the timed region.
function floorLoop(a: BigUint64Array, ops: number): bigint {
  let sink = 0n;
  for (let i = 0; i < ops; i++) {
    const j = i & (FLOOR_WORDS - 1);
    const v = Atomics.load(a, j);
    sink ^= Atomics.compareExchange(a, j, v, v | 2n);
  }
  return sink;
}

/** Calls kvm.mmu.fastPageFault once for each page, in address order; returns how many it fixed. */
function fastFaultLoop(mmu: Mmu, kv: KvmVcpu, base: number, pages: number): number {
  const ec = PFERR_PRESENT_MASK | PFERR_WRITE_MASK;
  let fixed = 0;
  for (let i = 0; i < pages; i++) if (mmu.fastPageFault(kv, base + i * 4096, ec, i) === RET_PF_FIXED) fixed++;
  return fixed;
}

/** Calls kvm.mmu.kvmMmuPageFault (the VM exit's handler) once for each page, in address order; returns how many it fixed. */
function handlerLoop(mmu: Mmu, kv: KvmVcpu, base: number, pages: number): number {
  const ec = PFERR_PRESENT_MASK | PFERR_WRITE_MASK;
  let fixed = 0;
  for (let i = 0; i < pages; i++) if (mmu.kvmMmuPageFault(kv, base + i * 4096, ec) === RET_PF_FIXED) fixed++;
  return fixed;
}

/**
 * A VM on this thread for timing faults: `pages` pages, one vCPU that has
 * written every page (so every SPTE is present and MMU-writable), dirty
 * logging on, the fast path on or off.
 */
class FaultRig {
  private readonly host: Kvm;
  private readonly vcpu: Vcpu;
  private readonly bitmap: Int32Array;
  private readonly base: number;

  constructor(
    mode: MmuMode,
    readonly pages: number,
    fastPath: boolean,
    pageMarking: PageMarking = 'spte',
  ) {
    const tablePages = mode === 'shadow' ? tablePagesFor(pages) : 0;
    const spec = createMachine({ mode, vcpus: 1, memBytes: (pages + tablePages) * 4096, fastPath, pageMarking });
    this.host = openKvm(spec, -2);
    let cr3 = 0;
    this.base = mode === 'shadow' ? SHADOW_BASE : 0;
    if (mode === 'shadow') {
      const pt = GuestPageTables.build(this.host, pages, tablePages);
      for (let i = 0; i < pages; i++) pt.map(this.base + i * 4096, i, 7n);
      cr3 = pt.cr3;
    }
    this.vcpu = new Vcpu(openKvm(spec, 0), 0);
    this.vcpu.setup(cr3);
    this.vcpu.enterGuest();
    for (let i = 0; i < pages; i++) this.vcpu.write64(this.base + i * 4096, 1n);
    this.vcpu.exitGuest();
    this.host.dirtyLog.enable(0);
    this.bitmap = new Int32Array(this.host.dirtyLog.words(0));
  }

  /**
   * One round: write-protect every page as dirty logging does (KVM_GET_DIRTY_LOG:
   * clear W, flush TLBs; not timed), then time a loop calling `loop`'s function
   * (kvm.mmu.fastPageFault or kvmMmuPageFault) once for each page, in address
   * order. Returns ns per call.
   */
  round(loop: typeof fastFaultLoop): number {
    const { host, vcpu, base, pages } = this;
    host.dirtyLog.get(0, this.bitmap);
    // The flush request get left is the vCPU's to handle before it re-enters; handle it as entry would.
    vcpu.enterGuest();
    vcpu.exitGuest();
    const t0 = now();
    const fixed = loop(vcpu.kvm.mmu, vcpu.kv, base, pages);
    const ns = ((now() - t0) * 1e6) / pages;
    if (fixed !== pages) throw new Error(`floor: ${loop.name} fixed ${fixed} of ${pages} write-protected pages`);
    return ns;
  }
}

/**
 * The floor, a fast fault and the fault handler, measured in the same run,
 * rounds interleaved so that load from elsewhere on the machine falls on all
 * alike.
 *
 * A fast fault here is one call of kvm.mmu.fastPageFault on a write-protected,
 * MMU-writable SPTE — lockless walk begin, 4-level walk, cmpxchg of W,
 * mark_page_dirty, walk end, the pf_fast count (and in shadow mode the seed's
 * gfn->pfn pin) — timed over a loop of one call per page with nothing
 * subtracted. The handler is kvm.mmu.kvmMmuPageFault on the same kind of
 * SPTE (in shadow mode it walks the guest's tables first), in a VM with the
 * fast path on and in one with it off (then it takes the slow path: GUP-fast,
 * mmu_lock, direct_map or FNAME(fetch), prefetch, put_page — one thread, so
 * the lock is never contended). The VM exit and the vCPU's retried access are
 * in none of these (they are in the benchmark's dirty-memory times). Each
 * figure is the median of ROUNDS rounds, after WARMUP rounds of each that are
 * not counted (JIT tiers).
 */
export function measureFloorAndFastFault(mode: MmuMode, pages: number, pageMarking: PageMarking = 'spte', rounds = ROUNDS): FloorResult {
  const a = new BigUint64Array(new SharedArrayBuffer(FLOOR_WORDS * 8));
  const on = new FaultRig(mode, pages, true, pageMarking);
  const off = new FaultRig(mode, pages, false, pageMarking);
  const floorOps = Math.max(pages * 8, 100_000);
  const floor: number[] = [];
  const fast: number[] = [];
  const handlerOn: number[] = [];
  const handlerOff: number[] = [];
  for (let r = 0; r < WARMUP + rounds; r++) {
    const f = floorRound(a, floorOps);
    const ff = on.round(fastFaultLoop);
    const hOn = on.round(handlerLoop);
    const hOff = off.round(handlerLoop);
    if (r < WARMUP) continue;
    floor.push(f);
    fast.push(ff);
    handlerOn.push(hOn);
    handlerOff.push(hOff);
  }
  const nsPerOp = median(floor);
  const fastFaultNs = median(fast);
  return {
    nsPerOp,
    fastFaultNs,
    multiple: fastFaultNs / nsPerOp,
    handlerNs: { fastPathOn: median(handlerOn), fastPathOff: median(handlerOff) },
    mode,
    pages,
    rounds,
  };
}
