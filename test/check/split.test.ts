// The split search (parallel DPOR's jobs, check/split.ts) against the sequential search: the same final states on random programs, the same verdicts on the built-in scenarios, and kvmmu check --workers 2 end to end.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { contextFor } from '../../src/check/check';
import { Engine } from '../../src/check/engine';
import { explore } from '../../src/check/explore';
import { exploreSplitInline } from '../../src/check/split';
import { builtinMonitors } from '../../src/check/invariants';
import { loadGenModule, loadScenarioFile } from '../../src/cli/scenario-file';
import type { ScenarioSpec } from '../../src/check/gen/scenario';
import { ALL_GUARDS, GUARDS } from '../../src/kvm/config';
import { rng } from '../helpers/rng';

/** One operation of a random program: kind, location, values; `then` runs only when this one returned `when`. */
interface Op {
  k: string;
  l: number;
  v: number;
  w: number;
  then?: Op;
  when?: number;
}

/**
 * The scenario interprets the program setup finds on globalThis. Locations:
 * i32 words at bytes 0, 4, 8; i64 words at 16, 24; a lock at 32 (16 bytes); a reader-writer lock at 48;
 * 16 data bytes at 0 and 4088 (the second across a page boundary); each
 * thread's hash of what its operations returned goes to globalThis. Widths stay fixed per location.
 */
const INTERP = `import { defineScenario, type ScenarioVm } from 'kvmmu/scenario';
interface Op { k: string; l: number; v: number; w: number; then?: Op; when?: number }
const b64 = (x: number): bigint => BigInt(x) * 0x0101010101010101n;
function one(vm: ScenarioVm, op: Op): number {
  const w32 = vm.word(op.l * 4);
  const w64 = vm.word(16 + op.l * 8) / 2;
  const lk = vm.word(32);
  const d = vm.machine.shm.layout.regions['scenario.data']!.off + (op.l === 0 ? 0 : 4088);
  switch (op.k) {
    case 'load32': return vm.mem.load32(w32);
    case 'store32': vm.mem.store32(w32, op.v); return 0;
    case 'storeRelease32': vm.mem.storeRelease32(w32, op.v); return 0;
    case 'cmpxchg32': return vm.mem.cmpxchg32(w32, op.w, op.v);
    case 'xchg32': return vm.mem.xchg32(w32, op.v);
    case 'fetchAdd32': return vm.mem.fetchAdd32(w32, op.v);
    case 'fetchOr32': return vm.mem.fetchOr32(w32, op.v);
    case 'fetchAnd32': return vm.mem.fetchAnd32(w32, ~op.v);
    case 'or32': vm.mem.or32(w32, op.v); return 0;
    case 'waitWhile32': return vm.mem.waitWhile32(w32, op.w);
    case 'load64': return Number(vm.mem.load64(w64) & 0xffn);
    case 'store64': vm.mem.store64(w64, b64(op.v)); return 0;
    case 'cmpxchg64': return Number(vm.mem.cmpxchg64(w64, b64(op.w), b64(op.v)) & 0xffn);
    case 'xchg64': return Number(vm.mem.xchg64(w64, b64(op.v)) & 0xffn);
    case 'lock': vm.mem.lock(lk); return 0;
    case 'unlock': vm.mem.unlock(lk); return 0;
    case 'readLock': vm.mem.readLock(vm.word(48)); return 0;
    case 'readUnlock': vm.mem.readUnlock(vm.word(48)); return 0;
    case 'writeLock': vm.mem.writeLock(vm.word(48)); return 0;
    case 'writeUnlock': vm.mem.writeUnlock(vm.word(48)); return 0;
    case 'loadData64': return Number(vm.mem.loadData64((d + 8 * (op.w & 1)) / 8) & 0xffn);
    case 'storeData64': vm.mem.storeData64((d + 8 * (op.w & 1)) / 8, b64(op.v)); return 0;
    case 'cmpxchgData64': return Number(vm.mem.cmpxchgData64((d + 8 * (op.w & 1)) / 8, 0n, b64(op.v)) & 0xffn);
    case 'copyData': vm.mem.copyData(d + (op.w & 1) * 8, d + 4 - (op.w & 1) * 4, 8); return 0;
    case 'writeData': vm.mem.writeData(d + 4 * (op.w % 3), new Uint8Array(4).fill(op.v), 0, 4); return 0;
    case 'compareData': return vm.mem.compareData(d, d + 8, 8) ? 1 : 0;
  }
  throw new Error('unknown op ' + op.k);
}
function run(vm: ScenarioVm, ops: Op[], t: number): void {
  let h = 7;
  for (const op of ops) {
    const r = one(vm, op);
    h = (h * 31 + r) | 0;
    if (op.then !== undefined && r === op.when) h = (h * 37 + one(vm, op.then) + 1) | 0;
  }
  // Kept outside shared memory (a step fewer per thread); no thread reads it.
  (globalThis as { __kvmmuSeen?: number[] }).__kvmmuSeen![t] = h;
}
export const s = defineScenario({
  name: 'random-program', description: 'interprets a random program', memory: { metaBytes: 64, dataBytes: 8192 },
  setup(vm) {
    const p = (globalThis as { __kvmmuProgram?: Op[][] }).__kvmmuProgram!;
    vm.mem.store32(vm.word(0), 1);
    return { p };
  },
  threads: { A: (vm, d) => run(vm, d.p[0]!, 0), B: (vm, d) => run(vm, d.p[1]!, 1), C: (vm, d) => run(vm, d.p[2]!, 2) },
});
`;

