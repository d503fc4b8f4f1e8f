// End to end in Debian's Chromium: replay the lost Dirty bit step by step, play the scheduler through the same race by clicks, see the API's errors on the page, chart benchmark results.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import type { BrowserContext, Page } from 'playwright-core';
import type { StepResponse } from '../../src/web/api-types';
import { decodeReplay } from '../../src/check/trace';
import { benchFixtureDir, launchChromium, post, startServe, type ServeProcess } from './helpers';

/** The little of the DOM that the functions run in the page use (this file compiles without the DOM library; the page's CSP forbids string evaluation). */
declare const document: {
  querySelector(selector: string): { textContent: string | null } | null;
  querySelectorAll(selector: string): { length: number };
  documentElement: { scrollWidth: number; clientWidth: number };
};

let serve: ServeProcess;
let browser: { context: BrowserContext; close: () => Promise<void> };
let page: Page;
let benchDir: string;
const pageErrors: string[] = [];

before(async () => {
  benchDir = benchFixtureDir();
  serve = await startServe(['--port', '0', '--bench', benchDir]);
  browser = await launchChromium();
  page = await browser.context.newPage();
  page.setDefaultTimeout(15_000);
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // Console errors count too, except the browser's own line for an answer the tests provoke on purpose (a 4xx).
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of 4\d\d/.test(m.text())) pageErrors.push(`console: ${m.text()}`);
  });
  await page.goto(serve.url);
  await page.waitForSelector('body.ready');
});

after(async () => {
  await browser?.close();
  await serve?.stop();
  fs.rmSync(benchDir, { recursive: true, force: true });
});

async function noHorizontalScroll(p: Page): Promise<void> {
  const [scroll, client] = await p.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
  assert.ok(scroll <= client, `the page scrolls sideways at 1280x800: ${scroll} > ${client}`);
}

/** Wait until the play view says it ran n steps. */
async function waitForPlayStep(n: number): Promise<void> {
  await page.waitForFunction((k) => (document.querySelector('#p-status')?.textContent ?? '').startsWith(`step ${k} `), n);
}

async function stepLabel(): Promise<string> {
  return (await page.textContent('#step-label')) ?? '';
}

/** The counterexample the page loaded, as the API reports it (to know which step is the plain store). */
let counterexample: StepResponse;

