// End to end in Debian's Chromium (issue 20): a link is the counterexample (the address holds the replay string and the step), the race explains itself (select an object, see the steps that touched it; the steps the violation depends on), the checker's knobs, Cancel and progress, the keyboard, the legend, and the defects a new user found.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import type { BrowserContext, Page } from 'playwright-core';
import type { ScenarioList, StepResponse } from '../../src/web/api-types';
import { decodeReplay } from '../../src/check/trace';
import { CLI, launchChromium, post, startServe, type ServeProcess } from './helpers';

/** The little of the DOM the functions run in the page use (this file compiles without the DOM library). */
declare const document: {
  querySelector(selector: string): { textContent: string | null } | null;
  activeElement: { id: string } | null;
};
declare const location: { hash: string; href: string };
declare const navigator: { clipboard: { readText(): Promise<string> } };

let serve: ServeProcess;
let browser: { context: BrowserContext; close: () => Promise<void> };
const pageErrors: string[] = [];
/** The lost-Dirty-bit race as the checker reports it (atomic-volatile-clear off). */
let race: StepResponse;
let emptyBench: string;

before(async () => {
  emptyBench = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-bench-empty-'));
  serve = await startServe(['--port', '0', '--bench', emptyBench]);
  browser = await launchChromium();
  await browser.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(serve.url).origin });
  const found = (await post(serve.url, '/api/check', { scenario: 'dirty-bit-loss', guardsOff: ['atomic-volatile-clear'] })).json<{ violation: { schedule: string } }>();
  race = (await post(serve.url, '/api/replay', { replay: found.violation.schedule })).json<StepResponse>();
});

after(async () => {
  await browser?.close();
  await serve?.stop();
  fs.rmSync(emptyBench, { recursive: true, force: true });
  assert.deepEqual(pageErrors, []);
});

async function openPage(hash = '', viewport = { width: 1280, height: 800 }): Promise<Page> {
  const page = await browser.context.newPage();
  await page.setViewportSize(viewport);
  page.setDefaultTimeout(15_000);
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of 4\d\d/.test(m.text())) pageErrors.push(`console: ${m.text()}`);
  });
  await page.goto(serve.url + hash);
  await page.waitForSelector('body.ready');
  return page;
}

async function stepLabel(page: Page): Promise<string> {
  return (await page.textContent('#step-label')) ?? '';
}

async function waitForStep(page: Page, k: number, n: number): Promise<void> {
  await page.waitForFunction((want) => document.querySelector('#step-label')?.textContent === want, `step ${k} / ${n}`);
}

/** Run the check on dirty-bit-loss with atomic-volatile-clear off and wait for the trace. */
async function checkRace(page: Page): Promise<void> {
  await page.selectOption('#scenario', 'dirty-bit-loss');
  await page.uncheck('#guard-atomic-volatile-clear');
  await page.click('#run-check');
  await waitForStep(page, 0, race.rows.length);
}

async function pressTimes(page: Page, key: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await page.keyboard.press(key);
}

/** The steps of the trace rows shown (not hidden), in order; a folded walk counts as its first step. */
async function visibleSteps(page: Page): Promise<number[]> {
  return page.$$eval('#r-trace .step-no[data-step]', (cells) =>
    cells.filter((c) => !(c as unknown as { hidden: boolean }).hidden).map((c) => Number((c as unknown as { dataset: { step: string } }).dataset.step)),
  );
}


/** The host's plain store that clears the SPTE (the step the race turns on). */
function plainStore(r: StepResponse): StepResponse['rows'][number] {
  return r.rows.find((x) => r.threads[x.thread] === 'host' && x.op === 'store64' && x.target.startsWith('spte'))!;
}

async function waitForPlayStep(page: Page, k: number): Promise<void> {
  await page.waitForFunction((want) => (document.querySelector('#p-status')?.textContent ?? '').startsWith(`step ${want} `), k);
}

/** Play a schedule by clicking each thread's button and waiting for the step to come back. */
async function playSchedule(page: Page, schedule: readonly number[]): Promise<void> {
  for (let k = 0; k < schedule.length; k++) {
    await page.click(`#p-threads button.run-thread[data-thread="${schedule[k]}"]`);
    await waitForPlayStep(page, k + 1);
  }
}

