// The browser view's server: its JSON API (scenarios, check, replay and step, benchmark results), 4xx answers for bad requests, and the loopback rule.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as net from 'node:net';
import { spawnSync } from 'node:child_process';
import { isLoopbackHost, runningChecks, startServer, type RunningServer } from '../../src/web/server';
import { GUARD_NAMES } from '../../src/kvm/config';
import * as http from 'node:http';
import type { BenchResponse, CheckReport, ScenarioList, SourceResponse, StepResponse } from '../../src/web/api-types';
import { CLI, benchFixtureDir, post, request, sampleDirtyLog, startServe } from './helpers';

let server: RunningServer;
let base: string;
let benchDir: string;

before(async () => {
  benchDir = benchFixtureDir();
  server = await startServer({ port: 0, benchDir });
  base = server.url;
});

after(async () => {
  await server.close();
  fs.rmSync(benchDir, { recursive: true, force: true });
});

const OFF = ['atomic-volatile-clear'];

test('the server listens on 127.0.0.1 by default and serves the built page', async () => {
  assert.equal(server.host, '127.0.0.1');
  assert.equal(server.loopback, true);
  assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
  const page = await request(base, 'GET', '/');
  assert.equal(page.status, 200);
  assert.match(page.type, /text\/html/);
  assert.match(page.body, /<script src="app.js">/);
  const js = await request(base, 'GET', '/app.js');
  assert.equal(js.status, 200);
  assert.match(js.type, /javascript/);
});

test('the scenario list names each scenario with its description, guard, modes and threads', async () => {
  const r = await request(base, 'GET', '/api/scenarios');
  assert.equal(r.status, 200);
  const list = r.json<ScenarioList>();
  const d = list.scenarios.find((s) => s.name === 'dirty-bit-loss');
  assert.ok(d !== undefined);
  assert.equal(d.guard, 'atomic-volatile-clear');
  assert.deepEqual(d.modes, ['direct', 'shadow', 'tdp']);
  assert.deepEqual(d.threads, ['vCPU 0', 'host']);
  assert.equal(d.vm, true);
  assert.match(d.description, /Dirty bit/);
  assert.equal(list.scenarios.find((s) => s.name === 'lost-update')?.vm, false);
  assert.equal(d.fix, null);
  // A race KVM really had names the commit that fixed it.
  const real = list.scenarios.find((s) => s.name === 'tdp-volatile-xchg');
  assert.deepEqual(real?.fix, { commit: 'ba3a6120a4e7', year: 2022, title: 'KVM: x86/mmu: Use atomic XCHG to write TDP MMU SPTEs with volatile bits' });
  assert.deepEqual(real?.modes, ['tdp']);
  // Every guard, in the order kvmmu check --help lists them: the seed's five first.
  assert.deepEqual(list.guards.map((g) => g.name), GUARD_NAMES);
  assert.deepEqual(list.guards.slice(0, 5).map((g) => g.name), ['pin-indirect', 'flush-mmu-writable', 'atomic-volatile-clear', 'notifier-retry', 'lockless-walk-sync']);
  assert.ok(list.guards.every((g) => g.protectsAgainst.length > 0));
});

test('a check with atomic-volatile-clear off returns the counterexample; replaying it shows the Dirty bit set just before the plain store', async () => {
  const r = await post(base, '/api/check', { scenario: 'dirty-bit-loss', guardsOff: OFF });
  assert.equal(r.status, 200, r.body);
  const report = r.json<CheckReport>();
  assert.deepEqual(report.guards.off, OFF);
  const v = report.violation;
  assert.ok(v !== null, 'the checker finds the lost Dirty bit');
  assert.equal(v.invariant, 'frame-dirty-before-drop');

  const s = await post(base, '/api/replay', { replay: v.schedule });
  assert.equal(s.status, 200, s.body);
  const step = s.json<StepResponse>();
  assert.equal(step.rows.length, v.steps);
  assert.equal(step.states.length, v.steps + 1);
  assert.equal(step.violation?.invariant, v.invariant);
  assert.equal(step.violation?.step, v.steps);
  assert.equal(step.replay, v.schedule);
  const store = step.rows.find((row) => step.threads[row.thread] === 'host' && row.op === 'store64' && row.target.startsWith('spte'));
  assert.ok(store !== undefined, 'the host clears the SPTE with a plain store');
  const spteBefore = step.states[store.step - 1]!.sptes;
  assert.equal(spteBefore.length, 1);
  assert.equal(spteBefore[0]!.bits.D, true, 'the D bit is set before the store');
  assert.deepEqual(step.states[store.step]!.sptes, [], 'and the store drops the SPTE, D bit and all');
});

