// The TDP MMU (mode tdp): the iterator's walk, faults in parallel under the read lock, its own races and those it shares with the shadow MMU found with their guards off and proven absent with them on, leaked tables and changed frozen entries caught, and a VM on real threads losing nothing.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TdpIter } from '../../src/kvm/tdp-iter';
import { ALL_GUARDS, GUARDS, type GuardName } from '../../src/kvm/config';
import { runCheck } from '../../src/check/check';
import { findScenario, loadCatalog, loadGenModule, loadScenarioFile } from '../../src/cli/scenario-file';
import {
  SPTE_ACCESSED_MASK,
  SPTE_DIRTY_MASK,
  formatSpte,
  isAccessTrackSpte,
  isMmuWritableSpte,
  isShadowPresentPte,
  isWritablePte,
  spteAdEnabled,
} from '../../src/x86/spte';
import { inGuest, leafSptep, makeVm } from '../helpers/vm';

const ROOT = path.join(__dirname, '..', '..', '..');
const gen = loadGenModule();

test('tdp: a fault links one table per level and the iterator walks that path in pre-order, re-reading before it steps down', () => {
  const vm = makeVm({ mode: 'tdp', vcpus: 1, dataPages: 64 });
  const v = vm.vcpus[0]!;
  v.write64(vm.addr(3), 1n);
  v.write64(vm.addr(40), 2n);
  v.exitGuest();
  const it = new TdpIter(vm.host);
  const seen: string[] = [];
  let leaves = 0;
  for (it.begin(v.kv.root, 0, 64); it.valid; it.next()) {
    if (it.level > 1) seen.push(`${it.level}:${it.gfn}`);
    else if (isShadowPresentPte(it.oldSpte)) leaves++;
  }
  // One entry per upper level covers gfns 0..63; below it, the 64 leaf entries of the one leaf table.
  assert.deepEqual(seen, ['4:0', '3:0', '2:0']);
  assert.equal(leaves, 2, 'the two pages the vCPU wrote');
  assert.equal(v.read64(vm.addr(3)), 1n);
  assert.equal(v.read64(vm.addr(40)), 2n);
});

test('tdp: the iterator starts at the first entry covering the range and stops at its end', () => {
  const vm = makeVm({ mode: 'tdp', vcpus: 1, dataPages: 64 });
  const v = vm.vcpus[0]!;
  for (const p of [1, 5, 9]) v.write64(vm.addr(p), 1n);
  v.exitGuest();
  const it = new TdpIter(vm.host);
  const leaves: number[] = [];
  for (it.begin(v.kv.root, 4, 9); it.valid; it.next()) if (it.level === 1) leaves.push(it.gfn);
  assert.deepEqual(leaves, [4, 5, 6, 7, 8]);
});

for (const mode of ['direct', 'tdp'] as const) {
  test(`(${mode}) a write to a write-tracked gfn is emulated each time, even when its read-only SPTE is already what the fault would make`, () => {
    const vm = makeVm({ mode, vcpus: 1, dataPages: 64 });
    const v = vm.vcpus[0]!;
    const X = 5;
    inGuest(v, () => v.read64(vm.addr(X)));
    vm.host.dirtyLog.enable(0);
    vm.host.mmu.kvmWriteTrackAddGfn(X);
    // The fault finds nothing to change (KVM's new_spte == old_spte) but must still emulate the write: answered
    // as spurious, the vCPU retries it and faults for ever (TDP mode did, until this test).
    inGuest(v, () => {
      v.write64(vm.addr(X), 1n);
      v.write64(vm.addr(X) + 8, 2n);
    });
    assert.equal(v.kv.stat('pfEmulate'), 2);
    assert.equal(vm.host.host.readUser64(X, 0), 1n);
    assert.equal(vm.host.host.readUser64(X, 8), 2n);
    assert.equal(isWritablePte(vm.host.mem.u64[leafSptep(v, vm.addr(X))]!), false);
  });
}

