// The benchmarks' JSON results (schema version 2 for both), with no runtime dependencies, and the few readings of them that the text report and the browser view share.

import type { MmuMode, PageMarking } from '../kvm/config';

export type FastPathSetting = 'on' | 'off' | 'both';

/** min / median / max of a set of samples. */
export interface Summary {
  readonly min: number;
  readonly median: number;
  readonly max: number;
}

/**
 * A distribution-free interval for the median of the population the samples
 * came from: two order statistics of the samples, and the probability
 * (`coverage`) that they bracket that median, if the samples are independent.
 */
export interface MedianInterval {
  readonly low: number;
  readonly high: number;
  readonly coverage: number;
}

export interface FaultCounts {
  /** Faults the lockless fast path fixed (KVM's pf_fast). */
  readonly fast: number;
  /** Faults the slow path fixed under mmu_lock. */
  readonly slow: number;
  /** Slow-path faults that found mmu_lock held or queued for (lock_stat's contentions). */
  readonly lockContended: number;
  /** Faults that found the access already allowed (KVM's pf_spurious). */
  readonly spurious: number;
}

export interface IterationTimes {
  /** Seconds from telling the vCPUs to write their memory until the last one finished. */
  readonly dirtySeconds: number;
  /** KVM_GET_DIRTY_LOG (plain: take the bitmap, write-protect, flush; manual protect: copy only). */
  readonly getSeconds: number;
  /** KVM_CLEAR_DIRTY_LOG of the whole slot (write-protect, flush), or null without --clear. */
  readonly clearSeconds: number | null;
}

/** One way of faulting (fast path on or off): its dirty-log iterations. */
export interface DirtyLogRun {
  readonly fastPath: boolean;
  readonly iterations: IterationTimes[];
  /** Summed over the vCPUs, over this way's iterations (not populate). */
  readonly faults: FaultCounts;
}

/** The VM's phases outside the iterations; with both ways the two share one VM, so these ran once. */
export interface DirtyLogPhases {
  readonly populateSeconds: number;
  readonly enableSeconds: number;
  readonly disableSeconds: number;
}

export interface Bookkeeping {
  /** The MMU's bookkeeping bytes: shadow pages, rmaps, dirty bitmaps, TLBs, vCPU words. */
  readonly bytes: number;
  readonly guestBytes: number;
  /** bytes / guestBytes. */
  readonly share: number;
  readonly byKind: Record<string, number>;
}

export interface MachineInfo {
  readonly cpus: number;
  readonly node: string;
}

/** `kvmmu bench dirty-log`, resolved. */
export interface DirtyLogConfig {
  /** vCPUs, one worker thread each (default 2; the selftest's -v default is 1). */
  readonly vcpus: number;
  /** Guest memory each vCPU dirties (default 512 MiB; the selftest's -b default is 1 GiB). */
  readonly bytesPerVcpu: number;
  /** Dirty-memory iterations after populating, for each way (default 20; the selftest requires at least 2). */
  readonly iterations: number;
  readonly mode: MmuMode;
  /** The fast page fault on, off, or both: one VM whose vCPUs switch it between passes, alternating which way goes first (default on). */
  readonly fastPath: FastPathSetting;
  /** KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 + initially-set: get only copies, clear-dirty-log write-protects (default off: plain get). */
  readonly clearDirtyLog: boolean;
  /** When KVM marks host pages dirty: spte (2012 to 6.12, the default) or fault (6.13 on). */
  readonly pageMarking: PageMarking;
}

/** `kvmmu bench scale`, resolved. */
export interface ScaleConfig {
  /** The sweep runs 1..maxVcpus vCPUs (default 2). */
  readonly maxVcpus: number;
  readonly bytesPerVcpu: number;
  readonly mode: MmuMode;
  /** Dirty-memory iterations per point and trial; the first (after enabling) is not measured (default 20). */
  readonly iterations: number;
  /** As DirtyLogConfig.pageMarking. */
  readonly pageMarking: PageMarking;
  /** Independent trials, each with its own VMs and vCPU threads (default 9). */
  readonly trials: number;
}

