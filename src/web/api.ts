// The JSON API's request handling, apart from HTTP: validating what the page sends, and answering scenario lists, replays and steps, and benchmark results.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { KvmmuError } from '../shm/errors';
import { GUARD_HELP, GUARD_NAMES, INDIRECT_FAST_PATH, MMU_MODES, PAGE_MARKING, type GuardName, type IndirectFastPath, type MmuMode, type PageMarking } from '../kvm/config';
import type { CheckOptions } from '../check/check';
import type { GenScenarioModule } from '../check/engine';
import { REDUCTIONS, STRATEGIES, type Reduction, type Strategy } from '../check/explore';
import type { ScenarioContext, ScenarioSpec } from '../check/gen/scenario';
import { contextOf, runPrefix } from '../check/inspect';
import { decodeReplay, decodeSchedule, encodeReplay } from '../check/trace';
import { nextOperations } from '../check/web-api';
import { findScenario, type ScenarioCatalog } from '../cli/scenario-file';
import type { BenchResponse, CheckRequest, DirtyLogBench, ScaleBench, ScenarioList, SourceResponse, StepResponse } from './api-types';
import type { SourceIndex } from './source';

/** A request the server answers with `status` and {error: message}. */
export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const bad = (message: string): ApiError => new ApiError(400, message);

/** The longest schedule a step request may name (the engine's livelock bound). */
const MAX_SCHEDULE = 20_000;
/** A check's time budget: default and ceiling, in seconds. */
export const CHECK_SECONDS_DEFAULT = 30;
export const CHECK_SECONDS_MAX = 300;

export function listScenarios(catalog: ScenarioCatalog): ScenarioList {
  return {
    scenarios: [
      ...catalog.builtin.map((s) => ({
        name: s.name,
        kind: 'built-in' as const,
        description: s.description,
        guard: s.guard ?? null,
        modes: [...(s.modes ?? MMU_MODES)],
        threads: Object.keys(s.threads),
        vm: s.machine !== undefined,
        fix: s.fix === undefined ? null : { commit: s.fix.commit, year: s.fix.year, title: s.fix.title },
      })),
      ...catalog.examples.map((s) => ({
        name: s.name,
        kind: 'example' as const,
        description: s.description,
        guard: s.guard ?? null,
        modes: s.machine !== undefined ? [...(s.modes ?? MMU_MODES)] : [],
        threads: Object.keys(s.threads),
        vm: s.machine !== undefined,
        fix: s.fix === undefined ? null : { commit: s.fix.commit, year: s.fix.year, title: s.fix.title },
      })),
    ],
    guards: GUARD_NAMES.map((name) => ({ name, protectsAgainst: GUARD_HELP[name] })),
    modes: [...MMU_MODES],
    indirectFastPath: [...INDIRECT_FAST_PATH],
    pageMarking: [...PAGE_MARKING],
    strategies: [...STRATEGIES],
  };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function allowOnly(body: Record<string, unknown>, keys: readonly string[]): void {
  for (const k of Object.keys(body)) if (!keys.includes(k)) throw bad(`unknown field '${k}' (the fields are ${keys.join(', ')})`);
}

function str(body: Record<string, unknown>, key: string): string | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw bad(`'${key}' must be a string`);
  return v;
}

function int(body: Record<string, unknown>, key: string, min: number, max: number): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw bad(`'${key}' must be an integer from ${min} to ${max}`);
  return v;
}

export function scenarioOf(catalog: ScenarioCatalog, name: string | undefined): ScenarioSpec {
  if (name === undefined || name === '') throw bad("say which scenario: 'scenario' is missing");
  try {
    return findScenario(catalog, name);
  } catch (e) {
    if (e instanceof KvmmuError) throw new ApiError(404, e.message);
    throw e;
  }
}

