// The replay view: run the checker, then step forward and back through its counterexample with the state before and after each step.

import type { CheckReport, StepResponse } from '../api-types';
import { api } from './api';
import { plural, sameSettings, settingsBody, type AppContext } from './app';
import { h, fill } from './dom';
import { renderState, renderStepHead } from './state-view';
import { TraceView } from './trace-view';

/** One line on what a check found. */
export function describeReport(r: CheckReport): string {
  const rate = `${r.strategy}: ${plural(r.executions, 'execution')} in ${r.seconds.toFixed(2)} s`;
  if (r.violation !== null)
    return `${rate} — VIOLATION of ${r.violation.invariant}: ${plural(r.violation.steps, 'step')}, ${plural(r.violation.preemptions, 'preemption')}`;
  if (r.complete) return `${rate} — no violation: every schedule was explored${r.preemptionBound !== null ? ` within ${r.preemptionBound} preemptions` : ' (exhaustive)'}`;
  return `${rate} — no violation found, but the exploration is not exhaustive (${r.boundReached ? 'preemption bound' : 'budget ran out'})`;
}

const SPEEDS: readonly [string, number][] = [
  ['slow', 1200],
  ['normal', 600],
  ['fast', 200],
];

export class ReplayView {
  readonly el: HTMLElement;
  private result: StepResponse | null = null;
  private k = 0;
  private timer: number | null = null;
  private busy = false;
  private interval = 600;
  private readonly trace: TraceView;
  private readonly ui: {
    run: HTMLButtonElement;
    summary: HTMLElement;
    first: HTMLButtonElement;
    prev: HTMLButtonElement;
    play: HTMLButtonElement;
    next: HTMLButtonElement;
    last: HTMLButtonElement;
    toViolation: HTMLButtonElement;
    label: HTMLElement;
    scrub: HTMLInputElement;
    replay: HTMLInputElement;
    monitor: HTMLElement;
    stepHead: HTMLElement;
    state: HTMLElement;
  };

