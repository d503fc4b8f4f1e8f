// Shadow paging: write-protection of shadowed guest tables, emulated table writes and write flooding, invlpg, prefetch from guest PTEs, 2 MiB guest pages, page recycling and zap-all.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Kvm } from '../../src/kvm/kvm';
import { KVM_REQ_TLB_FLUSH, VCPU_REQUESTS } from '../../src/kvm/kvm';
import { ROLE_CR0_WP, ROLE_EFER_NX, SP_ROOT_COUNT, makeRole, roleIsDirect, roleLevel } from '../../src/kvm/mmu-page';
import { readTlb, type Vcpu } from '../../src/vcpu/vcpu';
import { PFERR_PRESENT_MASK, PFERR_WRITE_MASK, PT_PAGE_SIZE_MASK, pteIndex } from '../../src/x86/pte';
import { RET_PF_FIXED } from '../../src/kvm/mmu';
import {
  SPTE_ACCESSED_MASK,
  SPTE_HOST_WRITABLE,
  SPTE_MMU_WRITABLE,
  SPTE_WRITABLE_MASK,
  isShadowPresentPte,
  spteToChild,
  spteToPfn,
} from '../../src/x86/spte';
import { DATA_FLAGS, NOTE, OP, inGuest, leafSptep, makeVm, spteAt, type TestVm, locked } from '../helpers/vm';

const WBITS = SPTE_WRITABLE_MASK | SPTE_MMU_WRITABLE | SPTE_HOST_WRITABLE;

function trackCount(k: Kvm, gfn: number): number {
  return locked(k, () => k.pages.gfnTrackCount(k.gfnToHvpn(gfn)));
}

function inUse(k: Kvm): number[] {
  return locked(k, () => {
    const out: number[] = [];
    out.length = k.pages.collectInUse(out);
    return out;
  });
}

/** The guest frame of the page table that maps data page 0 (level 1). */
function dataTableGfn(vm: TestVm): number {
  return Math.floor(vm.pt!.pteGpa(vm.addr(0), 1) / 4096);
}

function readGpa(vm: TestVm, gpa: number): bigint {
  return vm.host.host.readUser64(vm.host.gfnToHvpn(Math.floor(gpa / 4096)), gpa % 4096);
}

test('shadowing a guest page table write-protects the SPTEs mapping it (W and MMU_WRITABLE clear), write-tracks its gfn and flushes', () => {
  const vm = makeVm({ mode: 'shadow' });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const T = dataTableGfn(vm);
  // The guest first uses T as data through its identity mapping: a writable SPTE.
  inGuest(v, () => v.write64(T * 4096 + 511 * 8, 0n));
  const sptepT = leafSptep(v, T * 4096);
  assert.equal(spteAt(vm, sptepT) & WBITS, WBITS, 'setup: T mapped writable');
  assert.equal(trackCount(k, T), 0);
  assert.deepEqual(k.mmu.shadowPagesOf(T), []);
  const flushes = k.stat('remoteFlushes');
  inGuest(v, () => v.read64(vm.addr(0))); // walks through T: T gets a shadow page
  assert.equal(spteAt(vm, sptepT) & WBITS, SPTE_HOST_WRITABLE, 'W and MMU_WRITABLE cleared, HOST_WRITABLE kept');
  assert.ok(trackCount(k, T) > 0, 'T is write-tracked');
  const shadows = k.mmu.shadowPagesOf(T);
  assert.equal(shadows.length, 1);
  assert.equal(roleLevel(k.pages.role(shadows[0]!)), 1);
  assert.equal(roleIsDirect(k.pages.role(shadows[0]!)), false);
  assert.ok(k.stat('remoteFlushes') > flushes, 'TLBs flushed for the write-protection');
  // The root's table (CR3) is tracked from the start.
  assert.ok(trackCount(k, vm.pt!.root) > 0);
});

