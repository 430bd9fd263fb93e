/**
 * More than one upstream per registry (`mirror.registries.<name>.upstreams`): a request goes to
 * the first upstream that is not backing off; one that cannot be reached (connect, TLS, no head
 * in time) or answers 5xx or 429 hands the request to the next, and is skipped for a back-off
 * (mirror.failover.backoff, doubling to max_backoff) after which the next request probes it
 * again. Content by digest may come from any upstream (its digest is checked where it is kept);
 * a tag is resolved by the first healthy one, as every request is.
 *
 * A fallback such as mirror.gcr.io answers 404 for what it does not hold: after an earlier
 * upstream failed, that 404 is not the answer (fleet.md), so the earlier failure is what the
 * client gets when nothing better comes.
 *
 * Each attempt but the last gets mirror.failover.attempt_timeout for its whole head (token,
 * redirects, connect, head): containerd ≥ 2.3 gives up on a head after 30 s, so a failover must
 * answer inside that. A registry with one upstream takes exactly today's path.
 */
import { labelValue } from "../../metrics.ts";
import type { ResilienceState } from "../../status/sources.ts";
import type { Runtime } from "../../context.ts";
import { DialError } from "../../errors.ts";
import { upstreamsOf, type RegistryConfig } from "../../config/registries.ts";
import type { TokenCache } from "../auth/token-cache.ts";
import { MirrorError } from "../errors.ts";
import type { FailoverConfig } from "./failover-config.ts";
import { RegistryClient, type UpstreamRequest, type UpstreamResult } from "./registry-client.ts";

/** What the mirror asks of a registry's upstream side: one client, or a chain of them. */
export type MirrorClient = Pick<RegistryClient, "registry" | "fetch">;

/** One upstream as the status page shows it (status/sources.ts defines the shape). */
export type UpstreamView = ResilienceState["upstreams"][number];

interface Health {
  registry: string;
  /** Host (and port), for /metrics labels and log lines. */
  host: string;
  /** Place in the registry's list, from 1. */
  position: number;
  failures: number;
  /** Skipped until this time (ms since the epoch); 0 when healthy. */
  until: number;
  reason: string | null;
}

/** Upstream health for the life of the process (across reloads), with its metrics. */
export class UpstreamHealth {
  private readonly entries = new Map<string, Health>();
  /** registry\nreason → failovers counted. */
  private readonly failovers = new Map<string, number>();

  entry(registry: string, url: URL, position: number): Health {
    const key = `${registry}\n${url.href}`;
    let h = this.entries.get(key);
    if (!h) {
      h = { registry, host: url.host, position, failures: 0, until: 0, reason: null };
      this.entries.set(key, h);
    }
    h.position = position;
    return h;
  }

  /** Drops the entries of upstreams no longer configured (a reload). */
  retain(registries: Iterable<RegistryConfig>): void {
    const keep = new Set<string>();
    for (const r of registries)
      if (r.upstreams) for (const u of r.upstreams) keep.add(`${r.name}\n${u.href}`);
    for (const k of this.entries.keys()) if (!keep.has(k)) this.entries.delete(k);
  }

  countFailover(registry: string, reason: string): void {
    const key = `${registry}\n${reason}`;
    this.failovers.set(key, (this.failovers.get(key) ?? 0) + 1);
  }

  views(now = Date.now()): UpstreamView[] {
    return [...this.entries.values()].map((h) => ({
      registry: h.registry,
      upstream: h.position,
      state: h.until > now ? "backoff" : "healthy",
      failures: h.failures,
      retryInS: Math.max(0, Math.ceil((h.until - now) / 1000)),
      reason: h.reason,
    }));
  }

