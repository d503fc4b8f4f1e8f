// Loading the checker's scenarios: the built-ins from the generator-form build, and a user's .ts or .js scenario file compiled to generator form on the fly.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import ts from 'typescript';
import { KvmmuError } from '../shm/errors';
import type { GenScenarioModule } from '../check/engine';
import type { ScenarioSpec } from '../check/gen/scenario';
import { GenTransformError, buildGen, type GenBuildResult } from './gen-transform';

/** dist/ of this installation (this file is dist/src/cli/scenario-file.js). */
const DIST = path.join(__dirname, '..', '..');
/** The project root, where src/ lives. */
const ROOT = path.join(DIST, '..');

/** The generator-form scenario runtime the checker drives. */
export function loadGenModule(): GenScenarioModule {
  const file = path.join(DIST, 'gen', 'src', 'check', 'gen', 'scenario.js');
  if (!fs.existsSync(file)) throw new KvmmuError(`the checker's generator build is missing (${file}): run npm run build`);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(file) as GenScenarioModule;
}

export interface ScenarioCatalog {
  readonly builtin: readonly ScenarioSpec[];
  readonly examples: readonly ScenarioSpec[];
}

export function loadCatalog(): ScenarioCatalog {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const m = require(path.join(DIST, 'gen', 'src', 'check', 'gen', 'scenarios', 'index.js')) as {
    BUILTIN_SCENARIOS: ScenarioSpec[];
    EXAMPLE_SCENARIOS: ScenarioSpec[];
  };
  return { builtin: m.BUILTIN_SCENARIOS, examples: m.EXAMPLE_SCENARIOS };
}

export function findScenario(catalog: ScenarioCatalog, name: string): ScenarioSpec {
  const all = [...catalog.builtin, ...catalog.examples];
  const s = all.find((x) => x.name === name);
  if (s === undefined) throw new KvmmuError(`unknown scenario '${name}': the scenarios are ${all.map((x) => x.name).join(', ')}`);
  return s;
}

function isScenario(v: unknown): v is ScenarioSpec {
  return v !== null && typeof v === 'object' && typeof (v as ScenarioSpec).name === 'string' && typeof (v as ScenarioSpec).threads === 'object';
}

/**
 * Compile a user's scenario file (TypeScript or JavaScript importing
 * 'kvmmu/scenario') to generator form and load the scenarios it exports. With
 * several, `pick` names the one to use. Errors (missing file, type errors,
 * code the checker cannot follow, no scenario exported) are KvmmuErrors.
 */
export function loadScenarioFile(file: string, pick?: string): ScenarioSpec {
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-scenario-'));
  try {
    return loadCompiledScenario(compileScenarioFileGen(file, outDir), file, pick);
  } finally {
    // Loaded or not, the compiled copy is not needed any more (require keeps the module).
    fs.rmSync(outDir, { recursive: true, force: true });
  }
}

/**
 * Compile scenario file `file` to generator form under `outDir` and return its JavaScript, for loading with
 * loadCompiledScenario — by this process, or by worker threads that should not each run the compiler (a
 * parallel check). Errors as loadScenarioFile's.
 */
export function compileScenarioFileGen(file: string, outDir: string): string {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs) || !fs.statSync(abs).isFile()) throw new KvmmuError(`cannot read scenario file ${file}: no such file`);
  if (!/\.(ts|js)$/.test(abs)) throw new KvmmuError(`scenario file ${file} must be a .ts or .js file (CommonJS or TypeScript, not an ES module)`);
  return compileScenarioFile(abs, file, outDir);
}

/** Load the scenario (`pick`, or the only one) from `js`, scenario file `file` compiled by compileScenarioFileGen. */
export function loadCompiledScenario(js: string, file: string, pick?: string): ScenarioSpec {
  let mod: Record<string, unknown>;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    mod = require(js) as Record<string, unknown>;
  } catch (e) {
    // A TypeScript file's require() of a module of its own is not followed by the compiler, so that module was not compiled with it.
    const ownModule = (e as { code?: unknown }).code === 'MODULE_NOT_FOUND' && /Cannot find module '\.{1,2}\//.test((e as Error).message);
    const hint = ownModule ? ' (a module of its own must be imported with import, or required from a .js file, to be compiled with the file)' : '';
    throw new KvmmuError(`scenario file ${file} does not load: ${(e as Error).message.split('\n')[0]}${hint}`);
  }
  // A scenario exported twice (as a name and as the default, say) is one scenario.
  const found = [...new Set(Object.values(mod).filter(isScenario))];
  if (found.length === 0) throw new KvmmuError(`scenario file ${file} exports no scenario (export the result of defineScenario)`);
  if (pick !== undefined) {
    const s = found.find((x) => x.name === pick);
    if (s === undefined) throw new KvmmuError(`scenario file ${file} has no scenario '${pick}' (it has ${found.map((x) => x.name).join(', ')})`);
    return validScenario(s, file);
  }
  if (found.length > 1) throw new KvmmuError(`scenario file ${file} exports ${found.length} scenarios: pick one with --scenario (${found.map((x) => x.name).join(', ')})`);
  return validScenario(found[0]!, file);
}

