// The public scenario API (import it as 'kvmmu/scenario'): define scenarios, drive the VM, and the x86 constants a scenario needs.

export { defineScenario, threads, ScenarioVm, SHADOW_BASE, type ScenarioContext, type ScenarioSpec } from './scenario';
export type { GuestOp, ProgramResult } from '../../vcpu/program';
export { LOCK_WORDS, NOTE, RWLOCK_WORDS } from '../../shm/access';
export { Rcu, rcuWords } from '../../shm/rcu';
export { GUARD_NAMES, type GuardName, type MmuMode, type VmOptions } from '../../kvm/config';
export {
  PFERR_FETCH_MASK,
  PFERR_PRESENT_MASK,
  PFERR_USER_MASK,
  PFERR_WRITE_MASK,
  PT_ACCESSED_MASK,
  PT_DIRTY_MASK,
  PT_PRESENT_MASK,
  PT_USER_MASK,
  PT_WRITABLE_MASK,
} from '../../x86/pte';
export { formatSpte, isWritablePte, isMmuWritableSpte } from '../../x86/spte';
export { RET_PF_EMULATE, RET_PF_FIXED, RET_PF_GUEST, RET_PF_INVALID, RET_PF_RETRY, RET_PF_SPURIOUS } from '../../kvm/mmu';
