// Accesses through the whole stack in shadow mode (guest tables, TLB, SPTEs, the fault path, the injected #PF) give the SDM's answer (issue 16's cases, one by one).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CPU_CR0_WP, CPU_CR4_SMAP, CPU_CR4_SMEP, CPU_EFER_NX } from '../../src/x86/pte';
import { sdmAccess } from '../../src/x86/sdm';
import { runAccessMatrix } from '../../src/runtime/access-matrix';
import { makeVm, pf } from '../helpers/vm';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

/** A shadow-mode vCPU with control bits `cpu`; data page 3 is a user page (P W U), 2 MiB above the data is unmapped. */
function shadowVcpu(cpu: number) {
  const vm = makeVm({ mode: 'shadow', vcpus: 1, dataPages: 16 });
  const v = vm.vcpus[0]!;
  v.setup(vm.pt!.cr3, cpu);
  return { vm, v, userPage: vm.addr(3), unmapped: vm.addr(0) + 4 * (2 << 20) };
}


test('shadow: a supervisor fetch from a user page with SMAP on and NXE, SMEP off succeeds (SMAP applies to data accesses only)', () => {
  const { v, userPage } = shadowVcpu(CPU_CR0_WP | CPU_CR4_SMAP);
  assert.equal(pf(v, () => v.fetch(userPage)), null);
  // And so it does after other accesses to the page (no history dependence).
  v.user = true;
  assert.equal(pf(v, () => v.read64(userPage)), null);
  v.user = false;
  assert.equal(pf(v, () => v.fetch(userPage)), null);
  // A supervisor data read of the same page is what SMAP forbids: a present fault, not a fetch.
  assert.equal(pf(v, () => v.read64(userPage)), 0x1);
});

test('shadow: the injected error code has the fetch bit only when EFER.NX or CR4.SMEP is on', () => {
  for (const [cpu, ec] of [
    [CPU_CR0_WP, 0x0],
    [CPU_CR0_WP | CPU_CR4_SMAP, 0x0],
    [CPU_CR0_WP | CPU_EFER_NX, 0x10],
    [CPU_CR0_WP | CPU_CR4_SMEP, 0x10],
  ] as const) {
    const { v, unmapped } = shadowVcpu(cpu);
    assert.equal(pf(v, () => v.fetch(unmapped)), ec, `cpu bits ${cpu}`);
  }
});

test('shadow: SMEP forbids a supervisor fetch from a user page (present, fetch)', () => {
  const { v, userPage } = shadowVcpu(CPU_CR0_WP | CPU_CR4_SMEP);
  assert.equal(pf(v, () => v.fetch(userPage)), 0x11);
});

test('shadow: vCPUs with different EFER.NXE do not share shadow pages (role.efer_nx): XD with NXE off is a reserved-bit #PF', () => {
  const vm = makeVm({ mode: 'shadow', vcpus: 2, dataPages: 16 });
  const [v0, v1] = vm.vcpus as [(typeof vm.vcpus)[0], (typeof vm.vcpus)[0]];
  const G = vm.addr(5);
  // Data page 5's PTE gets XD (bit 63): a non-executable page for a vCPU with NXE, a reserved bit for one without.
  const pteGpa = vm.pt!.pteGpa(G);
  vm.host.host.writeUser64(Math.floor(pteGpa / 4096), pteGpa % 4096, vm.host.host.readUser64(Math.floor(pteGpa / 4096), pteGpa % 4096) | (1n << 63n));
  v0.setup(vm.pt!.cr3, CPU_CR0_WP | CPU_EFER_NX);
  v1.setup(vm.pt!.cr3, CPU_CR0_WP);
  assert.equal(pf(v0, () => v0.read64(G)), null, 'vCPU 0 (NXE on) reads the page; its shadow SPTE is built');
  assert.notEqual(v0.kv.root, v1.kv.root, 'the two vCPUs have roots of their own');
  assert.equal(pf(v1, () => v1.read64(G)), 0x9, 'vCPU 1 (NXE off): present, reserved bit');
  assert.equal(pf(v1, () => v1.write64(G, 1n)), 0xb, 'and for a write');
});

