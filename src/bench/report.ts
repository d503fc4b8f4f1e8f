// Benchmark reports: the text the CLI prints (dirty_log_perf_test's phase lines), self-contained HTML pages with a Chart.js chart, and the output folder they are written to with the JSON (checked before a run, written whole or not at all).

import * as fs from 'node:fs';
import * as path from 'node:path';
import { KvmmuError } from '../shm/errors';
import { fmtBytes } from '../shm/layout';
import type { DirtyLogOutcome, DirtyLogResult, DirtyLogRun } from './dirty-log';
import { ratioInterval, trialsFastGainedMore, type FaultCounts, type MedianInterval } from './results';
import type { ScaleOutcome, ScalePoint, ScaleResult } from './scale';
import { median } from './stats';

// ---- text ----

function secs(s: number): string {
  return `${s.toFixed(6)}s`;
}

/** ", pages marked dirty at fault time (KVM 6.13 on)" for that setting; nothing for the default. */
function markingNote(m: string | undefined): string {
  return m === 'fault' ? ', pages marked dirty at fault time (KVM 6.13 on)' : '';
}

function times(x: number): string {
  return `${x.toFixed(2)}x`;
}

/** "the median lies in 1.85x-2.25x (98% interval, ...)": what a run's iterations say about the ratio's median. */
function intervalText(m: MedianInterval): string {
  return `the median lies in ${times(m.low)}-${times(m.high)} (${(m.coverage * 100).toFixed(0)}% order-statistic interval, iterations taken as independent)`;
}

function fmtPages(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : n.toFixed(0);
}

function iterationLines(r: DirtyLogRun, clear: boolean): string[] {
  const lines: string[] = [];
  r.iterations.forEach((it, i) => {
    lines.push(`Iteration ${i + 1} dirty memory time: ${secs(it.dirtySeconds)}`);
    lines.push(`Iteration ${i + 1} get dirty log time: ${secs(it.getSeconds)}`);
    if (it.clearSeconds !== null) lines.push(`Iteration ${i + 1} clear dirty log time: ${secs(it.clearSeconds)}`);
  });
  const n = r.iterations.length;
  const getTotal = r.iterations.reduce((a, it) => a + it.getSeconds, 0);
  lines.push(`Get dirty log over ${n} iterations took ${secs(getTotal)}. (Avg ${secs(getTotal / n)}/iteration)`);
  if (clear) {
    const clearTotal = r.iterations.reduce((a, it) => a + (it.clearSeconds ?? 0), 0);
    lines.push(`Clear dirty log over ${n} iterations took ${secs(clearTotal)}. (Avg ${secs(clearTotal / n)}/iteration)`);
  }
  return lines;
}

function faultLine(f: FaultCounts, what: string): string {
  const c = f.lockContended;
  const waited = ` (${c} found mmu_lock taken${f.slow > 0 ? `: ${((100 * c) / f.slow).toFixed(1)}%` : ''})`;
  return `Faults: ${f.fast} fast, ${f.slow} slow${waited}, ${f.spurious} spurious (all vCPUs, ${what})`;
}

/** Median re-dirty time per page (iterations 2..) of a way, in microseconds. */
function usPerPage(r: DirtyLogRun, pagesPerVcpu: number): number {
  return (median(r.iterations.slice(1).map((it) => it.dirtySeconds)) / pagesPerVcpu) * 1e6;
}

