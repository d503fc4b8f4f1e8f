// Layering (DESIGN.md): lower layers never import higher ones, and the MMU core imports nothing from node:*.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

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

function imports(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  return [...text.matchAll(/^\s*(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]/gm)].map((m) => m[1]!);
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
    }
  }
  assert.deepEqual(bad, []);
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