  metricLines(now = Date.now()): string[] {
    const lbl = (h: Health): string =>
      `registry="${labelValue(h.registry)}",upstream="${labelValue(h.host)}"`;
    const out = [
      "# HELP crm_mirror_upstream_up 1 while an upstream of a registry with several is used, 0 while it is skipped for its back-off.",
      "# TYPE crm_mirror_upstream_up gauge",
      ...[...this.entries.values()].map(
        (h) => `crm_mirror_upstream_up{${lbl(h)}} ${h.until > now ? 0 : 1}`,
      ),
      "# HELP crm_mirror_upstream_backoff_seconds Seconds until a skipped upstream is probed again.",
      "# TYPE crm_mirror_upstream_backoff_seconds gauge",
      ...[...this.entries.values()].map(
        (h) =>
          `crm_mirror_upstream_backoff_seconds{${lbl(h)}} ${Math.max(0, Math.ceil((h.until - now) / 1000))}`,
      ),
      "# HELP crm_mirror_upstream_failures Failures in a row of an upstream (0 once it answers again).",
      "# TYPE crm_mirror_upstream_failures gauge",
      ...[...this.entries.values()].map(
        (h) => `crm_mirror_upstream_failures{${lbl(h)}} ${h.failures}`,
      ),
      "# HELP crm_mirror_upstream_failovers_total Requests handed from a failing upstream to the next, by the failure.",
      "# TYPE crm_mirror_upstream_failovers_total counter",
    ];
    for (const [k, n] of this.failovers) {
      const [registry, reason] = k.split("\n") as [string, string];
      out.push(
        `crm_mirror_upstream_failovers_total{registry="${labelValue(registry)}",reason="${labelValue(reason)}"} ${n}`,
      );
    }
    return out;
  }
}

const healths = new WeakMap<Runtime, UpstreamHealth>();

/** The runtime's upstream health, made (and its metrics registered) on first use. */
export function upstreamHealth(rt: Runtime): UpstreamHealth {
  let h = healths.get(rt);
  if (!h) {
    const made = new UpstreamHealth();
    rt.metrics.sections.push(() => made.metricLines());
    healths.set(rt, made);
    h = made;
  }
  h.retain(rt.config.mirror.registries.values());
  return h;
}

/** The short reason a failure counts as the upstream's (failover), or null when it is an answer to pass on. */
export function upstreamFailure(e: unknown): string | null {
  const dial =
    e instanceof DialError
      ? e
      : e instanceof MirrorError && e.cause instanceof DialError
        ? e.cause
        : null;
  if (dial !== null)
    return dial.reason === "tls"
      ? "tls"
      : dial.reason === "timeout"
        ? "timeout"
        : dial.reason === "refused"
          ? "refused"
          : "connection";
  if (e instanceof MirrorError && (e.status >= 500 || e.status === 429))
    return e.status === 429 ? "429" : "unavailable";
  return null;
}

/** An answer that hands the request on: 5xx, or 429 (a quota that another upstream may not share). */
export function failingStatus(status: number): boolean {
  return status >= 500 || status === 429;
}

interface Member {
  url: URL;
  client: RegistryClient;
  health: Health;
}

/** One registry's upstreams as one client (MirrorClient), trying them in order. */
export class UpstreamChain {
  private readonly members: Member[];

  constructor(
    private readonly rt: Runtime,
    readonly registry: RegistryConfig,
    tokens: TokenCache,
    private readonly health: UpstreamHealth,
    private readonly config: FailoverConfig,
    /** Sees the fields of an answer that was failed over (a 429's quota figures, metered.ts shows them). */
    private readonly observe: (headers: Headers) => void = () => {},
  ) {
    // Each upstream is a client of its own (its own base, learned challenge and redirect trust),
    // with the registry's credentials and redirect_hosts; tokens are cached per realm anyway.
    const urls = upstreamsOf(registry);
    this.members = urls.map((url, i) => ({
      url,
      client: new RegistryClient(rt, { ...registry, upstream: url }, tokens),
      // A registry with one upstream takes today's path: no health is tracked or shown for it.
      health:
        urls.length > 1
          ? health.entry(registry.name, url, i + 1)
          : {
              registry: registry.name,
              host: url.host,
              position: 1,
              failures: 0,
              until: 0,
              reason: null,
            },
    }));
  }

