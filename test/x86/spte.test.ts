// SPTE layout, constructors, the writable-bit invariants, spteHasVolatileBits (2012 rule and the atomic-volatile-clear guard), formatSpte.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  FROZEN_SPTE,
  SPTE_ACCESSED_MASK,
  SPTE_BASE_ADDR_MASK,
  SPTE_DIRTY_MASK,
  SPTE_HOST_WRITABLE,
  SPTE_MMU_PRESENT_MASK,
  SPTE_MMU_WRITABLE,
  SPTE_NX_MASK,
  SPTE_PAGE_SIZE_MASK,
  SPTE_PRESENT_MASK,
  SPTE_USER_MASK,
  SPTE_WRITABLE_MASK,
  checkWritableBits,
  formatSpte,
  isAccessedSpte,
  isDirtySpte,
  isHostWritableSpte,
  isLastSpte,
  isMmuWritableSpte,
  isPresentLow,
  isShadowPresentLow,
  isShadowPresentPte,
  isWritablePte,
  makeNonleafSpte,
  makeSpte,
  spteAccess,
  spteHasVolatileBits,
  spteLowToChild,
  spteToChild,
  spteToPfn,
} from '../../src/x86/spte';
import { ACC_ALL, ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK, clearBits, hasBits, pteFrame, pteFromParts, setBits } from '../../src/x86/pte';

// Bit positions written out from the layout in spte.ts's header (recent non-EPT kernels), not imported.
const bit = (n: number): bigint => 1n << BigInt(n);
const P = bit(0);
const W = bit(1);
const U = bit(2);
const A = bit(5);
const D = bit(6);
const PS = bit(7);
const HW = bit(9);
const MW = bit(10);
const SP = bit(11);
const NX = bit(63);
const PFN_MASK = (bit(52) - 1n) & ~0xfffn;

/** Every bit a leaf SPTE made by makeSpte may carry. */
const KNOWN = P | W | U | A | D | HW | MW | SP | NX | PFN_MASK;

const MAX_PFN = 2 ** 40 - 1; // address bits 12..51

test('the SPTE masks sit at the bit positions of the documented layout', () => {
  assert.deepEqual(
    [
      SPTE_PRESENT_MASK,
      SPTE_WRITABLE_MASK,
      SPTE_USER_MASK,
      SPTE_ACCESSED_MASK,
      SPTE_DIRTY_MASK,
      SPTE_PAGE_SIZE_MASK,
      SPTE_HOST_WRITABLE,
      SPTE_MMU_WRITABLE,
      SPTE_MMU_PRESENT_MASK,
      SPTE_BASE_ADDR_MASK,
      SPTE_NX_MASK,
    ],
    [P, W, U, A, D, PS, HW, MW, SP, PFN_MASK, NX],
  );
});

const PFNS: readonly number[] = [0, 1, 0x1f, 0x1234, 0xf_ffff, 2 ** 32 + 5, 2 ** 39, MAX_PFN];

