// The page's side of the JSON API: typed calls to `kvmmu serve`, and errors carrying the server's message.

import type { BenchResponse, CheckReport, CheckRequest, ScenarioList, StepRequest, StepResponse } from '../api-types';

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

export const api = {
  scenarios: (): Promise<ScenarioList> => call('GET', '/api/scenarios'),
  check: (req: CheckRequest): Promise<CheckReport> => call('POST', '/api/check', req),
  step: (req: StepRequest): Promise<StepResponse> => call('POST', '/api/replay', req),
  bench: (): Promise<BenchResponse> => call('GET', '/api/bench'),
};
