// The scenario API: what a checker scenario is (a VM or raw shared memory, a sequential setup, named threads, a final check) and the per-thread view its code runs against.
//
// A scenario is ordinary code. The checker compiles it, and the MMU it calls,
// into generator form (src/cli/gen-transform.ts), so every access-layer
// operation becomes a point where it can switch threads. Two rules follow:
// thread code must call kvmmu functions directly (not through callbacks it
// passes around), and it must not keep state between executions outside the
// shared memory (each execution starts from the snapshot taken after setup,
// with fresh thread views).

import { Mem } from '../../shm/access';
import { KvmmuError } from '../../shm/errors';
import { LayoutBuilder, createShm, type Shm } from '../../shm/layout';
import type { Host } from '../../host/host';
import { resolveConfig, type GuardName, type IndirectFastPath, type MmuMode, type PageMarking, type VmConfig, type VmOptions } from '../../kvm/config';
import { Kvm } from '../../kvm/kvm';
import { createMachineFrom } from '../../vcpu/machine';
import { GuestPageTables } from '../../vcpu/guest-pt';
import { runProgram, type GuestOp, type ProgramResult } from '../../vcpu/program';
import { Vcpu } from '../../vcpu/vcpu';

/** Guest virtual address of data page 0 in shadow mode (gva = gpa in direct mode). */
export const SHADOW_BASE = 2 ** 39;

/** What the checker was asked for; a scenario sizes its VM from it. */
export interface ScenarioContext {
  readonly mode: MmuMode;
  readonly guards: number;
  readonly indirectFastPath: IndirectFastPath;
  /** When KVM marks host pages dirty (default `spte`, the seed's era). */
  readonly pageMarking?: PageMarking;
}

/** The Linux commit that fixed the race a scenario reproduces (KVM-BUGS.md); with it off, the guard gives the code before it. */
export interface RaceFix {
  /** The upstream commit id (12 hex digits or more). */
  readonly commit: string;
  readonly year: number;
  readonly title: string;
}

export interface ScenarioSpec<D = unknown> {
  readonly name: string;
  /** One or two sentences: what happens, and what would go wrong. */
  readonly description: string;
  /** The guard whose protection this scenario exercises. */
  readonly guard?: GuardName;
  /** For a race KVM really had: the commit that fixed it. */
  readonly fix?: RaceFix;
  /** Modes it runs in; the first is its default. */
  readonly modes?: readonly MmuMode[];
  /**
   * The preemption bound DPOR and DFS use unless the user gives one: for a scenario whose whole tree is too big to
   * explore in minutes. Its report then says "within N preemptions", not "exhaustive".
   */
  readonly preemptions?: number;
  /** A VM to build (keep it tiny: every execution restores its memory). */
  readonly machine?: (ctx: ScenarioContext) => VmOptions;
  /** Or raw shared memory for a scenario that is not about KVM. */
  readonly memory?: { readonly metaBytes: number; readonly dataBytes?: number };
  /** Runs once, sequentially; the checker snapshots memory after it. Its result reaches every thread. */
  readonly setup?: (vm: ScenarioVm) => D;
  /** The threads, by name; each execution runs every one from the snapshot. */
  readonly threads: Readonly<Record<string, (vm: ScenarioVm, data: D) => void>>;
  /** After every thread finished: a message if the outcome is wrong (the end-to-end oracle), else null. */
  readonly check?: (vm: ScenarioVm, data: D) => string | null;
}

/** Declare a scenario (identity; gives the types). */
export function defineScenario<D>(spec: ScenarioSpec<D>): ScenarioSpec<D> {
  return spec;
}

/**
 * `n` threads from one body, for a scenario's `threads`: thread i is named `name(i)` (`T0`, `T1`, ... unless
 * given) and runs `body(vm, data, i)`. `threads: threads(4, (vm, d, i) => ...)` is inc(4).
 */
export function threads<D>(
  n: number,
  body: (vm: ScenarioVm, data: D, i: number) => void,
  name: (i: number) => string = (i) => `T${i}`,
): Record<string, (vm: ScenarioVm, data: D) => void> {
  if (!Number.isInteger(n) || n < 1 || n > 30) throw new KvmmuError(`threads(${n}): a scenario has 1 to 30 threads`);
  const out: Record<string, (vm: ScenarioVm, data: D) => void> = {};
  for (let i = 0; i < n; i++) {
    const key = name(i);
    if (key in out) throw new KvmmuError(`threads(${n}): two threads named '${key}'`);
    out[key] = (vm, data) => body(vm, data, i);
  }
  return out;
}

/**
 * A scenario's misuse of its vm (a vCPU it does not have, raw words on a VM):
 * the user's error even when a thread makes it, so the checker stops with it
 * rather than reporting a crash. The mark works across the two builds' copies
 * of this class, as KvmmuError's does (see isScenarioUsageError).
 */
export class ScenarioUsageError extends KvmmuError {
  get isScenarioUsageError(): boolean {
    return true;
  }
}

/** The machine a scenario's executions share: buffers plus, for a VM, its configuration. */
export interface ScenarioMachine {
  readonly shm: Shm;
  readonly config: VmConfig | null;
}

