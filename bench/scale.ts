// Scaling benchmark entry: `node dist/bench/scale.js [options]` runs `kvmmu bench scale [options]` (same options, output and exit codes).
//
//   node dist/bench/scale.js -v 2 --out bench-results

import { main } from '../src/cli/main';

void main([process.argv[0]!, 'kvmmu', 'bench', 'scale', ...process.argv.slice(2)]).then((code) => {
  process.exitCode = code;
});
