// A differential campaign (a script, not a test): Optimal- and Source-DPOR against exhaustive DFS on many random programs, by final states and by classes of equivalent executions, with the executions each reduction abandoned and its wakeup misses.
//
// npm run build && node dist/test/campaign/dpor-campaign.js [--from N] [--count N] [--locky] [--handoff] [--quiet] [--dump]
//   --locky    programs where most threads take a lock or wait on a word and release late (lockyProgram)
//   --handoff  each reduction stops after a random number of executions (under half DFS's classes, so most
//              do stop) and the split search carries on from its state (kvmmu check past --split-after:
//              Systematic.handOff), jobs in random order, work given away at random; the counts are the first phase's
//   --quiet    print only what is wrong and the totals; --dump  one line a program, to compare two versions
// Exits 1 if a reduction missed a final state or a class DFS reached, or reached one DFS did not.

import { explore, type DonatedNode, type ExploreResult, type Reduction } from '../../src/check/explore';
import { exploreSplitInline } from '../../src/check/split';
import { rng } from '../helpers/rng';
import { randomProgram, lockyProgram, randomProgramScenario, recordingEngine, type Op } from '../helpers/random-program';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number): number => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const from = opt('--from', 1);
const count = opt('--count', 1000);
const locky = args.includes('--locky');
const quiet = args.includes('--quiet');
const dump = args.includes('--dump');
const handoff = args.includes('--handoff');
const { gen, spec } = randomProgramScenario('dpor-campaign');

function run(program: Op[][], strategy: 'dfs' | 'dpor', reduction?: Reduction, seed = 1, dfsClasses = 2) {
  const { engine, states, classes } = recordingEngine(gen, spec, program, true);
  if (handoff && strategy === 'dpor') {
    // The sequential search for a few executions, then the split search from its state; the counts are the first's.
    const r = rng(seed * 31);
    let nodes: DonatedNode[] | null = null;
    const first = 1 + r(Math.max(1, Math.floor(dfsClasses / 2)));
    const res: ExploreResult = explore(engine, { strategy, reduction, continueAfterViolation: true, maxExecutions: first, onHandOff: (x) => (nodes = x) });
    if (!res.complete) handedOver++;
    if (!res.complete) {
      const rest = exploreSplitInline(engine, { strategy, continueAfterViolation: true, split: () => r(3) > 0, pick: (n) => r(n), handOff: nodes! });
      if (!rest.complete) throw new Error(`the split search did not finish after the hand-off: ${JSON.stringify(program)}`);
    }
    return { states, classes, res };
  }
  const res = explore(engine, { strategy, reduction, continueAfterViolation: true, maxExecutions: 200_000 });
  if (!res.complete) throw new Error(`${strategy} ${reduction ?? ''} did not finish: ${JSON.stringify(program)}`);
  return { states, classes, res };
}

let unsound = 0;
/** Runs the split search carried on from (--handoff). */
let handedOver = 0;
// Classes DFS reaches that a reduction missed (its final states may all be reached still), and classes
// Optimal-DPOR explored more than once.
let classesMissed = 0;
let classesTwice = 0;
let withAbandons = 0;
const totals = { optimal: 0, optAbandoned: 0, optMisses: 0, source: 0, srcAbandoned: 0, dfs: 0, classes: 0 };
const t0 = Date.now();
for (let seed = from; seed < from + count; seed++) {
  const program = locky ? lockyProgram(rng(seed * 7919)) : randomProgram(rng(seed * 7919));
  const dfs = run(program, 'dfs');
  totals.dfs += dfs.res.executions;
  totals.classes += dfs.classes.size;
  for (const reduction of ['optimal', 'source'] as const) {
    const d = run(program, 'dpor', reduction, seed, dfs.classes.size);
    const missing = [...dfs.states].filter((s) => !d.states.has(s));
    const extra = [...d.states].filter((s) => !dfs.states.has(s));
    const lost = [...dfs.classes.keys()].filter((c) => !d.classes.has(c)).length;
    const added = [...d.classes.keys()].filter((c) => !dfs.classes.has(c)).length;
    if (missing.length + extra.length + lost + added > 0) {
      unsound++;
      classesMissed += lost;
      console.log(`UNSOUND ${reduction} seed ${seed}: final states missing ${missing.length}, extra ${extra.length}; classes missing ${lost} of ${dfs.classes.size}, extra ${added}: ${JSON.stringify(program)}`);
    }
    if (reduction === 'optimal') {
      totals.optimal += d.res.executions;
      totals.optAbandoned += d.res.abandoned;
      totals.optMisses += d.res.wakeupMisses;
      const twice = [...d.classes.values()].filter((k) => k > 1).length;
      classesTwice += twice;
      if (dump) console.log(`seed ${seed} ${d.res.executions - d.res.abandoned} ${d.res.abandoned} ${d.res.wakeupMisses}`);
      if ((d.res.abandoned > 0 || twice > 0) && !quiet) console.log(`abandoned ${d.res.abandoned}/${d.res.executions} (misses ${d.res.wakeupMisses}, classes twice ${twice}) seed ${seed}: ${JSON.stringify(program)}`);
      if (d.res.abandoned > 0) withAbandons++;
    } else {
      totals.source += d.res.executions;
      totals.srcAbandoned += d.res.abandoned;
    }
  }
}
console.log(JSON.stringify({ from, count, locky, handoff, handedOver, unsound, classesMissed, classesTwice, programsWithAbandons: withAbandons, ...totals, seconds: (Date.now() - t0) / 1000 }));
process.exitCode = unsound > 0 ? 1 : 0;
