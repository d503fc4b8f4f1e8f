// RCU in shared memory: an object queued with call_rcu comes back only after every read section that was open then has closed, and the checker proves a reader never sees a freed object (and finds the reader that does when the updater skips the grace period).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Mem } from '../../src/shm/access';
import { LayoutBuilder, createShm, region } from '../../src/shm/layout';
import { Rcu, layoutRcu } from '../../src/shm/rcu';
import { runCheck } from '../../src/check/check';
import { loadGenModule, loadScenarioFile } from '../../src/cli/scenario-file';

function handles(n: number): Rcu[] {
  const b = new LayoutBuilder();
  layoutRcu(b, 'rcu', 8);
  const shm = createShm(b.finish());
  const base = region(shm.layout, 'rcu').off / 4;
  return Array.from({ length: n }, () => new Rcu(new Mem(shm), base, 8));
}

test('with no reader inside, call_rcu hands the object back at once', () => {
  const [u] = handles(1);
  const out: number[] = [];
  assert.equal(u!.callRcu(7, out), 1);
  assert.equal(out[0], 7);
  assert.equal(u!.pending(), 0);
});

test('a read section open at call_rcu holds the object until it closes; nesting counts once', () => {
  const [u, r] = handles(2);
  const out: number[] = [];
  r!.readLock();
  r!.readLock();
  assert.equal(u!.callRcu(7, out), 0);
  r!.readUnlock();
  assert.equal(u!.poll(out), 0, 'still inside the outer section');
  r!.readUnlock();
  assert.equal(u!.poll(out), 1);
  assert.equal(out[0], 7);
});

test('a read section that opens after call_rcu does not hold the object; one queued during a grace period waits for the next', () => {
  const [u, r, r2] = handles(3);
  const out: number[] = [];
  r!.readLock();
  assert.equal(u!.callRcu(1, out), 0); // grace period 1 begins, waiting for r
  r2!.readLock(); // begins after: grace period 1 does not wait for it
  assert.equal(u!.callRcu(2, out), 0); // queued during grace period 1: needs grace period 2, which waits for r2
  r!.readUnlock();
  assert.equal(u!.poll(out), 1);
  assert.equal(out[0], 1);
  assert.equal(u!.poll(out), 0, 'object 2 waits for r2');
  r2!.readUnlock();
  assert.equal(u!.poll(out), 1);
  assert.equal(out[0], 2);
});

// Under the checker: a pointer at word 0 names an object (word 4 or 8) whose value a reader checks; the updater
// unlinks object 1 for object 2, waits out readers with call_rcu (or not), and poisons object 1 when it gets it back.
const RCU_BASE = 16; // bytes: the region starts after the pointer and the two objects
const FILE = (graceful: boolean): string => `import { defineScenario, Rcu } from 'kvmmu/scenario';
const rcu = (vm: any) => new Rcu(vm.mem, vm.word(${RCU_BASE}), 4);
export const s = defineScenario({
  name: 'rcu-${graceful ? 'graceful' : 'hasty'}', description: 'a reader and an updater that frees an unlinked object', memory: { metaBytes: 256 },
  setup(vm) { vm.mem.store32(vm.word(0), 1); vm.mem.store32(vm.word(4), 100); vm.mem.store32(vm.word(8), 200); },
  threads: {
    reader: (vm) => {
      const r: Rcu = rcu(vm);
      r.readLock();
      const p = vm.mem.load32(vm.word(0));
      if (vm.mem.load32(vm.word(4 * p)) === -1) vm.mem.store32(vm.word(12), 1);
      r.readUnlock();
    },
    updater: (vm) => {
      const r: Rcu = rcu(vm);
      vm.mem.store32(vm.word(0), 2); // unlink object 1
      const out: number[] = [];
      let n = ${graceful ? 'r.callRcu(1, out)' : '(out[0] = 1, 1)'};
      if (n === 0) {
        r.synchronize(); // the readers of the grace period call_rcu began have left
        n = r.poll(out);
      }
      vm.mem.store32(vm.word(4 * out[0]!), -1); // free (poison) it
    },
  },
  check: (vm) => (vm.mem.load32(vm.word(12)) === 1 ? 'the reader read a freed object' : null),
});
`;