test('makeSpte round-trips pfn and rights: W, HOST_WRITABLE and MMU_WRITABLE only when writable and host-writable, D only with a requested write, A only when accessed', () => {
  let cases = 0;
  for (let acc = 0; acc <= ACC_ALL; acc++)
    for (const hostWritable of [false, true])
      for (const accessed of [false, true])
        for (const dirty of [false, true])
          for (const pfn of PFNS) {
            const spte = makeSpte(acc, pfn, hostWritable, accessed, dirty);
            const what = `acc=${acc} pfn=0x${pfn.toString(16)} host=${hostWritable} accessed=${accessed} dirty=${dirty}: ${formatSpte(spte)}`;
            const writable = hostWritable && (acc & ACC_WRITE_MASK) !== 0;
            cases++;
            assert.equal(spte & ~KNOWN, 0n, `no stray bits: ${what}`);
            assert.equal(spteToPfn(spte), pfn, what);
            assert.equal((spte & PFN_MASK) >> 12n, BigInt(pfn), what);
            assert.equal(isShadowPresentPte(spte), true, what);
            assert.equal((spte & P) !== 0n, true, what);
            assert.equal((spte & PS) !== 0n, false, what);
            assert.equal(isWritablePte(spte), writable, what);
            assert.equal(isMmuWritableSpte(spte), writable, what);
            assert.equal(isHostWritableSpte(spte), hostWritable, what);
            assert.equal((spte & U) !== 0n, (acc & ACC_USER_MASK) !== 0, what);
            assert.equal((spte & NX) !== 0n, (acc & ACC_EXEC_MASK) === 0, what);
            assert.equal(isAccessedSpte(spte), accessed, what);
            assert.equal(isDirtySpte(spte), dirty && writable, what);
            assert.equal(spteAccess(spte), writable ? acc : acc & ~ACC_WRITE_MASK, what);
            assert.equal(checkWritableBits(spte), null, what);
            assert.equal(isLastSpte(spte, 1), true, what);
          }
  assert.equal(cases, 8 * 2 * 2 * 2 * PFNS.length);
});

test('checkWritableBits accepts exactly the four allowed (HOST_WRITABLE, MMU_WRITABLE, W) states and names what is wrong in the others', () => {
  const allowed = new Set(['1,1,1', '1,1,0', '1,0,0', '0,0,0']);
  for (const base of [SP | P | A | U | (0x42n << 12n), SP | P | A | D | NX]) {
    for (let n = 0; n < 8; n++) {
      const host = (n & 4) !== 0;
      const mmu = (n & 2) !== 0;
      const w = (n & 1) !== 0;
      const spte = base | (host ? HW : 0n) | (mmu ? MW : 0n) | (w ? W : 0n);
      const key = `${+host},${+mmu},${+w}`;
      const r = checkWritableBits(spte);
      if (allowed.has(key)) {
        assert.equal(r, null, key);
      } else {
        assert.equal(typeof r, 'string', key);
        // The message names a writable bit that is set and the bit it lacks.
        if (w && !host) assert.match(r!, /W set without HOST_WRITABLE/, key);
        else if (w && !mmu) assert.match(r!, /W set without MMU_WRITABLE/, key);
        else assert.match(r!, /MMU_WRITABLE set without HOST_WRITABLE/, key);
      }
    }
  }
});

test('checkWritableBits ignores SPTEs that are not shadow-present, FROZEN_SPTE included', () => {
  assert.equal(checkWritableBits(0n), null);
  assert.equal(checkWritableBits(FROZEN_SPTE), null);
  assert.equal(checkWritableBits(P | W | MW), null, 'no MMU_PRESENT bit: not shadow-present');
});

test('spteToPfn reads pfns up to address bit 51 and ignores NX and the software bits above 51', () => {
  for (const pfn of PFNS) {
    const spte = SP | P | (BigInt(pfn) << 12n);
    assert.equal(spteToPfn(spte), pfn);
    const noisy = spte | NX | (((bit(63) - 1n) >> 52n) << 52n) | 0xfffn;
    assert.equal(spteToPfn(noisy), pfn);
  }
  assert.equal(spteToPfn(bit(51)), 2 ** 39);
  assert.equal(spteToPfn(PFN_MASK), MAX_PFN);
});

test('makeNonleafSpte points at its child and carries MMU_PRESENT, P, W, U and A only', () => {
  for (const child of [0, 1, 0x3f, 0xabcde, MAX_PFN]) {
    const spte = makeNonleafSpte(child);
    assert.equal(spteToChild(spte), child);
    assert.equal(spte & ~PFN_MASK, SP | P | W | U | A);
    assert.equal(isShadowPresentPte(spte), true);
    assert.equal(isLastSpte(spte, 2), false);
    assert.equal(isLastSpte(spte, 4), false);
  }
});

test('isLastSpte: level 1 is always a leaf, a higher level only with PS', () => {
  assert.equal(isLastSpte(SP | P, 1), true);
  assert.equal(isLastSpte(SP | P | PS, 2), true);
  assert.equal(isLastSpte(SP | P | PS, 3), true);
  assert.equal(isLastSpte(SP | P, 2), false);
});

