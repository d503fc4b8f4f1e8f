// The SDM's answer for one guest access through 4-level paging (Intel SDM vol. 3A, 4.6 access rights and 4.7 page-fault error codes), as a table written from the manual, apart from the walker it checks.

/** One paging-structure entry's bits that decide an access (the address is the test's). */
export interface SdmEntry {
  readonly p: boolean;
  readonly w: boolean;
  readonly u: boolean;
  readonly xd: boolean;
}

export interface SdmCpu {
  readonly wp: boolean;
  readonly nxe: boolean;
  readonly smep: boolean;
  readonly smap: boolean;
  readonly ac: boolean;
}

export type SdmKind = 'read' | 'write' | 'fetch';

export interface SdmOutcome {
  /** null: the access completes (A set in every entry, D in the leaf for a write). */
  readonly errorCode: number | null;
}

const EC_P = 0x1;
const EC_W = 0x2;
const EC_U = 0x4;
const EC_RSVD = 0x8;
const EC_ID = 0x10;

/** What the combined rights of a translation are (4.6.1): U/S and R/W are ANDed over the levels, XD ORed (with NXE). */
interface Rights {
  readonly userPage: boolean;
  readonly writable: boolean;
  readonly noExec: boolean;
}

/**
 * Is the access denied, by CPL and kind (4.6.1, with CR0.WP, CR4.SMEP/SMAP,
 * RFLAGS.AC for explicit supervisor accesses, EFER.NXE)? One line per case of
 * the manual's text.
 */
const DENIED: Readonly<Record<'user' | 'supervisor', Readonly<Record<SdmKind, (r: Rights, c: SdmCpu) => boolean>>>> = {
  user: {
    read: (r) => !r.userPage,
    write: (r) => !r.userPage || !r.writable,
    fetch: (r) => !r.userPage || r.noExec,
  },
  supervisor: {
    // SMAP: explicit supervisor data accesses to user pages, unless RFLAGS.AC.
    read: (r, c) => r.userPage && c.smap && !c.ac,
    // CR0.WP: supervisor writes to read-only pages; SMAP as for reads.
    write: (r, c) => (!r.writable && c.wp) || (r.userPage && c.smap && !c.ac),
    // SMEP: supervisor fetches from user pages. SMAP does not apply to fetches.
    fetch: (r, c) => r.noExec || (r.userPage && c.smep),
  },
};

/**
 * The outcome of `kind` by a `user` (CPL 3) or supervisor access through
 * `entries` (PML4E first, PTE last) under `cpu`: the error code of the #PF,
 * or null. The walk stops at the first entry not present (P=0 in the error
 * code) or with a reserved bit set (XD without NXE: P=1, RSVD=1); past a full
 * walk the rights decide. The I/D bit is set for a fetch only with NXE or SMEP.
 */
export function sdmAccess(entries: readonly SdmEntry[], cpu: SdmCpu, kind: SdmKind, user: boolean): SdmOutcome {
  let ec = (kind === 'write' ? EC_W : 0) | (user ? EC_U : 0) | (kind === 'fetch' && (cpu.nxe || cpu.smep) ? EC_ID : 0);
  for (const e of entries) {
    if (!e.p) return { errorCode: ec };
    if (e.xd && !cpu.nxe) return { errorCode: ec | EC_P | EC_RSVD };
  }
  const rights: Rights = {
    userPage: entries.every((e) => e.u),
    writable: entries.every((e) => e.w),
    noExec: cpu.nxe && entries.some((e) => e.xd),
  };
  if (DENIED[user ? 'user' : 'supervisor'][kind](rights, cpu)) return { errorCode: (ec |= EC_P) };
  return { errorCode: null };
}
