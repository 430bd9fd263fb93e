/**
 * `limits.requests_per_second` / `burst` counted once for all replicas: one atomic script per
 * decision (GCRA, the token bucket as one timestamp per client), on the store's clock, so a
 * client spread over N replicas gets the configured rate, not N times it. Keys expire when the
 * bucket would be full again. With the store down or slow the caller's local bucket decides.
 */
import { script, type Store } from "./store.ts";

/**
 * KEYS[1]: the client's theoretical arrival time (µs). ARGV: interval µs (1/rate), burst × interval.
 * Returns -1 when allowed, else µs until a request would be.
 */
const GCRA = script(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
-- Not a time this script wrote (absent, text, NaN, inf, or later than any it could): start over.
if tat == nil or tat ~= tat or tat > now + tau + interval then tat = now end
if tat < now then tat = now end
local nxt = tat + interval
if nxt - now > tau then return math.min(math.floor(nxt - now - tau), tau + interval) end
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.floor((nxt - now) / 1000) + 1)
return -1
`);

export class SharedRate {
  constructor(private readonly store: Store) {}

  /** null: allowed; a number: seconds to wait; undefined: the store did not decide. */
  async take(clientKey: string, rate: number, burst: number): Promise<number | null | undefined> {
    const interval = Math.max(1, Math.round(1e6 / rate));
    const got = await this.store.script(
      GCRA,
      [this.store.key("r", clientKey)],
      [String(interval), String(interval * burst)],
    );
    if (typeof got !== "number") return undefined;
    // Only the script's own "allowed" allows: any other negative number is not an answer.
    if (got === -1) return null;
    if (!(got >= 0)) return undefined;
    return Math.max(1, Math.ceil(Math.min(got, interval * (burst + 1)) / 1e6));
  }
}
