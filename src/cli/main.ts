#!/usr/bin/env node
// The `kvmmu` command: parses arguments, runs a subcommand, and maps outcomes to exit codes (0 ok, 1 failure found, 2 bad usage).

import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { KvmmuError } from '../shm/errors';
import { fmtBytes } from '../shm/layout';
import {
  ALL_GUARDS,
  GUARD_HELP,
  GUARD_NAMES,
  INDIRECT_FAST_PATH,
  MMU_MODES,
  parseGuards,
  parseSize,
  type IndirectFastPath,
  type MmuMode,
  type PageMarking,
} from '../kvm/config';
import { pageMarkingOption } from './settings';
import { runVm, type RunReport } from '../runtime/run';
import { ProgressLine } from './progress';
import { checkCommand, scenariosCommand, SEQUENTIAL_FIRST_SECONDS, type CheckCliOptions } from './check-command';
import { workerCommand, type WorkerCliOptions } from './queue';
import { tourCommand } from './tour';
import { corpusCommand, type CorpusCliOptions } from './corpus-command';
import { accessCommand, type AccessCliOptions } from './access-command';
import { REDUCTIONS, STRATEGIES } from '../check/explore';
import { registerServe } from './serve-command';
import { registerBench } from './bench-command';

const EXIT_OK = 0;
const EXIT_FOUND = 1;
const EXIT_USAGE = 2;
/** kvmmu itself failed (a bug): neither a finding nor the user's mistake. */
const EXIT_INTERNAL = 3;

function int(name: string, min: number, max = Number.MAX_SAFE_INTEGER): (v: string) => number {
  return (v: string) => {
    if (!/^-?\d+$/.test(v.trim())) throw new InvalidArgumentError(`${name} must be an integer, not '${v}'`);
    const n = Number(v);
    if (n < min || n > max) throw new InvalidArgumentError(`${name} must be from ${min} to ${max}, not ${n}`);
    return n;
  };
}

