// `kvmmu corpus`: every real race (KVM-BUGS.md and the seed's) found with its fix off and proved clean with it on, as a table or JSON.

import { KvmmuError } from '../shm/errors';
import type { MmuMode } from '../kvm/config';
import { CORPUS, runCorpus, selectCorpus, type CorpusRow } from '../check/corpus';
import { loadCatalog, loadGenModule } from './scenario-file';
import { StatusLine } from './progress';

export interface CorpusCliOptions {
  mode?: MmuMode;
  only?: string[];
  kvmOnly?: boolean;
  seconds: number;
  json: boolean;
}

/** Run the corpus; exit code 0 when every modelled race is found with its fix off and clean with it on. */
export function corpusCommand(cli: CorpusCliOptions): number {
  const o = { ...cli, only: cli.only !== undefined && cli.only.length > 0 ? cli.only : undefined };
  const { unknown } = selectCorpus(o);
  if (unknown.length > 0) throw new KvmmuError(`unknown corpus entr${unknown.length === 1 ? 'y' : 'ies'} ${unknown.join(', ')}: the entries are ${CORPUS.map((e) => e.id).join(', ')}`);
  const status = !o.json && process.stderr.isTTY ? new StatusLine() : null;
  let last = 0;
  const rows = runCorpus(loadGenModule(), loadCatalog().builtin, {
    mode: o.mode,
    only: o.only,
    kvmOnly: o.kvmOnly,
    seconds: o.seconds,
    onProgress:
      status === null
        ? undefined
        : (what, executions) => {
            const t = performance.now();
            if (t - last < 100) return;
            last = t;
            status.show(`corpus: ${what}: ${executions} executions`);
          },
  });
  status?.clear();
  process.stdout.write((o.json ? JSON.stringify(rows.map(corpusRowJson)) : formatCorpus(rows)) + '\n');
  return rows.every((r) => r.status === 'found' || r.status === 'not-modelled') ? 0 : 1;
}

/** One row as JSON (the documented shape: id, fix, scenario, mode, guard, status, off, on). */
export function corpusRowJson(r: CorpusRow): Record<string, unknown> {
  const e = r.entry;
  return {
    id: e.id,
    source: e.source,
    fix: { commit: e.commit, year: e.year, title: e.title },
    scenario: e.scenario,
    mode: r.mode,
    guard: r.guard,
    status: r.status,
    why: e.why ?? null,
    off:
      r.off === null
        ? null
        : {
            strategy: r.off.strategy,
            executions: r.off.executions,
            seconds: r.off.seconds,
            invariant: r.off.violation?.invariant ?? null,
            message: r.off.violation?.message ?? null,
            replay: r.off.violation?.schedule ?? null,
            preemptions: r.off.violation?.preemptions ?? null,
            steps: r.off.violation?.steps ?? null,
          },
    on:
      r.on === null
        ? null
        : {
            strategy: r.on.strategy,
            executions: r.on.executions,
            seconds: r.on.seconds,
            complete: r.on.complete,
            invariant: r.on.violation?.invariant ?? null,
            replay: r.on.violation?.schedule ?? null,
          },
  };
}

/** The corpus as a table, then each race's replay string, then what is not modelled and why. */
export function formatCorpus(rows: readonly CorpusRow[]): string {
  const head = ['race', 'fix', 'scenario', 'mode', 'guard', 'fix off: found', 'executions', 's', 'fix on: verdict', 'executions', 's'];
  const table: string[][] = [];
  for (const r of rows) {
    if (r.status === 'not-modelled') continue;
    const fix = r.entry.commit === null ? `seed ${r.entry.year}` : `${r.entry.commit} ${r.entry.year}`;
    const off = r.off!;
    const on = r.on!;
    const verdict = on.violation !== null ? `VIOLATION ${on.violation.invariant}` : on.complete ? 'exhaustive, clean' : 'clean, NOT exhaustive (budget)';
    table.push([
      r.entry.id,
      fix,
      r.entry.scenario!,
      r.mode ?? '',
      r.guard ?? '',
      off.violation === null ? (off.complete ? 'NOT FOUND (exhaustive)' : 'NOT FOUND (budget)') : off.violation.invariant,
      String(off.executions),
      off.seconds.toFixed(2),
      verdict,
      String(on.executions),
      on.seconds.toFixed(2),
    ]);
  }
  const widths = head.map((h, i) => Math.max(h.length, ...table.map((row) => row[i]!.length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => (i === 6 || i === 7 || i === 9 || i === 10 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  const out: string[] = [line(head), line(widths.map((w) => '-'.repeat(w))), ...table.map(line)];
  const found = rows.filter((r) => r.status === 'found');
  if (found.length > 0) {
    out.push('', 'replay each counterexample (kvmmu check --replay STRING):');
    for (const r of found) out.push(`  ${r.entry.id} ${r.mode}: ${r.off!.violation!.schedule}`);
  }
  const notModelled = rows.filter((r) => r.status === 'not-modelled');
  if (notModelled.length > 0) {
    out.push('', 'not modelled:');
    for (const r of notModelled) out.push(`  ${r.entry.id} ${r.entry.commit ?? ''} ${r.entry.year} "${r.entry.title}": ${r.entry.why}`);
  }
  const bad = rows.filter((r) => r.status === 'not-found' || r.status === 'fix-on-violates');
  const modelled = new Set(rows.filter((r) => r.status !== 'not-modelled').map((r) => r.entry.id));
  out.push(
    '',
    `${modelled.size} race${modelled.size === 1 ? '' : 's'} modelled, checked in ${rows.length - notModelled.length} scenario-mode pair${rows.length - notModelled.length === 1 ? '' : 's'}: ` +
      (bad.length === 0 ? 'each found with its fix off and clean with it on.' : `${bad.length} UNEXPECTED (${bad.map((r) => `${r.entry.id} ${r.mode}: ${r.status}`).join(', ')}).`),
  );
  return out.join('\n');
}