function guardsOffOf(v: unknown): GuardName[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || v.some((g) => typeof g !== 'string')) throw bad("'guardsOff' must be a list of guard names");
  const out: GuardName[] = [];
  for (const g of v as string[]) {
    if (!GUARD_NAMES.includes(g as GuardName)) throw bad(`unknown guard '${g}': the guards are ${GUARD_NAMES.join(', ')}`);
    if (!out.includes(g as GuardName)) out.push(g as GuardName);
  }
  return out.sort((a, b) => GUARD_NAMES.indexOf(a) - GUARD_NAMES.indexOf(b));
}

function modeOf(spec: ScenarioSpec, v: string | undefined): MmuMode | undefined {
  if (v === undefined) return undefined;
  if (!MMU_MODES.includes(v as MmuMode)) throw bad(`unknown mode '${v}': the modes are ${MMU_MODES.join(', ')}`);
  if (spec.modes !== undefined && !spec.modes.includes(v as MmuMode))
    throw bad(`scenario ${spec.name} runs in ${spec.modes.join(' or ')} mode, not ${v}`);
  return v as MmuMode;
}

function indirectOf(v: string | undefined): IndirectFastPath | undefined {
  if (v === undefined) return undefined;
  if (!INDIRECT_FAST_PATH.includes(v as IndirectFastPath))
    throw bad(`unknown indirect fast-path setting '${v}': the settings are ${INDIRECT_FAST_PATH.join(', ')}`);
  return v as IndirectFastPath;
}

function markingOf(v: string | undefined): PageMarking | undefined {
  if (v === undefined) return undefined;
  if (!PAGE_MARKING.includes(v as PageMarking)) throw bad(`unknown page-marking setting '${v}': the settings are ${PAGE_MARKING.join(', ')}`);
  return v as PageMarking;
}

function scheduleOf(v: unknown): number[] {
  if (v === undefined || v === null) return [];
  let s: number[];
  if (typeof v === 'string') {
    try {
      s = decodeSchedule(v);
    } catch (e) {
      if (e instanceof KvmmuError) throw bad(e.message);
      throw e;
    }
  } else if (Array.isArray(v)) {
    v.forEach((t, k) => {
      if (typeof t !== 'number' || !Number.isInteger(t) || t < 0) throw bad(`malformed schedule: step ${k + 1} is ${JSON.stringify(t)}, not a thread index`);
    });
    s = v as number[];
  } else throw bad("malformed schedule: give thread indices ([0,0,1]) or runs ('0*2,1')");
  if (s.length > MAX_SCHEDULE) throw bad(`the schedule has ${s.length} steps; at most ${MAX_SCHEDULE}`);
  return s;
}

/** A validated check request: the scenario and the options runCheck takes (without callbacks). */
export interface CheckJob {
  readonly scenario: string;
  readonly options: Omit<CheckOptions, 'onProgress' | 'now'>;
}

const CHECK_FIELDS = ['scenario', 'guardsOff', 'mode', 'indirectFastPath', 'pageMarking', 'strategy', 'reduction', 'preemptions', 'executions', 'seconds', 'seed'];

