// The floor under one fast page fault (a 64-bit Atomics.load plus Atomics.compareExchange) and the cost of kvm.mmu.fastPageFault itself, measured in the same run.

import type { MmuMode } from '../kvm/config';
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

/**
 * A VM on this thread for timing fast faults: `pages` pages, one vCPU that has
 * written every page (so every SPTE is present and MMU-writable), dirty logging on.
 */
class FastFaultRig {
  private readonly host: Kvm;
  private readonly vcpu: Vcpu;
  private readonly bitmap: Int32Array;
  private readonly base: number;

  constructor(
    mode: MmuMode,
    readonly pages: number,
  ) {
    const tablePages = mode === 'shadow' ? tablePagesFor(pages) : 0;
    const spec = createMachine({ mode, vcpus: 1, memBytes: (pages + tablePages) * 4096 });
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
   * clear W, flush TLBs; not timed), then time a loop calling
   * kvm.mmu.fastPageFault once for each page, in address order. Returns ns per call.
   */
  round(): number {
    const { host, vcpu, base, pages } = this;
    host.dirtyLog.get(0, this.bitmap);
    // The flush request get left is the vCPU's to handle before it re-enters; handle it as entry would.
    vcpu.enterGuest();
    vcpu.exitGuest();
    const t0 = now();
    const fixed = fastFaultLoop(vcpu.kvm.mmu, vcpu.kv, base, pages);
    const ns = ((now() - t0) * 1e6) / pages;
    if (fixed !== pages) throw new Error(`floor: the fast path fixed ${fixed} of ${pages} write-protected pages`);
    return ns;
  }
}

/**
 * The floor and a fast fault, measured in the same run, rounds interleaved so
 * that load from elsewhere on the machine falls on both alike.
 *
 * A fast fault here is one call of kvm.mmu.fastPageFault on a write-protected,
 * MMU-writable SPTE — lockless walk begin, 4-level walk, cmpxchg of W,
 * mark_page_dirty, walk end, the pf_fast count (and in shadow mode the seed's
 * gfn->pfn pin) — timed over a loop of one call per page with nothing
 * subtracted. The VM exit and the vCPU's retried access are not in it (they
 * are in the benchmark's dirty-memory times). Each figure is the median of
 * ROUNDS rounds, after WARMUP rounds of each that are not counted (JIT tiers).
 */
export function measureFloorAndFastFault(mode: MmuMode, pages: number, rounds = ROUNDS): FloorResult {
  const a = new BigUint64Array(new SharedArrayBuffer(FLOOR_WORDS * 8));
  const rig = new FastFaultRig(mode, pages);
  const floorOps = Math.max(pages * 8, 100_000);
  for (let r = 0; r < WARMUP; r++) {
    floorRound(a, floorOps);
    rig.round();
  }
  const floor: number[] = [];
  const fast: number[] = [];
  for (let r = 0; r < rounds; r++) {
    floor.push(floorRound(a, floorOps));
    fast.push(rig.round());
  }
  const nsPerOp = median(floor);
  const fastFaultNs = median(fast);
  return { nsPerOp, fastFaultNs, multiple: fastFaultNs / nsPerOp, mode, pages, rounds };
}
