// Play the scheduler: the user picks which thread runs next (clicks and keys are queued, none is dropped), the invariant monitor watches, and the page says when the race is found.

import type { CheckReport, NextOperation, StepResponse } from '../api-types';
import { api } from './api';
import { encodeRuns, namedOf, plural, sameSettings, scheduleOfReplay, settingsBody, type AppContext, type NamedSettings } from './app';
import { h, fill } from './dom';
import { describeReport } from './replay-view';
import { renderState, renderStepHead } from './state-view';
import { TraceView } from './trace-view';

/** The schedule as coloured runs, one block per run of the same thread. */
function scheduleStrip(schedule: readonly number[], threads: readonly string[]): HTMLElement {
  const runs: [number, number][] = [];
  for (const t of schedule) {
    const last = runs[runs.length - 1];
    if (last !== undefined && last[0] === t) last[1]++;
    else runs.push([t, 1]);
  }
  return h(
    'div',
    { class: 'strip' },
    ...runs.map(([t, n]) => h('span', { class: `run t${t % 6}`, style: `flex-grow:${n}`, title: `${threads[t] ?? t}: ${plural(n, 'step')}` }, String(n))),
  );
}

export class PlayView {
  readonly el: HTMLElement;
  private schedule: number[] = [];
  private redo: number[] = [];
  private result: StepResponse | null = null;
  private busy = false;
  private compared: CheckReport | null = null;
  /** The settings the game is played with (a change of the settings bar starts a new game). */
  private playing: NamedSettings | null = null;
  /** Moves (clicks and keys) run one after another: a key pressed while a step is on its way is not dropped. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly trace: TraceView;
  private readonly ui: {
    undo: HTMLButtonElement;
    redo: HTMLButtonElement;
    reset: HTMLButtonElement;
    status: HTMLElement;
    threads: HTMLElement;
    monitor: HTMLElement;
    compare: HTMLElement;
    stepHead: HTMLElement;
    state: HTMLElement;
  };

  constructor(private readonly app: AppContext) {
    this.ui = {
      undo: h('button', { id: 'p-undo', title: 'take the last step back (←)', onclick: () => void this.undo() }, '↶ Undo'),
      redo: h('button', { id: 'p-redo', title: 'run the step you took back again (→)', onclick: () => void this.redoStep() }, '↷ Redo'),
      reset: h('button', { id: 'p-reset', title: 'start over', onclick: () => void this.enqueue(() => this.reset()) }, 'Reset'),
      status: h('span', { id: 'p-status', class: 'step-label' }),
      threads: h('div', { id: 'p-threads', class: 'thread-buttons' }),
      monitor: h('div', { id: 'p-monitor', class: 'monitor ok' }),
      compare: h('div', { id: 'p-compare', class: 'compare', hidden: true }),
      stepHead: h('div', { id: 'p-step-head', class: 'step-head' }),
      state: h('div', { id: 'p-state', class: 'state' }),
    };
    const traceEl = h('div', { id: 'p-trace' });
    this.trace = new TraceView(traceEl);
    this.el = h(
      'section',
      { id: 'view-play', class: 'view' },
      h(
        'div',
        { class: 'toolbar' },
        h('span', { class: 'transport' }, this.ui.undo, this.ui.redo, this.ui.reset),
        this.ui.status,
        h('span', { class: 'hint' }, 'You are the scheduler: pick the thread that runs the next operation (keys 1–9). Find the interleaving that breaks an invariant.'),
      ),
      this.ui.threads,
      this.ui.monitor,
      this.ui.compare,
      h('div', { class: 'panes' }, h('div', { class: 'trace-pane' }, traceEl), h('div', { class: 'state-pane' }, this.ui.stepHead, this.ui.state)),
    );
  }

  /** The view is shown or the settings changed: start over if what is on screen is for other settings. */
  async activate(): Promise<void> {
    const s = this.app.settings();
    if (this.playing === null || this.result === null || !sameSettings(s, this.playing)) await this.enqueue(() => this.reset());
  }

  /** The moves so far, run-length (for the address), or null before the first game. */
  linkState(): string | null {
    return this.playing === null ? null : encodeRuns(this.schedule);
  }

  /** Start a game at a position a link names (the settings bar already shows its settings). */
  async restore(schedule: readonly number[]): Promise<void> {
    await this.enqueue(async () => {
      this.schedule = [...schedule];
      this.redo = [];
      this.compared = null;
      this.ui.compare.hidden = true;
      this.playing = namedOf(this.app.settings());
      if (!(await this.refresh())) {
        this.schedule = [];
        await this.refresh();
      }
    });
  }

