// The lock spin budget: chosen by the runner from threads and cores, carried by the machine spec into every handle.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as os from 'node:os';
import { SPIN_LIMIT_DEDICATED, SPIN_LIMIT_SHARED } from '../../src/shm/access';
import { createMachine, openKvm } from '../../src/vcpu/machine';
import { spinLimitFor } from '../../src/runtime/spin';

test('waiters spin long only while every locking thread can have a core', () => {
  const cores = os.availableParallelism();
  assert.equal(spinLimitFor(1), SPIN_LIMIT_DEDICATED);
  assert.equal(spinLimitFor(cores), SPIN_LIMIT_DEDICATED);
  assert.equal(spinLimitFor(cores + 1), SPIN_LIMIT_SHARED);
  assert.ok(SPIN_LIMIT_DEDICATED > SPIN_LIMIT_SHARED);
});

test("a handle takes the spec's spin budget, and the shared one when the spec names none", () => {
  const spec = createMachine({ memBytes: 1 << 20 });
  assert.equal(openKvm(spec, 0).mem.spinLimit, SPIN_LIMIT_SHARED);
  assert.equal(openKvm({ ...spec, spinLimit: SPIN_LIMIT_DEDICATED }, 0).mem.spinLimit, SPIN_LIMIT_DEDICATED);
});
