// Benchmark options: what a user may set (each with its default), validation with one-line errors, and the resolved forms the runners take.

import * as os from 'node:os';
import { KvmmuError } from '../shm/errors';
import { fmtBytes } from '../shm/layout';
import { MAX_VCPUS, MMU_MODES, PAGE_MARKING, type MmuMode, type PageMarking } from '../kvm/config';
import { benchDataPages } from './vm';
import type { DirtyLogConfig, FastPathSetting, ScaleConfig } from './results';

export type { DirtyLogConfig, FastPathSetting, ScaleConfig };

export const FAST_PATH_SETTINGS: readonly FastPathSetting[] = ['on', 'off', 'both'];

/**
 * Two vCPUs (this machine has two cores: the fast path's point is that faults
 * stop serializing on mmu_lock) of 512 MiB each, so the default run takes
 * seconds; the selftest's own defaults are 1 vCPU and 1 GiB (-v 1 -b 1G).
 * Twenty iterations, because one iteration's ratio of the two ways varies by
 * tens of percent on a shared machine: over five iterations the median still
 * moved from run to run by about as much (1.72-2.40x in five runs here), over
 * nineteen by a few percent.
 */
export const DIRTY_LOG_DEFAULTS: DirtyLogConfig = {
  vcpus: 2,
  bytesPerVcpu: 512 * 1024 * 1024,
  iterations: 20,
  mode: 'direct',
  fastPath: 'on',
  clearDirtyLog: false,
  pageMarking: 'spte',
};

export const SCALE_DEFAULTS: ScaleConfig = {
  maxVcpus: 2,
  // Small enough that each vCPU's pages and SPTEs stay in cache: with 1 GiB per vCPU every write is a
  // host TLB and cache miss, and this machine's memory system, not mmu_lock, caps what a second core adds.
  bytesPerVcpu: 16 * 1024 * 1024,
  mode: 'direct',
  iterations: 20,
  pageMarking: 'spte',
  trials: 9,
};

function checkVcpus(flag: string, n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > MAX_VCPUS) throw new KvmmuError(`${flag} must be an integer from 1 to ${MAX_VCPUS}, not ${n}`);
}

function checkMode(mode: string): asserts mode is MmuMode {
  if (!(MMU_MODES as readonly string[]).includes(mode)) throw new KvmmuError(`unknown mode '${mode}': use direct or shadow`);
}

function checkPageMarking(m: PageMarking | undefined): void {
  if (m !== undefined && !PAGE_MARKING.includes(m)) throw new KvmmuError(`--page-marking must be spte or fault, not '${String(m)}'`);
}

function checkIterations(n: number): void {
  if (!Number.isInteger(n) || n < 2 || n > 1000)
    throw new KvmmuError(`-i must be an integer from 2 to 1000 (the selftest needs at least two iterations), not ${n}`);
}

export function resolveDirtyLog(o: Partial<DirtyLogConfig>): DirtyLogConfig {
  const c = { ...DIRTY_LOG_DEFAULTS, ...o };
  checkVcpus('-v', c.vcpus);
  checkMode(c.mode);
  checkIterations(c.iterations);
  if (!FAST_PATH_SETTINGS.includes(c.fastPath)) throw new KvmmuError(`--fast-path must be on, off or both, not '${String(c.fastPath)}'`);
  checkPageMarking(c.pageMarking);
  benchDataPages(c);
  return c;
}

/** `totalMem`: the machine's memory (a parameter for tests). */
export function resolveScale(o: Partial<ScaleConfig>, totalMem = os.totalmem()): ScaleConfig {
  const c = { ...SCALE_DEFAULTS, ...o };
  checkVcpus('-v', c.maxVcpus);
  checkMode(c.mode);
  checkIterations(c.iterations);
  checkPageMarking(c.pageMarking);
  if (!Number.isInteger(c.trials) || c.trials < 1 || c.trials > 100) throw new KvmmuError(`-t must be an integer from 1 to 100, not ${c.trials}`);
  benchDataPages({ vcpus: c.maxVcpus, bytesPerVcpu: c.bytesPerVcpu });
  // A trial keeps a VM per point and way alive at once (their rounds interleave): 2 * (1 + ... + N) vCPUs' memory.
  const held = c.maxVcpus * (c.maxVcpus + 1) * c.bytesPerVcpu;
  const room = totalMem * 0.75;
  if (held > room)
    throw new KvmmuError(
      `bench scale -v ${c.maxVcpus} -b ${fmtBytes(c.bytesPerVcpu)} holds ${fmtBytes(held)} of guest memory at once (a VM for each vCPU count and way); ` +
        `this machine has ${fmtBytes(totalMem)}: use a smaller -b or -v`,
    );
  return c;
}
