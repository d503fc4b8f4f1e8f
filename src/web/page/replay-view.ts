// The replay view: run the checker (its knobs, progress, Cancel), then step through its counterexample with the state before and after each step; select an object to see the steps that touched it; copy a link, export the trace.

import type { CheckReport, StepResponse } from '../api-types';
import { api, Cancelled, type CheckProgress } from './api';
import { describeSettings, namedOf, plural, sameSettings, settingsBody, type AppContext } from './app';
import { violationSlice } from './causal';
import { CodeView } from './code-view';
import { drawnSteps } from './drawn';
import { h, fill } from './dom';
import { displayValue, objectLabel } from './names';
import { renderState, renderStepHead, type StateLinks } from './state-view';
import { TraceView } from './trace-view';

/** One line on what a check found. */
export function describeReport(r: CheckReport): string {
  const rate = `${r.strategy}: ${plural(r.executions, 'execution')} in ${r.seconds.toFixed(2)} s${describeExecutions(r)}`;
  if (r.violation !== null)
    return `${rate} — VIOLATION of ${r.violation.invariant}: ${plural(r.violation.steps, 'step')}, ${plural(r.violation.preemptions, 'preemption')}`;
  if (r.complete) return `${rate} — no violation: every schedule was explored${r.preemptionBound !== null ? ` within ${r.preemptionBound} preemptions` : ' (exhaustive)'}`;
  return `${rate} — no violation found, but the exploration is not exhaustive (${r.boundReached ? 'preemption bound' : 'budget ran out'})`;
}

/**
 * DPOR's executions as `kvmmu check` gives them (cli/check-command.ts): the reduction, the complete ones (one per
 * class of equivalent executions) and the abandoned ones apart, and those the preemption bound cut.
 */
function describeExecutions(r: CheckReport): string {
  if (r.reduction === null) return '';
  const complete = r.executions - r.abandoned - r.boundCut - r.unfair - r.truncated;
  const cut = r.boundCut > 0 ? `, ${r.boundCut} cut at the preemption bound` : '';
  return ` (${r.reduction === 'optimal' ? 'Optimal' : 'Source'}-DPOR: ${complete} complete, ${r.abandoned} abandoned as redundant${cut})`;
}

const SPEEDS: readonly [string, number][] = [
  ['slow', 1200],
  ['normal', 600],
  ['fast', 200],
];

/** The checker's knobs as the page offers them (the API's limits: api.ts checkJobOf). */
const SECONDS_DEFAULT = 30;
const SECONDS_MAX = 300;

/** The trace as `kvmmu check` prints it: one column per thread, one line per step (values named as the page names them). */
export function traceText(r: StepResponse): string {
  const lines: string[] = [];
  lines.push(`scenario ${r.scenario}${r.mode === null ? '' : ` (${r.mode} mode)`}, ${r.guardsOff.length === 0 ? 'all guards on' : `guards off: ${r.guardsOff.join(', ')}`}`);
  if (r.mode !== null) lines.push(`indirect fast path ${r.indirectFastPath}, page marking ${r.pageMarking}`);
  lines.push(`replay: kvmmu check --replay '${r.replay}'`);
  if (r.violation !== null) lines.push(`VIOLATION of ${r.violation.invariant} at step ${r.violation.step}: ${r.violation.message}`);
  lines.push(`${plural(r.rows.length, 'step')}, ${plural(r.preemptions, 'preemption')}`, '');
  const w = 60;
  lines.push('step  ' + r.threads.map((t) => t.padEnd(w)).join('  ').trimEnd());
  for (const row of r.rows) {
    const before = displayValue(row.target, row.before);
    const after = displayValue(row.target, row.after);
    const val = before === null ? '' : after === null || after === before ? ` = ${before}` : `: ${before} → ${after}`;
    const text = `${row.where === '' ? '' : `${row.where.split(' ← ')[0]}: `}${row.op} ${row.target}${val}`;
    const cols = r.threads.map((_, t) => (t === row.thread ? text : '').padEnd(w));
    lines.push(`${String(row.step).padStart(4)}  ${cols.join('  ').trimEnd()}`);
  }
  return `${lines.join('\n')}\n`;
}

