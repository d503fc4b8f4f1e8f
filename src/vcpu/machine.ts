// A whole machine (host + VM + vCPUs) in shared memory: its layout, creation, and per-thread handles over it.

import { Mem } from '../shm/access';
import { LayoutBuilder, createShm, type Layout, type Shm } from '../shm/layout';
import { reserveHost } from '../host/host';
import { resolveConfig, type VmConfig, type VmOptions } from '../kvm/config';
import { Kvm, reserveKvm, totalPages } from '../kvm/kvm';
import { reserveVcpus } from './vcpu';

/** Everything a worker needs to open the machine: plain data plus two SharedArrayBuffers. */
export interface MachineSpec {
  readonly config: VmConfig;
  readonly shm: Shm;
  /**
   * How long lock waiters spin before sleeping (Mem.spinLimit); the runner
   * that starts the threads knows whether each has a core. Default SPIN_LIMIT_SHARED.
   */
  readonly spinLimit?: number;
}

export function machineLayout(config: VmConfig): Layout {
  const b = new LayoutBuilder();
  reserveHost(b, { nPages: totalPages(config), nFrames: config.hostFrames, nSwap: config.swapSlots });
  reserveKvm(b, config);
  reserveVcpus(b, config);
  return b.finish();
}

/** Allocate and initialize a machine (options are resolved with resolveConfig). */
export function createMachine(options: VmOptions): MachineSpec {
  return createMachineFrom(resolveConfig(options));
}

export function createMachineFrom(config: VmConfig): MachineSpec {
  const shm = createShm(machineLayout(config));
  const spec = { config, shm };
  openKvm(spec, -1).init();
  return spec;
}

/** A handle for one logical thread (`tid` names it as a lock holder: vCPU index, or -1 and below for others). */
export function openKvm(spec: MachineSpec, tid: number): Kvm {
  const mem = new Mem(spec.shm);
  mem.tid = tid;
  if (spec.spinLimit !== undefined) mem.spinLimit = spec.spinLimit;
  return new Kvm(mem, spec.shm.layout, spec.config);
}

/** Bytes of the meta buffer the MMU uses for bookkeeping (shadow pages, rmaps, bitmaps, TLBs, vCPU words). */
export function mmuBookkeepingBytes(spec: MachineSpec): Record<string, number> {
  const r = spec.shm.layout.regions;
  const sum = (names: string[]): number => names.reduce((n, k) => n + (r[k]?.bytes ?? 0), 0);
  return {
    shadowPages: sum(['kvm.spt', 'kvm.spHeader', 'kvm.spGfns', 'kvm.spHash', 'kvm.spFree', 'kvm.gfnTrack']),
    rmaps: sum(['kvm.rmap', 'kvm.pteDesc', 'kvm.pteDescFree']),
    dirtyBitmaps: sum(['kvm.bitmap']),
    tlbs: sum(['vcpu.tlb']),
    vcpuState: sum(['kvm.vcpus', 'kvm.vcpuStats', 'kvm.mmu', 'kvm.mmuLock', 'kvm.slots', 'kvm.stats']),
  };
}
