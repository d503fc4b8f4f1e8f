// The run's guest workload on one thread: it verifies what it wrote, and a lost guest page-table write ends its writing as a finding, not a crash.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CTRL_STOP_WORK, createControl } from '../../src/runtime/control';
import { runWorkload, type WorkloadLayout } from '../../src/runtime/workload';
import { OUTSIDE_GUEST_MODE, VCPU_MODE } from '../../src/kvm/kvm';
import { BASE, makeVm } from '../helpers/vm';

/** Set the stop flag at the vCPU's `n`-th access-layer operation (the workload checks the flag between writes). */
function stopAfter(mem: { hook: unknown }, ctrl: Int32Array, n: number): void {
  let seen = 0;
  mem.hook = {
    before() {
      if (++seen === n) Atomics.store(ctrl, CTRL_STOP_WORK, 1);
    },
    note() {},
  };
}

function layout(vm: ReturnType<typeof makeVm>, count: number): WorkloadLayout {
  return {
    base: vm.pt === null ? 0 : BASE,
    first: 0,
    count,
    pteGpa: vm.pt === null ? [] : Array.from({ length: count }, (_, i) => vm.pt!.pteGpa(vm.addr(i))),
    ksmEvery: 0,
    remapEvery: 0,
    migrating: false,
  };
}

test('the workload writes its pages and finds every value where it left it, through the vCPU and in the host', () => {
  for (const mode of ['direct', 'shadow'] as const) {
    const vm = makeVm({ mode, dataPages: 16 });
    const v = vm.vcpus[0]!;
    const ctrl = createControl(1);
    stopAfter(v.mem, ctrl, 2000);
    const r = runWorkload(v, layout(vm, 16), ctrl, () => 0.5);
    v.mem.hook = null;
    assert.ok(r.writes > 16, `${mode}: ${r.writes} writes`);
    assert.equal(r.lost, 0, r.firstLost ?? '');
    assert.equal(r.guestFault, null);
  }
});

test('a guest page fault (a lost guest page-table write) stops the writing and is reported, outside guest mode while it waits', () => {
  const vm = makeVm({ mode: 'shadow', dataPages: 16 });
  const v = vm.vcpus[0]!;
  const k = vm.host;
  const pte = vm.pt!.pteGpa(vm.addr(5));
  k.host.writeUser64(Math.floor(pte / 4096), pte % 4096, 0n); // page 5's guest PTE is gone
  const ctrl = createControl(1);
  let modeWhileWaiting = -1;
  // The workload, stopped writing, sleeps (an Atomics.wait) until the stop flag is set: note the vCPU's mode at its
  // first sleep, then set the flag. (Nothing else in this test waits.)
  type Wait = (a: Int32Array, i: number, v: number, t?: number) => string;
  const atomics = Atomics as unknown as { wait: Wait };
  const wait = atomics.wait;
  atomics.wait = () => {
    if (modeWhileWaiting < 0) modeWhileWaiting = k.mem.i32[k.vcpuWord(0, VCPU_MODE)]! & 3;
    Atomics.store(ctrl, CTRL_STOP_WORK, 1);
    return 'timed-out';
  };
  let r;
  try {
    r = runWorkload(v, layout(vm, 16), ctrl, () => 0.5);
  } finally {
    atomics.wait = wait;
  }
  assert.equal(r.writes, 5, 'pages 0-4 were written, then page 5 faulted');
  assert.match(r.guestFault ?? '', /guest #PF at 0x8000005000.*a write to a guest page table was lost/);
  assert.equal(modeWhileWaiting, OUTSIDE_GUEST_MODE, 'it waited outside guest mode, where a remote flush does not wait for it');
});
