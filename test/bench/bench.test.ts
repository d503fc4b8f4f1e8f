// The benchmarks' output contract: the JSON schema of dirty-log.json and scale.json on tiny real-thread runs, the files --out writes, and usage errors. No timing assertions.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { formatScale } from '../../src/bench/report';
import { resolveScale } from '../../src/bench/options';
import type { ScaleOutcome, ScalePoint } from '../../src/bench/scale';

const CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');
const ENTRY = path.join(__dirname, '..', '..', 'bench');

function kvmmu(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 180_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-bench-'));
}

function isNum(x: unknown): x is number {
  return typeof x === 'number' && Number.isFinite(x);
}

function assertKeys(o: unknown, keys: string[], where: string): asserts o is Record<string, unknown> {
  assert.equal(typeof o, 'object', where);
  assert.notEqual(o, null, where);
  assert.deepEqual(Object.keys(o as object).sort(), [...keys].sort(), where);
}

function assertNums(o: Record<string, unknown>, keys: string[], where: string): void {
  for (const k of keys) assert.ok(isNum(o[k]) && (o[k] as number) >= 0, `${where}.${k} = ${String(o[k])}`);
}

function assertMachine(m: unknown): void {
  assertKeys(m, ['cpus', 'node'], 'machine');
  assert.ok(Number.isInteger(m.cpus) && (m.cpus as number) >= 1);
  assert.match(m.node as string, /^v\d+\./);
}

