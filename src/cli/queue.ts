// The split search over Redis with BullMQ: `kvmmu check --queue` coordinates, `kvmmu worker --queue` processes take the jobs.

import { KvmmuError } from '../shm/errors';
import type { ParallelOptions, ParallelResult, SearchSettings } from './parallel';

export async function exploreOnQueue(url: string, _s: SearchSettings, _threads: number, _o: ParallelOptions): Promise<ParallelResult> {
  throw new KvmmuError(`--queue ${url}: not yet`);
}