test('shadow with CR0.WP=0: the supervisor writes a read-only page; the SPTE is writable and supervisor-only until a user access remakes it', () => {
  const { vm, v } = shadowVcpu(CPU_EFER_NX); // CR0.WP off
  const G = vm.addr(6);
  // Data page 6 becomes read-only to the guest: P U A, no W.
  const pteGpa = vm.pt!.pteGpa(G);
  const hvpn = Math.floor(pteGpa / 4096);
  vm.host.host.writeUser64(hvpn, pteGpa % 4096, vm.host.host.readUser64(hvpn, pteGpa % 4096) & ~2n);
  assert.equal(pf(v, () => v.write64(G, 0x66n)), null, 'a supervisor write with WP=0 succeeds');
  assert.equal(vm.host.host.readUser64(6, 0), 0x66n);
  v.user = true;
  assert.equal(pf(v, () => v.read64(G)), null, 'a user read succeeds (the SPTE is remade user, read-only)');
  assert.equal(pf(v, () => v.write64(G, 1n)), 0x7, 'a user write faults: present, write, user');
  v.user = false;
  assert.equal(pf(v, () => v.write64(G, 0x67n)), null, 'and the supervisor can write it again');
  assert.equal(vm.host.host.readUser64(6, 0), 0x67n);
});

test('shadow with CR0.WP=1: the same supervisor write to a read-only page faults (present, write)', () => {
  const { vm, v } = shadowVcpu(CPU_CR0_WP | CPU_EFER_NX);
  const G = vm.addr(6);
  const pteGpa = vm.pt!.pteGpa(G);
  const hvpn = Math.floor(pteGpa / 4096);
  vm.host.host.writeUser64(hvpn, pteGpa % 4096, vm.host.host.readUser64(hvpn, pteGpa % 4096) & ~2n);
  assert.equal(pf(v, () => v.write64(G, 0x66n)), 0x3);
});

test('shadow: a guest write of EFER.NX resets the MMU context, so a PTE with XD becomes a reserved-bit fault for the same vCPU', () => {
  const { vm, v } = shadowVcpu(CPU_CR0_WP | CPU_EFER_NX);
  const G = vm.addr(5);
  const pteGpa = vm.pt!.pteGpa(G);
  const hvpn = Math.floor(pteGpa / 4096);
  vm.host.host.writeUser64(hvpn, pteGpa % 4096, vm.host.host.readUser64(hvpn, pteGpa % 4096) | (1n << 63n));
  assert.equal(pf(v, () => v.read64(G)), null, 'with NXE, XD only forbids fetches');
  const before = v.kv.root;
  assert.equal(pf(v, () => v.setControlBits(CPU_CR0_WP)), null);
  assert.notEqual(v.kv.root, before, 'a root for the new role');
  assert.equal(pf(v, () => v.read64(G)), 0x9, 'without NXE, XD is a reserved bit');
  // And back: the old root (still cached by KVM's hash) serves NXE again.
  assert.equal(pf(v, () => v.setControlBits(CPU_CR0_WP | CPU_EFER_NX)), null);
  assert.equal(pf(v, () => v.read64(G)), null);
});

test('shadow: clearing CR0.WP takes effect at once: the supervisor then writes a read-only page', () => {
  const { vm, v } = shadowVcpu(CPU_CR0_WP | CPU_EFER_NX);
  const G = vm.addr(6);
  const pteGpa = vm.pt!.pteGpa(G);
  const hvpn = Math.floor(pteGpa / 4096);
  vm.host.host.writeUser64(hvpn, pteGpa % 4096, vm.host.host.readUser64(hvpn, pteGpa % 4096) & ~2n);
  assert.equal(pf(v, () => v.write64(G, 1n)), 0x3);
  assert.equal(pf(v, () => v.setControlBits(CPU_EFER_NX)), null);
  assert.equal(pf(v, () => v.write64(G, 2n)), null);
  assert.equal(vm.host.host.readUser64(6, 0), 2n);
});

// ---- the SDM reference and kvmmu access ----

const P = { p: true, w: false, u: false, xd: false };
const PWU = { p: true, w: true, u: true, xd: false };
const cpu0 = { wp: true, nxe: true, smep: false, smap: false, ac: false };

