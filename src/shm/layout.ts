// Shared regions: a layout descriptor (plain data a worker can receive) and the SharedArrayBuffers it describes.
//
// A machine has two SharedArrayBuffers:
//   meta — every word of bookkeeping (SPTEs, shadow-page headers, rmaps, memslots,
//          bitmaps, refcounts, host mappings, TLBs, locks, counters), viewed as
//          Int32Array, BigUint64Array and Float64Array over the same bytes;
//   data — the bytes of host frames and swap slots (4 KiB each), viewed as
//          Uint8Array and BigUint64Array.
// Each layer asks the builder for named regions; the builder hands back byte
// offsets aligned as asked. The finished `Layout` is JSON-clean, so it can be
// posted to a worker together with the two buffers.

import { KvmmuError } from './errors';

export interface Region {
  /** Byte offset into the buffer the region lives in. */
  readonly off: number;
  /** Length in bytes. */
  readonly bytes: number;
}

export interface Layout {
  readonly metaBytes: number;
  readonly dataBytes: number;
  readonly regions: Readonly<Record<string, Region>>;
}

/** The largest SharedArrayBuffer a typed array can view in Node 20 (measured: 4 GiB works, 4.5 GiB does not). */
export const MAX_BUFFER_BYTES = 4 * 1024 * 1024 * 1024;

/** Bytes in an x86 cache line. */
export const CACHE_LINE = 64;

export class LayoutBuilder {
  private metaTop = 0;
  private dataTop = 0;
  private readonly regions: Record<string, Region> = {};

  /** Reserve `bytes` of the meta buffer, aligned to `align` bytes (default 8: a 64-bit word). */
  meta(name: string, bytes: number, align = 8): Region {
    const off = alignUp(this.metaTop, align);
    this.metaTop = off + bytes;
    return this.add(name, off, bytes);
  }

  /**
   * Reserve `bytes` of the meta buffer on cache lines of their own (aligned to
   * CACHE_LINE and padded to a multiple of it), for a word that threads write
   * often — a lock, one vCPU's state — so that writes to it do not take the
   * line away from readers of unrelated data, and the reverse. The kernel keeps
   * its locks and per-vCPU structures apart the same way.
   */
  metaLines(name: string, bytes: number): Region {
    const r = this.meta(name, bytes, CACHE_LINE);
    this.metaTop = alignUp(this.metaTop, CACHE_LINE);
    return r;
  }

  /** Reserve `bytes` of the data buffer, 4 KiB aligned. */
  data(name: string, bytes: number): Region {
    const off = alignUp(this.dataTop, 4096);
    this.dataTop = off + bytes;
    return this.add(name, off, bytes);
  }

  finish(): Layout {
    const metaBytes = alignUp(Math.max(this.metaTop, 8), 4096);
    const dataBytes = alignUp(Math.max(this.dataTop, 8), 4096);
    if (metaBytes > MAX_BUFFER_BYTES || dataBytes > MAX_BUFFER_BYTES) {
      throw new KvmmuError(
        `the machine needs ${fmtBytes(Math.max(metaBytes, dataBytes))} in one shared buffer; ` +
          `Node 20 allows at most ${fmtBytes(MAX_BUFFER_BYTES)}: use less guest memory or fewer swap slots`,
      );
    }
    return { metaBytes, dataBytes, regions: { ...this.regions } };
  }

  private add(name: string, off: number, bytes: number): Region {
    if (this.regions[name] !== undefined) throw new Error(`layout: region ${name} reserved twice`);
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new Error(`layout: region ${name} has bad size ${bytes}`);
    const r = { off, bytes };
    this.regions[name] = r;
    return r;
  }
}

export function region(layout: Layout, name: string): Region {
  const r = layout.regions[name];
  if (r === undefined) throw new Error(`layout: no region named ${name}`);
  return r;
}

/** The buffers of one machine; what a worker receives besides the layout. */
export interface Shm {
  readonly layout: Layout;
  readonly meta: SharedArrayBuffer;
  readonly data: SharedArrayBuffer;
}

export function createShm(layout: Layout): Shm {
  return {
    layout,
    meta: new SharedArrayBuffer(layout.metaBytes),
    data: new SharedArrayBuffer(layout.dataBytes),
  };
}

export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

export function fmtBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[u]}`;
}
