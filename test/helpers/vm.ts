// Test helpers: small VMs on one thread (a handle per logical thread), guest page tables, and a hook that interleaves another thread's steps.

import { NOTE, OP, type AccessHook, type Mem } from '../../src/shm/access';
import { setDebugLocks, type Kvm } from '../../src/kvm/kvm';
import type { VmOptions } from '../../src/kvm/config';
import { createMachine, openKvm, type MachineSpec } from '../../src/vcpu/machine';
import { GuestPageTables } from '../../src/vcpu/guest-pt';
import { GuestPageFault, Vcpu } from '../../src/vcpu/vcpu';

setDebugLocks(true);

/** Guest virtual address of data page 0 in shadow-mode test VMs. */
export const BASE = 2 ** 39;
/** Leaf flags of data pages in shadow-mode test VMs: present, writable, user, accessed, dirty. */
export const DATA_FLAGS = 0x67n;

export interface TestVm {
  readonly spec: MachineSpec;
  /** A handle for host-side work (tid -2): swap, KSM, dirty log, checks. */
  readonly host: Kvm;
  readonly vcpus: Vcpu[];
  readonly pt: GuestPageTables | null;
  /** Guest address of data page `i` (gpa in direct mode). */
  addr(i: number): number;
}

/**
 * A VM whose vCPUs are driven from this thread, each through its own handle.
 * Shadow mode: data pages 0..dataPages-1 are mapped at BASE + i * 4 KiB with
 * DATA_FLAGS; table pages follow them and are identity-mapped.
 */
export function makeVm(o: VmOptions & { dataPages?: number; tablePages?: number } = {}): TestVm {
  const mode = o.mode ?? 'direct';
  const dataPages = o.dataPages ?? 64;
  const tablePages = mode === 'shadow' ? (o.tablePages ?? 16) : 0;
  const spec = createMachine({ memBytes: (dataPages + tablePages) * 4096, ...o, mode });
  const host = openKvm(spec, -2);
  let pt: GuestPageTables | null = null;
  if (mode === 'shadow') {
    pt = GuestPageTables.build(host, dataPages, tablePages);
    for (let i = 0; i < dataPages; i++) pt.map(BASE + i * 4096, i, DATA_FLAGS);
    pt.mapTablesIdentity();
  }
  const vcpus: Vcpu[] = [];
  for (let v = 0; v < spec.config.vcpus; v++) {
    const vcpu = new Vcpu(openKvm(spec, v), v);
    vcpu.setup(pt === null ? 0 : pt.cr3);
    vcpus.push(vcpu);
  }
  return { spec, host, vcpus, pt, addr: (i) => (mode === 'shadow' ? BASE + i * 4096 : i * 4096) };
}

/** Run `f` holding mmu_lock (through `k`'s handle, so the debug lock checks see the right holder). */
export function locked<T>(k: Kvm, f: () => T): T {
  k.mem.lock(k.mmuLock);
  try {
    return f();
  } finally {
    k.mem.unlock(k.mmuLock);
  }
}

/** Run `f` with `vcpu` in guest mode. */
export function inGuest<T>(vcpu: Vcpu, f: () => T): T {
  vcpu.enterGuest();
  try {
    return f();
  } finally {
    vcpu.exitGuest();
  }
}

/** Run `f` in the guest; the guest #PF's error code, or null when the access succeeded. */
export function pf(vcpu: Vcpu, f: () => void): number | null {
  try {
    inGuest(vcpu, f);
    return null;
  } catch (e) {
    if (e instanceof GuestPageFault) return e.errorCode;
    throw e;
  }
}

/** The sptep of the leaf SPTE that maps `gva` through `vcpu`'s root, or -1. */
export function leafSptep(vcpu: Vcpu, gva: number): number {
  const k = vcpu.kvm;
  let sp = vcpu.kv.root;
  for (let level = 4; level >= 1; level--) {
    const sptep = k.pages.sptep(sp, Math.floor(gva / 2 ** (12 + 9 * (level - 1))) % 512);
    const spte = k.mem.u64[sptep]!;
    if (level === 1) return sptep;
    if ((spte & 1n) === 0n) return -1;
    sp = Number((spte >> 12n) & ((1n << 40n) - 1n));
  }
  return -1;
}

export function spteAt(vm: TestVm, sptep: number): bigint {
  return vm.host.mem.u64[sptep]!;
}

/** Does the dirty bitmap of slot 0 name `gfn`? (plain read, for assertions) */
export function bitmapHas(k: Kvm, gfn: number): boolean {
  const w = k.slotBitmap[0]! + (gfn >>> 5);
  return (k.mem.i32[w]! & (1 << (gfn & 31))) !== 0;
}

/**
 * Interleave another thread's steps into this one's: when the `nth` operation
 * on `mem` matching `when` is about to run (`at: 'before'`), or once it has run
 * (`at: 'after'`: just before this thread's next operation), run `then`. The
 * hook removes itself first, so `then` runs unhooked. Returns a function that
 * tells whether it fired. With `note`, a matching ghost event (NOTE.*) triggers
 * instead, just as it is emitted.
 */
export function interleave(
  mem: Mem,
  when: (op: number, index: number) => boolean,
  then: () => void,
  o: { nth?: number; at?: 'before' | 'after'; note?: (kind: number, a: number) => boolean } = {},
): () => boolean {
  const nth = o.nth ?? 1;
  const after = o.at === 'after';
  let seen = 0;
  let armed = false;
  let fired = false;
  const fire = (): void => {
    fired = true;
    mem.hook = null;
    then();
  };
  const hook: AccessHook = {
    before(op, a) {
      if (armed) return fire();
      if (!when(op, a) || ++seen < nth) return;
      if (after) armed = true;
      else fire();
    },
    note(kind, a) {
      // A ghost event can also be the trigger (e.g. "the lockless walk is about to begin").
      if (fired || o.note === undefined || !o.note(kind, a) || ++seen < nth) return;
      fire();
    },
  };
  mem.hook = hook;
  return () => fired;
}

export { NOTE, OP };