const gen = loadGenModule();
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-rcu-'));
/** Write a scenario file into the test's directory; returns its path. */
function scenarioFile(name: string, text: string): string {
  const f = path.join(dir, `${name}.ts`);
  fs.writeFileSync(f, text);
  return f;
}
const file = (graceful: boolean): string => scenarioFile(`rcu-${graceful}`, FILE(graceful));

test('under the checker, an updater that frees after a grace period never frees what a reader still reads: exhaustive and clean', () => {
  const r = runCheck(gen, loadScenarioFile(file(true)), {});
  assert.equal(r.violation, null);
  assert.equal(r.complete, true);
});

test('an updater that frees at once is caught: the reader reads the freed object', () => {
  const r = runCheck(gen, loadScenarioFile(file(false)), {});
  assert.equal(r.violation?.message, 'the reader read a freed object');
});

test('each reader slot has a cache line of its own (as per-CPU counters do): two threads reading count in 64 bytes apart or more', () => {
  const b = new LayoutBuilder();
  layoutRcu(b, 'rcu', 8, 4);
  const shm = createShm(b.finish());
  const base = region(shm.layout, 'rcu').off / 4;
  const written: number[] = [];
  for (const tid of [0, 1, 2, 3]) {
    const m = new Mem(shm);
    m.tid = tid;
    const before = Int32Array.from(m.i32);
    const r = new Rcu(m, base, 8, 4);
    r.readLock();
    const changed = m.i32.findIndex((v, i) => v !== before[i]);
    assert.ok(changed >= 0, `tid ${tid} counted itself in somewhere`);
    written.push(changed * 4);
    r.readUnlock();
  }
  for (const a of written) for (const c of written) if (a !== c) assert.notEqual(Math.floor(a / 64), Math.floor(c / 64), `slots at bytes ${a} and ${c} share a cache line`);
  assert.equal(new Set(written).size, 4);
});

// ---- QSBR readers (the vCPUs of the TDP MMU): read sections touch nothing; a changed state word is a quiescent state ----

/** An RCU region with one counted slot and one QSBR reader whose state word is `state` (odd: quiescent). */
function qsbrHandles(): { updater: Rcu; reader: Rcu; mem: Mem; state: number } {
  const b = new LayoutBuilder();
  layoutRcu(b, 'rcu', 8, 1, 1);
  b.meta('state', 4);
  const shm = createShm(b.finish());
  const base = region(shm.layout, 'rcu').off / 4;
  const state = region(shm.layout, 'state').off / 4;
  const q = { words: [state], quiescent: (v: number) => (v & 1) === 1 };
  const mem = new Mem(shm);
  return { updater: new Rcu(new Mem(shm), base, 8, 1, q), reader: new Rcu(mem, base, 8, 1, q, 0), mem, state };
}

test('QSBR: a reader read section writes no shared word', () => {
  const { reader, mem } = qsbrHandles();
  reader.setOnline(0, true);
  const before = Int32Array.from(mem.i32);
  reader.readLock();
  reader.readLock();
  reader.readUnlock();
  reader.readUnlock();
  assert.deepEqual(Int32Array.from(mem.i32), before);
});

test('QSBR: a grace period waits for an online reader until its state word changes, not for one offline or quiescent', () => {
  const { updater, reader, mem, state } = qsbrHandles();
  const out: number[] = [];
  // Offline: nothing to wait for.
  assert.equal(updater.callRcu(1, out), 1);
  // Online, not quiescent (even word): waits until the word changes.
  reader.setOnline(0, true);
  assert.equal(updater.callRcu(2, out), 0);
  assert.equal(updater.poll(out), 0);
  assert.deepEqual(updater.peekState().qsbr, [{ online: true, waitedFor: true }]);
  mem.store32(state, 2); // still even, but changed: it passed a quiescent state (as a vCPU's guest entry and exit)
  assert.equal(updater.poll(out), 1);
  assert.equal(out[0], 2);
  // Quiescent when the grace period began (odd word): not waited for, though it never changes.
  mem.store32(state, 3);
  assert.equal(updater.callRcu(3, out), 1);
  // Going offline ends the wait too.
  mem.store32(state, 4);
  assert.equal(updater.callRcu(4, out), 0);
  reader.setOnline(0, false);
  assert.equal(updater.poll(out), 1);
  assert.equal(out[0], 4);
});

