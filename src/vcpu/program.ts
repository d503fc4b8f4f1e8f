// Guest programs: a list of accesses, page-table updates and invlpg that a vCPU runs in guest mode.

import { GuestPageFault, type Vcpu } from './vcpu';

export type GuestOp =
  | { readonly op: 'read'; readonly gva: number }
  | { readonly op: 'write'; readonly gva: number; readonly value: bigint }
  | { readonly op: 'fetch'; readonly gva: number }
  | { readonly op: 'invlpg'; readonly gva: number }
  /** Switch between supervisor (CPL 0) and user (CPL 3) accesses. */
  | { readonly op: 'user'; readonly on: boolean };

export interface ProgramResult {
  /** Values read, in order (a faulting read adds nothing). */
  readonly reads: bigint[];
  /** Guest page faults: the op's index, its address and the #PF error code (the guest's handler skips the op). */
  readonly faults: { index: number; gva: number; errorCode: number }[];
}

/** Run `ops` on `vcpu` from entering guest mode to leaving it. */
export function runProgram(vcpu: Vcpu, ops: readonly GuestOp[]): ProgramResult {
  const result: ProgramResult = { reads: [], faults: [] };
  vcpu.enterGuest();
  try {
    for (let i = 0; i < ops.length; i++) {
      const o = ops[i]!;
      try {
        switch (o.op) {
          case 'read':
            result.reads.push(vcpu.read64(o.gva));
            break;
          case 'write':
            vcpu.write64(o.gva, o.value);
            break;
          case 'fetch':
            vcpu.fetch(o.gva);
            break;
          case 'invlpg':
            vcpu.invlpg(o.gva);
            break;
          case 'user':
            vcpu.user = o.on;
            break;
        }
      } catch (e) {
        if (!(e instanceof GuestPageFault)) throw e;
        result.faults.push({ index: i, gva: e.gva, errorCode: e.errorCode });
      }
    }
  } finally {
    vcpu.exitGuest();
  }
  return result;
}
