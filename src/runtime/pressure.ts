// Host memory pressure while the guest runs: swap pages out and in, merge identical pages (KSM), age pages; freed frames get reused.

import type { Kvm } from '../kvm/kvm';
import { totalPages } from '../kvm/kvm';
import { CTRL_HOST_STOP, isSet } from './control';

export interface PressureOptions {
  readonly swap: boolean;
  readonly ksm: boolean;
}

export interface PressureResult {
  readonly steps: number;
  readonly ksmCandidates: number;
}

/** Apply pressure until ctrl[HOST_STOP]; each step picks a random page and an action. */
export function runPressure(kvm: Kvm, ctrl: Int32Array, o: PressureOptions, rng: () => number): PressureResult {
  const pages = totalPages(kvm.config);
  const buf = new Uint8Array(4096);
  const words = new Int32Array(buf.buffer);
  const seen = new Map<number, number>();
  let steps = 0;
  let ksmCandidates = 0;
  while (!isSet(ctrl, CTRL_HOST_STOP)) {
    steps++;
    const p = Math.floor(rng() * pages);
    const r = rng();
    if (o.swap && r < 0.45) {
      kvm.host.swapOut(p);
    } else if (o.swap && r < 0.6) {
      kvm.host.swapIn(p);
    } else if (o.ksm && r < 0.95) {
      // KSM's scan: hash the page; an earlier page with the same hash is a merge candidate (ksmMerge compares fully).
      kvm.host.readPage(p, buf, 0);
      let h = 0x811c9dc5;
      for (let i = 0; i < 1024; i++) h = Math.imul(h ^ words[i]!, 0x01000193);
      const q = seen.get(h);
      if (q !== undefined && q !== p) {
        ksmCandidates++;
        kvm.host.ksmMerge(q, p);
      } else {
        seen.set(h, p);
        if (seen.size > 4096) seen.clear();
      }
    } else {
      kvm.host.clearYoung(p);
    }
  }
  return { steps, ksmCandidates };
}
