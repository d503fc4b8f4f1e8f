// `kvmmu bench demand-paging`, after KVM's demand_paging_test: each vCPU touches its own untouched memory, and the time to fault it all in is measured per MMU mode and vCPU count, interleaved in one run.
//
// Every access is a first touch, so every fault takes the slow path: in direct
// (and shadow) mode under mmu_lock the spinlock, in tdp mode under mmu_lock
// held for read. What a second vCPU gains over one is the figure that tells the
// two apart (Gardon 2020: at 416 vCPUs 98% of the test's time went to waiting on
// mmu_lock, and the TDP MMU cut it by 89%). Points are interleaved — trial by
// trial every (mode, vCPUs) pair is run once, in an order that rotates — so a
// ratio compares VMs measured side by side; the gain is taken per trial.

import * as os from 'node:os';
import { KvmmuError } from '../shm/errors';
import { MMU_MODES, type MmuMode } from '../kvm/config';
import { collectGarbage } from './gc';
import { machineInfo, type ProgressFn } from './dirty-log';
import { summarize } from './stats';
import { BenchVm, benchDataPages } from './vm';
import type { Summary } from './results';

export interface DemandPagingConfig {
  readonly maxVcpus: number;
  readonly bytesPerVcpu: number;
  readonly trials: number;
  readonly modes: readonly MmuMode[];
  /**
   * Fault the host's pages in before the vCPUs run (as memory the VMM has touched), so a vCPU fault finds its
   * page with GUP-fast and the time is KVM's MMU alone; without it each first touch also allocates and zeroes
   * a frame under the host's locks, which serialize in kvmmu's host whatever mmu_lock does.
   */
  readonly hostPrefault: boolean;
}

// 1 GiB per vCPU, the selftest's default (memstress's DEFAULT_PER_VCPU_MEM_SIZE). Each trial's vCPUs are fresh
// threads whose code the JIT compiles again; at 64 MiB that start is a large part of a run of tens of ms and hides
// what a second vCPU gains (measured: 1.01x in tdp mode at 64 MiB, 1.42x at 1 GiB, the same day).
export const DEMAND_PAGING_DEFAULTS: DemandPagingConfig = { maxVcpus: 2, bytesPerVcpu: 1024 * 1024 * 1024, trials: 5, modes: ['direct', 'tdp'], hostPrefault: true };

/**
 * Touch every data page of the VM from the host side (writable), dropping the reference at once. The frame's bytes
 * are written too: the SharedArrayBuffer's memory is the real OS's to allocate on first write, and that page fault
 * (zeroing 4 KiB in the kernel that runs Node) is no part of the model's fault path, which the benchmark times.
 */
function prefaultHost(vm: BenchVm): void {
  const host = vm.kvm.host;
  const mem = vm.kvm.mem;
  for (let hvpn = 0; hvpn < vm.pagesPerVcpu * vm.options.vcpus; hvpn++) {
    const pfn = host.getUserPage(hvpn, true);
    mem.storeData64(host.frameByte(pfn) / 8, 0n);
    host.putPage(pfn);
  }
}

export interface DemandPagingPoint {
  readonly mode: MmuMode;
  readonly vcpus: number;
  /** Seconds from telling the vCPUs to start until the last one finished, per trial. */
  readonly seconds: Summary;
  /** Pages faulted in per second, all vCPUs together, per trial. */
  readonly pagesPerSecond: Summary;
  /** Slow faults in the last trial (every page: a first touch never takes the fast path) and how many found mmu_lock taken. */
  readonly slowFaults: number;
  readonly lockContended: number;
}

export interface DemandPagingResult {
  readonly benchmark: 'demand-paging';
  readonly config: DemandPagingConfig;
  readonly pagesPerVcpu: number;
  readonly points: readonly DemandPagingPoint[];
  /** Per mode: pages/s with maxVcpus over pages/s with one, taken trial by trial (null with -v 1). */
  readonly gain: Readonly<Record<string, Summary | null>>;
  readonly machine: ReturnType<typeof machineInfo> & { readonly loadAverage: number };
  readonly wallSeconds: number;
}

export function resolveDemandPaging(o: Partial<DemandPagingConfig>): DemandPagingConfig {
  const c = { ...DEMAND_PAGING_DEFAULTS, ...o };
  if (!Number.isInteger(c.maxVcpus) || c.maxVcpus < 1 || c.maxVcpus > 64) throw new KvmmuError(`-v must be from 1 to 64, not ${c.maxVcpus}`);
  if (!Number.isInteger(c.trials) || c.trials < 1 || c.trials > 100) throw new KvmmuError(`-t must be from 1 to 100, not ${c.trials}`);
  if (c.modes.length === 0) throw new KvmmuError('--modes needs at least one mode');
  for (const m of c.modes) if (!MMU_MODES.includes(m)) throw new KvmmuError(`unknown mode '${m}' in --modes: use ${MMU_MODES.join(', ')}`);
  benchDataPages({ vcpus: c.maxVcpus, bytesPerVcpu: c.bytesPerVcpu });
  return c;
}

