// Protection keys, implicit supervisor accesses and the processor's two-dimensional walk through the whole stack, and KVM's permission bitmaps against the SDM reference.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ACC_EXEC_MASK,
  ACC_USER_MASK,
  ACC_WRITE_MASK,
  CPU_CR0_PG,
  CPU_CR0_WP,
  CPU_CR4_PKE,
  CPU_CR4_SMAP,
  CPU_CR4_SMEP,
  CPU_EFER_NX,
  CPU_RFLAGS_AC,
  PT_ACCESSED_MASK,
  PT_DIRTY_MASK,
  PT_PRESENT_MASK,
  PT_USER_MASK,
  PT_WRITABLE_MASK,
  type AccessKind,
} from '../../src/x86/pte';
import { permissionFault, updatePkruBitmask } from '../../src/x86/permission';
import { sdmAccess, type SdmKind, type SdmMode } from '../../src/x86/sdm';
import { createMachine, openKvm } from '../../src/vcpu/machine';
import { GuestPageTables } from '../../src/vcpu/guest-pt';
import { Vcpu, VcpuLivelock } from '../../src/vcpu/vcpu';
import { KvmmuError } from '../../src/shm/errors';
import { VCPU_STAT } from '../../src/kvm/kvm';
import { runAccessMatrix } from '../../src/runtime/access-matrix';
import { inGuest, makeVm, pf } from '../helpers/vm';

const G = 2 ** 39 + 5 * 4096;

/** A VM in `mode` whose guest maps G to gfn 5 with `leaf` flags (its tables in guest memory), one vCPU set up with `cpu`. */
function pagedVm(mode: 'shadow' | 'tdp' | 'direct', cpu: number, leaf: bigint = PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK) {
  const spec = createMachine({ mode, vcpus: 1, memBytes: 40 * 4096, spPages: 64 });
  const k = openKvm(spec, -2);
  const pt = GuestPageTables.build(k, 32, 8);
  pt.map(G, 5, leaf);
  pt.mapTablesIdentity();
  const v = new Vcpu(openKvm(spec, 0), 0);
  v.setup(pt.cr3, cpu);
  const pteGpa = pt.pteGpa(G, 1);
  const pte = (): bigint => k.host.readUser64(Math.floor(pteGpa / 4096), pteGpa % 4096);
  const setPte = (x: bigint): void => k.host.writeUser64(Math.floor(pteGpa / 4096), pteGpa % 4096, x);
  return { k, v, pt, pte, setPte };
}


const TDP = CPU_CR0_PG | CPU_CR0_WP | CPU_EFER_NX;

test("KVM's permission bitmaps give the SDM reference's answer for every rights, key, PKRU bit, control bit and access", () => {
  const kinds: [SdmKind, SdmMode, AccessKind][] = [
    ['read', 'supervisor', { write: false, user: false, fetch: false }],
    ['write', 'supervisor', { write: true, user: false, fetch: false }],
    ['fetch', 'supervisor', { write: false, user: false, fetch: true }],
    ['read', 'user', { write: false, user: true, fetch: false }],
    ['write', 'user', { write: true, user: true, fetch: false }],
    ['fetch', 'user', { write: false, user: true, fetch: true }],
    ['read', 'implicit', { write: false, user: false, fetch: false, implicit: true }],
    ['write', 'implicit', { write: true, user: false, fetch: false, implicit: true }],
  ];
  let n = 0;
  for (let c = 0; c < 64; c++) {
    const cpu = { wp: (c & 1) !== 0, nxe: true, smep: (c & 2) !== 0, smap: (c & 4) !== 0, ac: (c & 8) !== 0, pke: (c & 16) !== 0 };
    const bits = (cpu.wp ? CPU_CR0_WP : 0) | CPU_EFER_NX | (cpu.smep ? CPU_CR4_SMEP : 0) | (cpu.smap ? CPU_CR4_SMAP : 0) | (cpu.ac ? CPU_RFLAGS_AC : 0) | (cpu.pke ? CPU_CR4_PKE : 0);
    for (let acc = 0; acc < 8; acc++)
      for (let pkruBits = 0; pkruBits < 4; pkruBits++)
        for (const [kind, mode, a] of kinds) {
          // Key 3's AD/WD are pkruBits; every other key denies everything, so a wrong key shows.
          const pkru = (0xffffffff & ~(3 << 6)) | (pkruBits << 6);
          const leaf = { p: true, w: (acc & ACC_WRITE_MASK) !== 0, u: (acc & ACC_USER_MASK) !== 0, xd: (acc & ACC_EXEC_MASK) === 0, pkey: 3 };
          const sdm = sdmAccess([leaf], { ...cpu, pkru }, kind, mode).errorCode;
          const ec = permissionFault(bits, pkru, acc, 3, a);
          assert.equal(ec === 0 ? null : ec, sdm === null ? null : sdm & 0x21, `${mode} ${kind}, rights ${acc}, PKRU bits ${pkruBits}, cpu ${JSON.stringify(cpu)}`);
          n++;
        }
  }
  assert.equal(n, 64 * 8 * 4 * 8);
  assert.equal(updatePkruBitmask(CPU_CR0_WP), 0, 'no PKRU mask without CR4.PKE');
});