test('FROZEN_SPTE and values without the MMU_PRESENT bit are not shadow-present; MMU_PRESENT alone is', () => {
  assert.equal(FROZEN_SPTE, 0x5a0n, 'KVM\'s value');
  assert.equal(isShadowPresentPte(FROZEN_SPTE), false);
  assert.equal(isShadowPresentPte(0n), false);
  assert.equal(isShadowPresentPte(P | W | U | A | D | HW | MW | PFN_MASK | NX), false);
  assert.equal(isShadowPresentPte(SP), true);
  assert.equal(isShadowPresentPte(makeSpte(0, 0, false, false, false)), true);
});

test('spteHasVolatileBits: an MMU-writable read-only accessed SPTE is volatile only with the atomic-volatile-clear guard', () => {
  const spte = makeSpte(ACC_ALL, 0x10, true, true, false) & ~W; // write-tracked for dirty logging
  assert.equal(checkWritableBits(spte), null);
  assert.equal(spteHasVolatileBits(spte, true), true);
  assert.equal(spteHasVolatileBits(spte, false), false, 'the 2012 rule misses the fast path setting W');
});

test('spteHasVolatileBits: an SPTE with A clear is always volatile (the hardware walk may set it)', () => {
  for (const s of [
    makeSpte(ACC_ALL, 0x10, true, false, false),
    makeSpte(ACC_USER_MASK, 0x10, false, false, false),
    makeSpte(ACC_ALL, 0x10, true, false, true),
  ])
    for (const guard of [false, true]) assert.equal(spteHasVolatileBits(s, guard), true, `${formatSpte(s)} guard=${guard}`);
});

test('spteHasVolatileBits: a writable accessed SPTE with D clear is volatile, with D set it is not without the guard', () => {
  const clean = makeSpte(ACC_ALL, 0x10, true, true, false);
  const dirty = makeSpte(ACC_ALL, 0x10, true, true, true);
  for (const guard of [false, true]) assert.equal(spteHasVolatileBits(clean, guard), true);
  assert.equal(spteHasVolatileBits(dirty, false), false);
  assert.equal(spteHasVolatileBits(dirty, true), true, 'still MMU-writable');
  // Read-only, not MMU-writable, accessed: nothing can change it in either mode.
  const ro = makeSpte(ACC_ALL, 0x10, false, true, false);
  for (const guard of [false, true]) assert.equal(spteHasVolatileBits(ro, guard), false);
});

test('spteHasVolatileBits: a non-present SPTE is never volatile, FROZEN_SPTE (whose bit 10 is set) included', () => {
  for (const guard of [false, true]) {
    assert.equal(spteHasVolatileBits(0n, guard), false);
    assert.equal(spteHasVolatileBits(FROZEN_SPTE, guard), false);
    assert.equal(spteHasVolatileBits(P | W | MW | HW, guard), false);
  }
});

test('spteHasVolatileBits over every combination of W, MMU_WRITABLE, HOST_WRITABLE, A, D and presence matches the rule table', () => {
  for (let n = 0; n < 64; n++) {
    const present = (n & 1) !== 0;
    const w = (n & 2) !== 0;
    const mmu = (n & 4) !== 0;
    const host = (n & 8) !== 0;
    const a = (n & 16) !== 0;
    const d = (n & 32) !== 0;
    const spte =
      (present ? SP | P : 0n) | (w ? W : 0n) | (mmu ? MW : 0n) | (host ? HW : 0n) | (a ? A : 0n) | (d ? D : 0n) | (7n << 12n);
    for (const guard of [false, true]) {
      // Rules: non-present never; the fast path may set W (guard); the CPU may set A, or D when W.
      const expected = present && ((guard && mmu) || !a || (w && !d));
      assert.equal(spteHasVolatileBits(spte, guard), expected, `${formatSpte(spte)} guard=${guard}`);
    }
  }
});