test('replay: with atomic-volatile-clear off the check finds the race, and stepping shows the Dirty bit lost at the plain store', async () => {
  await page.selectOption('#scenario', 'dirty-bit-loss');
  await page.uncheck('#guard-atomic-volatile-clear');
  assert.equal(await page.isChecked('#guard-pin-indirect'), true);
  await page.click('#run-check');
  await page.waitForFunction(() => /^step 0 \/ [1-9]\d*$/.test(document.querySelector('#step-label')?.textContent ?? ''));
  assert.match((await page.textContent('#check-summary')) ?? '', /VIOLATION of frame-dirty-before-drop/);
  const replay = await page.inputValue('#replay-string');
  assert.match(replay, /^dirty-bit-loss:direct:atomic-volatile-clear:pin:/);
  counterexample = (await post(serve.url, '/api/replay', { replay })).json<StepResponse>();
  const n = counterexample.rows.length;
  assert.equal(await stepLabel(), `step 0 / ${n}`);
  assert.equal(await page.locator('#r-trace .th').count(), 3, 'a step-number column and one column per thread');

  // Step with the keyboard to the host's plain store into the SPTE.
  const store = counterexample.rows.find((r) => counterexample.threads[r.thread] === 'host' && r.op === 'store64' && r.target.startsWith('spte'))!;
  assert.ok(store !== undefined);
  for (let k = 0; k < store.step; k++) await page.keyboard.press('ArrowRight');
  assert.equal(await stepLabel(), `step ${store.step} / ${n}`);
  const current = page.locator('#r-trace .cell.current:not(.empty)');
  assert.match((await current.textContent()) ?? '', /store64 spte/);
  assert.equal(await current.getAttribute('data-thread'), '1', "the highlighted operation is in the host's column");
  // The SPTE this step touches: D set before, gone after.
  const spte = page.locator('#r-state .spte.touched');
  assert.match((await spte.locator('.spte-before [data-bit="D"]').getAttribute('class')) ?? '', /\bon\b/, 'the D bit is set before the plain store');
  assert.equal(await spte.locator('.spte-before [data-bit="D"]').textContent(), '1');
  assert.match((await spte.locator('.spte-before [data-bit="W"]').getAttribute('class')) ?? '', /\bon\b/);
  assert.match((await spte.locator('.spte-after').textContent()) ?? '', /not present/);
  assert.match((await page.textContent('#r-monitor')) ?? '', /Every invariant holds so far/);
  await noHorizontalScroll(page);

  // Step back and forth: the state follows.
  await page.keyboard.press('ArrowLeft');
  assert.equal(await stepLabel(), `step ${store.step - 1} / ${n}`);
  await page.keyboard.press('ArrowRight');

  // On to the violation: the monitor shows the broken invariant at the step where it first holds false.
  const v = counterexample.violation!;
  for (let k = store.step; k < v.step - 1; k++) await page.keyboard.press('ArrowRight');
  assert.doesNotMatch((await page.textContent('#r-monitor')) ?? '', /Invariant broken/);
  await page.keyboard.press('ArrowRight');
  assert.equal(await stepLabel(), `step ${v.step} / ${n}`);
  const monitor = (await page.textContent('#r-monitor')) ?? '';
  assert.match(monitor, new RegExp(`Invariant broken at step ${v.step}: frame-dirty-before-drop`));
  assert.ok(monitor.includes(v.message), monitor);
  assert.match(v.message, /the guest's write is lost/);

  // Space plays from the start and pauses.
  await page.keyboard.press('Home');
  await page.keyboard.press(' ');
  await page.waitForFunction(() => (document.querySelector('#step-label')?.textContent ?? '').startsWith('step 1 '));
  await page.keyboard.press(' ');
  assert.equal(await page.textContent('#r-play'), '▶ Play');
});

test('play the scheduler: clicking the threads in the order of the checker’s schedule finds the race', async () => {
  const schedule = decodeReplay(counterexample.replay).schedule;
  await page.click('#tabs [data-view="play"]');
  await page.waitForSelector('#p-threads button.run-thread[data-thread="0"]:not([disabled])');
  assert.equal(await page.isChecked('#guard-atomic-volatile-clear'), false, 'the same settings');
  assert.match((await page.textContent('#p-monitor')) ?? '', /every invariant holds so far/);
  for (let k = 0; k < schedule.length; k++) {
    await page.click(`#p-threads button.run-thread[data-thread="${schedule[k]}"]`);
    await waitForPlayStep(k + 1);
    if (k < schedule.length - 1) assert.equal(await page.locator('#race-found').count(), 0, `no race reported after step ${k + 1}`);
  }
  const found = (await page.textContent('#race-found')) ?? '';
  assert.match(found, /You found the race!/);
  assert.match(found, /frame-dirty-before-drop/);
  assert.equal(await page.locator('#p-threads button.run-thread:not([disabled])').count(), 0, 'nothing can run after the race');
  await noHorizontalScroll(page);

  // The checker's shortest schedule, to compare.
  await page.click('#p-compare-btn');
  await page.waitForSelector('#p-open-checker');
  assert.match((await page.textContent('#p-compare')) ?? '', new RegExp(`${schedule.length} steps`));

  // Undo takes the last step back: the race is gone again.
  await page.keyboard.press('ArrowLeft');
  await waitForPlayStep(schedule.length - 1);
  assert.equal(await page.locator('#race-found').count(), 0);
});

test('a bad request shows the server’s error on the page', async () => {
  await page.click('#tabs [data-view="replay"]');
  await page.fill('#replay-string', 'dirty-bit-loss:direct:no-such-guard:pin:0');
  await page.click('#load-replay');
  await page.waitForSelector('#error:not([hidden])');
  assert.match((await page.textContent('#error-text')) ?? '', /unknown guard 'no-such-guard'/);
  assert.equal(await page.textContent('#check-summary'), 'The replay string did not load.');
  await page.click('#error-close');
});

test('a replay string with a setting besides the guards (indirect fast path unsafe) shows it in the settings bar, and the check runs with it', async () => {
  await page.click('#tabs [data-view="replay"]');
  // The checker's counterexample for aba-gfn-pfn with the fast path fixing indirect pages unpinned.
  const found = (await post(serve.url, '/api/check', { scenario: 'aba-gfn-pfn', indirectFastPath: 'unsafe' })).json<{ violation: { schedule: string } }>();
  assert.match(found.violation.schedule, /^aba-gfn-pfn:shadow:none:unsafe:/);
  await page.fill('#replay-string', found.violation.schedule);
  await page.click('#load-replay');
  await page.waitForFunction(() => (document.querySelector('#check-summary')?.textContent ?? '').startsWith('pasted:'));
  assert.match((await page.textContent('#check-summary')) ?? '', /VIOLATION of writable-spte-logged/);
  assert.equal(await page.inputValue('#indirect-fast-path'), 'unsafe');
  assert.equal(await page.inputValue('#page-marking'), 'spte');
  assert.match(await page.evaluate(() => (globalThis as unknown as { location: { hash: string } }).location.hash), /ifp=unsafe/);
  await page.click('#run-check');
  await page.waitForFunction(() => /^dpor: .*VIOLATION of writable-spte-logged/.test(document.querySelector('#check-summary')?.textContent ?? ''));
  // Back to the seed's setting: the same scenario is clean.
  await page.selectOption('#indirect-fast-path', 'pin');
  await page.click('#run-check');
  await page.waitForFunction(() => /^dpor: .*no violation: every schedule was explored/.test(document.querySelector('#check-summary')?.textContent ?? ''));
});

test('benchmarks: the view charts the results from --bench', async () => {
  await page.click('#tabs [data-view="bench"]');
  await page.waitForSelector('#bench-dirty-log');
  await page.waitForFunction(() => document.querySelectorAll('#view-bench canvas').length === 4);
  assert.match((await page.textContent('#bench-ratio')) ?? '', /1\.96×/);
  assert.equal(await page.textContent('#bench-ratio-interval'), 'median within 1.89–2.02× (88% interval)');
  assert.match((await page.textContent('#bench-handler')) ?? '', /640 ns with the fast path, 1450 ns without/);
  assert.match((await page.textContent('#bench-dir')) ?? '', new RegExp(benchDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  assert.match((await page.textContent('#bench-dirty-log .faults')) ?? '', /found mmu_lock taken.*24,576/s);
  const lockRows = await page.$$eval('#bench-scale-lock tbody tr', (rows) => rows.map((r) => r.textContent));
  // The sample's three trials: slow faults summed over them.
  assert.deepEqual(lockRows, ['1fast path off196,6080.0%', '2fast path off393,21625.0%', '3fast path off589,82433.3%', '4fast path off786,43237.5%']);
  assert.match((await page.textContent('#bench-scale-gain')) ?? '', /4 vCPUs over 1, median of 3 trials .*fast path on 1\.80× \(1\.60–1\.98×\).*off 1\.70× \(1\.70–1\.70×\)\. The fast path gained more in 2 of 3 trials\./);
  const faultRows = await page.$$eval('#bench-dirty-log .faults tbody tr td:first-child', (cells) => cells.map((c) => c.textContent));
  assert.deepEqual(faultRows, ['populate', 'fast path on, iterations', 'fast path off, iterations']);
  await noHorizontalScroll(page);
  assert.deepEqual(pageErrors, []);
});
