// The page's entry point: the settings bar (scenario, mode, guards, the fast path on indirect pages, page marking), the three views, the address (a link reopens the same trace at the same step), the keyboard, the legend and screen-reader announcements.

import type { ScenarioInfo, ScenarioList } from '../api-types';
import { api } from './api';
import { DEFAULT_INDIRECT_FAST_PATH, DEFAULT_PAGE_MARKING, scheduleOfReplay, type AppContext, type NamedSettings, type Settings, type ViewName } from './app';
import { legend } from './legend';
import { BenchView } from './bench-view';
import { byId, h, fill } from './dom';
import { PlayView } from './play-view';
import { ReplayView } from './replay-view';

const VIEWS: readonly ViewName[] = ['replay', 'play', 'bench'];

class Page implements AppContext {
  private scenario: ScenarioInfo;
  private mode: string | null;
  private guardsOff: string[] = [];
  private indirectFastPath = DEFAULT_INDIRECT_FAST_PATH;
  private pageMarking = DEFAULT_PAGE_MARKING;
  private view: ViewName = 'replay';
  readonly replay: ReplayView;
  readonly play: PlayView;
  readonly bench: BenchView;
  private readonly ui = {
    scenario: h('select', { id: 'scenario', 'aria-label': 'scenario' }),
    mode: h('select', { id: 'mode', 'aria-label': 'MMU mode' }),
    indirect: h('select', { id: 'indirect-fast-path', 'aria-label': 'fast path on indirect shadow pages' }),
    marking: h('select', { id: 'page-marking', 'aria-label': 'when KVM marks host pages dirty' }),
    guards: h('span', { id: 'guards', class: 'guards' }),
    desc: h('p', { id: 'scenario-desc', class: 'desc' }),
  };

  constructor(readonly catalog: ScenarioList) {
    this.scenario = catalog.scenarios.find((s) => s.name === 'dirty-bit-loss') ?? catalog.scenarios[0]!;
    this.mode = this.scenario.modes[0] ?? null;
    this.replay = new ReplayView(this);
    this.play = new PlayView(this);
    this.bench = new BenchView(this);
    const settings = byId('settings');
    fill(
      settings,
      h('label', null, 'Scenario ', this.ui.scenario),
      h('label', null, 'Mode ', this.ui.mode),
      h(
        'label',
        { title: 'the fast path on indirect (shadow-paging) pages: pin (the seed: pin the pfn, guard pin-indirect), off (KVM today: slow path), unsafe (fix it as a direct page)' },
        'Indirect fast path ',
        this.ui.indirect,
      ),
      h('label', { title: 'when KVM marks host pages dirty: spte (2012 to 6.12, from SPTE A/D bits) or fault (6.13 on, when a fault maps a writable page)' }, 'Dirty marking ', this.ui.marking),
      h('span', { class: 'guards-label', title: 'each guard is a protection from the locking document; switch one off to get the unfixed code' }, 'Guards (uncheck to switch off):'),
      this.ui.guards,
      this.ui.desc,
    );
    fill(
      this.ui.scenario,
      h('optgroup', { label: 'KVM scenarios' }, ...catalog.scenarios.filter((s) => s.kind === 'built-in' && s.fix === null).map((s) => h('option', { value: s.name }, s.name))),
      h(
        'optgroup',
        { label: 'Real KVM races (fixed upstream)' },
        ...catalog.scenarios.filter((s) => s.kind === 'built-in' && s.fix !== null).map((s) => h('option', { value: s.name, title: `${s.fix!.commit} ${s.fix!.title}` }, `${s.name} (${s.fix!.year})`)),
      ),
      h('optgroup', { label: 'Examples (not KVM)' }, ...catalog.scenarios.filter((s) => s.kind !== 'built-in').map((s) => h('option', { value: s.name }, s.name))),
    );
    this.ui.scenario.addEventListener('change', () => {
      const s = catalog.scenarios.find((x) => x.name === this.ui.scenario.value)!;
      this.scenario = s;
      this.mode = s.modes[0] ?? null;
      this.guardsOff = [];
      this.indirectFastPath = DEFAULT_INDIRECT_FAST_PATH;
      this.pageMarking = DEFAULT_PAGE_MARKING;
      this.ui.scenario.blur();
      this.settingsChanged();
    });
    // A choice in a list: take it, give the keys back to the views, redraw.
    const onChoice = (sel: HTMLSelectElement, take: (v: string) => void): void =>
      sel.addEventListener('change', () => {
        take(sel.value);
        sel.blur();
        this.settingsChanged();
      });
    onChoice(this.ui.mode, (v) => (this.mode = v));
    fill(this.ui.indirect, ...catalog.indirectFastPath.map((v) => h('option', { value: v }, v)));
    fill(this.ui.marking, ...catalog.pageMarking.map((v) => h('option', { value: v }, v)));
    onChoice(this.ui.indirect, (v) => (this.indirectFastPath = v));
    onChoice(this.ui.marking, (v) => (this.pageMarking = v));
    const main = byId('main');
    fill(main, this.replay.el, this.play.el, this.bench.el);
    this.drawSettings();
  }

