// What a violation depends on: the objects and steps behind the step where the invariant monitor fired, found from what each step touched.

import type { TraceRow, Touch } from '../api-types';

/**
 * The steps a violation depends on, by this rule:
 *
 * - it depends on every object its step touched, its thread's or the invariant monitor's (what the monitor read
 *   there, and the monitor's own remembered state);
 * - going back, a step that wrote an object the violation depends on is a cause, and so is every earlier step of
 *   the same call (the same thread's steps just before it, in a function of its call chain): the objects they read
 *   are depended on too (what a thread writes depends on what it read in that call), and what the earlier steps
 *   of the call wrote (locks excepted: taking one orders the steps, it carries no data, so a step of the call that
 *   only takes or releases a lock is not a cause);
 * - the steps shown are those whose thread touched a depended-on object, and the violation's step.
 *
 * It is a dynamic slice over shared state: a value carried in a thread's locals from an earlier call is not seen.
 * Returns the set of step numbers (1-based) and the depended-on object ids.
 */
export function violationSlice(rows: readonly TraceRow[], touches: readonly Touch[][], violationStep: number): { steps: Set<number>; objects: Set<string> } {
  const objects = new Set<string>();
  const cause = new Set<number>([violationStep]);
  /** What step k touched: all of it (the violation's step), or what its thread read (a cause), or all its thread touched (a step of a cause's call). */
  const addAll = (k: number, which: 'all' | 'read' | 'thread'): void => {
    for (const t of touches[k - 1] ?? []) {
      if (which === 'all') objects.add(t.id);
      else if (t.thread && !t.id.startsWith('lock:') && (which === 'thread' || t.read)) objects.add(t.id);
    }
  };
  addAll(violationStep, 'all');
  addCall(violationStep);
  for (let k = violationStep - 1; k >= 1; k--) {
    if (cause.has(k)) continue;
    const writesDepended = (touches[k - 1] ?? []).some((t) => t.write && objects.has(t.id));
    if (!writesDepended) continue;
    cause.add(k);
    addAll(k, 'read');
    addCall(k);
  }
  const steps = new Set<number>(cause);
  touches.forEach((ts, i) => {
    if (i + 1 <= violationStep && ts.some((t) => t.thread && objects.has(t.id))) steps.add(i + 1);
  });
  return { steps, objects };

  /** The same thread's steps just before step k that ran in a function of k's call chain. */
  function addCall(k: number): void {
    const row = rows[k - 1];
    if (row === undefined || row.where === '') return;
    const chain = new Set(row.where.split(' ← '));
    for (let j = k - 1; j >= 1; j--) {
      const r = rows[j - 1]!;
      if (r.thread !== row.thread) continue;
      const fn = r.where.split(' ← ')[0] ?? '';
      if (!chain.has(fn)) return;
      // A lock taken or released in the call orders its steps but carries no data.
      if ((touches[j - 1] ?? []).every((t) => !t.thread || t.id.startsWith('lock:'))) continue;
      if (!cause.has(j)) {
        cause.add(j);
        addAll(j, 'thread');
      }
    }
  }
}
