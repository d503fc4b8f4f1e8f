// `kvmmu access`: kvmmu's own access.c — every combination of guest PDE/PTE flags, control bits and access kinds through the whole shadow-paging stack, compared with the SDM reference; a table of mismatches or JSON.

import { KvmmuError } from '../shm/errors';
import { runAccessMatrixParallel, type AccessEdit, type AccessMismatch } from '../runtime/access-matrix';
import { ProgressLine } from './progress';

export interface AccessCliOptions {
  mode: string;
  edit: AccessEdit;
  workers?: number;
  json: boolean;
}

const ec = (v: number | null): string => (v === null ? 'no fault' : `#PF 0x${v.toString(16)}`);

function describe(m: AccessMismatch): string {
  const e = (x: { p: boolean; w: boolean; u: boolean; xd: boolean }): string => (x.p ? `P${x.w ? 'W' : ''}${x.u ? 'U' : ''}${x.xd ? ' XD' : ''}` : 'not present');
  const c = m.case.cpu;
  const bits = [c.wp && 'WP', c.nxe && 'NXE', c.smep && 'SMEP', c.smap && 'SMAP', c.ac && 'AC'].filter(Boolean).join(' ') || 'none';
  const ad = `${m.case.pteA ? 'A' : ''}${m.case.pteD ? 'D' : ''}` || 'no A/D';
  return (
    `${m.case.user ? 'user' : 'supervisor'} ${m.case.kind}; PML4E ${e(m.case.pml4e)}, PDPTE ${e(m.case.pdpte)}, PDE ${e(m.case.pde)}${m.case.large ? ' (2 MiB page)' : `, PTE ${e(m.case.pte)}`} (${ad} before); control bits ${bits}: ` +
    `SDM says ${ec(m.expected)}, kvmmu gave ${ec(m.got)}${m.adWrong !== null ? ` (${m.adWrong})` : ''}`
  );
}

export async function accessCommand(o: AccessCliOptions): Promise<number> {
  if (o.mode !== 'shadow') throw new KvmmuError(`kvmmu access runs shadow paging only (the mode whose walk of the guest's tables it checks), not ${o.mode}`);
  const progress = !o.json && process.stderr.isTTY ? new ProgressLine('access', 1) : null;
  const r = await runAccessMatrixParallel({
    edit: o.edit,
    workers: o.workers,
    onProgress: progress === null ? undefined : (done, total) => progress.update(done / total, `${done.toLocaleString('en-US')} of ${total.toLocaleString('en-US')} combinations`),
  });
  progress?.done();
  if (o.json) {
    process.stdout.write(JSON.stringify(r) + '\n');
  } else {
    const lines = [
        `kvmmu access: ${r.combinations.toLocaleString('en-US')} combinations through the shadow MMU in ${r.seconds.toFixed(2)} s ` +
        `(entries written ${r.edit === 'host' ? 'by the host, shadow pages zapped' : 'by the guest, emulated, then invlpg'}), ` +
        `${r.mismatchCount} mismatch${r.mismatchCount === 1 ? '' : 'es'} with the SDM`,
      `counted as: ${Object.entries(r.dimensions).map(([k, n]) => `${k} ${n}`).join(' × ')}`,
      ...r.mismatches.map((m) => `  ${describe(m)}`),
    ];
    if (r.mismatchCount > r.mismatches.length) lines.push(`  ... and ${r.mismatchCount - r.mismatches.length} more (--json lists the first ${r.mismatches.length})`);
    process.stdout.write(lines.join('\n') + '\n');
  }
  return r.mismatchCount === 0 ? 0 : 1;
}
