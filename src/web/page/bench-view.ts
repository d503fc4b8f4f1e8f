// The benchmark view: charts of `kvmmu bench` results (re-dirty time per dirty-log pass, fast path on and off; scaling over vCPUs).

import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  Legend,
  LinearScale,
  LineController,
  LogarithmicScale,
  LineElement,
  PointElement,
  Title,
  Tooltip,
  type ChartConfiguration,
} from 'chart.js';
import { ratioInterval, trialsFastGainedMore } from '../../bench/results';
import type { BenchResponse, DirtyLogBench, ScaleBench } from '../api-types';
import { api } from './api';
import type { AppContext } from './app';
import { h, fill } from './dom';

Chart.register(BarController, BarElement, CategoryScale, LinearScale, LogarithmicScale, LineController, LineElement, PointElement, Legend, Title, Tooltip);

const FAST = '#1f6feb';
const SLOW = '#d9480f';

function color(fastPath: boolean): string {
  return fastPath ? FAST : SLOW;
}

function pathName(fastPath: boolean): string {
  return fastPath ? 'fast path on' : 'fast path off';
}

function ms(s: number): number {
  return Math.round(s * 1e5) / 100;
}

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[u]}`;
}

function mean(xs: readonly number[]): number {
  return xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length;
}

export class BenchView {
  readonly el: HTMLElement;
  private readonly body: HTMLElement;
  private charts: Chart[] = [];
  private loaded = false;

  constructor(private readonly app: AppContext) {
    this.body = h('div', { id: 'bench-body', class: 'bench-body' }, 'Loading benchmark results…');
    this.el = h(
      'section',
      { id: 'view-bench', class: 'view' },
      h('div', { class: 'toolbar' }, h('button', { id: 'bench-reload', onclick: () => void this.load() }, 'Reload results'), h('span', { id: 'bench-dir', class: 'summary' })),
      this.body,
    );
  }

  async activate(): Promise<void> {
    if (!this.loaded) await this.load();
  }

  async load(): Promise<void> {
    try {
      const b = await api.bench();
      this.loaded = true;
      this.render(b);
    } catch (e) {
      this.app.showError(e);
    }
  }

  private chart(id: string, config: ChartConfiguration): HTMLElement {
    const canvas = h('canvas', { id, role: 'img' });
    const box = h('div', { class: 'chart' }, canvas);
    // Charts need their canvas in the document to size it; draw after it is attached.
    queueMicrotask(() => {
      config.options = { responsive: true, maintainAspectRatio: false, animation: false, ...config.options };
      this.charts.push(new Chart(canvas, config));
    });
    return box;
  }

  private render(b: BenchResponse): void {
    for (const c of this.charts) c.destroy();
    this.charts = [];
    const dir = h('code', null, b.dir);
    fill(this.el.querySelector('#bench-dir')!, 'Results from ', dir);
    const parts: HTMLElement[] = [];
    if (b.dirtyLog === null && b.scale === null) {
      parts.push(
        h(
          'div',
          { class: 'empty-bench' },
          h('p', null, h('b', null, 'No benchmark results here yet.')),
          h('p', null, 'Write them with'),
          h(
            'pre',
            { id: 'bench-commands' },
            h('code', null, `kvmmu bench dirty-log --fast-path both --out ${b.dir}`),
            '\n',
            h('code', null, `kvmmu bench scale --out ${b.dir}`),
          ),
          h('p', null, 'or start the server with ', h('code', null, 'kvmmu serve --bench DIR'), ' pointing at a directory that has them, then reload.'),
        ),
      );
    }
    if (b.dirtyLog !== null) parts.push(this.dirtyLog(b.dirtyLog));
    if (b.scale !== null) parts.push(this.scale(b.scale));
    if (b.notes.length > 0) parts.push(h('ul', { class: 'notes muted' }, ...b.notes.map((n) => h('li', null, n))));
    fill(this.body, ...parts);
  }

  private dirtyLog(d: DirtyLogBench): HTMLElement {
    const c = d.config;
    const cards: HTMLElement[] = [];
    if (d.ratio !== null) {
      const r = d.ratio.slowOverFast;
      const m = ratioInterval(d.ratio);
      cards.push(
        h(
          'div',
          { class: 'card', id: 'bench-ratio' },
          h('div', { class: 'big' }, `${r.median.toFixed(2)}×`),
          h('div', null, 're-dirty time, fast path off ÷ on (median)'),
          h('div', { class: 'muted' }, `min ${r.min.toFixed(2)}×, max ${r.max.toFixed(2)}×`),
          m === null ? null : h('div', { class: 'muted', id: 'bench-ratio-interval' }, `median within ${m.low.toFixed(2)}–${m.high.toFixed(2)}× (${(m.coverage * 100).toFixed(0)}% interval)`),
        ),
      );
    }
    cards.push(
      h(
        'div',
        { class: 'card' },
        h('div', { class: 'big' }, `${Math.round(d.floor.fastFaultNs)} ns`),
        h('div', null, 'per fast fault'),
        h('div', { class: 'muted' }, `${d.floor.multiple.toFixed(1)}× the floor of ${d.floor.nsPerOp.toFixed(1)} ns (loads + one cmpxchg)`),
        h('div', { class: 'muted', id: 'bench-handler' }, `whole handler, one thread: ${Math.round(d.floor.handlerNs.fastPathOn)} ns with the fast path, ${Math.round(d.floor.handlerNs.fastPathOff)} ns without`),
      ),
      h('div', { class: 'card' }, h('div', { class: 'big' }, `${(d.bookkeeping.share * 100).toFixed(2)} %`), h('div', null, `MMU bookkeeping: ${bytes(d.bookkeeping.bytes)}`), h('div', { class: 'muted' }, `of ${bytes(d.bookkeeping.guestBytes)} guest memory`)),
      h(
        'div',
        { class: 'card' },
        h('div', null, h('b', null, `${c.vcpus} vCPU${c.vcpus === 1 ? '' : 's'} × ${bytes(c.bytesPerVcpu)}`), `, ${c.mode} mode`),
        h('div', null, `${c.iterations} dirty-log iterations${d.runs.length > 1 ? ' each way, on one VM' : ''}${c.clearDirtyLog ? ', with clear-dirty-log' : ''}`),
        h('div', { class: 'muted' }, `${d.machine.cpus} CPUs, Node ${d.machine.node}`),
      ),
    );
    const iterations = Math.max(0, ...d.runs.map((r) => r.iterations.length));
    const labels = Array.from({ length: iterations }, (_, i) => String(i + 1));
    const redirty = this.chart('chart-redirty', {
      type: 'line',
      data: {
        labels,
        datasets: d.runs.map((r) => ({
          label: pathName(r.fastPath),
          data: r.iterations.map((it) => ms(it.dirtySeconds)),
          borderColor: color(r.fastPath),
          backgroundColor: color(r.fastPath),
        })),
      },
      options: {
        plugins: { title: { display: true, text: 'Time to re-dirty guest memory after each dirty-log pass' } },
        scales: { x: { title: { display: true, text: 'iteration' } }, y: { beginAtZero: true, title: { display: true, text: 'ms' } } },
      },
    });
    // Populate, enable and disable ran once for the VM (both ways share it); the per-iteration phases ran once per way.
    const phaseNames = ['populate', 'enable dirty log', 'dirty (mean)', 'get dirty log (mean)', 'clear dirty log (mean)', 'disable dirty log'];
    const p = d.phases;
    const phases = this.chart('chart-phases', {
      type: 'bar',
      data: {
        labels: phaseNames,
        datasets: [
          {
            label: d.runs.length > 1 ? 'the VM (both ways)' : 'the VM',
            data: [ms(p.populateSeconds), ms(p.enableSeconds), null, null, null, ms(p.disableSeconds)],
            backgroundColor: '#8c8c8c',
          },
          ...d.runs.map((r) => {
            const its = r.iterations;
            const clears = its.map((i) => i.clearSeconds).filter((x): x is number => x !== null);
            return {
              label: pathName(r.fastPath),
              data: [null, null, mean(its.map((i) => i.dirtySeconds)), mean(its.map((i) => i.getSeconds)), mean(clears), null].map((x) => (x === null ? null : ms(x))),
              backgroundColor: color(r.fastPath),
            };
          }),
        ],
      },
      options: {
        plugins: { title: { display: true, text: 'Phases, as dirty_log_perf_test prints them' } },
        // Populating takes hundreds of ms, enabling dirty logging well under one: a log scale shows both.
        scales: {
          y: {
            type: 'logarithmic',
            title: { display: true, text: 'ms (log scale)' },
            ticks: { callback: (v) => (Number.isInteger(Math.log10(Number(v))) ? String(Number(v)) : '') },
          },
        },
      },
    });
    const faults = h(
      'table',
      { class: 'plain faults' },
      h('thead', null, h('tr', null, h('th', null, 'run'), h('th', null, 'fast faults'), h('th', null, 'slow faults'), h('th', null, 'slow, found mmu_lock taken'), h('th', null, 'spurious'))),
      h(
        'tbody',
        null,
        ...[{ name: 'populate', f: d.populateFaults }, ...d.runs.map((r) => ({ name: `${pathName(r.fastPath)}, iterations`, f: r.faults }))].map(({ name, f }) =>
          h('tr', null, h('td', null, name), h('td', null, f.fast.toLocaleString('en')), h('td', null, f.slow.toLocaleString('en')), h('td', null, f.lockContended.toLocaleString('en')), h('td', null, f.spurious.toLocaleString('en'))),
        ),
      ),
    );
    return h('section', { class: 'bench-section', id: 'bench-dirty-log' }, h('h2', null, 'Dirty logging: the fast path on and off'), h('div', { class: 'cards' }, ...cards), h('div', { class: 'charts' }, redirty, phases), faults);
  }

  private scale(s: ScaleBench): HTMLElement {
    const vcpus = [...new Set(s.points.map((p) => p.vcpus))].sort((a, b) => a - b);
    const series = (fastPath: boolean, pick: (p: ScaleBench['points'][number]) => number): (number | null)[] =>
      vcpus.map((v) => {
        const p = s.points.find((x) => x.vcpus === v && x.fastPath === fastPath);
        return p === undefined ? null : pick(p);
      });
    const paths = [true, false].filter((f) => s.points.some((p) => p.fastPath === f));
    const line = (id: string, title: string, unit: string, pick: (p: ScaleBench['points'][number]) => number): HTMLElement =>
      this.chart(id, {
        type: 'line',
        data: {
          labels: vcpus.map(String),
          datasets: paths.map((f) => ({ label: pathName(f), data: series(f, pick), borderColor: color(f), backgroundColor: color(f) })),
        },
        options: {
          plugins: { title: { display: true, text: title } },
          scales: { x: { title: { display: true, text: 'vCPUs' } }, y: { beginAtZero: true, title: { display: true, text: unit } } },
        },
      });
    const counted = s.points.filter((p) => p.slowFaults > 0);
    const gain = (g: { min: number; median: number; max: number }) => `${g.median.toFixed(2)}× (${g.min.toFixed(2)}–${g.max.toFixed(2)}×)`;
    const contention =
      counted.length === 0
        ? null
        : h(
            'table',
            { class: 'plain faults', id: 'bench-scale-lock' },
            h('thead', null, h('tr', null, h('th', null, 'vCPUs'), h('th', null, 'run'), h('th', null, 'slow faults'), h('th', null, 'found mmu_lock taken'))),
            h('tbody', null, ...counted.map((p) => h('tr', null, h('td', null, String(p.vcpus)), h('td', null, pathName(p.fastPath)), h('td', null, p.slowFaults.toLocaleString('en')), h('td', null, `${((100 * p.lockContended) / p.slowFaults).toFixed(1)}%`)))),
          );
    return h(
      'section',
      { class: 'bench-section', id: 'bench-scale' },
      h('h2', null, `Scaling: 1 to ${s.config.maxVcpus} vCPUs, ${bytes(s.config.bytesPerVcpu)} each, ${s.config.mode} mode`),
      s.gain === null
        ? null
        : h(
            'p',
            { id: 'bench-scale-gain' },
            `Throughput at ${s.config.maxVcpus} vCPUs over 1, median of ${s.config.trials} trial${s.config.trials === 1 ? '' : 's'} (min–max): `,
            h('b', null, `fast path on ${gain(s.gain.fastPathOn)}`),
            ', ',
            h('b', null, `off ${gain(s.gain.fastPathOff)}`),
            `. The fast path gained more in ${trialsFastGainedMore(s)} of ${s.trials.length} trials. Points are medians over the trials.`,
          ),
      h('div', { class: 'charts' }, line('chart-scale-rate', 'Pages re-dirtied per second', 'pages/s', (p) => Math.round(p.pagesPerSecond)), line('chart-scale-time', 'Time to re-dirty all guest memory', 'ms', (p) => ms(p.redirtySeconds))),
      contention,
    );
  }
}