/** A decimal number above 0 (and at most `max`): '1.5' yes; '0x10', '1e3', 'Infinity' no. */
function positive(name: string, max = Infinity): (v: string) => number {
  return (v: string) => {
    const n = /^\s*(\d+\.?\d*|\.\d+)\s*$/.test(v) ? Number(v) : NaN;
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a number above 0, not '${v}'`);
    if (n > max) throw new InvalidArgumentError(`${name} must be at most ${max}, not ${n}`);
    return n;
  };
}

/** A day: the longest a run (or the tour's run) may last. */
const DAY_SECONDS = 24 * 3600;

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

function size(v: string): number {
  try {
    return parseSize(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('kvmmu')
    .description('An executable model of the Linux KVM x86 MMU and its lockless fast page fault.')
    .exitOverride()
    .configureOutput({
      writeErr: (s) => process.stderr.write(s),
      // One line, as every other usage error: "kvmmu: <what is wrong> (see --help)".
      // (Commander puts its "Did you mean ...?" on a line of its own.)
      outputError: (s, write) => write(`kvmmu: ${s.replace(/^error: /, '').trim().replace(/\s*\n\s*/g, ' ')} (see --help)\n`),
    });

  program
    .command('run')
    .description('run a VM on real threads: vCPUs write known patterns while the host swaps, merges and migrates; then verify')
    .addOption(new Option('--mode <mode>', 'MMU mode').choices(MMU_MODES as string[]).default('direct'))
    .option('--vcpus <n>', 'vCPUs, one worker thread each', int('--vcpus', 1, 64), 2)
    .addOption(new Option('--mem <size>', 'guest memory (e.g. 64M, 1G)').argParser(size).default(64 * 1024 * 1024, fmtBytes(64 * 1024 * 1024)))
    .option('--seconds <s>', 'how long the vCPUs write before the final checks', positive('--seconds', DAY_SECONDS), 10)
    .option('--migrate', 'live-migrate by pre-copy into a destination and compare it with the source', false)
    .option('--swap', 'a host thread swaps pages out and in while the guest runs', false)
    .option('--ksm', 'a host thread merges identical pages (KSM); guest writes break them', false)
    .option('--guard <name=off>', `switch a guard off (repeatable): ${GUARD_NAMES.join(', ')}`, collect, [])
    .addOption(new Option('--fast-path <on|off>', 'the lockless fast page fault').choices(['on', 'off']).default('on'))
    .addOption(
      new Option('--indirect-fast-path <setting>', 'fast path on indirect shadow pages: pin (the seed), off (KVM today), unsafe')
        .choices(INDIRECT_FAST_PATH as string[])
        .default('pin'),
    )
    .addOption(pageMarkingOption().default('spte'))
    .addOption(
      new Option('--ad-bits <on|off>', 'A/D bits in SPTEs; off: access tracking, as KVM without EPT A/D (tdp mode)').choices(['on', 'off']).default('on'),
    )
    .option('--huge-pages', 'back guest memory with 2 MiB HugeTLB pages, mapped by huge SPTEs (direct and tdp modes; never swapped or KSM-merged)', false)
    .addOption(new Option('--eager-split <on|off>', 'split huge SPTEs when dirty logging begins (KVM eager_page_split)').choices(['on', 'off']).default('on'))
    .option('--seed <n>', 'random seed for the workload and host pressure', int('--seed', 0, 2 ** 31 - 1), 1)
    .option('--json', 'print one JSON object instead of text', false)
    .action(async (opts: RunCliOptions) => {
      process.exitCode = await runCommand(opts);
    });

  program
    .command('check')
    .description('explore the interleavings of a scenario under a controlled scheduler and report the first invariant broken (Ctrl-C: the report so far, exit 130)')
    .option('--scenario <name>', 'a built-in scenario (see kvmmu scenarios), or one in --file')
    .option('--file <path>', 'a scenario file (.ts or .js importing kvmmu/scenario)')
    .option('--all', 'every built-in scenario', false)
    .option('--guard <name=off>', `switch a guard off (repeatable): ${GUARD_NAMES.join(', ')}`, collect, [])
    .addOption(new Option('--mode <mode>', "MMU mode (default: the scenario's)").choices(MMU_MODES as string[]))
    .addOption(new Option('--indirect-fast-path <setting>', 'fast path on indirect shadow pages').choices(INDIRECT_FAST_PATH as string[]))
    .addOption(pageMarkingOption())
    .addOption(new Option('--strategy <s>', 'exploration strategy').choices(STRATEGIES as string[]).default('dpor'))
    .addOption(
      new Option(
        '--reduction <r>',
        `dpor's reduction: optimal (Optimal-DPOR, wakeup trees: begins no redundant execution; the default on one worker) or source (Source-DPOR; under --preemptions always, and on more than one worker)`,
      ).choices(REDUCTIONS as string[]),
    )
    .option('--workers <n>', 'worker threads for dpor and dfs (1: the sequential search; default: the sequential search for --split-after seconds, then, if it has not ended, Source-DPOR over the cores available, carrying on from where it stopped; with --all, every scenario given to the cores at once, side by side, each split once a core is free)', int('--workers', 1, 256))
    .option('--split-after <s>', 'without --workers: how long the sequential search runs before the check splits over the cores', positive('--split-after'), SEQUENTIAL_FIRST_SECONDS)
    .option('--queue <url>', 'redis://HOST:PORT: coordinate `kvmmu worker` processes through BullMQ (Redis) instead of threads here')
    .option('--record-jobs <file>', 'a split search: write its job tree to FILE as JSON (bench/split-sim.js replays it)')
    .option('--preemptions <k>', 'explore only schedules with at most K preemptions', int('--preemptions', 0, 1000))
    .option('--executions <n>', 'stop after N executions (random and pct: 10000 unless --seconds is given)', int('--executions', 1))
    .option('--seconds <s>', 'stop after S seconds', positive('--seconds'))
    .option('--seed <n>', 'random seed (random and pct)', int('--seed', 0, 2 ** 31 - 1), 1)
    .option('--replay <string>', 'replay a schedule printed by an earlier check')
    .addOption(
      new Option('--engine <engine>', 'gen: threads as generators on one thread (explores); threads: one worker_thread each, replaying the --replay schedule (built-in scenarios and --file)')
        .choices(['gen', 'threads'])
        .default('gen'),
    )
    .option('--json', 'print one JSON object', false)
    .action(async (opts: CheckCliOptions) => {
      process.exitCode = await checkCommand(opts);
    });

  program
    .command('worker')
    .description('take jobs of `kvmmu check --queue` runs from Redis (BullMQ) until killed: built-in scenarios, and the scenario files given here')
    .requiredOption('--queue <url>', 'redis://HOST:PORT, as given to kvmmu check --queue')
    .option('--file <path>', 'a scenario file jobs may name (by its sha256); repeatable', collect, [])
    .option('--jobs <n>', 'exit after N jobs (default: run until killed)', int('--jobs', 1))
    .action(async (opts: WorkerCliOptions) => {
      process.exitCode = await workerCommand(opts);
    });

  program
    .command('tour')
    .description('the checker finds each documented race with its guard off and none with all guards on; then a short real-thread run')
    .option('--seconds <s>', 'length of the real-thread run', positive('--seconds', DAY_SECONDS), 5)
    .action(async (opts: { seconds: number }) => {
      process.exitCode = await tourCommand(opts);
    });

  program
    .command('scenarios')
    .description("list the checker's scenarios")
    .option('--json', 'print JSON', false)
    .action((opts: { json: boolean }) => {
      process.exitCode = scenariosCommand(opts.json);
    });

  program
    .command('guards')
    .description('list the guards: the protections that can be switched off')
    .option('--json', 'print JSON', false)
    .action((opts: { json: boolean }) => {
      if (opts.json) {
        process.stdout.write(JSON.stringify(GUARD_NAMES.map((name) => ({ name, protectsAgainst: GUARD_HELP[name] }))) + '\n');
        return;
      }
      for (const n of GUARD_NAMES) process.stdout.write(`${n.padEnd(22)} ${GUARD_HELP[n]}\n`);
    });

  program
    .command('access')
    .description("kvmmu's own access.c: guest entry flags, leaf sizes, control bits and access kinds through the whole stack, each compared with the SDM")
    .addOption(
      new Option('--mode <mode>', 'MMU mode: shadow (KVM walks the guest tables), or direct / tdp (the processor walks them, two-dimensional paging)')
        .choices(MMU_MODES as string[])
        .default('shadow'),
    )
    .option('--pku', 'protection keys too: CR4.PKE, the leaf key, PKRU (9 times the space; direct and tdp only, as KVM)', false)
    .option('--dirty-log', "dirty logging on the guest's memory; the log fetched before each combination, a write must be in it", false)
    .addOption(
      new Option('--edit <how>', "who writes each combination's entries: the host (every shadow page zapped) or the guest (emulated writes, invlpg)")
        .choices(['host', 'guest'])
        .default('host'),
    )
    .option('--workers <n>', 'worker threads (default: the cores)', int('--workers', 1, 32))
    .option('--json', 'print one JSON object', false)
    .action(async (opts: AccessCliOptions) => {
      process.exitCode = await accessCommand(opts);
    });

  program
    .command('corpus')
    .description("the races KVM really had (KVM-BUGS.md) and the seed's: each found with its fix off, and exhaustive and clean with it on")
    .addOption(new Option('--mode <mode>', 'only this MMU mode').choices(MMU_MODES as string[]))
    .option('--only <id>', 'only this entry (repeatable): kvm-1 ... kvm-10, seed-1 ... seed-5', collect, [])
    .option('--kvm-only', "only KVM-BUGS.md's entries, not the seed's", false)
    .option('--seconds <s>', 'time budget of each check', positive('--seconds', DAY_SECONDS), 60)
    .option('--json', 'print a JSON array, one object per race and mode', false)
    .action((opts: CorpusCliOptions) => {
      process.exitCode = corpusCommand(opts);
    });

  registerServe(program);
  registerBench(program);

  return program;
}

