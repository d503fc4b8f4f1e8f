// The guest workload of `kvmmu run`: each vCPU writes a known pattern over its own pages, remaps pages (shadow mode), and finally re-reads all it wrote.

import type { Vcpu } from '../vcpu/vcpu';
import { CTRL_MIG_DONE, CTRL_PAUSE, CTRL_PAUSED, CTRL_PROGRESS, CTRL_STOP_WORK, isSet, waitWhile } from './control';

/** Where a vCPU's pages live and how the guest addresses them. */
export interface WorkloadLayout {
  /** Guest virtual address of data page 0 (0 in direct mode: gva = gpa). */
  readonly base: number;
  /** This vCPU's first data page and page count. */
  readonly first: number;
  readonly count: number;
  /** Shadow mode: guest-physical address of each data page's PTE (indexed from `first`); empty in direct mode. */
  readonly pteGpa: readonly number[];
  /** Every `ksmEvery`-th page gets a value shared by all such pages in a pass, so KSM finds identical pages. */
  readonly ksmEvery: number;
  /** Shadow mode: remap two pages every `remapEvery` writes (0: never). */
  readonly remapEvery: number;
  readonly migrating: boolean;
}

export interface WorkloadResult {
  readonly passes: number;
  readonly writes: number;
  readonly remaps: number;
  /** Pages whose final re-read did not return the last value written. */
  readonly lost: number;
  readonly firstLost: string | null;
}

/** PTE flags the guest uses for data pages: present, writable, user. */
const PTE_FLAGS = 7n;

export function pattern(vcpu: number, page: number, pass: number): bigint {
  return (BigInt(vcpu + 1) << 48n) | (BigInt(page) << 20n) | BigInt((pass + 1) & 0xfffff);
}

/**
 * Run the workload until the run's timed phase ends (and, when migrating,
 * until the final copy is done), then verify. `rng` drives remap choices.
 */
export function runWorkload(vcpu: Vcpu, w: WorkloadLayout, ctrl: Int32Array, rng: () => number): WorkloadResult {
  const n = w.count;
  // The guest's own bookkeeping: which gfn each of its pages maps now, and what each gfn should hold.
  const gfnOf = new Int32Array(n);
  for (let i = 0; i < n; i++) gfnOf[i] = w.first + i;
  const expected = new BigUint64Array(n);
  let passes = 0;
  let writes = 0;
  let remaps = 0;
  vcpu.enterGuest();
  outer: for (;;) {
    for (let i = 0; i < n; i++) {
      if (isSet(ctrl, CTRL_PAUSE)) pauseHere(vcpu, ctrl);
      if (isSet(ctrl, CTRL_STOP_WORK) && (!w.migrating || isSet(ctrl, CTRL_MIG_DONE))) break outer;
      const gfn = gfnOf[i]!;
      const v = w.ksmEvery > 0 && gfn % w.ksmEvery === 0 ? BigInt(passes + 1) : pattern(vcpu.idx, gfn, passes);
      vcpu.write64(w.base + i * 4096, v);
      expected[gfn - w.first] = v;
      writes++;
      if (w.remapEvery > 0 && writes % w.remapEvery === 0 && n >= 2) {
        remap(vcpu, w, gfnOf, Math.floor(rng() * n), Math.floor(rng() * n));
        remaps++;
      }
    }
    passes++;
    Atomics.store(ctrl, CTRL_PROGRESS + vcpu.idx, passes);
  }
  // Verify: every page must hold the last value this vCPU wrote to it (pages never written hold 0).
  let lost = 0;
  let firstLost: string | null = null;
  for (let i = 0; i < n; i++) {
    const gfn = gfnOf[i]!;
    const got = vcpu.read64(w.base + i * 4096);
    const want = expected[gfn - w.first]!;
    if (got !== want) {
      lost++;
      firstLost ??= `gfn 0x${gfn.toString(16)}: read 0x${got.toString(16)}, last wrote 0x${want.toString(16)}`;
    }
  }
  vcpu.exitGuest();
  return { passes, writes, remaps, lost, firstLost };
}

/** Swap the mappings of pages a and b: two PTE writes (trapped and emulated by the shadow MMU) and two invlpg. */
function remap(vcpu: Vcpu, w: WorkloadLayout, gfnOf: Int32Array, a: number, b: number): void {
  if (a === b) return;
  const ga = gfnOf[a]!;
  const gb = gfnOf[b]!;
  vcpu.write64(w.pteGpa[a]!, (BigInt(gb) << 12n) | PTE_FLAGS);
  vcpu.write64(w.pteGpa[b]!, (BigInt(ga) << 12n) | PTE_FLAGS);
  vcpu.invlpg(w.base + a * 4096);
  vcpu.invlpg(w.base + b * 4096);
  gfnOf[a] = gb;
  gfnOf[b] = ga;
}

/** The VMM stopped this vCPU: leave guest mode, report, wait to be let go. */
function pauseHere(vcpu: Vcpu, ctrl: Int32Array): void {
  vcpu.exitGuest();
  Atomics.add(ctrl, CTRL_PAUSED, 1);
  waitWhile(ctrl, CTRL_PAUSE, 1);
  Atomics.sub(ctrl, CTRL_PAUSED, 1);
  vcpu.enterGuest();
}
