// The model's source for the browser view: each function of the MMU core and the built-in scenarios by name, so a trace row can show the code that made its access.

import * as fs from 'node:fs';
import * as path from 'node:path';
import ts from 'typescript';

/** One definition of a function (a declaration, a class method, or a function bound to a name or a property). */
export interface SourceFunction {
  readonly fn: string;
  /** Relative to the project root, with forward slashes: src/kvm/spte-update.ts. */
  readonly file: string;
  /** 1-based line of its first line. */
  readonly line: number;
  /** Its text, line by line (at most MAX_LINES). */
  readonly lines: string[];
  /** The class it is a method of, if any. */
  readonly owner: string | null;
}

/** The directories whose code the checker runs (the same as the generator build's). */
const DIRS = ['src/shm', 'src/x86', 'src/host', 'src/kvm', 'src/vcpu', 'src/check/gen'];
const MAX_LINES = 200;

function tsFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? tsFiles(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

function nameOf(n: ts.Node): string | null {
  if (ts.isIdentifier(n) || ts.isStringLiteral(n) || ts.isPrivateIdentifier(n)) return n.text;
  return null;
}

/** Functions by name, read once from the project's source (the installed package's src directory). */
export class SourceIndex {
  private byName: Map<string, SourceFunction[]> | null = null;

  constructor(private readonly root: string) {}

  /** The definitions of `fn` (empty when there is none), those of the MMU core before the scenarios'. */
  find(fn: string): SourceFunction[] {
    this.byName ??= this.build();
    return this.byName.get(fn) ?? [];
  }

  private build(): Map<string, SourceFunction[]> {
    const out = new Map<string, SourceFunction[]>();
    for (const dir of DIRS) {
      for (const file of tsFiles(path.join(this.root, dir)).sort()) {
        const text = fs.readFileSync(file, 'utf8');
        const sf = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true);
        const all = text.split('\n');
        const rel = path.relative(this.root, file).split(path.sep).join('/');
        const add = (name: string | null, node: ts.Node, owner: string | null): void => {
          if (name === null) return;
          const start = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line;
          const end = sf.getLineAndCharacterOfPosition(node.getEnd()).line;
          const def: SourceFunction = { fn: name, file: rel, line: start + 1, lines: all.slice(start, Math.min(end + 1, start + MAX_LINES)), owner };
          out.set(name, [...(out.get(name) ?? []), def]);
        };
        const visit = (n: ts.Node, owner: string | null): void => {
          if (ts.isFunctionDeclaration(n) && n.name !== undefined) add(n.name.text, n, null);
          else if ((ts.isMethodDeclaration(n) || ts.isGetAccessorDeclaration(n)) && n.body !== undefined) add(nameOf(n.name), n, owner);
          else if (ts.isConstructorDeclaration(n) && n.body !== undefined && owner !== null) add(owner, n, owner);
          else if ((ts.isPropertyAssignment(n) || ts.isPropertyDeclaration(n) || ts.isVariableDeclaration(n)) && n.initializer !== undefined) {
            if (ts.isArrowFunction(n.initializer) || ts.isFunctionExpression(n.initializer)) add(nameOf(n.name), n, owner);
          }
          const inner = ts.isClassDeclaration(n) && n.name !== undefined ? n.name.text : owner;
          ts.forEachChild(n, (c) => visit(c, inner));
        };
        visit(sf, null);
      }
    }
    return out;
  }
}