test('bench dirty-log --fast-path both --clear --page-marking fault --json on a tiny VM prints the documented schema and writes the same JSON and a self-contained chart to --out', () => {
  const out = tmpDir();
  const r = kvmmu('bench', 'dirty-log', '-v', '2', '-b', '256K', '-i', '3', '--fast-path', 'both', '--clear', '--page-marking', 'fault', '--json', '--out', out);
  assert.equal(r.code, 0, r.stderr + r.stdout);
  const j = JSON.parse(r.stdout) as Record<string, unknown>;
  assertKeys(j, ['kind', 'version', 'config', 'phases', 'populateFaults', 'runs', 'ratio', 'floor', 'bookkeeping', 'machine'], 'dirty-log');
  assert.equal(j.kind, 'dirty-log');
  assert.equal(j.version, 2);
  assert.deepEqual(j.config, { vcpus: 2, bytesPerVcpu: 256 * 1024, iterations: 3, mode: 'direct', fastPath: 'both', clearDirtyLog: true, pageMarking: 'fault' });
  assertKeys(j.phases, ['populateSeconds', 'enableSeconds', 'disableSeconds'], 'phases');
  assertNums(j.phases, ['populateSeconds', 'enableSeconds', 'disableSeconds'], 'phases');
  const faultKeys = ['fast', 'slow', 'spurious', 'lockContended'];
  assertKeys(j.populateFaults, faultKeys, 'populateFaults');
  assertNums(j.populateFaults, faultKeys, 'populateFaults');

  const runs = j.runs as unknown[];
  assert.equal(runs.length, 2);
  assert.deepEqual(
    runs.map((x) => (x as { fastPath: boolean }).fastPath),
    [true, false],
  );
  for (const run of runs) {
    assertKeys(run, ['fastPath', 'iterations', 'faults'], 'run');
    const its = run.iterations as unknown[];
    assert.equal(its.length, 3);
    for (const it of its) {
      assertKeys(it, ['dirtySeconds', 'getSeconds', 'clearSeconds'], 'iteration');
      assertNums(it, ['dirtySeconds', 'getSeconds', 'clearSeconds'], 'iteration');
    }
    assertKeys(run.faults, faultKeys, 'faults');
    assertNums(run.faults, faultKeys, 'faults');
    // Only slow faults take mmu_lock; whether two vCPUs met there depends on timing.
    const f = run.faults as Record<string, number>;
    assert.ok(f.lockContended! <= f.slow!, 'contended slow faults are a share of the slow ones');
  }
  // 2 vCPUs x 64 pages on one VM. Populate faults every page in the slow path. With initially-set,
  // the first pass after it (iteration 1, fast path on: odd iterations run that way first) does not
  // fault; every later pass faults every page, in the fast path when it is on.
  const counts = ({ fast, slow, spurious }: Record<string, number>) => ({ fast, slow, spurious });
  assert.deepEqual(counts(j.populateFaults as Record<string, number>), { fast: 0, slow: 128, spurious: 0 });
  const [on, off] = runs as { faults: Record<string, number> }[];
  assert.deepEqual(counts(on!.faults), { fast: 256, slow: 0, spurious: 0 });
  assert.deepEqual(counts(off!.faults), { fast: 0, slow: 384, spurious: 0 });

  assertKeys(j.ratio, ['slowOverFast', 'medianInterval'], 'ratio');
  assertKeys(j.ratio.slowOverFast, ['min', 'median', 'max'], 'ratio.slowOverFast');
  assertNums(j.ratio.slowOverFast, ['min', 'median', 'max'], 'ratio.slowOverFast');
  const s = j.ratio.slowOverFast as Record<string, number>;
  assert.ok(s.min! <= s.median! && s.median! <= s.max!);
  // Two ratios (iterations 2 and 3) are too few for 95%: the interval is their min and max, covering 50%.
  assertKeys(j.ratio.medianInterval, ['low', 'high', 'coverage'], 'ratio.medianInterval');
  assert.deepEqual(j.ratio.medianInterval, { low: s.min, high: s.max, coverage: 0.5 });

  assertKeys(j.floor, ['nsPerOp', 'fastFaultNs', 'multiple', 'handlerNs'], 'floor');
  assertNums(j.floor, ['nsPerOp', 'fastFaultNs', 'multiple'], 'floor');
  const f = j.floor as Record<string, number>;
  assert.ok(Math.abs(f.multiple! - f.fastFaultNs! / f.nsPerOp!) < 1e-9 * f.multiple!);
  assertKeys(j.floor.handlerNs, ['fastPathOn', 'fastPathOff'], 'floor.handlerNs');
  assertNums(j.floor.handlerNs, ['fastPathOn', 'fastPathOff'], 'floor.handlerNs');

  assertKeys(j.bookkeeping, ['bytes', 'guestBytes', 'share', 'byKind'], 'bookkeeping');
  assertNums(j.bookkeeping, ['bytes', 'guestBytes', 'share'], 'bookkeeping');
  const b = j.bookkeeping as { bytes: number; guestBytes: number; share: number; byKind: Record<string, number> };
  assert.equal(b.guestBytes, 2 * 256 * 1024);
  assert.equal(b.bytes, Object.values(b.byKind).reduce((x, y) => x + y, 0));
  assert.ok(Math.abs(b.share - b.bytes / b.guestBytes) < 1e-12);
  assertMachine(j.machine);

  assert.deepEqual(fs.readdirSync(out).sort(), ['dirty-log.html', 'dirty-log.json']);
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(out, 'dirty-log.json'), 'utf8')), j);
  const html = fs.readFileSync(path.join(out, 'dirty-log.html'), 'utf8');
  assert.match(html, /new Chart\(/);
  assert.doesNotMatch(html, /<script[^>]+src=/, 'the chart library is inlined, not loaded');
  assert.match(html, /Iteration 2 dirty memory time/);
  assert.match(html, /the median lies in [\d.]+x-[\d.]+x \(50% order-statistic interval/);
});

test('bench dirty-log without --clear reports null clear times and no ratio when only one way ran', () => {
  const r = kvmmu('bench', 'dirty-log', '-b', '64K', '-i', '2', '--fast-path', 'off', '--json');
  assert.equal(r.code, 0, r.stderr + r.stdout);
  const j = JSON.parse(r.stdout) as { ratio: unknown; runs: { fastPath: boolean; iterations: { clearSeconds: unknown }[]; faults: { fast: number; slow: number } }[] };
  assert.equal(j.ratio, null);
  assert.equal(j.runs.length, 1);
  assert.equal(j.runs[0]!.fastPath, false);
  assert.equal(j.runs[0]!.iterations.length, 2);
  for (const it of j.runs[0]!.iterations) assert.equal(it.clearSeconds, null);
  // 2 vCPUs x 16 pages, both iterations after a write-protecting get: every write a slow fault.
  assert.deepEqual([j.runs[0]!.faults.fast, j.runs[0]!.faults.slow], [0, 64]);
});