export function formatDirtyLog(o: DirtyLogOutcome): string {
  const r = o.result;
  const c = r.config;
  const lines = [
    `kvmmu bench dirty-log: ${c.mode} mode, ${c.vcpus} vCPU${c.vcpus === 1 ? '' : 's'}, ${fmtBytes(c.bytesPerVcpu)} per vCPU ` +
      `(${o.pagesPerVcpu} pages), ${c.iterations} iterations, ` +
      (c.clearDirtyLog ? 'manual protect: get-dirty-log copies, clear-dirty-log write-protects' : 'get-dirty-log write-protects') +
      (c.fastPath === 'both' ? ', fast path on and off: one VM, its vCPUs switch between passes, alternating which goes first' : `, fast path ${c.fastPath}`) +
      markingNote(c.pageMarking),
    '',
  ];
  const p = r.phases;
  lines.push(`Populate memory time: ${secs(p.populateSeconds)}`, faultLine(r.populateFaults, 'populate'));
  lines.push(`Enabling dirty logging time: ${secs(p.enableSeconds)}`, '');
  for (const run of r.runs) {
    if (r.runs.length > 1) lines.push(`== fast path ${run.fastPath ? 'on' : 'off'} ==`);
    lines.push(...iterationLines(run, c.clearDirtyLog), faultLine(run.faults, 'these iterations'), '');
  }
  lines.push(`Disabling dirty logging time: ${secs(p.disableSeconds)}`, '');
  if (c.iterations >= 2) {
    lines.push(
      `re-dirty time per page (median of iterations 2-${c.iterations}, each vCPU): ` +
        r.runs.map((run) => `fast path ${run.fastPath ? 'on' : 'off'} ${usPerPage(run, o.pagesPerVcpu).toFixed(3)} us`).join(', '),
    );
  }
  if (r.ratio !== null) {
    const s = r.ratio.slowOverFast;
    lines.push(
      `re-dirty after a dirty-log pass, fast path off / on (iterations 2-${c.iterations}): ` +
        `min ${times(s.min)}, median ${times(s.median)}, max ${times(s.max)}`,
    );
    const m = ratioInterval(r.ratio);
    if (m !== null) lines.push(`  ${intervalText(m)}`);
  }
  const f = o.floor;
  lines.push(`floor: one Atomics.load + one Atomics.compareExchange on a BigUint64Array: ${f.nsPerOp.toFixed(1)} ns`);
  lines.push(
    `fast fault: kvm.mmu.fastPageFault fixing a write-protected SPTE (${f.mode} mode, ${f.pages} pages, median of ${f.rounds} rounds, ` +
      `nothing subtracted): ${f.fastFaultNs.toFixed(1)} ns = ${times(f.multiple)} the floor`,
  );
  const h = f.handlerNs;
  lines.push(
    `fault handler: kvm.mmu.kvmMmuPageFault on the same SPTEs, one thread: fast path on ${h.fastPathOn.toFixed(1)} ns, ` +
      `off ${h.fastPathOff.toFixed(1)} ns (${times(h.fastPathOff / h.fastPathOn)})`,
  );
  const b = r.bookkeeping;
  const kinds = Object.entries(b.byKind)
    .map(([k, v]) => `${k} ${fmtBytes(v)}`)
    .join(', ');
  lines.push(
    `MMU bookkeeping: ${fmtBytes(b.bytes)} = ${(b.share * 100).toFixed(2)}% of ${fmtBytes(b.guestBytes)} guest memory (${kinds})`,
  );
  lines.push(
    `machine: ${r.machine.cpus} CPUs, node ${r.machine.node}, load average ${o.loadAverage.toFixed(2)} at the start; ` +
      `wall time ${o.wallSeconds.toFixed(1)} s`,
  );
  // More vCPU threads than CPUs take turns on the cores: their times then include the OS scheduler's slices.
  if (c.vcpus > r.machine.cpus)
    lines.push(`warning: ${c.vcpus} vCPU threads on ${r.machine.cpus} CPUs take turns on the cores; the times include the OS scheduler's time slices`);
  return lines.join('\n') + '\n';
}

/**
 * How often the slow path found mmu_lock taken, per vCPU count ("1 vCPU: 0.0%
 * of 4096 slow faults found mmu_lock taken; 2 vCPUs: ..."), or null when no
 * point had slow faults.
 */
function contentionLine(points: readonly ScalePoint[]): string | null {
  const parts: string[] = [];
  for (const p of points) {
    if (p.slowFaults === 0) continue;
    const share = ((100 * p.lockContended) / p.slowFaults).toFixed(1);
    parts.push(`${p.vcpus} vCPU${p.vcpus === 1 ? '' : 's'}: ${share}% of ${p.slowFaults} slow faults`);
  }
  return parts.length === 0 ? null : `found mmu_lock taken in ${parts.join('; ')}`;
}