  settings(): Settings {
    return {
      scenario: this.scenario,
      mode: this.scenario.vm ? this.mode : null,
      guardsOff: [...this.guardsOff],
      indirectFastPath: this.indirectFastPath,
      pageMarking: this.pageMarking,
    };
  }

  private drawSettings(): void {
    const s = this.scenario;
    this.ui.scenario.value = s.name;
    fill(this.ui.mode, ...(s.modes.length === 0 ? [h('option', { value: '' }, 'no VM')] : s.modes.map((m) => h('option', { value: m }, m))));
    this.ui.mode.value = this.mode ?? '';
    this.ui.mode.disabled = s.modes.length <= 1;
    this.ui.indirect.value = this.indirectFastPath;
    this.ui.marking.value = this.pageMarking;
    // Only shadow paging has indirect pages; only a VM has pages to mark.
    this.ui.indirect.disabled = !s.vm || this.mode !== 'shadow';
    this.ui.marking.disabled = !s.vm;
    if (!s.vm) {
      fill(this.ui.guards, h('span', { class: 'muted' }, 'none: this example has no VM'));
      fill(this.ui.desc, h('b', null, `example, threads ${s.threads.join(' · ')} — `), s.description);
      this.ui.desc.title = s.description;
      return;
    }
    fill(
      this.ui.guards,
      ...this.catalog.guards.map((g) => {
        const box = h('input', {
          type: 'checkbox',
          id: `guard-${g.name}`,
          checked: !this.guardsOff.includes(g.name),
          onchange: (e: Event) => {
            const on = (e.target as HTMLInputElement).checked;
            this.guardsOff = on ? this.guardsOff.filter((x) => x !== g.name) : [...this.guardsOff, g.name];
            this.settingsChanged();
          },
        });
        return h(
          'label',
          { class: `guard${g.name === s.guard ? ' own' : ''}${this.guardsOff.includes(g.name) ? ' off' : ''}`, title: `protects against: ${g.protectsAgainst}${g.name === s.guard ? ' (this scenario exercises it)' : ''}` },
          box,
          g.name,
        );
      }),
    );
    fill(
      this.ui.desc,
      s.fix === null ? null : h('span', { class: 'fix', id: 'scenario-fix' }, `a real race, fixed in ${s.fix.commit} (${s.fix.year}) “${s.fix.title}”: its guard off is the code before the fix. `),
      h('b', null, `${s.kind === 'built-in' ? '' : 'example, threads '}${s.threads.join(' · ')} — `),
      s.description,
    );
    this.ui.desc.title = s.description;
  }

  private settingsChanged(): void {
    this.drawSettings();
    this.writeHash();
    this.replay.settingsChanged();
    if (this.view === 'play') void this.play.activate();
  }

  applySettings(s: NamedSettings): void {
    const sc = this.catalog.scenarios.find((x) => x.name === s.scenario);
    if (sc === undefined) return;
    this.scenario = sc;
    this.mode = s.mode ?? sc.modes[0] ?? null;
    this.guardsOff = [...s.guardsOff];
    this.indirectFastPath = s.indirectFastPath ?? DEFAULT_INDIRECT_FAST_PATH;
    this.pageMarking = s.pageMarking ?? DEFAULT_PAGE_MARKING;
    this.drawSettings();
    this.writeHash();
  }

  showError(e: unknown): void {
    const box = byId('error');
    byId('error-text').textContent = e instanceof Error ? e.message : String(e);
    box.hidden = false;
  }

