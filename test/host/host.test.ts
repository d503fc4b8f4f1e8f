// Host layer without KVM: the page table, swap and write-back, notifier calls, LIFO frame reuse, pins, GUP-fast, KSM and copy-on-write, zero-fill, readPage, running out of frames.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Mem, OP } from '../../src/shm/access';
import { KvmmuError } from '../../src/shm/errors';
import { LayoutBuilder, createShm, region } from '../../src/shm/layout';
import {
  FRAME_DIRTY,
  FRAME_FREE,
  FRAME_KSM,
  HVA_BASE,
  Host,
  MAP_PRESENT,
  MAP_WRITABLE,
  reserveHost,
  type HostParams,
  type MmuNotifier,
} from '../../src/host/host';

/** A notifier that records its calls, with whether the page was mapped and the mm lock held at the time. */
class RecordingNotifier implements MmuNotifier {
  readonly calls: string[] = [];
  young = false;

  constructor(private readonly host: Host) {}

  invalidateRangeStart(start: number, end: number): void {
    this.calls.push(`start ${start}-${end} ${this.state(start)}`);
  }

  invalidateRangeEnd(start: number, end: number): void {
    this.calls.push(`end ${start}-${end} ${this.state(start)}`);
  }

  clearFlushYoung(start: number, end: number): boolean {
    this.calls.push(`young ${start}-${end} ${this.state(start)}`);
    return this.young;
  }

  /** "mapped rw", "mapped ro" or "unmapped", then "locked" or "UNLOCKED" for the mm lock. */
  private state(hvpn: number): string {
    const w = this.host.peekMapping(hvpn);
    const mapped = (w & MAP_PRESENT) === 0 ? 'unmapped' : (w & MAP_WRITABLE) !== 0 ? 'mapped rw' : 'mapped ro';
    const locked = this.host.mem.isLocked(this.host.lockWord) ? 'locked' : 'UNLOCKED';
    return `${mapped} ${locked}`;
  }
}

function makeHost(p: Partial<HostParams> = {}): { host: Host; mem: Mem; notifier: RecordingNotifier } {
  const params: HostParams = { nPages: 8, nFrames: 8, nSwap: 8, ...p };
  const b = new LayoutBuilder();
  reserveHost(b, params);
  const shm = createShm(b.finish());
  const mem = new Mem(shm);
  const host = new Host(mem, shm.layout, params);
  host.init();
  const notifier = new RecordingNotifier(host);
  host.notifier = notifier;
  return { host, mem, notifier };
}

/** The page as the VMM sees it, without faulting it in. */
function pageBytes(host: Host, hvpn: number): Uint8Array {
  const out = new Uint8Array(4096);
  host.readPage(hvpn, out, 0);
  return out;
}

/** Overwrite a frame's bytes directly, as a stale user of a freed frame would. */
function scribble(host: Host, pfn: number, byte: number): void {
  host.mem.d8.fill(byte, host.frameByte(pfn), host.frameByte(pfn) + 4096);
}

/** Give page `hvpn` a swap copy and a clean frame: write, swap out, swap back in. */
function cleanWithSwapCopy(host: Host, hvpn: number, v: bigint): number {
  host.writeUser64(hvpn, 0, v);
  assert.ok(host.swapOut(hvpn));
  const pfn = host.swapIn(hvpn);
  assert.equal(host.peekFrameFlags(pfn) & FRAME_DIRTY, 0, 'a swapped-in frame starts clean');
  assert.ok(host.peekSwapSlot(hvpn) >= 0, 'and keeps its swap copy');
  return pfn;
}

const V1 = 0x8000_0000_1111_2222n;
const V2 = 0x0123_4567_89ab_cdefn;

// ---- the page table ----

