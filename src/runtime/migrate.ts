// Live migration by pre-copy: enable dirty logging, copy everything, copy what got dirty round after round, pause vCPUs, final copy, compare.

import type { Kvm } from '../kvm/kvm';
import { totalPages } from '../kvm/kvm';
import { CTRL_MIG_DONE, CTRL_MIG_PAGES, CTRL_PAUSE, CTRL_PAUSED, CTRL_STOP_WORK, isSet, setFlag } from './control';

/** The shortest a pre-copy round lasts, so an idle guest does not make millions of empty rounds. */
const MIN_ROUND_MS = 20;

export interface MigrationResult {
  /** Pages sent in each round: round 0 is the full copy, the last the final copy with vCPUs paused. */
  readonly pagesPerRound: number[];
  /** Milliseconds the vCPUs were paused (final round and comparison). */
  readonly downtimeMs: number;
  /** Pages whose destination copy differs from the source after the final round. */
  readonly mismatches: number;
  readonly firstMismatch: string | null;
}

/**
 * Migrate the VM's memory into a private destination buffer. Runs until
 * ctrl[STOP_WORK] is set (at least `minRounds` dirty rounds), then pauses the
 * `vcpus` vCPUs for the final round, compares source and destination page by
 * page, turns dirty logging off and lets the vCPUs go (ctrl[MIG_DONE]).
 */
export function migrate(kvm: Kvm, ctrl: Int32Array, vcpus: number, minRounds = 1): MigrationResult {
  const pages = totalPages(kvm.config);
  const dest = new Uint8Array(pages * 4096);
  const bitmaps = kvm.config.slots.map((_, s) => new Int32Array(kvm.dirtyLog.words(s)));
  for (let s = 0; s < kvm.nSlots; s++) kvm.dirtyLog.enable(s);
  for (let p = 0; p < pages; p++) kvm.host.readPage(p, dest, p * 4096);
  Atomics.add(ctrl, CTRL_MIG_PAGES, pages);
  const pagesPerRound = [pages];
  for (let round = 0; round < minRounds || !isSet(ctrl, CTRL_STOP_WORK); round++) {
    const start = performance.now();
    pagesPerRound.push(copyDirty(kvm, dest, bitmaps, ctrl));
    // A round stands for sending its pages over a link: it lasts at least MIN_ROUND_MS.
    const left = MIN_ROUND_MS - (performance.now() - start);
    if (left > 0) Atomics.wait(ctrl, CTRL_STOP_WORK, 0, left);
  }
  const t0 = performance.now();
  setFlag(ctrl, CTRL_PAUSE, 1);
  while (Atomics.load(ctrl, CTRL_PAUSED) < vcpus) Atomics.wait(ctrl, CTRL_PAUSED, Atomics.load(ctrl, CTRL_PAUSED), 1);
  pagesPerRound.push(copyDirty(kvm, dest, bitmaps, ctrl));
  let mismatches = 0;
  let firstMismatch: string | null = null;
  const src = new Uint8Array(4096);
  for (let p = 0; p < pages; p++) {
    kvm.host.readPage(p, src, 0);
    Atomics.add(ctrl, CTRL_MIG_PAGES, 1);
    if (!samePage(src, dest, p * 4096)) {
      mismatches++;
      firstMismatch ??= `gfn 0x${kvm.hvpnToGfn(p).toString(16)} differs at the destination`;
    }
  }
  for (let s = 0; s < kvm.nSlots; s++) kvm.dirtyLog.disable(s);
  const downtimeMs = performance.now() - t0;
  setFlag(ctrl, CTRL_MIG_DONE, 1);
  setFlag(ctrl, CTRL_PAUSE, 0);
  return { pagesPerRound, downtimeMs, mismatches, firstMismatch };
}

/** One round: get each slot's dirty log and copy the pages it names; returns pages sent. */
function copyDirty(kvm: Kvm, dest: Uint8Array, bitmaps: Int32Array[], ctrl: Int32Array): number {
  let sent = 0;
  for (let s = 0; s < kvm.nSlots; s++) {
    const bm = bitmaps[s]!;
    kvm.dirtyLog.get(s, bm);
    const base = kvm.slotHvpn[s]!;
    for (let i = 0; i < bm.length; i++) {
      for (let m = bm[i]!; m !== 0; m &= m - 1) {
        const p = base + i * 32 + (31 - Math.clz32(m & -m));
        kvm.host.readPage(p, dest, p * 4096);
        Atomics.add(ctrl, CTRL_MIG_PAGES, 1);
        sent++;
      }
    }
  }
  return sent;
}

function samePage(a: Uint8Array, dest: Uint8Array, off: number): boolean {
  const x = new Int32Array(a.buffer, a.byteOffset, 1024);
  const y = new Int32Array(dest.buffer, dest.byteOffset + off, 1024);
  for (let i = 0; i < 1024; i++) if (x[i] !== y[i]) return false;
  return true;
}
