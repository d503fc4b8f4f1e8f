// Errors a user can cause (bad sizes, bad names, bad files): the CLI prints their message on one line and exits 2.

export class KvmmuError extends Error {
  override readonly name: string = 'KvmmuError';

  /** Marks errors of this class and its subclasses, from any copy of this module (see below). */
  get isKvmmuError(): boolean {
    return true;
  }

  /**
   * The checker's generator build (dist/gen) carries its own copy of this
   * module, hence of this class; an error from a scenario's machine comes from
   * that copy. So `instanceof KvmmuError` goes by the mark, which both copies'
   * prototypes carry, and an error from either is a user's error. The mark is
   * not the error's own property, so an error copied across a worker boundary
   * (a plain Error then) does not keep it: a worker's failure is not taken for
   * a usage error. Subclasses keep the usual rule.
   */
  static override [Symbol.hasInstance](v: unknown): boolean {
    if (this !== KvmmuError) return Function.prototype[Symbol.hasInstance].call(this, v);
    return v instanceof Error && (v as { isKvmmuError?: unknown }).isKvmmuError === true;
  }
}