test("a guest write to its own page table faults, is emulated into guest memory, and zaps the stale shadow entry", () => {
  const vm = makeVm({ mode: 'shadow' });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  k.host.writeUser64(0, 0, 0x1000n);
  k.host.writeUser64(7, 0, 0x7000n);
  assert.equal(inGuest(v, () => v.read64(vm.addr(0))), 0x1000n);
  const sptep = leafSptep(v, vm.addr(0));
  assert.ok(isShadowPresentPte(spteAt(vm, sptep)));
  const pteGpa = vm.pt!.pteGpa(vm.addr(0)); // identity-mapped: also its guest virtual address
  const newPte = (7n << 12n) | DATA_FLAGS;
  const emulated = k.stat('emulatedPteWrites');
  inGuest(v, () => v.write64(pteGpa, newPte));
  assert.equal(v.kv.stat('pfEmulate'), 1);
  assert.equal(k.stat('emulatedPteWrites'), emulated + 1);
  assert.equal(readGpa(vm, pteGpa), newPte, 'the write reached guest memory');
  assert.equal(spteAt(vm, sptep), 0n, 'the shadow entry for the old translation is gone');
  assert.equal(inGuest(v, () => v.read64(vm.addr(0))), 0x7000n, 'the next access sees the new mapping');
  assert.equal(spteToPfn(spteAt(vm, leafSptep(v, vm.addr(0)))), k.host.peekPfn(7));
});

test('repeated emulated writes to an upper-level table no fault uses zap its shadow page (write flooding); the VM keeps working', () => {
  const vm = makeVm({ mode: 'shadow' });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const T = Math.floor(vm.pt!.pteGpa(vm.addr(0), 2) / 4096); // the page directory mapping data page 0
  k.host.writeUser64(0, 0, 0xaan);
  inGuest(v, () => v.read64(vm.addr(0)));
  assert.equal(k.mmu.shadowPagesOf(T).length, 1);
  const zapped = k.stat('spZapped');
  inGuest(v, () => {
    v.write64(T * 4096 + 500 * 8, 0n);
    v.write64(T * 4096 + 501 * 8, 0n);
  });
  assert.equal(k.stat('spZapped'), zapped, 'two writes: not yet flooding');
  assert.equal(k.mmu.shadowPagesOf(T).length, 1);
  inGuest(v, () => v.write64(T * 4096 + 502 * 8, 0n));
  assert.equal(v.kv.stat('pfEmulate'), 3);
  assert.ok(k.stat('spZapped') > zapped, 'the third write zaps it');
  assert.deepEqual(k.mmu.shadowPagesOf(T), []);
  assert.equal(trackCount(k, T), 0, 'no longer write-tracked');
  assert.equal(inGuest(v, () => v.read64(vm.addr(0))), 0xaan);
  assert.equal(k.mmu.shadowPagesOf(T).length, 1, 'shadowed again by the next fault');
});

test('emulated writes to a last-level table never flood-zap its shadow page (KVM exempts level 1)', () => {
  const vm = makeVm({ mode: 'shadow' });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const T = dataTableGfn(vm);
  inGuest(v, () => v.read64(vm.addr(0)));
  const zapped = k.stat('spZapped');
  inGuest(v, () => {
    for (let e = 500; e < 510; e++) v.write64(T * 4096 + e * 8, 0n);
  });
  assert.equal(v.kv.stat('pfEmulate'), 10);
  assert.equal(k.stat('spZapped'), zapped);
  assert.equal(k.mmu.shadowPagesOf(T).length, 1, 'still shadowed and write-tracked');
  assert.ok(trackCount(k, T) > 0);
});

test('a fault through the table resets its flood count: writes interleaved with uses do not zap it', () => {
  const vm = makeVm({ mode: 'shadow' });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const T = dataTableGfn(vm);
  inGuest(v, () => v.read64(vm.addr(0)));
  const zapped = k.stat('spZapped');
  for (let i = 0; i < 4; i++) {
    inGuest(v, () => {
      v.write64(T * 4096 + (500 + i) * 8, 0n);
      v.write64(T * 4096 + (500 + i) * 8, 0n);
      v.read64(vm.addr(10 + i)); // a fault that walks through T
    });
  }
  assert.equal(k.stat('spZapped'), zapped);
  assert.equal(k.mmu.shadowPagesOf(T).length, 1);
});

