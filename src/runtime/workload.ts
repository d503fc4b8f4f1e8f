// The guest workload of `kvmmu run`: each vCPU writes a known pattern over its own pages, remaps pages (shadow mode), and finally re-reads all it wrote.

import { GuestPageFault, type Vcpu } from '../vcpu/vcpu';
import { CTRL_MIG_DONE, CTRL_PAUSE, CTRL_PAUSED, CTRL_PROGRESS, CTRL_STOP_WORK, isSet, nap, waitWhile } from './control';

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
  /** Pages whose final re-read did not return the last value written (through the vCPU, or as the host holds them). */
  readonly lost: number;
  readonly firstLost: string | null;
  /**
   * A page fault the guest's own tables caused. The workload maps every page
   * it touches, so one means a write to a guest page table was lost; the vCPU
   * stops writing then (its bookkeeping no longer matches its tables).
   */
  readonly guestFault: string | null;
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
  const done = (): boolean => isSet(ctrl, CTRL_STOP_WORK) && (!w.migrating || isSet(ctrl, CTRL_MIG_DONE));
  let guestFault: string | null = null;
  vcpu.enterGuest();
  try {
    outer: for (;;) {
      for (let i = 0; i < n; i++) {
        if (isSet(ctrl, CTRL_PAUSE)) pauseHere(vcpu, ctrl);
        if (done()) break outer;
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
  } catch (e) {
    if (!(e instanceof GuestPageFault)) throw e;
    guestFault = lostTableWrite(e, '');
    // Stop writing. Wait outside guest mode (a remote flush waits for vCPUs in guest mode to answer its
    // kick), still taking part in pauses (the migration's final round waits for every vCPU).
    vcpu.exitGuest();
    vcpu.leaveRun();
    while (!done()) {
      if (isSet(ctrl, CTRL_PAUSE)) paused(ctrl);
      else nap(5);
    }
    vcpu.enterRun();
    vcpu.enterGuest();
  }
  // Verify: every page must hold the last value this vCPU wrote to it (pages never written hold 0), read
  // through a fresh TLB (a stale entry would read back a frame nobody maps any more) and as the host holds it.
  vcpu.flushTlb();
  const got = new BigUint64Array(n);
  let read = 0;
  for (; read < n && guestFault === null; read++) {
    try {
      got[read] = vcpu.read64(w.base + read * 4096);
    } catch (e) {
      if (!(e instanceof GuestPageFault)) throw e;
      guestFault = lostTableWrite(e, ' on the final re-read');
      break;
    }
  }
  vcpu.exitGuest();
  // The host's view is read outside guest mode: a swapped-out page is swapped in under the mm lock, which the
  // host thread may hold while it waits for the vCPUs in guest mode to answer a remote flush.
  let lost = 0;
  let firstLost: string | null = null;
  for (let i = 0; i < read; i++) {
    const gfn = gfnOf[i]!;
    const want = expected[gfn - w.first]!;
    const held = vcpu.kvm.host.readUser64(vcpu.kvm.gfnToHvpn(gfn), 0);
    if (got[i] !== want || held !== want) {
      lost++;
      firstLost ??= `gfn 0x${gfn.toString(16)}: the vCPU read 0x${got[i]!.toString(16)}, the host holds 0x${held.toString(16)}, last written 0x${want.toString(16)}`;
    }
  }
  return { passes, writes, remaps, lost, firstLost, guestFault };
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
  vcpu.leaveRun();
  paused(ctrl);
  vcpu.enterRun();
  vcpu.enterGuest();
}

/** Count this vCPU as paused until the VMM lets the vCPUs go (outside guest mode). */
function paused(ctrl: Int32Array): void {
  Atomics.add(ctrl, CTRL_PAUSED, 1);
  waitWhile(ctrl, CTRL_PAUSE, 1);
  Atomics.sub(ctrl, CTRL_PAUSED, 1);
}

/** A guest #PF in the workload, which maps every page it touches: what it means. */
function lostTableWrite(e: GuestPageFault, where: string): string {
  return `${e.message}${where}: a write to a guest page table was lost (the guest maps every page it touches)`;
}