test('bench scale --json over 1..2 vCPUs in three trials prints the documented schema and writes scale.json and scale.html', () => {
  const out = tmpDir();
  const r = kvmmu('bench', 'scale', '-v', '2', '-b', '128K', '-i', '2', '-t', '3', '--json', '--out', out);
  assert.equal(r.code, 0, r.stderr + r.stdout);
  const j = JSON.parse(r.stdout) as Record<string, unknown>;
  assertKeys(j, ['kind', 'version', 'config', 'points', 'gain', 'trials', 'machine'], 'scale');
  assert.equal(j.kind, 'scale');
  assert.equal(j.version, 2);
  assert.deepEqual(j.config, { maxVcpus: 2, bytesPerVcpu: 128 * 1024, iterations: 2, mode: 'direct', pageMarking: 'spte', trials: 3 });
  const pointKeys = ['vcpus', 'fastPath', 'pagesPerSecond', 'redirtySeconds', 'slowFaults', 'lockContended'];
  const order = [
    [1, true],
    [1, false],
    [2, true],
    [2, false],
  ];
  // Each point's measured pass (round 2 of 2) re-dirties every page: in the slow path only when the fast path is off.
  const checkPoints = (points: Record<string, unknown>[], trials: number, where: string): void => {
    assert.deepEqual(
      points.map((p) => [p.vcpus, p.fastPath]),
      order,
      where,
    );
    for (const p of points) {
      assertKeys(p, pointKeys, where);
      assertNums(p, pointKeys.slice(2), where);
      // An odd number of trials: the median rate and the median time come from the same trial.
      assert.ok(Math.abs((p.pagesPerSecond as number) * (p.redirtySeconds as number) - (p.vcpus as number) * 32) < 1e-6, where);
      assert.equal(p.slowFaults, p.fastPath ? 0 : trials * (p.vcpus as number) * 32, where);
      assert.ok((p.lockContended as number) <= (p.slowFaults as number), where);
      if (p.vcpus === 1) assert.equal(p.lockContended, 0, 'one vCPU never finds mmu_lock taken (the host is idle during passes)');
    }
  };
  checkPoints(j.points as Record<string, unknown>[], 3, 'points');
  const trials = j.trials as Record<string, unknown>[];
  assert.equal(trials.length, 3);
  for (const [i, t] of trials.entries()) {
    assertKeys(t, ['points'], `trial ${i}`);
    checkPoints(t.points as Record<string, unknown>[], 1, `trial ${i}`);
  }
  // The points are the trials' medians, and the gain summarizes each trial's 2-vCPU rate over its 1-vCPU rate.
  const rate = (t: Record<string, unknown>, k: number) => ((t.points as Record<string, unknown>[])[k]!.pagesPerSecond as number);
  const med3 = (xs: number[]) => [...xs].sort((a, b) => a - b)[1]!;
  for (let k = 0; k < 4; k++) assert.equal((j.points as Record<string, unknown>[])[k]!.pagesPerSecond, med3(trials.map((t) => rate(t, k))));
  assertKeys(j.gain, ['fastPathOn', 'fastPathOff'], 'gain');
  for (const [way, k1, k2] of [['fastPathOn', 0, 2], ['fastPathOff', 1, 3]] as const) {
    const g: Record<string, number> = (j.gain as Record<string, Record<string, number>>)[way]!;
    assertKeys(g, ['min', 'median', 'max'], `gain.${way}`);
    const per = trials.map((t) => rate(t, k2) / rate(t, k1));
    assert.deepEqual(g, { min: Math.min(...per), median: med3(per), max: Math.max(...per) });
  }
  assertMachine(j.machine);
  assert.deepEqual(fs.readdirSync(out).sort(), ['scale.html', 'scale.json']);
  assert.deepEqual(JSON.parse(fs.readFileSync(path.join(out, 'scale.json'), 'utf8')), j);
});

