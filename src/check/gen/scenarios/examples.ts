// Two scenarios that are not about KVM: a shared counter incremented with a plain read-modify-write (a lost update) and with an atomic add.

import { defineScenario, type ScenarioVm } from '../scenario';

function plainIncrement(vm: ScenarioVm): void {
  const w = vm.word(0);
  const v = vm.mem.load32(w);
  vm.mem.store32(w, v + 1);
}

function atomicIncrement(vm: ScenarioVm): void {
  vm.mem.fetchAdd32(vm.word(0), 1);
}

function counterIs(vm: ScenarioVm, want: number): string | null {
  const got = vm.mem.load32(vm.word(0));
  return got === want ? null : `the counter is ${got} after ${want} increments: an update was lost`;
}

export const lostUpdate = defineScenario({
  name: 'lost-update',
  description: 'Two threads increment a shared counter with a plain load and store: one increment can be lost.',
  memory: { metaBytes: 64 },
  threads: { A: plainIncrement, B: plainIncrement },
  check: (vm) => counterIs(vm, 2),
});

export const atomicCounter = defineScenario({
  name: 'atomic-counter',
  description: 'Three threads increment a shared counter with an atomic add: no increment is lost.',
  memory: { metaBytes: 64 },
  threads: { A: atomicIncrement, B: atomicIncrement, C: atomicIncrement },
  check: (vm) => counterIs(vm, 3),
});
