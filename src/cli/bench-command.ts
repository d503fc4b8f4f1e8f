// `kvmmu bench dirty-log` and `kvmmu bench scale`: option parsing, a progress bar on a terminal, text or JSON output, and result files in --out.

import { Command, InvalidArgumentError, Option } from 'commander';
import { SingleBar } from 'cli-progress';
import { MMU_MODES, parseSize, type MmuMode, type PageMarking } from '../kvm/config';
import { pageMarkingOption } from './settings';
import { runDirtyLogBench, type ProgressFn } from '../bench/dirty-log';
import { runScaleBench } from '../bench/scale';
import { DEMAND_PAGING_DEFAULTS, formatDemandPaging, resolveDemandPaging, runDemandPagingBench } from '../bench/demand-paging';
import { DIRTY_LOG_DEFAULTS, FAST_PATH_SETTINGS, SCALE_DEFAULTS, resolveDirtyLog, resolveScale, type FastPathSetting } from '../bench/options';
import { checkOutDir, dirtyLogHtml, formatDirtyLog, formatScale, scaleHtml, writeResults } from '../bench/report';
import { fmtBytes } from '../shm/layout';

function int(name: string, min: number, max: number): (v: string) => number {
  return (v: string) => {
    if (!/^-?\d+$/.test(v.trim())) throw new InvalidArgumentError(`${name} must be an integer, not '${v}'`);
    const n = Number(v);
    if (n < min || n > max) throw new InvalidArgumentError(`${name} must be from ${min} to ${max}, not ${n}`);
    return n;
  };
}