test('invlpg in shadow mode drops the shadow entry and the TLB entry for the address', () => {
  const vm = makeVm({ mode: 'shadow' });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const gva = vm.addr(3);
  inGuest(v, () => v.read64(gva));
  const sptep = leafSptep(v, gva);
  assert.ok(isShadowPresentPte(spteAt(vm, sptep)));
  assert.ok(readTlb(v.kvm, 0).some((e) => e.vpn === gva / 4096));
  inGuest(v, () => v.invlpg(gva));
  assert.equal(spteAt(vm, sptep), 0n);
  assert.equal(locked(k, () => k.rmaps.collect(k.rmaps.rmapHead(3), [])), 0, "gfn 3's rmap is empty");
  assert.equal(v.kv.stat('invlpg'), 1);
  assert.ok(!readTlb(v.kvm, 0).some((e) => e.vpn === gva / 4096));
  inGuest(v, () => v.read64(gva)); // and it comes back on the next access
  assert.ok(isShadowPresentPte(spteAt(vm, sptep)));
});

test('invlpg in direct mode leaves the SPTE alone', () => {
  const vm = makeVm();
  const v = vm.vcpus[0]!;
  inGuest(v, () => v.read64(vm.addr(3)));
  const sptep = leafSptep(v, vm.addr(3));
  const before = spteAt(vm, sptep);
  inGuest(v, () => v.invlpg(vm.addr(3)));
  assert.equal(spteAt(vm, sptep), before);
});

/** The leaf SPTE mapping `gva` through vCPU 0, or 0n. */
function leafOf(vm: TestVm, gva: number): bigint {
  const sptep = leafSptep(vm.vcpus[0]!, gva);
  return sptep < 0 ? 0n : spteAt(vm, sptep);
}

test('a shadow fault prefetches its group from the guest PTEs: accessed ones the host has, without A; a clean one read-only', () => {
  const vm = makeVm({ mode: 'shadow', dataPages: 32 });
  const v = vm.vcpus[0]!;
  const h = vm.host.host;
  for (let i = 8; i < 16; i++) if (i !== 13) h.swapIn(i); // page 13 is not in host memory
  vm.pt!.map(vm.addr(9), 9, DATA_FLAGS & ~0x40n); // clean: present, writable, user, accessed
  inGuest(v, () => v.read64(vm.addr(10)));
  assert.equal(v.kv.stat('pfSlow'), 1);
  const leaf = (i: number): bigint => leafOf(vm, vm.addr(i));
  for (const i of [8, 11, 12]) {
    assert.equal(spteToPfn(leaf(i)), h.peekPfn(i), `page ${i} prefetched`);
    assert.equal(leaf(i) & SPTE_ACCESSED_MASK, 0n, `page ${i} without A`);
    assert.equal(leaf(i) & WBITS, WBITS, `page ${i} writable (its gPTE is dirty)`);
  }
  assert.equal(leaf(9) & SPTE_WRITABLE_MASK, 0n, 'a clean gPTE is prefetched read-only');
  assert.notEqual(leaf(9), 0n);
  assert.equal(leaf(13), 0n, 'a page not in host memory stops the prefetch (no host faults)');
  assert.equal(leaf(14), 0n, 'and nothing after it is mapped');
  inGuest(v, () => v.read64(vm.addr(12)));
  assert.equal(v.kv.stat('pfSlow'), 1, 'a prefetched page is read without a fault');
});

