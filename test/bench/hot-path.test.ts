// The hot-path helpers the benchmark work added compute exactly what they replaced: spteIndex = pteIndex, spteToPfn/spteToChild as before, pagesPerSpte = 512^(level-1).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pteIndex } from '../../src/x86/pte';
import { SPTE_BASE_ADDR_MASK, pagesPerSpte, spteIndex, spteToChild, spteToPfn } from '../../src/x86/spte';
import { makeRng } from '../../src/runtime/rng';

test('spteIndex equals pteIndex at every level for addresses across the 48-bit space', () => {
  const rng = makeRng(4);
  const addrs = [0, 4095, 4096, 2 ** 21 - 1, 2 ** 21, 2 ** 30, 2 ** 39, 2 ** 39 + 5 * 4096, 2 ** 48 - 1];
  for (let i = 0; i < 20000; i++) addrs.push(Math.floor(rng() * 2 ** 24) * 2 ** 24 + Math.floor(rng() * 2 ** 24));
  for (const a of addrs) for (let level = 1; level <= 4; level++) assert.equal(spteIndex(a, level), pteIndex(a, level), `0x${a.toString(16)} level ${level}`);
});

test('spteToPfn and spteToChild read bits 12-51 whatever the other bits hold', () => {
  const rng = makeRng(9);
  for (let i = 0; i < 5000; i++) {
    const spte = (BigInt(Math.floor(rng() * 2 ** 32)) << 32n) | BigInt(Math.floor(rng() * 2 ** 32));
    const want = Number((spte & SPTE_BASE_ADDR_MASK) >> 12n);
    assert.equal(spteToPfn(spte), want);
    assert.equal(spteToChild(spte), want);
  }
  assert.equal(spteToPfn(0xffff_ffff_ffff_ffffn), 2 ** 40 - 1);
});

test('pagesPerSpte is 512^(level-1)', () => {
  for (let level = 1; level <= 4; level++) assert.equal(pagesPerSpte(level), 2 ** (9 * (level - 1)));
});
