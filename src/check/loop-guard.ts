// What a scenario file's compiled loops call: the guard against a loop that never reaches an access-layer operation (a count of iterations since the last one, which the engine resets), and the spin-loop ticks the engine turns into awaits (check/spin.ts).

import { KvmmuError } from '../shm/errors';

/**
 * Loop iterations a scenario file's code may run between two access-layer
 * operations (about a second of an empty loop here). A scenario does a few
 * steps of arithmetic between operations; a count this large is a loop that
 * waits for something only another thread could change without reading
 * shared memory, which under a scheduler never comes.
 */
export const LOOP_LIMIT = 100_000_000;

export class LoopGuardError extends KvmmuError {
  override readonly name = 'LoopGuardError';
}

let iterations = 0;
let where = '';

/** Called by the engine before it runs a part of a scenario (`what` names it in the error): the count starts again. */
export function resetLoopGuard(what: string): void {
  iterations = 0;
  where = what;
}

/**
 * Called at the top of every loop body of a scenario file compiled for the
 * checker (gen-transform's `loopGuard`). Throws once the loops have run
 * LOOP_LIMIT iterations since the last operation.
 */
export function loopTick(): void {
  if (++iterations <= LOOP_LIMIT) return;
  iterations = 0;
  throw new LoopGuardError(
    `${where} ran ${LOOP_LIMIT.toLocaleString('en-US')} loop iterations without a memory operation: ` +
      `the checker takes control only at access-layer operations, so a loop must read shared memory (through the scenario's vm) to let another thread run`,
  );
}

/** Called by the engine's hooks at each access-layer operation: the count starts again, for the same code. */
export function loopGuardStep(): void {
  iterations = 0;
}

/** Who judges a scenario file's spin-candidate loops (check/spin.ts): the engine, or a thread-replay worker. */
export interface SpinHandler {
  /** The top of an iteration of loop `loop`; true when the thread must yield (it announced an await). */
  tick(loop: number): boolean;
  /** Loop `loop` was left. */
  end(loop: number): void;
}

let spinHandler: SpinHandler | null = null;

/** Set (or clear) the handler of spin-candidate loops for the code about to run on this JavaScript thread. */
export function setSpinHandler(h: SpinHandler | null): void {
  spinHandler = h;
}

/**
 * Called at the top of every iteration of a scenario file's spin-candidate loop (gen-transform): true when the
 * iteration before changed nothing and the thread now waits (the generator build then yields to the scheduler).
 */
export function spinTick(loop: number): boolean {
  return spinHandler !== null && spinHandler.tick(loop);
}

/** Called when a spin-candidate loop is left, whichever way. */
export function spinEnd(loop: number): void {
  if (spinHandler !== null) spinHandler.end(loop);
}
