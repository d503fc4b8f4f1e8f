// `kvmmu bench dirty-log`: KVM's dirty_log_perf_test on real threads — populate, enable dirty logging, dirty / get / clear per iteration, disable — fast path on, off, or both alternating.

import * as os from 'node:os';
import { summarize } from './stats';
import { measureFloorAndFastFault, type FloorResult } from './floor';
import { resolveDirtyLog, type DirtyLogConfig } from './options';
import { BenchVm } from './vm';
import type { IterationTimes, DirtyLogRun, Bookkeeping, MachineInfo, DirtyLogResult, Summary } from './results';

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

export async function runDirtyLogBench(options: Partial<DirtyLogConfig>, onProgress?: ProgressFn): Promise<DirtyLogOutcome> {
  const c = resolveDirtyLog(options);
  const t0 = performance.now();
  const loadAverage = os.loadavg()[0]!;
  const ways = c.fastPath === 'both' ? [true, false] : [c.fastPath === 'on'];
  const total = ways.length * (4 + c.iterations) + 1;
  let done = 0;
  const step = (what: string): void => {
    done++;
    onProgress?.(done, total, what);
  };
  onProgress?.(0, total, 'starting vCPUs');

  const vms: BenchVm[] = [];
  try {
    for (const fast of ways) {
      vms.push(await BenchVm.start({ mode: c.mode, vcpus: c.vcpus, bytesPerVcpu: c.bytesPerVcpu, fastPath: fast, pageMarking: c.pageMarking }));
      step(`fast path ${fast ? 'on' : 'off'}: vCPUs ready`);
    }
    const runs = vms.map((vm) => ({
      vm,
      populateSeconds: 0,
      enableSeconds: 0,
      disableSeconds: 0,
      iterations: [] as IterationTimes[],
    }));
    // Each phase runs on every VM before the next phase starts, and the order flips every
    // iteration, so drift on the machine (other load, frequency) falls on both ways alike.
    for (const r of runs) {
      r.populateSeconds = await r.vm.runPass();
      step('populate memory');
    }
    for (const r of runs) {
      const t = performance.now();
      r.vm.kvm.dirtyLog.enable(0, c.clearDirtyLog);
      r.enableSeconds = (performance.now() - t) / 1000;
      step('enable dirty logging');
    }
    for (let it = 1; it <= c.iterations; it++) {
      const order = it % 2 === 1 ? runs : [...runs].reverse();
      for (const r of order) {
        r.iterations.push(await iteration(r.vm, it, c.clearDirtyLog));
        step(`iteration ${it}`);
      }
    }
    for (const r of runs) {
      const t = performance.now();
      r.vm.kvm.dirtyLog.disable(0);
      r.disableSeconds = (performance.now() - t) / 1000;
      step('disable dirty logging');
    }
    const first = vms[0]!;
    const byKind = first.bookkeeping();
    const bytes = Object.values(byKind).reduce((a, b) => a + b, 0);
    const result: Omit<DirtyLogResult, 'floor'> = {
      kind: 'dirty-log',
      version: 1,
      config: {
        vcpus: c.vcpus,
        bytesPerVcpu: c.bytesPerVcpu,
        iterations: c.iterations,
        mode: c.mode,
        fastPath: c.fastPath,
        clearDirtyLog: c.clearDirtyLog,
        pageMarking: c.pageMarking ?? 'spte',
      },
      runs: runs.map((r) => ({
        fastPath: r.vm.options.fastPath,
        phases: {
          populateSeconds: r.populateSeconds,
          enableSeconds: r.enableSeconds,
          disableSeconds: r.disableSeconds,
          iterations: r.iterations,
        },
        faults: r.vm.faults(),
      })),
      ratio: null,
      bookkeeping: { bytes, guestBytes: first.guestBytes, share: bytes / first.guestBytes, byKind },
      machine: machineInfo(),
    };
    const pagesPerVcpu = first.pagesPerVcpu;
    await Promise.all(vms.map((vm) => vm.close()));
    vms.length = 0;
    const floor = measureFloorAndFastFault(c.mode, Math.min(FAST_FAULT_PAGES, pagesPerVcpu), c.pageMarking);
    step('floor');
    return {
      result: {
        ...result,
        ratio: redirtyRatio(result.runs),
        floor: { nsPerOp: floor.nsPerOp, fastFaultNs: floor.fastFaultNs, multiple: floor.multiple, handlerNs: floor.handlerNs },
      },
      floor,
      pagesPerVcpu,
      loadAverage,
      wallSeconds: (performance.now() - t0) / 1000,
    };
  } finally {
    await Promise.all(vms.map((vm) => vm.close()));
  }
}

/** One iteration of the selftest's loop on one VM: dirty memory, get the log (check it names every page), clear it. */
async function iteration(vm: BenchVm, it: number, clear: boolean): Promise<IterationTimes> {
  const log = vm.kvm.dirtyLog;
  const dirtySeconds = await vm.runPass();
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
 * dirty-log pass, fast path off over on, per iteration from the second (the
 * first follows enabling, not a dirty-log pass; with initially-set it does not
 * fault at all). Null unless both ways ran.
 */
export function redirtyRatio(runs: readonly DirtyLogRun[]): { slowOverFast: Summary } | null {
  const fast = runs.find((r) => r.fastPath);
  const slow = runs.find((r) => !r.fastPath);
  if (fast === undefined || slow === undefined) return null;
  const ratios: number[] = [];
  for (let i = 1; i < fast.phases.iterations.length; i++)
    ratios.push(slow.phases.iterations[i]!.dirtySeconds / fast.phases.iterations[i]!.dirtySeconds);
  return ratios.length === 0 ? null : { slowOverFast: summarize(ratios) };
}
