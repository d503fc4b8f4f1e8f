// Benchmark control words shared by the host (main thread) and the vCPU workers: the pass to run, completions, failure.
//
// Int32 words of one small SharedArrayBuffer:
//   [CMD]          host -> vCPUs: the pass to run (0 populates, 1.. are dirty-log iterations), or CMD_EXIT
//   [DONE]         vCPUs -> host: how many vCPUs finished the pass in CMD (the host zeroes it before each pass)
//   [FAIL]         a vCPU worker threw: 1 (the host stops waiting and reports the worker's error)
//   [FAST_PATH]    host -> vCPUs: 1 if the pass in CMD tries the fast path first, 0 if every fault takes
//                  the slow path (stored before CMD; each vCPU sets its thread's switch from it)
//   [LAST + v]     vCPU v's last completed pass (as the selftest's vcpu_last_completed_iteration)
//
// The host stores DONE = 0 and FAST_PATH, then CMD, then notifies CMD; each vCPU waits while
// CMD equals the pass it last ran, runs the new pass, stores LAST + v, adds 1 to
// DONE and notifies DONE. The host sleeps on DONE (Atomics.waitAsync, so worker
// errors still reach it) until DONE equals the number of vCPUs: the pass's time
// runs from the host's notify to that moment, as the selftest's host measures it.

export const CMD = 0;
export const DONE = 1;
export const FAIL = 2;
export const FAST_PATH = 3;
export const LAST = 8;
export const CMD_EXIT = -1;
/** CMD before the first pass: no pass has been asked for yet. */
export const CMD_NONE = -2;

export function createBenchControl(vcpus: number): Int32Array {
  const ctrl = new Int32Array(new SharedArrayBuffer((LAST + vcpus) * 4));
  ctrl[CMD] = CMD_NONE;
  for (let v = 0; v < vcpus; v++) ctrl[LAST + v] = CMD_NONE;
  return ctrl;
}

/** Atomics.waitAsync (Node 20 has it; the ES2022 lib this project compiles against does not declare it). */
type WaitAsync = (
  a: Int32Array,
  index: number,
  value: number,
  timeoutMs?: number,
) => { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };

const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

/** Resolve once ctrl[word] differs from `v`, or after `timeoutMs`, without blocking the event loop. */
export async function waitWhileAsync(ctrl: Int32Array, word: number, v: number, timeoutMs: number): Promise<void> {
  const r = waitAsync(ctrl, word, v, timeoutMs);
  if (r.async) await r.value;
}