test('the SDM reference: protection keys deny data accesses to user pages only, WD stops supervisor writes only with CR0.WP, and the error code has PK', () => {
  const U = { p: true, w: true, u: true, xd: false, pkey: 1 };
  const S = { ...U, u: false };
  const cpu = { wp: true, nxe: true, smep: false, smap: false, ac: false, pke: true, pkru: 0x4 }; // key 1 AD
  assert.equal(sdmAccess([U], cpu, 'read', 'user').errorCode, 0x25);
  assert.equal(sdmAccess([U], cpu, 'read', 'supervisor').errorCode, 0x21);
  assert.equal(sdmAccess([U], cpu, 'fetch', 'user').errorCode, null, 'keys do not govern fetches');
  assert.equal(sdmAccess([S], cpu, 'read', 'supervisor').errorCode, null, 'nor supervisor pages');
  const wd = { ...cpu, pkru: 0x8 }; // key 1 WD
  assert.equal(sdmAccess([U], wd, 'write', 'user').errorCode, 0x27);
  assert.equal(sdmAccess([U], wd, 'write', 'supervisor').errorCode, 0x23);
  assert.equal(sdmAccess([U], { ...wd, wp: false }, 'write', 'supervisor').errorCode, null);
  assert.equal(sdmAccess([U], { ...wd, pke: false }, 'write', 'user').errorCode, null, 'no keys without CR4.PKE');
  // A key violation and a rights violation at once: P and PK both.
  assert.equal(sdmAccess([{ ...U, w: false }], wd, 'write', 'user').errorCode, 0x27);
  // Implicit supervisor accesses: SMAP whatever AC says.
  const smap = { wp: true, nxe: true, smep: false, smap: true, ac: true };
  assert.equal(sdmAccess([U], smap, 'read', 'supervisor').errorCode, null);
  assert.equal(sdmAccess([U], smap, 'read', 'implicit').errorCode, 0x1);
  assert.throws(() => sdmAccess([U], smap, 'fetch', 'implicit'), /no implicit fetch/);
});

test('tdp with guest paging: PKRU access-disable faults a user read with PK (0x25), delivered without a VM exit; WRPKRU takes effect at once', () => {
  const { v } = pagedVm('tdp', TDP | CPU_CR4_PKE, PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK | (1n << 59n));
  v.user = true;
  assert.equal(pf(v, () => v.read64(G)), null, 'key 1 with PKRU 0 is allowed (and the TLB now holds the translation)');
  const exits = v.kv.stat('exits');
  assert.equal(pf(v, () => v.wrpkru(0x4)), null);
  assert.equal(pf(v, () => v.read64(G)), 0x25, 'AD for key 1: present, user, PK');
  assert.equal(v.kv.stat('exits') - exits, 2, 'only the inGuest brackets exit: the #PF is delivered by the processor');
  assert.equal(pf(v, () => v.wrpkru(0x8)), null);
  assert.equal(pf(v, () => v.read64(G)), null, 'WD lets reads through');
  assert.equal(pf(v, () => v.write64(G, 1n)), 0x27, 'WD stops a user write: present, write, user, PK');
  v.user = false;
  assert.equal(pf(v, () => v.write64(G, 1n)), 0x23, 'and a supervisor write with CR0.WP');
  assert.equal(pf(v, () => v.setControlBits((TDP | CPU_CR4_PKE) & ~CPU_CR0_WP)), null);
  assert.equal(pf(v, () => v.write64(G, 2n)), null, 'but not with CR0.WP=0');
  assert.equal(VCPU_STAT.exits, 7);
});