/** Validate POST /api/check's body. */
export function checkJobOf(catalog: ScenarioCatalog, body: unknown): CheckJob {
  if (!isRecord(body)) throw bad('the request body must be a JSON object');
  allowOnly(body, CHECK_FIELDS);
  const req = body as Partial<CheckRequest>;
  const spec = scenarioOf(catalog, str(body, 'scenario'));
  const ctx = contextOf(spec, {
    mode: modeOf(spec, str(body, 'mode')),
    guardsOff: guardsOffOf(req.guardsOff),
    indirectFastPath: indirectOf(str(body, 'indirectFastPath')),
    pageMarking: markingOf(str(body, 'pageMarking')),
  });
  const strategy = str(body, 'strategy');
  if (strategy !== undefined && !STRATEGIES.includes(strategy as Strategy)) throw bad(`unknown strategy '${strategy}': the strategies are ${STRATEGIES.join(', ')}`);
  const reduction = str(body, 'reduction');
  if (reduction !== undefined && !REDUCTIONS.includes(reduction as Reduction)) throw bad(`unknown reduction '${reduction}': the reductions are ${REDUCTIONS.join(', ')}`);
  const seconds = body.seconds;
  if (seconds !== undefined && (typeof seconds !== 'number' || !(seconds > 0) || seconds > CHECK_SECONDS_MAX))
    throw bad(`'seconds' must be a number above 0 and at most ${CHECK_SECONDS_MAX}`);
  return {
    scenario: spec.name,
    options: {
      mode: ctx.mode,
      guards: ctx.guards,
      indirectFastPath: ctx.indirectFastPath,
      pageMarking: ctx.pageMarking,
      strategy: (strategy as Strategy | undefined) ?? 'dpor',
      reduction: reduction as Reduction | undefined,
      preemptions: int(body, 'preemptions', 0, 1000),
      executions: int(body, 'executions', 1, 100_000_000),
      seconds: (seconds as number | undefined) ?? CHECK_SECONDS_DEFAULT,
      seed: int(body, 'seed', 0, 2 ** 31 - 1) ?? 1,
    },
  };
}

const STEP_FIELDS = ['scenario', 'guardsOff', 'mode', 'indirectFastPath', 'pageMarking', 'replay', 'schedule', 'peek'];

interface StepJob {
  readonly spec: ScenarioSpec;
  readonly ctx: ScenarioContext;
  readonly guardsOff: GuardName[];
  readonly schedule: number[];
  readonly peek: boolean;
}

function stepJobOf(catalog: ScenarioCatalog, body: unknown): StepJob {
  if (!isRecord(body)) throw bad('the request body must be a JSON object');
  allowOnly(body, STEP_FIELDS);
  const peek = body.peek;
  if (peek !== undefined && typeof peek !== 'boolean') throw bad("'peek' must be true or false");
  const replay = str(body, 'replay');
  if (replay !== undefined) {
    for (const k of ['guardsOff', 'mode', 'indirectFastPath', 'pageMarking', 'schedule'])
      if (body[k] !== undefined) throw bad(`give a replay string or '${k}', not both: the replay string names the settings and the schedule`);
    let r;
    try {
      r = decodeReplay(replay);
    } catch (e) {
      if (e instanceof KvmmuError) throw bad(e.message);
      throw e;
    }
    const scenario = str(body, 'scenario');
    if (scenario !== undefined && scenario !== r.scenario) throw bad(`the replay string is for scenario ${r.scenario}, not ${scenario}`);
    const spec = scenarioOf(catalog, r.scenario);
    const guardsOff = guardsOffOf(r.guardsOff);
    const ctx = contextOf(spec, { mode: modeOf(spec, r.mode), guardsOff, indirectFastPath: r.indirectFastPath, pageMarking: r.pageMarking });
    if (r.schedule.length > MAX_SCHEDULE) throw bad(`the schedule has ${r.schedule.length} steps; at most ${MAX_SCHEDULE}`);
    return { spec, ctx, guardsOff, schedule: [...r.schedule], peek: peek === true };
  }
  const spec = scenarioOf(catalog, str(body, 'scenario'));
  const guardsOff = guardsOffOf(body.guardsOff);
  const ctx = contextOf(spec, {
    mode: modeOf(spec, str(body, 'mode')),
    guardsOff,
    indirectFastPath: indirectOf(str(body, 'indirectFastPath')),
    pageMarking: markingOf(str(body, 'pageMarking')),
  });
  return { spec, ctx, guardsOff, schedule: scheduleOf(body.schedule), peek: peek === true };
}

