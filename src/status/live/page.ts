/**
 * `GET /`: the live status page. Server-rendered for what does not change between polls (the
 * instance, the certificate, quota and manifest-cache state, the set-up for clients); the live
 * tables are filled by /status.js from /status.json, so the page needs no framework and no
 * external asset, and its static parts work without JavaScript. Its CSP forbids inline script.
 */
import type { Runtime } from "../../context.ts";
import { renderIndex } from "./setup.ts";
import { describeQuota } from "../quota.ts";
import { buildSnapshot, RECENT, scrubUrls, type StatusSnapshot } from "./snapshot.ts";

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export const PAGE_CSP =
  "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

function certificateText(s: StatusSnapshot): string {
  const c = s.certificate;
  if (c.mode === "none") return "no TLS on this listener (plain http)";
  if (c.error !== undefined) return `${c.mode} certificate: ${c.error}`;
  return `${c.mode === "static" ? "static certificate" : "ACME certificate"} for ${(c.names ?? []).join(", ") || c.subject || "?"}, valid until ${c.notAfter ?? "?"} (${c.daysLeft ?? "?"} days left)`;
}

function quotaText(s: StatusSnapshot): string {
  if (s.quota === null)
    return "not tracked: the mirror is off (crm doctor reads it from the upstream)";
  if (s.quota.length === 0) return "no upstream has reported a quota yet";
  return s.quota.map((q) => `${q.registry}: ${describeQuota(q)} left`).join("; ");
}

function upstreamsText(s: StatusSnapshot): string {
  const r = s.resilience;
  if (r === null) return "not tracked: the mirror is off";
  if (r.upstreams.length === 0) return "no registry has more than one upstream";
  return r.upstreams
    .map(
      (u) =>
        `${u.registry} upstream ${u.upstream}: ${u.state === "healthy" ? "in use" : `skipped, probed again in ${u.retryInS} s (${u.failures} failures; ${u.reason ?? "?"})`}`,
    )
    .join("; ");
}

function resumesText(s: StatusSnapshot): string {
  const r = s.resilience;
  if (r === null) return "not tracked: the mirror is off";
  if (r.resumes.length === 0) return "no upstream has dropped a blob yet";
  return r.resumes
    .map(
      (v) =>
        `${v.registry}: ${v.continued} continued, ${v.refused} refused, ${v.exhausted} cut after every re-request failed`,
    )
    .join("; ");
}

function cacheText(s: StatusSnapshot): string {
  const m = s.manifestCache;
  if (m === null) return "not kept: the mirror is off";
  const n = (v: number, one: string, many: string): string => `${v} ${v === 1 ? one : many}`;
  return `${n(m.entries, "manifest", "manifests")}, ${m.bytes} bytes; ${n(m.hits, "hit", "hits")}, ${n(m.misses, "miss", "misses")}`;
}

/** The shared store as this replica sees it; the live replicas are a table (status.js). */
function clusterText(s: StatusSnapshot): string {
  const k = s.cluster;
  if (k === null) return "";
  const replicas = `${k.replicas.length} live ${k.replicas.length === 1 ? "replica" : "replicas"}`;
  return k.up
    ? `store ${k.store} answering (prefix ${k.prefix}); ${replicas}`
    : `store ${k.store} NOT answering${k.lastError !== null ? ` (${k.lastError})` : ""}: this replica decides alone until it is back`;
}

/** The set-up part of the index page, with registries named but never their upstream URLs. */
function setupSection(rt: Runtime): string {
  const html = renderIndex(rt.config);
  const body = html.slice(html.indexOf("<body>") + "<body>".length, html.lastIndexOf("</body>"));
  const names = [...rt.config.mirror.registries.keys()]
    .map((n) => `<code>${esc(n)}</code>`)
    .join(", ");
  return body
    .replace(/<h1>[^]*?<\/h1>/, "")
    .replace(
      /<h2>Mirrored registries<\/h2>\s*<table>[^]*?<\/table>/,
      `<h2>Mirrored registries</h2>\n<p>${names}</p>`,
    );
}

const table = (id: string): string =>
  `<table id="${id}"><tr><td class="empty">loading… (needs JavaScript; <a href="status.json">status.json</a> has the same data)</td></tr></table>`;

export function renderStatusPage(rt: Runtime): string {
  const s = buildSnapshot(rt);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>crm status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body{font-family:system-ui,sans-serif;max-width:72rem;margin:1.5rem auto;padding:0 1rem;line-height:1.4}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin-bottom:1rem}
td,th{padding:.2rem .5rem;text-align:left;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f4f4f4}td.empty{color:#777}pre{background:#f4f4f4;padding:.8rem;overflow-x:auto}
.ok{color:#2a6}.bad{color:#c33}dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}
dt{font-weight:600}svg.spark{vertical-align:middle;background:#f8fff8}
</style>
</head><body>
<h1>crm — status</h1>
<p>crm ${esc(s.version)}, instance <code>${esc(s.instance)}</code>, up <span id="uptime">${s.uptimeS} s</span>. <span id="live" class="bad">static view</span></p>
<noscript><p>Live tables need JavaScript; <a href="status.json">status.json</a> has the same data.</p></noscript>
<h2>In flight</h2>
${table("active")}
<h2>Registries</h2>
${table("registries")}
<h2>Errors</h2>
${table("errors")}
<h2>Last ${RECENT} requests</h2>
${table("recent")}
${s.cluster !== null ? `<h2>Replicas</h2>\n<p id="cluster" class="${s.cluster.up ? "ok" : "bad"}">${esc(clusterText(s))}</p>\n${table("replicas")}\n` : ""}<h2>State</h2>
<dl>
<dt>TLS certificate</dt><dd id="certificate">${esc(certificateText(s))}</dd>
<dt>Upstream quota</dt><dd id="quota">${esc(quotaText(s))}</dd>
<dt>Manifest cache</dt><dd id="manifest-cache">${esc(cacheText(s))}</dd>
<dt>Upstreams</dt><dd id="upstreams">${esc(scrubUrls(upstreamsText(s)))}</dd>
<dt>Blob resumes</dt><dd id="resumes">${esc(resumesText(s))}</dd>
</dl>
${setupSection(rt)}
<script src="status.js" defer></script>
</body></html>
`;
}