/**
 * Compile scenario file `file` as it is (no generator form) against the normal build, under `outDir`, for
 * threads on worker_threads (`kvmmu check --engine threads`): the loop guard and the spin-loop ticks are there,
 * which a worker answers by parking itself. Returns the file's JavaScript; load it with require in each thread.
 * The file is assumed to have loaded with loadScenarioFile already (same errors).
 */
export function compileScenarioFilePlain(file: string, outDir: string): string {
  return compileScenarioFile(path.resolve(file), file, outDir, true);
}

/**
 * Compile scenario file `abs` (named `file` in errors) and the files of its
 * own it imports to generator form (or, `plain`, as they are, against the
 * normal build) under `outDir`; returns the file's JavaScript. Errors are KvmmuErrors.
 */
function compileScenarioFile(abs: string, file: string, outDir: string, plain = false): string {
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.CommonJS,
    moduleResolution: ts.ModuleResolutionKind.Node10,
    lib: ['lib.es2022.d.ts'],
    types: [],
    strict: true,
    allowJs: true,
    checkJs: false,
    esModuleInterop: true,
    skipLibCheck: true,
    baseUrl: ROOT,
    paths: { 'kvmmu/scenario': [path.join(ROOT, 'src', 'check', 'gen', 'api.ts')] },
    outDir,
    sourceMap: false,
    declaration: false,
  };
  const genApi = plain ? path.join(DIST, 'src', 'check', 'gen', 'api.js') : path.join(DIST, 'gen', 'src', 'check', 'gen', 'api.js');
  // The file and the files of its own it imports (not kvmmu's sources, which the paths mapping pulls in, nor packages).
  const src = path.join(ROOT, 'src') + path.sep;
  const own = (f: string): boolean => !path.resolve(f).startsWith(src) && !f.split(/[\\/]/).includes('node_modules');
  // The file's loops tick the checker's loop guard (the engine's copy, in this build: it resets the count).
  const loopGuard = path.join(DIST, 'src', 'check', 'loop-guard.js');
  const build = (o: ts.CompilerOptions): GenBuildResult => buildGen([abs], o, own, (spec) => (spec === 'kvmmu/scenario' ? genApi : spec), loopGuard, plain);
  const nodeTypes = path.join(ROOT, 'node_modules', '@types');
  let emitted: ReadonlyMap<string, string[]>;
  try {
    try {
      emitted = build(options).bySource;
    } catch (e) {
      // Node's own types (console, require, node:assert) cost most of a second to load, so only a file that
      // uses them gets them, when installed (npm install brings them: a dev dependency).
      if (!(e instanceof GenTransformError && NEEDS_NODE_TYPES.test(e.message) && fs.existsSync(path.join(nodeTypes, 'node')))) throw e;
      emitted = build({ ...options, types: ['node'], typeRoots: [nodeTypes] }).bySource;
    }
  } catch (e) {
    if (e instanceof GenTransformError) throw new KvmmuError(`scenario file ${file} does not load: ${e.message.trim()}`);
    throw e;
  }
  const js = (emitted.get(abs) ?? []).find((f) => f.endsWith('.js'));
  if (js === undefined) throw new KvmmuError(`scenario file ${file} produced no JavaScript`);
  return js;
}

/**
 * TypeScript's errors for Node's globals and modules without Node's types:
 * cannot find name 'console' (2584) or 'require' / 'process' (2580, 2591), or
 * module 'node:...' (2307).
 */
const NEEDS_NODE_TYPES = /error TS(2584|2580|2591)\b|error TS2307: Cannot find module 'node:/;

/** Scenario names go into replay strings (fields split by ':') and shell lines: letters, digits, '.', '_' and '-'. */
const SCENARIO_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** `s`, after checking what TypeScript does not (a JavaScript file, or values typed `any`). */
function validScenario(s: ScenarioSpec, file: string): ScenarioSpec {
  if (!SCENARIO_NAME.test(s.name))
    throw new KvmmuError(`scenario file ${file}: scenario name '${s.name}' may hold only letters, digits, '.', '_' and '-' (it goes into replay strings)`);
  for (const [name, body] of Object.entries(s.threads))
    if (typeof body !== 'function') throw new KvmmuError(`scenario file ${file}: scenario ${s.name}'s thread '${name}' is not a function`);
  for (const part of ['setup', 'check', 'machine'] as const)
    if (s[part] !== undefined && typeof s[part] !== 'function') throw new KvmmuError(`scenario file ${file}: scenario ${s.name}'s ${part} is not a function`);
  return s;
}
