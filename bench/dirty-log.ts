// Dirty-log benchmark entry: `node dist/bench/dirty-log.js [options]` runs `kvmmu bench dirty-log [options]` (same options, output and exit codes).
//
//   node dist/bench/dirty-log.js --fast-path both -v 2 -b 256M --out bench-results

import { main } from '../src/cli/main';

void main([process.argv[0]!, 'kvmmu', 'bench', 'dirty-log', ...process.argv.slice(2)]).then((code) => {
  process.exitCode = code;
});
