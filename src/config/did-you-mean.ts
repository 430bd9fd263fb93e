/**
 * "did you mean mirror.rules?": the nearest known name to a mistyped one, by edit distance
 * (insertions, deletions, substitutions and swaps of neighbours each cost 1), as nginx and Caddy
 * suggest for an unknown directive. Only close names are offered: a guess far off misleads.
 */

/** Optimal string alignment distance between `a` and `b`. */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array<number>(b.length + 1)
      .fill(0)
      .map((_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const row = d[i] as number[];
      const up = d[i - 1] as number[];
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row[j] = Math.min(
        (up[j] as number) + 1,
        (row[j - 1] as number) + 1,
        (up[j - 1] as number) + cost,
      );
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        row[j] = Math.min(row[j] as number, ((d[i - 2] as number[])[j - 2] as number) + 1);
    }
  }
  return (d[a.length] as number[])[b.length] as number;
}

/** Longer than any real key name by far: a mistyped key is never this long. */
export const MAX_WORD = 64;

/** The candidate closest to `word` (case-insensitive), or null when none is within a third of its length (at least 2), or `word` is longer than MAX_WORD. */
export function nearest(word: string, candidates: readonly string[]): string | null {
  // The distance costs length × length in time and memory; no key is this long, so no guess.
  if (word.length > MAX_WORD) return null;
  const w = word.toLowerCase();
  const limit = Math.max(2, Math.floor(w.length / 3));
  let best: { name: string; distance: number } | null = null;
  for (const c of candidates) {
    const distance = editDistance(w, c.toLowerCase());
    if (distance <= limit && (best === null || distance < best.distance))
      best = { name: c, distance };
  }
  return best?.name ?? null;
}
