// The browser view's HTTP server (node:http): the built page from dist/web and the JSON API; loopback only unless told otherwise.
//
// API (every answer is JSON; a bad request gets a 4xx and {"error": "..."}):
//   GET  /api/scenarios        scenarios, guards, modes, strategies
//   POST /api/check            {scenario, guardsOff?, mode?, indirectFastPath?, pageMarking?, strategy?, reduction?, preemptions?, executions?, seconds?, seed?}
//                              → the checker's CheckReport (run in a worker thread); with Accept: application/x-ndjson,
//                              {"progress": ...} lines while it runs, then {"report": ...} (closing the connection cancels it)
//   POST /api/replay (/api/step) {replay} or {scenario, guardsOff?, mode?, indirectFastPath?, pageMarking?, schedule?, peek?}
//                              → runPrefix's result: rows, the state before and after every step, enabled threads, violation
//   POST /api/source           {fn} → the model's function of that name: {definitions: [{fn, file, line, lines, owner}]}
//   GET  /api/bench            dirty-log.json and scale.json from the --bench directory
//
// Bound to loopback, the server also refuses requests whose Host header is
// not a loopback name (a page elsewhere cannot reach it by DNS rebinding),
// and POSTs must be application/json (a plain form on another site cannot
// send that without a CORS preflight, which this server never grants).

import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { KvmmuError } from '../shm/errors';
import type { GenScenarioModule } from '../check/engine';
import { loadCatalog, loadGenModule, type ScenarioCatalog } from '../cli/scenario-file';
import { ApiError, CHECK_SECONDS_MAX, checkJobOf, listScenarios, readBench, sourceOf, step, type CheckJob } from './api';
import { SourceIndex } from './source';
import type { CheckWorkerReply } from './check-worker';
import type { ExploreProgress } from '../check/explore';

export interface ServeOptions {
  /** Address to listen on (default 127.0.0.1). */
  readonly host?: string;
  /** TCP port; 0 picks a free one (default 8080). */
  readonly port?: number;
  /** Where `kvmmu bench --out` wrote its results (default ./bench-out). */
  readonly benchDir?: string;
  /** The built page (default dist/web). */
  readonly webRoot?: string;
}

export interface RunningServer {
  /** http://address:port/ */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** Bound to a loopback address: reachable from this machine only. */
  readonly loopback: boolean;
  readonly server: http.Server;
  close(): Promise<void>;
}

/** The page bundle this installation built (this file is dist/src/web/server.js). */
export const DEFAULT_WEB_ROOT = path.join(__dirname, '..', '..', 'web');

/** An address that only this machine can reach: 127.0.0.0/8, ::1 (also IPv4-mapped), or the name localhost. */
export function isLoopbackHost(host: string): boolean {
  const h = host.trim().toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (net.isIPv4(h)) return h.startsWith('127.');
  if (net.isIPv6(h)) {
    if (h === '::1' || /^(0{1,4}:){7}0{0,3}1$/.test(h)) return true;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(h);
    return mapped !== null && mapped[1]!.startsWith('127.');
  }
  return false;
}

const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
};

const MAX_BODY = 1 << 20;

const JSON_HEADERS = { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' };

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { ...JSON_HEADERS, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req: http.IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') {
      req.resume();
      reject(new ApiError(415, `send the request body as application/json, not ${type === '' ? 'nothing' : type}`));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY && !failed) {
        failed = true;
        reject(new ApiError(413, `the request body is over ${MAX_BODY} bytes`));
      }
      if (!failed) chunks.push(c);
    });
    req.on('end', () => {
      if (failed) return;
      const text = Buffer.concat(chunks).toString('utf8');
      try {
        resolve(text.trim() === '' ? {} : (JSON.parse(text) as unknown));
      } catch (e) {
        reject(new ApiError(400, `the request body is not JSON: ${(e as Error).message}`));
      }
    });
    req.on('error', reject);
  });
}

/** Checks running now, each on its own worker thread (and core). */
let running = 0;

/** For tests: how many checks are running now. */
export function runningChecks(): number {
  return running;
}
const MAX_RUNNING_CHECKS = 2;

/**
 * Run one check in a worker thread; it is stopped if it runs past its budget by
 * more than a margin, or when `gone` fires (the client closed the connection:
 * nobody is waiting for the answer, and the check would hold a core and one of
 * the MAX_RUNNING_CHECKS places for up to its whole budget).
 */
