// Command-line options for VM settings that several commands take (run, check, bench).

import { Option } from 'commander';
import { PAGE_MARKING } from '../kvm/config';

/** --page-marking spte|fault: when KVM marks host pages dirty (no default here: each command sets its own). */
export function pageMarkingOption(): Option {
  return new Option(
    '--page-marking <when>',
    'when KVM marks host pages dirty: spte (2012 to 6.12, from SPTE A/D bits when it drops or changes an SPTE) or fault (6.13 on, when a fault or prefetch maps a writable page)',
  ).choices(PAGE_MARKING as string[]);
}