interface RunCliOptions {
  mode: MmuMode;
  vcpus: number;
  mem: number;
  seconds: number;
  migrate: boolean;
  swap: boolean;
  ksm: boolean;
  guard: string[];
  fastPath: 'on' | 'off';
  indirectFastPath: IndirectFastPath;
  pageMarking: PageMarking;
  adBits: 'on' | 'off';
  hugePages: boolean;
  eagerSplit: 'on' | 'off';
  seed: number;
  json: boolean;
}

async function runCommand(o: RunCliOptions): Promise<number> {
  const guards = parseGuards(o.guard, ALL_GUARDS);
  const progress = !o.json && process.stderr.isTTY ? new ProgressLine('run', o.seconds) : null;
  const report = await runVm({
    mode: o.mode,
    vcpus: o.vcpus,
    memBytes: o.mem,
    seconds: o.seconds,
    migrate: o.migrate,
    swap: o.swap,
    ksm: o.ksm,
    guards,
    fastPath: o.fastPath === 'on',
    indirectFastPath: o.indirectFastPath,
    pageMarking: o.pageMarking,
    adBits: o.adBits === 'on',
    hugePages: o.hugePages,
    eagerSplit: o.eagerSplit === 'on',
    seed: o.seed,
    onProgress: progress === null ? undefined : (p) => progress.update(p.elapsed, `${p.passes} passes, ${p.fastFaults} fast / ${p.slowFaults} slow faults`),
  });
  progress?.done();
  process.stdout.write(o.json ? JSON.stringify(report) + '\n' : formatRunReport(report));
  return report.ok ? EXIT_OK : EXIT_FOUND;
}

