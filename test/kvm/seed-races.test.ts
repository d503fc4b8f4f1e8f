// Sequential replays of the locking document's races (and the notifier and lockless-walk ones): each guard off shows the failure, on shows none.
//
// Each test runs the real MMU code on one thread and splits the operations at
// the point where the document interleaves them: an access-layer hook on one
// logical thread's handle runs the other thread's steps there.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ALL_GUARDS, GUARDS, type IndirectFastPath, type PageMarking } from '../../src/kvm/config';
import { KVM_REQ_TLB_FLUSH, MMU_SEQ, READING_SHADOW_PAGE_TABLES, VCPU_MODE, VCPU_REQUESTS } from '../../src/kvm/kvm';
import { isWritablePte, spteToPfn } from '../../src/x86/spte';
import { readTlb } from '../../src/vcpu/vcpu';
import { DATA_FLAGS, NOTE, OP, bitmapHas, inGuest, interleave, leafSptep, makeVm, spteAt } from '../helpers/vm';

const without = (g: keyof typeof GUARDS): number => ALL_GUARDS & ~GUARDS[g];

// ---- 1) gfn -> pfn: the ABA on an indirect shadow page (guard pin-indirect) ----

function abaRace(guards: number, indirectFastPath: IndirectFastPath) {
  const vm = makeVm({ mode: 'shadow', vcpus: 2, dataPages: 64, swapSlots: 96, guards, indirectFastPath });
  const [v0, v1] = vm.vcpus as [(typeof vm.vcpus)[0], (typeof vm.vcpus)[0]];
  const k = vm.host;
  const gfn1 = 1;
  const gfn2 = 40;
  const G = vm.addr(gfn1);
  const bitmap = new Int32Array(8);
  // gpte = gfn1, gfn1 -> pfn1, spte = pfn1, write-protected for dirty logging (W=0, MMU_WRITABLE=1).
  inGuest(v0, () => v0.read64(G));
  k.dirtyLog.enable(0);
  k.dirtyLog.get(0, bitmap);
  const sptep = leafSptep(v0, G);
  const oldSpte = spteAt(vm, sptep);
  const pfn1 = spteToPfn(oldSpte);
  const pteGpa = vm.pt!.pteGpa(G);
  let reused = false;
  let sameValue = false;
  // vCPU 0's guest walk has found gfn1, and its fast path is about to walk the shadow tables (or, with the
  // fast path off for indirect pages, its slow path is about to look up the pfn); then, as in the document:
  const seqWord = v0.kvm.mmuBase + MMU_SEQ;
  const fired = interleave(
    v0.mem,
    (op, a) => op === OP.load32 && a === seqWord,
    () => {
      k.host.swapOut(gfn1); // pfn1 is swapped out: spte = 0
      k.host.swapIn(gfn2); // pfn1 is re-allocated for gfn2
      reused = k.host.peekPfn(gfn2) === pfn1;
      inGuest(v1, () => {
        v1.write64(pteGpa, (BigInt(gfn2) << 12n) | DATA_FLAGS); // the guest points gpte at gfn2
        v1.invlpg(G);
        v1.read64(G); // spte = pfn1 again, now for gfn2
      });
      k.dirtyLog.get(0, bitmap); // and write-protected again, so the value is the same as before
      sameValue = spteAt(vm, sptep) === oldSpte;
    },
    { note: (kind) => kind === NOTE.walkBegin },
  );
  inGuest(v0, () => v0.write64(G, 0xabcdn)); // lands in gfn2's frame
  assert.ok(fired(), 'the interleaving point was reached');
  k.dirtyLog.get(0, bitmap);
  return {
    reused,
    sameValue,
    gfn1Logged: (bitmap[0]! & (1 << gfn1)) !== 0,
    gfn2Logged: (bitmap[1]! & (1 << (gfn2 - 32))) !== 0,
    gfn2Bytes: k.host.readUser64(gfn2, 0),
    fast: v0.kv.stat('pfFast'),
  };
}