function checkInWorker(job: CheckJob, gone: AbortSignal, onProgress?: (p: ExploreProgress) => void): Promise<unknown> {
  if (running >= MAX_RUNNING_CHECKS) return Promise.reject(new ApiError(503, `${running} checks are running already: try again when one has finished`));
  if (gone.aborted) return Promise.reject(new ApiError(499, 'the client closed the connection'));
  running++;
  return new Promise<unknown>((resolve, reject) => {
    const worker = new Worker(path.join(__dirname, 'check-worker.js'), { workerData: job });
    const limit = ((job.options.seconds ?? CHECK_SECONDS_MAX) + 30) * 1000;
    const stop = (why: ApiError): void => {
      clearTimeout(timer);
      void worker.terminate();
      reject(why);
    };
    const timer = setTimeout(() => stop(new ApiError(503, `the check ran past its ${job.options.seconds} s budget and was stopped`)), limit);
    gone.addEventListener('abort', () => stop(new ApiError(499, 'the client closed the connection')), { once: true });
    worker.on('message', (m: CheckWorkerReply) => {
      if ('progress' in m) {
        onProgress?.(m.progress);
        return;
      }
      clearTimeout(timer);
      void worker.terminate();
      if (m.ok) resolve(m.report);
      else reject(m.user ? new ApiError(400, m.error) : new Error(m.error));
    });
    worker.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    // A worker that dies without answering (out of memory, say) must not leave the request hanging; after an answer this is a no-op.
    worker.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the check's worker thread exited (code ${code}) without a report`));
    });
  }).finally(() => running--);
}

/**
 * POST /api/check's plain answer. A client may half-close its side once the request is sent (shutdown(SHUT_WR):
 * `curl` does not, `nc -N` and some libraries do) and still wait for the answer; one that closes the
 * connection has gone away, and its check must stop. Both look the same to the server, an end of the request
 * stream (FIN); only a write tells them apart (a closed peer answers it with RST). So from that moment the answer
 * starts early: status 200 and its headers, then a space (JSON allows white space before a value) every 250 ms
 * until the report. A client that went away fails the next write, and its check is stopped; one that half-closed
 * gets the report, or, if the check fails after the status was sent, {"error": ...} under status 200.
 */
async function answerCheck(req: http.IncomingMessage, res: http.ServerResponse, job: CheckJob, gone: AbortSignal): Promise<void> {
  let beat: NodeJS.Timeout | undefined;
  const onEnd = (): void => {
    if (res.headersSent || res.destroyed) return;
    res.writeHead(200, JSON_HEADERS);
    const space = (): void => {
      if (!res.destroyed) res.write(' ');
    };
    space();
    beat = setInterval(space, 250);
  };
  if (req.socket.readableEnded) onEnd();
  else req.socket.once('end', onEnd);
  try {
    const report = await checkInWorker(job, gone);
    if (res.headersSent) res.end(JSON.stringify(report));
    else sendJson(res, 200, report);
  } catch (e) {
    if (!res.headersSent || res.destroyed) throw e;
    res.end(JSON.stringify({ error: e instanceof ApiError ? e.message : `internal error: ${(e as Error).message}` }));
  } finally {
    clearInterval(beat);
    req.socket.off('end', onEnd);
  }
}

/** The client asked for progress lines (`Accept: application/x-ndjson`). */
function wantsStream(req: http.IncomingMessage): boolean {
  return (req.headers.accept ?? '').split(',').some((t) => t.split(';')[0]!.trim().toLowerCase() === 'application/x-ndjson');
}

/**
 * POST /api/check with `Accept: application/x-ndjson`: one JSON object a line, {"progress": {executions, abandoned,
 * seconds, pending, estimate}} while the check runs (about five a second), then {"report": ...} or {"error": "...", "status": N}.
 * Errors found before the check starts (a bad request, no free place) are ordinary JSON answers.
 */
