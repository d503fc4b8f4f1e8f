// Worker for thread-replay.ts: runs one scenario thread on the normal build, parking in the access-layer hook until the scheduler grants each operation.

import { workerData, type MessagePort } from 'node:worker_threads';
import { OP, type AccessHook } from '../shm/access';
import { ScenarioVm, threadMem } from '../check/gen/scenario';
import { setSpinHandler } from '../check/loop-guard';
import { SpinTracker } from '../check/spin';
import { DONE, FAILED, PARKED, THREAD_SLOT, loadNormalScenario, type ThreadScenarioSource } from './thread-replay';
import type { Shm } from '../shm/layout';
import type { VmConfig } from '../kvm/config';

interface Init {
  scenario: string;
  source: ThreadScenarioSource;
  thread: number;
  shm: Shm;
  config: VmConfig | null;
  ctrl: Int32Array;
  /** Where this thread publishes the words its awaitChange waits on (thread-replay.ts AW_WORDS). */
  awaits: Int32Array;
  data: unknown;
  /** Where a failing thread sends its error; the scheduler reads it synchronously (receiveMessageOnPort). */
  errors: MessagePort;
}

const { SLOT_WORDS, S_STATE, S_GO, S_OP, S_A, S_B, S_C, AW_WORDS, AW_MAX } = THREAD_SLOT;

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
  const spec = loadNormalScenario(init.scenario, init.source);
  const machine = { shm: init.shm, config: init.config };
  const mem = threadMem(machine, init.thread);
  // The same spin-loop record as the checker's engine (check/spin.ts), so the same iterations become awaits.
  const spin = new SpinTracker(new Int32Array(init.shm.meta), new Int32Array(init.shm.data, 0, init.shm.data.byteLength >> 2));
  const publish = (): void => {
    const words = spin.awaitWords();
    if (words.length > AW_MAX) throw new Error(`thread replay: an await on ${words.length} words (at most ${AW_MAX})`);
    const at = init.thread * AW_WORDS;
    init.awaits[at] = words.length;
    words.forEach((w, k) => {
      init.awaits[at + 1 + 3 * k] = w.data ? 1 : 0;
      init.awaits[at + 2 + 3 * k] = w.index;
      init.awaits[at + 3 + 3 * k] = w.value;
    });
  };
  const hook: AccessHook = {
    awaitSet(words, seen) {
      spin.setHandAwait(words, seen);
      publish();
    },
    before(op, a, b, c) {
      spin.op(op, a);
      // Read the go word first: the scheduler may bump it as soon as we park.
      const go = Atomics.load(ctrl, base + S_GO);
      Atomics.store(ctrl, base + S_OP, op);
      Atomics.store(ctrl, base + S_A, a);
      Atomics.store(ctrl, base + S_B, b);
      Atomics.store(ctrl, base + S_C, c);
      Atomics.store(ctrl, base + S_STATE, PARKED);
      Atomics.notify(ctrl, base + S_STATE);
      while (Atomics.load(ctrl, base + S_GO) === go) Atomics.wait(ctrl, base + S_GO, go, 1000);
      // Granted: the operation runs next, before any other thread's.
      spin.preExecute();
    },
    note() {},
  };
  mem.hook = hook;
  // A scenario file's spin loop: an iteration that changed nothing parks the thread on an awaitChange, as in the checker.
  setSpinHandler({
    tick(loop) {
      if (!spin.tick(loop)) return false;
      publish();
      hook.before(OP.awaitChange, spin.awIdx.length, 0, 0);
      return false;
    },
    end(loop) {
      spin.end(loop);
    },
  });
  const vm = new ScenarioVm(machine, mem);
  const name = Object.keys(spec.threads)[init.thread]!;
  spec.threads[name]!(vm, init.data);
}

main();
