// Checker benchmark: for each built-in scenario, exhaustive DPOR vs plain DFS (executions, time, executions/s), and the time to find the bug with its guard off.
//
//   node dist/bench/check.js [--json] [--dfs-seconds S]
//
// Each scenario is explored once untimed first (compiling its code paths); the figures are the runs after.

import { parseArgs } from 'node:util';
import { ALL_GUARDS, GUARDS, type GuardName } from '../src/kvm/config';
import { runCheck, type CheckReport } from '../src/check/check';
import { loadCatalog, loadGenModule } from '../src/cli/scenario-file';

interface Row {
  scenario: string;
  dpor: { executions: number; seconds: number; perSecond: number; complete: boolean };
  dfs: { executions: number; seconds: number; perSecond: number; complete: boolean };
  guardOff: { guard: string; executions: number; seconds: number; invariant: string | null };
}

function measure(r: CheckReport): { executions: number; seconds: number; perSecond: number; complete: boolean } {
  return { executions: r.executions, seconds: r.seconds, perSecond: r.executions / Math.max(r.seconds, 1e-9), complete: r.complete };
}

const USAGE = `usage: node dist/bench/check.js [--json] [--dfs-seconds S]

For each built-in scenario: exhaustive DPOR with every guard on, plain DFS for
S seconds (default 20), and the executions DPOR needs to find the bug with the
scenario's guard off. --json prints the rows as JSON.
`;

function main(): void {
  let values: { json?: boolean; help?: boolean; 'dfs-seconds'?: string };
  try {
    ({ values } = parseArgs({ options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' }, 'dfs-seconds': { type: 'string' } }, strict: true }));
  } catch (e) {
    process.stderr.write(`bench/check: ${(e as Error).message.split('\n')[0]}\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  if (values.help === true) {
    process.stdout.write(USAGE);
    return;
  }
  const json = values.json === true;
  const given = values['dfs-seconds'];
  // A budget that is not a positive decimal number would never end plain DFS's exploration.
  const dfsSeconds = given === undefined ? 20 : /^\d+(\.\d+)?$/.test(given) ? Number(given) : NaN;
  if (!(dfsSeconds > 0)) {
    process.stderr.write(`bench/check: --dfs-seconds takes a number of seconds above 0, not '${given}'\n`);
    process.exitCode = 2;
    return;
  }
  const gen = loadGenModule();
  const catalog = loadCatalog();
  const rows: Row[] = [];
  for (const spec of catalog.builtin) {
    const guard = spec.guard as GuardName;
    // Steady state: one untimed run first compiles the scenario's code paths (kvmmu check's own
    // report includes that first-run cost).
    runCheck(gen, spec, { strategy: 'dpor', executions: 2000 });
    const dpor = runCheck(gen, spec, { strategy: 'dpor' });
    const dfs = runCheck(gen, spec, { strategy: 'dfs', seconds: dfsSeconds });
    const off = runCheck(gen, spec, { guards: ALL_GUARDS & ~GUARDS[guard], minimize: false });
    rows.push({
      scenario: spec.name,
      dpor: measure(dpor),
      dfs: measure(dfs),
      guardOff: { guard, executions: off.executions, seconds: off.seconds, invariant: off.violation?.invariant ?? null },
    });
    if (!json) process.stderr.write(`${spec.name} done\n`);
  }
  if (json) {
    process.stdout.write(JSON.stringify({ kind: 'check', version: 1, node: process.version, rows }) + '\n');
    return;
  }
  const pad = (s: string | number, n: number): string => String(s).padStart(n);
  console.log(`${'scenario'.padEnd(18)} ${pad('DPOR execs', 11)} ${pad('s', 7)} ${pad('execs/s', 8)}   ${pad('DFS execs', 10)} ${pad('s', 6)} ${pad('execs/s', 8)}   guard off: execs to bug, s, invariant`);
  for (const r of rows) {
    console.log(
      `${r.scenario.padEnd(18)} ${pad(r.dpor.executions, 11)} ${pad(r.dpor.seconds.toFixed(2), 7)} ${pad(Math.round(r.dpor.perSecond), 8)}   ` +
        `${pad(r.dfs.executions + (r.dfs.complete ? '' : '+'), 10)} ${pad(r.dfs.seconds.toFixed(1), 6)} ${pad(Math.round(r.dfs.perSecond), 8)}   ` +
        `${r.guardOff.executions} in ${r.guardOff.seconds.toFixed(2)} s, ${r.guardOff.invariant ?? 'NOT FOUND'}`,
    );
  }
  console.log(`(DFS counts with '+' stopped at the ${dfsSeconds} s budget without finishing; every DPOR run is exhaustive)`);
}

main();
