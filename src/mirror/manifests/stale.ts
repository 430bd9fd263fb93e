/**
 * `mirror.manifest_cache.stale_if_error`: the digest each tag last resolved to, and when, so that
 * when every upstream fails for a tag (connection, 5xx, 429: Docker Hub's quota above all) a tag
 * resolved within the window is answered with that digest's manifest, if the manifest cache still
 * holds it, marked `Warning: 110 - "stale: <reason>"`. Blob GETs do not count against Docker
 * Hub's quota, so a pull under 429 then completes. Never used without an upstream failure: a tag
 * that moved is seen on the very next request that reaches an upstream.
 *
 * Bounded: at most MAX_TAGS remembered, least recently resolved dropped first.
 */
import type { Runtime } from "../../context.ts";
import { labelValue } from "../../metrics.ts";

const MAX_TAGS = 10_000;

interface Resolved {
  digest: string;
  at: number;
}

export class TagMemory {
  /** Map order is resolution order: remember() moves an entry to the end. */
  private readonly entries = new Map<string, Resolved>();
  /** registry\nreason → stale answers given. */
  private readonly served = new Map<string, number>();

  remember(key: string, digest: string, now = Date.now()): void {
    this.entries.delete(key);
    this.entries.set(key, { digest, at: now });
    if (this.entries.size > MAX_TAGS) {
      const oldest = this.entries.keys().next();
      if (!oldest.done) this.entries.delete(oldest.value);
    }
  }

  /** The digest `key` resolved to within `windowMs`, or null. */
  recall(key: string, windowMs: number, now = Date.now()): string | null {
    if (windowMs <= 0) return null;
    const r = this.entries.get(key);
    return r !== undefined && now - r.at <= windowMs ? r.digest : null;
  }

  countServed(registry: string, reason: string): void {
    const k = `${registry}\n${reason}`;
    this.served.set(k, (this.served.get(k) ?? 0) + 1);
  }

  metricLines(): string[] {
    const out = [
      "# HELP crm_mirror_stale_manifests_total Tags answered with the digest they last resolved to because every upstream failed (mirror.manifest_cache.stale_if_error).",
      "# TYPE crm_mirror_stale_manifests_total counter",
    ];
    for (const [k, n] of this.served) {
      const [registry, reason] = k.split("\n") as [string, string];
      out.push(
        `crm_mirror_stale_manifests_total{registry="${labelValue(registry)}",reason="${labelValue(reason)}"} ${n}`,
      );
    }
    return out;
  }
}

/** The key of one tag resolution: registry scope, repository, tag and Accept (which decides the answer). */
export function tagKey(scope: string, repository: string, tag: string, accept: string): string {
  return `${scope}\n${repository}\n${tag}\n${accept}`;
}

/** A Warning field value (RFC 9111 §5.5 style): warn-code 110, agent "-", a quoted reason. */
export function staleWarning(reason: string): string {
  const text = reason
    .replace(/[^\x20-\x7e]/g, "?")
    .replace(/["\\]/g, "'")
    .slice(0, 200);
  return `110 - "stale: ${text}"`;
}

const memories = new WeakMap<Runtime, TagMemory>();

/** The runtime's tag memory (across reloads), its counter registered on first use. */
export function tagMemory(rt: Runtime): TagMemory {
  let m = memories.get(rt);
  if (!m) {
    const made = new TagMemory();
    rt.metrics.sections.push(() => made.metricLines());
    memories.set(rt, made);
    m = made;
  }
  return m;
}
