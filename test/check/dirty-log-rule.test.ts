// The 2010 rule of KVM_GET_DIRTY_LOG ("all pages are either dirty in the current bitmap, or write-protected") as its own invariant: a get that write-protects before it takes the bitmap breaks it, the order KVM fixed it to keeps it.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { contextFor, runCheck } from '../../src/check/check';
import { Engine } from '../../src/check/engine';
import { explore } from '../../src/check/explore';
import { builtinMonitors } from '../../src/check/invariants';
import { loadGenModule, loadScenarioFile } from '../../src/cli/scenario-file';

const gen = loadGenModule();

/** A hand-written get over the slot's one bitmap word, in the 2010 order (protect, then take) or KVM's since (take, then protect). */
const FILE = `import { defineScenario, type ScenarioVm } from 'kvmmu/scenario';
const X = 3;
function get(vm: ScenarioVm, protectFirst: boolean): void {
  const k = vm.kvm;
  const bm = k.slotBitmap[0]!;
  const base = k.slotHvpn[0]!;
  let mask = 0;
  k.mem.lock(k.mmuLock);
  if (!protectFirst) mask = k.mem.xchg32(bm, 0);
  // 2010: kvm_mmu_slot_remove_write_access over the whole slot, then the bitmap swap.
  for (let p = 0; p < 16; p++) if (protectFirst || (mask & (1 << p)) !== 0) k.spte.rmapWriteProtectHvpn(base + p, false);
  k.mem.unlock(k.mmuLock);
  k.kvmFlushRemoteTlbs();
  if (protectFirst) mask = k.mem.xchg32(bm, 0);
  k.dirtyLog.handOver(0, 0, new Int32Array([mask]));
}
function scenario(name: string, protectFirst: boolean) {
  return defineScenario({
    name, description: 'a dirty-log get against a vCPU writing a logged page', modes: ['direct'],
    machine: () => ({ vcpus: 1, memBytes: 24 * 4096, hostFrames: 40, spPages: 24, tlbEntries: 4 }),
    setup(vm) {
      vm.powerOn(16);
      vm.program(0, [{ op: 'write', gva: vm.addr(X), value: 1n }]);
      vm.kvm.dirtyLog.enable(0); // X's SPTE: W clear, MMU-writable
      return {};
    },
    threads: {
      get: (vm) => get(vm, protectFirst),
      'vCPU 0': (vm) => { vm.program(0, [{ op: 'write', gva: vm.addr(X), value: 2n }]); },
    },
  });
}
export const before = scenario('get-protect-then-take', true);
export const after = scenario('get-take-then-protect', false);
`;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-dirty-rule-'));
const file = path.join(dir, 'gets.ts');
fs.writeFileSync(file, FILE);

test('a get that write-protects before taking the bitmap (KVM before 2010) leaves a page writable under a clean bitmap: dirty-or-write-protected', () => {
  const r = runCheck(gen, loadScenarioFile(file, 'get-protect-then-take'), {});
  assert.ok(r.violation !== null, `clean after ${r.executions} executions`);
  assert.equal(r.violation.invariant, 'dirty-or-write-protected');
  assert.match(r.violation.message, /an SPTE maps gfn 0x3 writable .* its bit is clear in the bitmap the next get reads/);
});

test('writable-spte-logged does not see that race (the page was reported after its SPTE became writable): without the rule and dirty-log-complete (which sees a write lost only once one is), exhaustive and clean', () => {
  const spec = loadScenarioFile(file, 'get-protect-then-take');
  const engine = new Engine(gen, spec, contextFor(spec, {}), {
    monitorsFor: (m, fp) => builtinMonitors(m, fp).filter((x) => x.name !== 'dirty-or-write-protected' && x.name !== 'dirty-log-complete'),
  });
  const r = explore(engine, { strategy: 'dpor' });
  assert.equal(r.violation, null);
  assert.equal(r.complete, true);
});

test('a get that takes the bitmap before it write-protects keeps the rule: exhaustive and clean', () => {
  const r = runCheck(gen, loadScenarioFile(file, 'get-take-then-protect'), {});
  assert.equal(r.violation, null);
  assert.equal(r.complete, true);
});
