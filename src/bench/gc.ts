// A garbage collection on demand, for benchmarks that drop whole VMs: V8 frees a SharedArrayBuffer's memory only when it collects the buffer.

import * as v8 from 'node:v8';
import * as vm from 'node:vm';

let gc: (() => void) | null = null;

/**
 * Collect garbage now. V8 schedules collections by its own heap's growth; a
 * closed VM's gigabytes of SharedArrayBuffer live outside it, so they would be
 * freed only whenever a collection happens to come. Node exposes `gc` only with
 * --expose-gc; V8 accepts the flag at run time, and a new context then has it.
 */
export function collectGarbage(): void {
  if (gc === null) {
    v8.setFlagsFromString('--expose-gc');
    gc = vm.runInNewContext('gc') as () => void;
  }
  gc();
}