/** Build the scenario's machine (VM or raw memory), resolving modes and guards. */
export function createScenarioMachine(spec: ScenarioSpec, ctx: ScenarioContext): ScenarioMachine {
  if (spec.modes !== undefined && !spec.modes.includes(ctx.mode))
    throw new KvmmuError(`scenario ${spec.name} runs in ${spec.modes.join(' or ')} mode, not ${ctx.mode}`);
  if (spec.machine !== undefined) {
    let config: VmConfig;
    try {
      config = resolveConfig({ mode: ctx.mode, indirectFastPath: ctx.indirectFastPath, pageMarking: ctx.pageMarking, ...spec.machine(ctx), guards: ctx.guards });
    } catch (e) {
      if (!(e instanceof KvmmuError)) throw e;
      // The options' checks name the CLI's flags ('--vcpus'); here they are the scenario's machine() fields.
      throw new KvmmuError(`scenario ${spec.name}'s machine: ${e.message.replace(/--(?=[a-z])/g, '')}`);
    }
    return { shm: createMachineFrom(config).shm, config };
  }
  const b = new LayoutBuilder();
  b.meta('scenario.words', spec.memory?.metaBytes ?? 4096);
  b.data('scenario.data', spec.memory?.dataBytes ?? 0);
  return { shm: createShm(b.finish()), config: null };
}

/**
 * One thread's view of the machine in one execution. Handles are created on
 * first use; a vCPU is attached from shared memory (set it up in `setup`).
 */
export class ScenarioVm {
  private kvmHandle: Kvm | null = null;
  private readonly vcpus = new Map<number, Vcpu>();

  constructor(
    readonly machine: ScenarioMachine,
    /** This thread's access-layer handle (its hook is this thread's scheduling point). */
    readonly mem: Mem,
    /** Kvm handles cached across executions, one per vCPU this thread drives (their thread state is reset here). */
    private readonly handles: Map<number, Kvm> = new Map(),
  ) {
    for (const k of handles.values()) k.resetThreadState();
  }

  get config(): VmConfig {
    if (this.machine.config === null) throw new ScenarioUsageError('this scenario has no VM');
    return this.machine.config;
  }

  /** The VM, as seen by this thread when it is not a vCPU (host, migration). */
  get kvm(): Kvm {
    if (this.kvmHandle === null) this.kvmHandle = this.handleFor(-1);
    return this.kvmHandle;
  }

  get host(): Host {
    return this.kvm.host;
  }

  /** vCPU `i`, driven by this thread. */
  vcpu(i: number): Vcpu {
    let v = this.vcpus.get(i);
    if (v === undefined) {
      const n = this.config.vcpus;
      if (!Number.isInteger(i) || i < 0 || i >= n) throw new ScenarioUsageError(`vm.vcpu(${i}): the scenario's machine has ${n} vCPU${n === 1 ? '' : 's'} (0 to ${n - 1})`);
      v = new Vcpu(this.handleFor(i), i);
      if (this.setupPhase) v.kvm.selfVcpu = i;
      else {
        try {
          v.attach();
        } catch {
          // attach's one failure: the vCPU has no root, so setup never set it up.
          throw new ScenarioUsageError(`vm.vcpu(${i}): vCPU ${i} was never set up: call vm.powerOn in the scenario's setup`);
        }
      }
      this.vcpus.set(i, v);
    }
    return v;
  }

  /** True while running the scenario's setup (vCPUs are created, not attached). */
  setupPhase = false;

  /** Guest address of data page `i`: the gpa in direct mode, SHADOW_BASE + i pages in shadow mode. */
  addr(i: number): number {
    return this.config.mode === 'shadow' ? SHADOW_BASE + i * 4096 : i * 4096;
  }

  /** Run a guest program on vCPU `i` (enter guest mode, run, exit). */
  program(i: number, ops: readonly GuestOp[]): ProgramResult {
    return runProgram(this.vcpu(i), ops);
  }

  /**
   * Setup helper: power on every vCPU. In shadow mode first build guest page
   * tables mapping data page i at addr(i) (leaf flags `flags`: present,
   * writable, user, accessed, dirty by default) in `tablePages` pages after the
   * `dataPages` data pages, and identity-map the tables. Returns the tables (or null).
   */
  powerOn(dataPages: number, tablePages = 8, flags = 0x67n): GuestPageTables | null {
    let pt: GuestPageTables | null = null;
    if (this.config.mode === 'shadow') {
      pt = GuestPageTables.build(this.kvm, dataPages, tablePages);
      for (let i = 0; i < dataPages; i++) pt.map(SHADOW_BASE + i * 4096, i, flags);
      pt.mapTablesIdentity();
    }
    for (let v = 0; v < this.config.vcpus; v++) this.vcpu(v).setup(pt === null ? 0 : pt.cr3);
    return pt;
  }

  /**
   * Let every vCPU that setup created handle its pending requests (enter and
   * leave guest mode once), so executions do not start with flushes queued
   * from setup. The checker calls this after `setup`.
   */
  settle(): void {
    for (const v of this.vcpus.values()) {
      v.enterGuest();
      v.exitGuest();
    }
  }

  /** A word of raw scenario memory (non-VM scenarios): Int32 index of byte offset `byte` in 'scenario.words'. */
  word(byte: number): number {
    const r = this.machine.shm.layout.regions['scenario.words'];
    if (r === undefined) throw new ScenarioUsageError('this scenario has a VM, not raw words');
    if (!Number.isInteger(byte) || byte < 0 || byte % 4 !== 0 || byte >= r.bytes)
      throw new ScenarioUsageError(`vm.word(${byte}): the byte offset must be a multiple of 4 below the scenario's ${r.bytes} bytes of memory`);
    return (r.off + byte) / 4;
  }

  private handleFor(vcpu: number): Kvm {
    let k = this.handles.get(vcpu);
    if (k === undefined) {
      k = new Kvm(this.mem, this.machine.shm.layout, this.config);
      if (vcpu >= 0) k.selfVcpu = vcpu;
      this.handles.set(vcpu, k);
    }
    return k;
  }
}

/** A fresh access-layer handle for logical thread `tid` on the machine. */
export function threadMem(machine: ScenarioMachine, tid: number): Mem {
  const m = new Mem(machine.shm);
  m.tid = tid;
  return m;
}
