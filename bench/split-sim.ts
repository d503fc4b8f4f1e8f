// Replays recorded job trees of the split search (kvmmu check --record-jobs, or --record here) on simulated workers: how the split would balance over 8, 64 and 512 workers, which this 2-core machine cannot show.
//
//   node dist/bench/split-sim.js FILE.json... [--workers 8,64,512] [--json]
//   node dist/bench/split-sim.js --record FILE.json --scenario NAME [--file PATH] [--mode M] [--every K] [--seconds S] [--preemptions P]
//
// The model: every execution takes the same time (the recording's executions per second and worker); a job
// becomes ready when the job that made it (by a donation or a race) had run `at` of its executions; ready
// jobs wait in a queue, oldest first, and an idle worker takes the next. The tree is the recorded one: a run on
// W workers would split more where workers idle, so the largest job's share is an upper bound. --record runs
// the split search on one thread with a job giving work away every K of its executions (default 64), as
// eagerly as a run on many workers would, and records that tree.

import * as fs from 'node:fs';
import { contextFor } from '../src/check/check';
import { Engine } from '../src/check/engine';
import { builtinMonitors } from '../src/check/invariants';
import { exploreSplitInline, type JobRecord } from '../src/check/split';
import type { MmuMode } from '../src/kvm/config';
import { findScenario, loadCatalog, loadGenModule, loadScenarioFile } from '../src/cli/scenario-file';

interface Recording {
  scenario: string;
  mode: string | null;
  workers: number;
  executions: number;
  seconds: number;
  startSeconds?: number;
  messages: number;
  jobs: JobRecord[];
}

interface SimRow {
  workers: number;
  /** Simulated time in executions of one worker. */
  makespan: number;
  speedup: number;
  efficiency: number;
  /** Share of all executions in the largest job. */
  largestJobShare: number;
  /** The coordinator's messages a second, at the recording's executions per second and worker. */
  messagesPerSecond: number;
}

function simulate(rec: Recording, w: number): SimRow {
  const byId = new Map(rec.jobs.map((j) => [j.id, j]));
  const children = new Map<number, JobRecord[]>();
  for (const j of rec.jobs) {
    const list = children.get(j.from) ?? [];
    list.push(j);
    children.set(j.from, list);
  }
  const total = rec.jobs.reduce((a, j) => a + j.executions, 0);
  // Event simulation: ready jobs (time, id) by time then id; workers free at times.
  const ready: { t: number; id: number }[] = [];
  for (const j of children.get(-1) ?? []) ready.push({ t: 0, id: j.id });
  const free = new Array<number>(w).fill(0);
  let makespan = 0;
  while (ready.length > 0) {
    ready.sort((a, b) => a.t - b.t || a.id - b.id);
    const next = ready.shift()!;
    // The worker free soonest takes it.
    let k = 0;
    for (let i = 1; i < w; i++) if (free[i]! < free[k]!) k = i;
    const start = Math.max(free[k]!, next.t);
    const job = byId.get(next.id)!;
    const end = start + Math.max(job.executions, 1);
    free[k] = end;
    makespan = Math.max(makespan, end);
    for (const c of children.get(job.id) ?? []) ready.push({ t: start + Math.min(c.at, job.executions), id: c.id });
  }
  const perWorker = rec.executions / Math.max(rec.seconds - (rec.startSeconds ?? 0), 1e-9) / Math.max(rec.workers, 1);
  const largest = Math.max(...rec.jobs.map((j) => j.executions));
  const speedup = total / Math.max(makespan, 1);
  return {
    workers: w,
    makespan,
    speedup,
    efficiency: speedup / w,
    largestJobShare: largest / Math.max(total, 1),
    messagesPerSecond: (rec.messages / Math.max(total, 1)) * speedup * perWorker,
  };
}

function record(out: string, name: string, file: string | undefined, mode: string | undefined, every: number, seconds: number, preemptions: number | undefined): void {
  const gen = loadGenModule();
  const spec = file !== undefined ? loadScenarioFile(file, name) : findScenario(loadCatalog(), name);
  const ctx = contextFor(spec, { mode: mode as MmuMode | undefined });
  const engine = new Engine(gen, spec, ctx, { monitorsFor: builtinMonitors });
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  let timedOut = false;
  const r = exploreSplitInline(engine, {
    strategy: 'dpor',
    preemptions,
    split: (_id, executions) => {
      if (performance.now() > deadline) timedOut = true;
      return executions % every === 0;
    },
    record: true,
    stopWhen: () => timedOut,
  });
  const s = (performance.now() - t0) / 1000;
  const rec: Recording = { scenario: spec.name, mode: ctx.mode, workers: 1, executions: r.executions, seconds: s, messages: r.messages, jobs: r.records };
  fs.writeFileSync(out, JSON.stringify(rec) + '\n');
  process.stderr.write(`recorded ${r.jobs} jobs, ${r.executions} executions in ${s.toFixed(1)} s${r.complete ? ' (exhaustive)' : timedOut ? ' (stopped at the time budget)' : ''} to ${out}\n`);
}

function main(): void {
  const args = process.argv.slice(2);
  const opt = (name: string): string | undefined => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const rec = opt('--record');
  if (rec !== undefined) {
    const name = opt('--scenario');
    if (name === undefined) {
      process.stderr.write('bench/split-sim: --record needs --scenario NAME\n');
      process.exitCode = 2;
      return;
    }
    record(rec, name, opt('--file'), opt('--mode'), Number(opt('--every') ?? 64), Number(opt('--seconds') ?? 60), opt('--preemptions') !== undefined ? Number(opt('--preemptions')) : undefined);
    return;
  }
  const counts = (opt('--workers') ?? '8,64,512').split(',').map(Number);
  const files = args.filter((a, i) => !a.startsWith('--') && !(i > 0 && args[i - 1]!.startsWith('--') && args[i - 1] !== '--json'));
  if (files.length === 0) {
    process.stderr.write('usage: node dist/bench/split-sim.js FILE.json... [--workers 8,64,512] [--json]\n       node dist/bench/split-sim.js --record FILE.json --scenario NAME [--file PATH] [--mode M] [--every K] [--seconds S] [--preemptions P]\n');
    process.exitCode = 2;
    return;
  }
  const out: { file: string; scenario: string; jobs: number; executions: number; rows: SimRow[] }[] = [];
  for (const f of files) {
    const r = JSON.parse(fs.readFileSync(f, 'utf8')) as Recording;
    out.push({ file: f, scenario: r.scenario, jobs: r.jobs.length, executions: r.jobs.reduce((a, j) => a + j.executions, 0), rows: counts.map((w) => simulate(r, w)) });
  }
  if (args.includes('--json')) {
    process.stdout.write(JSON.stringify(out) + '\n');
    return;
  }
  for (const o of out) {
    console.log(`${o.scenario} (${o.file}): ${o.jobs} jobs, ${o.executions} executions`);
    console.log(`  ${'workers'.padStart(7)} ${'speedup'.padStart(8)} ${'efficiency'.padStart(10)} ${'largest job'.padStart(12)} ${'coordinator msgs/s'.padStart(19)}`);
    for (const r of o.rows)
      console.log(
        `  ${String(r.workers).padStart(7)} ${r.speedup.toFixed(1).padStart(8)} ${(r.efficiency * 100).toFixed(0).padStart(9)}% ${(r.largestJobShare * 100).toFixed(2).padStart(11)}% ${Math.round(r.messagesPerSecond).toString().padStart(19)}`,
      );
  }
}

main();
