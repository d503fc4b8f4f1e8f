// Checker benchmark: for each built-in scenario and the classic benchmarks lastzero(N) and cas(N), exhaustive DPOR three ways side by side (the search before failed compare-and-swaps were reads, Source-DPOR, Optimal-DPOR: complete and abandoned executions, time, executions/s), plain DFS, and the time to find the bug with its guard off.
//
//   node dist/bench/check.js [--json] [--dfs-seconds S] [--only NAME,...] [--no-classic] [--repeat N]
//   node dist/bench/check.js --workers 1,2 [--seconds S] [--min-seconds M] [--only NAME,...] [--json]   (parallel DPOR side by side)
//
// Each scenario is explored once untimed first (compiling its code paths); the figures are the runs after, in
// one process, one after the other, so they compare side by side. With --repeat N the three DPOR ways alternate
// N times (before, Source, Optimal, before, ...) and each cell is the run of median time.

import { parseArgs } from 'node:util';
import { ALL_GUARDS, GUARDS, type GuardName } from '../src/kvm/config';
import { contextFor, runCheck, type CheckReport } from '../src/check/check';
import { Engine, type GenScenarioModule } from '../src/check/engine';
import { explore, type ExploreResult, type Reduction } from '../src/check/explore';
import { builtinMonitors } from '../src/check/invariants';
import type { ScenarioContext, ScenarioSpec } from '../src/check/gen/scenario';
import { loadCatalog, loadGenModule, loadScenarioFile } from '../src/cli/scenario-file';
import { CheckPool, exploreParallel, kvmmuVersion, sha256File, type SearchSettings } from '../src/cli/parallel';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

interface Search {
  executions: number;
  /** Executions that ran to their end (each a class of equivalent executions of its own). */
  completeExecutions: number;
  /** Begun, then abandoned as redundant (sleep-set blocked). */
  abandoned: number;
  seconds: number;
  perSecond: number;
  complete: boolean;
  /** With --repeat: every run's seconds, in the order run (the cell is the median one's). */
  secondsAll: number[];
}

interface Row {
  scenario: string;
  /** Source-DPOR with every read-modify-write a write: the search before 2026-12-07. */
  before: Search;
  source: Search;
  optimal: Search;
  dfs: { executions: number; seconds: number; perSecond: number; complete: boolean } | null;
  guardOff: { guard: string; executions: number; seconds: number; invariant: string | null } | null;
}

function search(r: ExploreResult): Search {
  return {
    executions: r.executions,
    completeExecutions: r.executions - r.abandoned - r.boundCut - r.unfair - r.truncated,
    abandoned: r.abandoned,
    seconds: r.seconds,
    perSecond: r.executions / Math.max(r.seconds, 1e-9),
    complete: r.complete,
    secondsAll: [r.seconds],
  };
}

/** The run of median time among `runs` (the lower middle one of an even number), with every run's seconds. */
function median(runs: Search[]): Search {
  const sorted = [...runs].sort((x, y) => x.seconds - y.seconds);
  return { ...sorted[(sorted.length - 1) >> 1]!, secondsAll: runs.map((x) => x.seconds) };
}

/**
 * Exhaustive DPOR on `spec` in its first mode, every guard on: within the scenario's own preemption bound if it has
 * one (as kvmmu check runs it; DPOR is then Source-DPOR whatever the reduction asked for).
 */
function dpor(gen: GenScenarioModule, spec: ScenarioSpec, reduction: Reduction, unchangedRmwIsRead: boolean): Search {
  const engine = new Engine(gen, spec, contextFor(spec, {}), { monitorsFor: builtinMonitors, unchangedRmwIsRead });
  return search(explore(engine, { strategy: 'dpor', reduction, preemptions: spec.preemptions }));
}

function measure(r: CheckReport): { executions: number; seconds: number; perSecond: number; complete: boolean } {
  return { executions: r.executions, seconds: r.seconds, perSecond: r.executions / Math.max(r.seconds, 1e-9), complete: r.complete };
}

