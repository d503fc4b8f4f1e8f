// A sequence count over one Int32 word: a writer makes it odd while it changes a multi-word record, readers retry.
//
// Writers must already be serialized (by a lock); readers take no lock.
//   reader:  do { s = readBegin(); ...read... } while (readRetry(s));
//   writer:  writeBegin(); ...write...; writeEnd();

import type { Mem } from './access';

export class SeqCount {
  constructor(
    private readonly mem: Mem,
    /** Int32 index of the count word. */
    readonly word: number,
  ) {}

  /** Wait out a writer in progress and return the even count to compare against later. */
  readBegin(): number {
    let s = this.mem.load32(this.word);
    while ((s & 1) !== 0) s = this.mem.waitWhile32(this.word, s);
    return s;
  }

  /** True when a writer ran since `readBegin` returned `start`: the reader must retry. */
  readRetry(start: number): boolean {
    return this.mem.load32(this.word) !== start;
  }

  writeBegin(): void {
    this.mem.fetchAdd32(this.word, 1);
  }

  writeEnd(): void {
    this.mem.fetchAdd32(this.word, 1);
  }
}
