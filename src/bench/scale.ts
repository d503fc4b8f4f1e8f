// `kvmmu bench scale`: re-dirty throughput over 1..N vCPUs with the fast path on and off — faults under mmu_lock serialize, lockless ones do not.

import { Worker } from 'node:worker_threads';
import { median, summarize } from './stats';
import { collectGarbage } from './gc';
import { machineInfo, type ProgressFn } from './dirty-log';
import { resolveScale, type ScaleConfig } from './options';
import { BenchVm } from './vm';
import { trialGain, type FaultCounts, type ScalePoint, type ScaleResult, type ScaleTrial, type Summary } from './results';

export type { ScalePoint, ScaleResult };

export interface ScaleOutcome {
  readonly result: ScaleResult;
  readonly iterations: number;
  readonly pagesPerVcpu: number;
  /** How many threads' worth of a CPU-bound loop the machine ran at once, measured before the sweep (other load lowers it). */
  readonly parallelism: number;
  readonly wallSeconds: number;
}

/**
 * `trials` independent trials, each with its own VMs and vCPU threads; their
 * points are summarized by the median. In a trial, for n = 1..maxVcpus, two
 * VMs of n vCPUs, fast path on and off; each is populated and has dirty
 * logging enabled. Then `iterations` rounds: in each, every VM runs dirty
 * memory + get dirty log once, in an order that rotates from round to round.
 * A point's time is the median dirty-memory time of rounds 2.. — the guest
 * re-dirtying its memory after a dirty-log pass, every write a fault.
 *
 * The points are interleaved, not swept one after another, so that every point
 * is measured under the same machine conditions: the gain of 2 vCPUs over 1
 * compares passes run side by side, not seconds apart. (Swept, that gain moved
 * from run to run by more than the difference between the fast and the slow
 * path.) Trials, because a VM's speed is partly its own: four identical
 * one-vCPU VMs interleaved pass by pass in one process re-dirtied at
 * 1.7-3.2M pages/s, and a VM's new vCPU threads on the same memory at
 * 1.5-3.1M, so one trial's gain is partly which VMs were quick.
 */
export async function runScaleBench(options: Partial<ScaleConfig>, onProgress?: ProgressFn): Promise<ScaleOutcome> {
  const c = resolveScale(options);
  const t0 = performance.now();
  const nVms = c.maxVcpus * 2;
  const total = c.trials * (nVms * 2 + c.iterations);
  let done = 0;
  const step = (what: string): void => {
    done++;
    onProgress?.(done, total, what);
  };
  onProgress?.(0, total, 'measuring parallelism');
  const parallelism = await measureParallelism(c.maxVcpus);
  const trials: ScaleTrial[] = [];
  let pagesPerVcpu = 0;
  for (let t = 1; t <= c.trials; t++) {
    const r = await scaleTrial(c, (what) => step(`trial ${t}: ${what}`));
    trials.push({ points: r.points });
    pagesPerVcpu = r.pagesPerVcpu;
    // The closed VMs' guest memory goes only when V8 collects their buffers, which it does not
    // schedule for memory outside its heap: without this, memory grew by a trial's worth each trial.
    collectGarbage();
  }
  const points = trials[0]!.points.map((p0, k): ScalePoint => {
    const all = trials.map((tr) => tr.points[k]!);
    return {
      vcpus: p0.vcpus,
      fastPath: p0.fastPath,
      pagesPerSecond: median(all.map((p) => p.pagesPerSecond)),
      redirtySeconds: median(all.map((p) => p.redirtySeconds)),
      slowFaults: all.reduce((a, p) => a + p.slowFaults, 0),
      lockContended: all.reduce((a, p) => a + p.lockContended, 0),
    };
  });
  return {
    result: {
      kind: 'scale',
      version: 2,
      config: { maxVcpus: c.maxVcpus, bytesPerVcpu: c.bytesPerVcpu, iterations: c.iterations, mode: c.mode, pageMarking: c.pageMarking, trials: c.trials },
      points,
      gain: c.maxVcpus < 2 ? null : { fastPathOn: trialGains(trials, c.maxVcpus, true), fastPathOff: trialGains(trials, c.maxVcpus, false) },
      trials,
      machine: machineInfo(),
    },
    iterations: c.iterations,
    pagesPerVcpu,
    parallelism,
    wallSeconds: (performance.now() - t0) / 1000,
  };
}

