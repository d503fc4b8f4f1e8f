// `kvmmu bench dirty-log`: KVM's dirty_log_perf_test on real threads — populate, enable dirty logging, dirty / get / clear per iteration, disable — fast path on, off, or both alternating on one VM.

import * as os from 'node:os';
import { medianInterval, summarize } from './stats';
import { measureFloorAndFastFault, type FloorResult } from './floor';
import { resolveDirtyLog, type DirtyLogConfig } from './options';
import { BenchVm, addFaults } from './vm';
import type { IterationTimes, DirtyLogRun, Bookkeeping, MachineInfo, DirtyLogResult, FaultCounts, MedianInterval, Summary } from './results';

export type { IterationTimes, DirtyLogRun, Bookkeeping, MachineInfo, DirtyLogResult };

/** The result plus what only the text report shows. */
export interface DirtyLogOutcome {
  readonly result: DirtyLogResult;
  readonly floor: FloorResult;
  readonly pagesPerVcpu: number;
  /** The machine's 1-minute load average when the run started (other work skews times; ratios suffer less). */
  readonly loadAverage: number;
  readonly wallSeconds: number;
}

export type ProgressFn = (done: number, total: number, what: string) => void;

/** Pages the fast-fault measurement fixes per round (64 MiB), or fewer for a smaller region. */
const FAST_FAULT_PAGES = 16384;

export function machineInfo(): MachineInfo {
  return { cpus: os.availableParallelism(), node: process.version };
}

/**
 * KVM's dirty_log_perf_test on one VM: populate, enable dirty logging, then
 * `iterations` rounds of dirty memory + get (+ clear) dirty log, then disable.
 * With `--fast-path both` each round runs that iteration twice on the same VM,
 * once per way: the vCPUs switch the fast path between passes, and which way
 * goes first alternates from round to round. Both ways so fault on the same
 * frames, SPTEs and memory, with the same vCPU threads, and each pair of
 * passes runs side by side in time. With a VM per way, each VM's own speed
 * (identical VMs here re-dirty at rates up to 2x apart) moved the ratio from
 * run to run by about as much as the fast path's whole effect.
 */
export async function runDirtyLogBench(options: Partial<DirtyLogConfig>, onProgress?: ProgressFn): Promise<DirtyLogOutcome> {
  const c = resolveDirtyLog(options);
  const t0 = performance.now();
  const loadAverage = os.loadavg()[0]!;
  const ways = c.fastPath === 'both' ? [true, false] : [c.fastPath === 'on'];
  const total = 4 + ways.length * c.iterations + 1;
  let done = 0;
  const step = (what: string): void => {
    done++;
    onProgress?.(done, total, what);
  };
  onProgress?.(0, total, 'starting vCPUs');

  let vm: BenchVm | null = null;
  try {
    vm = await BenchVm.start({ mode: c.mode, vcpus: c.vcpus, bytesPerVcpu: c.bytesPerVcpu, fastPath: ways[0]!, pageMarking: c.pageMarking });
    step('vCPUs ready');
    const log = vm.kvm.dirtyLog;
    let before = vm.faults();
    const populateSeconds = await vm.runPass();
    const populateFaults = vm.faultsSince(before);
    step('populate memory');
    let t = performance.now();
    log.enable(0, c.clearDirtyLog);
    const enableSeconds = (performance.now() - t) / 1000;
    step('enable dirty logging');
    const runs = ways.map((fastPath) => ({ fastPath, iterations: [] as IterationTimes[], faults: ZERO_FAULTS }));
    for (let it = 1; it <= c.iterations; it++) {
      const order = it % 2 === 1 ? runs : [...runs].reverse();
      for (const r of order) {
        before = vm.faults();
        r.iterations.push(await iteration(vm, it, r.fastPath, c.clearDirtyLog));
        r.faults = addFaults(r.faults, vm.faultsSince(before));
        step(`iteration ${it}, fast path ${r.fastPath ? 'on' : 'off'}`);
      }
    }
    t = performance.now();
    log.disable(0);
    const disableSeconds = (performance.now() - t) / 1000;
    step('disable dirty logging');
    const byKind = vm.bookkeeping();
    const bytes = Object.values(byKind).reduce((a, b) => a + b, 0);
    const guestBytes = vm.guestBytes;
    const pagesPerVcpu = vm.pagesPerVcpu;
    await vm.close();
    vm = null;
    const floor = measureFloorAndFastFault(c.mode, Math.min(FAST_FAULT_PAGES, pagesPerVcpu), c.pageMarking);
    step('floor');
    return {
      result: {
        kind: 'dirty-log',
        version: 2,
        config: {
          vcpus: c.vcpus,
          bytesPerVcpu: c.bytesPerVcpu,
          iterations: c.iterations,
          mode: c.mode,
          fastPath: c.fastPath,
          clearDirtyLog: c.clearDirtyLog,
          pageMarking: c.pageMarking,
        },
        phases: { populateSeconds, enableSeconds, disableSeconds },
        populateFaults,
        runs,
        ratio: redirtyRatio(runs),
        floor: { nsPerOp: floor.nsPerOp, fastFaultNs: floor.fastFaultNs, multiple: floor.multiple, handlerNs: floor.handlerNs },
        bookkeeping: { bytes, guestBytes, share: bytes / guestBytes, byKind },
        machine: machineInfo(),
      },
      floor,
      pagesPerVcpu,
      loadAverage,
      wallSeconds: (performance.now() - t0) / 1000,
    };
  } finally {
    await vm?.close();
  }
}

