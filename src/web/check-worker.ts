// A worker thread that runs one check for the server, so a long exploration does not stop the server answering.

import { parentPort, workerData } from 'node:worker_threads';
import { KvmmuError } from '../shm/errors';
import { runCheck } from '../check/check';
import { findScenario, loadCatalog, loadGenModule } from '../cli/scenario-file';
import type { ExploreProgress } from '../check/explore';
import type { CheckJob } from './api';

/** What the worker posts: progress while it explores (about five times a second), then the report, or the error that stopped it. */
export type CheckWorkerReply =
  | { readonly progress: ExploreProgress }
  | { readonly ok: true; readonly report: unknown }
  /** `user`: a KvmmuError (the request's fault), else an internal error. */
  | { readonly ok: false; readonly error: string; readonly user: boolean };

function run(job: CheckJob): CheckWorkerReply {
  try {
    const spec = findScenario(loadCatalog(), job.scenario);
    const onProgress = (progress: ExploreProgress): void => parentPort?.postMessage({ progress } satisfies CheckWorkerReply);
    return { ok: true, report: runCheck(loadGenModule(), spec, { ...job.options, onProgress }) };
  } catch (e) {
    return { ok: false, error: (e as Error).message, user: e instanceof KvmmuError };
  }
}

if (parentPort !== null) {
  // Stay alive (a listener keeps the port referenced) until the server terminates this thread on reading the reply:
  // then an 'exit' the server sees before a reply means the thread died.
  parentPort.on('message', () => undefined);
  parentPort.postMessage(run(workerData as CheckJob));
}
