// kvmmu check --queue and kvmmu worker over a real redis-server on loopback: the verdicts of the sequential search, a worker killed mid-run, mismatches and bad URLs refused.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

const CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');
const EXAMPLE = path.join(__dirname, '..', '..', '..', 'examples', 'dirty-log-two-vcpus.ts');
const haveRedis = spawnSync('redis-server', ['--version']).status === 0;
let redis: ChildProcess | null = null;
let url = '';
const workers: ChildProcess[] = [];

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

async function until(ok: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await ok()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('timed out');
}

function startWorker(args: string[] = []): ChildProcess {
  const w = spawn(process.execPath, [CLI, 'worker', '--queue', url, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  w.stderr!.setEncoding('utf8');
  (w as ChildProcess & { log: string }).log = '';
  w.stderr!.on('data', (d: string) => ((w as ChildProcess & { log: string }).log += d));
  workers.push(w);
  return w;
}

function run(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

before(async () => {
  if (!haveRedis) return;
  const port = await freePort();
  url = `redis://127.0.0.1:${port}`;
  redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  await until(
    () =>
      new Promise((resolve) => {
        const s = net.connect(port, '127.0.0.1', () => {
          s.end();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      }),
    10_000,
  );
});

after(() => {
  for (const w of workers) if (w.exitCode === null) w.kill('SIGKILL');
  redis?.kill('SIGKILL');
});

const skip = haveRedis ? false : 'redis-server is not installed (.ci/run installs it)';

test('a coordinator and two workers give the verdict and the counterexample class of the sequential search, violating and clean', { skip }, async () => {
  startWorker();
  startWorker();
  for (const args of [['--scenario', 'dirty-bit-loss', '--guard', 'atomic-volatile-clear=off'], ['--scenario', 'lost-update'], ['--scenario', 'dirty-bit-loss']]) {
    const seq = JSON.parse((await run(['check', ...args, '--workers', '1', '--json'])).stdout) as Record<string, unknown>;
    const q = await run(['check', ...args, '--queue', url, '--json']);
    assert.ok(q.status === 0 || q.status === 1, q.stderr);
    const r = JSON.parse(q.stdout) as Record<string, unknown>;
    assert.equal(r.complete, seq.complete, args.join(' '));
    assert.equal((r.violation as { invariant: string } | null)?.invariant, (seq.violation as { invariant: string } | null)?.invariant, args.join(' '));
    assert.equal(q.status, seq.violation === null ? 0 : 1);
    assert.equal(typeof r.jobs, 'number');
  }
});

test('a worker killed mid-run loses nothing: the check completes with the sequential verdict (BullMQ hands its stalled job to the other)', { skip }, async () => {
  for (const w of workers.splice(0)) w.kill('SIGKILL');
  const a = startWorker(['--file', EXAMPLE]);
  startWorker(['--file', EXAMPLE]);
  const args = ['--file', EXAMPLE, '--preemptions', '4'];
  const seq = JSON.parse((await run(['check', ...args, '--workers', '1', '--json'])).stdout) as { executions: number; boundReached: boolean; violation: unknown };
  const pending = run(['check', ...args, '--queue', url, '--json']);
  // Kill the first worker while a job of its own is under way: one it has said it began and not that it ended.
  const log = (): string => (a as ChildProcess & { log: string }).log;
  const underWay = (): boolean => {
    const begun = [...log().matchAll(/job (\d+) of check \S+ begun/g)].map((m) => m[1]);
    return begun.some((j) => !new RegExp(`job ${j} of check \\S+ done`).test(log()));
  };
  await until(async () => underWay(), 60_000);
  const closed = new Promise((r) => a.once('close', r));
  a.kill('SIGKILL');
  await closed;
  assert.ok(underWay(), 'the kill landed between jobs');
  const q = await pending;
  assert.equal(q.status, 0, q.stderr);
  const r = JSON.parse(q.stdout) as { executions: number; boundReached: boolean; violation: unknown; complete: boolean; retried: number };
  assert.equal(r.violation, null);
  // The killed worker's job was taken again by the other (BullMQ's stalled-job retry) and counted once.
  assert.ok(r.retried >= 1, `no job was begun again: ${q.stdout.slice(0, 300)}`);
  assert.equal(r.boundReached, seq.boundReached);
  assert.equal(r.complete, false); // the bound cut schedules, as in the sequential search
});

test('a worker without the scenario file refuses its job, and the check says why; bad and unreachable Redis URLs are clear errors', { skip }, async () => {
  for (const w of workers.splice(0)) w.kill('SIGKILL');
  startWorker();
  const q = await run(['check', '--file', EXAMPLE, '--queue', url, '--seconds', '30']);
  assert.notEqual(q.status, 0);
  assert.equal(q.stdout, '');
  assert.match(q.stderr, /refused the job: the job is for scenario file dirty-log-two-vcpus\.ts with sha256 [0-9a-f]{12}…, and this worker has no such file/);
  const bad = await run(['check', '--scenario', 'lost-update', '--queue', 'http://x']);
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /give redis:\/\/HOST:PORT/);
  const port = await freePort();
  const gone = await run(['check', '--scenario', 'lost-update', '--queue', `redis://127.0.0.1:${port}`]);
  assert.notEqual(gone.status, 0);
  assert.match(gone.stderr, /cannot reach Redis at redis:\/\/127\.0\.0\.1:\d+/);
  assert.equal(gone.stdout, '');
  void os.tmpdir;
});