async function streamCheck(res: http.ServerResponse, job: CheckJob, gone: AbortSignal): Promise<void> {
  if (running >= MAX_RUNNING_CHECKS) throw new ApiError(503, `${running} checks are running already: try again when one has finished`);
  res.writeHead(200, { 'content-type': 'application/x-ndjson; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
  const line = (v: unknown): void => {
    if (!res.destroyed) res.write(`${JSON.stringify(v)}\n`);
  };
  try {
    line({ report: await checkInWorker(job, gone, (progress) => line({ progress })) });
  } catch (e) {
    if (e instanceof ApiError) line({ error: e.message, status: e.status });
    else line({ error: `internal error: ${(e as Error).message}`, status: 500 });
  }
  res.end();
}

function serveStatic(root: string, urlPath: string, res: http.ServerResponse): void {
  let rel: string;
  try {
    rel = decodeURIComponent(urlPath);
  } catch {
    sendJson(res, 400, { error: 'malformed path' });
    return;
  }
  if (rel === '/' || rel === '') rel = '/index.html';
  const file = path.resolve(root, '.' + rel);
  if (!file.startsWith(root + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
    sendJson(res, 404, { error: `no such page: ${urlPath}` });
    return;
  }
  res.writeHead(200, {
    'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
    'cache-control': 'no-cache',
    'x-content-type-options': 'nosniff',
    'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'",
  });
  fs.createReadStream(file).pipe(res);
}

function hostAllowed(header: string | undefined): boolean {
  if (header === undefined) return false;
  const name = header.startsWith('[') ? header.slice(0, header.indexOf(']') + 1) : header.replace(/:\d+$/, '');
  return isLoopbackHost(name);
}

interface Handlers {
  readonly gen: GenScenarioModule;
  readonly source: SourceIndex;
  readonly catalog: ScenarioCatalog;
  readonly benchDir: string;
  readonly webRoot: string;
  readonly loopback: () => boolean;
}

async function handle(h: Handlers, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const method = req.method ?? 'GET';
  if (h.loopback() && !hostAllowed(req.headers.host)) {
    sendJson(res, 403, { error: `this server answers only to a loopback name (localhost, 127.0.0.1, [::1]), not ${req.headers.host ?? 'no Host header'}` });
    return;
  }
  if (!url.pathname.startsWith('/api/')) {
    if (method !== 'GET' && method !== 'HEAD') {
      sendJson(res, 405, { error: `${method} is not allowed here` });
      return;
    }
    serveStatic(h.webRoot, url.pathname, res);
    return;
  }
  const route = `${method} ${url.pathname}`;
  try {
    // Every setting goes in a JSON body; a query parameter would be ignored, so say so instead.
    if (url.search !== '') throw new ApiError(400, `the API takes no query parameters (${url.search}); send settings as a JSON body`);
    switch (route) {
      case 'GET /api/scenarios':
        sendJson(res, 200, listScenarios(h.catalog));
        return;
      case 'GET /api/bench':
        sendJson(res, 200, readBench(h.benchDir));
        return;
      case 'POST /api/check': {
        const job = checkJobOf(h.catalog, await readBody(req));
        const gone = new AbortController();
        res.once('close', () => {
          if (!res.writableFinished) gone.abort();
        });
        if (wantsStream(req)) await streamCheck(res, job, gone.signal);
        else await answerCheck(req, res, job, gone.signal);
        return;
      }
      case 'POST /api/replay':
      case 'POST /api/step':
        sendJson(res, 200, step(h.gen, h.catalog, await readBody(req)));
        return;
      case 'POST /api/source':
        sendJson(res, 200, sourceOf(h.source, await readBody(req)));
        return;
      default: {
        const known = ['/api/scenarios', '/api/bench', '/api/check', '/api/replay', '/api/step', '/api/source'];
        if (known.includes(url.pathname)) sendJson(res, 405, { error: `${method} is not allowed on ${url.pathname}` });
        else sendJson(res, 404, { error: `no such API: ${url.pathname} (the API is ${known.join(', ')})` });
      }
    }
  } catch (e) {
    if (res.destroyed) return; // the client is gone: no one to answer
    if (e instanceof ApiError) sendJson(res, e.status, { error: e.message });
    else sendJson(res, 500, { error: `internal error: ${(e as Error).message}` });
  }
}

/** Start the server; resolves once it listens. Errors a user can cause (port in use, no such address, page not built) are KvmmuErrors. */
export async function startServer(o: ServeOptions = {}): Promise<RunningServer> {
  const host = o.host ?? '127.0.0.1';
  const port = o.port ?? 8080;
  const webRoot = path.resolve(o.webRoot ?? DEFAULT_WEB_ROOT);
  if (!fs.existsSync(path.join(webRoot, 'index.html'))) throw new KvmmuError(`the page is not built (${path.join(webRoot, 'index.html')} is missing): run npm run build`);
  let loopback = isLoopbackHost(host);
  const handlers: Handlers = {
    gen: loadGenModule(),
    // The project's root (this file is dist/src/web/server.js): the model's TypeScript is in its src directory.
    source: new SourceIndex(path.join(__dirname, '..', '..', '..')),
    catalog: loadCatalog(),
    benchDir: path.resolve(o.benchDir ?? 'bench-out'),
    webRoot,
    loopback: () => loopback,
  };
  const server = http.createServer((req, res) => {
    handle(handlers, req, res).catch((e: unknown) => {
      if (!res.headersSent) sendJson(res, 500, { error: `internal error: ${(e as Error).message}` });
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 2000;
  // A client that half-closes its side after sending a request (shutdown(SHUT_WR), as `nc -N` and some HTTP
  // libraries do) still waits for the answer; by default Node would drop the request and close the socket
  // (lib/_http_server.js socketOnEnd reads this flag; @types/node does not declare it).
  (server as http.Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EADDRINUSE') reject(new KvmmuError(`port ${port} on ${host} is in use: pick another with --port (0 picks a free one)`));
      else if (e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN')
        reject(new KvmmuError(`cannot listen on ${host}: it is not an address of this machine`));
      else if (e.code === 'EACCES') reject(new KvmmuError(`not allowed to listen on port ${port}: pick one above 1023 with --port`));
      else reject(e);
    });
    server.listen(port, host, () => resolve());
  });
  const addr = server.address() as net.AddressInfo;
  // The name may resolve anywhere: what counts is the address actually bound.
  loopback = isLoopbackHost(addr.address);
  const shown = addr.family === 'IPv6' || addr.address.includes(':') ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${shown}:${addr.port}/`,
    host: addr.address,
    port: addr.port,
    loopback,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