test('a replay names, for each step, the objects it touched: the operation\'s word as the thread\'s, what a monitor read as not', async () => {
  const r = await post(base, '/api/check', { scenario: 'dirty-bit-loss', guardsOff: OFF });
  const step = (await post(base, '/api/replay', { replay: r.json<CheckReport>().violation!.schedule })).json<StepResponse>();
  assert.equal(step.touches.length, step.rows.length);
  const store = step.rows.find((row) => step.threads[row.thread] === 'host' && row.op === 'store64' && row.target.startsWith('spte'))!;
  const m = /^spte \(sp (\d+), #(\d+)\)$/.exec(store.target)!;
  const id = `spte:${m[1]}:${m[2]}`;
  const own = step.touches[store.step - 1]!.find((t) => t.id === id);
  assert.deepEqual(own, { id, read: false, write: true, changed: true, thread: true }, 'a plain store writes without reading');
  // Every row whose target is that SPTE touches it as the thread's, and no other row does.
  step.rows.forEach((row, i) => {
    const t = step.touches[i]!.find((x) => x.id === id && x.thread);
    assert.equal(t !== undefined, row.target === store.target, `step ${row.step}: ${row.op} ${row.target}`);
  });
  // A load reads and does not change; frame 0x0's flags and bytes are one object.
  const load = step.rows.find((row) => row.op === 'load64' && row.target === store.target)!;
  assert.deepEqual(step.touches[load.step - 1]!.find((t) => t.id === id), { id, read: true, write: false, changed: false, thread: true });
  const frameSteps = step.rows.filter((row) => /^frame 0x0 /.test(row.target)).map((row) => row.step);
  assert.ok(frameSteps.length >= 2);
  for (const k of frameSteps) assert.ok(step.touches[k - 1]!.some((t) => t.id === 'frame:0' && t.thread), `step ${k}`);
  // The monitors' own state is never the thread's.
  assert.ok(step.touches.flat().some((t) => t.id.startsWith('ghost:')));
  assert.ok(step.touches.flat().every((t) => !t.id.startsWith('ghost:') || !t.thread));
});

test('a step request runs a schedule prefix and says which threads can run next and what they would do', async () => {
  const r = await post(base, '/api/step', { scenario: 'dirty-bit-loss', guardsOff: OFF, schedule: [], peek: true });
  assert.equal(r.status, 200, r.body);
  const s = r.json<StepResponse>();
  assert.deepEqual(s.rows, []);
  assert.equal(s.states.length, 1);
  assert.deepEqual(s.enabled, [0, 1]);
  assert.equal(s.finished, false);
  assert.equal(s.next?.length, 2);
  assert.equal(s.next![1]!.status, 'ready');
  assert.equal(s.next![1]!.op, 'lock');
  const r2 = await post(base, '/api/step', { scenario: 'dirty-bit-loss', guardsOff: OFF, schedule: '0*3,1' });
  assert.equal(r2.status, 200, r2.body);
  const s2 = r2.json<StepResponse>();
  assert.deepEqual(s2.schedule, [0, 0, 0, 1]);
  assert.equal(s2.rows.length, 4);
  assert.equal(s2.rows[3]!.thread, 1);
  assert.equal(s2.preemptions, 1);
  assert.equal(s2.replay, 'dirty-bit-loss:direct:atomic-volatile-clear:pin:0*3,1');
  assert.equal(s2.pageMarking, 'spte');
  // Page marking at fault time (KVM 6.13 on) is named in the replay string, and a replay string carries it back.
  const r3 = await post(base, '/api/step', { scenario: 'dirty-bit-loss', guardsOff: OFF, pageMarking: 'fault', schedule: '0*3,1' });
  assert.equal(r3.status, 200, r3.body);
  const s3 = r3.json<StepResponse>();
  assert.equal(s3.pageMarking, 'fault');
  assert.equal(s3.replay, 'dirty-bit-loss:direct:atomic-volatile-clear:pin:fault:0*3,1');
  const r4 = await post(base, '/api/replay', { replay: s3.replay });
  assert.equal(r4.status, 200, r4.body);
  assert.equal(r4.json<StepResponse>().pageMarking, 'fault');
});

const BAD: [string, string, unknown, number, RegExp][] = [
  ['an unknown scenario', '/api/check', { scenario: 'no-such-scenario' }, 404, /unknown scenario 'no-such-scenario'/],
  ['no scenario', '/api/check', {}, 400, /which scenario/],
  ['an unknown guard', '/api/check', { scenario: 'dirty-bit-loss', guardsOff: ['no-such-guard'] }, 400, /unknown guard 'no-such-guard'/],
  ['a mode the scenario does not run in', '/api/check', { scenario: 'wp-tlb-flush', mode: 'direct' }, 400, /runs in shadow mode, not direct/],
  ['an unknown strategy', '/api/check', { scenario: 'dirty-bit-loss', strategy: 'guess' }, 400, /unknown strategy 'guess'/],
  ['an unknown reduction', '/api/check', { scenario: 'dirty-bit-loss', reduction: 'guess' }, 400, /unknown reduction 'guess': the reductions are source, optimal/],
  ['an unknown page-marking setting', '/api/check', { scenario: 'dirty-bit-loss', pageMarking: 'later' }, 400, /unknown page-marking setting 'later'/],
  ['a replay string and a page-marking setting', '/api/replay', { replay: 'dirty-bit-loss:direct:none:pin:0', pageMarking: 'fault' }, 400, /give a replay string or 'pageMarking'/],
  ['an unknown field', '/api/check', { scenario: 'dirty-bit-loss', guards: [] }, 400, /unknown field 'guards'/],
  ['a malformed schedule string', '/api/replay', { scenario: 'dirty-bit-loss', schedule: '0*x' }, 400, /malformed schedule/],
  ['a schedule that is not thread indices', '/api/replay', { scenario: 'dirty-bit-loss', schedule: [0, 'a'] }, 400, /malformed schedule: step 2/],
  ['a malformed replay string', '/api/replay', { replay: 'dirty-bit-loss:direct' }, 400, /malformed replay string/],
  ['a replay string for an unknown scenario', '/api/replay', { replay: 'nope:direct:none:pin:0' }, 404, /unknown scenario 'nope'/],
  ['a step naming a thread that cannot run', '/api/step', { scenario: 'dirty-bit-loss', schedule: Array<number>(40).fill(1) }, 400, /thread 1 cannot run there/],
  ['a thread the scenario does not have', '/api/step', { scenario: 'dirty-bit-loss', schedule: [5] }, 400, /thread 5 cannot run there/],
  ['a schedule longer than the execution', '/api/step', { scenario: 'lost-update', schedule: [0, 0, 1, 1, 0] }, 400, /ended after 4 steps/],
];

for (const [what, url, body, status, pattern] of BAD) {
  test(`${what} gets a ${status} with a JSON error`, async () => {
    const r = await post(base, url, body);
    assert.equal(r.status, status, r.body);
    assert.match(r.type, /application\/json/);
    assert.match(r.json<{ error: string }>().error, pattern);
  });
}

test('a check whose client goes away is stopped: it does not keep a core and a place among the running checks', async () => {
  const u = new URL(base);
  // A check that would run its whole 20 s budget (plain DFS does not finish wp-tlb-flush).
  const body = JSON.stringify({ scenario: 'wp-tlb-flush', strategy: 'dfs', seconds: 20 });
  const req = http.request({ host: u.hostname, port: u.port, method: 'POST', path: '/api/check', headers: { 'content-type': 'application/json' } });
  req.on('error', () => undefined);
  req.end(body);
  const deadline = Date.now() + 10_000;
  while (runningChecks() === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.equal(runningChecks(), 1, 'the check started');
  req.destroy();
  while (runningChecks() !== 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.equal(runningChecks(), 0, 'closing the connection stopped it, long before its budget');
});

test('a client that half-closes its side after POST /api/check still gets the report', async () => {
  const body = JSON.stringify({ scenario: 'dirty-bit-loss', guardsOff: OFF });
  const reply = await new Promise<Buffer>((resolve, reject) => {
    const sock = net.connect(server.port, '127.0.0.1', () => {
      sock.write(`POST /api/check HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      // shutdown(SHUT_WR): the request is all sent; the answer is still awaited.
      sock.end();
    });
    const chunks: Buffer[] = [];
    sock.on('data', (d: Buffer) => chunks.push(d));
    sock.on('close', () => resolve(Buffer.concat(chunks)));
    sock.on('error', reject);
  });
  const split = reply.indexOf('\r\n\r\n');
  const head = reply.subarray(0, split).toString('latin1');
  assert.match(head, /^HTTP\/1\.1 200 /);
  let raw = reply.subarray(split + 4);
  if (/transfer-encoding: chunked/i.test(head)) {
    // De-chunk (sizes count bytes): size line, data, CRLF, until the size 0.
    const out: Buffer[] = [];
    for (let i = 0; ; ) {
      const eol = raw.indexOf('\r\n', i);
      const size = parseInt(raw.subarray(i, eol).toString('latin1'), 16);
      assert.ok(Number.isInteger(size), 'a chunk size');
      if (size === 0) break;
      out.push(raw.subarray(eol + 2, eol + 2 + size));
      i = eol + 2 + size + 2;
    }
    raw = Buffer.concat(out);
  }
  const text = raw.toString('utf8');
  const json = JSON.parse(text) as CheckReport;
  assert.equal(json.violation?.invariant, 'frame-dirty-before-drop');
});

test('asked for progress (Accept: application/x-ndjson), a check streams progress lines and then its report', async () => {
  const r = await request(base, 'POST', '/api/check', JSON.stringify({ scenario: 'wp-tlb-flush', strategy: 'dfs', seconds: 1 }), { accept: 'application/x-ndjson' });
  assert.equal(r.status, 200);
  assert.match(r.type, /application\/x-ndjson/);
  const lines = r.body.trim().split('\n').map((l) => JSON.parse(l) as { progress?: { executions: number; seconds: number }; report?: CheckReport });
  assert.ok(lines.length >= 2, r.body);
  const progress = lines.filter((l) => l.progress !== undefined);
  assert.ok(progress.length >= 1 && progress.every((l) => l.progress!.executions > 0));
  const last = lines[lines.length - 1]!;
  assert.equal(last.report?.strategy, 'dfs');
  assert.equal(last.report?.complete, false);
  // A bad request is still an ordinary JSON error.
  const bad = await request(base, 'POST', '/api/check', JSON.stringify({ scenario: 'nope' }), { accept: 'application/x-ndjson' });
  assert.equal(bad.status, 404);
  assert.match(bad.json<{ error: string }>().error, /unknown scenario/);
});

test('the model\'s source is served by function name, never by path', async () => {
  const r = await post(base, '/api/source', { fn: 'mmuSpteClearTrackBits' });
  assert.equal(r.status, 200, r.body);
  const d = r.json<SourceResponse>().definitions;
  assert.equal(d.length, 1);
  assert.equal(d[0]!.file, 'src/kvm/spte-update.ts');
  assert.equal(d[0]!.owner, 'SpteUpdate');
  const text = fs.readFileSync(path.join(__dirname, '..', '..', '..', d[0]!.file), 'utf8').split('\n');
  assert.deepEqual(d[0]!.lines, text.slice(d[0]!.line - 1, d[0]!.line - 1 + d[0]!.lines.length));
  assert.match(d[0]!.lines[0]!, /mmuSpteClearTrackBits\(/);
  const path1 = await post(base, '/api/source', { fn: '../../package.json' });
  assert.equal(path1.status, 400);
  assert.match(path1.json<{ error: string }>().error, /must be a function name/);
  const none = await post(base, '/api/source', { fn: 'noSuchFunction' });
  assert.equal(none.status, 404);
});

test('a body that is not JSON, or not sent as JSON, is refused with a JSON error', async () => {
  const notJson = await request(base, 'POST', '/api/check', '{scenario', { 'content-type': 'application/json' });
  assert.equal(notJson.status, 400);
  assert.match(notJson.json<{ error: string }>().error, /not JSON/);
  const form = await request(base, 'POST', '/api/check', 'scenario=dirty-bit-loss', { 'content-type': 'application/x-www-form-urlencoded' });
  assert.equal(form.status, 415);
  assert.match(form.json<{ error: string }>().error, /application\/json/);
});

test('at most two checks run at once: a third is told to come back (503); a body over 1 MB is refused (413)', async () => {
  const u = new URL(base);
  const body = JSON.stringify({ scenario: 'wp-tlb-flush', strategy: 'dfs', seconds: 20 });
  const long = [0, 1].map(() => {
    const req = http.request({ host: u.hostname, port: u.port, method: 'POST', path: '/api/check', headers: { 'content-type': 'application/json' } });
    req.on('error', () => undefined);
    req.end(body);
    return req;
  });
  try {
    const deadline = Date.now() + 10_000;
    while (runningChecks() < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(runningChecks(), 2);
    const third = await post(base, '/api/check', { scenario: 'lost-update' });
    assert.equal(third.status, 503);
    assert.match(third.json<{ error: string }>().error, /2 checks are running already/);
  } finally {
    for (const req of long) req.destroy();
  }
  const big = await request(base, 'POST', '/api/step', JSON.stringify({ scenario: 'lost-update', pad: 'x'.repeat(1_100_000) }));
  assert.equal(big.status, 413);
  assert.match(big.json<{ error: string }>().error, /over 1048576 bytes/);
  const deadline = Date.now() + 10_000;
  while (runningChecks() !== 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.equal(runningChecks(), 0);
});

test('a query parameter on the API is refused, not ignored', async () => {
  const r = await request(base, 'GET', '/api/bench?dir=/etc');
  assert.equal(r.status, 400);
  assert.match(r.json<{ error: string }>().error, /takes no query parameters/);
});

test('unknown API paths and methods get 404 and 405; paths outside the page are not served', async () => {
  assert.equal((await request(base, 'GET', '/api/nothing')).status, 404);
  assert.equal((await request(base, 'GET', '/api/check')).status, 405);
  assert.equal((await request(base, 'GET', '/../../package.json')).status, 404);
  assert.equal((await request(base, 'GET', '/%2e%2e/%2e%2e/package.json')).status, 404);
});

test('bound to loopback, the server refuses a request that names another host (DNS rebinding)', async () => {
  const r = await request(base, 'GET', '/api/scenarios', undefined, { host: 'attacker.example:80' });
  assert.equal(r.status, 403);
  assert.match(r.json<{ error: string }>().error, /loopback/);
  assert.equal((await request(base, 'GET', '/api/scenarios', undefined, { host: `localhost:${server.port}` })).status, 200);
});

test('benchmark results are read from the --bench directory; a missing or foreign file is a note, not an error', async () => {
  const r = await request(base, 'GET', '/api/bench');
  assert.equal(r.status, 200);
  const b = r.json<BenchResponse>();
  assert.equal(b.dir, path.resolve(benchDir));
  assert.equal(b.dirtyLog?.runs.length, 2);
  assert.equal(b.scale?.points.length, 8);
  assert.deepEqual(b.notes, []);

  const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-bench-empty-'));
  fs.writeFileSync(path.join(empty, 'scale.json'), JSON.stringify({ kind: 'something-else', version: 1 }));
  const s = await startServer({ port: 0, benchDir: empty });
  try {
    const e = (await request(s.url, 'GET', '/api/bench')).json<BenchResponse>();
    assert.equal(e.dirtyLog, null);
    assert.equal(e.scale, null);
    assert.equal(e.notes.length, 2);
    assert.match(e.notes.join('\n'), /dirty-log.json: not found/);
    assert.match(e.notes.join('\n'), /scale.json: not a scale result/);
    // A dirty-log.json from before the one-VM schema (version 1) is named, with what to do.
    fs.writeFileSync(path.join(empty, 'dirty-log.json'), JSON.stringify({ ...sampleDirtyLog(), version: 1 }));
    const old = (await request(s.url, 'GET', '/api/bench')).json<BenchResponse>();
    assert.equal(old.dirtyLog, null);
    assert.match(old.notes.join('\n'), /dirty-log.json: version 1; this page reads version 2 \(run kvmmu bench dirty-log --out DIR again\)/);
  } finally {
    await s.close();
    fs.rmSync(empty, { recursive: true, force: true });
  }
});

test('loopback addresses are told apart from the rest', () => {
  for (const h of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]', '::ffff:127.0.0.1', '0:0:0:0:0:0:0:1']) assert.equal(isLoopbackHost(h), true, h);
  for (const h of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.2', '::ffff:10.0.0.1', 'example.com', '128.0.0.1']) assert.equal(isLoopbackHost(h), false, h);
});

test('kvmmu serve listens on 127.0.0.1 by default, prints its URL and no warning', async () => {
  const s = await startServe(['--port', '0']);
  try {
    assert.match(s.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    assert.equal((await request(s.url, 'GET', '/api/scenarios')).status, 200);
    assert.doesNotMatch(s.stderr(), /warning/);
  } finally {
    await s.stop();
  }
});

test('kvmmu serve --host with a non-loopback address says the server is reachable from the network', async () => {
  const s = await startServe(['--port', '0', '--host', '0.0.0.0']);
  try {
    assert.match(s.url, /^http:\/\/0\.0\.0\.0:\d+\/$/);
    assert.match(s.stderr(), /warning: listening on 0\.0\.0\.0, which is not loopback: the page and its API are reachable from the network/);
    // Talk to it over loopback only.
    const port = new URL(s.url).port;
    assert.equal((await request(`http://127.0.0.1:${port}/`, 'GET', '/api/scenarios')).status, 200);
  } finally {
    await s.stop();
  }
});

test('kvmmu serve usage errors exit 2 with one line: a bad port, a port in use', async () => {
  const bad = spawnSync(process.execPath, [CLI, 'serve', '--port', '70000'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(bad.status, 2, bad.stderr);
  assert.match(bad.stderr, /--port must be from 0 to 65535/);
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', () => resolve()));
  try {
    const port = (blocker.address() as net.AddressInfo).port;
    // The port stays bound while the child runs: the kernel refuses its listen, no event loop needed here.
    const busy = spawnSync(process.execPath, [CLI, 'serve', '--port', String(port)], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(busy.status, 2, busy.stderr);
    assert.match(busy.stderr, new RegExp(`port ${port} on 127.0.0.1 is in use`));
    assert.equal(busy.stderr.trim().split('\n').length, 1, busy.stderr);
  } finally {
    blocker.close();
  }
});