test('shadow paging: CR4.PKE is refused, as KVM hides PKU without TDP; WRPKRU without CR4.PKE is #UD', () => {
  assert.throws(() => pagedVm('shadow', CPU_CR0_WP | CPU_EFER_NX | CPU_CR4_PKE), (e: unknown) => e instanceof KvmmuError && /PKE under shadow paging/.test(e.message));
  const { v } = pagedVm('shadow', CPU_CR0_WP | CPU_EFER_NX);
  assert.throws(() => inGuest(v, () => v.setControlBits(CPU_CR0_WP | CPU_EFER_NX | CPU_CR4_PKE)), KvmmuError);
  assert.throws(() => v.wrpkru(0), /#UD/);
});

test('implicit supervisor accesses: SMAP applies whatever RFLAGS.AC says, at CPL 3 too (tdp: the processor decides)', () => {
  const { v } = pagedVm('tdp', TDP | CPU_CR4_SMAP | CPU_RFLAGS_AC);
  assert.equal(pf(v, () => v.read64(G)), null, 'an explicit supervisor read with AC=1 reaches the user page');
  assert.equal(pf(v, () => v.implicitRead64(G)), 0x1, 'an implicit one does not (present, supervisor)');
  assert.equal(pf(v, () => v.implicitWrite64(G, 1n)), 0x3);
  v.user = true;
  assert.equal(pf(v, () => v.implicitRead64(G)), 0x1, 'at CPL 3 the implicit access is still a supervisor access (U/S=0 in the error code)');
  assert.equal(pf(v, () => v.read64(G)), null, 'while a user read is allowed');
});

test('shadow: an implicit supervisor read under SMAP with AC=0 faults; with AC=1 KVM cannot tell it from an explicit one and the vCPU livelocks', () => {
  const { v } = pagedVm('shadow', CPU_CR0_WP | CPU_EFER_NX | CPU_CR4_SMAP);
  assert.equal(pf(v, () => v.implicitRead64(G)), 0x1);
  const { v: w } = pagedVm('shadow', CPU_CR0_WP | CPU_EFER_NX | CPU_CR4_SMAP | CPU_RFLAGS_AC);
  assert.equal(pf(w, () => w.read64(G)), null);
  assert.throws(() => inGuest(w, () => w.implicitRead64(G)), (e: unknown) => e instanceof VcpuLivelock && /SPURIOUS/.test(e.message));
});

test("tdp: the processor's walk sets A in every guest entry and D in the leaf, and under dirty logging the table pages it wrote are logged", () => {
  const { k, v, pte, setPte } = pagedVm('tdp', TDP);
  setPte(pte() & ~(PT_ACCESSED_MASK | PT_DIRTY_MASK));
  assert.equal(pf(v, () => v.read64(G)), null);
  assert.equal(pte() & (PT_ACCESSED_MASK | PT_DIRTY_MASK), PT_ACCESSED_MASK);
  k.dirtyLog.enable(0);
  const bits = new Int32Array(k.dirtyLog.words(0));
  k.dirtyLog.get(0, bits);
  assert.equal(pf(v, () => v.write64(G, 7n)), null);
  assert.equal(pte() & PT_DIRTY_MASK, PT_DIRTY_MASK, 'D set by the write');
  k.dirtyLog.get(0, bits);
  const logged = (gfn: number): boolean => (bits[gfn >> 5]! & (1 << (gfn & 31))) !== 0;
  assert.ok(logged(5), 'the data page');
  assert.ok(logged(32 + 3), "the PT page, whose entry's D the walk set (tables are gfns 32.., the PT the fourth)");
  assert.equal(k.host.readUser64(5, 0), 7n);
});

test('tdp with CR0.WP=0: a supervisor write to a read-only guest page after dirty logging write-protected the SPTE exits and is logged, though a read filled the TLB in between', () => {
  const { k, v, pte, setPte } = pagedVm('tdp', TDP & ~CPU_CR0_WP);
  setPte(pte() & ~PT_WRITABLE_MASK);
  assert.equal(pf(v, () => v.write64(G, 1n)), null, 'WP=0: the supervisor writes the read-only page (guest D and SPTE D now set)');
  k.dirtyLog.enable(0);
  const bits = new Int32Array(k.dirtyLog.words(0));
  k.dirtyLog.get(0, bits);
  assert.equal(pf(v, () => v.read64(G)), null, 'a read fills the TLB from an SPTE without W but with D');
  assert.equal(pf(v, () => v.write64(G, 2n)), null);
  k.dirtyLog.get(0, bits);
  assert.ok((bits[0]! & (1 << 5)) !== 0, "the write exited to KVM (the TLB holds the SPTE's W apart from the guest's rights) and was logged");
});

test('tdp: a guest that changes its PTE and invlpg sees the new rights; without invlpg the TLB keeps the old ones (as a processor does)', () => {
  const { v, pte, setPte } = pagedVm('tdp', TDP);
  assert.equal(pf(v, () => v.write64(G, 1n)), null);
  setPte(pte() & ~PT_WRITABLE_MASK);
  assert.equal(pf(v, () => v.write64(G, 2n)), null, 'the stale TLB entry still allows the write');
  assert.equal(pf(v, () => v.invlpg(G)), null);
  assert.equal(pf(v, () => v.write64(G, 3n)), 0x3);
});

test('kvmmu access with protection keys: a sample of the --pku space under tdp and direct agrees with the SDM', () => {
  for (const mode of ['tdp', 'direct'] as const) {
    const r = runAccessMatrix({ mode, pku: true, stride: 5 });
    assert.equal(r.combinations, Math.ceil((32 * 9 * 99 * 4 * 8) / 5));
    assert.deepEqual(r.mismatches, [], mode);
  }
  assert.throws(() => runAccessMatrix({ mode: 'shadow', pku: true }), /--pku needs --mode tdp or direct/);
});

test('kvmmu access with dirty logging on and with the guest editing its entries: every mode agrees with the SDM', () => {
  for (const mode of ['shadow', 'tdp'] as const) {
    const r = runAccessMatrix({ mode, dirtyLog: true, stride: 3 });
    assert.deepEqual(r.mismatches, [], `${mode}, dirty log`);
    const g = runAccessMatrix({ mode, edit: 'guest', stride: 3 });
    assert.deepEqual(g.mismatches, [], `${mode}, guest edits`);
  }
});
