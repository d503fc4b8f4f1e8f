#!/usr/bin/env node
// Build step: compile the MMU core and the checker's scenarios a second time, into generator form, under dist/gen (see src/cli/gen-transform.ts).
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const ts = require('typescript');
const { buildGen } = require('../dist/src/cli/gen-transform.js');

const root = path.join(__dirname, '..');
const GEN_DIRS = ['src/shm', 'src/x86', 'src/host', 'src/kvm', 'src/vcpu', 'src/check/gen'];

function tsFiles(dir) {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? tsFiles(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

const parsed = ts.getParsedCommandLineOfConfigFile(path.join(root, 'tsconfig.json'), {}, {
  ...ts.sys,
  onUnRecoverableConfigFileDiagnostic: (d) => {
    throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'));
  },
});
const files = GEN_DIRS.flatMap((d) => tsFiles(path.join(root, d)));
const options = { ...parsed.options, outDir: path.join(root, 'dist', 'gen'), sourceMap: false, declaration: false, noEmit: false };
const t0 = Date.now();
const r = buildGen(files, options, files);
if (process.argv.includes('--list')) for (const n of r.interruptible) console.log(n);
if (!process.argv.includes('--quiet'))
  console.log(`gen build: ${r.files.length} files, ${r.interruptible.length} interruptible functions, ${Date.now() - t0} ms`);
