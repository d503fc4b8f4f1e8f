// The corpus of real races (KVM-BUGS.md and the seed's): which scenario and guard reproduce each, or why none does yet; and the run that finds each with its fix off and proves it clean with the fix on.

import { ALL_GUARDS, GUARDS, type GuardName, type MmuMode } from '../kvm/config';
import { runCheck, type CheckReport } from './check';
import type { GenScenarioModule } from './engine';
import type { ScenarioSpec } from './gen/scenario';

export interface CorpusEntry {
  /** `kvm-N`: row N of KVM-BUGS.md; `seed-N` / `built-in`: the races kvmmu was built around. */
  readonly id: string;
  readonly source: 'kvm' | 'seed';
  /** The fix's commit (12 hex digits), or null for the seed's races (the 2012 locking document names no commit). */
  readonly commit: string | null;
  readonly year: number;
  readonly title: string;
  /** The built-in scenario that reproduces it, or null when kvmmu does not model it (see `why`). */
  readonly scenario: string | null;
  /**
   * The invariant the commit says breaks (the corpus searches for it with the fix off: an execution that breaks
   * another one first, such as the scenario's end-to-end check, is passed over).
   */
  readonly invariant?: string;
  /** Why it is not modelled (or not yet), said plainly. */
  readonly why?: string;
}

/**
 * Every real race, KVM-BUGS.md's ten first (in its order), then the seed's.
 * The modelled ones name a scenario; its guard, modes and commit come from
 * the scenario itself, so they are said once.
 */
export const CORPUS: readonly CorpusEntry[] = [
  {
    id: 'kvm-1',
    source: 'kvm',
    commit: '08e850c6536d',
    year: 2010,
    title: 'KVM: MMU: Reinstate pte prefetch on invlpg',
    scenario: null,
    why:
      'the invlpg-time prefetch updates the SPTE of an unsync shadow page (FNAME(invlpg) stops at a page that is not unsync); ' +
      'kvmmu write-protects every shadowed guest table and has no unsync pages yet',
  },
  {
    id: 'kvm-2',
    source: 'kvm',
    commit: 'c126d94f2c90',
    year: 2013,
    title: 'KVM: MMU: lazily drop large spte',
    scenario: 'huge-fast-dirty-log',
    // "only dirty the first page into the dirty-bitmap that means other pages are missed"
    invariant: 'dirty-log-complete',
  },
  {
    id: 'kvm-3',
    source: 'kvm',
    commit: 'e0c378684b65',
    year: 2021,
    title: 'KVM: x86/mmu: Retry page faults that hit an invalid memslot',
    scenario: 'invalid-slot-fault',
    // a fault replaced a present SPTE with an MMIO SPTE, without the flush a zap does
    invariant: 'fault-leaf-no-flush',
  },
  {
    id: 'kvm-4',
    source: 'kvm',
    commit: 'a835429cda91',
    year: 2021,
    title: 'KVM: x86/mmu: Ensure TLBs are flushed when yielding during GFN range zap',
    scenario: 'zap-yield-flush',
    // a vCPU keeps using a translation to a zapped page once the lock was dropped unflushed
    invariant: 'tlb-after-unmap',
  },
  {
    id: 'kvm-5',
    source: 'kvm',
    commit: 'a955cad84cda',
    year: 2021,
    title: 'KVM: x86/mmu: Retry page fault if root is invalidated by memslot update',
    scenario: 'obsolete-root-fault',
    // "inserting a SPTE into an obsolete root can leak a SP"
    invariant: 'no-leaked-table',
  },
  {
    id: 'kvm-6',
    source: 'kvm',
    commit: '7c8a4742c4ab',
    year: 2022,
    title: 'KVM: x86/mmu: Fix write-protection of PTs mapped by the TDP MMU',
    scenario: 'tdp-pt-wrprot',
    // a gfn write-protected for page-table protection must not stay MMU-writable, nor its flush be skipped
    invariant: 'tlb-after-write-protect',
  },
  {
    id: 'kvm-7',
    source: 'kvm',
    commit: 'ba3a6120a4e7',
    year: 2022,
    title: 'KVM: x86/mmu: Use atomic XCHG to write TDP MMU SPTEs with volatile bits',
    scenario: 'tdp-volatile-xchg',
    // the lost Dirty bit, seen when the zapped SPTE's frame is dropped unwritten
    invariant: 'frame-dirty-before-drop',
  },
  {
    id: 'kvm-8',
    source: 'kvm',
    commit: '47b0c2e4c220',
    year: 2022,
    title: 'KVM: x86/mmu: Fix race condition in direct_page_fault',
    scenario: null,
    why:
      "make_mmu_pages_available() zaps the shadow MMU's pages, which exist beside the TDP MMU only for a nested guest; " +
      'kvmmu runs no nested guest, so a TDP fault never has shadow pages to zap',
  },
  {
    id: 'kvm-9',
    source: 'kvm',
    commit: '58cd407ca4c6',
    year: 2022,
    title: 'KVM: Fix multiple races in gfn=>pfn cache refresh',
    scenario: 'gpc-refresh-race',
    // the refresh published a pfn the host went on to free
    invariant: 'gpc-pfn-mapped',
  },
  {
    id: 'kvm-10',
    source: 'kvm',
    commit: '3ccbf6f47098',
    year: 2025,
    title: 'KVM: x86/mmu: Return -EAGAIN if userspace deletes/moves memslot during prefault',
    scenario: 'prefault-slot-deadlock',
    // pre-faulting and the memslot update wait for each other
    invariant: 'deadlock',
  },
  { id: 'seed-1', source: 'seed', commit: null, year: 2012, title: 'the fast path marks the wrong gfn dirty after pfn reuse (ABA)', scenario: 'aba-gfn-pfn' },
  { id: 'seed-2', source: 'seed', commit: null, year: 2012, title: 'write-protection skips the TLB flush of an MMU-writable SPTE', scenario: 'wp-tlb-flush' },
  { id: 'seed-3', source: 'seed', commit: null, year: 2012, title: 'a non-atomic clear loses the Dirty bit the fast path let the guest set', scenario: 'dirty-bit-loss' },
  { id: 'seed-4', source: 'seed', commit: null, year: 2012, title: 'a fault installs a pfn an MMU-notifier invalidation removed', scenario: 'notifier-race' },
  { id: 'seed-5', source: 'seed', commit: null, year: 2012, title: 'a shadow page freed under a lockless walker', scenario: 'free-during-walk' },
];

