/**
 * Durations as operators write them in nginx, Go and Kubernetes: "30s", "5m", "1h30m", "250ms".
 * A bare number is seconds, as in nginx, so `idle: 300` means what it looks like.
 */
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Returns milliseconds, or an error message naming the rule. */
export function parseDuration(value: unknown): number | string {
  if (typeof value === "number") {
    return Number.isFinite(value) && value >= 0
      ? Math.round(value * 1000)
      : "must be a non-negative number of seconds";
  }
  if (typeof value !== "string") return 'must be a duration such as "30s", "5m" or "1h"';
  const s = value.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Math.round(Number(s) * 1000);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(s); m; m = re.exec(s)) {
    total += Number(m[1]) * (UNIT_MS[m[2] ?? ""] ?? 0);
    matched = re.lastIndex;
  }
  if (s === "" || matched !== s.length)
    return 'must be a duration such as "30s", "5m" or "1h" (units: ms, s, m, h, d)';
  return Math.round(total);
}

export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