  /** Run `move` after the moves queued before it. */
  private enqueue(move: () => Promise<unknown>): Promise<void> {
    const next = this.queue.then(move);
    this.queue = next.catch(() => undefined);
    return next.then(() => undefined);
  }

  async reset(): Promise<void> {
    this.schedule = [];
    this.redo = [];
    this.compared = null;
    this.ui.compare.hidden = true;
    this.playing = namedOf(this.app.settings());
    await this.refresh();
  }

  /** Run thread t for one step (queued behind any move on its way). */
  run(t: number): Promise<void> {
    return this.enqueue(() => this.runNow(t));
  }

  private async runNow(t: number): Promise<void> {
    if (this.result === null || !this.result.enabled.includes(t)) return;
    this.schedule.push(t);
    if (this.redo.length > 0 && this.redo[this.redo.length - 1] === t) this.redo.pop();
    else this.redo = [];
    if (!(await this.refresh())) this.schedule.pop();
  }

  undo(): Promise<void> {
    return this.enqueue(async () => {
      if (this.schedule.length === 0) return;
      this.redo.push(this.schedule.pop()!);
      if (!(await this.refresh())) this.schedule.push(this.redo.pop()!);
    });
  }

  redoStep(): Promise<void> {
    return this.enqueue(async () => {
      if (this.redo.length === 0) return;
      await this.runNow(this.redo[this.redo.length - 1]!);
    });
  }

  private async refresh(): Promise<boolean> {
    this.busy = true;
    this.el.classList.add('busy');
    this.renderButtons();
    let ok = false;
    try {
      this.result = await api.step({ ...settingsBody(this.app.settings()), schedule: this.schedule, peek: true });
      this.app.clearError();
      ok = true;
    } catch (e) {
      this.app.showError(e);
    }
    this.busy = false;
    this.el.classList.remove('busy');
    this.renderButtons();
    if (ok) this.render();
    this.app.linkChanged();
    return ok;
  }

  private render(): void {
    const r = this.result!;
    const n = r.rows.length;
    this.ui.status.textContent = `step ${n} · ${plural(r.preemptions, 'preemption')}`;
    this.renderMonitor();
    const row = n === 0 ? null : r.rows[n - 1]!;
    renderStepHead(this.ui.stepHead, row, r.threads, null);
    renderState(this.ui.state, n === 0 ? null : r.states[n - 1]!, r.states[n]!, row);
    this.trace.setData(r.threads, r.rows, 'Pick a thread to run its first operation.');
    this.trace.setCurrent(n, r.violation?.step ?? null);
  }

  private renderButtons(): void {
    const r = this.result;
    if (r === null) {
      fill(this.ui.threads);
      return;
    }
    const next = new Map<number, NextOperation>((r.next ?? []).map((x) => [x.thread, x]));
    fill(
      this.ui.threads,
      ...r.threads.map((name, t) => {
        const nx = next.get(t);
        const can = r.enabled.includes(t);
        const status = nx?.status ?? (r.finished ? (r.violation !== null ? 'stopped' : 'done') : 'blocked');
        return h(
          'div',
          { class: `thread-card t${t % 6}${can ? '' : ' disabled'}` },
          h(
            'button',
            {
              class: 'run-thread',
              'data-thread': t,
              disabled: this.busy || !can,
              title: t < 9 ? `key ${t + 1}` : null,
              onclick: () => void this.run(t),
            },
            h('span', { class: 'key' }, t < 9 ? String(t + 1) : ''),
            ` Run ${name}`,
          ),
          h('div', { class: 'next' }, h('span', { class: `status ${status}` }, status), nx?.op ? h('span', null, ' next: ', nx.where ? `${nx.where.split(' ← ')[0]}: ` : '', h('b', null, nx.op), ` ${nx.target ?? ''}`) : null),
        );
      }),
    );
    this.ui.undo.disabled = this.busy || this.schedule.length === 0;
    this.ui.redo.disabled = this.busy || this.redo.length === 0;
    this.ui.reset.disabled = this.busy;
  }