  clearError(): void {
    byId('error').hidden = true;
  }

  showView(v: ViewName, activate = true): void {
    this.view = v;
    this.replay.stop();
    for (const name of VIEWS) {
      byId(`view-${name}`).hidden = name !== v;
      const tab = document.querySelector<HTMLElement>(`#tabs [data-view="${name}"]`)!;
      tab.setAttribute('aria-selected', String(name === v));
    }
    byId('settings').hidden = v === 'bench';
    this.writeHash();
    if (v === 'play' && activate) void this.play.activate();
    if (v === 'bench') void this.bench.activate();
  }

  openReplay(replay: string, source: string): void {
    this.showView('replay');
    void this.replay.loadReplay(replay, source);
  }

  /** The address this page last wrote (a hashchange to anything else is the user's edit). */
  private written = '';

  linkChanged(): void {
    this.writeHash();
  }

  announce(text: string): void {
    const live = byId('live');
    // The same text twice is announced twice only if the region changes in between.
    live.textContent = '';
    window.setTimeout(() => (live.textContent = text), 30);
  }

  /**
   * #view=replay&scenario=dirty-bit-loss&mode=direct&off=atomic-volatile-clear (&ifp=unsafe&marking=fault when
   * not the defaults), then what the view shows: &replay=STRING&step=N for a loaded trace, &play=RUNS for a game.
   */
  private writeHash(): void {
    const p = new URLSearchParams({ view: this.view, scenario: this.scenario.name });
    if (this.scenario.vm && this.mode !== null) p.set('mode', this.mode);
    if (this.guardsOff.length > 0) p.set('off', [...this.guardsOff].sort().join(','));
    if (this.indirectFastPath !== DEFAULT_INDIRECT_FAST_PATH) p.set('ifp', this.indirectFastPath);
    if (this.pageMarking !== DEFAULT_PAGE_MARKING) p.set('marking', this.pageMarking);
    if (this.view === 'replay') {
      const link = this.replay.linkState();
      if (link !== null) {
        p.set('replay', link.replay);
        p.set('step', String(link.step));
      }
    }
    if (this.view === 'play') {
      const moves = this.play.linkState();
      if (moves !== null && moves !== '') p.set('play', moves);
    }
    // Readable: ':' ',' '*' need no escaping in a fragment ('+' does: a query string reads it as a space).
    const hash = `#${p.toString().replace(/%3A/gi, ':').replace(/%2C/gi, ',').replace(/%2A/gi, '*')}`;
    if (hash === location.hash) return;
    this.written = hash;
    history.replaceState(null, '', hash);
  }

  /** The user edited the address (or followed a link into this open page): show what it names. */
  onHashChange(): void {
    if (location.hash === this.written) return;
    this.clearError();
    void this.openHash();
  }

  /** Show what the address names: its settings, its view, and the trace at its step (or the game at its moves). */
  async openHash(): Promise<void> {
    const named = this.hashNamesSettings();
    const { view, replay, step, play } = this.readHash();
    this.view = view;
    this.showView(view, false);
    if (view === 'replay' && replay !== null) {
      const shown = this.replay.linkState();
      if (shown !== null && shown.replay === replay) this.replay.go(step);
      // The settings bar keeps what the address names; the trace is the replay string's.
      else await this.replay.loadReplay(replay, 'link', step, !named);
    } else if (view === 'play') {
      await this.play.restore(play === null ? [] : scheduleOfReplay(play));
    }
    this.writeHash();
  }

  private hashNamesSettings(): boolean {
    return new URLSearchParams(location.hash.slice(1)).has('scenario');
  }