test('a shadow fault stops prefetching at a gPTE that is not accessed, and maps nothing writable into a dirty-logged memslot', () => {
  const vm = makeVm({ mode: 'shadow', dataPages: 32 });
  const v = vm.vcpus[0]!;
  const h = vm.host.host;
  for (let i = 16; i < 24; i++) h.swapIn(i);
  vm.pt!.map(vm.addr(18), 18, DATA_FLAGS & ~0x20n); // not accessed
  inGuest(v, () => v.read64(vm.addr(17)));
  assert.notEqual(leafOf(vm, vm.addr(16)), 0n, 'the page before it is prefetched');
  for (const i of [18, 19, 20]) assert.equal(leafOf(vm, vm.addr(i)), 0n, `page ${i}`);
  // With dirty logging on: a clean gPTE is still prefetched (read-only), a dirty one is not.
  for (let i = 24; i < 32; i++) h.swapIn(i);
  vm.pt!.map(vm.addr(24), 24, DATA_FLAGS & ~0x40n);
  vm.host.dirtyLog.enable(0);
  inGuest(v, () => v.read64(vm.addr(25)));
  assert.notEqual(leafOf(vm, vm.addr(24)), 0n, 'page 24 (clean gPTE) prefetched');
  assert.equal(leafOf(vm, vm.addr(24)) & SPTE_WRITABLE_MASK, 0n);
  for (let i = 26; i < 32; i++) assert.equal(leafOf(vm, vm.addr(i)), 0n, `page ${i} (dirty gPTE, dirty logging)`);
});

test('a 2 MiB guest page is mapped through a direct level-1 shadow page whose entries map the right gfns', () => {
  const vm = makeVm({ mode: 'shadow', dataPages: 1024 });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const G = vm.addr(0) + 2 * (2 << 20); // a 2 MiB-aligned region past the 4 KiB data mappings
  vm.pt!.mapLarge(G, 512, DATA_FLAGS);
  k.host.writeUser64(517, 8, 0x517n);
  k.host.writeUser64(612, 0, 0x612n);
  assert.equal(inGuest(v, () => v.read64(G + 5 * 4096 + 8)), 0x517n);
  assert.equal(inGuest(v, () => v.read64(G + 100 * 4096)), 0x612n);
  // Walk the shadow tables: levels 4..2 shadow guest tables, level 1 is a direct page for the large page.
  let sp = v.kv.root;
  for (let level = 4; level > 1; level--) {
    assert.equal(roleIsDirect(k.pages.role(sp)), false, `level ${level}: indirect`);
    sp = spteToChild(spteAt(vm, k.pages.sptep(sp, pteIndex(G, level))));
  }
  const role = k.pages.role(sp);
  // Its role: level 1, direct, the guest rights, and the bits of the vCPU's settings (EFER.NX and CR0.WP here).
  assert.equal(role, makeRole(1, true, v.kv.walker.pteAccess) | ROLE_EFER_NX | ROLE_CR0_WP, 'a valid direct level-1 page with the guest rights');
  assert.equal(k.mmu.spGfn(sp), 512, 'its first gfn is the large page base');
  for (const [i, gfn] of [
    [5, 517],
    [100, 612],
  ] as const) {
    assert.equal(k.pages.entryGfn(sp, i, role), gfn);
    const spte = spteAt(vm, k.pages.sptep(sp, i));
    assert.equal(spteToPfn(spte), k.host.peekPfn(gfn), `entry ${i} maps gfn ${gfn}'s frame`);
    assert.equal(k.pages.sptep(sp, i), leafSptep(v, G + i * 4096));
  }
  inGuest(v, () => v.write64(G + 5 * 4096, 9n));
  assert.equal(k.host.readUser64(517, 0), 9n);
});

