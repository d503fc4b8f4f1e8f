// Where the code is: the model's function that made a step's access, beside the trace, with the line of the access marked.

import type { SourceResponse, TraceRow } from '../api-types';
import { api } from './api';
import { h, fill } from './dom';
import { fnOf } from './trace-view';

type Definition = SourceResponse['definitions'][number];

/** The access layer's methods an operation's name stands for (shm/access.ts Mem). */
const METHODS: Readonly<Record<string, readonly string[]>> = {
  load64: ['load64', 'load64Low'],
  store32: ['store32', 'storeRelease32'],
};

/** Lines (0-based, in `lines`) that call the access-layer method of operation `op`. */
export function accessLines(lines: readonly string[], op: string): number[] {
  const names = METHODS[op] ?? [op];
  const out: number[] = [];
  lines.forEach((l, i) => {
    const code = l.replace(/\/\/.*$/, '');
    if (names.some((n) => code.includes(`.${n}(`))) out.push(i);
  });
  return out;
}

export class CodeView {
  readonly el: HTMLDetailsElement;
  private readonly summary: HTMLElement;
  private readonly body: HTMLElement;
  private readonly cache = new Map<string, Promise<Definition[]>>();
  private row: TraceRow | null = null;
  private choice = 0;

  constructor() {
    this.summary = h('summary', { id: 'r-code-summary' }, 'Code');
    this.body = h('div', { class: 'code-body' });
    this.el = h('details', { id: 'r-code', class: 'code' }, this.summary, this.body);
    this.el.addEventListener('toggle', () => void this.render());
  }

  /** Show the code of step `row` (null: before the first step). */
  show(row: TraceRow | null): void {
    if (row?.step !== this.row?.step || row?.where !== this.row?.where) this.choice = 0;
    this.row = row;
    void this.render();
  }

  /** Open the box (a click on a row's function name). */
  open(): void {
    this.el.open = true;
    void this.render();
  }

  private definitions(fn: string): Promise<Definition[]> {
    let p = this.cache.get(fn);
    if (p === undefined) {
      p = api.source(fn).then(
        (r) => r.definitions,
        () => [],
      );
      this.cache.set(fn, p);
    }
    return p;
  }

  private async render(): Promise<void> {
    const row = this.row;
    const fn = row === null ? '' : fnOf(row.where);
    if (row === null || fn === '') {
      fill(this.summary, h('b', null, 'Code'), h('span', { class: 'muted' }, row === null ? ' — before the first step' : ' — this step’s function is not known'));
      fill(this.body);
      return;
    }
    fill(this.summary, h('b', null, 'Code: '), h('code', null, fn), h('span', { class: 'muted' }, ' — the function that made this step’s access'));
    if (!this.el.open) return;
    const defs = await this.definitions(fn);
    if (this.row !== row) return;
    if (defs.length === 0) {
      fill(this.body, h('p', { class: 'muted' }, `${fn} is not in the model's source (a scenario file's function?)`));
      return;
    }
    const d = defs[Math.min(this.choice, defs.length - 1)]!;
    const hits = new Set(accessLines(d.lines, row.op));
    fill(this.summary, h('b', null, 'Code: '), h('code', null, `${d.owner !== null && d.owner !== fn ? `${d.owner}.` : ''}${fn}`), h('span', { class: 'muted' }, ` — ${d.file}:${d.line}`));
    fill(
      this.body,
      defs.length > 1
        ? h(
            'div',
            { class: 'code-choices muted' },
            `${defs.length} functions have this name: `,
            ...defs.flatMap((x, i) => [
              i === 0 ? '' : ', ',
              h('button', { class: `code-choice${i === this.choice ? ' selected' : ''}`, onclick: () => ((this.choice = i), void this.render()) }, `${x.file}:${x.line}`),
            ]),
          )
        : null,
      hits.size === 0 ? h('div', { class: 'muted' }, `no line of ${fn} calls ${row.op} itself: the access is in a helper it calls`) : null,
      h(
        'pre',
        { class: 'code-lines', 'aria-label': `${d.file} from line ${d.line}` },
        ...d.lines.map((l, i) => h('div', { class: `code-line${hits.has(i) ? ' hit' : ''}`, 'data-line': d.line + i }, h('span', { class: 'ln' }, String(d.line + i)), l === '' ? ' ' : l)),
      ),
    );
    // The marked line in view inside the box (not the page: scrollIntoView would move the panes too).
    const pre = this.body.querySelector<HTMLElement>('pre.code-lines');
    const hit = this.body.querySelector<HTMLElement>('.code-line.hit');
    if (pre !== null && hit !== null) pre.scrollTop = Math.max(0, hit.offsetTop - pre.offsetTop - pre.clientHeight / 3);
  }
}