  /** The settings a link names; what the page does not know is said, not silently replaced. */
  readHash(): { view: ViewName; replay: string | null; step: number; play: string | null } {
    const p = new URLSearchParams(location.hash.slice(1));
    const unknown: string[] = [];
    const name = p.get('scenario');
    const sc = this.catalog.scenarios.find((x) => x.name === name);
    if (name !== null && sc === undefined) unknown.push(`scenario '${name}'`);
    if (sc !== undefined) {
      const mode = p.get('mode');
      if (mode !== null && !sc.modes.includes(mode)) unknown.push(`mode '${mode}' for ${sc.name}`);
      const off = (p.get('off') ?? '').split(',').filter((g) => g !== '');
      for (const g of off) if (!this.catalog.guards.some((x) => x.name === g)) unknown.push(`guard '${g}'`);
      const ifp = p.get('ifp');
      if (ifp !== null && !this.catalog.indirectFastPath.includes(ifp)) unknown.push(`indirect fast path '${ifp}'`);
      const marking = p.get('marking');
      if (marking !== null && !this.catalog.pageMarking.includes(marking)) unknown.push(`page marking '${marking}'`);
      this.applySettings({
        scenario: sc.name,
        mode: mode !== null && sc.modes.includes(mode) ? mode : null,
        guardsOff: off.filter((g) => this.catalog.guards.some((x) => x.name === g)),
        indirectFastPath: ifp !== null && this.catalog.indirectFastPath.includes(ifp) ? ifp : undefined,
        pageMarking: marking !== null && this.catalog.pageMarking.includes(marking) ? marking : undefined,
      });
    }
    const v = p.get('view');
    if (v !== null && !VIEWS.includes(v as ViewName)) unknown.push(`view '${v}'`);
    const stepText = p.get('step');
    const step = stepText !== null && /^\d+$/.test(stepText) ? Number(stepText) : 0;
    if (stepText !== null && !/^\d+$/.test(stepText)) unknown.push(`step '${stepText}'`);
    const play = p.get('play');
    if (play !== null && !/^(\d+(\*\d+)?)(,\d+(\*\d+)?)*$/.test(play)) unknown.push(`moves '${play}'`);
    if (unknown.length > 0) this.showError(new Error(`the link names what this page does not know, so defaults are shown instead: ${unknown.join(', ')}`));
    return {
      view: v !== null && VIEWS.includes(v as ViewName) ? (v as ViewName) : 'replay',
      replay: p.get('replay'),
      step,
      play: play !== null && /^(\d+(\*\d+)?)(,\d+(\*\d+)?)*$/.test(play) ? play : null,
    };
  }

  onKey(e: KeyboardEvent): boolean {
    if (e.key === '?') {
      byId('legend-toggle').click();
      return true;
    }
    if (e.key === 'Escape' && !byId('legend').hidden) {
      byId('legend-toggle').click();
      byId('legend-toggle').focus();
      return true;
    }
    if (this.view === 'replay') return this.replay.onKey(e);
    if (this.view === 'play') return this.play.onKey(e);
    return false;
  }
}

/**
 * Keys go to the views unless the focused control wants them: typing in a field, choosing in a list, a range
 * moved with the arrows, and Space or Enter on a button, checkbox or link (which press it, as everywhere else).
 */
function controlWants(e: KeyboardEvent): boolean {
  const t = e.target;
  if (t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement) return true;
  if (t instanceof HTMLInputElement) {
    if (t.type === 'range') return e.key !== ' ' && e.key !== 'v' && e.key !== 'V';
    if (t.type !== 'checkbox' && t.type !== 'radio' && t.type !== 'button') return true;
  }
  if (e.key !== ' ' && e.key !== 'Enter') return false;
  return t instanceof HTMLButtonElement || t instanceof HTMLInputElement || t instanceof HTMLAnchorElement || (t instanceof HTMLElement && t.tagName === 'SUMMARY');
}

async function start(): Promise<void> {
  byId('error-close').addEventListener('click', () => (byId('error').hidden = true));
  let catalog: ScenarioList;
  try {
    catalog = await api.scenarios();
  } catch (e) {
    byId('error-text').textContent = (e as Error).message;
    byId('error').hidden = false;
    return;
  }
  const page = new Page(catalog);
  for (const tab of document.querySelectorAll<HTMLButtonElement>('#tabs [data-view]')) {
    tab.addEventListener('click', () => {
      page.showView(tab.dataset.view as ViewName);
      tab.blur();
    });
  }
  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || controlWants(e)) return;
    if (page.onKey(e)) e.preventDefault();
  });
  window.addEventListener('hashchange', () => page.onHashChange());
  const legendBox = byId('legend');
  fill(legendBox, legend(catalog));
  byId('legend-toggle').addEventListener('click', () => {
    legendBox.hidden = !legendBox.hidden;
    byId('legend-toggle').setAttribute('aria-expanded', String(!legendBox.hidden));
    if (!legendBox.hidden) legendBox.focus();
  });
  await page.openHash();
  document.body.classList.add('ready');
}

void start();
