// `kvmmu run`: a VM on real threads — vCPU workers writing known patterns, optional host pressure and live migration — and the verdict.

import { RW_LOCKED, RW_WAITING } from '../shm/access';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { KvmmuError } from '../shm/errors';
import { fmtBytes } from '../shm/layout';
import { HOST_STAT, MAX_FRAMES, type Host } from '../host/host';
import { SPARE_FRAMES, resolveConfig, guardsOff, type IndirectFastPath, type MmuMode, type PageMarking, type VmConfig } from '../kvm/config';
import { KVM_STAT, MODE_NAMES, VCPU_MODE, VCPU_REQUESTS, VCPU_STAT, type Kvm } from '../kvm/kvm';
import { createMachineFrom, openKvm } from '../vcpu/machine';
import { GuestPageTables, tablePagesFor } from '../vcpu/guest-pt';
import {
  CTRL_HOST_STOP,
  CTRL_MIG_DONE,
  CTRL_MIG_PAGES,
  CTRL_PAUSED,
  CTRL_PROGRESS,
  CTRL_START,
  CTRL_STOP_WORK,
  createControl,
  setFlag,
} from './control';
import type { MigrationResult } from './migrate';
import { spinLimitFor } from './spin';
import type { WorkerInit, WorkerTask } from './worker';
import type { WorkloadLayout, WorkloadResult } from './workload';

export interface RunOptions {
  readonly mode: MmuMode;
  readonly vcpus: number;
  readonly memBytes: number;
  readonly seconds: number;
  readonly migrate: boolean;
  readonly swap: boolean;
  readonly ksm: boolean;
  readonly guards: number;
  readonly fastPath?: boolean;
  readonly indirectFastPath?: IndirectFastPath;
  readonly pageMarking?: PageMarking;
  /** SPTEs carry A/D bits (default); false: access tracking (tdp mode). */
  readonly adBits?: boolean;
  /** Guest memory on 2 MiB HugeTLB pages, mapped by huge SPTEs (direct and tdp modes). */
  readonly hugePages?: boolean;
  /** Split huge SPTEs when dirty logging begins (KVM's eager_page_split; default on). */
  readonly eagerSplit?: boolean;
  readonly seed?: number;
  /** Called about twice a second during the timed phase. */
  readonly onProgress?: (p: RunProgress) => void;
}

export interface RunProgress {
  readonly elapsed: number;
  readonly seconds: number;
  readonly passes: number;
  readonly fastFaults: number;
  readonly slowFaults: number;
}

export interface RunReport {
  readonly ok: boolean;
  readonly mode: MmuMode;
  readonly vcpus: number;
  readonly memBytes: number;
  readonly guardsOff: string[];
  readonly pageMarking: PageMarking;
  readonly adBits: boolean;
  readonly hugePages: boolean;
  readonly wallSeconds: number;
  readonly faults: Record<keyof typeof VCPU_STAT, number>;
  readonly host: Record<keyof typeof HOST_STAT, number>;
  readonly kvm: Record<keyof typeof KVM_STAT, number>;
  readonly workload: { passes: number; writes: number; remaps: number };
  readonly lostWrites: number;
  readonly firstLost: string | null;
  readonly migration: (MigrationResult & { rounds: number }) | null;
  readonly verdict: string;
}

/**
 * After the timed phase the threads finish (the vCPUs re-read every page, the
 * migration sends its last round), which takes as long as memory and threads
 * make it take. The run is called hung only when no thread has done anything
 * (no counter, no lock taken) for this long.
 */
const IDLE_TIMEOUT_MS = 15_000;