test('the PTE of every page is found by walking PGD, PUD and PMD, across a 1 GiB boundary too', () => {
  const nPages = 512 * 512 + 600; // two PMD pages: the second GiB's PMD has two PTE pages
  const { host } = makeHost({ nPages, nFrames: 8, nSwap: 0 });
  const layout = host.mem.shm.layout;
  const map = region(layout, 'host.map').off / 4;
  for (const h of [0, 1, 511, 512, 262143, 262144, 262655, 262656, nPages - 1]) assert.equal(host.ptep(h), map + h, `hvpn ${h}`);
  // The upper levels: PGD entry (HVA_BASE >> 39) & 511 present, PUD entries 0 and 1, 512 + 2 PMD entries.
  const r = region(layout, 'host.pgdir');
  const dir = host.mem.i32.subarray(r.off / 4, (r.off + r.bytes) / 4);
  const present = (t: number): number[] => [...dir.subarray(t * 512, (t + 1) * 512)].flatMap((e, i) => ((e & 1) !== 0 ? [i] : []));
  assert.deepEqual(present(0), [Math.floor(HVA_BASE / 2 ** 39) % 512]);
  assert.deepEqual(present(1), [0, 1]);
  assert.equal(present(2).length, 512);
  assert.deepEqual(present(3), [0, 1]);
  assert.throws(() => host.ptep(512 * 1024), /outside the VMM's mapping/);
});

test('pages on either side of a 1 GiB boundary fault in to their own frames', () => {
  const { host } = makeHost({ nPages: 512 * 512 + 8, nFrames: 8, nSwap: 0 });
  const a = host.swapIn(262143);
  const b = host.swapIn(262144);
  assert.notEqual(a, b);
  assert.equal(host.peekPfn(262143), a);
  assert.equal(host.peekPfn(262144), b);
  assert.equal(host.peekPfn(262142), -1);
  assert.equal(host.peekPfn(262145), -1);
});

// ---- swap ----

test('a page swapped out and back in keeps the bytes written through the mapping', () => {
  const { host } = makeHost();
  host.writeUser64(2, 0, V1);
  host.writeUser64(2, 8, V2);
  host.writeUser64(2, 4088, 0xffff_ffff_ffff_ffffn);
  const before = pageBytes(host, 2);
  const pfn = host.peekPfn(2);
  assert.equal(host.swapOut(2), true);
  assert.equal(host.peekPfn(2), -1, 'the page is no longer mapped');
  assert.equal(host.peekFrameFlags(pfn) & FRAME_FREE, FRAME_FREE, 'its frame was freed');
  scribble(host, pfn, 0x5a); // the freed frame's bytes must not be what comes back
  host.swapIn(2);
  assert.equal(host.stat('swapIns'), 1);
  assert.equal(host.readUser64(2, 0), V1);
  assert.equal(host.readUser64(2, 8), V2);
  assert.equal(host.readUser64(2, 4088), 0xffff_ffff_ffff_ffffn);
  assert.deepEqual(pageBytes(host, 2), before);
});

test('swap-out writes back a page with no swap copy, and a dirty page that has one', () => {
  const { host } = makeHost();
  host.writeUser64(1, 16, V1);
  assert.ok(host.swapOut(1));
  assert.equal(host.stat('writebacks'), 1, 'first swap-out: no copy yet');
  host.writeUser64(1, 16, V2); // faults the page in and dirties the new frame
  assert.notEqual(host.peekFrameFlags(host.peekPfn(1)) & FRAME_DIRTY, 0);
  assert.ok(host.swapOut(1));
  assert.equal(host.stat('writebacks'), 2, 'dirty page written back');
  assert.equal(host.readUser64(1, 16), V2);
});

test('swap-out skips the write-back of a clean page that still has its swap copy', () => {
  const { host } = makeHost();
  cleanWithSwapCopy(host, 3, V1);
  assert.equal(host.stat('writebacks'), 1);
  assert.ok(host.swapOut(3));
  assert.equal(host.stat('swapOuts'), 2);
  assert.equal(host.stat('writebacks'), 1, 'no second write-back');
  assert.equal(host.readUser64(3, 0), V1, 'the swap copy still holds the page');
});

test('a direct frame write not reported as dirty is lost at swap-out (the mechanism a lost D bit exploits)', () => {
  const { host, mem } = makeHost();
  const pfn = cleanWithSwapCopy(host, 4, V1);
  // A guest write through an SPTE: the bytes change, only the (lost) D bit would have said so.
  mem.storeData64(host.frameByte(pfn) / 8, V2);
  assert.ok(host.swapOut(4));
  assert.equal(host.stat('writebacks'), 1, 'the clean frame was not written back');
  assert.equal(host.readUser64(4, 0), V1, 'the write made behind the host\'s back is gone');
});

test('a direct frame write reported with setPfnDirty survives swap-out', () => {
  const { host, mem } = makeHost();
  const pfn = cleanWithSwapCopy(host, 4, V1);
  mem.storeData64(host.frameByte(pfn) / 8, V2);
  host.setPfnDirty(pfn); // what KVM does when it drops an SPTE whose D bit is set
  assert.ok(host.swapOut(4));
  assert.equal(host.stat('writebacks'), 2);
  assert.equal(host.readUser64(4, 0), V2);
});

test('swap-out calls invalidateRangeStart while the page is still mapped and invalidateRangeEnd after the unmap, under the mm lock', () => {
  const { host, notifier } = makeHost();
  host.writeUser64(5, 0, V1);
  assert.deepEqual(notifier.calls, [], 'faulting a page in needs no invalidation');
  assert.ok(host.swapOut(5));
  assert.deepEqual(notifier.calls, ['start 5-6 mapped rw locked', 'end 5-6 unmapped locked']);
  assert.equal(host.stat('notifierCalls'), 1);
});

test('swap-out refuses a page that is not present, and one that needs a slot when swap is full, without invalidating', () => {
  const { host, notifier } = makeHost({ nSwap: 1 });
  assert.equal(host.swapOut(0), false, 'never touched');
  host.writeUser64(0, 0, V1);
  host.writeUser64(1, 0, V2);
  assert.equal(host.swapOut(0), true);
  notifier.calls.length = 0;
  assert.equal(host.swapOut(1), false, 'swap is full');
  assert.deepEqual(notifier.calls, []);
  assert.notEqual(host.peekPfn(1), -1, 'page 1 stays mapped');
  assert.equal(host.readUser64(1, 0), V2);
  assert.equal(host.mem.isLocked(host.lockWord), false, 'the mm lock was released on the refusal');
});

// ---- frames: reuse, pins ----

test('a freed frame is the next one allocated (LIFO), and its reuse for another page is counted', () => {
  const { host } = makeHost();
  for (let h = 0; h < 3; h++) host.swapIn(h);
  assert.deepEqual([0, 1, 2].map((h) => host.peekPfn(h)), [0, 1, 2], 'fresh frames come lowest first');
  const pfnA = host.peekPfn(1);
  assert.ok(host.swapOut(1));
  assert.equal(host.stat('frameReuses'), 0);
  assert.equal(host.swapIn(6), pfnA, 'page B got page A\'s old frame, not the never-used frame 3');
  assert.equal(host.stat('frameReuses'), 1);
  assert.equal(host.swapIn(1), 3, 'page A comes back in the next free frame');
  assert.equal(host.stat('frameReuses'), 1, 'a never-used frame is not a reuse');
  assert.ok(host.swapOut(6));
  assert.equal(host.swapIn(6), pfnA, 'page B gets the same frame back');
  assert.equal(host.stat('frameReuses'), 1, 'the same page taking its own frame again is not a reuse');
  assert.equal(host.stat('frameAllocs'), 6);
});

for (const how of ['getUserPage', 'gupFast'] as const) {
  test(`a frame pinned with ${how} is not freed by swap-out and is freed by the last putPage`, () => {
    const { host } = makeHost();
    host.writeUser64(2, 0, V1);
    const pfn = how === 'gupFast' ? host.gupFast(2, true) : host.getUserPage(2, true);
    assert.equal(pfn, host.peekPfn(2));
    assert.equal(host.peekRefcount(pfn), 2, 'the mapping\'s reference and the pin');
    const free = host.freeFrames();
    assert.ok(host.swapOut(2));
    assert.equal(host.peekPfn(2), -1);
    assert.equal(host.peekRefcount(pfn), 1);
    assert.equal(host.peekFrameFlags(pfn) & FRAME_FREE, 0, 'the pinned frame is not free');
    assert.equal(host.freeFrames(), free);
    assert.equal(host.stat('frameFrees'), 0);
    host.swapIn(7);
    assert.notEqual(host.peekPfn(7), pfn, 'the pinned frame is not handed to another page');
    host.putPage(pfn);
    assert.equal(host.peekRefcount(pfn), 0);
    assert.equal(host.peekFrameFlags(pfn) & FRAME_FREE, FRAME_FREE);
    assert.equal(host.stat('frameFrees'), 1);
    assert.equal(host.swapIn(3), pfn, 'the frame freed last is allocated next');
  });
}

test('putPage below zero is an internal error naming the frame', () => {
  const { host } = makeHost();
  const pfn = host.swapIn(0);
  assert.ok(host.swapOut(0));
  assert.throws(() => host.putPage(pfn), new RegExp(`refcount of pfn ${pfn} was 0`));
});

// ---- GUP-fast ----

test('gupFast fails without taking a reference or faulting for a page that is not present', () => {
  const { host } = makeHost();
  assert.equal(host.gupFast(0, false), -1, 'never touched');
  assert.equal(host.peekPfn(0), -1, 'and not faulted in');
  host.writeUser64(1, 0, V1);
  const pfn = host.peekPfn(1);
  assert.ok(host.swapOut(1));
  assert.equal(host.gupFast(1, false), -1, 'swapped out');
  assert.equal(host.peekRefcount(pfn), 0);
  assert.equal(host.stat('frameAllocs'), 1);
});

test('gupFast fails for a write to a read-only mapping but pins it for a read, reporting it read-only', () => {
  const { host } = makeHost();
  host.writeUser64(0, 0, V1);
  host.writeUser64(1, 0, V2);
  assert.equal(host.ksmMerge(0, 1), false, 'different pages: not merged, but both write-protected');
  const pfn = host.peekPfn(0);
  assert.equal(host.peekMapping(0) & MAP_WRITABLE, 0);
  assert.equal(host.gupFast(0, true), -1);
  assert.equal(host.peekRefcount(pfn), 1, 'the failed write pin took no reference');
  host.lastWritable = true;
  assert.equal(host.gupFast(0, false), pfn);
  assert.equal(host.lastWritable, false);
  assert.equal(host.peekRefcount(pfn), 2);
  host.putPage(pfn);
});

test('a write fault on a read-only page that is not shared makes the same frame writable without a copy', () => {
  const { host, notifier } = makeHost();
  host.writeUser64(0, 0, V1);
  host.writeUser64(1, 0, V2);
  host.ksmMerge(0, 1);
  const pfn = host.peekPfn(0);
  notifier.calls.length = 0;
  assert.equal(host.getUserPage(0, true), pfn);
  assert.equal(host.lastWritable, true);
  assert.notEqual(host.peekMapping(0) & MAP_WRITABLE, 0);
  assert.equal(host.stat('cowBreaks'), 0);
  assert.deepEqual(notifier.calls, [], 'raising a permission needs no invalidation');
  host.putPage(pfn);
});

// ---- KSM ----

/** Pages 0 and 1 equal (V1 at 0, V2 at 4088), page 2 differs from them in one word. */
function ksmPages(host: Host): void {
  for (const h of [0, 1, 2]) {
    host.writeUser64(h, 0, V1);
    host.writeUser64(h, 4088, V2);
  }
  host.writeUser64(2, 2048, 1n);
}

test('KSM merges two identical pages into one read-only shared frame and frees the other', () => {
  const { host, notifier } = makeHost();
  ksmPages(host);
  const pa = host.peekPfn(0);
  const pb = host.peekPfn(1);
  const free = host.freeFrames();
  assert.equal(host.ksmMerge(0, 1), true);
  assert.equal(host.peekPfn(0), pa);
  assert.equal(host.peekPfn(1), pa, 'b now maps a\'s frame');
  assert.equal(host.peekRefcount(pa), 2);
  assert.equal(host.peekFrameFlags(pa) & FRAME_KSM, FRAME_KSM);
  assert.equal(host.peekMapping(0) & MAP_WRITABLE, 0);
  assert.equal(host.peekMapping(1) & MAP_WRITABLE, 0);
  assert.equal(host.peekFrameFlags(pb) & FRAME_FREE, FRAME_FREE, 'b\'s old frame was freed');
  assert.equal(host.freeFrames(), free + 1);
  assert.equal(host.stat('ksmMerges'), 1);
  assert.deepEqual(notifier.calls, [
    'start 0-1 mapped rw locked',
    'end 0-1 mapped ro locked',
    'start 1-2 mapped rw locked',
    'end 1-2 mapped ro locked',
    'start 1-2 mapped ro locked',
    'end 1-2 mapped ro locked',
  ]);
  assert.equal(host.readUser64(1, 4088), V2);
});

test('KSM refuses pages whose bytes differ, the same page twice, and a page that is not present', () => {
  const { host } = makeHost();
  ksmPages(host);
  const p0 = host.peekPfn(0);
  const p2 = host.peekPfn(2);
  assert.equal(host.ksmMerge(0, 2), false);
  assert.equal(host.peekPfn(2), p2);
  assert.equal(host.peekRefcount(p0), 1);
  assert.equal(host.peekRefcount(p2), 1);
  assert.equal(host.peekFrameFlags(p0) & FRAME_KSM, 0);
  assert.equal(host.ksmMerge(0, 0), false);
  assert.equal(host.ksmMerge(0, 5), false, 'page 5 was never touched');
  assert.equal(host.ksmMerge(5, 0), false);
  assert.equal(host.stat('ksmMerges'), 0);
  assert.equal(host.mem.isLocked(host.lockWord), false);
});

test('a KSM-shared page is not swapped out', () => {
  const { host } = makeHost();
  ksmPages(host);
  assert.ok(host.ksmMerge(0, 1));
  assert.equal(host.swapOut(0), false);
  assert.equal(host.swapOut(1), false);
  assert.notEqual(host.peekPfn(1), -1);
});

for (const how of ['writeUser64', 'getUserPage'] as const) {
  test(`a write with ${how} to a KSM-shared page breaks copy-on-write, keeping its bytes and leaving the other page alone`, () => {
    const { host, notifier } = makeHost();
    ksmPages(host);
    assert.ok(host.ksmMerge(0, 1));
    const shared = host.peekPfn(0);
    const original = pageBytes(host, 0);
    notifier.calls.length = 0;
    let pfn: number;
    if (how === 'writeUser64') {
      host.writeUser64(1, 8, V2);
      pfn = host.peekPfn(1);
    } else {
      pfn = host.getUserPage(1, true);
      assert.equal(host.lastWritable, true);
      assert.equal(host.peekRefcount(pfn), 2, 'mapping plus the caller\'s pin');
      host.putPage(pfn);
    }
    assert.notEqual(pfn, shared, 'page 1 got a private frame');
    assert.equal(host.peekPfn(1), pfn);
    assert.notEqual(host.peekMapping(1) & MAP_WRITABLE, 0);
    assert.equal(host.peekRefcount(shared), 1, 'page 1 dropped its reference to the shared frame');
    assert.equal(host.peekRefcount(pfn), 1);
    assert.equal(host.stat('cowBreaks'), 1);
    assert.deepEqual(notifier.calls, ['start 1-2 mapped ro locked', 'end 1-2 mapped rw locked']);
    const expected = original.slice();
    if (how === 'writeUser64') new DataView(expected.buffer).setBigUint64(8, V2, true);
    assert.deepEqual(pageBytes(host, 1), expected, 'the copy holds the shared bytes (plus the write)');
    assert.deepEqual(pageBytes(host, 0), original, 'page 0 is unaffected');
    assert.equal(host.peekPfn(0), shared);
    assert.equal(host.peekMapping(0) & MAP_WRITABLE, 0, 'page 0 stays read-only');
  });
}

// ---- faulting in, readPage, limits ----

test('getUserPage on a never-touched page zero-fills its frame, even a reused one holding old bytes', () => {
  const { host } = makeHost();
  const old = host.swapIn(0);
  scribble(host, old, 0xcc);
  host.setPfnDirty(old);
  assert.ok(host.swapOut(0));
  const pfn = host.getUserPage(6, false);
  assert.equal(pfn, old, 'the reused frame');
  assert.equal(host.lastWritable, true, 'a fresh anonymous page is mapped writable');
  assert.equal(host.stat('zeroFills'), 2);
  assert.ok(pageBytes(host, 6).every((x) => x === 0), 'all 4096 bytes are zero');
  assert.equal(host.peekFrameFlags(pfn), 0, 'a fresh frame is neither dirty nor free');
  host.putPage(pfn);
});

test('readPage returns the frame, the swap copy or zeros, without faulting the page in', () => {
  const { host } = makeHost();
  host.writeUser64(3, 0, V1);
  host.writeUser64(3, 4088, V2);
  const buf = new Uint8Array(3 * 4096).fill(0xee);
  host.readPage(3, buf, 4096);
  const view = new DataView(buf.buffer);
  assert.equal(view.getBigUint64(4096, true), V1, 'present: frame bytes');
  assert.equal(view.getBigUint64(4096 + 4088, true), V2);
  assert.ok(buf.subarray(0, 4096).every((x) => x === 0xee), 'bytes before dstOff untouched');
  assert.ok(buf.subarray(8192).every((x) => x === 0xee), 'bytes after the page untouched');

  const pfn = host.peekPfn(3);
  assert.ok(host.swapOut(3));
  scribble(host, pfn, 0x11);
  const allocs = host.stat('frameAllocs');
  buf.fill(0xee);
  host.readPage(3, buf, 0);
  assert.equal(view.getBigUint64(0, true), V1, 'swapped out: swap bytes');
  assert.equal(view.getBigUint64(4088, true), V2);
  assert.equal(host.peekPfn(3), -1, 'still not present');
  assert.equal(host.stat('swapIns'), 0);
  assert.equal(host.stat('frameAllocs'), allocs);

  buf.fill(0xee);
  host.readPage(7, buf, 4096);
  assert.ok(buf.subarray(4096, 8192).every((x) => x === 0), 'never touched: zeros');
  assert.ok(buf.subarray(8192).every((x) => x === 0xee));
  assert.equal(host.peekPfn(7), -1);
  assert.equal(host.stat('zeroFills'), 1, 'only page 3\'s first fault zero-filled');
  assert.equal(host.mem.isLocked(host.lockWord), false);
});

test('cmpxchgUser64 returns the old word and dirties the frame only when it swaps', () => {
  const { host } = makeHost();
  const pfn = host.swapIn(0);
  assert.equal(host.cmpxchgUser64(0, 8, 5n, V1), 0n);
  assert.equal(host.peekFrameFlags(pfn) & FRAME_DIRTY, 0, 'a failed cmpxchg writes nothing');
  assert.equal(host.readUser64(0, 8), 0n);
  assert.equal(host.cmpxchgUser64(0, 8, 0n, V1), 0n);
  assert.equal(host.readUser64(0, 8), V1);
  assert.equal(host.peekFrameFlags(pfn) & FRAME_DIRTY, FRAME_DIRTY);
  assert.equal(host.peekRefcount(pfn), 1, 'no pin left behind');
});

test('clearYoung asks the notifier about exactly the page, under the mm lock, and is false with no notifier', () => {
  const { host, notifier } = makeHost();
  host.swapIn(2);
  assert.equal(host.clearYoung(2), false);
  notifier.young = true;
  assert.equal(host.clearYoung(2), true);
  assert.deepEqual(notifier.calls, ['young 2-3 mapped rw locked', 'young 2-3 mapped rw locked']);
  host.notifier = null;
  assert.equal(host.clearYoung(2), false);
  assert.equal(host.mem.isLocked(host.lockWord), false);
});

test('running out of frames throws KvmmuError and leaves the host usable', () => {
  const { host } = makeHost({ nPages: 4, nFrames: 2 });
  host.writeUser64(0, 0, V1);
  host.writeUser64(1, 0, V2);
  assert.throws(
    () => host.writeUser64(2, 0, 1n),
    (e: unknown) => e instanceof KvmmuError && /out of physical frames/.test(e.message),
  );
  assert.equal(host.peekPfn(2), -1);
  assert.equal(host.mem.isLocked(host.lockWord), false, 'the mm lock was released');
  assert.ok(host.swapOut(0));
  host.writeUser64(2, 0, 3n);
  assert.equal(host.readUser64(2, 0), 3n);
  assert.equal(host.readUser64(1, 0), V2);
});

test('a VMM write holds the mm lock from its translation to its dirty mark, so no swap-out or KSM merge comes between', () => {
  for (const kind of ['writeUser64', 'cmpxchgUser64'] as const) {
    const { host, mem } = makeHost();
    cleanWithSwapCopy(host, 5, V1);
    const lockedAt: string[] = [];
    mem.hook = {
      before(op) {
        if (op === OP.storeData64 || op === OP.cmpxchgData64 || op === OP.or32) lockedAt.push(`${op}:${mem.isLocked(host.lockWord)}`);
      },
      note() {},
    };
    if (kind === 'writeUser64') host.writeUser64(5, 0, V2);
    else assert.equal(host.cmpxchgUser64(5, 0, V1, V2), V1);
    mem.hook = null;
    assert.equal(lockedAt.length, 2, `${kind}: the store and the dirty mark`);
    assert.ok(lockedAt.every((x) => x.endsWith(':true')), `${kind}: ${lockedAt.join(', ')}`);
    assert.equal(mem.isLocked(host.lockWord), false);
    assert.ok(host.swapOut(5), 'swap-out after it');
    assert.equal(host.readUser64(5, 0), V2, `${kind}: the write was written back`);
  }
});

test('KSM leaves alone a page pinned beyond its mapping (a fault in flight holds it), as Linux\'s write_protect_page does', () => {
  const { host } = makeHost();
  host.writeUser64(5, 0, 0n);
  host.writeUser64(6, 0, 0n);
  const pfn = host.getUserPage(5, true); // a get_user_pages pin, as KVM's fault takes
  assert.equal(host.ksmMerge(5, 6), false, 'the pinned page is not merged');
  host.putPage(pfn);
  assert.equal(host.ksmMerge(5, 6), true, 'unpinned: merged');
});
