// Worker-thread entry for kvmmu access: runs one part of the combinations on a VM of its own and posts the report (and progress).

import { parentPort, workerData } from 'node:worker_threads';
import { runAccessMatrix } from './access-matrix';

const { upper, part, parts, keep } = workerData as { upper: boolean; part: number; parts: number; keep: number };
const report = runAccessMatrix({ upper, part, parts, keep, onProgress: (done) => parentPort!.postMessage({ progress: done }) });
parentPort!.postMessage({ report });