function size(v: string): number {
  try {
    return parseSize(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

interface DirtyLogCliOptions {
  vcpus: number;
  bytesPerVcpu: number;
  iterations: number;
  mode: MmuMode;
  fastPath: FastPathSetting;
  clear: boolean;
  pageMarking: PageMarking;
  json: boolean;
  out?: string;
}

interface ScaleCliOptions {
  maxVcpus: number;
  bytesPerVcpu: number;
  iterations: number;
  trials: number;
  mode: MmuMode;
  pageMarking: PageMarking;
  json: boolean;
  out?: string;
}

/** A progress bar on stderr while a benchmark runs (only on a terminal, never with --json). */
function progressBar(label: string, json: boolean): { onProgress: ProgressFn | undefined; stop: () => void } {
  if (json || !process.stderr.isTTY) return { onProgress: undefined, stop: () => undefined };
  const bar = new SingleBar({
    format: `${label} [{bar}] {value}/{total} steps | {info}`,
    barsize: 24,
    hideCursor: true,
    stream: process.stderr,
    clearOnComplete: true,
  });
  let started = false;
  return {
    onProgress: (done, total, what) => {
      if (!started) {
        bar.start(total, done, { info: what });
        started = true;
      } else bar.update(done, { info: what });
    },
    stop: () => {
      if (started) bar.stop();
    },
  };
}

/** Run a benchmark with a progress bar (on a terminal, without --json), taken down however it ends. */
async function withProgress<T>(label: string, json: boolean, run: (onProgress: ProgressFn | undefined) => Promise<T>): Promise<T> {
  const p = progressBar(label, json);
  try {
    return await run(p.onProgress);
  } finally {
    p.stop();
  }
}

async function dirtyLogCommand(o: DirtyLogCliOptions): Promise<number> {
  // Validate everything before any thread starts or any file is written.
  const config = resolveDirtyLog({
    vcpus: o.vcpus,
    bytesPerVcpu: o.bytesPerVcpu,
    iterations: o.iterations,
    mode: o.mode,
    fastPath: o.fastPath,
    clearDirtyLog: o.clear,
    pageMarking: o.pageMarking,
  });
  if (o.out !== undefined) checkOutDir(o.out);
  const outcome = await withProgress('bench dirty-log', o.json, (onProgress) => runDirtyLogBench(config, onProgress));
  const written = o.out === undefined ? [] : writeResults(o.out, 'dirty-log', outcome.result, dirtyLogHtml(outcome));
  if (o.json) process.stdout.write(JSON.stringify(outcome.result) + '\n');
  else process.stdout.write(formatDirtyLog(outcome) + (written.length > 0 ? `wrote ${written.join(', ')}\n` : ''));
  return 0;
}

async function scaleCommand(o: ScaleCliOptions): Promise<number> {
  const config = resolveScale({ maxVcpus: o.maxVcpus, bytesPerVcpu: o.bytesPerVcpu, iterations: o.iterations, trials: o.trials, mode: o.mode, pageMarking: o.pageMarking });
  if (o.out !== undefined) checkOutDir(o.out);
  const outcome = await withProgress('bench scale', o.json, (onProgress) => runScaleBench(config, onProgress));
  const written = o.out === undefined ? [] : writeResults(o.out, 'scale', outcome.result, scaleHtml(outcome));
  if (o.json) process.stdout.write(JSON.stringify(outcome.result) + '\n');
  else process.stdout.write(formatScale(outcome) + (written.length > 0 ? `wrote ${written.join(', ')}\n` : ''));
  return 0;
}

interface DemandPagingCliOptions {
  maxVcpus: number;
  bytesPerVcpu: number;
  trials: number;
  modes: string;
  hostFaults: boolean;
  json: boolean;
}

async function demandPagingCommand(o: DemandPagingCliOptions): Promise<number> {
  const config = resolveDemandPaging({
    maxVcpus: o.maxVcpus,
    bytesPerVcpu: o.bytesPerVcpu,
    trials: o.trials,
    modes: o.modes.split(',').map((m) => m.trim()) as MmuMode[],
    hostPrefault: !o.hostFaults,
  });
  const result = await withProgress('bench demand-paging', o.json, (onProgress) => runDemandPagingBench(config, onProgress));
  process.stdout.write(o.json ? JSON.stringify(result) + '\n' : formatDemandPaging(result));
  return 0;
}

/** Add `kvmmu bench dirty-log`, `kvmmu bench scale` and `kvmmu bench demand-paging` to the program. */
export function registerBench(program: Command): void {
  const bench = program.command('bench').description('benchmarks: KVM dirty_log_perf_test phases, fast path on and off, and vCPU scaling');
  const d = DIRTY_LOG_DEFAULTS;
  bench
    .command('dirty-log')
    .description(
      "KVM's dirty_log_perf_test on worker threads: populate, enable dirty logging, then per iteration " +
        'dirty memory / get dirty log / clear dirty log, disable; fast and slow fault counts (and how many slow faults found mmu_lock taken), the floor, MMU bookkeeping',
    )
    .option('-v, --vcpus <n>', 'vCPUs, one worker thread each', int('-v', 1, 64), d.vcpus)
    .addOption(new Option('-b, --bytes-per-vcpu <size>', 'guest memory each vCPU dirties (e.g. 64M, 1G)').argParser(size).default(d.bytesPerVcpu, fmtBytes(d.bytesPerVcpu)))
    .option('-i, --iterations <n>', 'dirty-memory iterations, each way (at least 2, as the selftest)', int('-i', 2, 1000), d.iterations)
    .addOption(new Option('--mode <mode>', 'MMU mode').choices(MMU_MODES as string[]).default(d.mode))
    .addOption(
      new Option('--fast-path <setting>', 'the lockless fast page fault: on, off, or both (one VM whose vCPUs switch it between passes, alternating; prints the off/on ratio)')
        .choices(FAST_PATH_SETTINGS as string[])
        .default(d.fastPath),
    )
    .option('--clear', 'manual protect: get-dirty-log only copies, clear-dirty-log write-protects (KVM_CLEAR_DIRTY_LOG)', false)
    .addOption(pageMarkingOption().default(d.pageMarking))
    .option('--json', 'print the result as one JSON object', false)
    .option('--out <dir>', 'write dirty-log.json and dirty-log.html (a chart that opens offline) to this folder')
    .action(async (opts: DirtyLogCliOptions) => {
      process.exitCode = await dirtyLogCommand(opts);
    });
  const s = SCALE_DEFAULTS;
  bench
    .command('scale')
    .description('re-dirty throughput over 1..N vCPUs with the fast path on and off, and how often slow faults found mmu_lock taken: faults under mmu_lock serialize, the fast path does not')
    .option('-v, --max-vcpus <n>', 'run 1..N vCPUs', int('-v', 1, 64), s.maxVcpus)
    .addOption(new Option('-b, --bytes-per-vcpu <size>', 'guest memory each vCPU dirties (e.g. 64M, 1G)').argParser(size).default(s.bytesPerVcpu, fmtBytes(s.bytesPerVcpu)))
    .option('-i, --iterations <n>', 'dirty-memory iterations per point and trial (the first is not measured)', int('-i', 2, 1000), s.iterations)
    .option('-t, --trials <n>', 'independent trials, each with its own VMs and vCPU threads; points are their medians', int('-t', 1, 100), s.trials)
    .addOption(new Option('--mode <mode>', 'MMU mode').choices(MMU_MODES as string[]).default(s.mode))
    .addOption(pageMarkingOption().default(s.pageMarking))
    .option('--json', 'print the result as one JSON object', false)
    .option('--out <dir>', 'write scale.json and scale.html to this folder')
    .action(async (opts: ScaleCliOptions) => {
      process.exitCode = await scaleCommand(opts);
    });
  const dp = DEMAND_PAGING_DEFAULTS;
  bench
    .command('demand-paging')
    .description(
      "after KVM's demand_paging_test: each vCPU faults in its own untouched memory; the time per MMU mode and vCPU count, " +
        'interleaved trial by trial, and what the most vCPUs gain over one (faults under the read lock vs the spinlock)',
    )
    .option('-v, --max-vcpus <n>', 'run 1..N vCPUs', int('-v', 1, 64), dp.maxVcpus)
    .addOption(new Option('-b, --bytes-per-vcpu <size>', 'guest memory each vCPU faults in (e.g. 64M)').argParser(size).default(dp.bytesPerVcpu, fmtBytes(dp.bytesPerVcpu)))
    .option('-t, --trials <n>', 'trials; each runs every (mode, vCPUs) pair once, in a rotating order', int('-t', 1, 100), dp.trials)
    .option('--modes <list>', `MMU modes to compare, comma-separated (${MMU_MODES.join(', ')})`, dp.modes.join(','))
    .option('--host-faults', "leave the host's pages absent too, so each first touch also allocates and zeroes a frame under the host's locks", false)
    .option('--json', 'print the result as one JSON object', false)
    .action(async (opts: DemandPagingCliOptions) => {
      process.exitCode = await demandPagingCommand(opts);
    });
}
