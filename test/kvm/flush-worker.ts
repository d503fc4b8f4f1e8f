// Worker for the real-thread KVM tests: one vCPU that holds guest mode, or a lockless walk, open until the flusher releases it, or takes a slow fault when told; and its launcher.
//
// The hand-off is deterministic: the worker stays where the test wants it (in
// guest mode, or inside the fast path's walk) until the control word RELEASE is
// set, which the test's flusher does from an access-layer hook at the moment it
// starts waiting for this vCPU. So the flusher cannot have returned early by
// luck, and the worker cannot have left early by luck.

import path from 'node:path';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { NOTE, OP } from '../../src/shm/access';
import { VCPU_MODE, type Kvm } from '../../src/kvm/kvm';
import { createMachine, openKvm, type MachineSpec } from '../../src/vcpu/machine';
import { Vcpu, readTlb } from '../../src/vcpu/vcpu';
import { PFERR_PRESENT_MASK, PFERR_WRITE_MASK } from '../../src/x86/pte';

/** Int32 words of the control buffer. */
export const CTL_RELEASE = 0;
/** Set by the worker just before its lockless walk ends. */
export const CTL_WALK_ENDED = 1;
/** Set by the test to let the worker start its fast page fault ('walk' job). */
export const CTL_GO = 2;
export const CTL_BYTES = 16;

const WAIT_MS = 5000;

export interface FlushJob {
  /**
   * 'guest': enter guest mode, fill the TLB, wait in guest mode; 'walk': wait
   * inside a fast page fault's lockless walk; 'slow': on CTL_GO, write page 2
   * (not mapped yet: a slow fault, which takes mmu_lock).
   */
  readonly kind: 'guest' | 'walk' | 'slow';
  readonly spec: MachineSpec;
  readonly ctl: SharedArrayBuffer;
  readonly idx: number;
}

export type FlushMsg =
  | { readonly kind: 'ready'; readonly tlbVpns: number[] }
  | { readonly kind: 'inWalk'; readonly mode: number }
  | { readonly kind: 'faulted'; readonly pfSlow: number; readonly pfLockContended: number }
  | {
      readonly kind: 'done';
      /** The vCPU's mode when the release came. */
      readonly modeAtRelease: number;
      readonly tlbVpns: number[];
      readonly tlbFlushes: number;
      readonly ret: number;
    };

function post(m: FlushMsg): void {
  parentPort!.postMessage(m);
}

function waitFor(ctl: Int32Array, word: number, what: string): void {
  const deadline = Date.now() + WAIT_MS;
  while (Atomics.load(ctl, word) === 0) {
    if (Date.now() > deadline) throw new Error(`flush-worker: no ${what} within ${WAIT_MS} ms`);
    Atomics.wait(ctl, word, 0, 50);
  }
}

function run(job: FlushJob): void {
  const ctl = new Int32Array(job.ctl);
  const kvm = openKvm(job.spec, job.idx);
  const vcpu = new Vcpu(kvm, job.idx);
  vcpu.setup(0);
  const modeWord = kvm.vcpuWord(job.idx, VCPU_MODE);
  const vpns = (): number[] => readTlb(kvm, job.idx).map((e) => e.vpn).sort((a, b) => a - b);
  if (job.kind === 'guest') {
    vcpu.enterGuest();
    vcpu.read64(1 * 4096);
    vcpu.read64(2 * 4096);
    post({ kind: 'ready', tlbVpns: vpns() });
    waitFor(ctl, CTL_RELEASE, 'release'); // in guest mode, between two instructions
    const modeAtRelease = Atomics.load(kvm.mem.i32, modeWord) & 3;
    vcpu.read64(3 * 4096); // the next instruction boundary notices the kick
    const tlbVpns = vpns();
    vcpu.exitGuest();
    post({ kind: 'done', modeAtRelease, tlbVpns, tlbFlushes: vcpu.kv.stat('tlbFlushes'), ret: 0 });
    return;
  }
  if (job.kind === 'slow') {
    post({ kind: 'ready', tlbVpns: vpns() });
    waitFor(ctl, CTL_GO, 'go');
    vcpu.enterGuest();
    vcpu.write64(2 * 4096, 1n);
    vcpu.exitGuest();
    post({ kind: 'faulted', pfSlow: vcpu.kv.stat('pfSlow'), pfLockContended: vcpu.kv.stat('pfLockContended') });
    return;
  }
  // 'walk': map page 1, let the test write-track it, then stop inside the fast path's walk.
  vcpu.enterGuest();
  vcpu.read64(1 * 4096);
  vcpu.exitGuest();
  post({ kind: 'ready', tlbVpns: vpns() });
  waitFor(ctl, CTL_GO, 'go');
  let modeAtRelease = -1;
  kvm.mem.hook = {
    before(op) {
      if (op !== OP.cmpxchg64 || modeAtRelease >= 0) return;
      post({ kind: 'inWalk', mode: Atomics.load(kvm.mem.i32, modeWord) & 3 });
      waitFor(ctl, CTL_RELEASE, 'release');
      modeAtRelease = Atomics.load(kvm.mem.i32, modeWord) & 3;
    },
    note(kind) {
      if (kind === NOTE.walkEnd) Atomics.store(ctl, CTL_WALK_ENDED, 1);
    },
  };
  const ret = kvm.mmu.fastPageFault(vcpu.kv, 1 * 4096, PFERR_PRESENT_MASK | PFERR_WRITE_MASK, 1);
  kvm.mem.hook = null;
  post({ kind: 'done', modeAtRelease, tlbVpns: vpns(), tlbFlushes: vcpu.kv.stat('tlbFlushes'), ret });
}

