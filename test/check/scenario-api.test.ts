// The scenario API as a user gets it: the examples type-check against the .d.ts files kvmmu/scenario ships (through package.json's exports and typesVersions), and docs/scenario-api.md names every public method a scenario can reach.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import ts from 'typescript';

const ROOT = path.join(__dirname, '..', '..', '..');
const EXAMPLES = fs.readdirSync(path.join(ROOT, 'examples')).filter((f) => f.endsWith('.ts'));

/** A project outside this repository that depends on kvmmu (node_modules/kvmmu is this installation), holding `files`. */
function userProject(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-user-'));
  fs.mkdirSync(path.join(dir, 'node_modules'));
  fs.symlinkSync(ROOT, path.join(dir, 'node_modules', 'kvmmu'), 'dir');
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  return dir;
}

/** TypeScript's errors for the project's files, with Node's module resolution `resolution`. */
function typeErrors(dir: string, names: string[], resolution: 'node16' | 'node10'): string[] {
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    lib: ['lib.es2022.d.ts'],
    types: [],
    ...(resolution === 'node16'
      ? { module: ts.ModuleKind.Node16, moduleResolution: ts.ModuleResolutionKind.Node16 }
      : { module: ts.ModuleKind.CommonJS, moduleResolution: ts.ModuleResolutionKind.Node10 }),
  };
  const program = ts.createProgram(
    names.map((n) => path.join(dir, n)),
    options,
  );
  const host: ts.FormatDiagnosticsHost = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => dir, getNewLine: () => '\n' };
  return ts.getPreEmitDiagnostics(program).map((d) => ts.formatDiagnostic(d, host).trim());
}

test('the examples type-check against the declarations kvmmu/scenario ships, through exports (node16) and typesVersions (node10)', () => {
  assert.ok(EXAMPLES.length >= 5, EXAMPLES.join(', '));
  const files: Record<string, string> = {};
  for (const f of EXAMPLES) files[f] = fs.readFileSync(path.join(ROOT, 'examples', f), 'utf8');
  const dir = userProject(files);
  for (const resolution of ['node16', 'node10'] as const) assert.deepEqual(typeErrors(dir, EXAMPLES, resolution), [], resolution);
});

test('the shipped declarations are the real types: a misuse is a type error an editor shows', () => {
  const dir = userProject({
    'wrong.ts': `import { defineScenario, threads } from 'kvmmu/scenario';
export const s = defineScenario({ name: 'w', description: '', memory: { metaBytes: 64 },
  threads: threads(2, (vm, _d, i) => { vm.mem.load32('x'); vm.mem.waitUntil32([vm.word(0)], (v) => v[0] === i); vm.host.swapOut(); }) });
`,
  });
  const errors = typeErrors(dir, ['wrong.ts'], 'node16');
  assert.equal(errors.length, 2, errors.join('\n'));
  assert.match(errors[0]!, /wrong\.ts\(3,54\).*Argument of type 'string' is not assignable to parameter of type 'number'/);
  assert.match(errors[1]!, /wrong\.ts\(3,\d+\).*Expected 1 arguments, but got 0/);
});

test('docs/scenario-api.md names every public method of vm, vm.mem, vm.kvm (and its dirty log and notifier), vm.host and a vCPU', () => {
  const doc = fs.readFileSync(path.join(ROOT, 'docs', 'scenario-api.md'), 'utf8');
  const classes: [string, string][] = [
    ['src/check/gen/scenario.ts', 'ScenarioVm'],
    ['src/shm/access.ts', 'Mem'],
    ['src/kvm/kvm.ts', 'Kvm'],
    ['src/kvm/dirty-log.ts', 'DirtyLog'],
    ['src/kvm/notifier.ts', 'KvmNotifier'],
    ['src/host/host.ts', 'Host'],
    ['src/vcpu/vcpu.ts', 'Vcpu'],
  ];
  const program = ts.createProgram(
    classes.map(([f]) => path.join(ROOT, f)),
    { target: ts.ScriptTarget.ES2022, strict: true, noEmit: true },
  );
  const missing: string[] = [];
  let methods = 0;
  for (const [file, name] of classes) {
    const sf = program.getSourceFile(path.join(ROOT, file))!;
    const cls = sf.statements.find((s): s is ts.ClassDeclaration => ts.isClassDeclaration(s) && s.name?.text === name);
    assert.ok(cls !== undefined, `${name} in ${file}`);
    for (const m of cls.members) {
      if (!ts.isMethodDeclaration(m) || ts.getCombinedModifierFlags(m) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)) continue;
      const method = m.name.getText(sf);
      methods++;
      if (!doc.includes(`${method}(`)) missing.push(`${name}.${method}`);
    }
  }
  assert.ok(methods > 80, `${methods} methods`);
  assert.deepEqual(missing, []);
});
