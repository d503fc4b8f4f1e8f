// The locking document's drawings (the seed's three races, and the TDP MMU's form of the third): which step of a trace each line of a drawing is, so the view marks the steps the document draws.

import type { TraceRow } from '../api-types';
import { fnOf } from './trace-view';

/** One line of a drawing and the step of a trace it stands for. */
interface DrawnLine {
  /** The line as the document writes it. */
  readonly text: string;
  /** The step's thread (by name), function (innermost) and operation. */
  readonly thread: string;
  readonly fn: string;
  readonly op: string;
  /** A further condition on the row (its values). */
  readonly when?: (r: TraceRow) => boolean;
  /** The step comes after the one of this line (index in the drawing). */
  readonly after?: number;
}

interface Drawing {
  /** The document's section. */
  readonly section: string;
  /** Modes whose functions the lines name. */
  readonly modes: readonly string[];
  readonly lines: readonly DrawnLine[];
}

const hasBit = (v: string | null, bit: string): boolean => v !== null && v.split(' ').includes(bit);

/** Section 3's drawing in the TDP MMU: the zap's plain store is kvm_tdp_mmu_write_spte's (ba3a6120a4e7), the old value the iterator's read. */
const DIRTY_BIT_TDP: Drawing = {
  section: '3) Dirty bit tracking, in the TDP MMU',
  modes: ['tdp'],
  lines: [
    { text: 'old_spte = *spte;', thread: 'host', fn: 'read', op: 'load64', when: (r) => hasBit(r.before, 'MW') },
    { text: 'spte = 0ull;', thread: 'host', fn: 'writeSpte', op: 'store64' },
    { text: 'else old_spte = xchg(spte, 0ull)', thread: 'host', fn: 'writeSpte', op: 'xchg64' },
    { text: 'on fast page fault path: spte.W = 1', thread: 'vCPU 0', fn: 'fastPfFixDirectSpte', op: 'cmpxchg64' },
    { text: 'memory write on the spte: spte.Dirty = 1', thread: 'vCPU 0', fn: 'hwWalk', op: 'cmpxchg64', when: (r) => hasBit(r.after, 'D') && !hasBit(r.before, 'D') },
    { text: 'if (old_spte.Accessed == 1) kvm_set_pfn_accessed(spte.pfn);', thread: 'host', fn: 'setPfnAccessed', op: 'or32' },
    { text: 'if (old_spte.Dirty == 1) kvm_set_pfn_dirty(spte.pfn);', thread: 'host', fn: 'setPfnDirty', op: 'or32' },
  ],
};