/** Throughput at `n` vCPUs over 1, trial by trial, for one way. */
function trialGains(trials: readonly ScaleTrial[], n: number, fastPath: boolean): Summary {
  return summarize(trials.map((tr) => trialGain(tr, n, fastPath)));
}

/** One trial: fresh VMs for every point, populated, dirty logging enabled, then the interleaved rounds. */
async function scaleTrial(c: ScaleConfig, step: (what: string) => void): Promise<{ points: ScalePoint[]; pagesPerVcpu: number }> {
  const nVms = c.maxVcpus * 2;
  const vms: BenchVm[] = [];
  try {
    for (let n = 1; n <= c.maxVcpus; n++)
      for (const fast of [true, false]) {
        vms.push(await BenchVm.start({ mode: c.mode, vcpus: n, bytesPerVcpu: c.bytesPerVcpu, fastPath: fast, pageMarking: c.pageMarking }));
        step(`${n} vCPU(s), fast path ${fast ? 'on' : 'off'}: vCPUs ready`);
      }
    for (const vm of vms) {
      await vm.runPass();
      vm.kvm.dirtyLog.enable(0);
      step(`${vm.options.vcpus} vCPU(s), fast path ${vm.options.fastPath ? 'on' : 'off'}: populate, enable dirty logging`);
    }
    const times: number[][] = vms.map(() => []);
    // Fault counts when each VM's measured passes (rounds 2..) begin.
    const before: FaultCounts[] = [];
    for (let it = 1; it <= c.iterations; it++) {
      for (let j = 0; j < nVms; j++) {
        const k = (j + it) % nVms;
        const vm = vms[k]!;
        if (it === 2) before[k] = vm.faults();
        times[k]!.push(await vm.runPass());
        vm.kvm.dirtyLog.get(0, vm.bitmap);
        const missing = vm.missingFromLog();
        if (missing !== 0) throw new Error(`scale: the dirty log misses ${missing} of the pages the vCPUs wrote`);
      }
      step(`iteration ${it}`);
    }
    const points = vms.map((vm, k): ScalePoint => {
      const n = vm.options.vcpus;
      const redirtySeconds = median(times[k]!.slice(1));
      const measured = vm.faultsSince(before[k]!);
      return {
        vcpus: n,
        fastPath: vm.options.fastPath,
        pagesPerSecond: (n * vm.pagesPerVcpu) / redirtySeconds,
        redirtySeconds,
        slowFaults: measured.slow,
        lockContended: measured.lockContended,
      };
    });
    return { points, pagesPerVcpu: vms[0]!.pagesPerVcpu };
  } finally {
    await Promise.all(vms.map((vm) => vm.close()));
  }
}

/** A CPU-bound loop (no shared memory) for measureParallelism's workers. */
const SPIN_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
let x = 1;
const t0 = performance.now();
for (let i = 0; i < workerData; i++) x = (Math.imul(x, 1103515245) + 12345) | 0;
parentPort.postMessage([performance.now() - t0, x]);
`;

/**
 * How much the machine runs `n` threads at once: the same CPU-bound loop on
 * one worker, then on `n` workers together; returns n * t(1) / t(n), the number
 * of threads' worth of work done in parallel (n on an idle machine with n cores).
 */
export async function measureParallelism(n: number, loops = 60_000_000): Promise<number> {
  const run = (k: number): Promise<number> =>
    new Promise((resolve, reject) => {
      const t0 = performance.now();
      let left = k;
      for (let i = 0; i < k; i++) {
        const w = new Worker(SPIN_WORKER, { eval: true, workerData: loops });
        w.once('message', () => {
          void w.terminate();
          if (--left === 0) resolve(performance.now() - t0);
        });
        w.once('error', reject);
      }
    });
  await run(1); // start-up and JIT warm-up
  const one = await run(1);
  const many = n === 1 ? one : await run(n);
  return (n * one) / many;
}
