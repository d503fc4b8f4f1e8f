// Layout builder: alignment, the per-buffer size limit, and region lookup errors.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LayoutBuilder, MAX_BUFFER_BYTES, fmtBytes, region } from '../../src/shm/layout';
import { KvmmuError } from '../../src/shm/errors';

test('regions are aligned as asked and do not overlap', () => {
  const b = new LayoutBuilder();
  const a = b.meta('a', 4, 4);
  const c = b.meta('c', 100, 4096);
  const d = b.data('d', 10);
  const e = b.data('e', 4096);
  assert.equal(a.off, 0);
  assert.equal(c.off % 4096, 0);
  assert.ok(c.off >= a.off + a.bytes);
  assert.equal(d.off, 0);
  assert.equal(e.off, 4096);
  const l = b.finish();
  assert.equal(region(l, 'c').bytes, 100);
  assert.throws(() => region(l, 'nope'), /no region named nope/);
});

test('a machine larger than one shared buffer is a user error that names the limit', () => {
  const b = new LayoutBuilder();
  b.data('huge', MAX_BUFFER_BYTES + 4096);
  assert.throws(() => b.finish(), (e: unknown) => e instanceof KvmmuError && /at most 4 GiB/.test((e as Error).message));
});

test('byte counts print with binary units', () => {
  assert.equal(fmtBytes(64 * 1024 * 1024), '64 MiB');
  assert.equal(fmtBytes(1536), '1.5 KiB');
});