/** seed/000_0abe0897143c50e5.txt, "But we need carefully check these cases"; a scenario may have a drawing per group of modes. */
const DRAWINGS: Readonly<Record<string, readonly Drawing[]>> = {
  'aba-gfn-pfn': [{
    section: '1) The mapping from gfn to pfn',
    modes: ['shadow'],
    lines: [
      { text: 'pfn1 is swapped out: spte = 0;', thread: 'host and vCPU 1', fn: 'mmuSpteClearTrackBits', op: 'xchg64' },
      { text: 'pfn1 is re-alloced for gfn2.', thread: 'host and vCPU 1', fn: 'swapInLocked', op: 'store32', when: (r) => r.target.startsWith('host mapping of') },
      { text: 'gpte is changed to point to gfn2 by the guest: spte = pfn1;', thread: 'host and vCPU 1', fn: 'mmuSpteSet', op: 'store64' },
      { text: 'old_spte = *spte;', thread: 'vCPU 0', fn: 'fastPageFault', op: 'load64', when: (r) => hasBit(r.before, 'MW') },
      { text: 'if (cmpxchg(spte, old_spte, old_spte+W)', thread: 'vCPU 0', fn: 'fastPfFixDirectSpte', op: 'cmpxchg64' },
      { text: 'mark_page_dirty(vcpu->kvm, gfn1)  OOPS!!!', thread: 'vCPU 0', fn: 'markPageDirty', op: 'or32', after: 4 },
    ],
  }],
  'wp-tlb-flush': [{
    section: '2) flush tlbs due to shadow page table write-protected',
    modes: ['shadow'],
    lines: [
      { text: 'flush = false; if (spte.W == 1) flush = true;', thread: 'vCPU 1', fn: 'spteWriteProtect', op: 'load64' },
      { text: 'On fast page fault path: old_spte = *spte', thread: 'vCPU 0', fn: 'fastPageFault', op: 'load64', when: (r) => hasBit(r.before, 'MW') },
      { text: 'cmpxchg(spte, old_spte, old_spte + W)', thread: 'vCPU 0', fn: 'fastPfFixDirectSpte', op: 'cmpxchg64' },
      { text: 'the spte is fetched/prefetched into tlb by CPU', thread: 'vCPU 0', fn: 'hwWalk', op: 'load64', when: (r) => hasBit(r.before, 'W') && hasBit(r.before, 'MW'), after: 2 },
      { text: 'spte = (spte | SPTE_WRITE_PROTECT) & ~PT_WRITABLE_MASK;', thread: 'vCPU 1', fn: 'mmuSpteUpdate', op: 'xchg64', after: 2 },
    ],
  }],
  'dirty-bit-loss': [{
    section: '3) Dirty bit tracking',
    modes: ['direct', 'shadow'],
    lines: [
      { text: 'In mmu_spte_clear_track_bits(): old_spte = *spte;', thread: 'host', fn: 'mmuSpteClearTrackBits', op: 'load64' },
      { text: "if (old_spte.Accessed == 1 && old_spte.W == 0) spte = 0ull;", thread: 'host', fn: 'mmuSpteClearTrackBits', op: 'store64' },
      { text: 'else old_spte = xchg(spte, 0ull)', thread: 'host', fn: 'mmuSpteClearTrackBits', op: 'xchg64' },
      { text: 'on fast page fault path: spte.W = 1', thread: 'vCPU 0', fn: 'fastPfFixDirectSpte', op: 'cmpxchg64' },
      { text: 'memory write on the spte: spte.Dirty = 1', thread: 'vCPU 0', fn: 'hwWalk', op: 'cmpxchg64', when: (r) => hasBit(r.after, 'D') && !hasBit(r.before, 'D') },
      { text: 'if (old_spte.Accessed == 1) kvm_set_pfn_accessed(spte.pfn);', thread: 'host', fn: 'setPfnAccessed', op: 'or32' },
      { text: 'if (old_spte.Dirty == 1) kvm_set_pfn_dirty(spte.pfn);', thread: 'host', fn: 'setPfnDirty', op: 'or32' },
    ],
  }, DIRTY_BIT_TDP],
  // KVM-BUGS.md 7: the seed's race 3 in the TDP MMU.
  'tdp-volatile-xchg': [DIRTY_BIT_TDP],
};

export interface DrawnMarks {
  readonly section: string;
  /** Step number → the document's line for it. */
  readonly steps: Map<number, string>;
}

/** The steps of a trace the locking document draws (null: the document draws no race of this scenario in this mode). */
export function drawnSteps(scenario: string, mode: string | null, threads: readonly string[], rows: readonly TraceRow[]): DrawnMarks | null {
  const d = mode === null ? undefined : DRAWINGS[scenario]?.find((x) => x.modes.includes(mode));
  if (d === undefined) return null;
  const at: (number | null)[] = [];
  const steps = new Map<number, string>();
  d.lines.forEach((line, i) => {
    const after = line.after === undefined ? 0 : (at[line.after] ?? Infinity);
    const r = rows.find(
      (x) => x.step > after && threads[x.thread] === line.thread && fnOf(x.where) === line.fn && x.op === line.op && (line.when === undefined || line.when(x)) && !steps.has(x.step),
    );
    at[i] = r?.step ?? null;
    if (r !== undefined) steps.set(r.step, line.text);
  });
  return steps.size === 0 ? null : { section: d.section, steps };
}
