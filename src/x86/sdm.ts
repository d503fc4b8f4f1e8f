// The SDM's answer for one guest access through 4-level paging (Intel SDM vol. 3A, 4.6 access rights, 4.6.2 protection keys and 4.7 page-fault error codes), as tables written from the manual, apart from the walker it checks.

/** One paging-structure entry's bits that decide an access (the address is the test's). */
export interface SdmEntry {
  readonly p: boolean;
  readonly w: boolean;
  readonly u: boolean;
  readonly xd: boolean;
  /** The protection key in bits 62:59; the leaf's counts (4.6.2), others are ignored. Default 0. */
  readonly pkey?: number;
}

export interface SdmCpu {
  readonly wp: boolean;
  readonly nxe: boolean;
  readonly smep: boolean;
  readonly smap: boolean;
  readonly ac: boolean;
  /** CR4.PKE (default off) and PKRU: bit 2k is key k's access-disable, bit 2k+1 its write-disable. */
  readonly pke?: boolean;
  readonly pkru?: number;
}

export type SdmKind = 'read' | 'write' | 'fetch';

/**
 * Who makes the access (4.6): a user-mode access (CPL 3), an explicit
 * supervisor-mode access (CPL < 3), or an implicit supervisor-mode access (the
 * processor's own, e.g. to a descriptor table, at any CPL; never a fetch).
 */
export type SdmMode = 'user' | 'supervisor' | 'implicit';

export interface SdmOutcome {
  /** null: the access completes (A set in every entry, D in the leaf for a write). */
  readonly errorCode: number | null;
}

const EC_P = 0x1;
const EC_W = 0x2;
const EC_U = 0x4;
const EC_RSVD = 0x8;
const EC_ID = 0x10;
const EC_PK = 0x20;

/** What the combined rights of a translation are (4.6.1): U/S and R/W are ANDed over the levels, XD ORed (with NXE). */
interface Rights {
  readonly userPage: boolean;
  readonly writable: boolean;
  readonly noExec: boolean;
}

/**
 * Is the access denied, by mode and kind (4.6.1, with CR0.WP, CR4.SMEP/SMAP,
 * RFLAGS.AC, EFER.NXE)? One line per case of the manual's text.
 */
const DENIED: Readonly<Record<SdmMode, Readonly<Partial<Record<SdmKind, (r: Rights, c: SdmCpu) => boolean>>>>> = {
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
  implicit: {
    // SMAP: implicit supervisor data accesses to user pages, whatever RFLAGS.AC says.
    read: (r, c) => r.userPage && c.smap,
    // CR0.WP as for explicit supervisor writes; SMAP regardless of RFLAGS.AC.
    write: (r, c) => (!r.writable && c.wp) || (r.userPage && c.smap),
  },
};

/**
 * Does the leaf's protection key deny the access (4.6.2)? Keys govern data
 * accesses to user-mode addresses (U set at every level) when CR4.PKE is set;
 * `ad`/`wd` are PKRU's access-disable and write-disable bits for the key.
 */
const PK_DENIED: Readonly<Record<SdmMode, Readonly<Partial<Record<SdmKind, (ad: boolean, wd: boolean, c: SdmCpu) => boolean>>>>> = {
  // User-mode reads need AD clear; user-mode writes need AD and WD clear.
  user: { read: (ad) => ad, write: (ad, wd) => ad || wd },
  // Supervisor-mode reads need AD clear; supervisor-mode writes need AD clear, and WD clear when CR0.WP is set.
  supervisor: { read: (ad) => ad, write: (ad, wd, c) => ad || (wd && c.wp) },
  // Implicit supervisor-mode accesses are supervisor-mode accesses here too.
  implicit: { read: (ad) => ad, write: (ad, wd, c) => ad || (wd && c.wp) },
};

/**
 * The outcome of `kind` by a `mode` access (true: user, false: explicit
 * supervisor) through `entries` (PML4E first, the leaf last) under `cpu`: the
 * error code of the #PF, or null. The walk stops at the first entry not
 * present (P=0 in the error code) or with a reserved bit set (XD without NXE:
 * P=1, RSVD=1); past a full walk the rights and the leaf's protection key
 * decide (P=1, and PK=1 when the key denied it, whatever the rights say). The
 * U/S bit is set for user-mode accesses only; I/D for a fetch only with NXE or SMEP.
 */
export function sdmAccess(entries: readonly SdmEntry[], cpu: SdmCpu, kind: SdmKind, mode: SdmMode | boolean): SdmOutcome {
  const m: SdmMode = mode === true ? 'user' : mode === false ? 'supervisor' : mode;
  const denied = DENIED[m][kind];
  if (denied === undefined) throw new Error(`sdm: there is no ${m} ${kind}`);
  let ec = (kind === 'write' ? EC_W : 0) | (m === 'user' ? EC_U : 0) | (kind === 'fetch' && (cpu.nxe || cpu.smep) ? EC_ID : 0);
  for (const e of entries) {
    if (!e.p) return { errorCode: ec };
    if (e.xd && !cpu.nxe) return { errorCode: ec | EC_P | EC_RSVD };
  }
  const rights: Rights = {
    userPage: entries.every((e) => e.u),
    writable: entries.every((e) => e.w),
    noExec: cpu.nxe && entries.some((e) => e.xd),
  };
  let fault = denied(rights, cpu);
  const pkDenied = PK_DENIED[m][kind];
  if (cpu.pke === true && rights.userPage && pkDenied !== undefined) {
    const key = entries[entries.length - 1]!.pkey ?? 0;
    const pkru = cpu.pkru ?? 0;
    if (pkDenied(((pkru >>> (2 * key)) & 1) !== 0, ((pkru >>> (2 * key + 1)) & 1) !== 0, cpu)) {
      fault = true;
      ec |= EC_PK;
    }
  }
  return { errorCode: fault ? ec | EC_P : null };
}