test('the SDM reference answers the manual’s cases', () => {
  const user = (w: boolean) => ({ ...PWU, w });
  // User write to a read-only page: present, write, user.
  assert.equal(sdmAccess([PWU, PWU, PWU, user(false)], cpu0, 'write', true).errorCode, 0x7);
  // Supervisor write to a read-only page: faults with WP, not without.
  assert.equal(sdmAccess([PWU, PWU, PWU, user(false)], cpu0, 'write', false).errorCode, 0x3);
  assert.equal(sdmAccess([PWU, PWU, PWU, user(false)], { ...cpu0, wp: false }, 'write', false).errorCode, null);
  // SMAP: supervisor data accesses to user pages, unless AC; never fetches. SMEP: supervisor fetches from user pages.
  assert.equal(sdmAccess([PWU, PWU, PWU, PWU], { ...cpu0, smap: true }, 'read', false).errorCode, 0x1);
  assert.equal(sdmAccess([PWU, PWU, PWU, PWU], { ...cpu0, smap: true, ac: true }, 'read', false).errorCode, null);
  assert.equal(sdmAccess([PWU, PWU, PWU, PWU], { ...cpu0, smap: true, nxe: false }, 'fetch', false).errorCode, null);
  assert.equal(sdmAccess([PWU, PWU, PWU, PWU], { ...cpu0, smep: true }, 'fetch', false).errorCode, 0x11);
  // XD: a fetch fault with NXE, a reserved bit without; the I/D bit only with NXE or SMEP.
  assert.equal(sdmAccess([PWU, PWU, PWU, { ...PWU, xd: true }], cpu0, 'fetch', true).errorCode, 0x15);
  assert.equal(sdmAccess([PWU, PWU, PWU, { ...PWU, xd: true }], { ...cpu0, nxe: false }, 'read', false).errorCode, 0x9);
  assert.equal(sdmAccess([PWU, PWU, { ...P, p: false }, PWU], { ...cpu0, nxe: false }, 'fetch', false).errorCode, 0x0);
  // U and W are ANDed over the levels.
  assert.equal(sdmAccess([PWU, PWU, P, PWU], cpu0, 'read', true).errorCode, 0x5);
});

test('kvmmu access: every combination through the shadow MMU agrees with the SDM (and --json says how they are counted)', () => {
  const r = runAccessMatrix();
  assert.equal(r.combinations, 101_376);
  assert.deepEqual(r.mismatches, []);
  assert.ok(r.implicitAsExplicit > 0, 'implicit accesses with AC=1 under SMAP get an explicit access answer, as under KVM');
  // The same with the guest writing its own entries (emulated writes to its shadowed tables) and invlpg.
  const g = runAccessMatrix({ edit: 'guest' });
  assert.equal(g.combinations, 101_376);
  assert.deepEqual(g.mismatches, []);
  assert.equal(Object.values(r.dimensions).reduce((a, b) => a * b, 1), r.combinations);
  // The whole space (7.5 million combinations, one to two minutes on two shared cores).
  const cli = spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'src', 'cli', 'main.js'), 'access', '--workers', '2', '--json'], { encoding: 'utf8', timeout: 900_000 });
  assert.equal(cli.status, 0, cli.stderr);
  const full = JSON.parse(cli.stdout) as { combinations: number; mismatchCount: number; dimensions: Record<string, number> };
  assert.equal(full.combinations, 7_547_904);
  assert.equal(full.mismatchCount, 0);
  assert.equal(Object.values(full.dimensions).reduce((a, b) => a * b, 1), full.combinations);
});

test('kvmmu access: bad flags are one-line errors (exit 2)', () => {
  const main = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');
  const pku = spawnSync(process.execPath, [main, 'access', '--pku'], { encoding: 'utf8' });
  assert.equal(pku.status, 2);
  assert.match(pku.stderr, /--pku needs --mode tdp or direct/);
  const mode = spawnSync(process.execPath, [main, 'access', '--mode', 'nested'], { encoding: 'utf8' });
  assert.notEqual(mode.status, 0);
  assert.match(mode.stderr, /--mode/);
});
