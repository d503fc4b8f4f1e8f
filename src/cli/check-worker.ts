// A worker thread of a parallel check (parallel.ts's CheckPool): loads each scenario it is told to once, then runs the jobs its pool hands it.

import { parentPort, workerData } from 'node:worker_threads';
import { KvmmuError } from '../shm/errors';
import type { Job } from '../check/split';
import type { JobSink, StopRequest } from '../check/explore';
import { engineFor, loadSource, runJob, type JobMessage, type SearchSettings } from './parallel';

const { flags, index, size } = workerData as { flags: Int32Array; index: number; size: number };
const port = parentPort!;
const post = (m: JobMessage | { type: 'ready'; key: string }): void => port.postMessage(m);

/** The scenarios this worker has loaded, by settings key (a pool runs many checks), or why one could not be. */
const engines = new Map<string, { engine: ReturnType<typeof engineFor>; settings: SearchSettings } | { error: string }>();

// flags[index]: give work away; flags[size + index]: stop this job (its search is over or interrupted).
const stop: StopRequest = {
  get requested() {
    return Atomics.load(flags, size + index) !== 0;
  },
  set requested(_v: boolean) {},
};

type Message = { type: 'load'; key: string; settings: SearchSettings } | { type: 'job'; key: string; job: Job; maxExecutions?: number };

port.on('message', (m: Message) => {
  if (m.type === 'load') {
    try {
      const { gen, spec } = loadSource(m.settings);
      engines.set(m.key, { engine: engineFor(gen, spec, m.settings.ctx), settings: m.settings });
    } catch (e) {
      engines.set(m.key, { error: e instanceof KvmmuError ? e.message : `a check worker could not load the scenario: ${(e as Error).message}` });
    }
    post({ type: 'ready', key: m.key });
    return;
  }
  const id = m.job.id;
  const loaded = engines.get(m.key);
  if (loaded === undefined || 'error' in loaded) {
    post({ type: 'error', job: id, message: loaded?.error ?? 'a check worker was given a job for a scenario it has not loaded' });
    return;
  }
  const sink: JobSink = {
    race: (depth, initials, add) => post({ type: 'race', job: id, depth, initials, add }),
    full: (depth, thread, access) => post({ type: 'full', job: id, depth, thread, access }),
    splitWanted: () => Atomics.load(flags, index) !== 0,
    donate: (nodes) => {
      Atomics.store(flags, index, 0);
      post({ type: 'donate', job: id, nodes });
    },
  };
  try {
    const result = runJob(loaded.engine, loaded.settings, m.job, sink, stop, (p) => post({ type: 'progress', job: id, executions: p.executions }));
    post({ type: 'done', job: id, result });
  } catch (e) {
    post({ type: 'error', job: id, message: e instanceof KvmmuError ? e.message : `a check worker failed: ${(e as Error).stack ?? (e as Error).message}` });
  }
});
