// Layering (DESIGN.md): lower layers never import higher ones, and the MMU core imports nothing from node:* and touches no Node or browser global.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import ts from 'typescript';

const ORDER = ['shm', 'x86', 'host', 'kvm', 'vcpu', 'check', 'runtime', 'bench', 'cli', 'web'];
/** DESIGN.md puts "cli, web" in one row: one layer, which may import itself both ways. */
const rank = (layer: string): number => (layer === 'web' ? ORDER.indexOf('cli') : ORDER.indexOf(layer));
/** Layers that make up the core: they must run unchanged in a browser or under the checker. */
const CORE = new Set(['shm', 'x86', 'host', 'kvm', 'vcpu', 'check']);
const SRC = path.join(__dirname, '..', '..', 'src');

function sources(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sources(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

/** Every module a file names: import/export ... from, side-effect imports, import x = require(), require() and import() calls. */
function imports(file: string): string[] {
  const info = ts.preProcessFile(fs.readFileSync(file, 'utf8'), true, true);
  return info.importedFiles.map((f) => f.fileName);
}

/** Node's and the browser's globals the core must not touch (it runs in both, and under the checker). */
const HOST_GLOBALS = new Set(['process', 'Buffer', 'require', '__dirname', '__filename', 'module', 'global', 'document', 'window', 'navigator', 'localStorage']);

/** Free uses of HOST_GLOBALS in a file (not property names, not declarations of its own). */
function hostGlobals(file: string): string[] {
  const sf = ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), ts.ScriptTarget.ES2022, true);
  const declared = new Set<string>();
  const used: string[] = [];
  const visit = (n: ts.Node): void => {
    if ((ts.isVariableDeclaration(n) || ts.isParameter(n) || ts.isFunctionDeclaration(n) || ts.isClassDeclaration(n)) && n.name !== undefined && ts.isIdentifier(n.name))
      declared.add(n.name.text);
    if (ts.isIdentifier(n) && HOST_GLOBALS.has(n.text)) {
      const p = n.parent;
      const isName =
        (ts.isPropertyAccessExpression(p) && p.name === n) ||
        ((ts.isPropertyAssignment(p) || ts.isPropertyDeclaration(p) || ts.isMethodDeclaration(p) || ts.isPropertySignature(p) || ts.isMethodSignature(p)) && p.name === n) ||
        ts.isVariableDeclaration(p) ||
        ts.isParameter(p);
      if (!isName) used.push(`${n.text} (line ${sf.getLineAndCharacterOfPosition(n.getStart()).line + 1})`);
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return used.filter((u) => !declared.has(u.split(' ')[0]!));
}

test('every src folder is a known layer', () => {
  for (const d of fs.readdirSync(SRC)) assert.ok(ORDER.includes(d), `src/${d} is not a layer in DESIGN.md`);
});

test('no layer imports a higher one', () => {
  const bad: string[] = [];
  for (const layer of ORDER) {
    for (const file of sources(path.join(SRC, layer))) {
      for (const spec of imports(file)) {
        if (!spec.startsWith('.')) continue;
        const target = path.relative(SRC, path.resolve(path.dirname(file), spec)).split(path.sep)[0]!;
        if (rank(target) > rank(layer)) bad.push(`${path.relative(SRC, file)} imports ${spec}`);
      }
    }
  }
  assert.deepEqual(bad, []);
});

test('the core imports nothing from Node or the DOM', () => {
  const bad: string[] = [];
  for (const layer of CORE) {
    for (const file of sources(path.join(SRC, layer))) {
      for (const spec of imports(file)) if (!spec.startsWith('.')) bad.push(`${path.relative(SRC, file)} imports ${spec}`);
      for (const g of hostGlobals(file)) bad.push(`${path.relative(SRC, file)} uses ${g}`);
    }
  }
  assert.deepEqual(bad, []);
});

test('the layer checks see every way to name a module or a host global', () => {
  const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvmmu-layers-')), 'sample.ts');
  fs.writeFileSync(
    f,
    "import 'node:fs';\nimport a = require('node:path');\nconst b = require('node:os');\nvoid import('node:url');\nexport { c } from './c';\n" +
      'const o = { process: 1 };\nconsole.log(o.process, process.pid, Buffer.alloc(1), document);\n',
  );
  assert.deepEqual(imports(f).sort(), ['./c', 'node:fs', 'node:os', 'node:path', 'node:url']);
  assert.deepEqual(hostGlobals(f).map((g) => g.split(' ')[0]), ['require', 'process', 'Buffer', 'document']);
});

test('every source file says what it holds in its first line', () => {
  const bad: string[] = [];
  for (const layer of ORDER) {
    for (const file of sources(path.join(SRC, layer))) {
      const lines = fs.readFileSync(file, 'utf8').split('\n');
      const first = lines[0]!.startsWith('#!') ? lines[1]! : lines[0]!;
      if (!/^\/\/ \S/.test(first)) bad.push(path.relative(SRC, file));
    }
  }
  assert.deepEqual(bad, []);
});