const KINDS32 = ['load32', 'store32', 'storeRelease32', 'cmpxchg32', 'xchg32', 'fetchAdd32', 'fetchOr32', 'fetchAnd32', 'or32', 'waitWhile32'];
const KINDS64 = ['load64', 'store64', 'cmpxchg64', 'xchg64'];
const KINDS_DATA = ['loadData64', 'storeData64', 'cmpxchgData64', 'copyData', 'writeData', 'compareData'];

/** Two or three threads of one to four operations (a lock section's included), on a few locations. */
function randomProgram(r: (n: number) => number): Op[][] {
  const pools = [KINDS32, KINDS64, KINDS_DATA].filter(() => r(3) > 0);
  if (pools.length === 0) pools.push(KINDS32);
  const lockUsed = r(2) === 0;
  const simple = (): Op => {
    const kinds = pools[r(pools.length)]!;
    const k = kinds[r(kinds.length)]!;
    const op: Op = { k, l: r(k.endsWith('64') && !k.includes('Data') ? 2 : k.includes('Data') ? 2 : 3), v: 1 + r(3), w: r(3) };
    if (r(6) === 0) {
      op.then = { k: KINDS32[r(KINDS32.length)]!, l: r(3), v: 1 + r(3), w: r(3) };
      op.when = r(3);
    }
    return op;
  };
  const threads: Op[][] = [];
  const n = 2 + r(2);
  for (let t = 0; t < 3; t++) {
    const ops: Op[] = [];
    if (t < n) {
      const len = 1 + r(n === 3 ? 3 : 4);
      while (ops.length < len) {
        const room = len - ops.length;
        if (lockUsed && room >= 2 && r(3) === 0) {
          // A section of the ticket lock, or of the reader-writer lock for reading or writing.
          const kind = r(3);
          const [take, release] = kind === 0 ? ['lock', 'unlock'] : kind === 1 ? ['readLock', 'readUnlock'] : ['writeLock', 'writeUnlock'];
          ops.push({ k: take!, l: 0, v: 0, w: 0 });
          for (let i = r(room - 1); i > 0; i--) ops.push(simple());
          if (r(5) > 0) ops.push({ k: release!, l: 0, v: 0, w: 0 }); // sometimes never released
        } else ops.push(simple());
      }
    }
    threads.push(ops);
  }
  return threads;
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-split-random-'));
const file = path.join(dir, 'random-program.ts');
fs.writeFileSync(file, INTERP);
const gen = loadGenModule();
const spec = loadScenarioFile(file);


type Run = 'dfs' | 'source' | 'split';

/** Every final state an exhaustive exploration reaches; `split` runs the split search, a job giving work away at every chance. */
function finalStates(program: Op[][], how: Run, seed = 1): Set<string> {
  (globalThis as { __kvmmuProgram?: Op[][] }).__kvmmuProgram = program;
  const engine = new Engine(gen, spec, contextFor(spec, {}), { monitorsFor: builtinMonitors });
  const { meta, data, layout } = engine.machine.shm;
  const words = new Uint8Array(meta, layout.regions['scenario.words']!.off, 64);
  const d = layout.regions['scenario.data']!.off;
  const bytes = [new Uint8Array(data, d, 16), new Uint8Array(data, d + 4088, 16)];
  const states = new Set<string>();
  const execute = engine.execute.bind(engine);
  const seen = ((globalThis as { __kvmmuSeen?: number[] }).__kvmmuSeen = [0, 0, 0]);
  engine.execute = (chooser) => {
    seen.fill(0);
    const r = execute(chooser);
    if (!r.abandoned) states.add([r.violation?.invariant ?? 'ok', seen.join(','), Buffer.from(words).toString('hex'), ...bytes.map((b) => Buffer.from(b).toString('hex'))].join('|'));
    return r;
  };
  if (how === 'split') {
    const r = rng(seed);
    const res = exploreSplitInline(engine, { strategy: 'dpor', continueAfterViolation: true, split: () => r(3) > 0, pick: (n) => r(n) });
    assert.ok(res.complete, `split did not finish: ${JSON.stringify(program)}`);
  } else {
    const res = explore(engine, { strategy: how === 'dfs' ? 'dfs' : 'dpor', reduction: 'source', continueAfterViolation: true, maxExecutions: 200_000 });
    assert.ok(res.complete, `${how} did not finish: ${res.executions} executions, ${JSON.stringify(program)}`);
  }
  return states;
}

test('the split search (jobs taken in random order, work given away at random) reaches every final state exhaustive DFS reaches, on 200 random programs', () => {
  for (let seed = 1; seed <= 200; seed++) {
    const program = randomProgram(rng(seed * 7919));
    const dfs = finalStates(program, 'dfs');
    const split = finalStates(program, 'split', seed);
    const missing = [...dfs].filter((s) => !split.has(s));
    const extra = [...split].filter((s) => !dfs.has(s));
    assert.deepEqual({ missing, extra }, { missing: [], extra: [] }, `seed ${seed}: ${JSON.stringify(program)}`);
  }
});

// eslint-disable-next-line @typescript-eslint/no-require-imports
const catalog = require('../../gen/src/check/gen/scenarios/index.js') as { BUILTIN_SCENARIOS: ScenarioSpec[]; EXAMPLE_SCENARIOS: ScenarioSpec[] };

test('the split search gives every built-in scenario the verdict of the sequential search, its guard on and off', () => {
  for (const s of catalog.BUILTIN_SCENARIOS) {
    for (const guardOn of [true, false]) {
      const guardBit = s.guard !== undefined ? GUARDS[s.guard] : 0;
      const ctx = contextFor(s, { guards: guardOn ? ALL_GUARDS : ALL_GUARDS & ~guardBit });
      const seq = explore(new Engine(gen, s, ctx, { monitorsFor: builtinMonitors }), { strategy: 'dpor', reduction: 'source', preemptions: s.preemptions, maxExecutions: 3_000 });
      // Clean searches larger than that are left to the CLI test and bench/check.js (time).
      if (!seq.complete && seq.violation === null) continue;
      const r = rng(17);
      const split = exploreSplitInline(new Engine(gen, s, ctx, { monitorsFor: builtinMonitors }), { strategy: 'dpor', preemptions: s.preemptions, split: () => r(4) === 0, pick: (n) => r(n) });
      assert.equal(split.violation !== null, seq.violation !== null, `${s.name} guard ${guardOn ? 'on' : 'off'}`);
      if (seq.complete || seq.boundReached) assert.equal(split.complete, seq.complete, `${s.name} guard ${guardOn ? 'on' : 'off'}: exhaustive`);
      if (seq.violation !== null) assert.equal(split.violation!.violation.invariant, seq.violation.violation.invariant, `${s.name}: the invariant broken`);
    }
  }
});

const CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');
function check(args: string[]): Record<string, unknown> {
  const r = spawnSync(process.execPath, [CLI, 'check', ...args, '--json'], { encoding: 'utf8' });
  assert.ok(r.status === 0 || r.status === 1, r.stderr);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

test('kvmmu check --workers 2 gives the verdicts of --workers 1, and says how many workers and jobs', () => {
  for (const args of [['--scenario', 'lost-update'], ['--scenario', 'atomic-counter'], ['--scenario', 'dirty-bit-loss', '--guard', 'atomic-volatile-clear=off'], ['--scenario', 'dirty-bit-loss']]) {
    const one = check([...args, '--workers', '1']);
    const two = check([...args, '--workers', '2']);
    assert.equal(two.workers, 2);
    assert.equal(typeof two.jobs, 'number');
    assert.equal(two.reduction, 'source');
    assert.equal(two.complete, one.complete, args.join(' '));
    assert.equal((two.violation as { invariant: string } | null)?.invariant, (one.violation as { invariant: string } | null)?.invariant, args.join(' '));
  }
});

test('kvmmu check refuses --workers 0, and --reduction optimal on more than one worker', () => {
  const zero = spawnSync(process.execPath, [CLI, 'check', '--scenario', 'lost-update', '--workers', '0'], { encoding: 'utf8' });
  assert.notEqual(zero.status, 0);
  assert.match(zero.stderr, /--workers must be from 1/);
  const opt = spawnSync(process.execPath, [CLI, 'check', '--scenario', 'lost-update', '--workers', '2', '--reduction', 'optimal'], { encoding: 'utf8' });
  assert.notEqual(opt.status, 0);
  assert.match(opt.stderr, /--reduction optimal runs on one worker/);
  assert.equal(opt.stdout, '');
});

test('kvmmu check without --workers: a short check stays on one worker; one still running after --split-after splits over the cores, from the start', { skip: os.availableParallelism() < 2 ? 'one core' : false }, () => {
  const short = check(['--scenario', 'dirty-bit-loss']);
  assert.equal(short.workers, 1);
  assert.equal(short.sequentialFirst, null);
  assert.equal(short.reduction, 'optimal');
  // wp-tlb-flush runs for seconds: with --split-after 0.2 it splits, and the split search is exhaustive on its own.
  const long = check(['--scenario', 'wp-tlb-flush', '--split-after', '0.2']);
  assert.equal(long.workers, os.availableParallelism());
  assert.equal(long.reduction, 'source');
  const first = long.sequentialFirst as { executions: number; seconds: number; reduction: string };
  assert.equal(first.reduction, 'optimal');
  assert.ok(first.executions > 0 && first.seconds >= 0.2, JSON.stringify(first));
  assert.equal(long.complete, true);
});