const USAGE = `usage: node dist/bench/check.js [--json] [--dfs-seconds S] [--only NAME,...] [--no-classic] [--repeat N]
       node dist/bench/check.js --workers 1,2 [--seconds S] [--min-seconds M] [--only NAME,...] [--repeat R] [--json]

For each built-in scenario, side by side in one process: exhaustive DPOR as it
was before failed compare-and-swaps counted as reads (Source-DPOR, every
read-modify-write a write), Source-DPOR and Optimal-DPOR (complete and
abandoned executions, seconds, executions/s); plain DFS for S seconds
(default 20); the executions DPOR needs to find the bug with the scenario's
guard off. Then the classic benchmarks lastzero(N) and cas(N) at a few sizes
(DPOR three ways only). --only limits it to the named scenarios (lastzero-N and
cas-N name any size); --no-classic leaves the classic ones out. --repeat N
alternates the three DPOR ways N times (default 1) and reports the run of
median time of each. --json prints the rows as JSON.

With --workers, for each built-in, inc(6) and examples/dirty-log-two-vcpus.ts
(direct and shadow mode): the sequential search (Source-DPOR) and the split
search on each worker count, both warm, each for at most S seconds (default
20); a search over in less than M seconds (default 1) runs again until its
runs add up to M, and its figures are their sums. Then as many independent
sequential searches at once as the largest count (the machine's ceiling), for
scenarios whose searches each ran once. Last, the built-ins once each (their
executions on the most workers, at each column's rate) and together, measured:
each whole, one after another on one thread, or all given at once to the
workers, as kvmmu check --all gives them. --repeat R measures the columns R
times, one after the other each time (default 1), and gives each row the
median of the R ratios and their range.
`;

/** The classic benchmarks measured by default: sizes where the search before took from a fraction of a second to seconds. */
const CLASSIC = ['lastzero-8', 'lastzero-10', 'lastzero-12', 'cas-7', 'cas-8', 'cas-9'];

/** One scenario of the --workers table: a built-in's name, or a file (and the scenario in it). */
interface Source {
  label: string;
  name: string;
  file?: string;
  /** Explore past violations (inc(6): its every interleaving, a lost update in most). */
  all?: boolean;
}

interface WorkersCell {
  workers: number;
  executions: number;
  seconds: number;
  /** Seconds before every worker had loaded the scenario (0 for the sequential search). */
  startSeconds: number;
  perSecond: number;
  /** Executions a second once the workers had loaded the scenario. */
  perSecondExploring: number;
  jobs: number | null;
  complete: boolean;
  violation: string | null;
  /** Searches timed (a search over in less than --min-seconds runs again until they add up to it); the other figures are their sums. */
  runs: number;
}

/** Executions a second of a run's last column over its sequential one (NaN without both). */
function ratioOf(cells: readonly { workers: number; perSecond: number }[]): number {
  const one = cells.find((c) => c.workers === 1);
  const last = cells[cells.length - 1]!;
  return one !== undefined && last.workers > 1 ? last.perSecond / one.perSecond : NaN;
}

/** Index of the median of `xs` (the lower of the two middle ones for an even count). */
function medianIndex(xs: readonly number[]): number {
  const order = xs.map((x, i) => [x, i] as const).sort((a, b) => a[0] - b[0]);
  return order[(order.length - 1) >> 1]![1];
}

/** Run `once` (every column of a row, one after the other) `repeat` times: the run of median ratio, and every run's ratio. */
async function medianRun<C extends { workers: number; perSecond: number }>(repeat: number, once: () => Promise<C[]>): Promise<{ cells: C[]; ratios: number[] }> {
  const runs: C[][] = [];
  for (let rep = 0; rep < repeat; rep++) runs.push(await once());
  const ratios = runs.map(ratioOf);
  return { cells: runs[medianIndex(ratios)]!, ratios };
}

/** A row's ratio: the median of its runs, and their range when there are several. */
function ratioText(ratios: readonly number[]): string {
  if (ratios.length === 0 || ratios.some((x) => Number.isNaN(x))) return '';
  const m = ratios[medianIndex(ratios)]!;
  return ratios.length === 1 ? `${m.toFixed(2)}x` : `${m.toFixed(2)}x [${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}]`;
}

/** The built-ins searched together, on one thread or on a pool of `workers`. */
interface TogetherCell {
  workers: number;
  scenarios: number;
  executions: number;
  seconds: number;
  perSecond: number;
  runs: number;
}