export async function runDemandPagingBench(options: Partial<DemandPagingConfig>, onProgress?: ProgressFn): Promise<DemandPagingResult> {
  const c = resolveDemandPaging(options);
  const t0 = performance.now();
  const loadAverage = os.loadavg()[0]!;
  const pairs: { mode: MmuMode; vcpus: number }[] = [];
  for (const mode of c.modes) for (let v = 1; v <= c.maxVcpus; v++) pairs.push({ mode, vcpus: v });
  const total = c.trials * pairs.length;
  const seconds = pairs.map(() => [] as number[]);
  const rates = pairs.map(() => [] as number[]);
  const last = pairs.map(() => ({ slow: 0, lockContended: 0 }));
  const pagesPerVcpu = c.bytesPerVcpu / 4096;
  let done = 0;
  onProgress?.(0, total, 'starting');
  for (let t = 0; t < c.trials; t++) {
    for (let k = 0; k < pairs.length; k++) {
      const i = (k + t) % pairs.length; // rotate the order from trial to trial
      const p = pairs[i]!;
      const vm = await BenchVm.start({ mode: p.mode, vcpus: p.vcpus, bytesPerVcpu: c.bytesPerVcpu, fastPath: true });
      try {
        if (c.hostPrefault) prefaultHost(vm);
        const s = await vm.runPass();
        const f = vm.faults();
        seconds[i]!.push(s);
        rates[i]!.push((p.vcpus * pagesPerVcpu) / s);
        last[i] = { slow: f.slow, lockContended: f.lockContended };
      } finally {
        await vm.close();
      }
      collectGarbage();
      onProgress?.(++done, total, `trial ${t + 1}: ${p.mode}, ${p.vcpus} vCPU${p.vcpus === 1 ? '' : 's'}`);
    }
  }
  const points = pairs.map((p, i) => ({
    mode: p.mode,
    vcpus: p.vcpus,
    seconds: summarize(seconds[i]!),
    pagesPerSecond: summarize(rates[i]!),
    slowFaults: last[i]!.slow,
    lockContended: last[i]!.lockContended,
  }));
  const gain: Record<string, Summary | null> = {};
  for (const mode of c.modes) {
    if (c.maxVcpus === 1) {
      gain[mode] = null;
      continue;
    }
    const one = pairs.findIndex((p) => p.mode === mode && p.vcpus === 1);
    const top = pairs.findIndex((p) => p.mode === mode && p.vcpus === c.maxVcpus);
    gain[mode] = summarize(rates[top]!.map((r, t) => r / rates[one]![t]!));
  }
  return { benchmark: 'demand-paging', config: c, pagesPerVcpu, points, gain, machine: { ...machineInfo(), loadAverage }, wallSeconds: (performance.now() - t0) / 1000 };
}

const f2 = (x: number): string => x.toFixed(2);

export function formatDemandPaging(r: DemandPagingResult): string {
  const lines: string[] = [];
  const c = r.config;
  lines.push(
    `demand paging: each vCPU faults in ${r.pagesPerVcpu} pages it never touched (${c.bytesPerVcpu / 1048576} MiB)` +
      `${c.hostPrefault ? ', present in the host' : ', absent in the host too'}; ${c.trials} trial(s), modes and vCPU counts interleaved`,
  );
  lines.push('mode    vCPUs   fault-in time (median, min-max)     pages/s (median)   slow faults   found mmu_lock taken');
  for (const p of r.points)
    lines.push(
      `${p.mode.padEnd(7)} ${String(p.vcpus).padStart(5)}   ${f2(p.seconds.median * 1000).padStart(8)} ms (${f2(p.seconds.min * 1000)}-${f2(p.seconds.max * 1000)})`.padEnd(52) +
        `${Math.round(p.pagesPerSecond.median).toLocaleString('en-US').padStart(12)}   ${String(p.slowFaults).padStart(11)}   ${String(p.lockContended).padStart(20)}`,
    );
  for (const [mode, g] of Object.entries(r.gain))
    if (g !== null)
      lines.push(`${mode}: ${c.maxVcpus} vCPUs fault in ${f2(g.median)}x the pages per second of one (per-trial ratios ${f2(g.min)}-${f2(g.max)})`);
  lines.push(
    `machine: ${r.machine.cpus} CPUs, node ${r.machine.node}, load average ${r.machine.loadAverage.toFixed(2)} at the start; wall time ${r.wallSeconds.toFixed(1)} s` +
      (r.machine.cpus < c.maxVcpus ? ` (more vCPUs than CPUs: the gain cannot show parallelism)` : ''),
  );
  return lines.join('\n') + '\n';
}
