/**
 * The upstream's pull quota, as Docker Hub reports it on every manifest answer
 * (`ratelimit-limit: 100;w=21600`, `ratelimit-remaining: 76;w=21600`, `docker-ratelimit-source`),
 * made visible: gauges per registry, one warning when it runs low, the figure on the index page,
 * and an upstream 429 turned into a TOOMANYREQUESTS that tells the operator the fix.
 */
import type { Logger } from "../../log.ts";
import type { RegistryConfig } from "../../config/registries.ts";
import type { QuotaView, RateLimit } from "../../status/quota.ts";
import { MirrorError } from "../errors.ts";
import { labelValue } from "../../metrics.ts";

/** Under this share of the limit, one warning line is logged. */
const LOW_SHARE = 0.1;
/** Retry-After when the upstream's 429 names none (Docker Hub's often does not). */
const DEFAULT_RETRY_AFTER_S = 60;
/** Header values are the upstream's: bound what is parsed. */
const MAX_FIELD = 200;

/** `100;w=21600`, `100`, or the older `100, 100;w=21600`: the first quota and its window. */
function parseQuota(value: string | null): { n: number; windowS: number | null } | null {
  if (value === null || value.length > MAX_FIELD) return null;
  const m = /^\s*(\d{1,12})\s*(?:;\s*w\s*=\s*(\d{1,12}))?/.exec(value);
  if (!m) return null;
  return { n: Number(m[1]), windowS: m[2] === undefined ? null : Number(m[2]) };
}

export function parseRateLimit(headers: Headers, now = Date.now()): RateLimit | null {
  const limit = parseQuota(headers.get("ratelimit-limit"));
  const remaining = parseQuota(headers.get("ratelimit-remaining"));
  if (limit === null || remaining === null) return null;
  const source = headers.get("docker-ratelimit-source");
  return {
    limit: limit.n,
    remaining: remaining.n,
    windowS: remaining.windowS ?? limit.windowS,
    source: source !== null && source.length <= MAX_FIELD ? source : null,
    at: now,
  };
}

/** Per registry: the latest figures, 429s, and the manifest GETs that cost quota. */
export class QuotaTracker {
  private readonly latest = new Map<string, RateLimit>();
  private readonly low = new Set<string>();
  private readonly rejected = new Map<string, number>();
  private readonly manifestGets = new Map<string, number>();
  /** Set by the cluster (cluster/quota.ts): each new figure is shared with the other replicas. */
  shared: ((registry: string, rl: RateLimit) => void) | null = null;

  /** Reads the ratelimit fields of any upstream answer. */
  observe(registry: string, headers: Headers, log: Logger): void {
    const rl = parseRateLimit(headers);
    if (rl === null) return;
    this.latest.set(registry, rl);
    this.shared?.(registry, rl);
    const isLow = rl.remaining < rl.limit * LOW_SHARE;
    if (isLow && !this.low.has(registry)) {
      this.low.add(registry);
      log.warn("upstream pull quota running low", {
        registry,
        remaining: rl.remaining,
        limit: rl.limit,
        ...(rl.windowS !== null ? { window_s: rl.windowS } : {}),
        ...(rl.source !== null ? { source: rl.source } : {}),
      });
    } else if (!isLow) this.low.delete(registry);
  }

  /** Another replica's figure (cluster/quota.ts): kept when it is newer than this one's. */
  merge(registry: string, rl: RateLimit): void {
    const mine = this.latest.get(registry);
    if (mine === undefined || mine.at < rl.at) this.latest.set(registry, rl);
  }

  /** An upstream manifest GET went out: the request Docker Hub counts. */
  countManifestGet(registry: string): void {
    this.manifestGets.set(registry, (this.manifestGets.get(registry) ?? 0) + 1);
  }

  manifestGetsOf(registry: string): number {
    return this.manifestGets.get(registry) ?? 0;
  }

  /** The upstream answered 429: counted, and the client gets an error that names the fix. */
  tooManyRequests(
    registry: RegistryConfig,
    headers: Headers,
    upstreamMessage: string | null = null,
  ): MirrorError {
    this.rejected.set(registry.name, (this.rejected.get(registry.name) ?? 0) + 1);
    const rl = parseRateLimit(headers);
    const who =
      registry.username === null
        ? `for this crm's address; configure credentials for ${registry.name} under mirror.registries`
        : `for the account configured for ${registry.name} under mirror.registries; wait, or use an account with a higher limit`;
    // The quota fields go on to the client as the upstream sent them.
    const passed: Record<string, string> = {};
    for (const [k, v] of headers)
      if (k.startsWith("ratelimit-") || k === "docker-ratelimit-source")
        passed[k] = v.slice(0, MAX_FIELD);
    return new MirrorError(429, "TOOMANYREQUESTS", `${registry.name} rate limit reached ${who}`, {
      headers: { ...passed, "retry-after": String(retryAfter(headers.get("retry-after"))) },
      detail: {
        registry: registry.name,
        ...(rl
          ? {
              limit: rl.limit,
              remaining: rl.remaining,
              ...(rl.windowS !== null ? { window_s: rl.windowS } : {}),
            }
          : {}),
        ...(upstreamMessage !== null ? { upstream: upstreamMessage } : {}),
      },
    });
  }

  /** The latest figures per registry (the status page's QuotaSource). */
  quotas(): QuotaView[] {
    return this.views();
  }

  views(): QuotaView[] {
    return [...this.latest].map(([registry, rl]) => ({ registry, ...rl }));
  }

  metricLines(): string[] {
    const out: string[] = [];
    const family = (
      name: string,
      type: string,
      help: string,
      values: Iterable<[string, number]>,
    ): void => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [registry, v] of values)
        out.push(`${name}{registry="${labelValue(registry)}"} ${v}`);
    };
    family(
      "crm_upstream_ratelimit_remaining",
      "gauge",
      "Pulls left in the upstream's window (ratelimit-remaining), as last seen.",
      [...this.latest].map(([r, rl]) => [r, rl.remaining]),
    );
    family(
      "crm_upstream_ratelimit_limit",
      "gauge",
      "The upstream's pull limit per window (ratelimit-limit), as last seen.",
      [...this.latest].map(([r, rl]) => [r, rl.limit]),
    );
    family(
      "crm_upstream_rate_limited_total",
      "counter",
      "Upstream 429 (too many requests) answers, by registry.",
      this.rejected,
    );
    family(
      "crm_upstream_manifest_gets_total",
      "counter",
      "Manifest GETs sent upstream (what Docker Hub counts as pulls), by registry.",
      this.manifestGets,
    );
    return out;
  }
}

/** The upstream's Retry-After in seconds (a number or an HTTP date), else a default. */
function retryAfter(value: string | null): number {
  if (value === null) return DEFAULT_RETRY_AFTER_S;
  const v = value.trim();
  if (/^\d{1,9}$/.test(v)) return Number(v);
  const at = Date.parse(v);
  if (Number.isFinite(at)) return Math.max(0, Math.ceil((at - Date.now()) / 1000));
  return DEFAULT_RETRY_AFTER_S;
}