test('the text report prints the selftest phases, fault counts, the floor and the bookkeeping share', () => {
  const r = kvmmu('bench', 'dirty-log', '-b', '64K', '-i', '2', '--fast-path', 'both', '--mode', 'shadow', '--page-marking', 'fault');
  assert.equal(r.code, 0, r.stderr + r.stdout);
  for (const line of [
    /^kvmmu bench dirty-log: shadow mode, .*, fast path on and off: one VM, its vCPUs switch between passes, alternating which goes first, pages marked dirty at fault time \(KVM 6\.13 on\)$/m,
    /^Populate memory time: \d+\.\d+s\nFaults: 0 fast, \d+ slow \(\d+ found mmu_lock taken: \d+\.\d%\), 0 spurious \(all vCPUs, populate\)$/m,
    /^Enabling dirty logging time: /m,
    /^== fast path on ==\nIteration 1 dirty memory time: /m,
    /^== fast path off ==\nIteration 1 dirty memory time: /m,
    /^Iteration 2 dirty memory time: /m,
    /^Iteration 2 get dirty log time: /m,
    // 2 vCPUs x 16 pages, 2 iterations each way, every write after a write-protecting get.
    /^Faults: 64 fast, 0 slow \(0 found mmu_lock taken\), 0 spurious \(all vCPUs, these iterations\)$/m,
    /^Faults: 0 fast, 64 slow \(\d+ found mmu_lock taken: \d+\.\d%\), 0 spurious \(all vCPUs, these iterations\)$/m,
    /^Disabling dirty logging time: /m,
    /fast path off \/ on .*min [\d.]+x, median [\d.]+x, max [\d.]+x/,
    /^floor: .* ns$/m,
    /^fast fault: .*shadow mode.* = [\d.]+x the floor$/m,
    /^fault handler: .*fast path on [\d.]+ ns, off [\d.]+ ns \([\d.]+x\)$/m,
    /^MMU bookkeeping: .* = [\d.]+% of /m,
  ])
    assert.match(r.stdout, line);
});

test('the reports warn when vCPU threads outnumber the CPUs, and only then', () => {
  const cpus = os.availableParallelism();
  const over = kvmmu('bench', 'dirty-log', '-v', String(cpus + 1), '-b', '64K', '-i', '2');
  assert.equal(over.code, 0, over.stderr + over.stdout);
  assert.match(over.stdout, new RegExp(`^warning: ${cpus + 1} vCPU threads on ${cpus} CPUs take turns on the cores`, 'm'));
  const fits = kvmmu('bench', 'dirty-log', '-v', '1', '-b', '64K', '-i', '2');
  assert.equal(fits.code, 0, fits.stderr + fits.stdout);
  assert.doesNotMatch(fits.stdout, /^warning:/m);
  // The scale report from made-up points (a sweep past the CPUs would start 2 VMs per point).
  const point = (vcpus: number, fastPath: boolean): ScalePoint => ({ vcpus, fastPath, pagesPerSecond: 1e6 * vcpus, redirtySeconds: 0.01, slowFaults: 0, lockContended: 0 });
  const outcome = (maxVcpus: number): ScaleOutcome => {
    const points = Array.from({ length: maxVcpus }, (_, i) => [point(i + 1, true), point(i + 1, false)]).flat();
    const one = { min: maxVcpus, median: maxVcpus, max: maxVcpus };
    return {
      result: {
        kind: 'scale',
        version: 2,
        config: { maxVcpus, bytesPerVcpu: 65536, mode: 'direct', pageMarking: 'spte', trials: 1 },
        points,
        gain: { fastPathOn: one, fastPathOff: one },
        trials: [{ points }],
        machine: { cpus: 2, node: 'v20.0.0' },
      },
      iterations: 2,
      pagesPerVcpu: 16,
      parallelism: 2,
      wallSeconds: 1,
    };
  };
  assert.match(formatScale(outcome(3)), /^warning: points above 2 vCPUs run more vCPU threads than CPUs/m);
  assert.doesNotMatch(formatScale(outcome(2)), /^warning:/m);
  // Both ways scale alike in these points: a tie is not a gain.
  assert.match(formatScale(outcome(2)), /^the fast path's throughput grew more than the slow path's in 0 of 1 trials$/m);
});

