// The JSON API between `kvmmu serve` and the browser page: request and response shapes (types only; the page imports them too).

import type { CheckReport } from '../check/check';
import type { MachineState, PrefixResult, SpteView, VcpuView, FrameView, TdpView } from '../check/inspect';
import type { TraceRow } from '../check/trace';
import type { NextOperation, Touch } from '../check/web-api';
import type { DirtyLogResult as DirtyLogBench, ScaleResult as ScaleBench } from '../bench/results';

export type { CheckReport, MachineState, PrefixResult, SpteView, VcpuView, FrameView, TdpView, TraceRow, NextOperation, Touch };

/** GET /api/scenarios */
export interface ScenarioInfo {
  readonly name: string;
  readonly kind: 'built-in' | 'example';
  readonly description: string;
  /** The guard the scenario exercises (null for examples). */
  readonly guard: string | null;
  /** Modes it runs in, its default first; [] for a scenario without a VM. */
  readonly modes: string[];
  readonly threads: string[];
  /** It builds a VM (guards and modes apply). */
  readonly vm: boolean;
  /** For a race KVM really had (the corpus, KVM-BUGS.md): the upstream commit that fixed it; null otherwise. */
  readonly fix: { readonly commit: string; readonly year: number; readonly title: string } | null;
}

export interface ScenarioList {
  readonly scenarios: ScenarioInfo[];
  readonly guards: { readonly name: string; readonly protectsAgainst: string }[];
  readonly modes: string[];
  readonly indirectFastPath: string[];
  readonly pageMarking: string[];
  readonly strategies: string[];
}

/** The scenario settings every request names (all but `scenario` optional). */
export interface SettingsRequest {
  readonly scenario: string;
  /** Guards switched off (default: none). */
  readonly guardsOff?: string[];
  /** Default: the scenario's first mode. */
  readonly mode?: string;
  /** Default: pin. */
  readonly indirectFastPath?: string;
  /** When KVM marks host pages dirty: spte (default) or fault. */
  readonly pageMarking?: string;
}

/** POST /api/check → CheckReport */
export interface CheckRequest extends SettingsRequest {
  /** Default dpor. */
  readonly strategy?: string;
  /** DPOR's reduction: optimal (default) or source. */
  readonly reduction?: string;
  readonly preemptions?: number;
  readonly executions?: number;
  /** Time budget (default 30, at most 300). */
  readonly seconds?: number;
  readonly seed?: number;
}

/**
 * POST /api/replay (also /api/step) → StepResponse. Either a replay string
 * as `kvmmu check` prints it, or the settings plus a schedule: thread
 * indices ([0,0,1]) or the run-length form ("0*2,1"). A schedule shorter than
 * the execution stops there: the page sends the schedule so far plus one
 * more thread to play the scheduler.
 */
export interface StepRequest extends Partial<SettingsRequest> {
  readonly replay?: string;
  readonly schedule?: number[] | string;
  /** Also report what each thread would do next. */
  readonly peek?: boolean;
}

export interface StepResponse extends PrefixResult {
  readonly scenario: string;
  /** null for a scenario without a VM. */
  readonly mode: string | null;
  readonly guardsOff: string[];
  readonly indirectFastPath: string;
  readonly pageMarking: string;
  readonly schedule: number[];
  /** The replay string for this schedule (`kvmmu check --replay` takes it). */
  readonly replay: string;
  /** With peek: each thread's next operation ([] once the execution ended). */
  readonly next?: NextOperation[];
}

/** POST /api/source {fn} → each definition of the function of that name in the model's source (src/web/source.ts). */
export interface SourceResponse {
  readonly definitions: { readonly fn: string; readonly file: string; readonly line: number; readonly lines: string[]; readonly owner: string | null }[];
}

/** dirty-log.json and scale.json as `kvmmu bench` writes them (src/bench/results.ts). */
export type { DirtyLogBench, ScaleBench };

/** GET /api/bench */
export interface BenchResponse {
  /** The directory read (absolute). */
  readonly dir: string;
  readonly dirtyLog: DirtyLogBench | null;
  readonly scale: ScaleBench | null;
  /** Why a file is missing or was not used. */
  readonly notes: string[];
}

/** Every 4xx/5xx answer. */
export interface ErrorResponse {
  readonly error: string;
}
