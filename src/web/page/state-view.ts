// The state that matters at one step, before and after it: SPTE bits, vCPU TLBs, the dirty bitmap, frames, host mappings and lock holders; each object selectable, with the step that last changed it.

import type { MachineState, SpteView, TraceRow } from '../api-types';
import { h, fill, hex, type Child } from './dom';
import { SPTE_BITS } from './names';
import { rowValues, valueChange } from './trace-view';

const BITS = SPTE_BITS.map((b) => b.key);

/** What the state panel needs to link its objects to the trace. */
export interface StateLinks {
  /** The selected object (its steps are marked in the trace). */
  readonly selected: string | null;
  /** The last step at or before the current one that changed object `id` (null: none since the setup). */
  lastChange(id: string): number | null;
  /** Known object ids (every object some step touched), to name a dirty-bitmap word by the gfn of a bit in it. */
  readonly known: readonly string[];
  select(id: string): void;
  go(step: number): void;
}

/** The id of the dirty-bitmap word holding gfn `g`'s bit (web-api.ts Touch: bitmap:FIRST-LAST). */
function bitmapId(links: StateLinks | null, g: number): string {
  for (const id of links?.known ?? []) {
    const m = /^bitmap:(\d+)-(\d+)$/.exec(id);
    if (m !== null && g >= Number(m[1]) && g <= Number(m[2])) return id;
  }
  return `bitmap-gfn:${g}`;
}

/** A button that selects object `id`, and beside it the step that last changed it. */
function objButton(links: StateLinks | null, id: string, label: Child, short = false): Child[] {
  if (links === null) return [label];
  const sel = links.selected === id;
  const btn = h(
    'button',
    {
      class: `obj-btn${sel ? ' selected' : ''}`,
      'data-obj': id,
      'aria-pressed': String(sel),
      title: sel ? 'selected: the steps that touched it are marked in the trace (click to clear)' : 'select: mark every step that touched it',
      onclick: () => links.select(id),
    },
    label,
  );
  const n = links.lastChange(id);
  const lc =
    n === null
      ? h('span', { class: 'last-change none', 'data-obj': id }, short ? '' : 'unchanged since setup')
      : h(
          'button',
          { class: 'last-change', 'data-obj': id, 'data-step': n, title: `last changed at step ${n}: go there`, 'aria-label': `last changed at step ${n}`, onclick: () => links.go(n) },
          short ? `@${n}` : `last changed at step ${n}`,
        );
  return [btn, ' ', lc];
}