test('tdp with A/D bits off: SPTEs are A/D-disabled, aging access-tracks them, and the fast path restores them (W only for a write)', () => {
  const vm = makeVm({ mode: 'tdp', vcpus: 1, dataPages: 64, adBits: false });
  const v = vm.vcpus[0]!;
  const k = vm.host;
  const leaf = (gfn: number): bigint => {
    const it = new TdpIter(k);
    for (it.begin(v.kv.root, gfn, gfn + 1); it.valid; it.next()) if (it.level === 1) return it.oldSpte;
    throw new Error('no leaf');
  };
  v.write64(vm.addr(7), 5n);
  v.exitGuest();
  let spte = leaf(7);
  assert.ok(!spteAdEnabled(spte) && isWritablePte(spte) && !isAccessTrackSpte(spte), formatSpte(spte));
  assert.equal(spte & (SPTE_ACCESSED_MASK | SPTE_DIRTY_MASK), 0n, 'the processor sets no A/D bits in it');
  // Host aging: young, and now access-tracked (P and W gone, MMU-writable kept); the page counts as dirty.
  assert.equal(k.host.clearYoung(7), true);
  spte = leaf(7);
  assert.ok(isAccessTrackSpte(spte) && !isWritablePte(spte) && isMmuWritableSpte(spte), formatSpte(spte));
  assert.equal(k.host.clearYoung(7), false, 'not young again until accessed');
  // Aging does not flush (x86): once the TLB entry is gone, a read faults (not present to the processor) and the
  // fast path restores P, not W.
  v.flushTlb();
  const fastBefore = v.kv.stat('pfFast');
  v.enterGuest();
  assert.equal(v.read64(vm.addr(7)), 5n);
  v.exitGuest();
  spte = leaf(7);
  assert.ok(!isAccessTrackSpte(spte) && !isWritablePte(spte), formatSpte(spte));
  assert.equal(v.kv.stat('pfFast'), fastBefore + 1);
  // A write then takes the fast path again and sets W from MMU-writable.
  v.enterGuest();
  v.write64(vm.addr(7), 6n);
  v.exitGuest();
  assert.ok(isWritablePte(leaf(7)));
  assert.equal(v.kv.stat('pfFast'), fastBefore + 2);
  assert.equal(k.host.readUser64(7, 0), 6n);
});

test('A/D bits off is refused outside tdp mode', () => {
  assert.throws(() => makeVm({ mode: 'direct', adBits: false }), /tdp mode only/);
});

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-tdp-'));
function file(name: string, text: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, text);
  return f;
}

test('tdp: two vCPUs faulting in parallel under the read lock (both building the same tables, one losing its cmpxchg) is exhaustive and clean', () => {
  const f = file(
    'parallel.ts',
    `import { defineScenario } from 'kvmmu/scenario';
export const s = defineScenario({
  name: 'tdp-parallel-faults', description: 'two vCPUs fault on pages of one leaf table that does not exist yet', modes: ['tdp'],
  machine: () => ({ vcpus: 2, memBytes: 24 * 4096, hostFrames: 40, spPages: 24, tlbEntries: 4 }),
  setup(vm) { vm.powerOn(16); },
  threads: {
    'vCPU 0': (vm) => { vm.program(0, [{ op: 'write', gva: vm.addr(3), value: 1n }]); },
    'vCPU 1': (vm) => { vm.program(1, [{ op: 'write', gva: vm.addr(5), value: 2n }]); },
  },
  check: (vm) => (vm.host.readUser64(3, 0) === 1n && vm.host.readUser64(5, 0) === 2n ? null : 'a write was lost'),
});
`,
  );
  const r = runCheck(gen, loadScenarioFile(f), {});
  assert.equal(r.violation, null);
  assert.equal(r.complete, true);
  assert.ok(r.executions > 100, `${r.executions} executions`);
});

