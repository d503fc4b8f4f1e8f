// Run control shared by the main thread and workers: phase flags and progress counters in one small SharedArrayBuffer.
//
// Int32 words:
//   [STOP_WORK]   main -> all: the timed phase is over
//   [PAUSE]       migration -> vCPUs: leave guest mode and wait (the VMM stopping vCPUs for the final copy)
//   [PAUSED]      vCPUs -> migration: how many are paused
//   [HOST_STOP]   main -> host thread: stop applying memory pressure
//   [MIG_DONE]    migration -> vCPUs: the final copy is compared; vCPUs may verify and finish
//   [START]       main -> all: every worker is ready, begin
//   [MIG_PAGES]   migration -> main: pages it has copied or compared so far (progress, for hang detection)
//   [PROGRESS+v]  vCPU v's completed passes over its memory (for progress lines)

export const CTRL_STOP_WORK = 0;
export const CTRL_PAUSE = 1;
export const CTRL_PAUSED = 2;
export const CTRL_HOST_STOP = 3;
export const CTRL_MIG_DONE = 4;
export const CTRL_START = 5;
export const CTRL_MIG_PAGES = 6;
export const CTRL_PROGRESS = 16;

export function createControl(vcpus: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer((CTRL_PROGRESS + vcpus) * 4));
}

export function setFlag(ctrl: Int32Array, word: number, v = 1): void {
  Atomics.store(ctrl, word, v);
  Atomics.notify(ctrl, word);
}

export function isSet(ctrl: Int32Array, word: number): boolean {
  return Atomics.load(ctrl, word) !== 0;
}

/** Block until ctrl[word] !== v (with a timeout slice so a missed notify costs little). */
export function waitWhile(ctrl: Int32Array, word: number, v: number): void {
  while (Atomics.load(ctrl, word) === v) Atomics.wait(ctrl, word, v, 5);
}

const napWord = new Int32Array(new SharedArrayBuffer(4));

/** Sleep `ms` on this thread (an Atomics.wait nobody wakes). */
export function nap(ms: number): void {
  Atomics.wait(napWord, 0, 0, ms);
}
