// A worker thread of a parallel check (parallel.ts): loads the scenario itself, then runs the jobs its coordinator hands it.

import { parentPort, workerData } from 'node:worker_threads';
import { KvmmuError } from '../shm/errors';
import type { Job } from '../check/split';
import type { JobSink, StopRequest } from '../check/explore';
import { engineFor, loadSource, runJob, type JobMessage, type SearchSettings } from './parallel';

const { settings, flags, index } = workerData as { settings: SearchSettings; flags: Int32Array; index: number };
const port = parentPort!;
const post = (m: JobMessage | { type: 'ready' } | { type: 'fatal'; message: string }): void => port.postMessage(m);

let engine: ReturnType<typeof engineFor>;
try {
  const { gen, spec } = loadSource(settings);
  engine = engineFor(gen, spec, settings.ctx);
  post({ type: 'ready' });
} catch (e) {
  post({ type: 'fatal', message: e instanceof KvmmuError ? e.message : `a check worker could not load the scenario: ${(e as Error).message}` });
}

const stop: StopRequest = {
  get requested() {
    return Atomics.load(flags, 0) !== 0;
  },
  set requested(_v: boolean) {},
};

port.on('message', (m: { type: 'job'; job: Job; maxExecutions?: number }) => {
  const id = m.job.id;
  const sink: JobSink = {
    race: (depth, initials, add) => post({ type: 'race', job: id, depth, initials, add }),
    full: (depth, thread, access) => post({ type: 'full', job: id, depth, thread, access }),
    splitWanted: () => Atomics.load(flags, 1 + index) !== 0,
    donate: (nodes) => {
      Atomics.store(flags, 1 + index, 0);
      post({ type: 'donate', job: id, nodes });
    },
  };
  try {
    const result = runJob(engine, settings, m.job, sink, stop, (p) => post({ type: 'progress', job: id, executions: p.executions }));
    post({ type: 'done', job: id, result });
  } catch (e) {
    post({ type: 'error', job: id, message: e instanceof KvmmuError ? e.message : `a check worker failed: ${(e as Error).stack ?? (e as Error).message}` });
  }
});