/** The JSON written to <out>/dirty-log.json (schema version 2; version 1 had a VM per way, each with its own phases). */
export interface DirtyLogResult {
  readonly kind: 'dirty-log';
  readonly version: 2;
  readonly config: DirtyLogConfig;
  readonly phases: DirtyLogPhases;
  /** Summed over the vCPUs, over the populate pass (every fault a slow one: no SPTE is present yet). */
  readonly populateFaults: FaultCounts;
  /** One per way: [on] or [off], or [on, off] for both. */
  readonly runs: DirtyLogRun[];
  /**
   * Re-dirty time (iterations 2.., after a dirty-log pass) with the fast path
   * off over on, iteration by iteration, and an interval for their median
   * (at least 95% from 6 ratios, i.e. 7 or more iterations; absent from files
   * written before it was added); null unless both ran.
   */
  readonly ratio: { readonly slowOverFast: Summary; readonly medianInterval?: MedianInterval } | null;
  readonly floor: {
    readonly nsPerOp: number;
    readonly fastFaultNs: number;
    readonly multiple: number;
    /** kvm.mmu.kvmMmuPageFault on a write-protected SPTE, one thread, fast path on and off (ns). */
    readonly handlerNs: { readonly fastPathOn: number; readonly fastPathOff: number };
  };
  readonly bookkeeping: Bookkeeping;
  readonly machine: MachineInfo;
}

export interface ScalePoint {
  readonly vcpus: number;
  readonly fastPath: boolean;
  /** Pages re-dirtied per second by all vCPUs together: vcpus * pagesPerVcpu / redirtySeconds (in `points`: the median over trials). */
  readonly pagesPerSecond: number;
  /** Median dirty-memory time of the iterations after the first (each follows a get-dirty-log pass); in `points`, the median over trials. */
  readonly redirtySeconds: number;
  /**
   * Over those iterations, all vCPUs: faults the slow path handled, and how many
   * of them found mmu_lock held or queued for (in `points`: summed over trials).
   */
  readonly slowFaults: number;
  readonly lockContended: number;
}

/** One trial's points: its own VMs, one per point. */
export interface ScaleTrial {
  readonly points: ScalePoint[];
}

/** The JSON written to <out>/scale.json (schema version 2; version 1 had one trial and no gain). */
export interface ScaleResult {
  readonly kind: 'scale';
  readonly version: 2;
  /** The settings; `iterations` (each point a median over iterations 2..) is absent from files written before it was recorded. */
  readonly config: Omit<ScaleConfig, 'iterations'> & { readonly iterations?: number };
  /** Each point's median over the trials. */
  readonly points: ScalePoint[];
  /** Throughput at maxVcpus over 1 vCPU, trial by trial, each way; null when maxVcpus is 1. */
  readonly gain: { readonly fastPathOn: Summary; readonly fastPathOff: Summary } | null;
  readonly trials: ScaleTrial[];
  readonly machine: MachineInfo;
}

/** A trial's throughput at `n` vCPUs over its throughput at 1, one way. */
export function trialGain(t: ScaleTrial, n: number, fastPath: boolean): number {
  const pps = (v: number) => t.points.find((p) => p.vcpus === v && p.fastPath === fastPath)!.pagesPerSecond;
  return pps(n) / pps(1);
}

/**
 * In how many trials the fast path's throughput grew more from 1 vCPU to
 * `maxVcpus` than the slow path's did in the same trial (the two ways' points
 * of a trial ran interleaved, under the same machine conditions); null when
 * maxVcpus is 1 and there is no gain to compare.
 */
export function trialsFastGainedMore(r: Pick<ScaleResult, 'config' | 'trials'>): number | null {
  const n = r.config.maxVcpus;
  if (n < 2) return null;
  return r.trials.filter((t) => trialGain(t, n, true) > trialGain(t, n, false)).length;
}

/** The ratio's interval for its median when it bounds anything: null if the file has none or it came from one ratio (coverage 0). */
export function ratioInterval(ratio: DirtyLogResult['ratio']): MedianInterval | null {
  const m = ratio?.medianInterval;
  return m === undefined || m.coverage === 0 ? null : m;
}