/** A running flush worker seen from the test: messages in order, failures surfaced to the next wait. */
export class FlushWorker {
  private readonly worker: Worker;
  private readonly queue: FlushMsg[] = [];
  private waiter: ((m: FlushMsg) => void) | null = null;
  private failure: Error | null = null;
  private onFail: ((e: Error) => void) | null = null;

  constructor(job: FlushJob) {
    // Tests run compiled, from dist/test/kvm/, next to this file's .js.
    this.worker = new Worker(path.join(__dirname, 'flush-worker.js'), { workerData: job });
    this.worker.on('message', (m: FlushMsg) => {
      const w = this.waiter;
      if (w === null) return void this.queue.push(m);
      this.waiter = null;
      this.onFail = null;
      w(m);
    });
    const fail = (e: Error): void => {
      if (this.failure !== null) return;
      this.failure = e;
      const f = this.onFail;
      this.waiter = null;
      this.onFail = null;
      if (f !== null) f(e);
    };
    this.worker.on('error', fail);
    this.worker.on('exit', (code: number) => fail(new Error(`flush worker (${job.kind}) exited with code ${code}`)));
  }

  /** The next message, which must be of kind `kind`, within `ms` milliseconds. */
  next<K extends FlushMsg['kind']>(kind: K, ms = WAIT_MS): Promise<Extract<FlushMsg, { kind: K }>> {
    const check = (m: FlushMsg): Extract<FlushMsg, { kind: K }> => {
      if (m.kind !== kind) throw new Error(`expected '${kind}' from the flush worker, got '${m.kind}'`);
      return m as Extract<FlushMsg, { kind: K }>;
    };
    const queued = this.queue.shift();
    if (queued !== undefined) return Promise.resolve(check(queued));
    if (this.failure !== null) return Promise.reject(this.failure);
    return new Promise<FlushMsg>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        this.onFail = null;
        reject(new Error(`no '${kind}' from the flush worker within ${ms} ms`));
      }, ms);
      this.waiter = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
      this.onFail = (e) => {
        clearTimeout(timer);
        reject(e);
      };
    }).then(check);
  }

  async terminate(): Promise<void> {
    this.failure ??= new Error('terminated');
    await this.worker.terminate();
  }
}

if (!isMainThread && workerData !== null && workerData !== undefined) run(workerData as FlushJob);

/**
 * A one-vCPU machine of 64 pages, a host handle on it (thread id -2), a
 * control buffer, and a worker running `kind` on vCPU 0.
 */
export function startFlushWorker(kind: FlushJob['kind']): { k: Kvm; ctl: Int32Array; w: FlushWorker } {
  const spec = createMachine({ vcpus: 1, memBytes: 64 * 4096 });
  const ctlBuf = new SharedArrayBuffer(CTL_BYTES);
  return { k: openKvm(spec, -2), ctl: new Int32Array(ctlBuf), w: new FlushWorker({ kind, spec, ctl: ctlBuf, idx: 0 }) };
}