export function formatRunReport(r: RunReport): string {
  const f = r.faults;
  const h = r.host;
  const lines = [
    `kvmmu run: ${r.mode} mode, ${r.vcpus} vCPU(s), ${fmtBytes(r.memBytes)} guest memory, ` +
      (r.guardsOff.length === 0 ? 'all guards on' : `guards off: ${r.guardsOff.join(', ')}`) +
      (r.pageMarking === 'fault' ? ', pages marked dirty at fault time (KVM 6.13 on)' : '') +
      (r.adBits ? '' : ', no A/D bits (access tracking)') +
      (r.hugePages ? ', 2 MiB HugeTLB pages' : ''),
    `faults:    ${f.pfFast} fast, ${f.pfSlow} slow (${f.pfLockContended} found mmu_lock taken), ${f.pfSpurious} spurious, ${f.pfRetry} retried, ` +
      `${f.pfEmulate} emulated, ${f.pfGuest} guest #PF; ${f.exits} exits, ${f.tlbFlushes} TLB flushes`,
    `guest:     ${r.workload.passes} passes, ${r.workload.writes} writes, ${r.workload.remaps} remaps`,
    `host:      ${h.swapOuts} swap-outs (${h.writebacks} written back), ${h.swapIns} swap-ins, ${h.zeroFills} zero-fills, ` +
      `${h.ksmMerges} KSM merges, ${h.cowBreaks} COW breaks, ${h.frameReuses} frames reused`,
    `mmu:       ${r.kvm.spAlloc} shadow pages allocated, ${r.kvm.spFreed} freed; ${r.kvm.remoteFlushes} remote flushes; ` +
      `${r.kvm.invalidations} notifier invalidations; ${r.kvm.emulatedPteWrites} emulated PTE writes`,
  ];
  if (r.migration !== null) {
    const m = r.migration;
    const rounds = m.pagesPerRound;
    const shown = rounds.length <= 12 ? rounds.join(', ') : `${rounds.slice(0, 6).join(', ')}, ... ${rounds.slice(-3).join(', ')}`;
    lines.push(
      `migration: ${rounds.length} rounds; pages sent per round: ${shown} (last: final round, vCPUs paused); ` +
        `downtime ${m.downtimeMs.toFixed(1)} ms; ${m.mismatches === 0 ? 'destination equals source' : `${m.mismatches} pages differ`}`,
    );
  }
  lines.push(`verdict:   ${r.ok ? 'OK' : 'LOST'}: ${r.verdict}`);
  lines.push(`wall time: ${r.wallSeconds.toFixed(2)} s`);
  return lines.join('\n') + '\n';
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  if (argv.length <= 2) {
    program.outputHelp({ error: true });
    return EXIT_USAGE;
  }
  // `kvmmu help bench dirty-log`: commander's help command takes one name; ask the subcommand itself.
  if (argv[2] === 'help' && argv.length > 4) argv = [...argv.slice(0, 2), ...argv.slice(3), '--help'];
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT_OK;
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version are not errors; commander has already printed its one-line message otherwise.
      // `kvmmu help` and --help exit 0; a command group without its subcommand (`kvmmu bench`) printed help as an error.
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return EXIT_OK;
      if (e.code === 'commander.help') return e.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
      return EXIT_USAGE;
    }
    if (e instanceof KvmmuError) {
      process.stderr.write(`kvmmu: ${e.message}\n`);
      return EXIT_USAGE;
    }
    process.stderr.write(`kvmmu: internal error: ${(e as Error).stack ?? String(e)}\n`);
    return EXIT_INTERNAL;
  }
}

if (require.main === module) {
  // Output piped into a reader that stops early (`kvmmu check --all | head`) is not an error: the rest of
  // the output goes nowhere, and the command still finishes and exits with its own status (a violation is 1).
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
  });
  void main(process.argv).then((code) => {
    process.exitCode = code;
  });
}
