// The legend: abbreviations, colours, the two meanings of "dirty", vCPU modes, how steps are linked to a selected object and to the violation, and the keys.

import type { ScenarioList } from '../api-types';
import { h, type Child } from './dom';
import { ABBREVIATIONS } from './names';

function swatch(cls: string, text: string): HTMLElement {
  return h('span', { class: `swatch ${cls}` }, text);
}

function dl(items: readonly [Child, Child][]): HTMLElement {
  return h('dl', null, ...items.flatMap(([t, d]) => [h('dt', null, t), h('dd', null, d)]));
}

export function legend(catalog: ScenarioList): HTMLElement {
  return h(
    'div',
    { class: 'legend-body' },
    h(
      'section',
      null,
      h('h2', null, 'Abbreviations'),
      dl(ABBREVIATIONS.map(([a, b]) => [h('code', null, a), b])),
    ),
    h(
      'section',
      null,
      h('h2', null, 'Two meanings of “dirty”'),
      dl([
        [h('b', null, 'D bit (SPTE)'), 'set by the hardware walk when the guest writes through the SPTE. KVM turns it into one of the two below when it changes or drops the SPTE.'],
        [h('b', null, 'DIRTY flag (frame)'), 'the host page’s flag (the page cache’s PG_dirty): swap-out writes the frame back to swap only if it is set. Lose it and the guest’s write is lost on swap-out (frame-dirty-before-drop).'],
        [h('b', null, 'Dirty bitmap (the log’s bit)'), 'one bit per gfn of a memslot with dirty logging on: KVM_GET_DIRTY_LOG reports it, so live migration copies the page again. Lose it and migration leaves a stale page (writable-spte-logged, dirty-or-write-protected).'],
      ]),
      h('h2', null, 'vCPU modes (KVM’s vcpu->mode)'),
      dl([
        [h('code', null, 'OUTSIDE_GUEST_MODE'), 'in the host: a remote TLB flush need not interrupt it (it flushes on entry)'],
        [h('code', null, 'IN_GUEST_MODE'), 'running the guest: its TLB may hold translations; a flush must kick it'],
        [h('code', null, 'EXITING_GUEST_MODE'), 'kicked out by a flusher, on its way out'],
        [h('code', null, 'READING_SHADOW_PAGE_TABLES'), 'in a lockless walk (the fast page fault): shadow pages must not be freed under it'],
      ]),
    ),
    h(
      'section',
      null,
      h('h2', null, 'Colours'),
      dl([
        [h('span', null, ...[0, 1, 2].map((t) => swatch(`t${t} thread-swatch`, `thread ${t + 1}`))), 'each thread has its colour: its column in the trace, its button in the play view, its runs in the schedule strips'],
        [swatch('cur', 'step'), 'the current step (the state panel shows the state before and after it)'],
        [swatch('future', 'step'), 'steps not run yet'],
        [swatch('broke', 'step'), 'the step where the invariant monitor fired'],
        [swatch('sel', 'step'), 'a step whose thread touched the selected object; a thick bar: it changed it'],
        [h('span', null, swatch('came', 'W'), ' ', swatch('gone', 'D')), 'in a value: a bit that appeared, one that vanished'],
        [swatch('changed-box', '1'), 'a bit or value this step changed'],
        [h('span', null, swatch('guard-on', 'on'), ' ', swatch('guard-off', 'off')), 'a guard on, a guard off (the unfixed code); ★ the guard the scenario exercises'],
        [h('span', null, swatch('lock-held', 'held')), 'a lock someone holds'],
      ]),
    ),
    h(
      'section',
      null,
      h('h2', null, 'Causes'),
      h(
        'p',
        null,
        'Select an SPTE, frame, dirty-bitmap word, lock, host mapping or vCPU (its name in the state panel, or a row’s target in the trace): every step whose thread touched it is marked, and each value in the state panel says which step last changed it.',
      ),
      h(
        'p',
        null,
        '“Only steps the violation depends on” keeps the steps that touched an object the violation depends on: what the step where the monitor fired touched (and what the monitor read there), and, going back, what was read by each step that wrote one of those, and by the steps of the same call before it.',
      ),
      h('p', null, 'A thread’s page-table walk (consecutive SPTE loads in one function) folds into one row; ▸ opens it.'),
      h('p', null, h('span', { class: 'doc-tag' }, 'doc'), ' marks a step the locking document draws in its picture of the race (the seed’s three races: aba-gfn-pfn, wp-tlb-flush, dirty-bit-loss, and the last in the TDP MMU, tdp-volatile-xchg), with the document’s line.'),
      h('p', null, 'A row’s function name opens its code beside the trace, the line of the access marked.'),
      h('h2', null, 'Keys'),
      dl([
        [h('span', null, h('kbd', null, '←'), ' ', h('kbd', null, '→')), 'step back and forth (play view: undo, redo)'],
        [h('span', null, h('kbd', null, 'Home'), ' ', h('kbd', null, 'End')), 'first and last step'],
        [h('kbd', null, 'Space'), 'play and pause (unless a button, checkbox or link has the focus: then it presses that)'],
        [h('kbd', null, 'V'), 'the step where the invariant broke'],
        [h('span', null, h('kbd', null, '1'), '–', h('kbd', null, '9')), 'play view: run that thread (keys pressed while a step is on its way are queued)'],
        [h('kbd', null, 'Esc'), 'clear the selection, close this legend'],
        [h('kbd', null, '?'), 'open or close this legend'],
        [h('kbd', null, 'Tab'), 'every control, the state panel’s objects and the trace are reachable with Tab'],
      ]),
      h('p', { class: 'muted' }, `Guards: ${catalog.guards.map((g) => g.name).join(', ')}. Hover over one in the settings bar for what it protects against.`),
    ),
  );
}
