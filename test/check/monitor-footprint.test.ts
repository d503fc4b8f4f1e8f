// What an invariant monitor reads at a mark is a read for DPOR: the late-flush dirty-log get is found by default DPOR, its fixed order is proven clean, and a monitor of one's own is ordered the same way.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { contextFor, runCheck } from '../../src/check/check';
import { Engine, type Footprint, type Monitor } from '../../src/check/engine';
import { explore } from '../../src/check/explore';
import { metaKey32 } from '../../src/check/ops';
import { ALL_GUARDS, GUARDS } from '../../src/kvm/config';
import { loadGenModule, loadScenarioFile } from '../../src/cli/scenario-file';

const ROOT = path.join(__dirname, '..', '..', '..');
const gen = loadGenModule();
const example = path.join(ROOT, 'examples', 'wp-flush-after-unlock.ts');

test('a dirty-log get that flushes after releasing mmu_lock (before 6dbf79e7164e) loses a TLB flush: default DPOR finds it', () => {
  const spec = loadScenarioFile(example, 'wp-flush-after-unlock');
  const r = runCheck(gen, spec, { guards: ALL_GUARDS & ~GUARDS['flush-mmu-writable'] });
  assert.ok(r.violation !== null, `DPOR called it clean after ${r.executions} executions`);
  assert.equal(r.violation.invariant, 'tlb-after-write-protect');
  assert.match(r.violation.message, /vCPU 0 still holds a writable TLB entry for gfn 0x5/);
});

test('the same get flushing before it releases mmu_lock is exhaustive and clean, even with flush-mmu-writable off', () => {
  const spec = loadScenarioFile(example, 'wp-flush-before-unlock');
  const r = runCheck(gen, spec, { guards: ALL_GUARDS & ~GUARDS['flush-mmu-writable'] });
  assert.equal(r.violation, null);
  assert.equal(r.complete, true);
});

test('with flush-mmu-writable on, the late flush is harmless (the vCPU flushes for the MMU-writable SPTE itself): exhaustive and clean', () => {
  const r = runCheck(gen, loadScenarioFile(example, 'wp-flush-after-unlock'), {});
  assert.equal(r.violation, null);
  assert.equal(r.complete, true);
});

// A raw-memory scenario: A writes word 0 and then marks; B writes word 4. The two writes commute, so DPOR
// explores one order only, unless the monitor's read of word 4 at A's mark counts.
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-footprint-'));
const file = path.join(dir, 'mark.ts');
fs.writeFileSync(
  file,
  `import { defineScenario } from 'kvmmu/scenario';
export const s = defineScenario({
  name: 'mark-reads', description: 'a monitor reads word 4 when A marks', memory: { metaBytes: 64 },
  threads: {
    A: (vm) => { vm.mem.store32(vm.word(0), 1); vm.mem.note(99, 0, 0); },
    B: (vm) => { vm.mem.store32(vm.word(4), 1); },
  },
});
`,
);

const spec = loadScenarioFile(file);

/** Explore mark-reads with a monitor that fails when word 4 is already 1 at A's mark, declaring that read or not. */
function checkMark(declare: boolean): { found: boolean; executions: number } {
  const engine = new Engine(gen, spec, contextFor(spec, {}), {
    monitorsFor: (m, fp: Footprint): Monitor[] => {
      const i32 = new Int32Array(m.shm.meta);
      const word = m.shm.layout.regions['scenario.words']!.off / 4 + 1;
      return [
        {
          name: 'b-after-mark',
          statement: "B's word is still 0 when A marks",
          onNote(_ex, _t, kind) {
            if (kind !== 99) return null;
            if (declare) fp.read(metaKey32(word));
            return i32[word] === 1 ? 'B wrote before A marked' : null;
          },
        },
      ];
    },
  });
  const r = explore(engine, { strategy: 'dpor' });
  return { found: r.violation !== null, executions: r.executions };
}

test("a monitor's declared read at a mark orders the mark against the write it reads: DPOR tries both orders", () => {
  assert.deepEqual(checkMark(true), { found: true, executions: 2 });
});

test('undeclared, the same read is invisible to DPOR: one execution, no violation (why monitors must declare what they read)', () => {
  assert.deepEqual(checkMark(false), { found: false, executions: 1 });
});
