/**
 * The password brake (access.ts) counted once for all replicas: a guesser spread over N
 * replicas gets FAILURES_PER_MINUTE full checks a minute in total, not N times that. Like the
 * local brake, a check counts when it STARTS (in flight included) and a success is refunded;
 * FAILURES_PER_MINUTE failures block the address for BLOCK_MS. One atomic script per decision,
 * on the store's clock. With the store down or slow, the local brake decides.
 */
import { BLOCK_MS, FAILURES_PER_MINUTE } from "../access/access.ts";
import { script, type Store } from "./store.ts";

const WINDOW_MS = 60_000;

/**
 * KEYS: attempts (zset), failures (zset), block. ARGV: max, window ms, ticket, block ms.
 * Returns {0, ticket-score} when a check may start, {1, ms} when braked.
 */
const BEGIN = script(`
local left = redis.call('PTTL', KEYS[3])
if left > 0 then
  -- No block this script sets lasts longer than ARGV[4]: a longer one was not written by crm.
  if left > tonumber(ARGV[4]) then
    left = tonumber(ARGV[4])
    redis.call('PEXPIRE', KEYS[3], left)
  end
  return {1, left}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = 1000
  if oldest[2] then wait = math.max(1000, tonumber(oldest[2]) + window - now) end
  return {1, wait}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return {0, now}
`);

/** KEYS: attempts, failures, block. ARGV: max, window ms, block ms, member. */
const FAIL = script(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('PEXPIRE', KEYS[2], window)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[3]))
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
`);

export type BrakeStart = { kind: "check"; ticket: string } | { kind: "braked"; ms: number };

export class SharedBrake {
  constructor(
    private readonly store: Store,
    private readonly replicaId: string,
  ) {}

  private keys(client: string): string[] {
    // One hash slot per client ({...}), should the store ever be a Cluster.
    const k = `{${client}}`;
    return [
      this.store.key("b", k, "attempts"),
      this.store.key("b", k, "failures"),
      this.store.key("b", k, "block"),
    ];
  }

  /** undefined: the store did not decide (the local brake does). */
  async begin(client: string): Promise<BrakeStart | undefined> {
    const ticket = `${this.replicaId}:${crypto.randomUUID()}`;
    const got = await this.store.script(BEGIN, this.keys(client), [
      String(FAILURES_PER_MINUTE),
      String(WINDOW_MS),
      ticket,
      String(BLOCK_MS),
    ]);
    if (!Array.isArray(got) || typeof got[0] !== "number" || typeof got[1] !== "number")
      return undefined;
    return got[0] === 0
      ? { kind: "check", ticket }
      : { kind: "braked", ms: Math.min(Math.max(got[1], 0), BLOCK_MS) };
  }

  /** The check passed: it does not count. */
  refund(client: string, ticket: string): void {
    const [attempts] = this.keys(client);
    this.store.detached((c) => c.send("ZREM", [attempts as string, ticket]));
  }

  /** The check failed (or a shared one did): counted, and past the limit the address is blocked. */
  async fail(client: string): Promise<void> {
    await this.store.script(FAIL, this.keys(client), [
      String(FAILURES_PER_MINUTE),
      String(WINDOW_MS),
      String(BLOCK_MS),
      `${this.replicaId}:${crypto.randomUUID()}`,
    ]);
  }
}