/** The settings of a split search of `src` (its file's hash, for a file). */
function settingsOf(src: Source, ctx: ScenarioContext): SearchSettings {
  return {
    source: src.file === undefined ? { name: src.name } : { name: src.name, file: src.file, sha256: sha256File(src.file) },
    ctx,
    strategy: 'dpor',
    bound: -1,
    continueAfterViolation: src.all,
    version: kvmmuVersion(),
  };
}

/**
 * Run `once` (one whole search) again and again until the runs add up to `minSeconds`, or once when it stops at
 * its budget: a search of a few milliseconds is timed over many, not by one reading at the clock's resolution.
 */
async function repeated<R extends { executions: number; seconds: number; complete: boolean; violation: unknown }>(minSeconds: number, once: () => R | Promise<R>): Promise<{ first: R; executions: number; seconds: number; runs: number }> {
  const first = await once();
  let executions = first.executions;
  let seconds = first.seconds;
  let runs = 1;
  const over = first.complete || first.violation !== null;
  while (over && seconds < minSeconds) {
    const r = await once();
    executions += r.executions;
    seconds += r.seconds;
    runs++;
  }
  return { first, executions, seconds, runs };
}

/**
 * --workers: for each scenario, Source-DPOR on one thread (the sequential search) and split over N worker
 * threads (kvmmu check --workers N), one after the other in this process, each for at most S seconds.
 */