/** POST /api/replay: run a schedule (or a prefix of an execution) and report every step with the state after it. */
export function step(gen: GenScenarioModule, catalog: ScenarioCatalog, body: unknown): StepResponse {
  const job = stepJobOf(catalog, body);
  const { spec, ctx, schedule } = job;
  let prefix;
  try {
    prefix = runPrefix(gen, spec, ctx, schedule);
  } catch (e) {
    if (e instanceof RangeError) throw bad(`the schedule does not fit scenario ${spec.name}: ${e.message}`);
    if (e instanceof KvmmuError) throw bad(e.message);
    throw e;
  }
  const ran = prefix.rows.length;
  if (ran < schedule.length)
    throw bad(`the schedule does not fit scenario ${spec.name}: the execution ended after ${ran} steps, but the schedule has ${schedule.length}`);
  const next = job.peek ? (prefix.finished ? [] : nextOperations(gen, spec, ctx, schedule)) : undefined;
  const vm = spec.machine !== undefined;
  return {
    scenario: spec.name,
    mode: vm ? ctx.mode : null,
    guardsOff: job.guardsOff,
    indirectFastPath: ctx.indirectFastPath,
    pageMarking: ctx.pageMarking ?? 'spte',
    schedule,
    replay: encodeReplay({ scenario: spec.name, mode: ctx.mode, guardsOff: job.guardsOff, indirectFastPath: ctx.indirectFastPath, pageMarking: ctx.pageMarking, schedule }),
    ...prefix,
    ...(next === undefined ? {} : { next }),
  };
}

/** POST /api/source {fn}: the model's function of that name (a name, never a path: only the model's own source is read). */
export function sourceOf(index: SourceIndex, body: unknown): SourceResponse {
  if (!isRecord(body)) throw bad('the request body must be a JSON object');
  allowOnly(body, ['fn']);
  const fn = str(body, 'fn');
  if (fn === undefined || !/^[\w$]{1,100}$/.test(fn)) throw bad("'fn' must be a function name (letters, digits, _ and $)");
  const definitions = index.find(fn);
  if (definitions.length === 0) throw new ApiError(404, `no function named ${fn} in the model's source`);
  return { definitions };
}

// ---- benchmark results ----

function readJson(file: string, notes: string[]): unknown {
  if (!fs.existsSync(file)) {
    notes.push(`${path.basename(file)}: not found in ${path.dirname(file)}`);
    return null;
  }
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
  } catch (e) {
    notes.push(`${path.basename(file)}: not readable JSON (${(e as Error).message})`);
    return null;
  }
}

/** The schema version this page reads for each kind (2: dirty-log on one VM for both ways, scale in trials). */
const BENCH_VERSION: Record<string, number> = { 'dirty-log': 2, scale: 2 };

function shapeOf(v: unknown, kind: string, arrayField: string, file: string, notes: string[]): boolean {
  if (v === null) return false;
  if (!isRecord(v) || v.kind !== kind) {
    notes.push(`${file}: not a ${kind} result (its "kind" is ${isRecord(v) ? JSON.stringify(v.kind) : 'missing'})`);
    return false;
  }
  const want = BENCH_VERSION[kind];
  if (v.version !== want) {
    notes.push(`${file}: version ${JSON.stringify(v.version)}; this page reads version ${want} (run kvmmu bench ${kind} --out DIR again)`);
    return false;
  }
  if (!Array.isArray(v[arrayField]) || !isRecord(v.config)) {
    notes.push(`${file}: "${arrayField}" or "config" is missing`);
    return false;
  }
  return true;
}

/** GET /api/bench: the results `kvmmu bench --out DIR` wrote, if any. */
export function readBench(dir: string): BenchResponse {
  const abs = path.resolve(dir);
  const notes: string[] = [];
  const d = readJson(path.join(abs, 'dirty-log.json'), notes);
  const s = readJson(path.join(abs, 'scale.json'), notes);
  return {
    dir: abs,
    dirtyLog: shapeOf(d, 'dirty-log', 'runs', 'dirty-log.json', notes) ? (d as DirtyLogBench) : null,
    scale: shapeOf(s, 'scale', 'points', 'scale.json', notes) ? (s as ScaleBench) : null,
    notes,
  };
}