test('a read of a clean guest 2 MiB page maps it read-only, neighbours too, so a later write faults and the guest PDE gets its D bit', () => {
  const vm = makeVm({ mode: 'shadow', dataPages: 1100 });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const G = vm.addr(0) + 2 * (2 << 20);
  vm.pt!.mapLarge(G, 512, 0x07n); // present, writable, user; no A, no D
  for (let g = 512; g < 520; g++) k.host.swapIn(k.gfnToHvpn(g)); // the host has the frames, so a prefetch maps them
  const pde = (): bigint => readGpa(vm, vm.pt!.pteGpa(G, 2));
  inGuest(v, () => v.read64(G));
  assert.equal(pde() & 0x40n, 0n, 'a read leaves D clear');
  const leaf = leafSptep(v, G);
  const dpage = k.pages.spOf(leaf);
  assert.equal(roleIsDirect(k.pages.role(dpage)), true);
  for (let i = 0; i < 8; i++) {
    const spte = spteAt(vm, k.pages.sptep(dpage, i));
    if (isShadowPresentPte(spte)) assert.equal(spte & (SPTE_WRITABLE_MASK | SPTE_MMU_WRITABLE), 0n, `entry ${i} (the read or a prefetch) is read-only`);
  }
  const exits = v.kv.stat('exits');
  inGuest(v, () => v.write64(G + 4096, 5n));
  assert.ok(v.kv.stat('exits') > exits, 'the write to a neighbour faulted');
  assert.equal(pde() & 0x40n, 0x40n, 'and the walker set the guest PDE\'s D bit');
  assert.equal(k.host.readUser64(k.gfnToHvpn(513), 0), 5n);
  // The direct page built for the read (no write right) was replaced by one with it.
  const now = k.pages.spOf(leafSptep(v, G + 4096));
  assert.notEqual(now, dpage);
  assert.equal(isShadowPresentPte(spteAt(vm, k.pages.sptep(now, 1))) && (spteAt(vm, k.pages.sptep(now, 1)) & SPTE_WRITABLE_MASK) !== 0n, true);
});

test('the fast path on a direct page below a guest 2 MiB page marks the gfn the entry maps, not a stale one from the guest walk', () => {
  const vm = makeVm({ mode: 'shadow', dataPages: 1100, vcpus: 2 }); // the seed's fast path for shadow paging (indirect setting: pin)
  const k = vm.host;
  const [v0, v1] = vm.vcpus as [Vcpu, Vcpu];
  const G = vm.addr(0) + 2 * (2 << 20);
  const [A, B, i] = [512, 1024, 3]; // two 2 MiB ranges of guest frames
  vm.pt!.mapLarge(G, A, DATA_FLAGS);
  const bitmap = new Int32Array(k.dirtyLog.words(0));
  const logged = (gfn: number): boolean => (bitmap[gfn >>> 5]! & (1 << (gfn & 31))) !== 0;
  inGuest(v0, () => v0.write64(G + i * 4096, 1n));
  k.dirtyLog.enable(0); // the SPTE for A+i: read-only, MMU-writable
  // vCPU 0 write-faults at G+i; its guest walk finds A+i ...
  v0.kv.walker.walk(v0.kvm.mmu, v0.kv.cr3, G + i * 4096, { write: true, user: false, fetch: false }, v0.kv.cpu);
  assert.equal(v0.kv.walker.gfn, A + i);
  // ... then vCPU 1 repoints the 2 MiB PDE at range B (trapped and emulated: the shadow PDE is zapped), touches G+i
  // (a direct page for B), and a dirty-log pass write-protects B+i and empties the log.
  inGuest(v1, () => v1.write64(vm.pt!.pteGpa(G, 2), (BigInt(B) << 12n) | DATA_FLAGS | PT_PAGE_SIZE_MASK));
  inGuest(v1, () => v1.write64(G + i * 4096, 2n));
  k.dirtyLog.get(0, bitmap);
  // vCPU 0's fast path reaches B+i's SPTE with the walk's gfn, A+i.
  const r = v0.kvm.mmu.fastPageFault(v0.kv, G + i * 4096, PFERR_PRESENT_MASK | PFERR_WRITE_MASK, A + i);
  assert.equal(r, RET_PF_FIXED);
  inGuest(v0, () => v0.write64(G + i * 4096, 3n));
  assert.equal(k.host.readUser64(k.gfnToHvpn(B + i), 0), 3n, 'the write landed in B+i');
  k.dirtyLog.get(0, bitmap);
  assert.equal(logged(B + i), true, 'B+i, which the guest wrote, is in the next dirty log');
  assert.equal(logged(A + i), false, 'A+i was not written');
});

