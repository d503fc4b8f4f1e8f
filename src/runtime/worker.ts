// Worker-thread entry: opens the shared machine and runs one role (a vCPU's workload, host memory pressure, or migration).

import { parentPort, workerData } from 'node:worker_threads';
import { openKvm, type MachineSpec } from '../vcpu/machine';
import { Vcpu } from '../vcpu/vcpu';
import { CTRL_START } from './control';
import { migrate } from './migrate';
import { runPressure, type PressureOptions } from './pressure';
import { makeRng } from './rng';
import { runWorkload, type WorkloadLayout } from './workload';

export type WorkerTask =
  | { readonly role: 'vcpu'; readonly idx: number; readonly cr3: number; readonly workload: WorkloadLayout }
  | { readonly role: 'host'; readonly pressure: PressureOptions }
  | { readonly role: 'migrate'; readonly vcpus: number };

export interface WorkerInit {
  readonly spec: MachineSpec;
  readonly ctrl: Int32Array;
  readonly seed: number;
  readonly task: WorkerTask;
}

function main(): void {
  const init = workerData as WorkerInit;
  const { spec, ctrl, task } = init;
  const rng = makeRng(init.seed);
  // Logical thread ids: vCPUs are 0..n-1; the host thread is -2 and migration -3 (shown as lock holders).
  const kvm = openKvm(spec, task.role === 'vcpu' ? task.idx : task.role === 'host' ? -2 : -3);
  let vcpu: Vcpu | null = null;
  if (task.role === 'vcpu') {
    vcpu = new Vcpu(kvm, task.idx);
    vcpu.setup(task.cr3);
  }
  parentPort!.postMessage({ type: 'ready' });
  while (Atomics.load(ctrl, CTRL_START) === 0) Atomics.wait(ctrl, CTRL_START, 0, 50);
  let result: unknown;
  switch (task.role) {
    case 'vcpu':
      result = runWorkload(vcpu!, task.workload, ctrl, rng);
      vcpu!.leaveRun(); // back in the VMM for good: no grace period waits for this vCPU any more
      break;
    case 'host':
      result = runPressure(kvm, ctrl, task.pressure, rng);
      break;
    case 'migrate':
      result = migrate(kvm, ctrl, task.vcpus);
      break;
  }
  parentPort!.postMessage({ type: 'result', result });
}

main();