test('a copied link at step 36 of the lost-Dirty-bit race opens in a new page at step 36 with the same trace', async () => {
  const n = race.rows.length;
  assert.ok(n > 36, `the race has ${n} steps`);
  const page = await openPage();
  await checkRace(page);
  await pressTimes(page, 'ArrowRight', 36);
  assert.equal(await stepLabel(page), `step 36 / ${n}`);
  // The address follows the step as you move.
  assert.match(await page.evaluate(() => location.hash), /[#&]step=36(&|$)/);
  await page.click('#copy-link');
  const link = await page.evaluate(() => navigator.clipboard.readText());
  assert.equal(link, await page.evaluate(() => location.href));
  const hash = new URL(link).hash;
  assert.equal(new URLSearchParams(hash.slice(1)).get('replay'), race.replay, 'the link holds the replay string');
  const trace = await page.textContent('#r-trace');
  const state = await page.textContent('#r-state');

  const other = await openPage(hash);
  await waitForStep(other, 36, n);
  assert.equal(await other.textContent('#r-trace'), trace, 'the same trace');
  assert.equal(await other.textContent('#r-state'), state, 'the same state at step 36');
  assert.equal(await other.inputValue('#replay-string'), race.replay);
  const row36 = race.rows[35]!;
  assert.ok(((await other.locator('#r-trace .cell.current:not(.empty)').textContent()) ?? '').includes(`${row36.op} ${row36.target}`), 'step 36 is the current row');
  assert.equal(await other.isChecked('#guard-atomic-volatile-clear'), false, 'the settings bar shows the link’s settings');
  // Once loaded, the address still holds the trace and the step.
  const kept = new URLSearchParams((await other.evaluate(() => location.hash)).slice(1));
  assert.equal(kept.get('replay'), race.replay);
  assert.equal(kept.get('step'), '36');
  await page.close();
  await other.close();
});

test('a link naming only a replay string and a step opens at that step, and the address keeps them', async () => {
  const n = race.rows.length;
  const page = await openPage(`#replay=${encodeURIComponent(race.replay)}&step=${race.violation!.step}`);
  await waitForStep(page, race.violation!.step, n);
  assert.match((await page.textContent('#r-monitor')) ?? '', /Invariant broken at step/);
  assert.equal(await page.inputValue('#scenario'), 'dirty-bit-loss', 'the settings come from the replay string');
  assert.equal(new URLSearchParams((await page.evaluate(() => location.hash)).slice(1)).get('replay'), race.replay);
  await page.close();
});

test('a link with two guards off, and a game in the play view, reopen as they were', async () => {
  const off = ['atomic-volatile-clear', 'notifier-retry'];
  const found = (await post(serve.url, '/api/check', { scenario: 'dirty-bit-loss', guardsOff: off })).json<{ violation: { schedule: string; steps: number } }>();
  assert.match(found.violation.schedule, /:atomic-volatile-clear\+notifier-retry:/);
  const page = await openPage();
  await page.fill('#replay-string', found.violation.schedule);
  await page.click('#load-replay');
  await waitForStep(page, 0, found.violation.steps);
  await pressTimes(page, 'ArrowRight', 10);
  const again = await openPage(new URL(await page.evaluate(() => location.href)).hash);
  await waitForStep(again, 10, found.violation.steps);
  assert.equal(await again.inputValue('#replay-string'), found.violation.schedule);
  // A game: three moves, then the address opens it again at those moves.
  await page.click('#tabs [data-view="play"]');
  await page.waitForSelector('#p-threads button.run-thread[data-thread="0"]:not([disabled])');
  await playSchedule(page, [0, 0, 1]);
  const game = new URL(await page.evaluate(() => location.href)).hash;
  assert.match(game, /[#&]play=0\*2,1(&|$)/);
  const replayed = await openPage(game);
  await waitForPlayStep(replayed, 3);
  assert.equal(await replayed.isChecked('#guard-notifier-retry'), false);
  for (const p of [page, again, replayed]) await p.close();
});

test('the trace exports as text, as kvmmu check prints it, and as JSON', async () => {
  const page = await openPage(`#replay=${encodeURIComponent(race.replay)}`);
  await waitForStep(page, 0, race.rows.length);
  const [text] = await Promise.all([page.waitForEvent('download'), page.click('#export-text')]);
  const body = fs.readFileSync((await text.path())!, 'utf8');
  assert.match(body, new RegExp(`replay: kvmmu check --replay '${race.replay.replace(/[*+]/g, '\\$&')}'`));
  assert.match(body, new RegExp(`VIOLATION of frame-dirty-before-drop at step ${race.violation!.step}`));
  const store = plainStore(race);
  assert.ok(body.split('\n').some((l) => new RegExp(`^\\s+${store.step}\\s`).test(l) && l.includes(`${store.op} ${store.target}`)), 'the plain store is a row of its own');
  const [json] = await Promise.all([page.waitForEvent('download'), page.click('#export-json')]);
  const data = JSON.parse(fs.readFileSync((await json.path())!, 'utf8')) as StepResponse;
  assert.equal(data.replay, race.replay);
  assert.deepEqual(data.rows, race.rows);
  assert.equal(data.states.length, race.rows.length + 1);
  assert.equal(data.touches.length, race.rows.length);
  await page.close();
});

test('editing the address in an open tab shows the step and the trace it names', async () => {
  const n = race.rows.length;
  const page = await openPage(`#replay=${encodeURIComponent(race.replay)}`);
  await waitForStep(page, 0, n);
  const p = new URLSearchParams((await page.evaluate(() => location.hash)).slice(1));
  p.set('step', '20');
  await page.evaluate((h) => (location.hash = h), p.toString());
  await waitForStep(page, 20, n);
  // Another schedule: the first 30 steps of the race.
  const shorter = race.replay.replace(/:[^:]*$/, ':0*14,1*7,0*9');
  p.set('replay', shorter);
  p.set('step', '30');
  await page.evaluate((h) => (location.hash = h), p.toString());
  await waitForStep(page, 30, 30);
  await page.close();
});

test('selecting the SPTE of the race marks exactly the steps that touched it, and the state panel says when it last changed', async () => {
  const page = await openPage();
  await checkRace(page);
  const store = plainStore(race);
  await pressTimes(page, 'ArrowRight', store.step);
  const target = store.target;
  const expected = race.rows.filter((r) => r.target === target).map((r) => r.step);
  const m = /^spte \(sp (\d+), #(\d+)\)$/.exec(target)!;
  await page.click(`#r-state .obj-btn[data-obj="spte:${m[1]}:${m[2]}"]`);
  const marked = await page.$$eval('#r-trace .cell.touches-sel:not(.empty):not(.group)', (cells) =>
    cells.map((c) => Number((c as unknown as { dataset: { step: string } }).dataset.step)),
  );
  assert.deepEqual(marked, expected, 'the steps whose thread touched that SPTE, no more, no fewer');
  const unmarked = await page.$$eval('#r-trace .cell:not(.empty):not(.group):not(.touches-sel)', (cells) => cells.length);
  assert.equal(unmarked, race.rows.length - expected.length);
  assert.match((await page.textContent('#r-selection')) ?? '', new RegExp(`touched at ${expected.length} steps \\(${expected.join(', ')}\\)`));
  // Beside its value: the step that last changed it (the plain store; one step earlier, the hardware's D bit).
  const setD = race.rows.find((r) => r.target === target && r.op === 'cmpxchg64' && / D /.test(`${r.after} `) && !/ D /.test(`${r.before} `))!;
  const card = page.locator(`#r-state .spte[data-obj="spte:${m[1]}:${m[2]}"]`);
  assert.match((await card.textContent()) ?? '', new RegExp(`last changed at step ${store.step}`));
  await page.keyboard.press('ArrowLeft');
  assert.match((await card.textContent()) ?? '', new RegExp(`last changed at step ${setD.step}`));
  // A folded walk that touched it is marked as a whole.
  const walk = page.locator('#r-trace .cell.group:not(.empty)').filter({ hasText: `sp ${m[1]} #${m[2]}` }).first();
  assert.match((await walk.getAttribute('class')) ?? '', /touches-sel/);
  // Select it again: cleared.
  await page.click(`#r-state .obj-btn[data-obj="spte:${m[1]}:${m[2]}"]`);
  assert.equal(await page.locator('#r-trace .cell.touches-sel').count(), 0);
  await page.close();
});

test('a frame, a bitmap word and a lock are selectable too, from the state panel or from a row', async () => {
  const page = await openPage();
  await checkRace(page);
  await page.keyboard.press('End');
  // The frame whose Dirty flag is lost: rows naming "frame 0x0 ..." touched it (its flags and its bytes).
  await page.click('#r-state tr[data-pfn] .obj-btn');
  const frameRows = race.rows.filter((r) => /^frame 0x0 /.test(r.target)).map((r) => r.step);
  const marked = await page.$$eval('#r-trace .cell.touches-sel:not(.empty):not(.group)', (cells) => cells.map((c) => Number((c as unknown as { dataset: { step: string } }).dataset.step)));
  assert.deepEqual(marked, frameRows);
  // mmu_lock from the row that takes it.
  const lockRows = race.rows.filter((r) => r.target === 'mmu_lock').map((r) => r.step);
  await page.click(`#r-trace .cell[data-step="${lockRows[0]}"]:not(.empty) .obj`);
  const lockMarked = await page.$$eval('#r-trace .cell.touches-sel:not(.empty):not(.group)', (cells) => cells.map((c) => Number((c as unknown as { dataset: { step: string } }).dataset.step)));
  assert.deepEqual(lockMarked, lockRows);
  assert.match((await page.textContent('#r-selection')) ?? '', /^mmu_lock/);
  // The dirty-bitmap word the fast path set.
  const bitmapRows = race.rows.filter((r) => r.target.startsWith('dirty bitmap word')).map((r) => r.step);
  await page.click('#r-state .gfn-bit .obj-btn');
  const bitmapMarked = await page.$$eval('#r-trace .cell.touches-sel:not(.empty):not(.group)', (cells) => cells.map((c) => Number((c as unknown as { dataset: { step: string } }).dataset.step)));
  assert.deepEqual(bitmapMarked, bitmapRows);
  await page.close();
});

test('a row links to the code that made its access: the plain store is a line of mmuSpteClearTrackBits', async () => {
  const page = await openPage(`#replay=${encodeURIComponent(race.replay)}`);
  await waitForStep(page, 0, race.rows.length);
  const store = plainStore(race);
  const fn = store.where.split(' ← ')[0]!;
  await page.click(`#r-trace .cell[data-step="${store.step}"]:not(.empty) .fn-link`);
  await waitForStep(page, store.step, race.rows.length);
  await page.waitForSelector('#r-code[open] .code-line.hit');
  assert.match((await page.textContent('#r-code-summary')) ?? '', new RegExp(`${fn} — src/kvm/[\\w-]+\\.ts:\\d+`));
  const hits = await page.locator('#r-code .code-line.hit').allTextContents();
  assert.equal(hits.length, 1, hits.join('\n'));
  assert.match(hits[0]!, /\.store64\(sptep, 0n\)/);
  // The code follows the step: the hardware walk's D bit.
  const setD = race.rows.find((r) => r.target === store.target && r.op === 'cmpxchg64' && / D /.test(`${r.after} `))!;
  await page.keyboard.press('Home');
  await pressTimes(page, 'ArrowRight', setD.step);
  await page.waitForFunction(() => /hwWalk/.test(document.querySelector('#r-code-summary')?.textContent ?? ''));
  await page.waitForSelector('#r-code .code-line.hit');
  assert.ok((await page.locator('#r-code .code-line.hit').allTextContents()).every((l) => l.includes('.cmpxchg64(')));
  await page.close();
});

test('the steps the locking document draws are marked with its lines, in the TDP MMU too; a race it does not draw has none', async () => {
  const page = await openPage(`#replay=${encodeURIComponent(race.replay)}`);
  await waitForStep(page, 0, race.rows.length);
  const marks = new Map(
    (await page.$$eval('#r-trace .cell .drawn', (els) =>
      els.map((e) => [Number((e as unknown as { closest(s: string): { dataset: { step: string } } }).closest('.cell').dataset.step), e.textContent ?? ''] as [number, string]),
    )),
  );
  const host = race.threads.indexOf('host');
  const fn = (r: StepResponse['rows'][number]): string => r.where.split(' ← ')[0]!;
  const step = (pred: (r: StepResponse['rows'][number]) => boolean): number => race.rows.find(pred)!.step;
  const expected = new Map<number, RegExp>([
    [step((r) => r.thread === host && fn(r) === 'mmuSpteClearTrackBits' && r.op === 'load64'), /old_spte = \*spte;/],
    [step((r) => r.thread === host && r.op === 'store64' && r.target.startsWith('spte')), /spte = 0ull;/],
    [step((r) => r.thread !== host && fn(r) === 'fastPfFixDirectSpte'), /spte\.W = 1/],
    [step((r) => r.thread !== host && r.op === 'cmpxchg64' && / D /.test(`${r.after} `) && !/ D /.test(`${r.before} `)), /spte\.Dirty = 1/],
    [step((r) => fn(r) === 'setPfnAccessed'), /kvm_set_pfn_accessed/],
  ]);
  assert.deepEqual([...marks.keys()].sort((a, b) => a - b), [...expected.keys()].sort((a, b) => a - b));
  for (const [k, re] of expected) assert.match(marks.get(k)!, re, `step ${k}`);
  assert.match((await page.textContent('#r-drawn')) ?? '', /5 steps the locking document draws \(3\) Dirty bit tracking\)/);
  // In the TDP MMU (the corpus's tdp-volatile-xchg, ba3a6120a4e7) the same drawing marks kvm_tdp_mmu_write_spte's plain store.
  const tdp = (await post(serve.url, '/api/check', { scenario: 'tdp-volatile-xchg', guardsOff: ['atomic-volatile-clear'] })).json<{ violation: { schedule: string; steps: number } }>();
  const tdpRows = (await post(serve.url, '/api/replay', { replay: tdp.violation.schedule })).json<StepResponse>();
  await page.fill('#replay-string', tdp.violation.schedule);
  await page.click('#load-replay');
  await waitForStep(page, 0, tdp.violation.steps);
  const plain = tdpRows.rows.find((r) => r.op === 'store64' && r.where.startsWith('writeSpte') && r.after === '0')!;
  assert.match((await page.textContent(`#r-trace .cell[data-step="${plain.step}"]:not(.empty) .drawn`)) ?? '', /spte = 0ull;/);
  assert.match((await page.textContent('#r-drawn')) ?? '', /in the TDP MMU/);
  // A race the document does not draw: no marks.
  const other = (await post(serve.url, '/api/check', { scenario: 'notifier-race', guardsOff: ['notifier-retry'] })).json<{ violation: { schedule: string; steps: number } }>();
  await page.fill('#replay-string', other.violation.schedule);
  await page.click('#load-replay');
  await waitForStep(page, 0, other.violation.steps);
  assert.equal(await page.locator('#r-trace .cell .drawn').count(), 0);
  assert.equal(await page.isVisible('#r-drawn'), false);
  await page.close();
});

test('the filter keeps the steps the violation depends on; a page-table walk folds into one row that opens', async () => {
  const page = await openPage();
  await checkRace(page);
  const all = await visibleSteps(page);
  // The hardware walk of steps 4-7 is one row until opened.
  assert.ok(all.includes(4) && !all.includes(5) && !all.includes(7), `walk folded: ${all.join(',')}`);
  await page.click('#r-trace .cell.group[data-step="4"]:not(.empty) button.fold');
  const open = await visibleSteps(page);
  for (const s of [4, 5, 6, 7]) assert.ok(open.includes(s), `step ${s} shown once the walk is open`);
  await page.click('#r-trace button.unfold');
  await page.check('#r-filter');
  const shown = await visibleSteps(page);
  const target = plainStore(race).target;
  const v = race.violation!.step;
  // The SPTE's changes, the guest's write into the frame, the frame's flags, the violation: kept.
  for (const r of race.rows.filter((x) => x.target === target && x.op !== 'load64')) assert.ok(shown.includes(r.step), `step ${r.step} (${r.op} ${r.target}) is kept`);
  for (const r of race.rows.filter((x) => /^frame 0x0 /.test(x.target))) assert.ok(shown.includes(r.step), `step ${r.step} (${r.target}) is kept`);
  assert.ok(shown.includes(v));
  // Steps that touch nothing it depends on: hidden (mmu_lock, the invalidation count, the vCPU's mode).
  for (const r of race.rows.filter((x) => x.target === 'mmu_lock' || x.target.startsWith('mmu_invalidate') || /^vCPU 0 mode$/.test(x.target)))
    assert.ok(!shown.includes(r.step), `step ${r.step} (${r.op} ${r.target}) is hidden`);
  assert.ok(shown.length < all.length);
  await page.uncheck('#r-filter');
  assert.deepEqual(await visibleSteps(page), all);
  await page.close();
});

test('clicking a trace row shows that step', async () => {
  const n = race.rows.length;
  const page = await openPage();
  await checkRace(page);
  await page.click(`#r-trace .cell[data-step="10"]:not(.empty)`);
  assert.equal(await stepLabel(page), `step 10 / ${n}`);
  await page.click(`#r-trace .step-no[data-step="${n}"]`);
  assert.equal(await stepLabel(page), `step ${n} / ${n}`);
  await page.close();
});

test('Space presses a focused checkbox or button instead of playing', async () => {
  const n = race.rows.length;
  const page = await openPage();
  await checkRace(page);
  await page.focus('#guard-pin-indirect');
  await page.keyboard.press(' ');
  assert.equal(await page.isChecked('#guard-pin-indirect'), false, 'Space toggled the focused checkbox');
  assert.equal(await page.textContent('#r-play'), '▶ Play', 'and did not start playing');
  assert.equal(await stepLabel(page), `step 0 / ${n}`);
  await page.focus('#guard-pin-indirect');
  await page.keyboard.press(' ');
  assert.equal(await page.isChecked('#guard-pin-indirect'), true);
  // Space on the Run button runs the check (the summary goes through "checking…" to a new report).
  await page.evaluate(() => ((document.querySelector('#check-summary') as unknown as { textContent: string }).textContent = 'before'));
  await page.focus('#run-check');
  await page.keyboard.press(' ');
  await page.waitForFunction(() => /^dpor: .*VIOLATION/.test(document.querySelector('#check-summary')?.textContent ?? ''));
  assert.equal(await page.textContent('#r-play'), '▶ Play');
  await page.close();
});

test('play: keys pressed while a step is on its way are queued, none is dropped', async () => {
  const page = await openPage('#view=play&scenario=dirty-bit-loss&off=atomic-volatile-clear');
  await page.waitForSelector('#p-threads button.run-thread[data-thread="0"]:not([disabled])');
  // A slow server: each step takes at least 150 ms to answer.
  await page.route('**/api/replay', async (route) => {
    await new Promise((r) => setTimeout(r, 150));
    await route.continue();
  });
  await page.click('#p-status');
  for (let i = 0; i < 5; i++) await page.keyboard.press('1');
  await page.waitForFunction(() => (document.querySelector('#p-status')?.textContent ?? '').startsWith('step 5 '), null, { timeout: 10_000 });
  await page.unroute('**/api/replay');
  await page.close();
});

test('play: a game survives switching tabs whatever the order the guards were unticked in', async () => {
  const page = await openPage('#view=play&scenario=dirty-bit-loss');
  await page.waitForSelector('#p-threads button.run-thread[data-thread="0"]:not([disabled])');
  // notifier-retry first, then atomic-volatile-clear: not the order the server lists them in.
  await page.uncheck('#guard-notifier-retry');
  await page.uncheck('#guard-atomic-volatile-clear');
  await page.waitForFunction(() => (document.querySelector('#p-status')?.textContent ?? '').startsWith('step 0 '));
  for (let k = 1; k <= 3; k++) {
    await page.click('#p-threads button.run-thread[data-thread="0"]');
    await page.waitForFunction((want) => (document.querySelector('#p-status')?.textContent ?? '').startsWith(`step ${want} `), k);
  }
  await page.click('#tabs [data-view="replay"]');
  await page.click('#tabs [data-view="play"]');
  await page.waitForTimeout(300);
  assert.match((await page.textContent('#p-status')) ?? '', /^step 3 /, 'the game is still at step 3');
  await page.close();
});

test('play: a change of dirty marking or of the indirect fast path starts a new game, and the race found before is gone', async () => {
  const schedule = decodeReplay(race.replay).schedule;
  const page = await openPage('#view=play&scenario=dirty-bit-loss&off=atomic-volatile-clear');
  await page.waitForSelector('#p-threads button.run-thread[data-thread="0"]:not([disabled])');
  await playSchedule(page, schedule);
  await page.waitForSelector('#race-found');
  await page.selectOption('#page-marking', 'fault');
  await waitForPlayStep(page, 0);
  assert.equal(await page.locator('#race-found').count(), 0, 'no race is claimed for settings it was not found with');
  // The indirect fast path (shadow mode): a few moves, then another setting.
  await page.selectOption('#page-marking', 'spte');
  await page.selectOption('#mode', 'shadow');
  await waitForPlayStep(page, 0);
  await playSchedule(page, [0, 0]);
  await page.selectOption('#indirect-fast-path', 'unsafe');
  await waitForPlayStep(page, 0);
  await page.close();
});

test("play: with page marking 'fault' Compare draws the checker's schedule", async () => {
  const found = (await post(serve.url, '/api/check', { scenario: 'free-during-walk', guardsOff: ['lockless-walk-sync'], pageMarking: 'fault' })).json<{ violation: { schedule: string } }>();
  assert.match(found.violation.schedule, /:fault:/);
  const schedule = decodeReplay(found.violation.schedule).schedule;
  const runs: number[] = [];
  schedule.forEach((t, i) => (i > 0 && schedule[i - 1] === t ? runs[runs.length - 1]!++ : runs.push(1)));
  const page = await openPage('#view=play&scenario=free-during-walk&off=lockless-walk-sync&marking=fault');
  await page.waitForSelector('#p-threads button.run-thread[data-thread="0"]:not([disabled])');
  await playSchedule(page, schedule);
  await page.waitForSelector('#race-found');
  await page.click('#p-compare-btn');
  await page.waitForSelector('#p-open-checker');
  const strip = (await page.locator('#p-compare .cmp-row').first().locator('.strip .run').allTextContents()).map(Number);
  assert.deepEqual(strip, runs, "the checker's runs, thread by thread");
  await page.close();
});

test('a check finished after the scenario was switched is named for its own settings; the note goes once the settings match again', async () => {
  const page = await openPage();
  await page.selectOption('#scenario', 'dirty-bit-loss');
  await page.uncheck('#guard-atomic-volatile-clear');
  // Hold the check back a second, so the user can change the settings while it runs.
  await page.route('**/api/check', async (route) => {
    await new Promise((r) => setTimeout(r, 1000));
    await route.continue();
  });
  await page.click('#run-check');
  await page.selectOption('#scenario', 'notifier-race');
  await waitForStep(page, 0, race.rows.length);
  await page.unroute('**/api/check');
  assert.equal(await page.isVisible('#r-stale'), true, 'a note says the trace is for other settings');
  assert.match((await page.textContent('#r-stale')) ?? '', /dirty-bit-loss.*off: atomic-volatile-clear/);
  await page.selectOption('#scenario', 'dirty-bit-loss');
  await page.uncheck('#guard-atomic-volatile-clear');
  assert.equal(await page.isVisible('#r-stale'), false, 'back on the checked settings, the note is gone');
  assert.doesNotMatch((await page.textContent('#check-summary')) ?? '', /Settings changed/);
  assert.match((await page.textContent('#check-summary')) ?? '', /VIOLATION of frame-dirty-before-drop/);
  await page.close();
});

test("the checker's knobs reach the checker; a running check shows its progress and Cancel stops it", async () => {
  const page = await openPage();
  await page.selectOption('#scenario', 'dirty-bit-loss');
  await page.uncheck('#guard-atomic-volatile-clear');
  await page.selectOption('#k-strategy', 'random');
  await page.fill('#k-seed', '7');
  await page.fill('#k-seconds', '5');
  await page.click('#run-check');
  await page.waitForFunction(() => /^random: /.test(document.querySelector('#check-summary')?.textContent ?? ''));
  // A long check: plain DFS does not finish wp-tlb-flush.
  await page.selectOption('#scenario', 'wp-tlb-flush');
  await page.selectOption('#k-strategy', 'dfs');
  await page.fill('#k-seconds', '60');
  await page.click('#run-check');
  await page.waitForFunction(() => /executions/.test(document.querySelector('#check-progress')?.textContent ?? ''));
  const t0 = Date.now();
  await page.click('#cancel-check');
  await page.waitForFunction(() => /^Check cancelled/.test(document.querySelector('#check-summary')?.textContent ?? ''));
  assert.ok(Date.now() - t0 < 5000);
  assert.equal(await page.isHidden('#cancel-check'), true);
  // The server freed its place: a check runs again at once.
  await page.selectOption('#k-strategy', 'dpor');
  await page.fill('#k-seconds', '30');
  await page.click('#run-check');
  await page.waitForFunction(() => /^dpor: /.test(document.querySelector('#check-summary')?.textContent ?? ''));
  await page.close();
});

test("a check's progress gives the executions abandoned and an estimate of the executions in all, and its report the complete and abandoned ones apart, with the reduction", async () => {
  const page = await openPage();
  await page.selectOption('#scenario', 'lastzero-10');
  // Under a preemption bound DPOR is Source-DPOR, whose sleep sets abandon executions on lastzero.
  await page.selectOption('#k-strategy', 'dpor');
  // (about 34,000 executions, most of them abandoned, in a second or two: long enough for progress lines).
  await page.fill('#k-preemptions', '8');
  await page.fill('#k-seconds', '30');
  await page.click('#run-check');
  const progress = await page
    .waitForFunction(() => {
      const t = document.querySelector('#check-progress')?.textContent ?? '';
      return /\(([\d,]+) abandoned as redundant\)/.test(t) && /executions in all \(estimate\)/.test(t) ? t : false;
    })
    .then(async (h) => String(await h.jsonValue()));
  const [, all] = /about ([\d,]+) executions in all \(estimate\)/.exec(progress) ?? [];
  assert.ok(all !== undefined && Number(all.replace(/,/g, '')) > 0, progress);
  await page.waitForFunction(() => /^dpor: /.test(document.querySelector('#check-summary')?.textContent ?? ''));
  const bounded = (await page.textContent('#check-summary')) ?? '';
  const m = /^dpor: ([\d,]+) executions in [\d.]+ s \(Source-DPOR: ([\d,]+) complete, ([\d,]+) abandoned as redundant(?:, ([\d,]+) cut at the preemption bound)?\)/.exec(bounded);
  assert.ok(m !== null, bounded);
  const n = (x: string | undefined): number => Number((x ?? '0').replace(/,/g, ''));
  assert.ok(n(m[3]) > 0, `Source-DPOR abandons executions on lastzero-10: ${bounded}`);
  assert.equal(n(m[2]) + n(m[3]) + n(m[4]), n(m[1]), 'complete, abandoned and cut add up to the executions');
  // Without a bound, Optimal-DPOR: one complete execution per class, none abandoned.
  await page.fill('#k-preemptions', '');
  await page.fill('#k-seconds', '60');
  await page.click('#run-check');
  await page.waitForFunction(() => /^dpor: .*exhaustive/.test(document.querySelector('#check-summary')?.textContent ?? ''));
  assert.match((await page.textContent('#check-summary')) ?? '', /^dpor: 3328 executions in [\d.]+ s \(Optimal-DPOR: 3328 complete, 0 abandoned as redundant\) — no violation: every schedule was explored \(exhaustive\)$/);
  await page.close();
});

test('with the keyboard alone: run the check, step to the violation (announced to screen readers), select an object, read the legend', async () => {
  const page = await openPage();
  await page.selectOption('#scenario', 'dirty-bit-loss');
  await page.uncheck('#guard-atomic-volatile-clear');
  // Tab from the start of the page to the Run button, and press it with Enter.
  await page.evaluate(() => (document.activeElement as unknown as { blur(): void }).blur());
  let found = false;
  for (let i = 0; i < 40 && !found; i++) {
    await page.keyboard.press('Tab');
    found = (await page.evaluate(() => document.activeElement?.id)) === 'run-check';
  }
  assert.ok(found, 'the Run button is reachable with Tab');
  await page.keyboard.press('Enter');
  await waitForStep(page, 0, race.rows.length);
  await page.keyboard.press('v');
  await waitForStep(page, race.violation!.step, race.rows.length);
  await page.waitForFunction(() => /Invariant broken at step/.test(document.querySelector('#live')?.textContent ?? ''));
  // The state panel's objects are buttons: Tab to one, Enter selects it.
  await page.focus('#r-state .obj-btn[data-obj^="frame:"]');
  await page.keyboard.press('Enter');
  assert.match((await page.textContent('#r-selection')) ?? '', /^frame 0x0: touched at/);
  await page.keyboard.press('Escape');
  assert.equal(await page.locator('#r-trace .cell.touches-sel').count(), 0);
  await page.keyboard.press('?');
  assert.equal(await page.isVisible('#legend'), true);
  const legend = (await page.textContent('#legend')) ?? '';
  for (const word of ['SP', 'HW', 'MW', 'Host-writable', 'MMU-writable', 'DIRTY flag (frame)', 'Dirty bitmap (the log’s bit)', 'IN_GUEST_MODE']) assert.ok(legend.includes(word), `the legend explains ${word}`);
  await page.keyboard.press('Escape');
  assert.equal(await page.isVisible('#legend'), false);
  await page.close();
});

test('frame flags and shadow-page roles are named, and vCPU modes are named alike in the trace and the panel', async () => {
  const page = await openPage();
  await checkRace(page);
  const flags = race.rows.find((r) => /^frame 0x0 flags$/.test(r.target) && r.op === 'or32')!;
  const flagsCell = (await page.locator(`#r-trace .cell[data-step="${flags.step}"]:not(.empty)`).textContent()) ?? '';
  assert.match(flagsCell, /REFERENCED → ACCESSED REFERENCED/);
  assert.doesNotMatch(flagsCell, /\d+ → \d+/);
  // Step 1: the vCPU enters the guest; the trace and the panel call the mode the same.
  await page.keyboard.press('ArrowRight');
  const modeCell = (await page.locator('#r-trace .cell[data-step="1"]:not(.empty)').textContent()) ?? '';
  assert.match(modeCell, /OUTSIDE_GUEST_MODE → IN_GUEST_MODE/);
  assert.match((await page.textContent('#r-state .vcpu[data-vcpu="0"]')) ?? '', /IN_GUEST_MODE/);
  // A shadow page's role is read by shadow paging's fast path (a direct or TDP 4 KiB fix reads none): wp-tlb-flush.
  const wp = (await post(serve.url, '/api/check', { scenario: 'wp-tlb-flush', guardsOff: ['flush-mmu-writable'] })).json<{ violation: { schedule: string } }>();
  const wpRace = (await post(serve.url, '/api/replay', { replay: wp.violation.schedule })).json<StepResponse>();
  const role = wpRace.rows.find((r) => /^shadow page \d+ role$/.test(r.target))!;
  assert.ok(role !== undefined, 'the shadow-mode race reads a role');
  await page.selectOption('#scenario', 'wp-tlb-flush');
  await page.uncheck('#guard-flush-mmu-writable');
  await page.click('#run-check');
  await waitForStep(page, 0, wpRace.rows.length);
  const roleCell = (await page.locator(`#r-trace .cell[data-step="${role.step}"]:not(.empty)`).textContent()) ?? '';
  assert.match(roleCell, /= level 1 indirect acc=XWU efer_nx cr0_wp/);
  await page.close();
});

test('at 1024 px no header of the SPTE table overflows its column, and HW and MW are explained', async () => {
  const page = await openPage('', { width: 1024, height: 768 });
  await checkRace(page);
  await pressTimes(page, 'ArrowRight', 33);
  const heads = await page.$$eval('#r-state table.bits thead th', (ths) =>
    ths.map((th) => {
      const e = th as unknown as { textContent: string; scrollWidth: number; clientWidth: number; title: string };
      return { text: e.textContent, over: e.scrollWidth > e.clientWidth, title: e.title };
    }),
  );
  assert.ok(heads.length > 0);
  for (const hd of heads) assert.equal(hd.over, false, `header ${hd.text} overflows its column at 1024 px`);
  assert.ok(heads.some((hd) => hd.text === 'HW' && /Host-writable/.test(hd.title)));
  assert.ok(heads.some((hd) => hd.text === 'MW' && /MMU-writable/.test(hd.title)));
  await page.close();
});

test('the Benchmarks view without results suggests commands that work: run them, reload, and the charts appear', async () => {
  const page = await openPage('#view=bench');
  await page.waitForSelector('.empty-bench');
  const commands = await page.$$eval('.empty-bench code', (els) => els.map((e) => e.textContent ?? '').filter((t) => t.startsWith('kvmmu bench')));
  assert.ok(commands.length > 0, 'it names a command');
  for (const c of commands) {
    // Small sizes so the test is quick; the command itself is the page's.
    const small = c.includes(' scale') ? ['-v', '2', '-b', '256K', '-i', '2', '-t', '1'] : ['-v', '1', '-b', '256K', '-i', '2'];
    const args = c.split(' ').slice(1);
    const r = spawnSync(process.execPath, [CLI, ...args, ...small], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, `${c}: ${r.stderr}`);
  }
  await page.click('#bench-reload');
  await page.waitForSelector('#bench-dirty-log');
  await page.close();
});

test('the TDP MMU is among the modes with every scenario that runs in it, the real races name their fix, and a TDP race replays in the view', async () => {
  const list = (await (await fetch(new URL('/api/scenarios', serve.url))).json()) as ScenarioList;
  const page = await openPage();
  const offered = await page.$$eval('#scenario option', (os) => os.map((o) => (o as unknown as { value: string }).value));
  const tdp = list.scenarios.filter((s) => s.modes.includes('tdp'));
  assert.ok(tdp.some((s) => s.name === 'tdp-rcu-free') && tdp.some((s) => s.name === 'tdp-zap-vs-fault'));
  for (const s of tdp) {
    assert.ok(offered.includes(s.name), `${s.name} is offered`);
    await page.selectOption('#scenario', s.name);
    assert.deepEqual(await page.$$eval('#mode option', (os) => os.map((o) => (o as unknown as { value: string }).value)), s.modes, `${s.name}: its modes`);
    if (s.fix !== null) assert.match((await page.textContent('#scenario-fix')) ?? '', new RegExp(`fixed in ${s.fix.commit} \\(${s.fix.year}\\)`));
  }
  await page.selectOption('#scenario', 'dirty-bit-loss');
  assert.deepEqual(await page.$$eval('#mode option', (os) => os.map((o) => (o as unknown as { value: string }).value)), ['direct', 'shadow', 'tdp']);
  await page.selectOption('#scenario', 'tdp-rcu-free');
  await page.uncheck('#guard-rcu-deferred-free');
  await page.click('#run-check');
  await page.waitForFunction(() => /VIOLATION/.test(document.querySelector('#check-summary')?.textContent ?? ''));
  assert.match(new URLSearchParams((await page.evaluate(() => location.hash)).slice(1)).get('replay') ?? '', /^tdp-rcu-free:tdp:rcu-deferred-free:/);
  // mmu_lock is a reader-writer lock here: the panel says who holds it and how.
  await page.keyboard.press('v');
  assert.match((await page.textContent('#mmu-lock')) ?? '', /mmu_lock/);
  await page.close();
});

test('TDP state panel: roots with their refcounts and invalid or zapped state, RCU readers inside a read section, vCPUs a grace period waits for, and entries frozen by a teardown', async () => {
  // kvm-5: the fault links tables into the root that a memslot update invalidated and zapped.
  const found = (await post(serve.url, '/api/check', { scenario: 'obsolete-root-fault', guardsOff: ['obsolete-root-retry'] })).json<{ violation: { schedule: string } }>();
  const r = (await post(serve.url, '/api/replay', { replay: found.violation.schedule })).json<StepResponse>();
  // A step where the vCPU's fault is inside its RCU read section (its reader count just went 0 -> 1).
  const inside = r.rows.find((row) => r.threads[row.thread] === 'vCPU 0' && row.op === 'fetchAdd32' && /^rcu readers/.test(row.target));
  assert.ok(inside !== undefined, 'the fault enters an RCU read section');
  assert.deepEqual(r.states[inside.step]!.tdp?.rcu.readers.filter((n) => n > 0), [1]);
  const last = r.states[r.states.length - 1]!.tdp!;
  assert.ok(last.roots.some((x) => x.sp === 0 && x.invalid && x.zap === 'taken'), JSON.stringify(last.roots));
  const page = await openPage(`#replay=${encodeURIComponent(found.violation.schedule)}&step=${inside.step}`);
  await waitForStep(page, inside.step, r.rows.length);
  assert.match((await page.textContent('#tdp-rcu')) ?? '', /RCU readers: .*slot 0: 1/);
  assert.match((await page.textContent('#tdp-roots')) ?? '', /root sp 0: .*refcount \d/);
  await page.keyboard.press('End');
  await waitForStep(page, r.rows.length, r.rows.length);
  assert.match((await page.textContent('#tdp-roots')) ?? '', /root sp 0: .*invalid, zapped/);
  await page.close();
  // Entries frozen by handle_removed_pt: zapping everything under the write lock freezes the removed tables' entries.
  const rcu = (await post(serve.url, '/api/check', { scenario: 'tdp-rcu-free', guardsOff: ['rcu-deferred-free'] })).json<{ violation: { schedule: string } }>();
  const rr = (await post(serve.url, '/api/replay', { replay: rcu.violation.schedule })).json<StepResponse>();
  const freeze = rr.rows.find((row) => row.op === 'xchg64' && row.after === 'FROZEN');
  assert.ok(freeze !== undefined, 'the teardown freezes an entry');
  assert.ok(rr.states[freeze.step]!.tdp!.frozen.length >= 1);
  // The vCPUs read as QSBR readers: their read sections show nowhere, but a grace period that began while a vCPU
  // was outside guest mode (in its fault) waits for it, and the panel says so.
  const pt = (await post(serve.url, '/api/check', { scenario: 'tdp-removed-pt-freeze', guardsOff: ['freeze-removed-pt'] })).json<{ violation: { schedule: string } }>();
  const pr = (await post(serve.url, '/api/replay', { replay: pt.violation.schedule })).json<StepResponse>();
  const waits = pr.states.findIndex((st) => st.tdp?.rcu.qsbr.some((q) => q.online && q.waitedFor) ?? false);
  assert.ok(waits > 0, 'a grace period waits for a vCPU');
  const page2 = await openPage(`#replay=${encodeURIComponent(pt.violation.schedule)}&step=${waits}`);
  await waitForStep(page2, waits, pr.rows.length);
  assert.match((await page2.textContent('#tdp-rcu')) ?? '', /vCPUs: .*vCPU \d: the grace period waits for it/);
  await page2.close();
});