for (const [args, pattern] of [
  [['-i', '1'], /-i must be from 2/],
  [['-b', '0'], /-b must be a multiple of 4 KiB and at least 64 KiB/],
  [['-v', '0'], /-v must be from 1/],
  [['-v', 'two'], /-v must be an integer/],
  [['--mode', 'nested'], /Allowed choices are direct, shadow/],
  [['--fast-path', 'maybe'], /Allowed choices are on, off, both/],
  [['--page-marking', 'sometimes'], /Allowed choices are spte, fault/],
  [['-v', '2', '-b', '3G'], /does not fit/],
] as const) {
  test(`'kvmmu bench dirty-log ${args.join(' ')}' is a usage error: exit 2, one error line, nothing written`, () => {
    const out = path.join(tmpDir(), 'out');
    const r = kvmmu('bench', 'dirty-log', ...args, '--out', out);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, pattern);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr.split('\n').filter((l) => /^(kvmmu: |error: )/.test(l)).length, 1, r.stderr);
    assert.equal(fs.existsSync(out), false);
  });
}

test('bench --out that cannot hold results fails before the benchmark runs, with one error line and exit 2', () => {
  const dir = tmpDir();
  const file = path.join(dir, 'results');
  fs.writeFileSync(file, 'not a directory\n');
  for (const [kind, out] of [
    ['dirty-log', file],
    ['scale', path.join(file, 'sub')],
  ] as const) {
    const r = kvmmu('bench', kind, '-b', '64K', '-i', '2', '--out', out);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stderr, `kvmmu: --out ${out}: ${file} is not a directory\n`);
    assert.equal(r.stdout, '', 'nothing measured');
  }
  assert.equal(fs.readFileSync(file, 'utf8'), 'not a directory\n');
  assert.deepEqual(fs.readdirSync(dir), ['results']);
});

for (const [args, pattern] of [
  [['-i', '1'], /-i must be from 2/],
  [['-t', '0'], /-t must be from 1/],
] as const) {
  test(`'kvmmu bench scale ${args.join(' ')}' is a usage error too`, () => {
    const r = kvmmu('bench', 'scale', ...args);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, pattern);
    assert.equal(r.stdout, '');
  });
}

test('node dist/bench/dirty-log.js is the CLI command', () => {
  const r = spawnSync(process.execPath, [path.join(ENTRY, 'dirty-log.js'), '-b', '64K', '-i', '2', '--json'], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.equal((JSON.parse(r.stdout) as { kind: string }).kind, 'dirty-log');
  const e = spawnSync(process.execPath, [path.join(ENTRY, 'scale.js'), '-i', '1'], { encoding: 'utf8' });
  assert.equal(e.status, 2);
});

test('bench scale refuses sizes whose VMs cannot all be held at once (a VM per vCPU count and way), before starting any', () => {
  const GiB = 2 ** 30;
  // -v 3 -b 1G holds 3 * 4 * 1 GiB = 12 GiB at once: too much for 8 GiB, fine for 64 GiB.
  assert.throws(() => resolveScale({ maxVcpus: 3, bytesPerVcpu: GiB }, 8 * GiB), /holds 12 GiB of guest memory at once .* this machine has 8 GiB/);
  assert.equal(resolveScale({ maxVcpus: 3, bytesPerVcpu: GiB }, 64 * GiB).maxVcpus, 3);
});

test('bench/check.js refuses a --dfs-seconds that is not a number of seconds (it would never stop), an unknown option, and answers --help without running', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bench', 'check.js'), ...args], { encoding: 'utf8', timeout: 60_000 });
  for (const [args, pattern] of [
    [['--dfs-seconds', '1s'], /--dfs-seconds takes a number of seconds above 0, not '1s'/],
    [['--dfs-seconds=0x10'], /--dfs-seconds takes a number of seconds above 0, not '0x10'/],
    [['--dfs-seconds'], /'--dfs-seconds <value>' argument missing/],
    [['--dfs-secnods', '5'], /Unknown option '--dfs-secnods'/],
  ] as const) {
    const r = run(...args);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, pattern);
    assert.equal(r.stdout, '');
  }
  const help = run('--help');
  assert.equal(help.status, 0, help.stderr);
  assert.match(help.stdout, /^usage: node dist\/bench\/check\.js/);
});

