// What the views share: the scenario catalog, the settings bar's current choice, and the error line.

import type { ScenarioInfo, ScenarioList } from '../api-types';

export type ViewName = 'replay' | 'play' | 'bench';

export interface Settings {
  readonly scenario: ScenarioInfo;
  /** null for a scenario without a VM. */
  readonly mode: string | null;
  readonly guardsOff: string[];
  /** The fast path on indirect shadow pages: pin (default), off, unsafe (KVM settings; shadow mode only). */
  readonly indirectFastPath: string;
  /** When KVM marks host pages dirty: spte (default) or fault. */
  readonly pageMarking: string;
}

/** What a replay string or a step answer fixes: the settings by name. */
export interface NamedSettings {
  readonly scenario: string;
  readonly mode: string | null;
  readonly guardsOff: readonly string[];
  readonly indirectFastPath?: string;
  readonly pageMarking?: string;
}

export const DEFAULT_INDIRECT_FAST_PATH = 'pin';
export const DEFAULT_PAGE_MARKING = 'spte';

export interface AppContext {
  readonly catalog: ScenarioList;
  settings(): Settings;
  /** Make the settings bar show what a loaded replay string names (views keep what they show). */
  applySettings(s: NamedSettings): void;
  showError(e: unknown): void;
  clearError(): void;
  showView(v: ViewName): void;
  /** Open a replay string in the replay view. */
  openReplay(replay: string, source: string): void;
  /** What a view shows changed (a step, a loaded trace, a move in the game): write it to the address. */
  linkChanged(): void;
  /** Say something to screen readers (an aria-live region). */
  announce(text: string): void;
}

/** The settings as the API takes them. */
export function settingsBody(s: Settings): { scenario: string; mode?: string; guardsOff: string[]; indirectFastPath?: string; pageMarking?: string } {
  if (s.mode === null) return { scenario: s.scenario.name, guardsOff: s.guardsOff };
  return { scenario: s.scenario.name, mode: s.mode, guardsOff: s.guardsOff, indirectFastPath: s.indirectFastPath, pageMarking: s.pageMarking };
}

/** The settings a view shows, by name (for sameSettings). */
export function namedOf(s: Settings): NamedSettings {
  return { scenario: s.scenario.name, mode: s.mode, guardsOff: s.guardsOff, indirectFastPath: s.indirectFastPath, pageMarking: s.pageMarking };
}

/** The schedule of a replay string: its last field, in runs like 0*14,1*7 (the fields before it name the settings; there are five or six). */
export function scheduleOfReplay(replay: string): number[] {
  const runs = replay.trim().split(':').pop() ?? '';
  const out: number[] = [];
  for (const run of runs.split(',')) {
    if (run.trim() === '') continue;
    const [t, times] = run.split('*');
    for (let i = 0; i < Number(times ?? 1); i++) out.push(Number(t));
  }
  return out;
}

/** Run-length form of a schedule, as replay strings write it: 0*14,1*7,0 (the checker's own encoder). */
export { encodeSchedule as encodeRuns } from '../../check/schedule';

/** The settings as the settings bar names them, for a note ("dirty-bit-loss, direct, guards off: ..."). */
export function describeSettings(s: NamedSettings): string {
  const parts = [s.scenario];
  if (s.mode !== null) parts.push(`${s.mode} mode`);
  parts.push(s.guardsOff.length === 0 ? 'all guards on' : `off: ${[...s.guardsOff].sort().join(', ')}`);
  if ((s.indirectFastPath ?? DEFAULT_INDIRECT_FAST_PATH) !== DEFAULT_INDIRECT_FAST_PATH) parts.push(`indirect fast path ${s.indirectFastPath}`);
  if ((s.pageMarking ?? DEFAULT_PAGE_MARKING) !== DEFAULT_PAGE_MARKING) parts.push(`page marking ${s.pageMarking}`);
  return parts.join(', ');
}

export function sameSettings(a: Settings, b: NamedSettings): boolean {
  if (a.scenario.name !== b.scenario) return false;
  if (!a.scenario.vm) return true;
  return (
    a.mode === b.mode &&
    [...a.guardsOff].sort().join() === [...b.guardsOff].sort().join() &&
    a.indirectFastPath === (b.indirectFastPath ?? DEFAULT_INDIRECT_FAST_PATH) &&
    a.pageMarking === (b.pageMarking ?? DEFAULT_PAGE_MARKING)
  );
}

export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