async function workersTable(counts: number[], seconds: number, minSeconds: number, only: string[] | null, json: boolean, repeat = 1): Promise<void> {
  const gen = loadGenModule();
  const catalog = loadCatalog();
  const root = path.join(__dirname, '..', '..');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-bench-'));
  const inc6 = path.join(tmp, 'inc6.ts');
  fs.writeFileSync(inc6, fs.readFileSync(path.join(root, 'examples', 'inc.ts'), 'utf8').replace('const N = 3;', 'const N = 6;'));
  const sources: Source[] = [
    ...catalog.builtin.map((s) => ({ label: s.name, name: s.name })),
    { label: 'inc(6)', name: 'inc', file: inc6, all: true },
    { label: 'dirty-log-two-vcpus', name: 'dirty-log-two-vcpus', file: path.join(root, 'examples', 'dirty-log-two-vcpus.ts') },
    { label: 'dirty-log-two-vcpus shadow', name: 'dirty-log-two-vcpus', file: path.join(root, 'examples', 'dirty-log-two-vcpus.ts') },
  ].filter((s) => only === null || only.includes(s.label));
  const rows: { scenario: string; builtin: boolean; cells: WorkersCell[]; ratios: number[]; independent: number | null }[] = [];
  const cli = path.join(__dirname, '..', 'src', 'cli', 'main.js');
  // One pool per worker count for the whole run: its threads keep their compiled code from scenario to scenario,
  // as this thread does for the sequential search.
  const pools = new Map(counts.filter((n) => n > 1).map((n) => [n, new CheckPool(n)]));
  const most = Math.max(...counts);
  // The built-ins' searches, kept to be run again all together at the end.
  const kept: { spec: ScenarioSpec; engine: Engine; settings: SearchSettings }[] = [];
  for (const src of sources) {
    const spec = src.file === undefined ? catalog.builtin.find((s) => s.name === src.name)! : loadScenarioFile(src.file, src.name);
    const ctx = contextFor(spec, { mode: src.label.endsWith('shadow') ? 'shadow' : undefined });
    // Steady state: each search's code paths compiled first, the sequential one's here and the split one's on
    // its pool's threads (what a long check reaches after its first seconds).
    // A search that ends early is repeated for --min-seconds, as it is timed: once would compile little of it.
    const warm = new Engine(gen, spec, ctx, { monitorsFor: builtinMonitors });
    await repeated(minSeconds, () => explore(warm, { strategy: 'dpor', reduction: 'source', maxExecutions: 2000, continueAfterViolation: src.all }));
    // --repeat: the columns measured again, one after the other each time, so that each run's ratio is of
    // searches moments apart; the row shows the run of median ratio.
    const settings = settingsOf(src, ctx);
    const { cells, ratios } = await medianRun(repeat, async () => {
      const cells: WorkersCell[] = [];
      for (const n of counts) {
        if (n === 1) {
          const engine = new Engine(gen, spec, ctx, { monitorsFor: builtinMonitors });
          const t = await repeated(minSeconds, () => explore(engine, { strategy: 'dpor', reduction: 'source', seconds, continueAfterViolation: src.all }));
          const r = t.first;
          const rate = t.executions / Math.max(t.seconds, 1e-9);
          cells.push({ workers: 1, executions: t.executions, seconds: t.seconds, startSeconds: 0, perSecond: rate, perSecondExploring: rate, jobs: null, complete: r.complete, violation: r.violation?.violation.invariant ?? null, runs: t.runs });
          continue;
        }
        const pool = pools.get(n)!;
        await repeated(minSeconds, () => exploreParallel(settings, Object.keys(spec.threads).length, { workers: n, pool, maxExecutions: 2000 * n }));
        let start = 0;
        let jobs = 0;
        const t = await repeated(minSeconds, async () => {
          const r = await exploreParallel(settings, Object.keys(spec.threads).length, { workers: n, pool, seconds });
          start += r.startSeconds;
          jobs += r.jobs;
          return r;
        });
        const r = t.first;
        cells.push({
          workers: n,
          executions: t.executions,
          seconds: t.seconds,
          startSeconds: start,
          perSecond: t.executions / Math.max(t.seconds, 1e-9),
          perSecondExploring: t.executions / Math.max(t.seconds - start, 1e-9),
          jobs,
          complete: r.complete,
          violation: r.violation?.violation.invariant ?? null,
          runs: t.runs,
        });
      }
      return cells;
    });
    // The machine's ceiling: as many independent sequential searches as the largest worker count, at once
    // (separate processes, nothing shared): the executions a second the cores give this run, whatever else runs.
    let independent: number | null = null;
    // Only for a search that ran once: a process's single search of a few milliseconds cannot be timed so.
    if (most > 1 && src.all !== true && cells.every((c) => c.runs === 1)) {
      const args = ['check', '--workers', '1', '--reduction', 'source', '--seconds', String(seconds), '--json', ...(src.file !== undefined ? ['--file', src.file, '--scenario', src.name] : ['--scenario', src.name])];
      if (src.label.endsWith('shadow')) args.push('--mode', 'shadow');
      const runs = await Promise.all(
        Array.from({ length: most }, () =>
          new Promise<number>((resolve) => {
            execFile(process.execPath, [cli, ...args], { maxBuffer: 1 << 26 }, (_e, out) => {
              try {
                const r = JSON.parse(out) as { executions: number; seconds: number };
                resolve(r.executions / Math.max(r.seconds, 1e-9));
              } catch {
                resolve(NaN);
              }
            });
          }),
        ),
      );
      independent = runs.reduce((a, b) => a + b, 0);
    }
    rows.push({ scenario: src.label, builtin: src.file === undefined, cells, ratios, independent });
    // An engine made once, as a pool's worker keeps the one it loaded.
    if (src.file === undefined) kept.push({ spec, engine: new Engine(gen, spec, ctx, { monitorsFor: builtinMonitors }), settings });
    if (!json) process.stderr.write(`${src.label} done\n`);
  }
  // The built-ins measured together, as `kvmmu check --all` explores them: one after the other on this thread,
  // and all given at once to each pool, which runs them side by side and splits each once a worker is free. Each
  // search whole, with no budget, so that every column does the same work (a built-in's search is over in seconds).
  const { cells: together, ratios: togetherRatios } = kept.length < 2 ? { cells: [], ratios: [] } : await medianRun(repeat, async () => {
    const cells: TogetherCell[] = [];
    for (const n of counts) {
      const pool = pools.get(n);
      const t = await repeated(minSeconds, async () => {
        const t0 = performance.now();
        const results =
          pool === undefined
            ? kept.map(({ engine }) => explore(engine, { strategy: 'dpor', reduction: 'source' }))
            : await Promise.all(kept.map(({ spec, settings }) => exploreParallel(settings, Object.keys(spec.threads).length, { workers: n, pool })));
        return {
          executions: results.reduce((a, r) => a + r.executions, 0),
          seconds: (performance.now() - t0) / 1000,
          complete: results.every((r) => r.complete || r.violation !== null),
          violation: null,
        };
      });
      cells.push({ workers: n, scenarios: kept.length, executions: t.executions, seconds: t.seconds, perSecond: t.executions / Math.max(t.seconds, 1e-9), runs: t.runs });
    }
    return cells;
  });
  for (const p of pools.values()) await p.close();
  fs.rmSync(tmp, { recursive: true, force: true });
  // Every built-in in the table searched once, as `kvmmu check --all` checks them: the executions of one search of
  // each on the most workers, at each column's rate for that scenario. The same work in every column, so a search
  // a budget cut short in one column weighs as much in the others.
  const builtins = rows.filter((r) => r.builtin);
  const allBuiltins = counts.map((n) => {
    let executions = 0;
    let secs = 0;
    for (const r of builtins) {
      const c = r.cells.find((x) => x.workers === n)!;
      const ref = r.cells.find((x) => x.workers === most)!;
      executions += ref.executions / ref.runs;
      secs += ref.executions / ref.runs / Math.max(c.perSecond, 1e-9);
    }
    return { workers: n, scenarios: builtins.length, executions: Math.round(executions), seconds: secs, perSecond: executions / Math.max(secs, 1e-9) };
  });
  if (json) {
    process.stdout.write(JSON.stringify({ kind: 'check-workers', version: 1, node: process.version, cpus: os.availableParallelism(), seconds, repeat, rows, allBuiltins, together, togetherRatios }) + '\n');
    return;
  }
  const pad = (x: string | number, n: number): string => String(x).padStart(n);
  console.log(`${'scenario'.padEnd(28)}${counts.map((n) => `${n === 1 ? 'sequential (Source-DPOR)' : `${n} workers`}`.padEnd(48)).join('')}ratio`);
  for (const r of rows) {
    const one = r.cells.find((c) => c.workers === 1);
    const line = r.cells
      .map((c) =>
        `${pad(c.executions, 9)} ${pad(c.seconds.toFixed(1), 5)} s ${pad(Math.round(c.perSecond), 6)}/s` +
        (c.runs > 1 ? ` ×${c.runs}` : '') +
        (c.workers > 1 ? ` (${c.jobs} jobs)`.padEnd(13) : ''.padEnd(13)) +
        `${c.complete ? ' ' : '!'}${c.violation !== null ? '*' : ' '}`,
      )
      .map((x) => x.padEnd(48))
      .join('');
    const ratio = ratioText(r.ratios);
    const ceiling = r.independent !== null && one !== undefined ? `; ${most} independent sequential searches at once: ${Math.round(r.independent)}/s (${(r.independent / one.perSecond).toFixed(2)}x)` : '';
    console.log(`${r.scenario.padEnd(28)}${line}${ratio}${ceiling}`);
  }
  if (builtins.length > 1) {
    const line = allBuiltins.map((a) => `${pad(a.executions, 9)} ${pad(a.seconds.toFixed(1), 5)} s ${pad(Math.round(a.perSecond), 6)}/s`.padEnd(48)).join('');
    const ratio = ratioText([ratioOf(allBuiltins)]);
    console.log(`${`the ${builtins.length} built-ins, once each`.padEnd(28)}${line}${ratio}`);
  }
  if (together.length > 0) {
    const line = together.map((a) => `${pad(a.executions, 9)} ${pad(a.seconds.toFixed(1), 5)} s ${pad(Math.round(a.perSecond), 6)}/s${a.runs > 1 ? ` ×${a.runs}` : ''}`.padEnd(48)).join('');
    const ratio = ratioText(togetherRatios);
    console.log(`${`the ${together[0]!.scenarios} built-ins together`.padEnd(28)}${line}${ratio}`);
  }
  console.log(`(each search at most ${seconds} s; ×N: a search over in less than ${minSeconds} s run N times, its figures summed; '!' not exhaustive (budget), '*' a violation found (the search stops there, inc(6) excepted); the built-ins once each: one search's executions of each on ${most} workers, timed at each column's executions/s for it; the built-ins together: measured, each column's searches of them all, whole (no budget), one after the other on one thread, or given at once to the pool as check --all does; ratio: executions/s of the last column over the sequential search's${repeat > 1 ? `, the median of ${repeat} runs of the columns one after the other (their range in brackets; the row shows the run of median ratio)` : ''}; both searches warm: their code compiled by untimed runs first, repeated as the timed ones are, the split one's on worker threads kept for the whole run)`);
}