const ZERO_FAULTS: FaultCounts = { fast: 0, slow: 0, spurious: 0, lockContended: 0 };

/** One iteration of the selftest's loop, one way: dirty memory, get the log (check it names every page), clear it. */
async function iteration(vm: BenchVm, it: number, fastPath: boolean, clear: boolean): Promise<IterationTimes> {
  const log = vm.kvm.dirtyLog;
  const dirtySeconds = await vm.runPass(fastPath);
  let t = performance.now();
  if (clear) log.getManual(0, vm.bitmap);
  else log.get(0, vm.bitmap);
  const getSeconds = (performance.now() - t) / 1000;
  const missing = vm.missingFromLog();
  if (missing !== 0) throw new Error(`iteration ${it}: the dirty log misses ${missing} of the pages the vCPUs wrote`);
  let clearSeconds: number | null = null;
  if (clear) {
    t = performance.now();
    log.clear(0, 0, vm.bitmap);
    clearSeconds = (performance.now() - t) / 1000;
  }
  return { dirtySeconds, getSeconds, clearSeconds };
}

/**
 * The seed's headline: the guest's time to re-dirty its memory after a
 * dirty-log pass, fast path off over on, iteration by iteration from the
 * second. Iteration 1's first pass follows enabling dirty logging rather than
 * a dirty-log pass (and with initially-set does not fault at all), so
 * iteration 1 is left out for both ways. With the ratios' min / median / max
 * goes an interval for their median (medianInterval), so a run says how
 * closely its iterations pin the median down. Null unless both ways ran.
 */
export function redirtyRatio(runs: readonly DirtyLogRun[]): { slowOverFast: Summary; medianInterval: MedianInterval } | null {
  const fast = runs.find((r) => r.fastPath);
  const slow = runs.find((r) => !r.fastPath);
  if (fast === undefined || slow === undefined) return null;
  const ratios: number[] = [];
  for (let i = 1; i < fast.iterations.length; i++) ratios.push(slow.iterations[i]!.dirtySeconds / fast.iterations[i]!.dirtySeconds);
  return ratios.length === 0 ? null : { slowOverFast: summarize(ratios), medianInterval: medianInterval(ratios) };
}