test('with a small shadow-page pool pages are recycled and guest memory still reads back what was written', () => {
  const vm = makeVm({ mode: 'shadow', dataPages: 1024, spPages: 8 });
  const k = vm.host;
  const v = vm.vcpus[0]!;
  const pages = [0, 1, 511, 512, 700, 1023, 3, 600, 100, 900];
  inGuest(v, () => pages.forEach((p) => v.write64(vm.addr(p) + 16, BigInt(p) * 3n + 1n)));
  const reads = inGuest(v, () => pages.map((p) => v.read64(vm.addr(p) + 16)));
  assert.deepEqual(
    reads,
    pages.map((p) => BigInt(p) * 3n + 1n),
  );
  assert.ok(k.stat('spRecycled') > 0, 'pages were recycled');
  assert.ok(inUse(k).length <= 8);
  for (const p of pages) assert.equal(k.host.readUser64(p, 16), BigInt(p) * 3n + 1n);
});

test('kvmMmuZapAll flushes, then frees every shadow page but the roots in use; the VM keeps working', () => {
  const vm = makeVm({ mode: 'shadow', vcpus: 2 });
  const k = vm.host;
  const [v0, v1] = vm.vcpus as [Vcpu, Vcpu];
  inGuest(v0, () => [0, 5, 9].forEach((p) => v0.write64(vm.addr(p), BigInt(p) + 100n)));
  inGuest(v1, () => v1.write64(vm.addr(20), 120n));
  const before = inUse(k);
  const roots = new Set([v0.kv.root, v1.kv.root]);
  assert.ok(before.length > roots.size, 'setup: non-root pages exist');
  const events: string[] = [];
  const reqWords = new Set([k.vcpuWord(0, VCPU_REQUESTS), k.vcpuWord(1, VCPU_REQUESTS)]);
  k.mem.hook = {
    before(op, a) {
      if (op === OP.fetchOr32 && reqWords.has(a)) events.push('request');
    },
    note(kind, a) {
      if (kind === NOTE.flushDone) events.push('flushDone');
      if (kind === NOTE.spFree) events.push(`free ${a}`);
    },
  };
  const freed = k.stat('spFreed');
  try {
    k.mmu.kvmMmuZapAll();
  } finally {
    k.mem.hook = null;
  }
  const firstFree = events.findIndex((e) => e.startsWith('free'));
  assert.ok(firstFree > 0);
  assert.deepEqual(events.slice(0, firstFree), ['request', 'request', 'flushDone'], 'the flush completes before any page is freed');
  const freedPages = events.slice(firstFree).map((e) => Number(e.split(' ')[1]));
  assert.deepEqual(
    [...freedPages].sort((a, b) => a - b),
    before.filter((sp) => !roots.has(sp)).sort((a, b) => a - b),
    'exactly the non-root pages',
  );
  assert.equal(k.stat('spFreed'), freed + freedPages.length);
  assert.deepEqual(inUse(k).sort(), [...roots].sort(), 'only the roots remain');
  assert.equal(locked(k, () => k.pages.freeCount()), k.pages.nSp - roots.size);
  for (const r of roots) assert.ok(k.mem.i32[k.pages.hdr(r, SP_ROOT_COUNT)]! > 0);
  for (let v = 0; v < 2; v++) assert.ok((k.mem.i32[k.vcpuWord(v, VCPU_REQUESTS)]! & KVM_REQ_TLB_FLUSH) !== 0);
  assert.deepEqual(
    inGuest(v1, () => [0, 5, 9, 20].map((p) => v1.read64(vm.addr(p)))),
    [100n, 105n, 109n, 120n],
  );
  inGuest(v0, () => v0.write64(vm.addr(5), 7n));
  assert.equal(inGuest(v1, () => v1.read64(vm.addr(5))), 7n);
  assert.ok(inUse(k).length > roots.size);
});