function main(): void {
  const wi = process.argv.indexOf('--workers');
  if (wi >= 0) {
    const counts = (process.argv[wi + 1] ?? '').split(',').map(Number);
    if (counts.length === 0 || counts.some((n) => !Number.isInteger(n) || n < 1)) {
      process.stderr.write(`bench/check: --workers takes worker counts such as 1,2, not '${process.argv[wi + 1] ?? ''}'\n`);
      process.exitCode = 2;
      return;
    }
    const si = process.argv.indexOf('--seconds');
    const seconds = si >= 0 ? Number(process.argv[si + 1]) : 20;
    const mi = process.argv.indexOf('--min-seconds');
    const minSeconds = mi >= 0 ? Number(process.argv[mi + 1]) : 1;
    if (!Number.isFinite(seconds) || seconds <= 0 || !Number.isFinite(minSeconds) || minSeconds < 0) {
      process.stderr.write(`bench/check: --seconds takes a positive number and --min-seconds a number of seconds, 0 or more\n`);
      process.exitCode = 2;
      return;
    }
    const oi = process.argv.indexOf('--only');
    const only = oi >= 0 ? process.argv[oi + 1]!.split(',').map((x) => x.trim()) : null;
    const ri = process.argv.indexOf('--repeat');
    const repeat = ri >= 0 ? Number(process.argv[ri + 1]) : 1;
    if (!Number.isInteger(repeat) || repeat < 1) {
      process.stderr.write(`bench/check: --repeat takes a whole number of runs, 1 or more, not '${process.argv[ri + 1] ?? ''}'\n`);
      process.exitCode = 2;
      return;
    }
    void workersTable(counts, seconds, minSeconds, only, process.argv.includes('--json'), repeat).catch((e: Error) => {
      process.stderr.write(`bench/check: ${e.message}\n`);
      process.exitCode = 1;
    });
    return;
  }
  let values: { json?: boolean; help?: boolean; 'dfs-seconds'?: string; only?: string; 'no-classic'?: boolean; repeat?: string };
  try {
    ({ values } = parseArgs({
      options: {
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        'dfs-seconds': { type: 'string' },
        only: { type: 'string' },
        'no-classic': { type: 'boolean' },
        repeat: { type: 'string' },
      },
      strict: true,
    }));
  } catch (e) {
    process.stderr.write(`bench/check: ${(e as Error).message.split('\n')[0]}\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  if (values.help === true) {
    process.stdout.write(USAGE);
    return;
  }
  const json = values.json === true;
  const given = values['dfs-seconds'];
  // A budget that is not a positive decimal number would never end plain DFS's exploration.
  const dfsSeconds = given === undefined ? 20 : /^\d+(\.\d+)?$/.test(given) ? Number(given) : NaN;
  if (!(dfsSeconds > 0)) {
    process.stderr.write(`bench/check: --dfs-seconds takes a number of seconds above 0, not '${given}'\n`);
    process.exitCode = 2;
    return;
  }
  const repeat = values.repeat === undefined ? 1 : /^\d+$/.test(values.repeat) ? Number(values.repeat) : NaN;
  if (!(repeat >= 1 && repeat <= 100)) {
    process.stderr.write(`bench/check: --repeat takes a whole number of runs from 1 to 100, not '${values.repeat}'\n`);
    process.exitCode = 2;
    return;
  }
  const gen = loadGenModule();
  const catalog = loadCatalog();
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const classic = require('../gen/src/check/gen/scenarios/index.js') as typeof import('../src/check/gen/scenarios/index');
  const only = values.only?.split(',').map((s) => s.trim()) ?? null;
  const classicSpec = (name: string): ScenarioSpec | null => {
    const m = /^(lastzero|cas)-(\d+)$/.exec(name);
    if (m === null) return null;
    const n = Number(m[2]);
    return (m[1] === 'lastzero' ? classic.lastZero(n) : classic.casRace(n)) as unknown as ScenarioSpec;
  };
  const builtins = catalog.builtin.filter((s) => only === null || only.includes(s.name));
  const classics = (only ?? (values['no-classic'] === true ? [] : CLASSIC)).map(classicSpec).filter((s): s is ScenarioSpec => s !== null);
  const unknown = (only ?? []).filter((n) => !builtins.some((s) => s.name === n) && classicSpec(n) === null);
  if (unknown.length > 0) {
    process.stderr.write(`bench/check: no built-in scenario ${unknown.join(', ')} (lastzero-N and cas-N name the classic benchmarks)\n`);
    process.exitCode = 2;
    return;
  }
  const rows: Row[] = [];
  for (const spec of [...builtins, ...classics]) {
    const isBuiltin = builtins.includes(spec);
    // Steady state: one untimed run first compiles the scenario's code paths (kvmmu check's own
    // report includes that first-run cost).
    runCheck(gen, spec, { strategy: 'dpor', executions: 2000 });
    const runs: { before: Search[]; source: Search[]; optimal: Search[] } = { before: [], source: [], optimal: [] };
    for (let k = 0; k < repeat; k++) {
      runs.before.push(dpor(gen, spec, 'source', false));
      runs.source.push(dpor(gen, spec, 'source', true));
      runs.optimal.push(dpor(gen, spec, 'optimal', true));
    }
    const before = median(runs.before);
    const source = median(runs.source);
    const optimal = median(runs.optimal);
    let dfs: Row['dfs'] = null;
    let guardOff: Row['guardOff'] = null;
    if (isBuiltin) {
      dfs = measure(runCheck(gen, spec, { strategy: 'dfs', seconds: dfsSeconds }));
      const guard = spec.guard as GuardName;
      const off = runCheck(gen, spec, { guards: ALL_GUARDS & ~GUARDS[guard], minimize: false });
      guardOff = { guard, executions: off.executions, seconds: off.seconds, invariant: off.violation?.invariant ?? null };
    }
    rows.push({ scenario: spec.name, before, source, optimal, dfs, guardOff });
    if (!json) process.stderr.write(`${spec.name} done\n`);
  }
  if (json) {
    process.stdout.write(JSON.stringify({ kind: 'check', version: 2, node: process.version, rows }) + '\n');
    return;
  }
  const pad = (s: string | number, n: number): string => String(s).padStart(n);
  const cell = (x: Search): string =>
    `${pad(x.completeExecutions, 8)} ${pad(x.abandoned, 7)} ${pad(x.seconds.toFixed(2), 6)} ${pad(Math.round(x.perSecond), 7)}${x.complete ? ' ' : '!'}`;
  const head = `${pad('complete', 8)} ${pad('abandon', 7)} ${pad('s', 6)} ${pad('execs/s', 7)} `;
  console.log(`${''.padEnd(22)}${'before (Source, CAS a write)'.padEnd(38)}${'Source-DPOR'.padEnd(38)}${'Optimal-DPOR'.padEnd(38)}DFS; guard off`);
  console.log(`${'scenario'.padEnd(22)}${head}${head}${head}`);
  for (const r of rows) {
    const rest =
      r.dfs === null || r.guardOff === null
        ? ''
        : `  DFS ${r.dfs.executions}${r.dfs.complete ? '' : '+'} in ${r.dfs.seconds.toFixed(1)} s (${Math.round(r.dfs.perSecond)}/s); ` +
          `guard off: ${r.guardOff.executions} in ${r.guardOff.seconds.toFixed(2)} s, ${r.guardOff.invariant ?? 'NOT FOUND'}`;
    console.log(`${r.scenario.padEnd(22)}${cell(r.before)} ${cell(r.source)} ${cell(r.optimal)}${rest}`);
  }
  console.log(
    `(complete: executions run to their end, one per class of equivalent executions; abandon: begun, then cut by sleep sets as redundant; '!' marks a DPOR run that was not exhaustive (a scenario's own preemption bound: Source-DPOR all three ways); DFS counts with '+' stopped at the ${dfsSeconds} s budget` +
      (repeat > 1 ? `; each DPOR cell the run of median time of ${repeat}, the three ways alternating` : '') +
      ')',
  );
}

main();
