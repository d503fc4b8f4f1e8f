// A small seeded random-number generator (xorshift128+ on 32-bit halves), so runs and schedules can be repeated.

export function makeRng(seed: number): () => number {
  let a = (seed >>> 0) ^ 0x9e3779b9;
  let b = Math.imul(seed ^ 0x85ebca6b, 0xc2b2ae35) >>> 0 || 1;
  let c = 0x27d4eb2f;
  let d = 0x165667b1;
  return () => {
    // xoshiro128** step
    const r = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d, 11);
    return r / 4294967296;
  };
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
