// Regenerates the README's screenshots of the browser view (docs/replay.png, docs/causal.png, docs/legend.png, docs/play.png, docs/bench.png): node dist/test/web/screenshots.js [--bench DIR] [--out DIR].

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { StepResponse } from '../../src/web/api-types';
import { decodeReplay } from '../../src/check/trace';
import { benchFixtureDir, launchChromium, post, startServe } from './helpers';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
}

async function main(): Promise<void> {
  const out = path.resolve(arg('--out') ?? path.join(__dirname, '..', '..', '..', 'docs'));
  const given = arg('--bench');
  const bench = given ?? benchFixtureDir();
  fs.mkdirSync(out, { recursive: true });
  const serve = await startServe(['--port', '0', '--bench', bench]);
  const browser = await launchChromium();
  try {
    const page = await browser.context.newPage();
    await page.goto(serve.url);
    await page.waitForSelector('body.ready');
    await page.selectOption('#scenario', 'dirty-bit-loss');
    await page.uncheck('#guard-atomic-volatile-clear');
    await page.click('#run-check');
    await page.waitForSelector('#r-trace .cell');
    const replay = await page.inputValue('#replay-string');
    const cx = (await post(serve.url, '/api/replay', { replay })).json<StepResponse>();
    const store = cx.rows.find((r) => cx.threads[r.thread] === 'host' && r.op === 'store64' && r.target.startsWith('spte'))!;
    for (let k = 0; k < store.step; k++) await page.keyboard.press('ArrowRight');
    // The code of the plain store, beside the trace.
    await page.click(`#r-trace .cell[data-step="${store.step}"]:not(.empty) .fn-link`);
    await page.waitForSelector('#r-code .code-line.hit');
    await page.screenshot({ path: path.join(out, 'replay.png') });
    await page.click('#r-code-summary');

    // The causal view: the SPTE the plain store cleared selected (the steps that touched it marked), and only the
    // steps the violation depends on.
    const m = /^spte \(sp (\d+), #(\d+)\)$/.exec(store.target)!;
    await page.click(`#r-state .obj-btn[data-obj="spte:${m[1]}:${m[2]}"]`);
    await page.check('#r-filter');
    await page.screenshot({ path: path.join(out, 'causal.png') });
    await page.uncheck('#r-filter');
    await page.keyboard.press('Escape');

    await page.click('#legend-toggle');
    await page.screenshot({ path: path.join(out, 'legend.png') });
    await page.click('#legend-toggle');

    // Play: stop just before the host's plain store, where the user has to choose.
    await page.click('#tabs [data-view="play"]');
    await page.waitForSelector('#p-threads button.run-thread:not([disabled])');
    const schedule = decodeReplay(replay).schedule;
    for (const t of schedule) {
      await page.click(`#p-threads button.run-thread[data-thread="${t}"]`);
      await page.waitForSelector('#p-threads button.run-thread:not([disabled]), #race-found');
    }
    await page.click('#p-compare-btn');
    await page.waitForSelector('#p-open-checker');
    await page.screenshot({ path: path.join(out, 'play.png') });

    await page.click('#tabs [data-view="bench"]');
    await page.waitForSelector('#view-bench canvas');
    await page.waitForTimeout(300);
    await page.screenshot({ path: path.join(out, 'bench.png') });
    process.stdout.write(`screenshots in ${out}\n`);
  } finally {
    await browser.close();
    await serve.stop();
    if (given === undefined) fs.rmSync(bench, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