function download(name: string, type: string, text: string): void {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: name, hidden: true });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export class ReplayView {
  readonly el: HTMLElement;
  private result: StepResponse | null = null;
  /** What the loaded trace's check or load said (the summary line when the settings bar still matches it). */
  private resultSummary = '';
  private k = 0;
  private timer: number | null = null;
  private busy = false;
  private checking: AbortController | null = null;
  private interval = 600;
  private selected: string | null = null;
  private filtered = false;
  private slice: { steps: Set<number>; objects: Set<string> } | null = null;
  /** Per object, the steps (ascending) whose thread changed it. */
  private changes = new Map<string, number[]>();
  /** Every object some step touched. */
  private known: string[] = [];
  private readonly trace: TraceView;
  private readonly code = new CodeView();
  private readonly ui: {
    run: HTMLButtonElement;
    cancel: HTMLButtonElement;
    progress: HTMLElement;
    summary: HTMLElement;
    stale: HTMLElement;
    strategy: HTMLSelectElement;
    preemptions: HTMLInputElement;
    seconds: HTMLInputElement;
    seed: HTMLInputElement;
    first: HTMLButtonElement;
    prev: HTMLButtonElement;
    play: HTMLButtonElement;
    next: HTMLButtonElement;
    last: HTMLButtonElement;
    toViolation: HTMLButtonElement;
    label: HTMLElement;
    scrub: HTMLInputElement;
    replay: HTMLInputElement;
    copyLink: HTMLButtonElement;
    exportText: HTMLButtonElement;
    exportJson: HTMLButtonElement;
    filter: HTMLInputElement;
    selection: HTMLElement;
    drawn: HTMLElement;
    monitor: HTMLElement;
    stepHead: HTMLElement;
    state: HTMLElement;
  };

  constructor(private readonly app: AppContext) {
    const num = (id: string, label: string, attrs: Record<string, string | number>): HTMLInputElement =>
      h('input', { id, type: 'number', 'aria-label': label, class: 'knob-num', ...attrs });
    const ui = {
      run: h('button', { id: 'run-check', class: 'primary', onclick: () => void this.runCheck() }, 'Run check'),
      cancel: h('button', { id: 'cancel-check', hidden: true, onclick: () => this.cancelCheck() }, 'Cancel'),
      progress: h('span', { id: 'check-progress', class: 'progress', role: 'status' }),
      summary: h('span', { id: 'check-summary', class: 'summary' }, 'Choose a scenario, switch a guard off, and run the checker.'),
      stale: h('div', { id: 'r-stale', class: 'stale', hidden: true }),
      strategy: h(
        'select',
        { id: 'k-strategy', 'aria-label': 'exploration strategy', title: 'dpor: exhaustive with partial-order reduction; dfs: every schedule; random and pct: sampled schedules (use the seed)' },
        ...app.catalog.strategies.map((s) => h('option', { value: s }, s)),
      ),
      preemptions: num('k-preemptions', 'preemption bound (empty: none)', { min: 0, max: 1000, placeholder: 'none', title: 'explore only schedules with at most this many preemptions (empty: no bound)' }),
      seconds: num('k-seconds', 'time budget in seconds', { min: 1, max: SECONDS_MAX, value: SECONDS_DEFAULT, title: `stop after this many seconds (at most ${SECONDS_MAX})` }),
      seed: num('k-seed', 'random seed', { min: 0, value: 1, title: 'the seed of random and pct' }),
      first: h('button', { id: 'r-first', title: 'first step (Home)', 'aria-label': 'first step', onclick: () => this.go(0) }, '|◀'),
      prev: h('button', { id: 'r-prev', title: 'step back (←)', 'aria-label': 'step back', onclick: () => this.go(this.k - 1) }, '◀'),
      play: h('button', { id: 'r-play', title: 'play / pause (Space)', onclick: () => this.togglePlay() }, '▶ Play'),
      next: h('button', { id: 'r-next', title: 'step forward (→)', 'aria-label': 'step forward', onclick: () => this.go(this.k + 1) }, '▶'),
      last: h('button', { id: 'r-last', title: 'last step (End)', 'aria-label': 'last step', onclick: () => this.go(this.steps) }, '▶|'),
      toViolation: h('button', { id: 'r-to-violation', title: 'the step where the invariant breaks (V)', onclick: () => this.goViolation() }, 'Go to violation'),
      label: h('span', { id: 'step-label', class: 'step-label', 'aria-live': 'off' }, 'step 0 / 0'),
      scrub: h('input', { id: 'r-scrub', type: 'range', min: 0, max: 0, value: 0, 'aria-label': 'step', oninput: () => this.go(Number(this.ui.scrub.value)) }),
      replay: h('input', {
        id: 'replay-string',
        type: 'text',
        spellcheck: false,
        placeholder: "a replay string from 'kvmmu check'",
        'aria-label': 'replay string',
        onkeydown: (e: Event) => {
          if ((e as KeyboardEvent).key === 'Enter') void this.loadReplay(this.ui.replay.value.trim(), 'pasted');
        },
      }),
      copyLink: h('button', { id: 'copy-link', title: 'copy a link to this step of this trace (the address holds the replay string and the step)', onclick: () => void this.copyLink() }, 'Copy link'),
      exportText: h('button', { id: 'export-text', title: 'download the trace as text, as kvmmu check prints it', onclick: () => this.exportAs('text') }, 'Export text'),
      exportJson: h('button', { id: 'export-json', title: 'download the trace as JSON: settings, replay string, rows, states, what each step touched', onclick: () => this.exportAs('json') }, 'JSON'),
      filter: h('input', { id: 'r-filter', type: 'checkbox', onchange: () => this.setFiltered(this.ui.filter.checked) }),
      selection: h('span', { id: 'r-selection', class: 'selection' }),
      drawn: h('span', { id: 'r-drawn', class: 'drawn-note', hidden: true }),
      monitor: h('div', { id: 'r-monitor', class: 'monitor idle' }, 'No counterexample loaded.'),
      stepHead: h('div', { id: 'r-step-head', class: 'step-head' }),
      state: h('div', { id: 'r-state', class: 'state' }),
    };
    this.ui = ui;
    const speed = h(
      'select',
      {
        id: 'r-speed',
        'aria-label': 'playback speed',
        onchange: (e: Event) => {
          this.interval = Number((e.target as HTMLSelectElement).value);
          if (this.timer !== null) {
            this.stop();
            this.togglePlay();
          }
        },
      },
      ...SPEEDS.map(([name, ms]) => h('option', { value: ms, selected: ms === this.interval }, name)),
    );
    const traceEl = h('div', { id: 'r-trace', tabindex: 0, 'aria-label': 'the trace: one column per thread, one row per step (arrow keys step)' });
    this.trace = new TraceView(traceEl, { onStep: (k) => this.go(k), onObject: (id) => this.select(id), onCode: () => this.code.open() });
    this.el = h(
      'section',
      { id: 'view-replay', class: 'view' },
      h(
        'div',
        { class: 'toolbar' },
        ui.run,
        ui.cancel,
        h(
          'span',
          { class: 'knobs', role: 'group', 'aria-label': "the checker's settings" },
          h('label', null, 'strategy ', ui.strategy),
          h('label', null, 'preemptions ≤ ', ui.preemptions),
          h('label', null, 'budget ', ui.seconds, ' s'),
          h('label', null, 'seed ', ui.seed),
        ),
        ui.progress,
        ui.summary,
      ),
      ui.stale,
      h(
        'div',
        { class: 'toolbar' },
        h('span', { class: 'transport' }, ui.first, ui.prev, ui.play, ui.next, ui.last),
        ui.label,
        ui.scrub,
        ui.toViolation,
        speed,
        h('span', { class: 'replay-box' }, ui.replay, h('button', { id: 'load-replay', onclick: () => void this.loadReplay(this.ui.replay.value.trim(), 'pasted') }, 'Load')),
        h('span', { class: 'link-box' }, ui.copyLink, ui.exportText, ui.exportJson),
      ),
      ui.monitor,
      h(
        'div',
        { class: 'toolbar causal' },
        h('label', { title: 'hide the steps that touch nothing the violation depends on (see the Legend)' }, ui.filter, ' only steps the violation depends on'),
        ui.drawn,
        ui.selection,
      ),
      h('div', { class: 'panes' }, h('div', { class: 'trace-pane' }, traceEl), h('div', { class: 'state-pane', 'aria-label': 'the state before and after the step' }, ui.stepHead, this.code.el, ui.state)),
    );
    this.trace.setData([], [], 'Run the check: its counterexample appears here, one column per thread.');
    this.updateControls();
    this.renderSelection();
  }

  private get steps(): number {
    return this.result?.rows.length ?? 0;
  }

  /** What the address should hold for this view: the loaded trace's replay string and the step shown. */
  linkState(): { replay: string; step: number } | null {
    return this.result === null ? null : { replay: this.result.replay, step: this.k };
  }

  /** The settings bar changed: say whether what is shown is for other settings. */
  settingsChanged(): void {
    if (this.result !== null) this.stop();
    this.renderStale();
  }

  private renderStale(): void {
    const r = this.result;
    const note = this.ui.stale;
    if (r === null || sameSettings(this.app.settings(), r)) {
      note.hidden = true;
      if (r !== null && !this.busy) this.ui.summary.textContent = this.resultSummary;
      return;
    }
    note.hidden = false;
    fill(note, h('b', null, 'Settings changed: '), `the trace below is for ${describeSettings(r)}. Run the check again for ${describeSettings(namedOf(this.app.settings()))}.`);
  }

  private knobs(): { strategy?: string; preemptions?: number; seconds?: number; seed?: number } {
    const n = (el: HTMLInputElement): number | undefined => (el.value.trim() === '' ? undefined : Number(el.value));
    return { strategy: this.ui.strategy.value, preemptions: n(this.ui.preemptions), seconds: n(this.ui.seconds), seed: n(this.ui.seed) };
  }

  async runCheck(): Promise<void> {
    if (this.busy) return;
    this.stop();
    const s = this.app.settings();
    const checked = namedOf(s);
    this.setBusy(true, `checking ${describeSettings(checked)}…`);
    this.app.clearError();
    const abort = new AbortController();
    this.checking = abort;
    this.ui.cancel.hidden = false;
    this.ui.progress.textContent = 'starting…';
    const t0 = performance.now();
    try {
      const report = await api.checkStream({ ...settingsBody(s), ...this.knobs() }, (p) => this.showProgress(p), abort.signal);
      const text = describeReport(report);
      if (report.violation !== null) await this.show(report.violation.schedule, text);
      else {
        this.clear(report.complete ? 'No counterexample: the checker found no violation with these settings. Switch the scenario’s guard off to see the race.' : 'No counterexample found within the budget.');
        this.ui.summary.textContent = text;
      }
      this.app.announce(`Check finished: ${text}`);
      // The settings bar may have moved on while the check ran: say what the trace is for.
      if (this.result !== null && !sameSettings(this.app.settings(), this.result)) this.renderStale();
      if (this.result === null && !sameSettings(this.app.settings(), checked)) {
        this.ui.summary.textContent = `${text} (for ${describeSettings(checked)}; the settings have changed since)`;
      }
    } catch (e) {
      if (e instanceof Cancelled) {
        this.ui.summary.textContent = `Check cancelled after ${((performance.now() - t0) / 1000).toFixed(1)} s.`;
        this.app.announce('Check cancelled');
      } else {
        this.ui.summary.textContent = 'The check failed.';
        this.app.showError(e);
      }
    } finally {
      this.checking = null;
      this.ui.cancel.hidden = true;
      this.ui.progress.textContent = '';
      this.setBusy(false);
    }
  }

  private showProgress(p: CheckProgress): void {
    const abandoned = p.abandoned > 0 ? ` (${p.abandoned.toLocaleString('en')} abandoned as redundant)` : '';
    const pending = p.pending === null ? '' : ` · ${p.pending.toLocaleString('en')} alternatives pending`;
    // An estimate, and it grows as the search finds races (explore.ts ExploreProgress): labelled so.
    const estimate = p.estimate === null ? '' : ` · about ${p.estimate.toLocaleString('en')} executions in all (estimate)`;
    this.ui.progress.textContent = `${p.executions.toLocaleString('en')} executions${abandoned} · ${p.seconds.toFixed(1)} s${pending}${estimate}`;
  }

  cancelCheck(): void {
    this.checking?.abort();
  }

  /** Load a replay string (from the checker, a paste, a link or the play view), then show step `step` (default 0). */
  async loadReplay(replay: string, source: string, step = 0, applySettings = true): Promise<void> {
    if (this.busy) return;
    if (replay === '') {
      this.app.showError(new Error("paste a replay string, as 'kvmmu check' prints it"));
      return;
    }
    this.stop();
    this.setBusy(true, 'loading…');
    this.app.clearError();
    try {
      const r = await api.step({ replay });
      const summary = `${source}: ${plural(r.rows.length, 'step')}, ${plural(r.preemptions, 'preemption')}${r.violation !== null ? ` — VIOLATION of ${r.violation.invariant}` : ''}`;
      if (applySettings) this.app.applySettings({ scenario: r.scenario, mode: r.mode, guardsOff: r.guardsOff, indirectFastPath: r.indirectFastPath, pageMarking: r.pageMarking });
      this.setResult(r, summary, step);
    } catch (e) {
      this.ui.summary.textContent = 'The replay string did not load.';
      this.app.showError(e);
    } finally {
      this.setBusy(false);
    }
  }

  private async show(replay: string, summary: string): Promise<void> {
    this.setResult(await api.step({ replay }), summary, 0);
  }

  private setResult(r: StepResponse, summary: string, step: number): void {
    this.result = r;
    this.resultSummary = summary;
    this.ui.summary.textContent = summary;
    this.ui.replay.value = r.replay;
    this.changes = new Map();
    r.touches.forEach((ts, i) => {
      for (const t of ts) {
        if (!t.thread || !t.changed) continue;
        const list = this.changes.get(t.id) ?? [];
        list.push(i + 1);
        this.changes.set(t.id, list);
      }
    });
    this.known = [...new Set(r.touches.flat().map((t) => t.id))];
    this.slice = r.violation === null ? null : violationSlice(r.rows, r.touches, r.violation.step);
    if (this.selected !== null && !r.touches.some((ts) => ts.some((t) => t.id === this.selected))) this.selected = null;
    this.trace.setData(r.threads, r.rows, 'no steps', r.touches);
    const drawn = drawnSteps(r.scenario, r.mode, r.threads, r.rows);
    this.trace.setDrawn(drawn?.section ?? null, drawn?.steps ?? null);
    this.ui.drawn.hidden = drawn === null;
    if (drawn !== null) fill(this.ui.drawn, h('span', { class: 'doc-tag' }, 'doc'), ` marks the ${plural(drawn.steps.size, 'step')} the locking document draws (${drawn.section})`);
    this.trace.select(this.selected);
    this.setFiltered(this.filtered && this.slice !== null, false);
    this.renderStale();
    this.k = 0;
    this.go(step);
  }

  private clear(text: string): void {
    this.result = null;
    this.slice = null;
    this.changes = new Map();
    this.known = [];
    this.trace.setData([], [], text);
    this.ui.drawn.hidden = true;
    fill(this.ui.stepHead);
    fill(this.ui.state);
    this.code.show(null);
    this.ui.replay.value = '';
    this.k = 0;
    this.renderStale();
    this.renderMonitor();
    this.updateControls();
    this.renderSelection();
    this.app.linkChanged();
  }

  /** Select object `id` (again: clear the selection): the trace marks every step that touched it. */
  select(id: string | null): void {
    this.selected = id === this.selected ? null : id;
    this.trace.select(this.selected);
    this.renderSelection();
    this.renderStateNow();
    if (this.selected !== null) {
      const { touched } = this.trace.stepsTouching(this.selected);
      this.app.announce(`${this.objectName(this.selected)} selected: touched at ${plural(touched.length, 'step')}`);
    }
  }

  private objectName(id: string): string {
    return objectLabel(id);
  }

  private renderSelection(): void {
    const el = this.ui.selection;
    if (this.selected === null || this.result === null) {
      fill(el, h('span', { class: 'muted' }, 'Select an SPTE, frame, bitmap word or lock (in the state panel, or a row’s target) to mark every step that touched it.'));
      return;
    }
    const { touched, changed } = this.trace.stepsTouching(this.selected);
    fill(
      el,
      h('b', null, this.objectName(this.selected)),
      `: touched at ${plural(touched.length, 'step')}`,
      touched.length === 0 ? '' : ` (${touched.join(', ')})`,
      changed.length === 0 ? '' : `, changed at ${changed.join(', ')}`,
      ' ',
      h('button', { id: 'clear-selection', onclick: () => this.select(null) }, 'Clear'),
    );
  }

  /** Show only the steps the violation depends on (or all); `redraw`: the monitor's line too (its hint). */
  private setFiltered(on: boolean, redraw = true): void {
    this.filtered = on && this.slice !== null;
    this.ui.filter.checked = this.filtered;
    this.ui.filter.disabled = this.slice === null;
    this.trace.setFilter(this.filtered ? this.slice!.steps : null);
    if (redraw) this.renderMonitor();
  }

  private lastChange(id: string): number | null {
    const list = this.changes.get(id);
    if (list === undefined) return null;
    let last: number | null = null;
    for (const s of list) if (s <= this.k) last = s;
    return last;
  }

  private links(): StateLinks {
    return {
      selected: this.selected,
      lastChange: (id) => this.lastChange(id),
      known: this.known,
      select: (id) => this.select(id),
      go: (step) => {
        this.stop();
        this.go(step);
      },
    };
  }

  private renderStateNow(): void {
    const r = this.result;
    if (r === null) return;
    const row = this.k === 0 ? null : r.rows[this.k - 1]!;
    renderState(this.ui.state, this.k === 0 ? null : r.states[this.k - 1]!, r.states[this.k]!, row, this.links());
  }

  /** Show the state after step k (0: before the first step). */
  go(k: number): void {
    const r = this.result;
    if (r === null) return;
    const was = this.k;
    this.k = Math.max(0, Math.min(this.steps, k));
    if (this.k === this.steps) this.stop();
    const row = this.k === 0 ? null : r.rows[this.k - 1]!;
    // The banner and the controls first: the trace scrolls to the current step once the panes have their final height.
    this.renderMonitor(was);
    this.updateControls();
    renderStepHead(this.ui.stepHead, row, r.threads, this.steps);
    this.code.show(row);
    this.renderStateNow();
    this.trace.setCurrent(this.k, r.violation?.step ?? null);
    this.app.linkChanged();
  }

  private goViolation(): void {
    const v = this.result?.violation;
    if (v !== null && v !== undefined) this.go(v.step);
  }

  private renderMonitor(was: number | null = null): void {
    const r = this.result;
    const m = this.ui.monitor;
    if (r === null) {
      m.className = 'monitor idle';
      fill(m, 'No counterexample loaded.');
      return;
    }
    const v = r.violation;
    const slice = this.slice;
    const causes = slice === null ? null : `It depends on ${plural(slice.steps.size, 'step')} of ${r.rows.length}: tick “only steps the violation depends on” to see just those.`;
    if (v !== null && this.k >= v.step) {
      m.className = 'monitor violation';
      fill(
        m,
        h('div', null, h('b', null, `✗ Invariant broken at step ${v.step}: ${v.invariant}`), v.statement === '' ? null : ` — ${v.statement}`),
        h('div', { class: 'message', id: 'r-violation-message' }, v.message),
      );
      if (was !== null && was < v.step) this.app.announce(`Invariant broken at step ${v.step}: ${v.invariant}. ${v.message}`);
    } else if (v !== null) {
      m.className = 'monitor ok';
      fill(m, `✓ Every invariant holds so far. This schedule breaks ${v.invariant} at step ${v.step}. `, this.filtered ? '' : h('span', { class: 'muted' }, causes ?? ''));
      if (was !== null && was >= v.step) this.app.announce('Every invariant holds so far.');
    } else {
      m.className = 'monitor ok';
      fill(m, r.finished ? '✓ Every invariant holds on this schedule.' : '✓ Every invariant holds so far.');
    }
  }

  private updateControls(): void {
    const n = this.steps;
    const none = this.result === null || this.busy;
    this.ui.first.disabled = none || this.k === 0;
    this.ui.prev.disabled = none || this.k === 0;
    this.ui.next.disabled = none || this.k >= n;
    this.ui.last.disabled = none || this.k >= n;
    this.ui.play.disabled = none || (this.k >= n && this.timer === null);
    this.ui.toViolation.disabled = none || this.result?.violation === null;
    this.ui.scrub.max = String(n);
    this.ui.scrub.value = String(this.k);
    this.ui.scrub.disabled = none;
    this.ui.copyLink.disabled = this.result === null;
    this.ui.exportText.disabled = this.result === null;
    this.ui.exportJson.disabled = this.result === null;
    this.ui.play.textContent = this.timer !== null ? '❚❚ Pause' : '▶ Play';
    this.ui.label.textContent = `step ${this.k} / ${n}`;
  }

  private setBusy(busy: boolean, text?: string): void {
    this.busy = busy;
    this.ui.run.disabled = busy;
    if (busy && text !== undefined) this.ui.summary.textContent = text;
    this.el.classList.toggle('busy', busy);
    this.updateControls();
  }

  private async copyLink(): Promise<void> {
    this.app.linkChanged();
    const url = location.href;
    try {
      await navigator.clipboard.writeText(url);
      this.app.announce('Link copied');
      this.ui.copyLink.textContent = 'Copied ✓';
    } catch {
      // No clipboard (an insecure origin, a denied permission): show the link to copy by hand.
      window.prompt('Copy this link:', url);
    }
    setTimeout(() => (this.ui.copyLink.textContent = 'Copy link'), 1500);
  }

  private exportAs(kind: 'text' | 'json'): void {
    const r = this.result;
    if (r === null) return;
    const base = `kvmmu-${r.scenario}-${r.rows.length}-steps`;
    if (kind === 'text') download(`${base}.txt`, 'text/plain', traceText(r));
    else {
      const { scenario, mode, guardsOff, indirectFastPath, pageMarking, replay, threads, rows, states, violation, preemptions, touches } = r;
      download(`${base}.json`, 'application/json', `${JSON.stringify({ scenario, mode, guardsOff, indirectFastPath, pageMarking, replay, threads, preemptions, violation, rows, states, touches }, null, 2)}\n`);
    }
  }

  togglePlay(): void {
    if (this.timer !== null) {
      this.stop();
      return;
    }
    if (this.result === null || this.busy) return;
    if (this.k >= this.steps) this.go(0);
    this.timer = window.setInterval(() => this.go(this.k + 1), this.interval);
    this.updateControls();
  }

  stop(): void {
    if (this.timer === null) return;
    window.clearInterval(this.timer);
    this.timer = null;
    this.updateControls();
  }

  /** Keys: ← → step, Space plays/pauses, Home/End, V jumps to the violation. Returns true when handled. */
  onKey(e: KeyboardEvent): boolean {
    switch (e.key) {
      case 'ArrowRight':
        this.stop();
        this.go(this.k + 1);
        return true;
      case 'ArrowLeft':
        this.stop();
        this.go(this.k - 1);
        return true;
      case ' ':
        this.togglePlay();
        return true;
      case 'Home':
        this.stop();
        this.go(0);
        return true;
      case 'End':
        this.stop();
        this.go(this.steps);
        return true;
      case 'v':
      case 'V':
        this.stop();
        this.goViolation();
        return true;
      case 'Escape':
        if (this.selected === null) return false;
        this.select(null);
        return true;
      default:
        return false;
    }
  }
}
