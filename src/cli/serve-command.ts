// `kvmmu serve`: start the browser view's server (loopback unless --host says otherwise) and print its URL.

import { InvalidArgumentError, type Command } from 'commander';
import * as web from '../web/server';

/** The server's handle, as this command uses it. */
type WebServer = Awaited<ReturnType<typeof web.startServer>>;

export interface ServeCliOptions {
  port: number;
  host: string;
  bench: string;
}

function port(v: string): number {
  const n = /^\s*-?\d+\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`--port must be an integer, not '${v}'`);
  if (n < 0 || n > 65535) throw new InvalidArgumentError(`--port must be from 0 to 65535, not ${n}`);
  return n;
}

function host(v: string): string {
  if (v.trim() === '') throw new InvalidArgumentError('--host must name an address, e.g. 127.0.0.1');
  return v.trim();
}

/** The warning printed when the server listens where other machines can reach it. */
export function networkWarning(s: Pick<WebServer, 'host' | 'port'>): string {
  return (
    `kvmmu serve: warning: listening on ${s.host}, which is not loopback: the page and its API are reachable from the network, ` +
    `and anyone who can reach port ${s.port} can run checks on this machine`
  );
}

/** Start the server and keep it running until SIGINT or SIGTERM. */
export async function serveCommand(o: ServeCliOptions): Promise<void> {
  const s = await web.startServer({ host: o.host, port: o.port, benchDir: o.bench });
  if (!s.loopback || !web.isLoopbackHost(o.host)) process.stderr.write(networkWarning(s) + '\n');
  process.stdout.write(`kvmmu serve: ${s.url}  (Ctrl-C stops it)\n`);
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      void s.close().then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('serve the browser view: step through counterexamples, play the scheduler, chart benchmark results')
    .option('--port <p>', 'TCP port (0 picks a free one)', port, 8080)
    .option('--host <address>', 'address to listen on; anything but loopback makes the page reachable from the network', host, '127.0.0.1')
    .option('--bench <dir>', 'directory with `kvmmu bench --out` results (dirty-log.json, scale.json)', 'bench-out')
    .action(async (opts: ServeCliOptions) => {
      await serveCommand(opts);
    });
}