  async fetch(req: UpstreamRequest): Promise<UpstreamResult> {
    const first = this.members[0] as Member;
    if (this.members.length === 1) return first.client.fetch(req);
    const now = Date.now();
    let order = this.members.filter((m) => m.health.until <= now);
    // Every one is backing off: asking is better than refusing; the soonest due goes first.
    if (order.length === 0)
      order = [...this.members].sort((a, b) => a.health.until - b.health.until);

    /** The first failing answer (5xx/429), kept unread in case nothing better comes. */
    let held: UpstreamResult | null = null;
    let thrown: unknown = null;
    let failedBefore: string | null = null;
    for (let i = 0; i < order.length; i++) {
      const m = order[i] as Member;
      const last = i === order.length - 1;
      const attempt = new AbortController();
      const timer = last
        ? undefined
        : setTimeout(() => attempt.abort(), this.config.attemptTimeoutMs);
      let result: UpstreamResult;
      try {
        const pending = m.client.fetch({
          ...req,
          signal: last ? req.signal : AbortSignal.any([req.signal, attempt.signal]),
        });
        result = last ? await pending : await untilAborted(pending, attempt.signal);
      } catch (e) {
        if (req.signal.aborted) throw e;
        const reason = attempt.signal.aborted ? "timeout" : upstreamFailure(e);
        if (reason === null) throw e;
        this.failed(m, reason, e instanceof Error ? e.message : String(e), last);
        thrown ??= attempt.signal.aborted
          ? new MirrorError(
              504,
              "UNAVAILABLE",
              `upstream ${m.url.host} of ${this.registry.name}: no answer within ${this.config.attemptTimeoutMs} ms`,
            )
          : e;
        failedBefore = reason;
        continue;
      } finally {
        clearTimeout(timer);
      }
      const status = result.response.status;
      if (failingStatus(status)) {
        if (!last) this.observe(result.response.headers);
        this.failed(m, String(status), `answered ${status}`, last);
        failedBefore = String(status);
        if (held === null) held = result;
        else await result.response.body?.cancel().catch(() => {});
        continue;
      }
      if (failedBefore !== null && status === 404) {
        // A fallback that does not hold it (mirror.gcr.io holds popular images only): not the answer.
        this.rt.log.info(
          "mirror upstream does not hold it; not the answer after an earlier failure",
          { registry: this.registry.name, upstream: m.url.host, path: req.path.slice(0, 200) },
        );
        await result.response.body?.cancel().catch(() => {});
        continue;
      }
      this.recovered(m);
      if (failedBefore !== null)
        this.rt.log.info("mirror failover answered", {
          registry: this.registry.name,
          upstream: m.url.host,
          after: failedBefore,
          path: req.path.slice(0, 200),
        });
      if (held !== null) await held.response.body?.cancel().catch(() => {});
      return result;
    }
    if (held !== null) return held;
    throw thrown;
  }

  private failed(m: Member, reason: string, detail: string, last: boolean): void {
    const h = m.health;
    h.failures++;
    const backoff = Math.min(
      this.config.maxBackoffMs,
      this.config.backoffMs * 2 ** Math.min(h.failures - 1, 30),
    );
    h.until = Date.now() + backoff;
    // The short reason only: the detail may name the upstream, which the status page never shows.
    h.reason = /^\d+$/.test(reason) ? `answered ${reason}` : reason;
    if (!last) this.health.countFailover(this.registry.name, reason);
    this.rt.log.warn(
      last
        ? "mirror upstream failed; no upstream left to try"
        : "mirror upstream failed; trying the next",
      {
        registry: this.registry.name,
        upstream: m.url.host,
        reason,
        detail: detail.slice(0, 300),
        skippedForS: Math.round(backoff / 1000),
      },
    );
  }

  private recovered(m: Member): void {
    const h = m.health;
    if (h.failures > 0)
      this.rt.log.info("mirror upstream answers again", {
        registry: this.registry.name,
        upstream: m.url.host,
        after: h.failures,
      });
    h.failures = 0;
    h.until = 0;
    h.reason = null;
  }
}

/**
 * `p`, or a rejection as soon as `signal` aborts: a step that does not watch the signal (a token
 * fetch) must not hold a failover past its deadline. A late answer's body is dropped.
 */
function untilAborted(p: Promise<UpstreamResult>, signal: AbortSignal): Promise<UpstreamResult> {
  return new Promise<UpstreamResult>((resolve, reject) => {
    let done = false;
    const onAbort = (): void => {
      if (done) return;
      done = true;
      reject(new Error("attempt deadline passed"));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (r) => {
        signal.removeEventListener("abort", onAbort);
        if (done) void r.response.body?.cancel().catch(() => {});
        else {
          done = true;
          resolve(r);
        }
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        if (!done) {
          done = true;
          reject(e);
        }
      },
    );
  });
}