export async function runVm(o: RunOptions): Promise<RunReport> {
  if (!(o.seconds > 0) || o.seconds > 24 * 3600) throw new KvmmuError(`--seconds must be above 0 and at most a day, not ${o.seconds}`);
  const maxMem = (MAX_FRAMES - SPARE_FRAMES) * 4096;
  if (o.memBytes > maxMem) throw new KvmmuError(`--mem ${fmtBytes(o.memBytes)} is more than the host model holds: at most ${fmtBytes(maxMem)}`);
  const config: VmConfig = resolveConfig({
    mode: o.mode,
    vcpus: o.vcpus,
    memBytes: o.memBytes,
    swapSlots: o.swap ? Math.floor(o.memBytes / 4096) : 0,
    guards: o.guards,
    fastPath: o.fastPath,
    indirectFastPath: o.indirectFastPath,
    pageMarking: o.pageMarking,
    adBits: o.adBits,
    hugePages: o.hugePages,
    eagerSplit: o.eagerSplit,
  });
  const totalPagesWanted = o.memBytes / 4096;
  const tablePages = o.mode === 'shadow' ? tablePagesFor(totalPagesWanted) : 0;
  const dataPages = totalPagesWanted - tablePages;
  if (dataPages < o.vcpus * 2)
    throw new KvmmuError(`--mem ${fmtBytes(o.memBytes)} is too small for ${o.vcpus} vCPUs: give each at least 2 pages of data`);
  const spec = createMachineFrom(config);
  const kvm = openKvm(spec, -1);
  const base = o.mode === 'shadow' ? 2 ** 39 : 0;
  let cr3 = 0;
  let pt: GuestPageTables | null = null;
  if (o.mode === 'shadow') {
    pt = GuestPageTables.build(kvm, dataPages, tablePages);
    for (let i = 0; i < dataPages; i++) pt.map(base + i * 4096, i);
    pt.mapTablesIdentity();
    cr3 = pt.cr3;
  }
  const ctrl = createControl(o.vcpus);
  const seed = o.seed ?? 1;
  const per = Math.floor(dataPages / o.vcpus);
  const tasks: WorkerTask[] = [];
  for (let v = 0; v < o.vcpus; v++) {
    const first = v * per;
    const count = v === o.vcpus - 1 ? dataPages - first : per;
    const workload: WorkloadLayout = {
      base: base + first * 4096,
      first,
      count,
      pteGpa: pt === null ? [] : Array.from({ length: count }, (_, i) => pt!.pteGpa(base + (first + i) * 4096)),
      ksmEvery: o.ksm ? 8 : 0,
      remapEvery: o.mode === 'shadow' ? 64 : 0,
      migrating: o.migrate,
    };
    tasks.push({ role: 'vcpu', idx: v, cr3, workload });
  }
  if (o.swap || o.ksm) tasks.push({ role: 'host', pressure: { swap: o.swap, ksm: o.ksm } });
  if (o.migrate) tasks.push({ role: 'migrate', vcpus: o.vcpus });

  const t0 = performance.now();
  const running = { ...spec, spinLimit: spinLimitFor(tasks.length) };
  const workers = tasks.map((task, i) => startWorker({ spec: running, ctrl, seed: seed * 7919 + i, task }));
  // Any worker failing fails the run at once (the others may be waiting for it forever).
  const failed = { now: false };
  const anyFailure = new Promise<never>((_, rej) => {
    for (const w of workers)
      w.result.catch((e: unknown) => {
        failed.now = true;
        rej(e);
      });
  });
  const orFail = <T>(p: Promise<T>): Promise<T> => Promise.race([p, anyFailure]);
  try {
    await orFail(Promise.all(workers.map((w) => w.ready)));
    setFlag(ctrl, CTRL_START);
    const tStart = performance.now();
    // A worker failing ends the timed phase at once, not when the phase would have ended.
    await orFail(timedPhase(o, ctrl, kvm, tStart, failed));
    setFlag(ctrl, CTRL_STOP_WORK);
    // While the vCPUs finish, the host thread still applies pressure: its work is no sign that they progress.
    const vcpuResults = (await unlessIdle(
      orFail(Promise.all(workers.slice(0, o.vcpus).map((w) => w.result))),
      IDLE_TIMEOUT_MS,
      () => vcpuProgress(kvm, ctrl),
      () => hangReport(kvm),
    )) as WorkloadResult[];
    setFlag(ctrl, CTRL_HOST_STOP);
    const rest = await unlessIdle(orFail(Promise.all(workers.slice(o.vcpus).map((w) => w.result))), IDLE_TIMEOUT_MS, () => activity(kvm, ctrl), () =>
      hangReport(kvm),
    );
    const migration = o.migrate ? (rest[rest.length - 1] as MigrationResult) : null;
    return buildReport(o, kvm, performance.now() - t0, vcpuResults, migration);
  } finally {
    await Promise.all(workers.map((w) => w.worker.terminate()));
  }
}

async function timedPhase(o: RunOptions, ctrl: Int32Array, kvm: Kvm, tStart: number, failed: { readonly now: boolean }): Promise<void> {
  const end = tStart + o.seconds * 1000;
  for (;;) {
    if (failed.now) return; // the run has already failed: no more progress lines, no timers left behind
    const now = performance.now();
    if (o.onProgress !== undefined) o.onProgress(progress(o, ctrl, kvm, (now - tStart) / 1000));
    if (now >= end) return;
    await sleep(Math.min(500, end - now));
  }
}

