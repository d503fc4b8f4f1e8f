// Worker-thread entry for a benchmark vCPU: opens the shared machine, sets the vCPU up, then runs one pass over its region per host command, with the fast path on or off as the host asks.

import { parentPort, workerData } from 'node:worker_threads';
import { openKvm, type MachineSpec } from '../vcpu/machine';
import { Vcpu } from '../vcpu/vcpu';
import { CMD, CMD_EXIT, CMD_NONE, DONE, FAIL, FAST_PATH, LAST } from './control';
import { dirtyPass, type GuestRegion } from './guest';

export interface BenchWorkerInit {
  readonly spec: MachineSpec;
  readonly ctrl: Int32Array;
  readonly idx: number;
  /** Guest-physical address of the guest's PML4 (shadow mode; 0 in direct mode). */
  readonly cr3: number;
  readonly region: GuestRegion;
}

function main(): void {
  const { spec, ctrl, idx, cr3, region } = workerData as BenchWorkerInit;
  try {
    const kvm = openKvm(spec, idx);
    const vcpu = new Vcpu(kvm, idx);
    vcpu.setup(cr3);
    parentPort!.postMessage({ type: 'ready' });
    let seen = CMD_NONE;
    for (;;) {
      // Sleep until the host asks for a new pass (no timeout: the host always notifies), out of KVM_RUN meanwhile.
      vcpu.leaveRun();
      while (Atomics.load(ctrl, CMD) === seen) Atomics.wait(ctrl, CMD, seen);
      seen = Atomics.load(ctrl, CMD);
      if (seen === CMD_EXIT) break;
      vcpu.enterRun();
      // Between passes none of this vCPU's faults is in flight, so the way can change here.
      kvm.fastPath = Atomics.load(ctrl, FAST_PATH) === 1;
      dirtyPass(vcpu, region);
      Atomics.store(ctrl, LAST + idx, seen);
      Atomics.add(ctrl, DONE, 1);
      Atomics.notify(ctrl, DONE);
    }
  } catch (e) {
    // Wake the host before the error event reaches it, so it stops waiting for this vCPU.
    Atomics.store(ctrl, FAIL, 1);
    Atomics.notify(ctrl, DONE);
    throw e;
  }
  parentPort!.postMessage({ type: 'done' });
}

main();
