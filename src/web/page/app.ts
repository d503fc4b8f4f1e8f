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
}

/** The settings as the API takes them. */
export function settingsBody(s: Settings): { scenario: string; mode?: string; guardsOff: string[]; indirectFastPath?: string; pageMarking?: string } {
  if (s.mode === null) return { scenario: s.scenario.name, guardsOff: s.guardsOff };
  return { scenario: s.scenario.name, mode: s.mode, guardsOff: s.guardsOff, indirectFastPath: s.indirectFastPath, pageMarking: s.pageMarking };
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
