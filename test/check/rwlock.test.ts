// The reader-writer lock under the checker: readers share it, writers exclude everyone, a waiting writer keeps new readers out (so a recursive read lock can deadlock, as with Linux's qrwlock), and DPOR agrees with DFS.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCheck } from '../../src/check/check';
import { loadGenModule, loadScenarioFile } from '../../src/cli/scenario-file';

const gen = loadGenModule();
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-rwlock-'));

/** A raw-memory scenario file: the rwlock at byte 0 (16 bytes), words from byte 64. */
function scenario(name: string, threads: string, check: string): string {
  const f = path.join(dir, `${name}.ts`);
  fs.writeFileSync(
    f,
    `import { defineScenario } from 'kvmmu/scenario';
export const s = defineScenario({ name: '${name}', description: 'rwlock test', memory: { metaBytes: 128 },
  threads: {${threads}}, check: ${check} });
`,
  );
  return f;
}

// Writers add 1 to a counter with a plain load and store; a reader reads a pair the writers keep equal.
const WRITER = `(vm) => { const l = vm.word(0); vm.mem.writeLock(l);
    vm.mem.store32(vm.word(64), vm.mem.load32(vm.word(64)) + 1); vm.mem.store32(vm.word(68), vm.mem.load32(vm.word(68)) + 1);
    vm.mem.writeUnlock(l); }`;
const READER = `(vm) => { const l = vm.word(0); vm.mem.readLock(l);
    if (vm.mem.load32(vm.word(64)) !== vm.mem.load32(vm.word(68))) vm.mem.store32(vm.word(72), 1);
    vm.mem.readUnlock(l); }`;
const CHECK = `(vm) => vm.mem.load32(vm.word(72)) === 1 ? 'a reader saw a half-done write' : vm.mem.load32(vm.word(64)) === 2 ? null : 'an increment was lost'`;

for (const strategy of ['dpor', 'dfs'] as const) {
  test(`two writers and two readers: no lost increment, no torn read, exhaustive (${strategy})`, () => {
    const f = scenario('rw-exclusion', `W1: ${WRITER}, W2: ${WRITER}, R1: ${READER}, R2: ${READER}`, CHECK);
    const r = runCheck(gen, loadScenarioFile(f), { strategy, executions: 2_000_000 });
    assert.equal(r.violation, null);
    assert.equal(r.complete, true);
  });
}

test('writers that take the lock for reading lose an increment, and DPOR finds it', () => {
  const asReader = WRITER.replace('writeLock', 'readLock').replace('writeUnlock', 'readUnlock');
  const f = scenario('rw-read-writer', `W1: ${asReader}, W2: ${asReader}`, CHECK);
  const r = runCheck(gen, loadScenarioFile(f), {});
  assert.equal(r.violation?.message, 'an increment was lost');
});

test('a writer waiting for a reader keeps the reader from taking the lock again: the recursive read deadlocks, as with a queued rwlock', () => {
  const f = scenario(
    'rw-recursive-read',
    `R: (vm) => { const l = vm.word(0); vm.mem.readLock(l); vm.mem.readLock(l); vm.mem.readUnlock(l); vm.mem.readUnlock(l); },
     W: (vm) => { const l = vm.word(0); vm.mem.writeLock(l); vm.mem.writeUnlock(l); }`,
    '() => null',
  );
  const r = runCheck(gen, loadScenarioFile(f), {});
  assert.equal(r.violation?.invariant, 'deadlock');
  assert.match(r.violation!.message, /'R' waits to read-lock .*'W' waits for the readers of a lock it claimed/);
  // The shortest: R reads, W claims the lock; now R's second read waits for W, and W for R to leave.
  assert.match(r.violation!.schedule, /:0,1$/);
});
