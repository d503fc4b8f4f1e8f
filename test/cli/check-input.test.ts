// What `kvmmu check` refuses from its input: replay strings longer than the execution, unprintable thread names, VM settings for a scenario with no VM.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');

function kvmmu(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function tempFile(name: string, text: string): string {
  const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-input-')), name);
  fs.writeFileSync(f, text);
  return f;
}

/** A usage error: exit 2, nothing on stdout, one line on stderr matching `pattern`. */
function usageError(r: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 2, r.stderr + r.stdout);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, pattern);
}

test('a replay string with steps after the execution ended is an error naming where it ended', () => {
  // lost-update: each thread loads and stores once, 4 steps in all.
  usageError(kvmmu('check', '--replay', 'lost-update:direct:none:pin:0,1,0,1,1,1,0'), /ended after step 4 \(it broke check\), but the schedule has 7 steps: 3 too many/);
  usageError(kvmmu('check', '--replay', 'atomic-counter:direct:none:pin:0,1,2,2'), /ended after step 3 \(every thread finished\), but the schedule has 4 steps/);
  // Exact: accepted, and the step count is the trace's.
  const ok = kvmmu('check', '--replay', 'lost-update:direct:none:pin:0,1,0,1', '--json');
  assert.equal(ok.code, 1, ok.stderr);
  const j = JSON.parse(ok.stdout) as { violation: { steps: number; trace: unknown[] } };
  assert.equal(j.violation.steps, 4);
  assert.equal(j.violation.trace.length, 4);
  const text = kvmmu('check', '--replay', 'lost-update:direct:none:pin:0,1,0,1');
  assert.match(text.stdout, /^ {2}4 steps, 2 preemptions:$/m);
});

for (const [what, name] of [
  ['empty', "''"],
  ['blank', "'  '"],
  ['with a newline', "'A\\nB'"],
  ['with an escape code', "'\\u001b[31mred'"],
  ['with a tab', "'A\\tB'"],
] as const) {
  test(`a thread name ${what} is refused (exit 2, one line)`, () => {
    const f = tempFile(
      'names.ts',
      `import { defineScenario } from 'kvmmu/scenario';
export const s = defineScenario({ name: 'names', description: '', memory: { metaBytes: 64 },
  threads: { ${name}: (vm) => { vm.mem.load32(vm.word(0)); }, B: (vm) => { vm.mem.load32(vm.word(0)); } } });
`,
    );
    const r = kvmmu('check', '--file', f);
    usageError(r, /thread (with an empty name|".*": a thread name must be printable)/);
    // The refusal itself prints the name escaped, never raw.
    assert.ok(!r.stderr.includes('\u001b'), 'no raw escape code');
  });
}

test('--mode, --guard, --indirect-fast-path and --page-marking on a raw-memory scenario are errors', () => {
  usageError(kvmmu('check', '--scenario', 'lost-update', '--mode', 'shadow'), /lost-update runs on raw memory, with no VM: --mode does not apply/);
  usageError(kvmmu('check', '--scenario', 'lost-update', '--guard', 'pin-indirect=off', '--page-marking', 'fault'), /--guard and --page-marking do not apply/);
  usageError(kvmmu('check', '--replay', 'lost-update:direct:none:pin:0,1,0,1', '--mode', 'direct'), /no VM: --mode does not apply/);
  // A VM scenario takes them.
  const vm = kvmmu('check', '--scenario', 'aba-gfn-pfn', '--mode', 'shadow', '--json');
  assert.equal(vm.code, 0, vm.stderr);
});
