// What the views share: the scenario catalog, the settings bar's current choice, and the error line.

import type { ScenarioInfo, ScenarioList } from '../api-types';

export type ViewName = 'replay' | 'play' | 'bench';

export interface Settings {
  readonly scenario: ScenarioInfo;
  /** null for a scenario without a VM. */
  readonly mode: string | null;
  readonly guardsOff: string[];
}

export interface AppContext {
  readonly catalog: ScenarioList;
  settings(): Settings;
  /** Make the settings bar show what a loaded replay string names (views keep what they show). */
  applySettings(s: { scenario: string; mode: string | null; guardsOff: readonly string[] }): void;
  showError(e: unknown): void;
  clearError(): void;
  showView(v: ViewName): void;
  /** Open a replay string in the replay view. */
  openReplay(replay: string, source: string): void;
}

/** The settings as the API takes them. */
export function settingsBody(s: Settings): { scenario: string; mode?: string; guardsOff: string[] } {
  return s.mode === null ? { scenario: s.scenario.name, guardsOff: s.guardsOff } : { scenario: s.scenario.name, mode: s.mode, guardsOff: s.guardsOff };
}

export function sameSettings(a: Settings, b: { scenario: string; mode: string | null; guardsOff: readonly string[] }): boolean {
  return a.scenario.name === b.scenario && (a.mode === b.mode || !a.scenario.vm) && [...a.guardsOff].sort().join() === [...b.guardsOff].sort().join();
}

export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
