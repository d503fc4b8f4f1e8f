// Compiles the same TypeScript source into generator form for the checker: every function that can reach an access-layer operation becomes a generator, and every call to one a `yield*`.
//
// The access layer calls `hook.before(...)` before each operation; that
// interface method is the one base "interruptible" function. A function is
// interruptible if it calls an interruptible function (resolved with the type
// checker), and an interface method is interruptible if a class implementing it
// has an interruptible method of that name (so calls through MmuNotifier or
// GuestPtAccess are followed). The emitted code is the compiled source with:
//   - `function*` / `*method` for each interruptible function (an arrow
//     function becomes a bound `function*` expression);
//   - `(yield* f(...))` for each call to one, and `(hook.before(...), yield)`
//     for the access layer's call to its hook.
// A call to `hook.before` itself becomes `(hook.before(...), yield)`: the
// checker's hook records the operation, and the yield makes it a point where a
// single-threaded scheduler can switch threads. Code the scheduler cannot follow is an error:
// an interruptible function referenced other than by a direct call (a
// callback) — except as a property value, the way a scenario names its
// threads — or called from a constructor, getter or module top level.

import * as path from 'node:path';
import ts from 'typescript';

export interface GenBuildResult {
  /** Emitted files (absolute paths). */
  readonly files: string[];
  /** The files emitted for each source file (absolute paths both). */
  readonly bySource: ReadonlyMap<string, string[]>;
  /** Qualified names of the interruptible functions, for inspection. */
  readonly interruptible: string[];
}

export class GenTransformError extends Error {
  override readonly name = 'GenTransformError';
}

type FnLike = ts.FunctionDeclaration | ts.MethodDeclaration | ts.FunctionExpression | ts.ArrowFunction;

function isFnLike(n: ts.Node): n is FnLike {
  return ts.isFunctionDeclaration(n) || ts.isMethodDeclaration(n) || ts.isFunctionExpression(n) || ts.isArrowFunction(n);
}

function isFnBoundary(n: ts.Node): boolean {
  return ts.isFunctionLike(n) || ts.isClassStaticBlockDeclaration(n);
}

/** The names a file compiled with a loop guard calls its ticks by (check/loop-guard.ts). */
const LOOP_TICK = '__kvmmuLoopTick';
const SPIN_TICK = '__kvmmuSpinTick';
const SPIN_END = '__kvmmuSpinEnd';

/** Methods of JavaScript's own collections that change them: a loop calling one has an effect outside shared memory. */
const MUTATORS = new Set(['push', 'pop', 'shift', 'unshift', 'splice', 'sort', 'reverse', 'fill', 'copyWithin', 'set', 'add', 'delete', 'clear']);

/**
 * Transform `files` (and only those) of a program built from `rootNames` with
 * `options`, writing JavaScript under `options.outDir`. `rewriteImport` may
 * change a module specifier in the output (for user scenario files).
 * `loopGuard`, a module's path: every loop body in the emitted files first
 * calls that module's `loopTick` (the checker's guard against a loop that
 * never reaches an operation, check/loop-guard.ts). A loop that may be a
 * spin loop (`spinCandidates`: one that changes nothing outside shared
 * memory) also calls `spinTick(id)` there, and yields when it says the
 * thread now waits (check/spin.ts), and `spinEnd(id)` however it is left.
 * With `plain`, no generator form: the files are compiled as they are, with
 * the loop guard and spin ticks only (a thread-replay worker runs them, and
 * its spinTick blocks itself).
 */
