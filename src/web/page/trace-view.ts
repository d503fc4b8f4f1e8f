// The interleaving as the locking document draws it: one column per thread, one row per step, the current step highlighted; a thread's page-table walk folds into one row; the steps that touched a selected object are marked.

import type { TraceRow, Touch } from '../api-types';
import { h, fill, type Child } from './dom';
import { displayValue, objectLabel } from './names';

/** Words of `b` that are not in `a` (set bits appear, e.g. "W" or "D" in an SPTE's text). */
function added(a: string, b: string): Set<string> {
  const have = new Set(a.split(' '));
  return new Set(b.split(' ').filter((w) => !have.has(w)));
}

/** before → after, with the words that appear in green and the ones that vanish struck through. */
export function valueChange(before: string | null, after: string | null): HTMLElement | null {
  if (before === null) return null;
  if (after === null || after === before) return h('div', { class: 'val' }, '= ', before);
  const gone = added(after, before);
  const came = added(before, after);
  const words = (text: string, mark: Set<string>, cls: string): (HTMLElement | string)[] =>
    text.split(' ').flatMap((w, i) => [i === 0 ? '' : ' ', mark.has(w) ? h('span', { class: cls }, w) : w]);
  return h('div', { class: 'val' }, h('span', { class: 'before' }, ...words(before, gone, 'gone')), ' → ', h('span', { class: 'after' }, ...words(after, came, 'came')));
}

/** The innermost kvmmu function of a row's call chain (the rest goes in the tooltip). */
export function fnOf(where: string): string {
  return where.split(' ← ')[0] ?? '';
}

/** A row's values as the page names them (vCPU modes, frame flags, shadow-page roles decoded). */
export function rowValues(r: TraceRow): { before: string | null; after: string | null; target: string } {
  return { before: displayValue(r.target, r.before), after: displayValue(r.target, r.after), target: r.target };
}

/**
 * Runs of one thread's page-table walk: two or more consecutive steps of one thread, each a 64-bit load of an
 * SPTE from the same function (the hardware walk, the fast path's lockless walk). Returns [first, last] step
 * numbers (1-based).
 */
export function walkRuns(rows: readonly TraceRow[]): [number, number][] {
  const runs: [number, number][] = [];
  const isWalk = (r: TraceRow): boolean => r.op === 'load64' && r.target.startsWith('spte (');
  for (let i = 0; i < rows.length; ) {
    const r = rows[i]!;
    let j = i + 1;
    if (isWalk(r)) while (j < rows.length && isWalk(rows[j]!) && rows[j]!.thread === r.thread && fnOf(rows[j]!.where) === fnOf(r.where)) j++;
    if (j - i >= 2) runs.push([r.step, rows[j - 1]!.step]);
    i = j;
  }
  return runs;
}

interface Line {
  /** Steps on this line: one, or a folded walk's. */
  readonly first: number;
  readonly last: number;
  readonly cells: HTMLElement[];
  /** A folded walk's summary line (its steps also have lines of their own, hidden while folded). */
  readonly group: boolean;
}

export interface TraceCallbacks {
  /** The user clicked a row: show that step. */
  onStep?(step: number): void;
  /** The user clicked the object a row touched: select it. */
  onObject?(id: string): void;
  /** The user clicked a row's function: show its code. */
  onCode?(step: number): void;
}

export class TraceView {
  private lines: Line[] = [];
  private rows: readonly TraceRow[] = [];
  private touches: readonly Touch[][] = [];
  /** Folded walks by first step; true while expanded. */
  private readonly open = new Map<number, boolean>();
  private runs: [number, number][] = [];
  private selected: string | null = null;
  private visible: Set<number> | null = null;
  private current = 0;

  constructor(
    private readonly root: HTMLElement,
    private readonly cb: TraceCallbacks = {},
  ) {
    root.classList.add('trace');
  }

