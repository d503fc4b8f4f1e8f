// The page's side of the JSON API: typed calls to `kvmmu serve`, and errors carrying the server's message.

import type { BenchResponse, CheckReport, CheckRequest, ScenarioList, SourceResponse, StepRequest, StepResponse } from '../api-types';

export class ApiFailure extends Error {
  override readonly name = 'ApiFailure';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function call<T>(method: 'GET' | 'POST', url: string, body?: unknown): Promise<T> {
  let r: Response;
  try {
    r = await fetch(url, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiFailure(0, `the server does not answer (${(e as Error).message}): is kvmmu serve still running?`);
  }
  const json = (await r.json().catch(() => null)) as unknown;
  if (!r.ok) {
    const msg = json !== null && typeof json === 'object' && typeof (json as { error?: unknown }).error === 'string' ? (json as { error: string }).error : `HTTP ${r.status}`;
    throw new ApiFailure(r.status, msg);
  }
  return json as T;
}

/** A check's progress as the server streams it (check/explore.ts ExploreProgress). */
export interface CheckProgress {
  readonly executions: number;
  /** Of those, begun and abandoned as redundant (Source-DPOR's sleep sets). */
  readonly abandoned: number;
  readonly seconds: number;
  readonly pending: number | null;
  /** DPOR/DFS: an estimate of the executions the whole search takes, null until alternatives wait (explore.ts). */
  readonly estimate: number | null;
}

/** The user cancelled the check (the connection is closed; the server stops the check's worker). */
export class Cancelled extends Error {
  override readonly name = 'Cancelled';
}

/**
 * POST /api/check asking for progress lines (application/x-ndjson): onProgress is called while the check runs;
 * aborting `signal` closes the connection, which stops the check in the server.
 */
async function checkStream(req: CheckRequest, onProgress: (p: CheckProgress) => void, signal: AbortSignal): Promise<CheckReport> {
  let r: Response;
  try {
    r = await fetch('/api/check', { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/x-ndjson' }, body: JSON.stringify(req), signal });
  } catch (e) {
    if (signal.aborted) throw new Cancelled('the check was cancelled');
    throw new ApiFailure(0, `the server does not answer (${(e as Error).message}): is kvmmu serve still running?`);
  }
  if (!r.ok || r.body === null) {
    const json = (await r.json().catch(() => null)) as { error?: unknown } | null;
    throw new ApiFailure(r.status, typeof json?.error === 'string' ? json.error : `HTTP ${r.status}`);
  }
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (value !== undefined) buf += value;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line === '') continue;
        const m = JSON.parse(line) as { progress?: CheckProgress; report?: CheckReport; error?: string; status?: number };
        if (m.progress !== undefined) onProgress(m.progress);
        else if (m.report !== undefined) return m.report;
        else if (m.error !== undefined) throw new ApiFailure(m.status ?? 500, m.error);
      }
      if (done) throw new ApiFailure(0, 'the server closed the connection before the check ended');
    }
  } catch (e) {
    if (signal.aborted) throw new Cancelled('the check was cancelled');
    throw e;
  }
}

export const api = {
  checkStream,
  scenarios: (): Promise<ScenarioList> => call('GET', '/api/scenarios'),
  check: (req: CheckRequest): Promise<CheckReport> => call('POST', '/api/check', req),
  step: (req: StepRequest): Promise<StepResponse> => call('POST', '/api/replay', req),
  bench: (): Promise<BenchResponse> => call('GET', '/api/bench'),
  source: (fn: string): Promise<SourceResponse> => call('POST', '/api/source', { fn }),
};
