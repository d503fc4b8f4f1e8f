// Build step for the browser view: type-check the page (DOM lib, its own tsconfig), bundle it with esbuild and copy its HTML and CSS into dist/web.

import * as fs from 'node:fs';
import * as path from 'node:path';
import ts from 'typescript';
import { buildSync } from 'esbuild';

/** The project root (this file is dist/src/web/build.js). */
const ROOT = path.join(__dirname, '..', '..', '..');
const PAGE = path.join(ROOT, 'src', 'web', 'page');
const OUT = path.join(ROOT, 'dist', 'web');

/** Type-check the page under src/web/page/tsconfig.json; returns the diagnostics as text ('' when clean). */
export function typeCheckPage(): string {
  const configFile = path.join(PAGE, 'tsconfig.json');
  const read = ts.readConfigFile(configFile, (f) => ts.sys.readFile(f));
  if (read.error !== undefined) return ts.flattenDiagnosticMessageText(read.error.messageText, '\n');
  const parsed = ts.parseJsonConfigFileContent(read.config, ts.sys, PAGE, undefined, configFile);
  const program = ts.createProgram(parsed.fileNames, { ...parsed.options, noEmit: true });
  const diags = [...parsed.errors, ...ts.getPreEmitDiagnostics(program)];
  if (diags.length === 0) return '';
  return ts.formatDiagnostics(diags, {
    getCanonicalFileName: (f) => f,
    getCurrentDirectory: () => ROOT,
    getNewLine: () => '\n',
  });
}

export function buildPage(): void {
  fs.rmSync(OUT, { recursive: true, force: true });
  fs.mkdirSync(OUT, { recursive: true });
  buildSync({
    entryPoints: [path.join(PAGE, 'main.ts')],
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: ['chrome110', 'firefox110', 'safari16'],
    outfile: path.join(OUT, 'app.js'),
    minify: true,
    sourcemap: 'linked',
    legalComments: 'linked',
    logLevel: 'warning',
  });
  for (const f of ['index.html', 'style.css']) fs.copyFileSync(path.join(PAGE, f), path.join(OUT, f));
}

if (require.main === module) {
  const t0 = Date.now();
  const errors = typeCheckPage();
  if (errors !== '') {
    process.stderr.write(errors);
    process.exit(1);
  }
  buildPage();
  if (!process.argv.includes('--quiet')) process.stdout.write(`web build: dist/web in ${Date.now() - t0} ms\n`);
}