/** One corpus entry checked in one mode. */
export interface CorpusRow {
  readonly entry: CorpusEntry;
  readonly mode: MmuMode | null;
  readonly guard: GuardName | null;
  /** found: the fix off breaks an invariant and the fix on is clean within the stated bound; otherwise what went wrong. */
  readonly status: 'found' | 'not-found' | 'fix-on-violates' | 'not-modelled';
  /** The check with the fix off (its guard off), or null when not modelled. */
  readonly off: CheckReport | null;
  /** The check with every guard on. */
  readonly on: CheckReport | null;
}

export interface CorpusOptions {
  /** Only this mode (entries that do not apply to it are left out). */
  readonly mode?: MmuMode;
  /** Only these entries (ids). */
  readonly only?: readonly string[];
  /** Only KVM-BUGS.md's entries, not the seed's. */
  readonly kvmOnly?: boolean;
  /** Each check's time budget in seconds (default 60: the corpus promises an exhaustive run under a minute). */
  readonly seconds?: number;
  readonly onRow?: (row: CorpusRow) => void;
  readonly onProgress?: (what: string, executions: number) => void;
}

/** The entries `o` selects; unknown ids are an error the caller reports. */
export function selectCorpus(o: Pick<CorpusOptions, 'only' | 'kvmOnly'>): { entries: CorpusEntry[]; unknown: string[] } {
  const unknown = (o.only ?? []).filter((id) => !CORPUS.some((e) => e.id === id));
  const entries = CORPUS.filter((e) => (o.only === undefined || o.only.includes(e.id)) && (!o.kvmOnly || e.source === 'kvm'));
  return { entries, unknown };
}

/**
 * Check every selected entry in every mode its scenario runs in (or `o.mode`):
 * DPOR with its guard off, expecting a violation; then DPOR with every guard
 * on, expecting an exhaustive clean verdict.
 */
export function runCorpus(gen: GenScenarioModule, builtin: readonly ScenarioSpec[], o: CorpusOptions = {}): CorpusRow[] {
  const rows: CorpusRow[] = [];
  const seconds = o.seconds ?? 60;
  for (const entry of selectCorpus(o).entries) {
    if (entry.scenario === null) {
      if (o.mode === undefined) {
        const row: CorpusRow = { entry, mode: null, guard: null, status: 'not-modelled', off: null, on: null };
        rows.push(row);
        o.onRow?.(row);
      }
      continue;
    }
    const spec = builtin.find((s) => s.name === entry.scenario);
    if (spec === undefined || spec.guard === undefined) throw new Error(`corpus: ${entry.id} names scenario ${entry.scenario}, which is not a built-in with a guard`);
    const guard = spec.guard;
    const modes = (spec.modes ?? ['direct', 'shadow']).filter((m) => o.mode === undefined || m === o.mode);
    for (const mode of modes) {
      const progress = (what: string) => (o.onProgress === undefined ? undefined : (p: { executions: number }) => o.onProgress!(what, p.executions));
      const off = runCheck(gen, spec, {
        mode,
        guards: ALL_GUARDS & ~GUARDS[guard],
        invariant: entry.invariant,
        seconds,
        onProgress: progress(`${entry.id} ${mode} ${guard}=off`),
      });
      const on = runCheck(gen, spec, { mode, seconds, onProgress: progress(`${entry.id} ${mode} fix on`) });
      const status = off.violation === null ? 'not-found' : on.violation !== null ? 'fix-on-violates' : 'found';
      const row: CorpusRow = { entry, mode, guard, status, off, on };
      rows.push(row);
      o.onRow?.(row);
    }
  }
  return rows;
}