/** The SPTE a trace row touched, if it names one ("spte (sp 3, #3)"). */
function touchedSpte(row: TraceRow | null): { sp: number; index: number } | null {
  const m = row === null ? null : /^spte \(sp (\d+), #(\d+)\)/.exec(row.target);
  return m === null ? null : { sp: Number(m[1]), index: Number(m[2]) };
}

function section(title: string, help: string | null, ...body: Child[]): HTMLElement {
  return h('section', { class: 'st-section' }, h('h3', { title: help }, title), ...body);
}

function spteRow(label: string, cls: string, s: SpteView | undefined, other: SpteView | undefined): HTMLElement {
  const help = new Map(SPTE_BITS.map((b) => [b.key, `${b.short}: ${b.help}`]));
  if (s === undefined) return h('tr', { class: `${cls} absent` }, h('th', null, label), h('td', { colspan: BITS.length + 1, class: other !== undefined ? 'changed' : null }, 'not present'));
  return h(
    'tr',
    { class: cls },
    h('th', null, label),
    ...BITS.map((b) =>
      h(
        'td',
        { class: `bit ${s.bits[b] ? 'on' : 'off'}${other !== undefined && other.bits[b] !== s.bits[b] ? ' changed' : ''}`, 'data-bit': b, title: help.get(b) ?? b },
        s.bits[b] ? '1' : '0',
      ),
    ),
    h('td', { class: `pfn${other !== undefined && other.pfn !== s.pfn ? ' changed' : ''}` }, hex(s.pfn)),
  );
}

function sptesSection(before: MachineState | null, after: MachineState, row: TraceRow | null, links: StateLinks | null): HTMLElement {
  const b = new Map((before?.sptes ?? []).map((s) => [s.sptep, s]));
  const a = new Map(after.sptes.map((s) => [s.sptep, s]));
  const keys = [...new Set([...b.keys(), ...a.keys()])].sort((x, y) => x - y);
  const touched = touchedSpte(row);
  if (keys.length === 0) return section('Leaf SPTEs', null, h('p', { class: 'muted' }, 'no present leaf SPTE'));
  const cards = keys.map((k) => {
    const sb = b.get(k);
    const sa = a.get(k);
    const s = (sa ?? sb)!;
    const hit = touched !== null && touched.sp === s.sp && touched.index === s.index;
    const id = `spte:${s.sp}:${s.index}`;
    return h(
      'div',
      { class: `spte${hit ? ' touched' : ''}${links?.selected === id ? ' selected' : ''}`, 'data-sptep': k, 'data-gfn': s.gfn, 'data-obj': id },
      h('div', { class: 'spte-title' }, ...objButton(links, id, [h('b', null, `gfn ${hex(s.gfn)}`), ` · sp ${s.sp}, #${s.index}`]), hit ? h('span', { class: 'tag' }, 'this step') : null),
      h(
        'table',
        { class: 'bits' },
        h('thead', null, h('tr', null, h('th', null, ''), ...SPTE_BITS.map((x) => h('th', { title: `${x.short}: ${x.help}`, 'data-bit': x.key }, h('abbr', { title: x.help }, x.short))), h('th', null, 'pfn'))),
        h('tbody', null, before === null ? null : spteRow('before', 'spte-before', sb, sa), spteRow(before === null ? 'now' : 'after', 'spte-after', sa, before === null ? undefined : sb)),
      ),
    );
  });
  return section('Leaf SPTEs', 'present leaf SPTEs, before and after this step; changed bits are boxed in red; HW = host-writable, MW = MMU-writable (see Legend)', ...cards);
}

function change<T>(before: T | undefined, after: T, show: (v: T) => string): HTMLElement {
  if (before === undefined || show(before) === show(after)) return h('span', null, show(after));
  return h('span', { class: 'changed' }, h('s', null, show(before)), ' → ', show(after));
}

function vcpusSection(before: MachineState | null, after: MachineState, links: StateLinks | null): HTMLElement | null {
  if (after.vcpus.length === 0) return null;
  const items = after.vcpus.map((v) => {
    const vb = before?.vcpus.find((x) => x.index === v.index);
    const tb = new Map((vb?.tlb ?? []).map((e) => [e.vpn, e]));
    const ta = new Map(v.tlb.map((e) => [e.vpn, e]));
    const vpns = [...new Set([...tb.keys(), ...ta.keys()])].sort((x, y) => x - y);
    const entry = (e: { gfn: number; pfn: number; writable: boolean; dirty: boolean }): string =>
      `gfn ${hex(e.gfn)} → pfn ${hex(e.pfn)} ${e.writable ? 'W' : 'RO'}${e.dirty ? ' D' : ''}`;
    const rows = vpns.map((vpn) => {
      const eb = tb.get(vpn);
      const ea = ta.get(vpn);
      if (ea === undefined) return h('li', { class: 'gone' }, h('s', null, `vpn ${hex(vpn)}: ${entry(eb!)}`), ' (flushed)');
      const cls = before === null ? null : eb === undefined ? 'came' : entry(eb) !== entry(ea) ? 'changed' : null;
      return h('li', { class: cls }, `vpn ${hex(vpn)}: `, change(before === null ? undefined : eb, ea, entry));
    });
    return h(
      'div',
      { class: 'vcpu', 'data-vcpu': v.index },
      h('div', null, ...objButton(links, `vcpu:${v.index}`, h('b', null, `vCPU ${v.index}`)), ' ', change(vb?.mode, v.mode, (m) => m), ' ', v.flushPending ? h('span', { class: 'tag warn' }, 'TLB flush pending') : null),
      rows.length === 0 ? h('div', { class: 'muted' }, 'TLB empty') : h('ul', { class: 'tlb' }, ...rows),
    );
  });
  return section('vCPUs and their TLBs', "each vCPU's mode, pending flush request and cached translations", ...items);
}

function dirtySection(before: MachineState | null, after: MachineState, links: StateLinks | null): HTMLElement | null {
  if (after.vcpus.length === 0 && after.mappings.length === 0) return null;
  const gfns = new Set<number>([...after.dirty, ...(before?.dirty ?? []), ...after.mappings.map((m) => m.gfn), ...after.sptes.map((s) => s.gfn)]);
  const was = new Set(before?.dirty ?? []);
  const is = new Set(after.dirty);
  const chips = [...gfns]
    .sort((x, y) => x - y)
    .map((g) => {
      const id = bitmapId(links, g);
      const cls = `gfn-bit ${is.has(g) ? 'on' : 'off'}${before !== null && was.has(g) !== is.has(g) ? ' changed' : ''}${links?.selected === id ? ' selected' : ''}`;
      const text = `${hex(g)} ${is.has(g) ? 'logged dirty' : 'clean'}`;
      if (links === null || id.startsWith('bitmap-gfn:')) return h('span', { class: cls, 'data-gfn': g, title: text }, hex(g));
      return h('span', { class: cls, 'data-gfn': g, title: `${text}; its bitmap word covers gfns ${id.slice(7)}` }, ...objButton(links, id, hex(g), true));
    });
  return section(
    'Dirty bitmap (the log’s bit)',
    'gfns whose bit is set in the dirty bitmap: what the next get-dirty-log returns, so that migration copies the page again. Not the frame’s DIRTY flag.',
    h('div', null, `dirty logging ${after.dirtyLogging ? 'on' : 'off'}: `, ...chips),
  );
}

function framesSection(before: MachineState | null, after: MachineState, links: StateLinks | null): HTMLElement | null {
  if (after.frames.length === 0 && (before?.frames.length ?? 0) === 0) return null;
  const fb = new Map((before?.frames ?? []).map((f) => [f.pfn, f]));
  const fa = new Map(after.frames.map((f) => [f.pfn, f]));
  const pfns = [...new Set([...fb.keys(), ...fa.keys()])].sort((x, y) => x - y);
  const flagText = (f: { dirty: boolean; ksm: boolean }): string => `${f.dirty ? 'DIRTY' : 'clean'}${f.ksm ? ', KSM' : ''}`;
  const rows = pfns.map((p) => {
    const b = fb.get(p);
    const a = fa.get(p);
    if (a === undefined) return h('tr', { class: 'gone' }, h('td', null, hex(p)), h('td', { colspan: 3 }, 'freed'));
    const id = `frame:${p}`;
    const [btn, , lc] = objButton(links, id, hex(p));
    return h('tr', { 'data-pfn': p, 'data-obj': id, class: links?.selected === id ? 'selected' : null }, h('td', null, btn), h('td', null, change(b, a, (f) => String(f.refcount))), h('td', null, change(b, a, flagText)), h('td', null, lc));
  });
  return section(
    'Frames',
    'host frames in use: refcount, and the frame’s DIRTY flag (the page cache’s: swap-out writes the frame back only if it is set). Not the dirty bitmap’s bit.',
    h('table', { class: 'plain' }, h('thead', null, h('tr', null, h('th', null, 'pfn'), h('th', null, 'refcount'), h('th', { title: 'the frame’s DIRTY flag (and KSM when merged); the trace shows the whole flags word' }, 'DIRTY flag'), h('th', null, ''))), h('tbody', null, ...rows)),
  );
}

function mappingsSection(before: MachineState | null, after: MachineState, links: StateLinks | null): HTMLElement | null {
  const mb = new Map((before?.mappings ?? []).map((m) => [m.gfn, m]));
  const ma = new Map(after.mappings.map((m) => [m.gfn, m]));
  const gfns = [...new Set([...mb.keys(), ...ma.keys()])].sort((x, y) => x - y);
  if (gfns.length === 0) return null;
  const text = (m: { pfn: number; writable: boolean } | undefined): string => (m === undefined ? 'not mapped' : `pfn ${hex(m.pfn)} ${m.writable ? 'W' : 'RO'}`);
  const items = gfns.map((g) => {
    const [btn, , lc] = objButton(links, `map:${g}`, `gfn ${hex(g)}`);
    return h('li', { 'data-obj': `map:${g}` }, btn, ' → ', change(before === null ? undefined : text(mb.get(g)), text(ma.get(g)), (x) => x), ' ', lc);
  });
  return section('Host mappings', "the VMM's mapping gfn → pfn (what the MMU notifier protects)", h('ul', { class: 'plain' }, ...items));
}

function locksLine(before: MachineState | null, after: MachineState, links: StateLinks | null): HTMLElement | null {
  if (after.vcpus.length === 0 && after.frames.length === 0) return null;
  const who = (x: string | null): string => x ?? 'free';
  return h(
    'div',
    { class: 'locks' },
    h(
      'span',
      { class: `lock${after.mmuLock !== null ? ' held' : ''}`, id: 'mmu-lock', 'data-obj': 'lock:mmu_lock' },
      ...objButton(links, 'lock:mmu_lock', 'mmu_lock', true),
      ': ',
      change(before === null ? undefined : who(before.mmuLock), who(after.mmuLock), (x) => x),
    ),
    h(
      'span',
      { class: `lock${after.hostLock !== null ? ' held' : ''}`, 'data-obj': 'lock:host mm lock' },
      ...objButton(links, 'lock:host mm lock', 'host mm lock', true),
      ': ',
      change(before === null ? undefined : who(before.hostLock), who(after.hostLock), (x) => x),
    ),
  );
}

/** TDP mode: the roots with their refcounts, frozen entries, and RCU's readers and waiting tables. */
function tdpSection(before: MachineState | null, after: MachineState): HTMLElement | null {
  const t = after.tdp;
  if (t === null || t === undefined) return null;
  const b = before?.tdp ?? null;
  const rootText = (r: (typeof t.roots)[number]): string =>
    `refcount ${r.refcount}${r.invalid ? ', invalid' : ''}${r.zap === 'owed' ? ', zap owed' : r.zap === 'taken' ? ', zapped' : ''}`;
  const roots = t.roots.map((r) => {
    const rb = b?.roots.find((x) => x.sp === r.sp);
    return h(
      'li',
      { 'data-tdp-root': r.sp },
      `root sp ${r.sp}${r.smm ? ' (SMM)' : ''}: `,
      change(b === null ? undefined : rb === undefined ? 'not a root' : rootText(rb), rootText(r), (x) => x),
    );
  });
  const frozenText = (f: readonly { sp: number; index: number }[]): string => (f.length === 0 ? 'none' : f.map((x) => `sp ${x.sp} #${x.index}`).join(', '));
  const readersText = (r: readonly number[]): string => {
    const inside = r.map((n, i) => (n === 0 ? '' : `slot ${i}: ${n}`)).filter((x) => x !== '');
    return inside.length === 0 ? 'none' : inside.join(', ');
  };
  const vcpusText = (q: readonly { online: boolean; waitedFor: boolean }[]): string =>
    q.map((x, i) => `vCPU ${i}: ${!x.online ? 'offline' : x.waitedFor ? 'the grace period waits for it' : 'online'}`).join(', ') || 'none';
  const gpText = (gp: number): string => `${gp >> 1} ended${(gp & 1) !== 0 ? ', one running' : ''}`;
  const waitingText = (w: readonly number[]): string => (w.length === 0 ? 'none' : w.map((sp) => `sp ${sp}`).join(', '));
  return section(
    'TDP MMU',
    'roots (each vCPU holds a reference; an invalidated root is zapped under the read lock, then freed at its last put), entries frozen by a thread for a multi-step change (FROZEN_SPTE), and RCU: host threads inside a read section (counted per slot), the vCPUs (quiescent in guest mode: a grace period waits for each vCPU outside it until it enters the guest or stops running), grace periods, and removed tables waiting for one before they are freed',
    h('ul', { class: 'plain', id: 'tdp-roots' }, ...roots),
    h(
      'div',
      { id: 'tdp-frozen' },
      h('span', { class: 'muted', title: 'FROZEN_SPTE: no thread but its freezer may change it' }, 'frozen entries: '),
      change(b === null ? undefined : frozenText(b.frozen), frozenText(t.frozen), (x) => x),
    ),
    h(
      'div',
      { id: 'tdp-rcu' },
      h('span', { class: 'muted', title: 'host threads count themselves in and out of each read section' }, 'RCU readers: '),
      change(b === null ? undefined : readersText(b.rcu.readers), readersText(t.rcu.readers), (x) => x),
      h('span', { class: 'muted', title: "a vCPU's read sections touch no shared word (QSBR): its guest entries tell RCU it has passed a quiescent state" }, ' · vCPUs: '),
      change(b === null ? undefined : vcpusText(b.rcu.qsbr), vcpusText(t.rcu.qsbr), (x) => x),
      h('span', { class: 'muted' }, ' · grace periods: '),
      change(b === null ? undefined : gpText(b.rcu.gracePeriod), gpText(t.rcu.gracePeriod), (x) => x),
      h('span', { class: 'muted' }, ' · waiting to be freed: '),
      change(b === null ? undefined : waitingText(b.rcu.waiting), waitingText(t.rcu.waiting), (x) => x),
    ),
    h(
      'div',
      { id: 'tdp-srcu' },
      h('span', { class: 'muted', title: 'kvm->srcu: faults and pre-faulting read the memslots inside it; a memslot update waits for them' }, 'kvm->srcu readers: '),
      change(b === null ? undefined : readersText(b.srcuReaders), readersText(t.srcuReaders), (x) => x),
    ),
  );
}

function wordsSection(before: MachineState | null, after: MachineState, links: StateLinks | null): HTMLElement | null {
  if (after.words.length === 0) return null;
  const cells = after.words.map((w, i) =>
    h(
      'div',
      { class: `word${before !== null && before.words[i] !== w ? ' changed' : ''}`, 'data-obj': `word:${i * 4}` },
      ...objButton(links, `word:${i * 4}`, h('span', { class: 'muted' }, `word(${i * 4})`), true),
      ' ',
      change(before?.words[i], w, String),
    ),
  );
  return section('Shared words', 'the scenario\'s first 16 shared words', h('div', { class: 'words' }, ...cells));
}

/** Draw the state after a step next to the state before it (`before` null: the initial state). */
export function renderState(root: HTMLElement, before: MachineState | null, after: MachineState, row: TraceRow | null, links: StateLinks | null = null): void {
  const vm = after.words.length === 0;
  fill(
    root,
    locksLine(before, after, links),
    vm ? sptesSection(before, after, row, links) : null,
    vcpusSection(before, after, links),
    dirtySection(before, after, links),
    framesSection(before, after, links),
    mappingsSection(before, after, links),
    tdpSection(before, after),
    wordsSection(before, after, links),
  );
}

/** The line above the state: which step, which thread, which operation, and the value it changed. */
export function renderStepHead(root: HTMLElement, row: TraceRow | null, threads: readonly string[], total: number | null): void {
  fill(
    root,
    row === null
      ? h('div', null, h('b', null, 'Before the first step'), ' — the state after the scenario’s setup')
      : h(
          'div',
          null,
          h('div', null, h('b', null, `Step ${row.step}`), total === null ? '' : ` of ${total}`, ' · ', h('span', { class: `thread-name t${row.thread % 6}` }, threads[row.thread] ?? `thread ${row.thread}`)),
          h('div', { class: 'op' }, row.where === '' ? '' : `${row.where.split(' ← ')[0]}: `, h('b', null, row.op), ' ', row.target),
          valueChange(rowValues(row).before, rowValues(row).after),
        ),
  );
}