for (const [scenario, guard, invariant] of [
  ['dirty-bit-loss', 'atomic-volatile-clear', 'frame-dirty-before-drop'],
  ['notifier-race', 'notifier-retry', 'spte-within-host-mapping'],
  ['free-during-walk', 'lockless-walk-sync', 'no-freed-page-walk'],
  ['tdp-rcu-free', 'rcu-deferred-free', 'no-freed-page-walk'],
  ['tdp-zap-vs-fault', 'write-lock-exclusion', 'spte-within-host-mapping'],
] as const) {
  test(`tdp: ${scenario} is exhaustive and clean with every guard on, and with ${guard} off breaks ${invariant}`, () => {
    const spec = findScenario(loadCatalog(), scenario);
    const on = runCheck(gen, spec, { mode: 'tdp' });
    assert.equal(on.violation, null);
    assert.equal(on.complete, true);
    // Searched for by name: the first violation DPOR meets may be another symptom of the same race (tdp-rcu-free's
    // frozen-entry-owned), which the minimizer no longer trades for this one (issue 17).
    const off = runCheck(gen, spec, { mode: 'tdp', guards: ALL_GUARDS & ~GUARDS[guard as GuardName], invariant });
    assert.equal(off.violation?.invariant, invariant);
  });
}

test('tdp: a table unlinked without going through RCU is reported as leaked', () => {
  const f = file(
    'leak.ts',
    `import { defineScenario } from 'kvmmu/scenario';
export const s = defineScenario({
  name: 'tdp-leak', description: 'a thread unlinks the top-level table by hand', modes: ['tdp'],
  machine: () => ({ vcpus: 1, memBytes: 24 * 4096, hostFrames: 40, spPages: 24, tlbEntries: 4 }),
  setup(vm) { vm.powerOn(16); vm.program(0, [{ op: 'read', gva: vm.addr(3) }]); },
  threads: {
    host: (vm) => { const k = vm.kvm; k.mem.writeLock(k.mmuLock); k.mem.store64(k.pages.sptep(0, 0), 0n); k.mem.writeUnlock(k.mmuLock); },
  },
});
`,
  );
  const r = runCheck(gen, loadScenarioFile(f), {});
  assert.equal(r.violation?.invariant, 'no-leaked-table');
  assert.match(r.violation!.message, /page table \d+ \(level 3, gfn 0x0\) is in use but neither reachable from a root nor waiting on RCU/);
});

test('tdp: a thread that changes an entry another thread froze is reported', () => {
  const f = file(
    'frozen.ts',
    `import { defineScenario } from 'kvmmu/scenario';
const FROZEN = 0x5a0n;
export const s = defineScenario({
  name: 'tdp-frozen', description: 'one thread freezes a leaf, another overwrites it', modes: ['tdp'],
  machine: () => ({ vcpus: 1, memBytes: 24 * 4096, hostFrames: 40, spPages: 24, tlbEntries: 4 }),
  setup(vm) { vm.powerOn(16); vm.program(0, [{ op: 'read', gva: vm.addr(3) }]); },
  threads: {
    A: (vm) => { const k = vm.kvm; k.mem.store64(k.pages.sptep(3, 3), FROZEN); },
    B: (vm) => { const k = vm.kvm; if (k.mem.load64(k.pages.sptep(3, 3)) === FROZEN) k.mem.store64(k.pages.sptep(3, 3), 0n); },
  },
});
`,
  );
  const r = runCheck(gen, loadScenarioFile(f), {});
  assert.equal(r.violation?.invariant, 'frozen-entry-owned');
  assert.match(r.violation!.message, /thread 'B' changed SPTE \(sp 3, #3\) to 0 while thread 'A' had it frozen/);
});

test('tdp: kvmmu run on real threads with migration, swap and KSM loses nothing', () => {
  const cli = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
  const r = spawnSync(process.execPath, [cli, 'run', '--mode', 'tdp', '--vcpus', '2', '--mem', '16M', '--seconds', '3', '--migrate', '--swap', '--ksm', '--json'], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(r.status, 0, r.stderr + r.stdout);
  const j = JSON.parse(r.stdout) as { ok: boolean; mode: string; faults: { pfSlow: number } };
  assert.equal(j.ok, true);
  assert.equal(j.mode, 'tdp');
  assert.ok(j.faults.pfSlow > 0);
});
