// Test helpers for the browser view: benchmark fixture files, `kvmmu serve` in a child process, HTTP calls, and Debian's Chromium through playwright-core.

import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import type { BrowserContext } from 'playwright-core';
import type { DirtyLogBench, ScaleBench } from '../../src/web/api-types';

export const CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');
export const CHROMIUM = '/usr/bin/chromium';

/** Sample results in the shape `kvmmu bench` writes (made-up numbers, for tests and the README's screenshot). */
export function sampleDirtyLog(): DirtyLogBench {
  const iterations = (dirty: number[]): { dirtySeconds: number; getSeconds: number; clearSeconds: number | null }[] =>
    dirty.map((d, i) => ({ dirtySeconds: d, getSeconds: 0.0041 + i * 0.0001, clearSeconds: 0.0032 }));
  return {
    kind: 'dirty-log',
    version: 2,
    config: { vcpus: 2, bytesPerVcpu: 64 * 1024 * 1024, iterations: 5, mode: 'direct', fastPath: 'both', clearDirtyLog: true, pageMarking: 'spte' },
    phases: { populateSeconds: 0.412, enableSeconds: 0.0009, disableSeconds: 0.0011 },
    populateFaults: { fast: 0, slow: 32768, spurious: 0, lockContended: 6144 },
    runs: [
      { fastPath: true, iterations: iterations([0.201, 0.118, 0.121, 0.117, 0.119]), faults: { fast: 131072, slow: 0, spurious: 12, lockContended: 0 } },
      { fastPath: false, iterations: iterations([0.205, 0.231, 0.236, 0.229, 0.233]), faults: { fast: 0, slow: 163840, spurious: 9, lockContended: 24576 } },
    ],
    ratio: { slowOverFast: { min: 1.89, median: 1.96, max: 2.02 }, medianInterval: { low: 1.89, high: 2.02, coverage: 0.875 } },
    floor: { nsPerOp: 38.5, fastFaultNs: 610, multiple: 15.8, handlerNs: { fastPathOn: 640, fastPathOff: 1450 } },
    bookkeeping: { bytes: 1_351_680, guestBytes: 128 * 1024 * 1024, share: 0.01007, byKind: { 'shadow pages': 1_064_960, rmaps: 262_144, 'dirty bitmaps': 4096, tlbs: 16_384, vcpus: 4096 } },
    machine: { cpus: 2, node: 'v20.20.2' },
  };
}

export function sampleScale(): ScaleBench {
  const trial = (k: number): ScaleBench['points'][number][] => {
    const points: ScaleBench['points'][number][] = [];
    for (const vcpus of [1, 2, 3, 4]) {
      const f = 1 + 0.03 * k * (vcpus - 1);
      points.push({ vcpus, fastPath: true, pagesPerSecond: Math.round(140_000 * Math.min(vcpus, 2) * (vcpus > 2 ? 0.9 : 1) * f), redirtySeconds: (0.117 * (vcpus > 2 ? vcpus / 2 : 1)) / f, slowFaults: 0, lockContended: 0 });
      points.push({ vcpus, fastPath: false, pagesPerSecond: Math.round(70_000 * Math.min(vcpus, 2) * (vcpus > 2 ? 0.85 : 1)), redirtySeconds: 0.233 * (vcpus > 2 ? vcpus / 2 : 1), slowFaults: vcpus * 16384 * 4, lockContended: (vcpus - 1) * 8192 * 4 });
    }
    return points;
  };
  const trials = [0, -1, 1].map((k) => ({ points: trial(k) }));
  return {
    kind: 'scale',
    version: 2,
    config: { maxVcpus: 4, bytesPerVcpu: 64 * 1024 * 1024, mode: 'direct', pageMarking: 'spte', trials: 3 },
    points: trial(0).map((p) => ({ ...p, slowFaults: p.slowFaults * 3, lockContended: p.lockContended * 3 })),
    gain: { fastPathOn: { min: 1.6, median: 1.8, max: 1.98 }, fastPathOff: { min: 1.7, median: 1.7, max: 1.7 } },
    trials,
    machine: { cpus: 2, node: 'v20.20.2' },
  };
}

/** A fresh directory holding dirty-log.json and scale.json. */
export function benchFixtureDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-bench-'));
  fs.writeFileSync(path.join(dir, 'dirty-log.json'), JSON.stringify(sampleDirtyLog(), null, 2));
  fs.writeFileSync(path.join(dir, 'scale.json'), JSON.stringify(sampleScale(), null, 2));
  return dir;
}

export interface ServeProcess {
  readonly url: string;
  readonly child: ChildProcess;
  stderr(): string;
  stop(): Promise<void>;
}

/** Run `kvmmu serve ARGS` and wait until it prints its URL (or exits). */
export function startServe(args: string[], timeoutMs = 20_000): Promise<ServeProcess> {
  const child = spawn(process.execPath, [CLI, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const stop = (): Promise<void> =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`kvmmu serve printed no URL in ${timeoutMs} ms; stdout: ${out} stderr: ${err}`));
    }, timeoutMs);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /(http:\/\/\S+\/)/.exec(out);
      if (m !== null) {
        clearTimeout(timer);
        resolve({ url: m[1]!, child, stderr: () => err, stop });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`kvmmu serve exited with ${code}; stdout: ${out} stderr: ${err}`));
    });
  });
}

export interface Reply {
  readonly status: number;
  readonly type: string;
  readonly body: string;
  json<T = Record<string, unknown>>(): T;
}

/** One HTTP request (to a loopback server only). */
export function request(base: string, method: string, urlPath: string, body?: string, headers: Record<string, string> = {}): Promise<Reply> {
  const u = new URL(base);
  if (!/^(127\.|localhost$|\[::1\]$)/.test(u.hostname)) throw new Error(`tests only talk to loopback, not ${u.hostname}`);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: u.hostname, port: u.port, method, path: urlPath, headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body: text, json: <T>() => JSON.parse(text) as T }),
        );
      },
    );
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

export const post = (base: string, urlPath: string, body: unknown): Promise<Reply> => request(base, 'POST', urlPath, JSON.stringify(body));

/** Debian's Chromium, headless, kept off the network, with a fresh profile. Never downloads a browser. */
export async function launchChromium(): Promise<{ context: BrowserContext; close: () => Promise<void> }> {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium); .ci/run does this`);
  const { chromium } = await import('playwright-core');
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
  });
  return {
    context,
    close: async () => {
      await context.close();
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}
