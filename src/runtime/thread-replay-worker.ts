// Worker for thread-replay.ts: runs one scenario thread on the normal build, parking in the access-layer hook until the scheduler grants each operation.

import { workerData, type MessagePort } from 'node:worker_threads';
import type { AccessHook } from '../shm/access';
import { ScenarioVm, threadMem } from '../check/gen/scenario';
import { DONE, FAILED, PARKED, THREAD_SLOT, findNormalScenario } from './thread-replay';
import type { Shm } from '../shm/layout';
import type { VmConfig } from '../kvm/config';

interface Init {
  scenario: string;
  thread: number;
  shm: Shm;
  config: VmConfig | null;
  ctrl: Int32Array;
  data: unknown;
  /** Where a failing thread sends its error; the scheduler reads it synchronously (receiveMessageOnPort). */
  errors: MessagePort;
}

const { SLOT_WORDS, S_STATE, S_GO, S_OP, S_A, S_B, S_C } = THREAD_SLOT;

function main(): void {
  const init = workerData as Init;
  const { ctrl } = init;
  const base = init.thread * SLOT_WORDS;
  try {
    run(init, base);
    Atomics.store(ctrl, base + S_STATE, DONE);
  } catch (e) {
    // The message first, then the state: the scheduler reads the message once it sees FAILED.
    init.errors.postMessage((e as Error).stack ?? String(e));
    Atomics.store(ctrl, base + S_STATE, FAILED);
  }
  Atomics.notify(ctrl, base + S_STATE);
}

function run(init: Init, base: number): void {
  const { ctrl } = init;
  const spec = findNormalScenario(init.scenario);
  const machine = { shm: init.shm, config: init.config };
  const mem = threadMem(machine, init.thread);
  const hook: AccessHook = {
    before(op, a, b, c) {
      // Read the go word first: the scheduler may bump it as soon as we park.
      const go = Atomics.load(ctrl, base + S_GO);
      Atomics.store(ctrl, base + S_OP, op);
      Atomics.store(ctrl, base + S_A, a);
      Atomics.store(ctrl, base + S_B, b);
      Atomics.store(ctrl, base + S_C, c);
      Atomics.store(ctrl, base + S_STATE, PARKED);
      Atomics.notify(ctrl, base + S_STATE);
      while (Atomics.load(ctrl, base + S_GO) === go) Atomics.wait(ctrl, base + S_GO, go, 1000);
    },
    note() {},
  };
  mem.hook = hook;
  const vm = new ScenarioVm(machine, mem);
  const name = Object.keys(spec.threads)[init.thread]!;
  spec.threads[name]!(vm, init.data);
}

main();
