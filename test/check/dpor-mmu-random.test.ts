// DPOR against exhaustive DFS on random small programs over the MMU (write-protections with the flush in several places, remote flushes, guest entries and writes, dirty-log hand-overs), with the built-in monitors reading vCPUs that are not threads: the same verdict.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { contextFor } from '../../src/check/check';
import { Engine } from '../../src/check/engine';
import { explore, REDUCTIONS, type Reduction } from '../../src/check/explore';
import { builtinMonitors } from '../../src/check/invariants';
import { ALL_GUARDS, GUARDS, type MmuMode } from '../../src/kvm/config';
import { loadGenModule, loadScenarioFile } from '../../src/cli/scenario-file';
import { rng } from '../helpers/rng';

/** One block of a random MMU program: what it does (k), on gfn PAGES[g], in variant o. */
interface Blk {
  k: 'wp' | 'wplog' | 'flush' | 'report' | 'enter' | 'write';
  g: number;
  o: number;
}

/**
 * The scenario interprets the program setup finds on globalThis. vCPU 0 is no
 * thread: in setup it writes both pages, so its TLB holds them writable for
 * good, and only the monitors look at it. Thread B drives vCPU 1; A and C are
 * host-side threads.
 */
const INTERP = `import { defineScenario, NOTE, type ScenarioVm } from 'kvmmu/scenario';
interface Blk { k: string; g: number; o: number }
const PAGES = [3, 5];
function one(vm: ScenarioVm, b: Blk): void {
  const k = vm.kvm;
  const gfn = PAGES[b.g]!;
  const hv = k.gfnToHvpn(gfn);
  switch (b.k) {
    case 'wp': {
      // Write-protect for shadow paging, then the mark; the flush goes before the unlock (0), after it (1), or after the mark (2, wrong).
      k.mem.lock(k.mmuLock);
      const f = k.spte.rmapWriteProtectHvpn(hv, true);
      if (b.o === 0 && f) k.kvmFlushRemoteTlbs();
      k.mem.unlock(k.mmuLock);
      if (b.o === 1 && f) k.kvmFlushRemoteTlbs();
      k.spte.noteWriteProtected(gfn);
      if (b.o === 2 && f) k.kvmFlushRemoteTlbs();
      return;
    }
    case 'wplog': {
      // Write-protect for dirty logging, flush before or after the unlock (or not at all: 2), then hand the gfn over.
      k.mem.lock(k.mmuLock);
      const f = k.spte.rmapWriteProtectHvpn(hv, false);
      if (b.o === 0 && f) k.kvmFlushRemoteTlbs();
      k.mem.unlock(k.mmuLock);
      if (b.o === 1 && f) k.kvmFlushRemoteTlbs();
      k.dirtyLog.handOver(0, 0, new Int32Array([1 << gfn]));
      return;
    }
    case 'flush': k.kvmFlushRemoteTlbs(); return;
    case 'report': k.mem.note(NOTE.dirtyLogTaken, gfn, 0); return;
    case 'enter': { const c = vm.vcpu(1); c.enterGuest(); c.exitGuest(); return; }
    case 'write': vm.program(1, [{ op: 'write', gva: vm.addr(gfn), value: BigInt(b.o + 1) }]); return;
  }
  throw new Error('unknown block ' + b.k);
}
function run(vm: ScenarioVm, blocks: Blk[]): void {
  for (const b of blocks) one(vm, b);
}
export const s = defineScenario({
  name: 'mmu-program', description: 'interprets a random MMU program', modes: ['direct', 'shadow'],
  machine: () => ({ vcpus: 2, memBytes: 24 * 4096, hostFrames: 40, spPages: 24, tlbEntries: 4 }),
  setup(vm) {
    const p = (globalThis as { __kvmmuMmuProgram?: Blk[][] }).__kvmmuMmuProgram!;
    vm.powerOn(16);
    vm.kvm.dirtyLog.enable(0);
    vm.program(0, [{ op: 'write', gva: vm.addr(3), value: 9n }, { op: 'write', gva: vm.addr(5), value: 9n }]);
    vm.program(1, [{ op: 'write', gva: vm.addr(3), value: 9n }]);
    return { p };
  },
  threads: { A: (vm, d) => run(vm, d.p[0]!), B: (vm, d) => run(vm, d.p[1]!), C: (vm, d) => run(vm, d.p[2]!) },
});
`;