test('bench/check.js --workers times a search shorter than --min-seconds over repeated runs, and refuses a --min-seconds that is not a number', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bench', 'check.js'), ...args], { encoding: 'utf8', timeout: 120_000 });
  const bad = run('--workers', '1,2', '--min-seconds', 'soon');
  assert.equal(bad.status, 2, bad.stderr);
  assert.match(bad.stderr, /--min-seconds a number of seconds/);
  assert.equal(bad.stdout, '');
  const badRepeat = run('--workers', '1,2', '--repeat', '0');
  assert.equal(badRepeat.status, 2, badRepeat.stderr);
  assert.match(badRepeat.stderr, /--repeat takes a whole number of runs/);
  assert.equal(badRepeat.stdout, '');
  const r = run('--workers', '1,2', '--only', 'zap-yield-flush,invalid-slot-fault', '--seconds', '5', '--min-seconds', '0.2', '--repeat', '3', '--json');
  assert.equal(r.status, 0, r.stderr);
  type Cell = { workers: number; executions: number; seconds: number; runs: number; complete: boolean };
  const out = JSON.parse(r.stdout) as {
    rows: { scenario: string; cells: Cell[]; ratios: number[]; independent: number | null }[];
    togetherRatios: number[];
    allBuiltins: { workers: number; scenarios: number; executions: number; seconds: number }[];
    together: { workers: number; scenarios: number; executions: number; seconds: number; perSecond: number; runs: number }[];
  };
  const row = out.rows.find((x) => x.scenario === 'zap-yield-flush')!;
  for (const c of row.cells) {
    // Six executions a search, a few milliseconds: run again and again until 0.2 s, every run whole.
    assert.ok(c.runs > 1, `${c.workers} worker(s): ${c.runs} run(s)`);
    assert.equal(c.executions, 6 * c.runs);
    assert.ok(c.seconds >= 0.2 && c.complete);
  }
  // A process's single search of milliseconds is not timed as the machine's ceiling.
  assert.equal(row.independent, null);
  // --repeat 3: three runs' ratios, and the row's cells are those of the run of median ratio.
  for (const x of out.rows) {
    assert.equal(x.ratios.length, 3, x.scenario);
    const shown = x.cells[1]!.executions / x.cells[1]!.seconds / (x.cells[0]!.executions / x.cells[0]!.seconds);
    assert.equal([...x.ratios].sort((a, b) => a - b)[1], x.ratios.find((q) => Math.abs(q - shown) < 1e-9 * q), x.scenario);
  }
  assert.equal(out.togetherRatios.length, 3);
  // The built-ins once each, as check --all runs them: 6 + 9 executions (one search of each on 2 workers), each at
  // the column's rate for its scenario.
  const slot = out.rows.find((x) => x.scenario === 'invalid-slot-fault')!;
  for (const a of out.allBuiltins) {
    assert.equal(a.scenarios, 2);
    assert.equal(a.executions, 15);
    const at = (r: typeof row, n: number): number => {
      const c = r.cells.find((x) => x.workers === n)!;
      return c.seconds / c.executions;
    };
    const expected = 6 * at(row, a.workers) + 9 * at(slot, a.workers);
    assert.ok(Math.abs(a.seconds - expected) < 1e-9 * expected, `${a.seconds} against ${expected}`);
  }
  // The two measured together, in each column: every run both whole (6 + 9 executions), repeated to 0.2 s.
  assert.deepEqual(
    out.together.map((t) => [t.workers, t.scenarios]),
    [
      [1, 2],
      [2, 2],
    ],
  );
  for (const t of out.together) {
    assert.ok(t.runs > 1 && t.seconds >= 0.2, JSON.stringify(t));
    assert.equal(t.executions, 15 * t.runs);
    assert.ok(Math.abs(t.perSecond - t.executions / t.seconds) < 1e-6 * t.perSecond);
  }
});