export function formatScale(o: ScaleOutcome): string {
  const r = o.result;
  const c = r.config;
  const lines = [
    `kvmmu bench scale: ${c.mode} mode, ${fmtBytes(c.bytesPerVcpu)} per vCPU (${o.pagesPerVcpu} pages), 1-${c.maxVcpus} vCPUs, ` +
      `${c.trials} trial${c.trials === 1 ? '' : 's'} of ${o.iterations} iterations of dirty memory + get dirty log ` +
      `(re-dirty time: median of iterations 2-${o.iterations}; each point: the median over trials)` +
      markingNote(c.pageMarking),
    '',
    `${'vCPUs'.padEnd(7)}${'fast path on'.padEnd(46)}fast path off`,
  ];
  const at = (n: number, fast: boolean) => r.points.find((p) => p.vcpus === n && p.fastPath === fast);
  for (let n = 1; n <= c.maxVcpus; n++) {
    const cell = (fast: boolean): string => {
      const p = at(n, fast)!;
      const one = at(1, fast)!;
      const scaling = n === 1 ? '' : `, ${times(p.pagesPerSecond / one.pagesPerSecond)} of 1 vCPU`;
      return `${fmtPages(p.pagesPerSecond)} pages/s (${(p.redirtySeconds * 1000).toFixed(2)} ms${scaling})`;
    };
    lines.push(`${String(n).padEnd(7)}${cell(true).padEnd(46)}${cell(false)}`);
  }
  const contention = contentionLine(r.points.filter((p) => !p.fastPath));
  if (contention !== null) lines.push(`fast path off: ${contention}`);
  lines.push('');
  if (r.gain !== null) {
    const g = (s: { min: number; median: number; max: number }) => `median ${times(s.median)} (min ${times(s.min)}, max ${times(s.max)})`;
    lines.push(
      `throughput at ${c.maxVcpus} vCPUs over 1, trial by trial: fast path on ${g(r.gain.fastPathOn)}, off ${g(r.gain.fastPathOff)} ` +
        `(expected: faults under mmu_lock serialize, lockless ones do not; the next line says how far this run shows it)`,
    );
    lines.push(`the fast path's throughput grew more than the slow path's in ${trialsFastGainedMore(r)} of ${r.trials.length} trials`);
  }
  lines.push(
    `machine: ${r.machine.cpus} CPUs, node ${r.machine.node}; ${c.maxVcpus} threads of a CPU-bound loop ran at ` +
      `${o.parallelism.toFixed(2)}x one before the trials (other load on the machine lowers it); wall time ${o.wallSeconds.toFixed(1)} s`,
  );
  if (c.maxVcpus > r.machine.cpus)
    lines.push(
      `warning: points above ${r.machine.cpus} vCPUs run more vCPU threads than CPUs, which take turns on the cores; ` +
        `their times include the OS scheduler's time slices and say little about mmu_lock`,
    );
  return lines.join('\n') + '\n';
}

// ---- HTML ----

/** The Chart.js UMD build from node_modules (the version package.json pins), and its version. */
function chartJs(): { source: string; version: string } {
  const dist = path.dirname(require.resolve('chart.js'));
  const source = fs.readFileSync(path.join(dist, 'chart.umd.min.js'), 'utf8');
  const pkg = JSON.parse(fs.readFileSync(path.join(dist, '..', 'package.json'), 'utf8')) as { version: string };
  return { source, version: pkg.version };
}

/** Text safe inside a <script> element. */
function scriptSafe(s: string): string {
  return s.replace(/<\/(script)/gi, '<\\/$1').replace(/<!--/g, '<\\!--');
}