function progress(o: RunOptions, ctrl: Int32Array, kvm: Kvm, elapsed: number): RunProgress {
  let passes = 0;
  let fastFaults = 0;
  let slowFaults = 0;
  for (let v = 0; v < o.vcpus; v++) {
    passes += Atomics.load(ctrl, CTRL_PROGRESS + v);
    fastFaults += kvm.vcpuStat(v, 'pfFast');
    slowFaults += kvm.vcpuStat(v, 'pfSlow');
  }
  return { elapsed: Math.min(elapsed, o.seconds), seconds: o.seconds, passes, fastFaults, slowFaults };
}

function buildReport(
  o: RunOptions,
  kvm: Kvm,
  wallMs: number,
  results: WorkloadResult[],
  migration: MigrationResult | null,
): RunReport {
  const faults = Object.fromEntries(
    (Object.keys(VCPU_STAT) as (keyof typeof VCPU_STAT)[]).map((k) => {
      let n = 0;
      for (let v = 0; v < o.vcpus; v++) n += kvm.vcpuStat(v, k);
      return [k, n];
    }),
  ) as Record<keyof typeof VCPU_STAT, number>;
  const host = hostStats(kvm.host);
  const kvmStats = Object.fromEntries(
    (Object.keys(KVM_STAT) as (keyof typeof KVM_STAT)[]).map((k) => [k, kvm.stat(k)]),
  ) as Record<keyof typeof KVM_STAT, number>;
  const lostWrites = results.reduce((n, r) => n + r.lost, 0);
  const firstLost = results.find((r) => r.firstLost !== null)?.firstLost ?? null;
  const guestFaults = results.map((r, v) => (r.guestFault === null ? null : `vCPU ${v}: ${r.guestFault}`)).filter((x) => x !== null);
  const mismatches = migration?.mismatches ?? 0;
  const ok = lostWrites === 0 && mismatches === 0 && guestFaults.length === 0;
  const verdict = ok
    ? `nothing lost: every page holds the last value written${migration !== null ? ', and the destination equals the source' : ''}`
    : [
        guestFaults.length > 0 ? guestFaults.join('; ') : '',
        lostWrites > 0 ? `${lostWrites} page(s) lost a write (${firstLost})` : '',
        mismatches > 0 ? `${mismatches} page(s) differ after migration (${migration!.firstMismatch})` : '',
      ]
        .filter((s) => s !== '')
        .join('; ');
  return {
    ok,
    mode: o.mode,
    vcpus: o.vcpus,
    memBytes: o.memBytes,
    guardsOff: guardsOff(o.guards),
    pageMarking: o.pageMarking ?? 'spte',
    adBits: o.adBits ?? true,
    hugePages: o.hugePages ?? false,
    wallSeconds: wallMs / 1000,
    faults,
    host,
    kvm: kvmStats,
    workload: {
      passes: results.reduce((n, r) => n + r.passes, 0),
      writes: results.reduce((n, r) => n + r.writes, 0),
      remaps: results.reduce((n, r) => n + r.remaps, 0),
    },
    lostWrites,
    firstLost,
    migration: migration === null ? null : { ...migration, rounds: migration.pagesPerRound.length },
    verdict,
  };
}

export function hostStats(host: Host): Record<keyof typeof HOST_STAT, number> {
  return Object.fromEntries(
    (Object.keys(HOST_STAT) as (keyof typeof HOST_STAT)[]).map((k) => [k, host.stat(k)]),
  ) as Record<keyof typeof HOST_STAT, number>;
}

interface RunningWorker {
  readonly worker: Worker;
  readonly ready: Promise<void>;
  readonly result: Promise<unknown>;
}

export function startWorker(init: WorkerInit, script = path.join(__dirname, 'worker.js')): RunningWorker {
  const worker = new Worker(script, { workerData: init });
  let onReady!: () => void;
  let onResult!: (v: unknown) => void;
  let onError!: (e: Error) => void;
  const ready = new Promise<void>((res, rej) => {
    onReady = res;
    onError = rej;
  });
  const result = new Promise<unknown>((res, rej) => {
    onResult = res;
    const prev = onError;
    onError = (e) => {
      prev(e);
      rej(e);
    };
  });
  // Avoid unhandled-rejection noise when only one of the two promises is awaited at the time of failure.
  ready.catch(() => undefined);
  result.catch(() => undefined);
  worker.on('message', (m: { type: string; result?: unknown }) => {
    if (m.type === 'ready') onReady();
    else if (m.type === 'result') onResult(m.result);
  });
  // A worker's error arrives as a copy; whatever it was there, here it is kvmmu failing (a user's mistake is caught before any starts).
  const who = init.task.role === 'vcpu' ? `vCPU ${init.task.idx}` : `the ${init.task.role} thread`;
  worker.on('error', (e) => onError(new Error(`${who} failed: ${e.stack ?? e.message}`)));
  worker.on('exit', (code) => {
    if (code !== 0) onError(new Error(`${who}'s worker exited with code ${code}`));
  });
  return { worker, ready, result };
}