  private renderMonitor(): void {
    const r = this.result!;
    const m = this.ui.monitor;
    const v = r.violation;
    if (v !== null) {
      if (!m.classList.contains('found')) this.app.announce(`You found the race! ${v.invariant} broke at step ${v.step}. ${v.message}`);
      m.className = 'monitor violation found';
      fill(
        m,
        h('div', { id: 'race-found', class: 'big' }, `You found the race! ${v.invariant} broke at step ${v.step}, after ${plural(r.preemptions, 'preemption')}.`),
        v.statement === '' ? null : h('div', null, h('b', null, 'The invariant: '), v.statement),
        h('div', { class: 'message' }, v.message),
        h(
          'div',
          { class: 'actions' },
          h('button', { id: 'p-compare-btn', class: 'primary', onclick: () => void this.compare() }, "Compare with the checker's shortest schedule"),
          h('button', { onclick: () => this.app.openReplay(r.replay, 'your schedule') }, 'Open your schedule in the replay view'),
        ),
      );
      return;
    }
    if (r.finished) {
      if (!m.classList.contains('finished')) this.app.announce('Every thread finished and every invariant held.');
      m.className = 'monitor ok finished';
      fill(
        m,
        h('b', null, '✓ Every thread finished and every invariant held.'),
        ' This interleaving is safe. ',
        r.guardsOff.length === 0 ? 'With every guard on the checker proves the scenario clean: switch its guard off to make the race possible. ' : 'Undo some steps and try another order. ',
        h('button', { onclick: () => void this.compare() }, 'Show the checker’s schedule'),
      );
      return;
    }
    m.className = 'monitor ok';
    fill(m, h('b', null, '✓ Invariant monitor: every invariant holds so far.'), r.guardsOff.length === 0 && r.mode !== null ? ' All guards are on: the checker finds no race in this scenario; switch its guard off (★) to make one possible.' : '');
  }

  /** Run the checker with the same settings and show its schedule next to the user's. */
  compare(): Promise<void> {
    return this.enqueue(() => this.compareNow());
  }

  private async compareNow(): Promise<void> {
    const r = this.result;
    if (r === null) return;
    const played = this.playing;
    this.busy = true;
    this.renderButtons();
    const box = this.ui.compare;
    box.hidden = false;
    fill(box, 'Running the checker…');
    try {
      const c = this.compared ?? (await api.check(settingsBody(this.app.settings())));
      // The settings bar moved on while the checker ran: this game is over, its comparison too.
      if (played !== this.playing) return;
      this.compared = c;
      const v = c.violation;
      const yours = h('div', { class: 'cmp-row' }, h('span', { class: 'who' }, 'you'), scheduleStrip(r.schedule, r.threads), h('span', null, `${plural(r.rows.length, 'step')}, ${plural(r.preemptions, 'preemption')}`));
      if (v === null) {
        fill(box, h('div', null, describeReport(c)), yours);
        return;
      }
      const theirs = scheduleOfReplay(v.schedule);
      fill(
        box,
        h('div', null, h('b', null, "The checker's shortest counterexample"), ` (${describeReport(c)})`),
        h('div', { class: 'cmp-row' }, h('span', { class: 'who' }, 'checker'), scheduleStrip(theirs, c.threads), h('span', null, `${plural(v.steps, 'step')}, ${plural(v.preemptions, 'preemption')}`)),
        yours,
        h('div', { class: 'muted' }, 'Each block is a run of steps by one thread; a change of colour where the thread could have gone on is a preemption.'),
        h('div', { class: 'actions' }, h('button', { id: 'p-open-checker', onclick: () => this.app.openReplay(v.schedule, "the checker's schedule") }, "Open the checker's schedule in the replay view"), h('code', { class: 'replay-code' }, v.schedule)),
      );
    } catch (e) {
      box.hidden = true;
      this.app.showError(e);
    } finally {
      this.busy = false;
      this.renderButtons();
      // The comparison took room from the panes: keep the last step in view.
      if (this.result !== null) this.trace.setCurrent(this.result.rows.length, this.result.violation?.step ?? null);
    }
  }

  /** Keys: 1–9 run that thread, ← undo, → redo. */
  onKey(e: KeyboardEvent): boolean {
    if (/^[1-9]$/.test(e.key)) {
      void this.run(Number(e.key) - 1);
      return true;
    }
    if (e.key === 'ArrowLeft' || e.key === 'Backspace') {
      void this.undo();
      return true;
    }
    if (e.key === 'ArrowRight') {
      void this.redoStep();
      return true;
    }
    return false;
  }
}
