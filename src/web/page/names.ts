// Names for what the trace prints as numbers or short forms: vCPU modes as KVM names them, frame flags, shadow-page roles; and the legend's words.

import { FRAME_ACCESSED, FRAME_DIRTY, FRAME_FREE, FRAME_KSM, FRAME_REFERENCED } from '../../host/host';
import {
  ROLE_CR0_WP,
  ROLE_EFER_NX,
  ROLE_INVALID,
  ROLE_SMAP_ANDNOT_WP,
  ROLE_SMEP_ANDNOT_WP,
  ROLE_SMM,
  roleAccess,
  roleIsDirect,
  roleLevel,
} from '../../kvm/mmu-page';

/** The role's flag bits, as KVM names the fields of kvm_mmu_page_role. */
const ROLE_FLAGS: readonly (readonly [number, string])[] = [
  [ROLE_INVALID, 'invalid'],
  [ROLE_SMM, 'smm'],
  [ROLE_EFER_NX, 'efer_nx'],
  [ROLE_CR0_WP, 'cr0_wp'],
  [ROLE_SMEP_ANDNOT_WP, 'smep_andnot_wp'],
  [ROLE_SMAP_ANDNOT_WP, 'smap_andnot_wp'],
];
import { ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK } from '../../x86/pte';

/** The trace's short mode names (check/trace.ts) → KVM's, as the state panel shows them. */
const MODES: readonly [string, string][] = [
  ['OUTSIDE GUEST', 'OUTSIDE_GUEST_MODE'],
  ['IN GUEST', 'IN_GUEST_MODE'],
  ['EXITING GUEST', 'EXITING_GUEST_MODE'],
];

export function kvmModeName(text: string): string {
  for (const [short, full] of MODES) if (text === short) return full;
  return text;
}

const FRAME_FLAGS: readonly [number, string][] = [
  [FRAME_DIRTY, 'DIRTY'],
  [FRAME_ACCESSED, 'ACCESSED'],
  [FRAME_KSM, 'KSM'],
  [FRAME_FREE, 'FREE'],
  [FRAME_REFERENCED, 'REFERENCED'],
];

/** A frame's flags word as names: "REFERENCED DIRTY", or "none". */
export function frameFlagsText(v: number): string {
  const names = FRAME_FLAGS.filter(([bit]) => (v & bit) !== 0).map(([, name]) => name);
  const rest = FRAME_FLAGS.reduce((m, [bit]) => m & ~bit, v);
  if (rest !== 0) names.push(`0x${rest.toString(16)}`);
  return names.length === 0 ? 'none' : names.join(' ');
}

/** A shadow page's role word: "level 1 direct acc=XWU efer_nx" (KVM's kvm_mmu_page_role: level, direct, access, invalid, smm, the CPU bits). */
export function roleText(v: number): string {
  const acc = roleAccess(v);
  const a = `${(acc & ACC_EXEC_MASK) !== 0 ? 'X' : '-'}${(acc & ACC_WRITE_MASK) !== 0 ? 'W' : '-'}${(acc & ACC_USER_MASK) !== 0 ? 'U' : '-'}`;
  const flags = ROLE_FLAGS.filter(([bit]) => (v & bit) !== 0).map(([, name]) => ` ${name}`).join('');
  return `level ${roleLevel(v)} ${roleIsDirect(v) ? 'direct' : 'indirect'} acc=${a}${flags}`;
}

/** A value in a trace row, as the page shows it: numbers that are flags or roles decoded, modes as KVM names them. */
export function displayValue(target: string, v: string | null): string | null {
  if (v === null) return null;
  if (/^vCPU \d+ mode$/.test(target)) return kvmModeName(v);
  if (/^frame 0x[0-9a-f]+ flags$/.test(target) && /^\d+$/.test(v)) return frameFlagsText(Number(v));
  if (/^shadow page \d+ role$/.test(target) && /^\d+$/.test(v)) return roleText(Number(v));
  return v;
}

/** The SPTE bits the state panel shows, with their short names (formatSpte's) and what each means. */
export const SPTE_BITS: readonly { readonly key: 'P' | 'W' | 'U' | 'A' | 'D' | 'HOST_WRITABLE' | 'MMU_WRITABLE'; readonly short: string; readonly help: string }[] = [
  { key: 'P', short: 'P', help: 'Present (the hardware may use it)' },
  { key: 'W', short: 'W', help: 'Writable: the guest can write through it' },
  { key: 'U', short: 'U', help: 'User: user-mode guest code may use it' },
  { key: 'A', short: 'A', help: 'Accessed: set by the hardware walk' },
  { key: 'D', short: 'D', help: 'Dirty: set by the hardware on a write; the page must be written back before the SPTE is dropped' },
  { key: 'HOST_WRITABLE', short: 'HW', help: 'Host-writable: the host maps the page writable, so KVM may map it writable' },
  { key: 'MMU_WRITABLE', short: 'MW', help: 'MMU-writable: KVM does not write-protect it, so the fast path may set W without mmu_lock' },
];

/** Abbreviations in trace values and the state panel. */
export const ABBREVIATIONS: readonly [string, string][] = [
  ['SP', 'shadow-present: KVM installed this SPTE (in a trace value; not the same as P)'],
  ...SPTE_BITS.map((b): [string, string] => [b.short, b.help]),
  ['NX', 'no-execute'],
  ['RO', 'read-only (a TLB entry or host mapping without W)'],
  ['sp N, #I', 'shadow page N, entry I (a page of 512 SPTEs)'],
  ['gfn / pfn', 'guest frame number / host (physical) frame number'],
  ['vpn', 'guest virtual page number (a TLB entry’s tag)'],
  ['level / direct / acc', 'a shadow page’s role: its level in the page table (1 = leaf), direct (maps gfns) or indirect (shadows a guest table), its access rights (X exec, W write, U user)'],
];

/** An object id of the API's touches (check/web-api.ts Touch) as the page names it: "spte (sp 3, #3)", "frame 0x0". */
export function objectLabel(id: string): string {
  const [kind, ...rest] = id.split(':');
  const v = rest.join(':');
  const hex = (x: string): string => `0x${Number(x).toString(16)}`;
  switch (kind) {
    case 'spte': {
      const [sp, i] = v.split(':');
      return `spte (sp ${sp}, #${i})`;
    }
    case 'frame':
      return `frame ${hex(v)}`;
    case 'bitmap':
      return `dirty-bitmap word (gfns ${v.split('-').map(hex).join('–')})`;
    case 'lock':
      return v;
    case 'map':
      return `host mapping of gfn ${hex(v)}`;
    case 'vcpu':
      return `vCPU ${v}`;
    case 'sp':
      return `shadow page ${v}`;
    case 'word':
      return `word(${v})`;
    case 'ghost':
      return `monitor state ${v}`;
    default:
      return v;
  }
}