function esc(s: string): string {
  return s.replace(/[&<>"]/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[ch]!);
}

interface ChartSpec {
  readonly type: 'bar' | 'line';
  readonly labels: string[];
  readonly datasets: { label: string; data: number[] }[];
  readonly yTitle: string;
  readonly xTitle: string;
}

const COLORS = ['#2f6db5', '#d9822b', '#3a9b5d', '#b5445b', '#7d5ba6', '#8c8c8c'];

function page(title: string, headline: string, summary: string, chart: ChartSpec, data: unknown): string {
  const cj = chartJs();
  const datasets = chart.datasets.map((d, i) => ({ ...d, backgroundColor: COLORS[i % COLORS.length], borderColor: COLORS[i % COLORS.length] }));
  const config = {
    type: chart.type,
    data: { labels: chart.labels, datasets },
    options: {
      animation: false,
      responsive: true,
      scales: {
        x: { title: { display: true, text: chart.xTitle } },
        y: { beginAtZero: true, title: { display: true, text: chart.yTitle } },
      },
    },
  };
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${esc(title)}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
pre { background: #f5f5f5; padding: 1em; overflow-x: auto; font-size: 12px; }
.chart { position: relative; height: 24em; }
</style>
</head>
<body>
<h1>${esc(title)}</h1>
<p>${esc(headline)}</p>
<div class="chart"><canvas id="chart"></canvas></div>
<pre>${esc(summary)}</pre>
<p>Data: the JSON beside this file. Chart: Chart.js ${esc(cj.version)} (MIT), inlined so the page opens offline.</p>
<script>${scriptSafe(cj.source)}</script>
<script>
const KVMMU_RESULT = ${scriptSafe(JSON.stringify(data))};
new Chart(document.getElementById('chart'), ${scriptSafe(JSON.stringify(config))});
</script>
</body>
</html>
`;
}

export function dirtyLogHtml(o: DirtyLogOutcome): string {
  const r: DirtyLogResult = o.result;
  // Populate (first touch: every fault is a slow one either way) is in the text, not the chart, whose scale it would flatten.
  const labels = r.runs[0]!.iterations.map((_, i) => `iteration ${i + 1}`);
  const datasets = r.runs.map((run) => ({
    label: `fast path ${run.fastPath ? 'on' : 'off'}`,
    data: run.iterations.map((it) => it.dirtySeconds),
  }));
  const s = r.ratio?.slowOverFast;
  const m = ratioInterval(r.ratio);
  const headline =
    s === undefined
      ? `Dirty memory time per iteration, fast path ${r.config.fastPath}.`
      : `Re-dirty after a dirty-log pass (iterations 2-${r.config.iterations}), fast path off / on: ` +
        `min ${times(s.min)}, median ${times(s.median)}, max ${times(s.max)}` +
        (m === null ? '.' : `; ${intervalText(m)}.`);
  return page(
    `kvmmu dirty-log benchmark: ${r.config.mode} mode, ${r.config.vcpus} vCPU(s), ${fmtBytes(r.config.bytesPerVcpu)} per vCPU`,
    headline,
    formatDirtyLog(o),
    { type: 'bar', labels, datasets, xTitle: 'dirty-log iteration', yTitle: 'dirty memory time (s)' },
    r,
  );
}

export function scaleHtml(o: ScaleOutcome): string {
  const r: ScaleResult = o.result;
  const ns = [...new Set(r.points.map((p) => p.vcpus))];
  const datasets = [true, false].map((fast) => ({
    label: `fast path ${fast ? 'on' : 'off'}`,
    data: ns.map((n) => r.points.find((p) => p.vcpus === n && p.fastPath === fast)!.pagesPerSecond),
  }));
  return page(
    `kvmmu scaling benchmark: ${r.config.mode} mode, ${fmtBytes(r.config.bytesPerVcpu)} per vCPU`,
    'Pages re-dirtied per second by all vCPUs together, each write a write-protect fault after a dirty-log pass.',
    formatScale(o),
    { type: 'bar', labels: ns.map(String), datasets, xTitle: 'vCPUs', yTitle: 're-dirty throughput (pages/s)' },
    r,
  );
}

/**
 * Create the directories missing on the way to `dir`, one level at a time
 * (Node's recursive mkdir never returns for some paths under /proc); returns
 * those it created, outermost first. Throws KvmmuError naming `dir` when a
 * path component is not a directory or a directory cannot be made.
 */
function makeDirs(dir: string): string[] {
  const missing: string[] = [];
  let p = path.resolve(dir);
  for (;;) {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(p);
    } catch (e) {
      // ENOTDIR: a component further up is a file, which the walk up reports by name.
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw new KvmmuError(`--out ${dir}: ${(e as Error).message}`);
    }
    if (st !== undefined) {
      if (!st.isDirectory()) throw new KvmmuError(`--out ${dir}: ${p} is not a directory`);
      break;
    }
    missing.unshift(p);
    p = path.dirname(p);
  }
  const made: string[] = [];
  try {
    for (const m of missing) {
      fs.mkdirSync(m);
      made.push(m);
    }
  } catch (e) {
    removeDirs(made);
    throw new KvmmuError(`--out ${dir}: ${(e as Error).message}`);
  }
  return made;
}

/** Remove directories makeDirs made (innermost first), if they are still empty. */
function removeDirs(made: readonly string[]): void {
  for (const m of [...made].reverse()) {
    try {
      fs.rmdirSync(m);
    } catch {
      return;
    }
  }
}

/**
 * Check, before a benchmark runs, that its results could be written to `dir`:
 * make the missing directories and a probe file, then remove all of them again,
 * so that a bad --out fails at once and a run that fails leaves nothing behind.
 */
export function checkOutDir(dir: string): void {
  if (dir.trim() === '') throw new KvmmuError('--out needs a folder name');
  const made = makeDirs(dir);
  const probe = path.join(dir, `.kvmmu-probe-${process.pid}`);
  try {
    fs.writeFileSync(probe, '');
    fs.unlinkSync(probe);
  } catch (e) {
    throw new KvmmuError(`--out ${dir}: cannot write files there: ${(e as Error).message}`);
  } finally {
    removeDirs(made);
  }
}

/**
 * Write `<dir>/<name>.json` and `<dir>/<name>.html`, creating dir; returns the
 * paths written. Each file is written under a temporary name first and both
 * are renamed into place only once both are complete, so a failure leaves the
 * earlier results (or nothing) rather than half a file.
 */
export function writeResults(dir: string, name: 'dirty-log' | 'scale', json: unknown, html: string): string[] {
  makeDirs(dir);
  const files: [string, string][] = [
    [path.join(dir, `${name}.json`), JSON.stringify(json, null, 2) + '\n'],
    [path.join(dir, `${name}.html`), html],
  ];
  const tmp = (f: string) => `${f}.${process.pid}.tmp`;
  try {
    for (const [f, text] of files) fs.writeFileSync(tmp(f), text);
    for (const [f] of files) fs.renameSync(tmp(f), f);
  } catch (e) {
    for (const [f] of files) fs.rmSync(tmp(f), { force: true });
    throw new KvmmuError(`--out ${dir}: cannot write the results: ${(e as Error).message}`);
  }
  return files.map(([f]) => f);
}
