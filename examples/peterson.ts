// Example scenario file: Peterson's lock for two threads with plain spin loops, correct under sequential consistency; without its turn variable it loses an update; and the same lock waiting with waitUntil32.
import { defineScenario, threads, type ScenarioVm } from 'kvmmu/scenario';

// Raw memory: the flags of thread 0 and 1 at bytes 0 and 4, the turn at 8, the counter the lock protects at 12.
const FLAG = [0, 4];
const TURN = 8;
const COUNTER = 12;

/** Peterson's entry: raise my flag, give the other thread the turn, spin while it wants in and has the turn. */
function lock(vm: ScenarioVm, me: number): void {
  const other = 1 - me;
  vm.mem.store32(vm.word(FLAG[me]!), 1);
  vm.mem.store32(vm.word(TURN), other);
  // A plain spin loop: the checker sees that an iteration reading the same values changes nothing, and blocks
  // the thread until the other thread writes its flag or the turn (no annotation, no livelock).
  while (vm.mem.load32(vm.word(FLAG[other]!)) === 1 && vm.mem.load32(vm.word(TURN)) === other) {
    // spin
  }
}

/** The same entry, waiting with the access layer's waitUntil32 (one blocked operation per wait). */
function lockWaitUntil(vm: ScenarioVm, me: number): void {
  const other = 1 - me;
  vm.mem.store32(vm.word(FLAG[me]!), 1);
  vm.mem.store32(vm.word(TURN), other);
  vm.mem.waitUntil32([vm.word(FLAG[other]!), vm.word(TURN)], ([flag, turn]) => flag !== 1 || turn !== other);
}

/** Without the turn: wait until the other thread's flag is down, then raise mine (check, then act: a race). */
function lockNoTurn(vm: ScenarioVm, me: number): void {
  while (vm.mem.load32(vm.word(FLAG[1 - me]!)) === 1) {
    // spin
  }
  vm.mem.store32(vm.word(FLAG[me]!), 1);
}

function unlock(vm: ScenarioVm, me: number): void {
  vm.mem.store32(vm.word(FLAG[me]!), 0);
}

/** The critical section: a plain read-modify-write, which loses an update unless the lock excludes the other thread. */
function increment(vm: ScenarioVm): void {
  const c = vm.mem.load32(vm.word(COUNTER));
  vm.mem.store32(vm.word(COUNTER), c + 1);
}

function counterIsTwo(vm: ScenarioVm): string | null {
  const c = vm.mem.load32(vm.word(COUNTER));
  return c === 2 ? null : `the counter is ${c} after two increments under the lock: an update was lost`;
}

export const peterson = defineScenario({
  name: 'peterson',
  description: "Peterson's lock for two threads (plain spin loops) around a plain increment: no update is lost.",
  memory: { metaBytes: 64 },
  threads: threads(2, (vm, _d, i) => {
    lock(vm, i);
    increment(vm);
    unlock(vm, i);
  }),
  check: counterIsTwo,
});

export const petersonWaitUntil = defineScenario({
  name: 'peterson-wait-until',
  description: "Peterson's lock waiting with vm.mem.waitUntil32 over the other thread's flag and the turn.",
  memory: { metaBytes: 64 },
  threads: threads(2, (vm, _d, i) => {
    lockWaitUntil(vm, i);
    increment(vm);
    unlock(vm, i);
  }),
  check: counterIsTwo,
});

export const petersonNoTurn = defineScenario({
  name: 'peterson-no-turn',
  description: "Peterson's lock without its turn variable, each thread waiting for the other's flag before raising its own: both get in.",
  memory: { metaBytes: 64 },
  threads: threads(2, (vm, _d, i) => {
    lockNoTurn(vm, i);
    increment(vm);
    unlock(vm, i);
  }),
  check: counterIsTwo,
});
