// The interleaving as the locking document draws it: one column per thread, one row per step, the current step highlighted.

import type { TraceRow } from '../api-types';
import { h, fill } from './dom';

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
function fnOf(where: string): string {
  return where.split(' ← ')[0] ?? '';
}

export class TraceView {
  private rows: HTMLElement[][] = [];

  constructor(private readonly root: HTMLElement) {
    root.classList.add('trace');
  }

  /** Draw the steps; `rows[k]` is step k+1. */
  setData(threads: readonly string[], rows: readonly TraceRow[], emptyText = 'no steps yet'): void {
    this.root.style.setProperty('--threads', String(threads.length));
    const head = [h('div', { class: 'th step-no' }, '#'), ...threads.map((t, i) => h('div', { class: `th t${i % 6}` }, t))];
    this.rows = rows.map((r) => {
      const cells: HTMLElement[] = [h('div', { class: 'step-no', 'data-step': r.step }, String(r.step))];
      for (let t = 0; t < threads.length; t++) {
        if (t !== r.thread) {
          cells.push(h('div', { class: 'cell empty', 'data-step': r.step }));
          continue;
        }
        cells.push(
          h(
            'div',
            { class: `cell t${t % 6}`, 'data-step': r.step, 'data-thread': t, title: r.where === '' ? null : r.where },
            r.where === '' ? null : h('div', { class: 'fn' }, fnOf(r.where)),
            h('div', { class: 'op' }, h('b', null, r.op), ' ', r.target),
            valueChange(r.before, r.after),
          ),
        );
      }
      return cells;
    });
    fill(this.root, ...head, ...this.rows.flat(), rows.length === 0 ? h('div', { class: 'trace-empty' }, emptyText) : null);
  }

  /**
   * Mark step `k` (1-based; 0 = before the first step) as current, the steps
   * after it as future, and `violationStep` (if any) as where an invariant broke.
   */
  setCurrent(k: number, violationStep: number | null, scroll = true): void {
    this.rows.forEach((cells, i) => {
      const step = i + 1;
      for (const c of cells) {
        c.classList.toggle('current', step === k);
        c.classList.toggle('future', step > k);
        c.classList.toggle('broke', violationStep !== null && step === violationStep && step <= k);
      }
    });
    if (!scroll) return;
    const target = k === 0 ? this.rows[0] : this.rows[k - 1];
    const cell = target?.find((c) => c.classList.contains('cell') && !c.classList.contains('empty'));
    cell?.scrollIntoView({ block: 'nearest' });
  }
}
