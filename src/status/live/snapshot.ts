/**
 * Everything the status page shows, as one JSON-ready object (`/status.json`): requests and
 * tunnels in flight, the last 100 finished, per-registry totals with 15 minutes of throughput,
 * recent errors with hints, the upstream quota, the manifest cache and the TLS certificate.
 * Shown to operators, so it carries no secret: no credentials, no mirror.path_prefix, no
 * registry upstream URLs (names only), and a forward target only as its host.
 */
import pkg from "../../../package.json" with { type: "json" };
import type { Runtime } from "../../context.ts";
import type { ActiveView, RegistryView } from "../activity.ts";
import { BUCKET_MS } from "../activity.ts";
import { hintFor } from "./hints.ts";
import type { JournalEntry } from "../journal.ts";
import type { QuotaView } from "../quota.ts";
import type {
  CertificateState,
  ClusterStatus,
  ManifestCacheState,
  ResilienceState,
} from "../sources.ts";

export const RECENT = 100;
const ERRORS = 20;

export interface ActiveRow {
  client: string;
  kind: string;
  registry: string | null;
  what: string;
  bytes: number;
  rate: number;
  ms: number;
}

export interface RecentRow {
  id: string;
  time: number;
  client: string;
  kind: string;
  method: string;
  registry: string | null;
  what: string;
  status: number;
  bytes: number;
  ms: number;
  notes: string;
}

export interface ErrorRow {
  time: number;
  registry: string | null;
  what: string;
  status: number;
  message: string;
  hint: string;
}

export interface StatusSnapshot {
  version: string;
  instance: string;
  now: number;
  uptimeS: number;
  bucketS: number;
  active: ActiveRow[];
  recent: RecentRow[];
  registries: RegistryView[];
  errors: ErrorRow[];
  /** null: this crm does not track it (shown as such). */
  quota: QuotaView[] | null;
  manifestCache: ManifestCacheState | null;
  certificate: CertificateState;
  /** Upstream states of registries with several, and blob resumes; null while the mirror is off. */
  resilience: ResilienceState | null;
  /** null: no cluster section (one replica). */
  cluster: ClusterStatus | null;
}

/** A URL anywhere in a message becomes its host: upstream URLs are not shown. */
export function scrubUrls(s: string): string {
  return s.replace(/\b[a-z][a-z0-9+.-]*:\/\/([^\s/"'<>?#]+)[^\s"'<>]*/gi, (_, host: string) =>
    host.replace(/^.*@/, ""),
  );
}

const short = (digest: string): string =>
  digest.includes(":") ? `${digest.slice(0, digest.indexOf(":") + 13)}…` : digest;

/** What a request was about, in a few words. */
export function describeTarget(
  kind: string,
  target: string,
  repo: string | null | undefined,
  ref: string | null | undefined,
): string {
  if (kind === "mirror" && repo) {
    const r = ref ?? "";
    if (target.includes("/blobs/")) return `${repo} blob ${short(r)}`;
    if (target.includes("/tags/list")) return `${repo} tags`;
    return r.includes(":") ? `${repo}@${short(r)}` : `${repo}:${r}`;
  }
  if (kind === "forward") {
    try {
      return new URL(target).host;
    } catch {
      return scrubUrls(target.split("?")[0] ?? "");
    }
  }
  return scrubUrls(target.split("?")[0] ?? "").slice(0, 200);
}

function notesText(e: JournalEntry): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(e.notes)) if (k !== "error") parts.push(`${k}=${v}`);
  return scrubUrls(parts.join(" "));
}

function activeRow(a: ActiveView): ActiveRow {
  return {
    client: a.client,
    kind: a.kind,
    registry: a.registry,
    what: describeTarget(a.kind, a.target, a.repo, a.ref),
    bytes: a.bytes,
    rate: a.rate,
    ms: a.ms,
  };
}

export function buildSnapshot(rt: Runtime): StatusSnapshot {
  const recent = rt.journal.recent(RECENT);
  const registries = rt.activity.registries();
  // Mirrored registries without traffic yet are listed too, so the page names what is served.
  if (rt.config.mirror.enabled) {
    for (const name of rt.config.mirror.registries.keys()) {
      if (!registries.some((r) => r.name === name))
        registries.push({ name, requests: 0, errors: 0, bytes: 0, spark: [] });
    }
  }
  const errors: ErrorRow[] = recent
    .filter((e) => e.status >= 400 || e.status === 0)
    .slice(0, ERRORS)
    .map((e) => {
      const message = scrubUrls(String(e.notes.error ?? e.notes.note ?? `answered ${e.status}`));
      return {
        time: e.time,
        registry: e.registry ?? null,
        what: describeTarget(e.kind, e.target, e.repo, e.ref),
        status: e.status,
        message,
        hint: hintFor(e.kind, e.status, message),
      };
    });
  return {
    version: pkg.version,
    instance: rt.journal.instance,
    now: Date.now(),
    uptimeS: Math.round((Date.now() - rt.startedAt) / 1000),
    bucketS: BUCKET_MS / 1000,
    active: rt.activity
      .activeView()
      .filter((a) => a.kind !== "local")
      .map(activeRow),
    recent: recent.map((e) => ({
      id: e.id,
      time: e.time,
      client: e.client,
      kind: e.kind,
      method: e.method,
      registry: e.registry ?? null,
      what: describeTarget(e.kind, e.target, e.repo, e.ref),
      status: e.status,
      bytes: e.bytesIn + e.bytesOut,
      ms: e.ms,
      notes: notesText(e),
    })),
    registries: registries.sort((a, b) => a.name.localeCompare(b.name)),
    errors,
    quota: rt.sources.quota?.quotas() ?? null,
    manifestCache: rt.sources.manifestCache?.state() ?? null,
    certificate: rt.sources.certificate(),
    resilience: rt.sources.resilience?.state() ?? null,
    cluster: rt.sources.cluster?.() ?? null,
  };
}