/** Steps each block takes when it runs alone, about: programs stay within a budget DFS can exhaust. */
const COST: Record<Blk['k'], number> = { wp: 9, wplog: 9, flush: 4, report: 1, enter: 3, write: 9 };
const HOST: Blk['k'][] = ['wp', 'wplog', 'flush', 'report'];
const VCPU: Blk['k'][] = ['enter', 'write'];

function randomProgram(r: (n: number) => number): Blk[][] {
  const threads: Blk[][] = [[], [], []];
  let budget = 16;
  const n = 2 + r(2);
  for (let t = 0; t < n; t++) {
    const pool = t === 1 ? VCPU : HOST;
    for (let i = 1 + r(2); i > 0; i--) {
      const k = pool[r(pool.length)]!;
      const g = r(2);
      const o = r(3);
      if (COST[k] > budget) continue;
      budget -= COST[k];
      threads[t]!.push({ k, g, o });
    }
  }
  return threads;
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-dpor-mmu-'));
const file = path.join(dir, 'mmu-program.ts');
fs.writeFileSync(file, INTERP);
const gen = loadGenModule();
const spec = loadScenarioFile(file);

/** The invariants violated over an exhaustive exploration (each execution stops at its first), or null if it ran out of budget. */
function verdicts(program: Blk[][], strategy: 'dfs' | 'dpor', mode: MmuMode, off: string[], reduction?: Reduction): Set<string> | null {
  (globalThis as { __kvmmuMmuProgram?: Blk[][] }).__kvmmuMmuProgram = program;
  const engine = new Engine(gen, spec, contextFor(spec, { mode, guards: off.length === 0 ? ALL_GUARDS : ALL_GUARDS & ~GUARDS['flush-mmu-writable'] }), { monitorsFor: builtinMonitors });
  const found = new Set<string>();
  const execute = engine.execute.bind(engine);
  engine.execute = (chooser) => {
    const r = execute(chooser);
    if (r.violation !== null) found.add(r.violation.invariant);
    return r;
  };
  const res = explore(engine, { strategy, reduction, continueAfterViolation: true, maxExecutions: 20_000 });
  return res.complete ? found : null;
}

test('DPOR (Source and Optimal) reaches a violation exactly when exhaustive DFS does, on 120 random MMU programs whose monitors read a vCPU that is no thread', () => {
  let compared = 0;
  let violating = 0;
  for (let seed = 1; seed <= 120; seed++) {
    const r = rng(seed * 104729);
    const program = randomProgram(r);
    const mode: MmuMode = r(2) === 0 ? 'direct' : 'shadow';
    const off = r(2) === 0 ? [] : ['flush-mmu-writable'];
    const dfs = verdicts(program, 'dfs', mode, off);
    if (dfs === null) continue; // too large for plain DFS within the budget
    compared++;
    if (dfs.size > 0) violating++;
    for (const reduction of REDUCTIONS) {
      const dpor = verdicts(program, 'dpor', mode, off, reduction);
      assert.ok(dpor !== null, `seed ${seed}: ${reduction} DPOR did not finish`);
      const where: string = `${reduction} DPOR, seed ${seed} (${mode}, ${off.join(',') || 'all guards on'}): ${JSON.stringify(program)}`;
      assert.equal(dpor.size > 0, dfs.size > 0, `${where}: DFS found ${[...dfs].join(', ') || 'nothing'}, DPOR ${[...dpor].join(', ') || 'nothing'}`);
      for (const v of dpor) assert.ok(dfs.has(v), `${where}: DPOR found ${v}, which DFS never reached`);
    }
  }
  // Not vacuous: most programs are compared, and a good share of them violate an invariant.
  assert.ok(compared >= 85, `only ${compared} programs were small enough`);
  assert.ok(violating >= 10, `only ${violating} programs violate an invariant`);
});
