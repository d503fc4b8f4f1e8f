// User scenario files: the README's example loads, compiles to generator form and runs; broken files fail with a clear error and exit 2.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.join(__dirname, '..', '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');

function kvmmu(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 120_000, maxBuffer: 64 * 1024 * 1024 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function tempFile(name: string, text: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-test-'));
  const f = path.join(dir, name);
  fs.writeFileSync(f, text);
  return f;
}

test("the README's example scenario file checks clean and exhaustively in both modes", () => {
  for (const mode of ['direct', 'shadow']) {
    const r = kvmmu('check', '--file', path.join(ROOT, 'examples', 'two-faults.ts'), '--mode', mode, '--json');
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const j = JSON.parse(r.stdout) as { scenario: string; complete: boolean; violation: unknown; executions: number };
    assert.equal(j.scenario, 'two-faults');
    assert.equal(j.complete, true);
    assert.equal(j.violation, null);
    assert.ok(j.executions > 1);
  }
});

test('a JavaScript scenario file works too, and finds its seeded bug (exit 1)', () => {
  const f = tempFile(
    'racy.js',
    `const { defineScenario } = require('kvmmu/scenario');
exports.racy = defineScenario({
  name: 'racy-flag',
  description: 'check-then-set on a flag without an atomic operation',
  memory: { metaBytes: 64 },
  threads: {
    A: (vm) => { if (vm.mem.load32(vm.word(0)) === 0) vm.mem.store32(vm.word(4), vm.mem.load32(vm.word(4)) + 1); vm.mem.store32(vm.word(0), 1); },
    B: (vm) => { if (vm.mem.load32(vm.word(0)) === 0) vm.mem.store32(vm.word(4), vm.mem.load32(vm.word(4)) + 1); vm.mem.store32(vm.word(0), 1); },
  },
  check: (vm) => (vm.mem.load32(vm.word(4)) === 1 ? null : 'both threads entered'),
});
`,
  );
  const r = kvmmu('check', '--file', f, '--json');
  assert.equal(r.code, 1, r.stderr);
  const j = JSON.parse(r.stdout) as { violation: { message: string; schedule: string } };
  assert.equal(j.violation.message, 'both threads entered');
  const again = kvmmu('check', '--file', f, '--replay', j.violation.schedule);
  assert.equal(again.code, 1);
  // The text report's replay line names the file, so it reproduces the violation as printed.
  const text = kvmmu('check', '--file', f);
  // No VM: no guard or MMU setting applies, and the header does not claim any.
  assert.match(text.stdout, /^scenario racy-flag \(raw memory, no VM\)\n/);
  assert.ok(text.stdout.includes(`replay: kvmmu check --file ${f} --replay '${j.violation.schedule}'`), text.stdout);
});

for (const [what, name, text, pattern] of [
  ['a type error', 'bad-type.ts', `import { defineScenario } from 'kvmmu/scenario';\nexport const s = defineScenario({ name: 'x', description: '', threads: { A: (vm) => vm.nope() } });\n`, /does not load.*nope/s],
  ['a callback the scheduler cannot follow', 'callback.ts', `import { defineScenario, type ScenarioVm } from 'kvmmu/scenario';\nconst each = (f: () => void) => f();\nexport const s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, threads: { A: (vm: ScenarioVm) => each(() => { vm.mem.load32(vm.word(0)); }) } });\n`, /cannot compile to generator form/],
  ['no scenario exported', 'empty.ts', `export const x = 1;\n`, /exports no scenario/],
  ['a syntax error', 'syntax.js', `exports.s = {{{\n`, /does not load/],
  ['no threads', 'nothreads.ts', `import { defineScenario } from 'kvmmu/scenario';\nexport const s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, threads: {} });\n`, /scenario x has no threads/],
  ['a setup that throws', 'setup.ts', `import { defineScenario } from 'kvmmu/scenario';\nexport const s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, setup: () => { throw new Error('boom'); }, threads: { A: (vm) => { vm.mem.load32(vm.word(0)); } } });\n`, /scenario x: its setup failed: boom/],
  [
    'an untyped helper (its memory operations would silently not run)',
    'untyped.js',
    `const { defineScenario } = require('kvmmu/scenario');\nfunction incr(vm) { const v = vm.mem.load32(vm.word(0)); vm.mem.store32(vm.word(0), v + 1); }\nexports.s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, threads: { A: incr, B: incr },\n  check: (vm) => (vm.mem.load32(vm.word(0)) === 2 ? null : 'lost') });\n`,
    /untyped\.js:2:31: cannot follow 'vm\.mem\.load32\(\.\.\.\)': its type is unknown \(any\).*@param \{import\('kvmmu\/scenario'\)\.ScenarioVm\} vm/,
  ],
  [
    'an async thread',
    'async.ts',
    `import { defineScenario, type ScenarioVm } from 'kvmmu/scenario';\nasync function bump(vm: ScenarioVm) { vm.mem.store32(vm.word(0), 1); }\nexport const s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, threads: { A: async (vm) => { await bump(vm); } } });\n`,
    /async\.ts:2:1: an async function that reaches shared memory/,
  ],
  [
    'a check that returns a boolean',
    'bool.js',
    `const { defineScenario } = require('kvmmu/scenario');\nexports.s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, threads: { A: (vm) => { vm.mem.store32(vm.word(0), 1); } },\n  check: (vm) => vm.mem.load32(vm.word(0)) === 1 });\n`,
    /scenario x's check must return null \(it holds\) or a string saying what is wrong, not boolean/,
  ],
  [
    "a thread changing its setup's data",
    'mutate.ts',
    `import { defineScenario } from 'kvmmu/scenario';\nexport const s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, setup: () => ({ n: 0 }), threads: {\n  A: (vm, d) => { d.n++; vm.mem.store32(vm.word(0), d.n); },\n} });\n`,
    /scenario x's thread 'A' changed the data its setup returned \(Cannot assign to read only property 'n'/,
  ],
  ['a name that breaks replay strings', 'colon.ts', `import { defineScenario } from 'kvmmu/scenario';\nexport const s = defineScenario({ name: 'a: b', description: '', memory: { metaBytes: 64 }, threads: { A: (vm) => { vm.mem.load32(vm.word(0)); } } });\n`, /scenario name 'a: b' may hold only letters, digits/],
  ['a thread that is not a function', 'notfn.js', `const { defineScenario } = require('kvmmu/scenario');\nexports.s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, threads: { A: 5 } });\n`, /scenario x's thread 'A' is not a function/],
  ['a vCPU the machine does not have', 'vcpu.ts', `import { defineScenario } from 'kvmmu/scenario';\nexport const s = defineScenario({ name: 'x', description: '', machine: () => ({ vcpus: 2, memBytes: 16 * 4096, hostFrames: 24 }), setup: (vm) => { vm.powerOn(8); }, threads: { A: (vm) => { vm.program(3, [{ op: 'read', gva: vm.addr(1) }]); } } });\n`, /scenario x's thread 'A': vm\.vcpu\(3\): the scenario's machine has 2 vCPUs \(0 to 1\)/],
  ['a vCPU never powered on', 'nopower.ts', `import { defineScenario } from 'kvmmu/scenario';\nexport const s = defineScenario({ name: 'x', description: '', machine: () => ({ vcpus: 1, memBytes: 16 * 4096, hostFrames: 24 }), threads: { A: (vm) => { vm.program(0, [{ op: 'read', gva: vm.addr(1) }]); } } });\n`, /vm\.vcpu\(0\): vCPU 0 was never set up: call vm\.powerOn/],
  ['a bad machine', 'machine.ts', `import { defineScenario } from 'kvmmu/scenario';\nexport const s = defineScenario({ name: 'x', description: '', machine: () => ({ vcpus: 0, memBytes: 16 * 4096 }), threads: { A: (vm) => { vm.program(0, []); } } });\n`, /scenario x's machine: vcpus must be an integer from 1 to 64, not 0/],
  ['a misaligned word', 'word.ts', `import { defineScenario } from 'kvmmu/scenario';\nexport const s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, threads: { A: (vm) => { vm.mem.load32(vm.word(2)); } } });\n`, /vm\.word\(2\): the byte offset must be a multiple of 4/],
  ['a require() of its own module in TypeScript', 'req.ts', `import { defineScenario } from 'kvmmu/scenario';\nconst h = require('./helper');\nexport const s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, threads: { A: (vm) => { vm.mem.load32(vm.word(h.offset)); } } });\n`, /Cannot find module '\.\/helper' \(a module of its own must be imported with import/],
  [
    'a thread looping without a memory operation',
    'spin.ts',
    `import { defineScenario } from 'kvmmu/scenario';\nlet flag = false;\nexport const s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, threads: {\n  A: (vm) => { while (!flag) { /* B cannot run: no operation hands over */ } vm.mem.load32(vm.word(0)); },\n  B: (vm) => { flag = true; vm.mem.store32(vm.word(0), 1); },\n} });\n`,
    /scenario x's thread 'A' ran 100,000,000 loop iterations without a memory operation/,
  ],
  [
    'a setup looping without a memory operation',
    'setup-loop.js',
    `const { defineScenario } = require('kvmmu/scenario');\nexports.s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, setup: () => { for (let i = 0; i >= 0; i = (i + 1) % 10) {} }, threads: { A: (vm) => { vm.mem.load32(vm.word(0)); } } });\n`,
    /scenario x's setup ran 100,000,000 loop iterations without a memory operation/,
  ],
  [
    'state kept between executions',
    'state.ts',
    `import { defineScenario } from 'kvmmu/scenario';\nlet runs = 0;\nexport const s = defineScenario({ name: 'x', description: '', memory: { metaBytes: 64 }, threads: {\n  A: (vm) => { runs++; if (runs % 2 === 1) vm.mem.load32(vm.word(0)); else vm.mem.store32(vm.word(8), 1); vm.mem.store32(vm.word(4), 1); },\n  B: (vm) => { vm.mem.store32(vm.word(0), 1); },\n} });\n`,
    /scenario x does not repeat itself: replaying the same schedule, thread A's step 1 is not the operation it was/,
  ],
] as const) {
  test(`a scenario file with ${what} is refused with a clear error and exit 2`, () => {
    const r = kvmmu('check', '--file', tempFile(name, text));
    assert.equal(r.code, 2, r.stdout + r.stderr);
    assert.match(r.stderr, pattern);
    assert.equal(r.stdout, '');
  });
}

test('a missing scenario file is exit 2 with the path', () => {
  const r = kvmmu('check', '--file', '/no/such/file.ts');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /cannot read scenario file \/no\/such\/file.ts/);
});

test('a scenario file can import a module of its own, whose functions the scheduler follows too', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-test-'));
  fs.writeFileSync(
    path.join(dir, 'counter.ts'),
    `import type { ScenarioVm } from 'kvmmu/scenario';\nexport function increment(vm: ScenarioVm): void { const v = vm.mem.load32(vm.word(0)); vm.mem.store32(vm.word(0), v + 1); }\n`,
  );
  fs.writeFileSync(
    path.join(dir, 'main.ts'),
    `import { defineScenario } from 'kvmmu/scenario';\nimport { increment } from './counter';\nexport const s = defineScenario({ name: 'split', description: 'a lost update, the increment in another file', memory: { metaBytes: 64 },\n  threads: { A: increment, B: increment },\n  check: (vm) => (vm.mem.load32(vm.word(0)) === 2 ? null : 'an increment was lost') });\n`,
  );
  const r = kvmmu('check', '--file', path.join(dir, 'main.ts'), '--json');
  assert.equal(r.code, 1, r.stderr + r.stdout);
  assert.equal((JSON.parse(r.stdout) as { violation: { message: string } }).violation.message, 'an increment was lost');
});

test('a JavaScript helper typed with a JSDoc line is followed (its race is found), and a scenario exported twice counts once', () => {
  const f = tempFile(
    'jsdoc.js',
    `const { defineScenario } = require('kvmmu/scenario');
/** @param {import('kvmmu/scenario').ScenarioVm} vm */
function incr(vm) { const v = vm.mem.load32(vm.word(0)); vm.mem.store32(vm.word(0), v + 1); }
const s = defineScenario({ name: 'jsdoc-incr', description: '', memory: { metaBytes: 64 }, threads: { A: incr, B: incr },
  check: (vm) => (vm.mem.load32(vm.word(0)) === 2 ? null : 'an increment was lost') });
exports.s = s;
exports.default = s;
`,
  );
  const r = kvmmu('check', '--file', f, '--json');
  assert.equal(r.code, 1, r.stderr);
  assert.equal((JSON.parse(r.stdout) as { violation: { message: string } }).violation.message, 'an increment was lost');
});

test("a livelock's text trace shows its first and last steps, not all 20,000; --json keeps them all", () => {
  const f = tempFile(
    'livelock.ts',
    `import { defineScenario } from 'kvmmu/scenario';
export const s = defineScenario({ name: 'spin', description: '', memory: { metaBytes: 64 }, threads: {
  A: (vm) => { while (vm.mem.load32(vm.word(0)) === 0) { vm.mem.fetchAdd32(vm.word(4), 1); /* nobody sets word 0: a count for ever */ } },
} });
`,
  );
  const text = kvmmu('check', '--file', f);
  assert.equal(text.code, 1, text.stderr);
  assert.match(text.stdout, /VIOLATION of livelock/);
  assert.match(text.stdout, /… {2}\(19600 steps left out here; --json has them all\)/);
  assert.ok(text.stdout.split('\n').length < 500, `${text.stdout.split('\n').length} lines`);
  const json = kvmmu('check', '--file', f, '--json');
  assert.equal((JSON.parse(json.stdout) as { violation: { trace: unknown[] } }).violation.trace.length, 20_000);
});

test('a TypeScript scenario file may use console (Node types are there), and --strategy random with --seconds alone runs past the default 10,000 executions', () => {
  const f = tempFile(
    'console.ts',
    `import { defineScenario } from 'kvmmu/scenario';
let told = false;
export const s = defineScenario({ name: 'tell', description: '', memory: { metaBytes: 64 }, threads: {
  A: (vm) => { vm.mem.store32(vm.word(0), 1); },
},
  check: (vm) => { if (!told) console.error('checked once'); told = true; return vm.mem.load32(vm.word(0)) === 1 ? null : 'lost'; } });
`,
  );
  const r = kvmmu('check', '--file', f, '--strategy', 'random', '--seconds', '3', '--json');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /checked once/);
  // One thread, one operation: an execution takes microseconds, so 3 s hold far more than 10,000.
  assert.ok((JSON.parse(r.stdout) as { executions: number }).executions > 10_000, r.stdout);
});

test('--engine threads replays a scenario file on worker threads, spin-loop waits included, running the operations the checker ran', () => {
  const f = tempFile(
    'spins.ts',
    `import { defineScenario } from 'kvmmu/scenario';
export const s = defineScenario({ name: 'spins', description: '', memory: { metaBytes: 64 }, threads: {
  waiter: (vm) => { while (vm.mem.load32(vm.word(0)) !== 2) {} vm.mem.store32(vm.word(4), 1); },
  writer: (vm) => { vm.mem.store32(vm.word(0), 1); vm.mem.store32(vm.word(0), 2); },
},
  check: (vm) => (vm.mem.load32(vm.word(4)) === 1 ? null : 'the waiter never got through') });
`,
  );
  // A schedule in which the waiter reads 0 twice (so it waits), is woken by the 1, waits again, and gets the 2.
  const replay = 'spins:direct:none:pin:0*2,1,0*2,1,0*3';
  const checker = kvmmu('check', '--file', f, '--replay', replay, '--json');
  assert.equal(checker.code, 0, checker.stderr);
  const rows = (JSON.parse(checker.stdout) as { violation: null; threads: string[] }).threads;
  assert.deepEqual(rows, ['waiter', 'writer']);
  const threads = kvmmu('check', '--file', f, '--replay', replay, '--engine', 'threads', '--json');
  assert.equal(threads.code, 0, threads.stderr);
  const j = JSON.parse(threads.stdout) as { engine: string; finished: boolean; check: string | null; trace: { thread: number; op: string; target: string }[] };
  assert.equal(j.engine, 'threads');
  assert.equal(j.finished, true);
  assert.equal(j.check, null);
  assert.deepEqual(
    j.trace.map((r) => `${r.thread} ${r.op} ${r.target}`),
    [
      '0 load32 word(0)',
      '0 load32 word(0)',
      '1 store32 word(0)',
      '0 awaitChange until one changes: word(0) = 0',
      '0 load32 word(0)',
      '1 store32 word(0)',
      '0 awaitChange until one changes: word(0) = 1',
      '0 load32 word(0)',
      '0 store32 word(4)',
    ],
  );
  // The generator engine ran the very same steps: a step more or less and the replay there would not fit.
  assert.match(kvmmu('check', '--file', f, '--replay', replay + ',0').stderr, /ended after step 9 \(every thread finished\)/);
});
