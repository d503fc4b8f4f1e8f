// Example scenario file: inc(N), N threads each adding one to a shared counter, built with threads(n, body): with a plain load and store an update is lost; with fetchAdd32 none is.
import { defineScenario, threads, type ScenarioVm } from 'kvmmu/scenario';

/** How many threads (at most 30). */
const N = 3;

function counterIs(vm: ScenarioVm, want: number): string | null {
  const got = vm.mem.load32(vm.word(0));
  return got === want ? null : `the counter is ${got} after ${want} increments: an update was lost`;
}

export const inc = defineScenario({
  name: 'inc',
  description: `${N} threads increment a counter with a plain load and store.`,
  memory: { metaBytes: 64 },
  threads: threads(N, (vm) => {
    const c = vm.mem.load32(vm.word(0));
    vm.mem.store32(vm.word(0), c + 1);
  }),
  check: (vm) => counterIs(vm, N),
});

export const incAtomic = defineScenario({
  name: 'inc-atomic',
  description: `${N} threads increment a counter with fetchAdd32.`,
  memory: { metaBytes: 64 },
  threads: threads(N, (vm) => {
    vm.mem.fetchAdd32(vm.word(0), 1);
  }),
  check: (vm) => counterIs(vm, N),
});
