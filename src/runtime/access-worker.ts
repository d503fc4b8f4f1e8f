// Worker-thread entry for kvmmu access: runs one part of the combinations on a VM of its own and posts the report (and progress).

import { parentPort, workerData } from 'node:worker_threads';
import { runAccessMatrix, type AccessEdit, type AccessMode } from './access-matrix';

const o = workerData as { upper: boolean; mode: AccessMode; pku: boolean; dirtyLog: boolean; edit: AccessEdit; part: number; parts: number; keep: number };
const report = runAccessMatrix({ ...o, onProgress: (done) => parentPort!.postMessage({ progress: done }) });
parentPort!.postMessage({ report });
