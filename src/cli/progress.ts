// A progress bar on stderr for long work (only on a terminal), built on cli-progress.

import { SingleBar } from 'cli-progress';

export class ProgressLine {
  private readonly bar: SingleBar;

  constructor(label: string, total: number) {
    this.bar = new SingleBar(
      {
        format: `${label} [{bar}] {value}/{total} s | {info}`,
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