export function buildGen(
  rootNames: readonly string[],
  options: ts.CompilerOptions,
  files: readonly string[] | ((fileName: string) => boolean),
  rewriteImport?: (specifier: string, fromFile: string) => string,
  loopGuard?: string,
  plain = false,
): GenBuildResult {
  const program = ts.createProgram(rootNames, options);
  const diags = ts.getPreEmitDiagnostics(program).filter((d) => d.category === ts.DiagnosticCategory.Error);
  if (diags.length > 0) throw new GenTransformError(ts.formatDiagnostics(diags, formatHost));
  const checker = program.getTypeChecker();
  // The files to emit: a list, or every program file (not a declaration) the predicate picks.
  const picked =
    typeof files === 'function' ? program.getSourceFiles().filter((sf) => !sf.isDeclarationFile && files(sf.fileName)).map((sf) => sf.fileName) : files;
  const targets = new Set(picked.map((f) => path.resolve(f)));
  const sources = program.getSourceFiles().filter((sf) => targets.has(path.resolve(sf.fileName)));
  if (sources.length !== targets.size) {
    const found = new Set(sources.map((s) => path.resolve(s.fileName)));
    throw new GenTransformError(`not in the program: ${[...targets].filter((t) => !found.has(t)).join(', ')}`);
  }

  // All function-likes in every program file we can see into (so interruptibility flows through imports).
  const fnLikes: FnLike[] = [];
  const classes: ts.ClassDeclaration[] = [];
  let base: ts.Declaration | undefined;
  for (const sf of program.getSourceFiles()) {
    if (sf.isDeclarationFile) continue;
    const visit = (n: ts.Node): void => {
      if (isFnLike(n)) fnLikes.push(n);
      if (ts.isClassDeclaration(n)) classes.push(n);
      if (ts.isInterfaceDeclaration(n) && n.name.text === 'AccessHook' && sf.fileName.endsWith(path.join('shm', 'access.ts'))) {
        for (const m of n.members) if (ts.isMethodSignature(m) && m.name.getText(sf) === 'before') base = m;
      }
      ts.forEachChild(n, visit);
    };
    visit(sf);
  }
  // A file that never reaches the access layer has no interruptible functions (base stays undefined).
  const interruptible = new Set<ts.Declaration>(base === undefined ? [] : [base]);
  const calleeOf = (call: ts.CallExpression): ts.Declaration | undefined => {
    const sig = checker.getResolvedSignature(call);
    const d = sig?.getDeclaration();
    return d === undefined ? undefined : (ts.getOriginalNode(d) as ts.Declaration);
  };
  // Calls made directly in each function's own body (not in nested functions).
  const ownCalls = new Map<FnLike, ts.CallExpression[]>();
  for (const fn of fnLikes) {
    const calls: ts.CallExpression[] = [];
    const visit = (n: ts.Node): void => {
      if (n !== fn && isFnBoundary(n)) return;
      if (ts.isCallExpression(n)) calls.push(n);
      ts.forEachChild(n, visit);
    };
    if (fn.body !== undefined) visit(fn.body);
    ownCalls.set(fn, calls);
  }
  // Interface members each class method implements.
  const implementsOf = new Map<ts.MethodDeclaration, ts.Declaration[]>();
  for (const c of classes) {
    for (const h of c.heritageClauses ?? []) {
      if (h.token !== ts.SyntaxKind.ImplementsKeyword) continue;
      for (const t of h.types) {
        const type = checker.getTypeAtLocation(t);
        for (const m of c.members) {
          if (!ts.isMethodDeclaration(m) || m.name === undefined) continue;
          const prop = type.getProperty(m.name.getText());
          if (prop === undefined) continue;
          const list = implementsOf.get(m) ?? [];
          list.push(...(prop.getDeclarations() ?? []));
          implementsOf.set(m, list);
        }
      }
    }
  }

  for (let changed = true; changed; ) {
    changed = false;
    for (const fn of fnLikes) {
      if (interruptible.has(fn)) continue;
      const calls = ownCalls.get(fn)!;
      const reaches = calls.some((c) => {
        const d = calleeOf(c);
        return d !== undefined && interruptible.has(d);
      });
      const viaInterface =
        ts.isMethodDeclaration(fn) && (implementsOf.get(fn) ?? []).some((d) => interruptible.has(d));
      if (reaches || viaInterface) {
        interruptible.add(fn);
        changed = true;
      }
    }
    for (const [m, decls] of implementsOf) {
      if (!interruptible.has(m)) continue;
      for (const d of decls) {
        if (!interruptible.has(d)) {
          interruptible.add(d);
          changed = true;
        }
      }
    }
  }

  // Check what the transform cannot express, in the files it emits.
  const problems: string[] = [];
  const where = (n: ts.Node): string => {
    const sf = n.getSourceFile();
    const { line, character } = sf.getLineAndCharacterOfPosition(n.getStart(sf));
    return `${path.relative(process.cwd(), sf.fileName)}:${line + 1}:${character + 1}`;
  };
  const wrap = new Set<ts.CallExpression>();
  // A call the type checker cannot resolve (on an untyped value, as a JavaScript function's parameters are)
  // might reach shared memory; emitted as a plain call it would create a generator nobody runs, so its
  // operations would silently not happen. A call of such a name is refused.
  const interruptibleNames = new Set<string>();
  for (const d of interruptible) {
    const name = (d as { name?: ts.Node }).name;
    if (name !== undefined && ts.isIdentifier(name)) interruptibleNames.add(name.text);
  }
  /**
   * A thread body given to the scenario API's threads(n, body), or stored into an object's property or element
   * (`bodies[name] = (vm) => ...`): a value the checker calls knowing it is a generator, as a scenario's threads.
   */
  const isThreadValue = (n: ts.Node): boolean => {
    let p = n.parent;
    while (ts.isParenthesizedExpression(p)) p = p.parent;
    if (ts.isBinaryExpression(p) && p.operatorToken.kind === ts.SyntaxKind.EqualsToken && p.right !== n && (ts.isElementAccessExpression(p.left) || ts.isPropertyAccessExpression(p.left)))
      return false;
    if (ts.isBinaryExpression(p) && p.operatorToken.kind === ts.SyntaxKind.EqualsToken && (ts.isElementAccessExpression(p.left) || ts.isPropertyAccessExpression(p.left))) return true;
    if (!ts.isCallExpression(p) || !p.arguments.includes(n as ts.Expression)) return false;
    const d = calleeOf(p);
    return d !== undefined && ts.isFunctionDeclaration(d) && d.name?.text === 'threads' && d.getSourceFile().fileName.endsWith(path.join('check', 'gen', 'scenario.ts').split(path.sep).join('/'));
  };
  for (const sf of sources) {
    const visit = (n: ts.Node): void => {
      if (ts.isCallExpression(n)) {
        const d = calleeOf(n);
        const name = ts.isPropertyAccessExpression(n.expression) ? n.expression.name.text : ts.isIdentifier(n.expression) ? n.expression.text : undefined;
        if (d === undefined && name !== undefined && interruptibleNames.has(name))
          problems.push(
            `${where(n)}: cannot follow '${n.expression.getText()}(...)': its type is unknown (any), so the checker cannot tell whether it reaches shared memory; ` +
              `give it a type (in TypeScript, vm: ScenarioVm; in JavaScript, a JSDoc line @param {import('kvmmu/scenario').ScenarioVm} vm)`,
          );
        if (d !== undefined && interruptible.has(d)) {
          const encl = enclosingFn(n);
          if (encl === undefined || !isFnLike(encl)) problems.push(`${where(n)}: call to an interruptible function outside a function (constructor, getter, initializer or top level)`);
          else wrap.add(n);
        }
      }
      // A function named as a property value (a scenario's thread, setup or check) is fine: the checker
      // calls those knowing they are generators. Anywhere else a value use would be called as a plain function.
      if ((ts.isIdentifier(n) || ts.isPrivateIdentifier(n)) && !isCallee(n) && !isDeclarationName(n) && !ts.isPropertyAssignment(n.parent) && !isThreadValue(n)) {
        const sym = checker.getSymbolAtLocation(n);
        const decls = sym?.getDeclarations() ?? [];
        if (decls.some((d) => interruptible.has(d) && isFnLike(d)) && !isTypePosition(n))
          problems.push(`${where(n)}: interruptible function '${n.getText()}' used as a value (callbacks cannot be followed by the scheduler)`);
      }
      ts.forEachChild(n, visit);
    };
    visit(sf);
  }
  for (const fn of fnLikes) {
    if (!interruptible.has(fn) || !targets.has(path.resolve(fn.getSourceFile().fileName))) continue;
    if (ts.isArrowFunction(fn) && usesArguments(fn)) problems.push(`${where(fn)}: an interruptible arrow function uses 'arguments'`);
    if (ts.getCombinedModifierFlags(fn) & ts.ModifierFlags.Async)
      problems.push(`${where(fn)}: an async function that reaches shared memory (the checker runs a thread's operations one step at a time, synchronously): drop async and await`);
    if (ts.isArrowFunction(fn) || ts.isFunctionExpression(fn)) {
      let p: ts.Node = fn.parent;
      while (ts.isParenthesizedExpression(p)) p = p.parent;
      if (!ts.isPropertyAssignment(p) && !ts.isVariableDeclaration(p) && !isThreadValue(fn))
        problems.push(`${where(fn)}: an interruptible function passed as a value (a callback the scheduler cannot follow); call kvmmu functions directly (a for...of loop instead of forEach or map)`);
    }
  }
  if (problems.length > 0) throw new GenTransformError(`cannot compile to generator form:\n  ${problems.join('\n  ')}`);

  const spinLoops = loopGuard === undefined ? new Map<ts.IterationStatement, number>() : spinCandidates(sources, fnLikes, targets, checker, calleeOf, (fn) => plain || interruptible.has(fn));

  const transformer: ts.TransformerFactory<ts.SourceFile> = (ctx) => {
    const f = ctx.factory;
    const visit = (node: ts.Node): ts.Node => {
      const orig = ts.getOriginalNode(node);
      if (!plain && ts.isCallExpression(node) && wrap.has(orig as ts.CallExpression)) {
        const inner = ts.visitEachChild(node, visit, ctx);
        // The hook's `before` itself stays a plain call (it records the operation); the yield follows it.
        // One generator fewer per operation than delegating to a generator `before`.
        if (calleeOf(orig as ts.CallExpression) === base)
          return f.createParenthesizedExpression(f.createCommaListExpression([inner, f.createYieldExpression(undefined, undefined)]));
        return f.createParenthesizedExpression(f.createYieldExpression(f.createToken(ts.SyntaxKind.AsteriskToken), inner));
      }
      if (
        rewriteImport !== undefined &&
        ts.isCallExpression(node) &&
        ts.isIdentifier(node.expression) &&
        node.expression.text === 'require' &&
        node.arguments.length === 1 &&
        ts.isStringLiteral(node.arguments[0]!)
      ) {
        return f.updateCallExpression(node, node.expression, undefined, [f.createStringLiteral(rewriteImport(node.arguments[0].text, node.getSourceFile().fileName))]);
      }
      if (rewriteImport !== undefined && (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier !== undefined && ts.isStringLiteral(node.moduleSpecifier)) {
        const spec = rewriteImport(node.moduleSpecifier.text, node.getSourceFile().fileName);
        if (ts.isImportDeclaration(node))
          return f.updateImportDeclaration(node, node.modifiers, node.importClause, f.createStringLiteral(spec), node.attributes);
        return f.updateExportDeclaration(node, node.modifiers, node.isTypeOnly, node.exportClause, f.createStringLiteral(spec), node.attributes);
      }
      if (!plain && isFnLike(node) && interruptible.has(orig as ts.Declaration)) {
        const star = f.createToken(ts.SyntaxKind.AsteriskToken);
        const body = ts.visitEachChild(node, visit, ctx);
        if (ts.isFunctionDeclaration(body))
          return f.updateFunctionDeclaration(body, body.modifiers, star, body.name, body.typeParameters, body.parameters, body.type, body.body);
        if (ts.isMethodDeclaration(body))
          return f.updateMethodDeclaration(body, body.modifiers, star, body.name, body.questionToken, body.typeParameters, body.parameters, body.type, body.body!);
        if (ts.isFunctionExpression(body))
          return f.updateFunctionExpression(body, body.modifiers, star, body.name, body.typeParameters, body.parameters, body.type, body.body);
        if (ts.isArrowFunction(body)) {
          const block = ts.isBlock(body.body) ? body.body : f.createBlock([f.createReturnStatement(body.body)], true);
          const gen = f.createFunctionExpression(body.modifiers?.filter((m) => m.kind !== ts.SyntaxKind.AsyncKeyword) as ts.Modifier[] | undefined, star, undefined, body.typeParameters, body.parameters, body.type, block);
          // Arrow functions see the enclosing `this`; bind it so the generator does too.
          return usesThis(orig as ts.ArrowFunction)
            ? f.createCallExpression(f.createPropertyAccessExpression(f.createParenthesizedExpression(gen), 'bind'), undefined, [f.createThis()])
            : f.createParenthesizedExpression(gen);
        }
      }
      if (loopGuard !== undefined && ts.isIterationStatement(node, false)) {
        const id = spinLoops.get(orig as ts.IterationStatement);
        const loop = ts.visitEachChild(node, visit, ctx);
        return id === undefined ? withLoopTick(f, loop) : withSpinTick(f, loop, id, plain);
      }
      return ts.visitEachChild(node, visit, ctx);
    };
    return (sf) => {
      const out = ts.visitNode(sf, visit) as ts.SourceFile;
      if (loopGuard === undefined) return out;
      // const __kvmmuLoopTick = require(loopGuard).loopTick; (added after the visit: the import rewriting never sees it)
      const req = f.createCallExpression(f.createIdentifier('require'), undefined, [f.createStringLiteral(loopGuard)]);
      const decl = f.createVariableStatement(
        undefined,
        f.createVariableDeclarationList(
          [
            f.createVariableDeclaration(LOOP_TICK, undefined, undefined, f.createPropertyAccessExpression(req, 'loopTick')),
            f.createVariableDeclaration(SPIN_TICK, undefined, undefined, f.createPropertyAccessExpression(req, 'spinTick')),
            f.createVariableDeclaration(SPIN_END, undefined, undefined, f.createPropertyAccessExpression(req, 'spinEnd')),
          ],
          ts.NodeFlags.Const,
        ),
      );
      return f.updateSourceFile(out, [decl, ...out.statements]);
    };
  };

  const written: string[] = [];
  const bySource = new Map<string, string[]>();
  for (const sf of sources) {
    const mine: string[] = [];
    bySource.set(path.resolve(sf.fileName), mine);
    const r = program.emit(sf, (name, text) => {
      ts.sys.writeFile(name, text);
      written.push(path.resolve(name));
      mine.push(path.resolve(name));
    }, undefined, false, { before: [transformer] });
    const errs = r.diagnostics.filter((d) => d.category === ts.DiagnosticCategory.Error);
    if (errs.length > 0) throw new GenTransformError(ts.formatDiagnostics(errs, formatHost));
  }
  const names = [...interruptible].filter(isFnLike).map((d) => qualifiedName(d));
  return { files: written, bySource, interruptible: names.sort() };
}

/**
 * The loops of `sources` that may be spin loops, numbered: a while, do or for loop (not for-of or for-in, whose
 * iterations differ by construction; not labelled) in a function the checker runs as a generator (`inGenerator`),
 * that assigns no variable declared outside its body (a for loop's own counter included), no property or array
 * element, calls no collection mutator and no function of the file's own that does any of these. Its iterations
 * then differ only by what they read from shared memory, which check/spin.ts watches as they run.
 */
function spinCandidates(
  sources: readonly ts.SourceFile[],
  fnLikes: readonly FnLike[],
  targets: ReadonlySet<string>,
  checker: ts.TypeChecker,
  calleeOf: (call: ts.CallExpression) => ts.Declaration | undefined,
  inGenerator: (fn: FnLike) => boolean,
): Map<ts.IterationStatement, number> {
  const within = (d: ts.Node, scope: ts.Node): boolean => d.getSourceFile() === scope.getSourceFile() && d.pos >= scope.pos && d.end <= scope.end;
  /** Does `node` change anything declared outside `scope`, or call something that may (`impure` so far)? */
  const changesOutside = (node: ts.Node, scope: ts.Node, impure: ReadonlySet<ts.Declaration>): boolean => {
    let found = false;
    const target = (e: ts.Expression): void => {
      while (ts.isParenthesizedExpression(e) || ts.isNonNullExpression(e) || ts.isAsExpression(e)) e = e.expression;
      if (ts.isIdentifier(e)) {
        const decls = checker.getSymbolAtLocation(e)?.getDeclarations() ?? [];
        if (decls.length === 0 || decls.some((d) => !within(d, scope))) found = true;
      } else if (ts.isObjectLiteralExpression(e) || ts.isArrayLiteralExpression(e)) {
        // A destructuring assignment: each of its targets.
        for (const el of ts.isObjectLiteralExpression(e) ? e.properties : e.elements) {
          if (ts.isShorthandPropertyAssignment(el)) target(el.name);
          else if (ts.isPropertyAssignment(el)) target(el.initializer);
          else if (ts.isSpreadElement(el) || ts.isSpreadAssignment(el)) target(el.expression);
          else if (ts.isExpression(el)) target(el);
        }
      } else found = true; // a property or an element: an object that outlives the iteration
    };
    const visit = (n: ts.Node): void => {
      if (found) return;
      if (ts.isBinaryExpression(n) && n.operatorToken.kind >= ts.SyntaxKind.FirstAssignment && n.operatorToken.kind <= ts.SyntaxKind.LastAssignment) target(n.left);
      else if ((ts.isPrefixUnaryExpression(n) || ts.isPostfixUnaryExpression(n)) && (n.operator === ts.SyntaxKind.PlusPlusToken || n.operator === ts.SyntaxKind.MinusMinusToken)) target(n.operand);
      else if (ts.isDeleteExpression(n)) found = true;
      else if (ts.isCallExpression(n)) {
        if (ts.isPropertyAccessExpression(n.expression) && MUTATORS.has(n.expression.name.text)) found = true;
        const d = calleeOf(n);
        if (d !== undefined && impure.has(d)) found = true;
      }
      if (!found) ts.forEachChild(n, visit);
    };
    visit(node);
    return found;
  };
  // The file's own functions that change what outlives them, directly or through each other.
  const own = fnLikes.filter((fn) => targets.has(path.resolve(fn.getSourceFile().fileName)));
  const impure = new Set<ts.Declaration>();
  for (let changed = true; changed; ) {
    changed = false;
    for (const fn of own) {
      if (impure.has(fn) || fn.body === undefined) continue;
      if (changesOutside(fn.body, fn, impure)) {
        impure.add(fn);
        changed = true;
      }
    }
  }
  const out = new Map<ts.IterationStatement, number>();
  for (const sf of sources) {
    const visit = (n: ts.Node): void => {
      if ((ts.isWhileStatement(n) || ts.isDoStatement(n) || ts.isForStatement(n)) && !ts.isLabeledStatement(n.parent)) {
        const fn = enclosingFn(n);
        const parts: ts.Node[] = [n.statement];
        if (ts.isForStatement(n)) {
          if (n.condition !== undefined) parts.push(n.condition);
          if (n.incrementor !== undefined) parts.push(n.incrementor);
        } else parts.push(n.expression);
        if (fn !== undefined && isFnLike(fn) && inGenerator(fn) && !parts.some((p) => changesOutside(p, n.statement, impure))) out.set(n, out.size + 1);
      }
      ts.forEachChild(n, visit);
    };
    visit(sf);
  }
  return out;
}

/**
 * `loop` with the loop guard's tick and the spin tick first in its body (in generator form, a yield when the
 * spin tick says the thread waits), inside a try whose finally tells the spin record the loop was left.
 */
function withSpinTick(f: ts.NodeFactory, loop: ts.IterationStatement, id: number, plain: boolean): ts.Statement {
  const spinCall = f.createCallExpression(f.createIdentifier(SPIN_TICK), undefined, [f.createNumericLiteral(id)]);
  const spin = plain ? f.createExpressionStatement(spinCall) : f.createIfStatement(spinCall, f.createExpressionStatement(f.createYieldExpression(undefined, undefined)));
  const ticked = withLoopTick(f, loop, [spin]);
  const end = f.createExpressionStatement(f.createCallExpression(f.createIdentifier(SPIN_END), undefined, [f.createNumericLiteral(id)]));
  return f.createTryStatement(f.createBlock([ticked], true), undefined, f.createBlock([end], true));
}

/** `loop` with a call of the loop guard's tick (and `more`) first in its body. */
function withLoopTick(f: ts.NodeFactory, loop: ts.IterationStatement, more: readonly ts.Statement[] = []): ts.Statement {
  const tick = f.createExpressionStatement(f.createCallExpression(f.createIdentifier(LOOP_TICK), undefined, []));
  const body = f.createBlock([tick, ...more, ...(ts.isBlock(loop.statement) ? loop.statement.statements : [loop.statement])], true);
  if (ts.isForStatement(loop)) return f.updateForStatement(loop, loop.initializer, loop.condition, loop.incrementor, body);
  if (ts.isForInStatement(loop)) return f.updateForInStatement(loop, loop.initializer, loop.expression, body);
  if (ts.isForOfStatement(loop)) return f.updateForOfStatement(loop, loop.awaitModifier, loop.initializer, loop.expression, body);
  if (ts.isWhileStatement(loop)) return f.updateWhileStatement(loop, loop.expression, body);
  if (ts.isDoStatement(loop)) return f.updateDoStatement(loop, body, loop.expression);
  return loop;
}

const formatHost: ts.FormatDiagnosticsHost = {
  getCanonicalFileName: (f) => f,
  getCurrentDirectory: () => process.cwd(),
  getNewLine: () => '\n',
};

function enclosingFn(n: ts.Node): ts.Node | undefined {
  for (let p = n.parent; p !== undefined; p = p.parent) if (isFnBoundary(p) || ts.isPropertyDeclaration(p)) return p;
  return undefined;
}

function isCallee(n: ts.Node): boolean {
  const p = n.parent;
  if (ts.isCallExpression(p) && p.expression === n) return true;
  if ((ts.isPropertyAccessExpression(p) || ts.isElementAccessExpression(p)) && p.parent !== undefined) {
    const pa = p as ts.PropertyAccessExpression;
    if ((ts.isPropertyAccessExpression(p) && p.name === n) && ts.isCallExpression(p.parent) && p.parent.expression === pa) return true;
  }
  return false;
}

function isDeclarationName(n: ts.Node): boolean {
  const p = n.parent;
  return (
    (ts.isFunctionDeclaration(p) || ts.isMethodDeclaration(p) || ts.isMethodSignature(p) || ts.isFunctionExpression(p) || ts.isPropertyAssignment(p)) &&
    (p as { name?: ts.Node }).name === n
  );
}

function isTypePosition(n: ts.Node): boolean {
  for (let p: ts.Node | undefined = n.parent; p !== undefined; p = p.parent) {
    if (ts.isTypeNode(p) || ts.isHeritageClause(p) || ts.isImportSpecifier(p) || ts.isExportSpecifier(p)) return true;
    if (ts.isExpression(p) || ts.isStatement(p)) return false;
  }
  return false;
}

function usesThis(fn: ts.ArrowFunction): boolean {
  let found = false;
  const visit = (n: ts.Node): void => {
    if (found) return;
    if (n.kind === ts.SyntaxKind.ThisKeyword) found = true;
    else if (!(ts.isFunctionLike(n) && !ts.isArrowFunction(n))) ts.forEachChild(n, visit);
  };
  ts.forEachChild(fn, visit);
  return found;
}

function usesArguments(fn: ts.ArrowFunction): boolean {
  let found = false;
  const visit = (n: ts.Node): void => {
    if (found) return;
    if (ts.isIdentifier(n) && n.text === 'arguments') found = true;
    else if (!(ts.isFunctionLike(n) && !ts.isArrowFunction(n))) ts.forEachChild(n, visit);
  };
  ts.forEachChild(fn, visit);
  return found;
}

function qualifiedName(d: FnLike): string {
  const name = d.name !== undefined ? d.name.getText() : '<anonymous>';
  const cls = d.parent !== undefined && ts.isClassDeclaration(d.parent) && d.parent.name !== undefined ? `${d.parent.name.text}.` : '';
  return `${path.basename(d.getSourceFile().fileName, '.ts')}:${cls}${name}`;
}