  /** Draw the steps; `rows[k]` is step k+1, `touches[k]` what it touched. */
  setData(threads: readonly string[], rows: readonly TraceRow[], emptyText = 'no steps yet', touches: readonly Touch[][] = []): void {
    this.rows = rows;
    this.touches = touches;
    this.open.clear();
    this.runs = walkRuns(rows);
    this.root.style.setProperty('--threads', String(threads.length));
    const head = [h('div', { class: 'th step-no' }, '#'), ...threads.map((t, i) => h('div', { class: `th t${i % 6}` }, t))];
    const inRun = new Map<number, [number, number]>();
    for (const run of this.runs) for (let s = run[0]; s <= run[1]; s++) inRun.set(s, run);
    this.lines = [];
    for (const r of rows) {
      const run = inRun.get(r.step);
      if (run !== undefined && run[0] === r.step) this.lines.push(this.groupLine(threads.length, run));
      this.lines.push({ first: r.step, last: r.step, group: false, cells: this.stepCells(threads.length, r, run !== undefined) });
    }
    fill(this.root, ...head, ...this.lines.flatMap((l) => l.cells), rows.length === 0 ? h('div', { class: 'trace-empty' }, emptyText) : null);
    this.layout();
  }

  /** The object a row names: the first one its thread's own operation touched. */
  private objectOf(step: number): string | null {
    return this.touches[step - 1]?.find((x) => x.thread)?.id ?? null;
  }

  private stepCells(n: number, r: TraceRow, folded: boolean): HTMLElement[] {
    const cells: HTMLElement[] = [h('div', { class: 'step-no', 'data-step': r.step }, String(r.step))];
    const v = rowValues(r);
    const obj = this.objectOf(r.step);
    for (let t = 0; t < n; t++) {
      if (t !== r.thread) {
        cells.push(h('div', { class: 'cell empty', 'data-step': r.step }));
        continue;
      }
      cells.push(
        h(
          'div',
          { class: `cell t${t % 6}${folded ? ' in-walk' : ''}`, 'data-step': r.step, 'data-thread': t, title: r.where === '' ? null : r.where },
          r.where === '' ? null : this.fnLabel(r),
          h(
            'div',
            { class: 'op' },
            h('b', null, r.op),
            ' ',
            obj === null || this.cb.onObject === undefined
              ? v.target
              : h('span', { class: 'obj', 'data-obj': obj, title: 'select: mark every step that touched it', onclick: (e: Event) => this.clickObject(e, obj) }, v.target),
          ),
          valueChange(v.before, v.after),
          this.alsoWrote(r.step, obj),
        ),
      );
    }
    for (const c of cells) c.addEventListener('click', () => this.cb.onStep?.(r.step));
    return cells;
  }

  /**
   * What else happened in this step: plain stores the thread made after its operation and before its next one,
   * and whether an invariant monitor took note (its own state changed: a free, a write, a flush it will check).
   */
  private alsoWrote(step: number, obj: string | null): HTMLElement | null {
    const ts = this.touches[step - 1] ?? [];
    const ids = ts.filter((t) => t.thread && t.write && t.id !== obj).map((t) => t.id);
    const noted = ts.some((t) => !t.thread && t.write && t.id.startsWith('ghost:'));
    if (ids.length === 0 && !noted) return null;
    const obj1 = (id: string): Child =>
      this.cb.onObject === undefined ? objectLabel(id) : h('span', { class: 'obj', 'data-obj': id, onclick: (e: Event) => this.clickObject(e, id) }, objectLabel(id));
    return h(
      'div',
      { class: `also${ids.length === 0 ? ' only-noted' : ''}`, title: 'plain stores the thread made in this step, after its operation and before its next one; a note the invariant monitor took (shown with the filter on)' },
      ids.length === 0 ? null : ['+ plain store to ', ...ids.flatMap((id, i) => [i === 0 ? '' : ', ', obj1(id)])],
      ids.length > 0 && noted ? ' · ' : null,
      noted ? h('span', { class: 'noted' }, 'the monitor took note') : null,
    );
  }

