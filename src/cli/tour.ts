// `kvmmu tour` (what `npm start` runs): each per-guard scenario checked clean with all guards on and broken with its own guard off (race 3 also under 6.13's page marking), a short real-thread run, then the corpus of KVM's real races.

import * as os from 'node:os';
import { ALL_GUARDS, GUARDS, type GuardName } from '../kvm/config';
import type { ScenarioSpec } from '../check/gen/scenario';
import { runCheck, type CheckReport } from '../check/check';
import { runVm } from '../runtime/run';
import { checkBuiltin, formatCheckReport } from './check-command';
import { formatRunReport } from './main';
import { CheckPool } from './parallel';
import { loadCatalog, loadGenModule } from './scenario-file';
import { runCorpus } from '../check/corpus';
import { formatCorpus } from './corpus-command';

export async function tourCommand(o: { seconds: number }): Promise<number> {
  const gen = loadGenModule();
  const { builtin } = loadCatalog();
  const out = (s: string): void => void process.stdout.write(s + '\n');
  out('kvmmu tour: the locking document\'s races, found by the interleaving checker in the real MMU code.\n');
  let problems = 0;
  // The clean checks on every core, as `kvmmu check --all` runs them: all given at once to worker threads
  // started once, which run them side by side and split each once a thread is free (CheckPool).
  const cores = os.availableParallelism();
  const pool = cores > 1 ? new CheckPool(cores) : undefined;
  try {
    // The per-guard scenarios here; the real races (scenarios with a fix) in the corpus table at the end.
    const specs = builtin.filter((x) => x.fix === undefined);
    const clean = pool === undefined ? null : specs.map((spec) => checkBuiltin(gen, spec, ALL_GUARDS, pool));
    // A check that fails rejects its promise; the first in order is the one reported.
    clean?.forEach((p) => p.catch(() => undefined));
    for (const [i, spec] of specs.entries()) problems += await tourScenario(gen, spec, clean?.[i] ?? checkBuiltin(gen, spec, ALL_GUARDS), out);
  } finally {
    await pool?.close();
  }
  out(`=== a VM on real threads: 2 vCPUs, 64 MiB, ${o.seconds} s, live migration, swap and KSM\n`);
  const report = await runVm({
    mode: 'direct',
    vcpus: 2,
    memBytes: 64 * 1024 * 1024,
    seconds: o.seconds,
    migrate: true,
    swap: true,
    ksm: true,
    guards: ALL_GUARDS,
  });
  out(formatRunReport(report));
  if (!report.ok) problems++;
  out('\n=== the races KVM really had (KVM-BUGS.md): each fix off, then on\n');
  const corpus = runCorpus(gen, builtin, { kvmOnly: true });
  out(formatCorpus(corpus));
  problems += corpus.filter((r) => r.status === 'not-found' || r.status === 'fix-on-violates').length;
  out(problems === 0 ? 'tour: every result as expected.' : `tour: ${problems} unexpected result(s).`);
  return problems === 0 ? 0 : 1;
}

/** One per-guard scenario of the tour: clean with every guard on (`checked`: that check, begun), broken with its guard off; returns the unexpected results. */
async function tourScenario(gen: ReturnType<typeof loadGenModule>, spec: ScenarioSpec, checked: Promise<CheckReport>, out: (s: string) => void): Promise<number> {
  let problems = 0;
  const guard = spec.guard as GuardName;
  out(`=== ${spec.name} (guard ${guard})`);
  out(spec.description + '\n');
  const clean = await checked;
  const where = clean.workers > 1 ? `, on ${clean.workers} workers${clean.shared === true ? ' shared with other scenarios' : ''}` : '';
  out(`With every guard on: ${clean.violation === null && clean.complete ? 'no violation in any interleaving' : 'UNEXPECTED'} ` +
    `(${clean.executions} executions, exhaustive DPOR, ${clean.seconds.toFixed(2)} s${where}).`);
  if (clean.violation !== null || !clean.complete) problems++;
  const broken = runCheck(gen, spec, { guards: ALL_GUARDS & ~GUARDS[guard] });
  out(`With ${guard} off:\n`);
  out(formatCheckReport(broken));
  if (broken.violation === null) problems++;
  if (guard === 'atomic-volatile-clear') {
    // Since 6.13 KVM marks the page dirty when a fault maps it writable: the lost D bit then loses nothing.
    const today = runCheck(gen, spec, { guards: ALL_GUARDS & ~GUARDS[guard], pageMarking: 'fault' });
    const ok = today.violation === null && today.complete;
    out(
      `With ${guard} off but pages marked dirty at fault time, as KVM does since 6.13: ` +
        `${ok ? 'no violation in any interleaving' : 'UNEXPECTED'} (${today.executions} executions, exhaustive DPOR).`,
    );
    if (!ok) problems++;
  }
  out('');
  return problems;
}