test('ABA on an indirect page: without the pin the fast path logs gfn1 while the guest wrote gfn2', () => {
  for (const [guards, setting] of [
    [without('pin-indirect'), 'pin'],
    [ALL_GUARDS, 'unsafe'],
  ] as const) {
    const r = abaRace(guards, setting);
    assert.ok(r.reused && r.sameValue, 'the document interleaving happened: pfn1 reused, same SPTE value');
    assert.equal(r.gfn2Bytes, 0xabcdn, 'the guest write went to gfn2');
    assert.equal(r.fast, 1, 'the fast path fixed the fault');
    assert.equal(r.gfn1Logged, true, 'gfn1 marked dirty');
    assert.equal(r.gfn2Logged, false, 'gfn2 is lost in the dirty bitmap');
  }
});

test('ABA on an indirect page: pinning gfn->pfn (the seed) or no fast path there (KVM today) logs gfn2', () => {
  for (const setting of ['pin', 'off'] as const) {
    const r = abaRace(ALL_GUARDS, setting);
    assert.ok(r.reused && r.sameValue, `${setting}: the document interleaving happened here too: pfn1 reused, same SPTE value`);
    assert.equal(r.gfn2Bytes, 0xabcdn);
    assert.equal(r.gfn2Logged, true, `${setting}: gfn2 is in the dirty bitmap`);
    assert.equal(r.gfn1Logged, false, `${setting}: gfn1 is not`);
  }
});

// ---- 2) TLB flush on write-protection of an MMU-writable SPTE (guard flush-mmu-writable) ----

function wpFlushRace(guards: number) {
  const vm = makeVm({ mode: 'shadow', vcpus: 2, dataPages: 64, guards });
  const [v0, v1] = vm.vcpus as [(typeof vm.vcpus)[0], (typeof vm.vcpus)[0]];
  const k = vm.host;
  const X = 5; // a data page that will become a guest page table
  const G = vm.addr(X);
  const H = vm.addr(0) + 4 * (2 << 20); // an unmapped 2 MiB region whose PDE will point at X
  inGuest(v0, () => v0.write64(G, (7n << 12n) | DATA_FLAGS)); // X's entry 0 maps gfn 7
  k.dirtyLog.enable(0); // spte.W = 0, MMU_WRITABLE = 1
  const sptep = leafSptep(v0, G);
  const pdeGpa = vm.pt!.pteGpa(H, 2);
  // vCPU 1 makes X a page table; shadowing it write-protects X (rmap_write_protect with pt_protect).
  const fired = interleave(
    v1.mem,
    (op, a) => op === OP.load64 && a === sptep,
    () => {
      // Between rmap_write_protect's read of the SPTE and its update: the fast path and a TLB fill.
      inGuest(v0, () => v0.write64(G + 8, 1n));
    },
    { at: 'after' },
  );
  inGuest(v1, () => {
    v1.write64(pdeGpa, (BigInt(X) << 12n) | DATA_FLAGS);
    assert.equal(v1.read64(H), 0n); // walks through X: X is now shadowed and write-protected
  });
  assert.ok(fired());
  const writableX = readTlb(v0.kvm, 0).some((e) => e.gfn === X && (e.acc & 2) !== 0);
  const flushPending = (k.mem.i32[k.vcpuWord(0, VCPU_REQUESTS)]! & KVM_REQ_TLB_FLUSH) !== 0;
  // The consequence: vCPU 0 clears X's entry 0. Trapped, it is emulated and the shadow entry for H zapped;
  // through a stale writable TLB entry it is not, and the shadow keeps mapping H.
  inGuest(v0, () => v0.write64(G, 0n));
  const stillMapped = inGuest(v1, () => {
    try {
      v1.read64(H);
      return true;
    } catch {
      return false;
    }
  });
  return { writableX, flushPending, stillMapped, spteW: isWritablePte(spteAt(vm, sptep)) };
}