  private fnLabel(r: TraceRow): HTMLElement {
    if (this.cb.onCode === undefined) return h('div', { class: 'fn' }, fnOf(r.where));
    return h(
      'div',
      { class: 'fn' },
      h(
        'span',
        {
          class: 'fn-link',
          title: `show the code of ${fnOf(r.where)} (called from ${r.where.split(' ← ').slice(1).join(' ← ') || 'the thread'})`,
          onclick: (e: Event) => {
            e.stopPropagation();
            this.cb.onStep?.(r.step);
            this.cb.onCode?.(r.step);
          },
        },
        fnOf(r.where),
      ),
    );
  }

  private clickObject(e: Event, id: string): void {
    e.stopPropagation();
    this.cb.onObject?.(id);
  }

  private groupLine(n: number, run: [number, number]): Line {
    const [first, last] = run;
    const r = this.rows[first - 1]!;
    const rows = this.rows.slice(first - 1, last);
    const sps = rows.map((x) => /\(sp (\d+), #(\d+)\)/.exec(x.target)).map((m) => (m === null ? '?' : `sp ${m[1]} #${m[2]}`));
    const toggle = h(
      'button',
      {
        class: 'fold',
        'aria-expanded': 'false',
        title: 'show each step of the walk',
        onclick: (e: Event) => {
          e.stopPropagation();
          this.open.set(first, !(this.open.get(first) ?? false));
          this.layout();
        },
      },
      '▸',
    );
    const cells: HTMLElement[] = [h('div', { class: 'step-no group', 'data-step': first, 'data-last': last }, `${first}–${last}`)];
    for (let t = 0; t < n; t++) {
      if (t !== r.thread) {
        cells.push(h('div', { class: 'cell empty group', 'data-step': first, 'data-last': last }));
        continue;
      }
      cells.push(
        h(
          'div',
          { class: `cell t${t % 6} group`, 'data-step': first, 'data-last': last, 'data-thread': t, title: r.where },
          h('div', { class: 'fn' }, fnOf(r.where)),
          h('div', { class: 'op' }, toggle, ' ', h('b', null, 'page-table walk'), ` ${plural(last - first + 1)}: ${sps.join(' → ')}`),
          h('div', { class: 'val' }, `leaf = ${rowValues(rows[rows.length - 1]!).before ?? ''}`),
        ),
      );
    }
    for (const c of cells) c.addEventListener('click', () => this.cb.onStep?.(first));
    return { first, last, group: true, cells };
  }

  /** Show or hide lines: folded walks, and the filter. */
  private layout(): void {
    for (const l of this.lines) {
      const run = this.runs.find((x) => l.first >= x[0] && l.last <= x[1]);
      const expanded = run !== undefined && (this.open.get(run[0]) ?? false);
      let show: boolean;
      if (l.group) show = !expanded;
      else show = run === undefined || expanded;
      if (show && this.visible !== null) {
        show = false;
        for (let s = l.first; s <= l.last; s++) if (this.visible.has(s)) show = true;
      }
      for (const c of l.cells) c.hidden = !show;
      if (l.group) {
        const btn = l.cells.find((c) => !c.classList.contains('empty') && !c.classList.contains('step-no'))?.querySelector('button.fold');
        btn?.setAttribute('aria-expanded', String(expanded));
      }
    }
    // Expanded walks keep a line to fold them again: the first step of the walk shows the toggle.
    for (const run of this.runs) {
      const expanded = this.open.get(run[0]) ?? false;
      const line = this.lines.find((l) => !l.group && l.first === run[0]);
      const cell = line?.cells.find((c) => c.classList.contains('cell') && !c.classList.contains('empty'));
      if (cell === undefined) continue;
      cell.querySelector('button.unfold')?.remove();
      if (expanded)
        cell.prepend(
          h(
            'button',
            {
              class: 'unfold',
              'aria-expanded': 'true',
              title: 'fold the walk into one row',
              onclick: (e: Event) => {
                e.stopPropagation();
                this.open.set(run[0], false);
                this.layout();
              },
            },
            '▾ fold',
          ),
        );
    }
    this.mark();
  }

  /** Mark the steps the locking document draws with its line (null: none). */
  setDrawn(section: string | null, steps: ReadonlyMap<number, string> | null): void {
    for (const l of this.lines) {
      if (l.group) continue;
      const cell = l.cells.find((c) => c.classList.contains('cell') && !c.classList.contains('empty'));
      if (cell === undefined) continue;
      cell.querySelector('.drawn')?.remove();
      const text = steps?.get(l.first);
      if (text === undefined) continue;
      cell.classList.add('has-drawn');
      const op = cell.querySelector('.op');
      const mark = h('div', { class: 'drawn', title: `the locking document draws this step: ${section ?? ''}` }, h('span', { class: 'doc-tag' }, 'doc'), ' ', text);
      if (op !== null) op.before(mark);
      else cell.append(mark);
    }
    // A folded walk holding a drawn step says so.
    for (const l of this.lines) {
      if (!l.group) continue;
      let drawn = false;
      for (let k = l.first; k <= l.last; k++) if (steps?.has(k) === true) drawn = true;
      for (const c of l.cells) c.classList.toggle('has-drawn', drawn);
    }
  }

  /** Only show the steps in `steps` (null: all). */
  setFilter(steps: Set<number> | null): void {
    this.visible = steps;
    // The monitor's notes say why a step is kept: shown with the filter.
    this.root.classList.toggle('filtered', steps !== null);
    this.layout();
    this.scrollToCurrent();
  }

  /** Mark the steps that touched object `id` (null: none). */
  select(id: string | null): void {
    this.selected = id;
    this.mark();
  }

  /** Steps whose thread touched object `id`, and those of them that changed it. */
  stepsTouching(id: string): { touched: number[]; changed: number[] } {
    const touched: number[] = [];
    const changed: number[] = [];
    this.touches.forEach((ts, i) => {
      const t = ts.find((x) => x.id === id && x.thread);
      if (t === undefined) return;
      touched.push(i + 1);
      if (t.changed) changed.push(i + 1);
    });
    return { touched, changed };
  }

  private mark(): void {
    const sel = this.selected === null ? null : this.stepsTouching(this.selected);
    const touched = new Set(sel?.touched ?? []);
    const changed = new Set(sel?.changed ?? []);
    const k = this.current;
    for (const l of this.lines) {
      let hit = false;
      let chg = false;
      for (let s = l.first; s <= l.last; s++) {
        if (touched.has(s)) hit = true;
        if (changed.has(s)) chg = true;
      }
      // A hidden line (a folded walk's step, a step the filter hides) is not current: its walk's line is.
      const isCurrent = !l.cells[0]!.hidden && (l.group ? k >= l.first && k <= l.last : l.first === k);
      for (const c of l.cells) {
        c.classList.toggle('current', isCurrent);
        c.classList.toggle('future', l.first > k);
        c.classList.toggle('touches-sel', hit);
        c.classList.toggle('changes-sel', chg);
      }
      for (const o of l.cells.flatMap((c) => [...c.querySelectorAll<HTMLElement>('.obj')])) o.classList.toggle('selected', o.dataset.obj === this.selected);
    }
  }

  /**
   * Mark step `k` (1-based; 0 = before the first step) as current, the steps
   * after it as future, and `violationStep` (if any) as where an invariant broke.
   */
  setCurrent(k: number, violationStep: number | null, scroll = true): void {
    this.current = k;
    this.mark();
    for (const l of this.lines) {
      for (const c of l.cells) c.classList.toggle('broke', violationStep !== null && violationStep >= l.first && violationStep <= l.last && violationStep <= k);
    }
    if (scroll) this.scrollToCurrent();
  }

  private scrollToCurrent(): void {
    const k = this.current;
    const line = this.lines.find((l) => !l.cells[0]!.hidden && (k === 0 ? true : k >= l.first && k <= l.last));
    const cell = line?.cells.find((c) => c.classList.contains('cell') && !c.classList.contains('empty'));
    cell?.scrollIntoView({ block: 'nearest' });
  }
}

function plural(n: number): string {
  return `${n} load${n === 1 ? '' : 's'}`;
}
