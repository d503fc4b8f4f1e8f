// Scenarios that are not about KVM: a shared counter incremented with a plain read-modify-write (a lost update) and with an atomic add; two locks taken in opposite orders (a deadlock).

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

/** Take lock `first`, then lock `second`; release both. */
function lockBoth(vm: ScenarioVm, first: number, second: number): void {
  vm.mem.lock(vm.word(first));
  vm.mem.lock(vm.word(second));
  vm.mem.unlock(vm.word(second));
  vm.mem.unlock(vm.word(first));
}

export const abbaDeadlock = defineScenario({
  name: 'abba-deadlock',
  description: 'Two threads take the same two locks in opposite orders: each can end up holding one and waiting for the other.',
  memory: { metaBytes: 256 },
  threads: { A: (vm) => lockBoth(vm, 0, 32), B: (vm) => lockBoth(vm, 32, 0) },
});
