// `kvmmu access`: kvmmu's own access.c — every combination of guest entry flags, leaf sizes, control bits, protection keys and access kinds through the whole stack in one MMU mode, compared with the SDM reference; a summary with a few mismatches, or JSON.

import { KvmmuError } from '../shm/errors';
import { ACCESS_MODES, ecText, runAccessMatrixParallel, type AccessEdit, type AccessMismatch, type AccessMode } from '../runtime/access-matrix';
import { ProgressLine } from './progress';

export interface AccessCliOptions {
  mode: string;
  edit: AccessEdit;
  pku: boolean;
  dirtyLog: boolean;
  workers?: number;
  json: boolean;
}

function describe(m: AccessMismatch): string {
  const e = (x: { p: boolean; w: boolean; u: boolean; xd: boolean }): string => (x.p ? `P${x.w ? 'W' : ''}${x.u ? 'U' : ''}${x.xd ? ' XD' : ''}` : 'not present');
  const c = m.case;
  const k = c.pku;
  const bits =
    [c.cpu.wp && 'WP', c.cpu.nxe && 'NXE', c.cpu.smep && 'SMEP', c.cpu.smap && 'SMAP', c.cpu.ac && 'AC', k.pke && `PKE (leaf key ${k.key1 ? 1 : 0}, key 1${k.ad ? ' AD' : ''}${k.wd ? ' WD' : ''})`]
      .filter(Boolean)
      .join(' ') || 'none';
  const ad = (`${c.pteA ? 'A' : ''}${c.pteD ? 'D' : ''}` || 'no A/D') + (c.upperAD ? ', A/D above it' : '');
  const shape = c.huge
    ? `PDPTE ${e(c.pdpte)} (1 GiB page)`
    : `PDPTE ${e(c.pdpte)}, PDE ${e(c.pde)}${c.large ? ' (2 MiB page)' : `, PTE ${e(c.pte)}`}`;
  const who = c.implicit ? 'implicit supervisor' : c.user ? 'user' : 'supervisor';
  return (
    `${who} ${c.kind}; PML4E ${e(c.pml4e)}, ${shape} (${ad} before); control bits ${bits}: ` +
    `SDM says ${ecText(m.expected)}, kvmmu gave ${ecText(m.got)}${m.adWrong !== null ? ` (${m.adWrong})` : ''}`
  );
}

export async function accessCommand(o: AccessCliOptions): Promise<number> {
  if (!(ACCESS_MODES as readonly string[]).includes(o.mode)) throw new KvmmuError(`kvmmu access: --mode must be one of ${ACCESS_MODES.join(', ')}, not ${o.mode}`);
  const mode = o.mode as AccessMode;
  if (o.pku && mode === 'shadow')
    throw new KvmmuError('kvmmu access --pku needs --mode tdp or direct: KVM offers protection keys only with TDP (under shadow paging the guest has no PKU, and CR4.PKE is #GP)');
  const progress = !o.json && process.stderr.isTTY ? new ProgressLine('access', 100, '%') : null;
  const t0 = performance.now();
  const r = await runAccessMatrixParallel({
    mode,
    pku: o.pku,
    dirtyLog: o.dirtyLog,
    edit: o.edit,
    workers: o.workers,
    onProgress:
      progress === null
        ? undefined
        : (done, total) => {
            const s = (performance.now() - t0) / 1000;
            const left = done > 0 ? (s * (total - done)) / done : 0;
            progress.update((100 * done) / total, `${done.toLocaleString('en-US')} of ${total.toLocaleString('en-US')} combinations, ${s.toFixed(0)} s, about ${left.toFixed(0)} s left`);
          },
  });
  progress?.done();
  if (o.json) {
    process.stdout.write(JSON.stringify(r) + '\n');
  } else {
    const how = r.edit === 'host' ? `entries written by the host${mode === 'shadow' ? ', shadow pages zapped' : ', TLB flushed'}` : 'entries written by the guest, then invlpg';
    const paging = mode === 'shadow' ? 'the shadow MMU' : `two-dimensional paging (${mode} mode)`;
    const lines = [
      `kvmmu access: ${r.combinations.toLocaleString('en-US')} combinations (${r.accesses.toLocaleString('en-US')} accesses) through ${paging} in ${r.seconds.toFixed(1)} s ` +
        `(${how}${r.dirtyLog ? ', dirty logging on' : ''}), ${r.mismatchCount} mismatch${r.mismatchCount === 1 ? '' : 'es'} with the SDM`,
      `counted as: ${Object.entries(r.dimensions).map(([k, n]) => `${k} ${n}`).join(' × ')}`,
      ...(r.implicitAsExplicit > 0
        ? [
            `${r.implicitAsExplicit.toLocaleString('en-US')} implicit supervisor accesses with RFLAGS.AC=1 got an explicit access's answer (went through, or livelocked), as under KVM, whose walker cannot tell a hardware fault's access implicit: not counted as mismatches`,
          ]
        : []),
      ...r.mismatches.map((m) => `  ${describe(m)}`),
    ];
    if (r.mismatchCount > r.mismatches.length) lines.push(`  ... and ${r.mismatchCount - r.mismatches.length} more (--json lists the first ${r.mismatches.length})`);
    process.stdout.write(lines.join('\n') + '\n');
  }
  return r.mismatchCount === 0 ? 0 : 1;
}