  constructor(private readonly app: AppContext) {
    const ui = {
      run: h('button', { id: 'run-check', class: 'primary', onclick: () => void this.runCheck() }, 'Run check'),
      summary: h('span', { id: 'check-summary', class: 'summary' }, 'Choose a scenario, switch a guard off, and run the checker.'),
      first: h('button', { id: 'r-first', title: 'first step (Home)', onclick: () => this.go(0) }, '|◀'),
      prev: h('button', { id: 'r-prev', title: 'step back (←)', onclick: () => this.go(this.k - 1) }, '◀'),
      play: h('button', { id: 'r-play', title: 'play / pause (Space)', onclick: () => this.togglePlay() }, '▶ Play'),
      next: h('button', { id: 'r-next', title: 'step forward (→)', onclick: () => this.go(this.k + 1) }, '▶'),
      last: h('button', { id: 'r-last', title: 'last step (End)', onclick: () => this.go(this.steps) }, '▶|'),
      toViolation: h('button', { id: 'r-to-violation', title: 'the step where the invariant breaks (V)', onclick: () => this.goViolation() }, 'Go to violation'),
      label: h('span', { id: 'step-label', class: 'step-label' }, 'step 0 / 0'),
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
          (e.target as HTMLSelectElement).blur();
        },
      },
      ...SPEEDS.map(([name, ms]) => h('option', { value: ms, selected: ms === this.interval }, name)),
    );
    const traceEl = h('div', { id: 'r-trace' });
    this.trace = new TraceView(traceEl);
    this.el = h(
      'section',
      { id: 'view-replay', class: 'view' },
      h('div', { class: 'toolbar' }, ui.run, ui.summary),
      h(
        'div',
        { class: 'toolbar' },
        h('span', { class: 'transport' }, ui.first, ui.prev, ui.play, ui.next, ui.last),
        ui.label,
        ui.scrub,
        ui.toViolation,
        speed,
        h('span', { class: 'replay-box' }, ui.replay, h('button', { id: 'load-replay', onclick: () => void this.loadReplay(this.ui.replay.value.trim(), 'pasted') }, 'Load')),
      ),
      ui.monitor,
      h('div', { class: 'panes' }, h('div', { class: 'trace-pane' }, traceEl), h('div', { class: 'state-pane' }, ui.stepHead, ui.state)),
    );
    this.trace.setData([], [], 'Run the check: its counterexample appears here, one column per thread.');
    this.updateControls();
  }

  private get steps(): number {
    return this.result?.rows.length ?? 0;
  }

  /** The settings bar changed: what is shown no longer matches it. */
  settingsChanged(): void {
    if (this.result === null) return;
    this.stop();
    if (!sameSettings(this.app.settings(), this.result)) this.ui.summary.textContent = 'Settings changed: run the check again (the trace below is for the previous settings).';
  }

  async runCheck(): Promise<void> {
    if (this.busy) return;
    this.stop();
    const s = this.app.settings();
    this.setBusy(true, `checking ${s.scenario.name}…`);
    this.app.clearError();
    try {
      const report = await api.check(settingsBody(s));
      this.ui.summary.textContent = describeReport(report);
      if (report.violation !== null) await this.show(report.violation.schedule);
      else this.clear(report.complete ? 'No counterexample: the checker found no violation with these settings. Switch the scenario’s guard off to see the race.' : 'No counterexample found within the budget.');
    } catch (e) {
      this.ui.summary.textContent = 'The check failed.';
      this.app.showError(e);
    } finally {
      this.setBusy(false);
    }
  }

  /** Load a replay string (from the checker, a paste, or the play view). */
  async loadReplay(replay: string, source: string): Promise<void> {
    if (this.busy) return;
    if (replay === '') {
      this.app.showError(new Error("paste a replay string, as 'kvmmu check' prints it"));
      return;
    }
    this.stop();
    this.setBusy(true, 'loading…');
    this.app.clearError();
    try {
      await this.show(replay);
      const r = this.result!;
      this.app.applySettings({ scenario: r.scenario, mode: r.mode, guardsOff: r.guardsOff, indirectFastPath: r.indirectFastPath, pageMarking: r.pageMarking });
      this.ui.summary.textContent = `${source}: ${plural(r.rows.length, 'step')}, ${plural(r.preemptions, 'preemption')}${r.violation !== null ? ` — VIOLATION of ${r.violation.invariant}` : ''}`;
    } catch (e) {
      this.ui.summary.textContent = 'The replay string did not load.';
      this.app.showError(e);
    } finally {
      this.setBusy(false);
    }
  }

  private async show(replay: string): Promise<void> {
    const r = await api.step({ replay });
    this.result = r;
    this.ui.replay.value = r.replay;
    this.trace.setData(r.threads, r.rows);
    this.k = 0;
    this.go(0);
  }

  private clear(text: string): void {
    this.result = null;
    this.trace.setData([], [], text);
    fill(this.ui.stepHead);
    fill(this.ui.state);
    this.ui.replay.value = '';
    this.k = 0;
    this.renderMonitor();
    this.updateControls();
  }

  /** Show the state after step k (0: before the first step). */
  go(k: number): void {
    const r = this.result;
    if (r === null) return;
    this.k = Math.max(0, Math.min(this.steps, k));
    if (this.k === this.steps) this.stop();
    const row = this.k === 0 ? null : r.rows[this.k - 1]!;
    // The banner and the controls first: the trace scrolls to the current step once the panes have their final height.
    this.renderMonitor();
    this.updateControls();
    renderStepHead(this.ui.stepHead, row, r.threads, this.steps);
    renderState(this.ui.state, this.k === 0 ? null : r.states[this.k - 1]!, r.states[this.k]!, row);
    this.trace.setCurrent(this.k, r.violation?.step ?? null);
  }

  private goViolation(): void {
    const v = this.result?.violation;
    if (v !== null && v !== undefined) this.go(v.step);
  }

  private renderMonitor(): void {
    const r = this.result;
    const m = this.ui.monitor;
    if (r === null) {
      m.className = 'monitor idle';
      fill(m, 'No counterexample loaded.');
      return;
    }
    const v = r.violation;
    if (v !== null && this.k >= v.step) {
      m.className = 'monitor violation';
      fill(
        m,
        h('div', null, h('b', null, `✗ Invariant broken at step ${v.step}: ${v.invariant}`), v.statement === '' ? null : ` — ${v.statement}`),
        h('div', { class: 'message', id: 'r-violation-message' }, v.message),
      );
    } else if (v !== null) {
      m.className = 'monitor ok';
      fill(m, `✓ Every invariant holds so far. This schedule breaks ${v.invariant} at step ${v.step}.`);
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
      default:
        return false;
    }
  }
}