test('QSBR: a quiescent state (or going offline) inside a read section is refused', () => {
  const { reader } = qsbrHandles();
  reader.setOnline(0, true);
  reader.readLock();
  assert.throws(() => reader.quiescentState(), /quiescent state inside a read section/);
  assert.throws(() => reader.setOnline(0, false), /quiescent state inside a read section/);
  reader.readUnlock();
  reader.quiescentState();
});

// Under the checker: the reader reads the object twice, in two read sections, reporting a quiescent state (a new
// even value of its state word) between them and going offline at the end; the updater unlinks object 1, queues it,
// polls once, and poisons it if it came back. A reader that reports a quiescent state inside its section is caught.
const QSBR_RCU_BASE = 32;
const QSBR_FILE = (qsInside: boolean): string => `import { defineScenario, Rcu } from 'kvmmu/scenario';
const rcu = (vm: any, self: number) => new Rcu(vm.mem, vm.word(${QSBR_RCU_BASE}), 4, 1, { words: [vm.word(16)], quiescent: (v: number) => (v & 1) === 1 }, self);
export const s = defineScenario({
  name: 'rcu-qsbr-${qsInside ? 'qs-inside' : 'good'}', description: 'a QSBR reader and an updater that frees an unlinked object', memory: { metaBytes: 512 },
  setup(vm) { vm.mem.store32(vm.word(0), 1); vm.mem.store32(vm.word(4), 100); vm.mem.store32(vm.word(8), 200); rcu(vm, 0).setOnline(0, true); },
  threads: {
    reader: (vm) => {
      const r: Rcu = rcu(vm, 0);
      for (let i = 0; i < 2; i++) {
        r.readLock();
        const p = vm.mem.load32(vm.word(0));
        ${qsInside ? 'vm.mem.store32(vm.word(16), 2 * i + 2); // a quiescent state reported inside the section: the bug' : ''}
        if (vm.mem.load32(vm.word(4 * p)) === -1) vm.mem.store32(vm.word(12), 1);
        r.readUnlock();
        ${qsInside ? '' : 'vm.mem.store32(vm.word(16), 2 * i + 2); // a quiescent state between sections'}
      }
      r.setOnline(0, false);
    },
    updater: (vm) => {
      const r: Rcu = rcu(vm, -1);
      vm.mem.store32(vm.word(0), 2); // unlink object 1
      const out: number[] = [];
      if (r.callRcu(1, out) === 0) r.poll(out);
      if (out.length > 0 && out[0] === 1) vm.mem.store32(vm.word(4), -1); // free (poison) it
    },
  },
  check: (vm) => (vm.mem.load32(vm.word(12)) === 1 ? 'the reader read a freed object' : null),
});
`;

const qsbrFile = (qsInside: boolean): string => scenarioFile(`rcu-qsbr-${qsInside}`, QSBR_FILE(qsInside));

test('under the checker, QSBR readers that report quiescent states only between sections never read a freed object: exhaustive and clean', () => {
  const r = runCheck(gen, loadScenarioFile(qsbrFile(false)), {});
  assert.equal(r.violation, null);
  assert.equal(r.complete, true);
});

test('a QSBR reader that reports a quiescent state inside its read section is caught reading the freed object', () => {
  const r = runCheck(gen, loadScenarioFile(qsbrFile(true)), {});
  assert.equal(r.violation?.message, 'the reader read a freed object');
});
