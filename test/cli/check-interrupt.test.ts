// Every phase of kvmmu check is bounded: SIGINT or SIGTERM prints the partial report and exits 130; a setup or final check that spins on memory ends with one error line.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');

/** Run kvmmu, send `signal` once `ready(stdout)` holds and `delayMs` more have passed; resolve with the outcome. */
function interrupted(
  args: string[],
  signal: NodeJS.Signals,
  delayMs: number,
  ready: (out: string) => boolean = () => true,
): Promise<{ code: number | null; stdout: string; stderr: string; afterSignalMs: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let sentAt = 0;
    const killer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    const arm = (): void => {
      if (sentAt !== 0 || !ready(stdout)) return;
      sentAt = -1;
      setTimeout(() => {
        sentAt = Date.now();
        child.kill(signal);
      }, delayMs);
    };
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      arm();
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('spawn', arm);
    child.on('close', (code) => {
      clearTimeout(killer);
      resolve({ code, stdout, stderr, afterSignalMs: Date.now() - sentAt });
    });
  });
}

test('SIGINT during a long check prints how far it got in JSON and exits 130', async () => {
  // tdp-rcu-free takes about 20 s exhaustively here: stopped after 2 s.
  const r = await interrupted(['check', '--scenario', 'tdp-rcu-free', '--json'], 'SIGINT', 2000);
  assert.equal(r.code, 130, r.stderr);
  assert.ok(r.afterSignalMs < 5000, `it stopped ${r.afterSignalMs} ms after the signal`);
  const j = JSON.parse(r.stdout) as { interrupted: boolean; complete: boolean; executions: number; pending: number; violation: unknown; seconds: number };
  assert.equal(j.interrupted, true);
  assert.equal(j.complete, false);
  assert.ok(j.executions > 0);
  assert.ok(j.pending > 0, 'alternatives were left');
  assert.equal(j.violation, null);
});

test('SIGTERM during check --all prints the reports so far, the partial one, and exits 130', async () => {
  // aba-gfn-pfn finishes at once; wp-tlb-flush takes seconds (about 2 on two workers, as --all splits each
  // scenario over the cores; 2.5 on one): stopped during it.
  const r = await interrupted(['check', '--all'], 'SIGTERM', 500, (out) => out.includes('scenario wp-tlb-flush') || out.includes('scenario aba-gfn-pfn'));
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stdout, /^scenario aba-gfn-pfn .*\ndpor \((Optimal|Source)-DPOR\): 21 executions .*\n21 complete, 0 abandoned as redundant .*\nno violation: every schedule was explored \(exhaustive\)$/m);
  assert.match(r.stdout, /^INTERRUPTED after \d+ executions \(longest \d+ steps\), \d+ alternatives? left unexplored on the current path: NOT exhaustive; no violation found so far$/m);
  assert.match(r.stdout, /^interrupted: \d+ scenario\(s\) not checked$/m);
});

for (const [phase, body] of [
  ['setup', `setup(vm) { while (vm.mem.load32(vm.word(0)) === 0) {} },\n  threads: { A: (vm) => { vm.mem.store32(vm.word(0), 1); } },`],
  ['final check', `threads: { A: (vm) => { vm.mem.store32(vm.word(0), 1); } },\n  check(vm) { while (vm.mem.load32(vm.word(0)) === 1) {} return null; },`],
] as const) {
  test(`a ${phase} spinning on shared memory ends with one error line within seconds`, () => {
    const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-spin-')), 'spin.ts');
    fs.writeFileSync(f, `import { defineScenario } from 'kvmmu/scenario';\nexport const s = defineScenario({ name: 'spin', description: '', memory: { metaBytes: 64 },\n  ${body}\n});\n`);
    const t0 = Date.now();
    const r = spawnSync(process.execPath, [CLI, 'check', '--file', f], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`scenario spin's ${phase} .*it runs alone`));
    assert.ok(Date.now() - t0 < 15_000);
  });
}
