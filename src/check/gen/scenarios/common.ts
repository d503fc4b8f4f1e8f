// Shared sizes for the built-in scenarios: machines small enough that every execution restores its memory quickly.

import type { VmOptions } from '../../../kvm/config';

/** Data pages in a scenario VM. */
export const DATA_PAGES = 16;
/** Guest page-table pages (shadow mode). */
export const TABLE_PAGES = 8;

export function tinyVm(vcpus: number, o: VmOptions = {}): VmOptions {
  const pages = DATA_PAGES + TABLE_PAGES;
  return { vcpus, memBytes: pages * 4096, hostFrames: pages + 8, spPages: 24, tlbEntries: 4, ...o };
}
