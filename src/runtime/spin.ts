// How long a machine's lock waiters spin before sleeping, from how many threads take its locks and how many cores run them.

import * as os from 'node:os';
import { SPIN_LIMIT_DEDICATED, SPIN_LIMIT_SHARED } from '../shm/access';

/**
 * Mem.spinLimit for a machine whose locks `threads` worker threads take at
 * once: spin long when each can have a core (as KVM's spinlock waiters, whose
 * holder is never preempted), sleep soon when they outnumber the cores, since
 * then a holder may be waiting for the core a spinner is burning.
 */
export function spinLimitFor(threads: number): number {
  return threads <= os.availableParallelism() ? SPIN_LIMIT_DEDICATED : SPIN_LIMIT_SHARED;
}
