// The benchmark's guest: each vCPU writes the first 8 bytes of every page of its own region, one pass per command, as dirty_log_perf_test's guest does.

import type { Vcpu } from '../vcpu/vcpu';

/** Where one vCPU's region is, as the guest addresses it. */
export interface GuestRegion {
  /** Guest address of the region's first page: a gpa in direct mode, a gva (mapped by guest page tables) in shadow mode. */
  readonly base: number;
  readonly pages: number;
}

/** The 64-bit value the selftest's guest writes (perf_test_util's guest code). */
export const GUEST_PATTERN = 0x0123456789abcdefn;

/**
 * One pass: enter guest mode, write the first 8 bytes of every page in order,
 * leave guest mode (the selftest's guest reports each pass with a ucall, a VM
 * exit to userspace). Every write that finds its SPTE write-protected exits to
 * KVM's page-fault handler and is retried.
 */
export function dirtyPass(vcpu: Vcpu, r: GuestRegion): void {
  vcpu.enterGuest();
  try {
    for (let i = 0; i < r.pages; i++) vcpu.write64(r.base + i * 4096, GUEST_PATTERN);
  } finally {
    vcpu.exitGuest();
  }
}
