// Worker-thread entry for kvmmu access: runs one part of the combinations on a VM of its own and posts the report (and progress).

import { parentPort, workerData } from 'node:worker_threads';
import { runAccessMatrix, type AccessEdit } from './access-matrix';

const { upper, edit, part, parts, keep } = workerData as { upper: boolean; edit: AccessEdit; part: number; parts: number; keep: number };
const report = runAccessMatrix({ upper, edit, part, parts, keep, onProgress: (done) => parentPort!.postMessage({ progress: done }) });
parentPort!.postMessage({ report });
