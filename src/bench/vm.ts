// A benchmark VM: one machine in shared memory, its vCPUs on worker threads driven pass by pass, and a host handle for dirty logging on this thread.

import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { KvmmuError } from '../shm/errors';
import { SPARE_FRAMES, resolveConfig, type MmuMode, type PageMarking } from '../kvm/config';
import { MAX_BUFFER_BYTES, fmtBytes } from '../shm/layout';
import { totalPages, type Kvm } from '../kvm/kvm';
import { createMachineFrom, mmuBookkeepingBytes, openKvm, type MachineSpec } from '../vcpu/machine';
import { GuestPageTables, tablePagesFor } from '../vcpu/guest-pt';
import { CMD, CMD_EXIT, DONE, FAIL, FAST_PATH, createBenchControl, waitWhileAsync } from './control';
import type { GuestRegion } from './guest';
import type { BenchWorkerInit } from './worker';
import type { FaultCounts } from './results';
import { spinLimitFor } from '../runtime/spin';

export type { FaultCounts };

export interface BenchVmOptions {
  readonly mode: MmuMode;
  readonly vcpus: number;
  readonly bytesPerVcpu: number;
  /** The way passes fault unless runPass says otherwise. */
  readonly fastPath: boolean;
  readonly pageMarking?: PageMarking;
}


/** Guest address of data page 0 in shadow mode (a canonical address above the tables' identity range). */
const SHADOW_BASE = 2 ** 39;
/** Leaf flags of the guest's data PTEs: present, writable, user (the CPU sets A and D on the first write). */
const DATA_PTE_FLAGS = 7n;
/** Logical thread id of the host handle (shown as a lock holder). */
const HOST_TID = -2;
/** How long one vCPU pass may take before the benchmark calls it hung. */
const PASS_TIMEOUT_MS = 10 * 60 * 1000;

export class BenchVm {
  /** Host handle: dirty-log ioctls run on this thread. */
  readonly kvm: Kvm;
  readonly regions: readonly GuestRegion[];
  readonly pagesPerVcpu: number;
  /** Dirty-bitmap buffer for get/clear (userspace's copy). */
  readonly bitmap: Int32Array;
  private readonly ctrl: Int32Array;
  private readonly workers: Worker[] = [];
  private failure: Error | null = null;
  private readonly failed: Promise<never>;
  private closed = false;
  private pass = 0;

  private constructor(
    readonly options: BenchVmOptions,
    readonly spec: MachineSpec,
    cr3: number,
    regions: GuestRegion[],
  ) {
    this.kvm = openKvm(spec, HOST_TID);
    this.regions = regions;
    this.pagesPerVcpu = regions[0]!.pages;
    this.bitmap = new Int32Array(this.kvm.dirtyLog.words(0));
    this.ctrl = createBenchControl(options.vcpus);
    let reject!: (e: Error) => void;
    this.failed = new Promise<never>((_, rej) => (reject = rej));
    this.failed.catch(() => undefined);
    const fail = (e: Error): void => {
      if (this.closed || this.failure !== null) return;
      this.failure = e;
      reject(e);
    };
    for (let v = 0; v < options.vcpus; v++) {
      const init: BenchWorkerInit = { spec, ctrl: this.ctrl, idx: v, cr3, region: regions[v]! };
      const w = new Worker(path.join(__dirname, 'worker.js'), { workerData: init });
      w.on('error', (e) => fail(new Error(`vCPU ${v} failed: ${e.stack ?? e.message}`)));
      w.on('exit', (code) => {
        if (code !== 0) fail(new Error(`vCPU ${v}'s worker exited with code ${code}`));
      });
      this.workers.push(w);
    }
  }

  /**
   * Build the machine (guest page tables in shadow mode: each vCPU's pages at
   * consecutive guest addresses), start one worker per vCPU and wait until each
   * has loaded its MMU root.
   */
  static async start(o: BenchVmOptions): Promise<BenchVm> {
    const dataPages = benchDataPages(o);
    const tablePages = o.mode === 'shadow' ? tablePagesFor(dataPages) : 0;
    const config = resolveConfig({ mode: o.mode, vcpus: o.vcpus, memBytes: (dataPages + tablePages) * 4096, fastPath: o.fastPath, pageMarking: o.pageMarking });
    // Only the vCPU workers take mmu_lock while they run (the host's work is between passes).
    const spec = { ...createMachineFrom(config), spinLimit: spinLimitFor(o.vcpus) };
    const per = dataPages / o.vcpus;
    let cr3 = 0;
    let base = 0;
    if (o.mode === 'shadow') {
      const kvm = openKvm(spec, HOST_TID);
      const pt = GuestPageTables.build(kvm, dataPages, tablePages);
      base = SHADOW_BASE;
      for (let i = 0; i < dataPages; i++) pt.map(base + i * 4096, i, DATA_PTE_FLAGS);
      cr3 = pt.cr3;
    }
    const regions = Array.from({ length: o.vcpus }, (_, v) => ({ base: base + v * per * 4096, pages: per }));
    const vm = new BenchVm(o, spec, cr3, regions);
    try {
      await Promise.race([
        Promise.all(vm.workers.map((w) => new Promise<void>((res) => w.once('message', () => res())))),
        vm.failed,
      ]);
    } catch (e) {
      await vm.close();
      throw e;
    }
    return vm;
  }

