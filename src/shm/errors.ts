// Errors a user can cause (bad sizes, bad names, bad files): the CLI prints their message on one line and exits 2.

export class KvmmuError extends Error {
  override readonly name = 'KvmmuError';
}
