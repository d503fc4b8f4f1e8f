// A progress bar on stderr for long work (only on a terminal), built on cli-progress.

import { SingleBar } from 'cli-progress';

export class ProgressLine {
  private readonly bar: SingleBar;

  /** `total` in `unit` (seconds by default; '%' for a share of work done). */
  constructor(label: string, total: number, unit = ' s') {
    this.bar = new SingleBar(
      {
        format: `${label} [{bar}] {value}/{total}${unit} | {info}`,
        barsize: 24,
        hideCursor: true,
        stream: process.stderr,
        clearOnComplete: true,
      },
      undefined,
    );
    this.bar.start(total, 0, { info: '' });
  }

  update(value: number, info: string): void {
    this.bar.update(Math.round(value * 10) / 10, { info });
  }

  done(): void {
    this.bar.stop();
  }
}

/** A one-line status on stderr, rewritten in place (for work whose total is unknown). */
export class StatusLine {
  private last = '';

  show(text: string): void {
    const width = process.stderr.columns ?? 100;
    const t = text.length > width - 1 ? text.slice(0, width - 1) : text;
    process.stderr.write(`\r${t}${' '.repeat(Math.max(0, this.last.length - t.length))}`);
    this.last = t;
  }

  clear(): void {
    if (this.last === '') return;
    process.stderr.write(`\r${' '.repeat(this.last.length)}\r`);
    this.last = '';
  }
}
