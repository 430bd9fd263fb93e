/**
 * Config for more than one upstream per registry: `mirror.registries.<name>.upstreams: [URL, ...]`
 * (beside `upstream`, never both) and `mirror.failover`, the back-off and per-attempt deadline
 * failover.ts uses. Its own module so config/load.ts only hooks it in.
 */
import type { Checker } from "../../config/checker.ts";

export interface FailoverConfig {
  /** A failing upstream is skipped this long first; each further failure doubles it. */
  backoffMs: number;
  /** The doubling stops here. */
  maxBackoffMs: number;
  /**
   * An attempt that is not the last one gets this long for its answer's head (token, redirects,
   * connect and head included) before the next upstream is asked. containerd ≥ 2.3 gives up on a
   * head after 30 s (hard-coded): two attempts of 10 s and a third that answers fit in it.
   */
  attemptTimeoutMs: number;
}

export const DEFAULT_FAILOVER: FailoverConfig = Object.freeze({
  backoffMs: 30_000,
  maxBackoffMs: 600_000,
  attemptTimeoutMs: 10_000,
});

export const FAILOVER_KEYS = ["backoff", "max_backoff", "attempt_timeout"] as const;

export function buildFailover(c: Checker, raw: unknown, path = "mirror.failover"): FailoverConfig {
  const o = c.object(path, raw, FAILOVER_KEYS);
  if (o === null) return DEFAULT_FAILOVER;
  const backoffMs = c.duration(`${path}.backoff`, o.backoff, DEFAULT_FAILOVER.backoffMs);
  const maxBackoffMs = c.duration(
    `${path}.max_backoff`,
    o.max_backoff,
    Math.max(DEFAULT_FAILOVER.maxBackoffMs, backoffMs),
  );
  const attemptTimeoutMs = c.duration(
    `${path}.attempt_timeout`,
    o.attempt_timeout,
    DEFAULT_FAILOVER.attemptTimeoutMs,
  );
  if (backoffMs === 0) c.fail(`${path}.backoff`, o.backoff, "must be greater than zero");
  if (maxBackoffMs < backoffMs)
    c.fail(`${path}.max_backoff`, o.max_backoff, `must be at least backoff (${backoffMs} ms)`);
  if (attemptTimeoutMs === 0)
    c.fail(`${path}.attempt_timeout`, o.attempt_timeout, "must be greater than zero");
  return { backoffMs, maxBackoffMs, attemptTimeoutMs };
}

/** One upstream URL as config.ts accepts `upstream`: http(s), no user:password, no trailing slash. */
function upstreamUrl(c: Checker, path: string, value: unknown): URL | null {
  const text = c.string(path, value);
  if (text === null) return null;
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    c.fail(path, text, "is not a URL");
    return null;
  }
  if (u.protocol !== "https:" && u.protocol !== "http:") {
    c.fail(path, text, "must be an https:// (or http://) URL");
    return null;
  }
  if (u.username || u.password) {
    c.rule(
      path,
      "must not carry user:password (the URL is not shown); use username and password_file",
    );
    return null;
  }
  return new URL(u.origin + u.pathname.replace(/\/+$/, ""));
}

/**
 * `upstreams` of one registry, in the order they are tried; null (with the error recorded) when
 * the list is unusable or `upstream` is given as well: which one was meant cannot be guessed.
 */
export function buildUpstreamList(
  c: Checker,
  path: string,
  value: unknown,
  hasUpstream: boolean,
): URL[] | null {
  if (hasUpstream) {
    c.rule(`${path}.upstreams`, "give either upstream (one URL) or upstreams (a list), not both");
    return null;
  }
  if (!Array.isArray(value) || value.length === 0) {
    c.fail(`${path}.upstreams`, value, "must be a non-empty list of https:// URLs, tried in order");
    return null;
  }
  const out: URL[] = [];
  const seen = new Set<string>();
  let ok = true;
  value.forEach((v, i) => {
    const u = upstreamUrl(c, `${path}.upstreams[${i}]`, v);
    if (u === null) ok = false;
    else if (seen.has(u.href)) {
      c.fail(`${path}.upstreams[${i}]`, v, "is listed twice");
      ok = false;
    } else {
      seen.add(u.href);
      out.push(u);
    }
  });
  return ok ? out : null;
}