test('bench/check.js measures the search before, Source-DPOR and Optimal-DPOR side by side: on cas(5) 5! executions before and 5 now, on lastzero(6) none abandoned by Optimal-DPOR', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bench', 'check.js'), ...args], { encoding: 'utf8', timeout: 120_000 });
  const r = run('--only', 'cas-5,lastzero-6', '--json');
  assert.equal(r.status, 0, r.stderr);
  type Search = { executions: number; completeExecutions: number; abandoned: number; complete: boolean };
  const j = JSON.parse(r.stdout) as { rows: { scenario: string; before: Search; source: Search; optimal: Search; dfs: unknown }[] };
  const [cas, lastzero] = j.rows;
  assert.equal(cas!.scenario, 'cas-5');
  assert.deepEqual([cas!.before.executions, cas!.source.executions, cas!.optimal.executions], [120, 5, 5]);
  assert.equal(cas!.dfs, null, 'the classic benchmarks are measured with DPOR only');
  assert.equal(lastzero!.scenario, 'lastzero-6');
  assert.ok(lastzero!.source.abandoned > 0 && lastzero!.optimal.abandoned === 0);
  assert.equal(lastzero!.optimal.completeExecutions, lastzero!.source.completeExecutions);
  for (const x of [cas!, lastzero!]) for (const s of [x.before, x.source, x.optimal]) assert.ok(s.complete);
  const bad = run('--only', 'no-such-scenario');
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /no built-in scenario no-such-scenario/);
  const badRepeat = run('--repeat', '0');
  assert.equal(badRepeat.status, 2);
  assert.match(badRepeat.stderr, /--repeat takes a whole number of runs from 1 to 100, not '0'/);
  // Alternating runs: every run's time is kept, the cell is the median one's.
  const repeated = run('--only', 'cas-4', '--repeat', '3', '--json');
  assert.equal(repeated.status, 0, repeated.stderr);
  const row = (JSON.parse(repeated.stdout) as { rows: { before: Search & { seconds: number; secondsAll: number[] } }[] }).rows[0]!;
  assert.equal(row.before.secondsAll.length, 3);
  assert.equal(row.before.seconds, [...row.before.secondsAll].sort((x, y) => x - y)[1]);
  assert.equal(row.before.executions, 24);
});

test('bench demand-paging --json over 1..2 vCPUs in two modes prints one point per mode and vCPU count, every page a slow fault in tdp mode, and a gain per mode', () => {
  const r = kvmmu('bench', 'demand-paging', '-v', '2', '-b', '256K', '-t', '2', '--modes', 'direct,tdp', '--json');
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as {
    benchmark: string;
    pagesPerVcpu: number;
    points: { mode: string; vcpus: number; seconds: { median: number }; pagesPerSecond: { median: number }; slowFaults: number }[];
    gain: Record<string, { min: number; median: number; max: number } | null>;
  };
  assert.equal(j.benchmark, 'demand-paging');
  assert.equal(j.pagesPerVcpu, 64);
  assert.deepEqual(
    j.points.map((p) => [p.mode, p.vcpus]),
    [['direct', 1], ['direct', 2], ['tdp', 1], ['tdp', 2]],
  );
  for (const p of j.points) assert.ok(p.seconds.median > 0 && p.pagesPerSecond.median > 0);
  // The TDP MMU does not prefetch: each first touch is a slow fault (direct mode maps groups of 8 at once).
  assert.equal(j.points.find((p) => p.mode === 'tdp' && p.vcpus === 2)!.slowFaults, 128);
  assert.ok(j.gain.direct !== null && j.gain.tdp !== null && j.gain.tdp.min <= j.gain.tdp.median);
});

test('bench demand-paging refuses an unknown mode with a one-line error and exit 2', () => {
  const r = kvmmu('bench', 'demand-paging', '--modes', 'direct,ept');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown mode 'ept' in --modes/);
  assert.equal(r.stdout, '');
});