test('write-protection that skips the flush for an MMU-writable SPTE leaves a writable TLB entry, and the shadow goes stale', () => {
  const r = wpFlushRace(without('flush-mmu-writable'));
  assert.equal(r.writableX, true, 'vCPU 0 holds a writable TLB entry for the page table X');
  assert.equal(r.flushPending, false, 'and no flush is pending for it');
  assert.equal(r.stillMapped, true, 'the guest cleared its PTE but the shadow still maps the address');
});

test('write-protection flushes for an MMU-writable SPTE: no stale writable entry, the guest PTE change is seen', () => {
  const r = wpFlushRace(ALL_GUARDS);
  assert.ok(!r.writableX || r.flushPending, 'any writable TLB entry for X is about to be flushed');
  assert.equal(r.stillMapped, false, 'the cleared guest PTE faults');
  assert.equal(r.spteW, false);
});

// ---- 3) Dirty bit tracking: a non-atomic clear loses D (guard atomic-volatile-clear) ----

function dirtyBitRace(guards: number, pageMarking: PageMarking = 'spte') {
  const vm = makeVm({ mode: 'direct', vcpus: 1, dataPages: 64, swapSlots: 64, guards, pageMarking });
  const v0 = vm.vcpus[0]!;
  const k = vm.host;
  const X = 3;
  const G = vm.addr(X);
  inGuest(v0, () => v0.write64(G, 1n));
  k.host.swapOut(X); // written back: the swap copy holds 1
  k.host.swapIn(X); // clean frame, swap copy still valid
  inGuest(v0, () => v0.read64(G)); // spte: W=1, A=1, D=0
  k.dirtyLog.enable(0); // spte: W=0, A=1, D=0, MMU_WRITABLE
  const sptep = leafSptep(v0, G);
  const fired = interleave(
    k.mem,
    (op, a) => op === OP.load64 && a === sptep,
    () => inGuest(v0, () => v0.write64(G, 2n)), // fast path W=1, then the write sets D=1
    { at: 'after' }, // mmu_spte_clear_track_bits has read old_spte
  );
  k.host.swapOut(X); // the notifier zaps the SPTE: mmu_spte_clear_track_bits
  assert.ok(fired());
  return inGuest(v0, () => v0.read64(G));
}

test('clearing a read-only accessed SPTE with a plain store loses the Dirty bit the fast path let the guest set', () => {
  assert.equal(dirtyBitRace(without('atomic-volatile-clear')), 1n, 'swap-out skipped the write-back: the write of 2 is lost');
});

test('clearing an MMU-writable SPTE with xchg keeps the Dirty bit: the page is written back', () => {
  assert.equal(dirtyBitRace(ALL_GUARDS), 2n);
});

test('since 6.13 (pages marked dirty at fault time) the plain-store clear still drops the D bit, but no data: the read fault already marked the page', () => {
  assert.equal(dirtyBitRace(without('atomic-volatile-clear'), 'fault'), 2n);
});

// ---- the MMU-notifier sequence (guard notifier-retry) ----

function notifierRace(guards: number) {
  const vm = makeVm({ mode: 'direct', vcpus: 1, dataPages: 64, swapSlots: 64, guards });
  const v0 = vm.vcpus[0]!;
  const k = vm.host;
  const X = 9;
  const Z = 20; // a page the host brings in later
  k.host.writeUser64(X, 0, 0x1111n); // X is present, its SPTE not yet made
  const fired = interleave(
    v0.mem,
    (op, a) => op === OP.lock && a === v0.kvm.mmuLock,
    () => {
      k.host.swapOut(X); // between the pfn lookup and mmu_lock: invalidate, unmap (the fault's pin keeps the frame)
    },
  );
  inGuest(v0, () => v0.write64(vm.addr(X), 0x2222n));
  assert.ok(fired());
  k.host.swapIn(Z); // the host reuses the most recently freed frame
  inGuest(v0, () => v0.write64(vm.addr(X), 0x3333n));
  return { zHost: k.host.readUser64(Z, 0), x: inGuest(v0, () => v0.read64(vm.addr(X))), retries: v0.kv.stat('pfRetry') };
}

