/**
 * The fuzz tests' PRNG: mulberry32, one independent stream per (seed, stream, case index), so every
 * case can be regenerated alone from its numbers.
 */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  u32(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  int(n: number): number {
    return n <= 0 ? 0 : this.u32() % n;
  }
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)] as T;
  }
  /** Random bytes as a latin1 string (one char per byte). */
  bytes(n: number): string {
    let s = "";
    for (let i = 0; i < n; i++) s += String.fromCharCode(this.int(256));
    return s;
  }
}

export function caseSeed(seed: number, stream: number, i: number): number {
  let h = (seed ^ Math.imul(stream + 0x632be5ab, 0x85ebca6b) ^ Math.imul(i + 1, 0x9e3779b9)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