/**
 * Wait for `p`; reject if `activity` (a number that changes whenever a thread
 * does something) stays the same for `idleMs`: the threads are stuck, not slow.
 */
async function unlessIdle<T>(p: Promise<T>, idleMs: number, activity: () => number, describe: () => string): Promise<T> {
  let last = activity();
  let lastChange = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const idle = new Promise<never>((_, rej) => {
    timer = setInterval(() => {
      const a = activity();
      const now = performance.now();
      if (a !== last) {
        last = a;
        lastChange = now;
      } else if (now - lastChange >= idleMs) {
        rej(new Error(`run hung: no thread did anything for ${idleMs / 1000} s\n${describe()}`));
      }
    }, 250);
  });
  try {
    return await Promise.race([p, idle]);
  } finally {
    clearInterval(timer);
  }
}

/**
 * A sum that grows while the vCPUs finish: guest accesses that completed (a
 * vCPU retrying one fault forever adds none), passes, pauses, and the pages
 * the migration copied or compared (the vCPUs wait for it when it runs).
 */
function vcpuProgress(kvm: Kvm, ctrl: Int32Array): number {
  let s = 0;
  for (let v = 0; v < kvm.config.vcpus; v++) s += kvm.vcpuStat(v, 'accesses') + Atomics.load(ctrl, CTRL_PROGRESS + v);
  return s + Atomics.load(ctrl, CTRL_PAUSED) + Atomics.load(ctrl, CTRL_MIG_PAGES) + Atomics.load(ctrl, CTRL_MIG_DONE);
}

/** A sum that changes whenever a thread of the run does something: every statistics counter, every lock taken, the control words. */
function activity(kvm: Kvm, ctrl: Int32Array): number {
  let s = 0;
  for (let v = 0; v < kvm.config.vcpus; v++) for (const name of VCPU_STAT_NAMES) s += kvm.vcpuStat(v, name);
  for (const name of KVM_STAT_NAMES) s += kvm.stat(name);
  for (const name of HOST_STAT_NAMES) s += kvm.host.stat(name);
  s += (kvm.isTdp ? 0 : kvm.mem.lockTickets(kvm.mmuLock)) + kvm.mem.lockTickets(kvm.host.lockWord);
  for (let i = 0; i < ctrl.length; i++) s += Atomics.load(ctrl, i);
  return s;
}

const VCPU_STAT_NAMES = Object.keys(VCPU_STAT) as (keyof typeof VCPU_STAT)[];
const KVM_STAT_NAMES = Object.keys(KVM_STAT) as (keyof typeof KVM_STAT)[];
const HOST_STAT_NAMES = Object.keys(HOST_STAT) as (keyof typeof HOST_STAT)[];

/** Every vCPU's mode and the lock holders, for a hang report. */
function hangReport(kvm: Kvm): string {
  const lines: string[] = [];
  for (let v = 0; v < kvm.config.vcpus; v++) {
    const w = Atomics.load(kvm.mem.i32, kvm.vcpuWord(v, VCPU_MODE));
    const req = Atomics.load(kvm.mem.i32, kvm.vcpuWord(v, VCPU_REQUESTS));
    lines.push(`  vCPU ${v}: ${MODE_NAMES[w & 3]} (mode changes: ${w >>> 2}), requests 0x${req.toString(16)}`);
  }
  lines.push(`  mmu_lock: ${kvm.isTdp ? rwLockState(kvm, kvm.mmuLock) : lockState(kvm, kvm.mmuLock)}`);
  lines.push(`  host mm lock: ${lockState(kvm, kvm.host.lockWord)}`);
  return lines.join('\n');
}

function lockState(kvm: Kvm, word: number): string {
  if (!kvm.mem.isLocked(word)) return 'free';
  const h = kvm.mem.lockHolder(word);
  return `held by ${h >= 0 ? `vCPU ${h}` : h === -2 ? 'the host thread' : h === -3 ? 'the migration thread' : `thread ${h}`}`;
}

function rwLockState(kvm: Kvm, word: number): string {
  const w = kvm.mem.rwWriter(word);
  const readers = kvm.mem.rwReaders(word);
  const who = w.holder >= 0 ? `vCPU ${w.holder}` : w.holder === -2 ? 'the host thread' : w.holder === -3 ? 'the migration thread' : `thread ${w.holder}`;
  if (w.state === RW_LOCKED) return `write-held by ${who}`;
  if (w.state === RW_WAITING) return `${readers} reader(s) inside; ${who} waits to write`;
  return readers > 0 ? `read-held by ${readers} reader(s)` : 'free';
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