test('a fault that ignores an invalidation between its pfn lookup and mmu_lock maps a freed frame', () => {
  const r = notifierRace(without('notifier-retry'));
  assert.equal(r.retries, 0);
  assert.equal(r.zHost, 0x3333n, "the guest's write to X landed in the frame now backing Z");
});

test('a fault that sees the invalidation sequence move retries and maps the current frame', () => {
  const r = notifierRace(ALL_GUARDS);
  assert.equal(r.retries, 1);
  assert.equal(r.x, 0x3333n);
  assert.equal(r.zHost, 0n, 'Z is untouched');
});

// ---- lockless walk begin/end (guard lockless-walk-sync) ----

function freeDuringWalk(guards: number) {
  const vm = makeVm({ mode: 'direct', vcpus: 2, dataPages: 1024, guards });
  const [v0, v1] = vm.vcpus as [(typeof vm.vcpus)[0], (typeof vm.vcpus)[0]];
  const k = vm.host;
  const A = 3;
  const B = 512 + 3; // same index in the next leaf shadow page
  inGuest(v0, () => v0.read64(vm.addr(A)));
  k.dirtyLog.enable(0);
  const sptepA = leafSptep(v0, vm.addr(A));
  const leafA = k.pages.spOf(sptepA);
  let modeDuringWalk = 0;
  let reusedForB = false;
  const fired = interleave(
    v0.mem,
    (op, a) => op === OP.load64 && a === sptepA,
    () => {
      modeDuringWalk = k.mem.i32[k.vcpuWord(0, VCPU_MODE)]! & 3;
      if (modeDuringWalk === READING_SHADOW_PAGE_TABLES) return; // a zap's flush would wait for this walk: stop here
      k.mmu.kvmMmuZapAll(); // frees the page the walker is in
      inGuest(v1, () => v1.read64(vm.addr(B))); // the freed page comes back as B's leaf page
      const bitmap = new Int32Array(32);
      k.dirtyLog.get(0, bitmap); // B's SPTE: W=0, MMU_WRITABLE
      reusedForB = k.pages.spOf(leafSptep(v1, vm.addr(B))) === leafA;
    },
    { nth: 2 }, // the first read is the hardware walk's; the second, the fast path's, after it read the parent entry
  );
  inGuest(v0, () => v0.write64(vm.addr(A), 1n));
  assert.ok(fired());
  if (!reusedForB) return { modeDuringWalk, reusedForB, bWritable: false, bLogged: false, aLogged: bitmapHas(k, A) };
  const bWritable = isWritablePte(spteAt(vm, leafSptep(v1, vm.addr(B))));
  inGuest(v1, () => v1.write64(vm.addr(B), 7n)); // through a writable SPTE: no fault, nothing logged
  return { modeDuringWalk, reusedForB, bWritable, bLogged: bitmapHas(k, B), aLogged: bitmapHas(k, A) };
}

test('a walker that does not announce itself reads a freed, reused shadow page and logs the wrong gfn', () => {
  const r = freeDuringWalk(without('lockless-walk-sync'));
  assert.equal(r.reusedForB, true, "the walker's page was freed and reused for B");
  assert.equal(r.bWritable, true, "the walker set W on B's SPTE");
  assert.equal(r.bLogged, false, "B's write is missing from the dirty bitmap");
});

test('with lockless-walk-sync on, the fast path walks in READING_SHADOW_PAGE_TABLES (the mode a remote flush waits out: flush.test.ts) and logs its write', () => {
  const r = freeDuringWalk(ALL_GUARDS);
  assert.equal(r.modeDuringWalk, READING_SHADOW_PAGE_TABLES);
  assert.equal(r.aLogged, true);
});