test('formatSpte renders pfn in hex and the set bits in a fixed order', () => {
  assert.equal(formatSpte(0n), '0');
  assert.equal(formatSpte(FROZEN_SPTE), 'FROZEN');
  assert.equal(formatSpte(makeSpte(ACC_ALL, 0x1f, true, true, true)), 'pfn=0x1f SP P W U A D HW MW');
  assert.equal(formatSpte(makeSpte(ACC_USER_MASK, 0x2a, false, true, true)), 'pfn=0x2a SP P U A NX');
  assert.equal(formatSpte(makeSpte(ACC_ALL, 0x10, true, true, false) & ~W), 'pfn=0x10 SP P U A HW MW');
  assert.equal(formatSpte(makeNonleafSpte(3)), 'pfn=0x3 SP P W U A');
  assert.equal(formatSpte(makeSpte(ACC_EXEC_MASK, MAX_PFN, false, false, false)), 'pfn=0xffffffffff SP P');
  assert.equal(formatSpte(P | (0x5n << 12n)), 'pfn=0x5 P', 'hardware-present but not shadow-present');
});

test('spteAccess reads W, U and X (NX clear) from a leaf SPTE', () => {
  for (let acc = 0; acc <= ACC_ALL; acc++) assert.equal(spteAccess(makeSpte(acc, 1, true, true, false)), acc);
  assert.equal(spteAccess(SP | P | NX), 0);
  assert.equal(spteAccess(SP | P), ACC_EXEC_MASK);
  assert.equal(spteAccess(SP | P | W | U), ACC_ALL);
});

/** An SPTE's low 32 bits as Mem.load64Low returns them (a signed 32-bit Number). */
const low32 = (v: bigint): number => Number(BigInt.asIntN(32, v));

test('a non-leaf SPTE reads the same from its low word: present bits and child, for every child index below 2^20', () => {
  for (const child of [0, 1, 0x3f, 0xabcde, 2 ** 20 - 1]) {
    const spte = makeNonleafSpte(child);
    assert.equal(spte >> 32n, 0n, 'a non-leaf SPTE has nothing in its high word');
    assert.equal(isShadowPresentLow(low32(spte)), true);
    assert.equal(isPresentLow(low32(spte)), true);
    assert.equal(spteLowToChild(low32(spte)), child);
  }
  assert.equal(isShadowPresentLow(0), false);
  assert.equal(isPresentLow(0), false);
  assert.equal(isShadowPresentLow(low32(FROZEN_SPTE)), false);
  assert.equal(isPresentLow(low32(SP)), false, 'MMU_PRESENT without P is not hardware-present');
  assert.equal(isShadowPresentLow(low32(P)), false, 'P without MMU_PRESENT is not shadow-present');
  assert.throws(() => spteLowToChild(low32(makeNonleafSpte(5) | PS)), /huge leaf followed as a table/);
});

test('pteFrame and pteFromParts agree with BigInt arithmetic on random entries, frames up to bit 51', () => {
  let x = 0x9e3779b97f4a7c15n;
  const next = (): bigint => (x = (x * 6364136223846793005n + 1442695040888963407n) & (bit(64) - 1n));
  for (let i = 0; i < 2000; i++) {
    const v = next();
    assert.equal(pteFrame(v), Number((v & PFN_MASK) >> 12n), `0x${v.toString(16)}`);
    const lowFlags = Number(next() & 0xfffn);
    const highFlags = Number(next() & 0xfff0_0000n);
    const frame = Number(next() & BigInt(MAX_PFN));
    const made = pteFromParts(lowFlags, highFlags, frame);
    assert.equal(made, BigInt(lowFlags) | (BigInt(highFlags) << 32n) | (BigInt(frame) << 12n));
    assert.equal(hasBits(v, bit(63)), (v & bit(63)) !== 0n);
    assert.equal(setBits(v, W | D), v | W | D);
    assert.equal(clearBits(v, W | NX), v & ~(W | NX));
  }
});