  /** Bytes of guest memory (every memslot, guest page tables included). */
  get guestBytes(): number {
    return totalPages(this.spec.config) * 4096;
  }

  /**
   * Have every vCPU run one pass over its region, its faults trying the fast
   * path first or not (default: the VM's option); resolves with the seconds
   * from telling them to when the last one finished (the selftest's
   * "dirty memory time"; pass 0 is "populate memory").
   */
  async runPass(fastPath: boolean = this.options.fastPath): Promise<number> {
    const c = this.ctrl;
    const n = this.options.vcpus;
    const cmd = this.pass++;
    Atomics.store(c, DONE, 0);
    Atomics.store(c, FAST_PATH, fastPath ? 1 : 0);
    const t0 = performance.now();
    Atomics.store(c, CMD, cmd);
    Atomics.notify(c, CMD);
    const deadline = t0 + PASS_TIMEOUT_MS;
    for (;;) {
      const done = Atomics.load(c, DONE);
      if (done >= n) return (performance.now() - t0) / 1000;
      if (Atomics.load(c, FAIL) !== 0 || this.failure !== null) await this.failed;
      if (performance.now() > deadline) throw new Error(`benchmark hung: vCPUs did not finish pass ${cmd} in ${PASS_TIMEOUT_MS / 1000} s`);
      await Promise.race([waitWhileAsync(c, DONE, done, 1000), this.failed]);
    }
  }

  /** Fault counts summed over the vCPUs since the machine started. */
  faults(): FaultCounts {
    let fast = 0;
    let slow = 0;
    let spurious = 0;
    let lockContended = 0;
    for (let v = 0; v < this.options.vcpus; v++) {
      fast += this.kvm.vcpuStat(v, 'pfFast');
      slow += this.kvm.vcpuStat(v, 'pfSlow');
      spurious += this.kvm.vcpuStat(v, 'pfSpurious');
      lockContended += this.kvm.vcpuStat(v, 'pfLockContended');
    }
    return { fast, slow, spurious, lockContended };
  }

  /** Fault counts summed over the vCPUs since `before` (an earlier faults()). */
  faultsSince(before: FaultCounts): FaultCounts {
    return addFaults(this.faults(), before, -1);
  }

  bookkeeping(): Record<string, number> {
    return mmuBookkeepingBytes(this.spec);
  }

  /** Pages of the vCPUs' regions whose bit is clear in `this.bitmap` (0: the log names every page written). */
  missingFromLog(): number {
    let missing = 0;
    const first = this.kvm.slotGfn[0]!;
    for (const r of this.regions) {
      const gfn0 = this.kvm.config.mode === 'shadow' ? (r.base - SHADOW_BASE) / 4096 : r.base / 4096;
      for (let i = 0; i < r.pages; i++) {
        const rel = gfn0 + i - first;
        if ((this.bitmap[rel >>> 5]! & (1 << (rel & 31))) === 0) missing++;
      }
    }
    return missing;
  }

  /** Stop the workers (idempotent). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    Atomics.store(this.ctrl, CMD, CMD_EXIT);
    Atomics.notify(this.ctrl, CMD);
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

/** Data pages of a benchmark VM (all vCPUs); throws a KvmmuError for sizes the benchmark cannot run. */
export function benchDataPages(o: Pick<BenchVmOptions, 'vcpus' | 'bytesPerVcpu'>): number {
  if (!Number.isSafeInteger(o.bytesPerVcpu) || o.bytesPerVcpu < 64 * 1024 || o.bytesPerVcpu % 4096 !== 0)
    throw new KvmmuError(`-b must be a multiple of 4 KiB and at least 64 KiB, not ${o.bytesPerVcpu} bytes`);
  const pages = (o.bytesPerVcpu / 4096) * o.vcpus;
  // Shadow mode adds guest page tables; the host adds spare frames. All must fit one SharedArrayBuffer.
  if ((pages + tablePagesFor(pages) + SPARE_FRAMES) * 4096 > MAX_BUFFER_BYTES)
    throw new KvmmuError(
      `${o.vcpus} x ${fmtBytes(o.bytesPerVcpu)} of guest memory does not fit: Node allows one SharedArrayBuffer of at most ${fmtBytes(MAX_BUFFER_BYTES)}`,
    );
  return pages;
}

/** a + k * b, count by count (k = -1: the difference). */
export function addFaults(a: FaultCounts, b: FaultCounts, k = 1): FaultCounts {
  return { fast: a.fast + k * b.fast, slow: a.slow + k * b.slow, spurious: a.spurious + k * b.spurious, lockContended: a.lockContended + k * b.lockContended };
}
