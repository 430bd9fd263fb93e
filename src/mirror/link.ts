/**
 * The pagination `Link` of a tags/list or referrers answer (RFC 8288), pointed back at crm.
 * Registries send `</v2/<name>/tags/list?n=2&last=b>; rel="next"`, a path on the upstream or an
 * absolute URL, and may send several values (next, prev, first...). The client must ask crm for
 * the next page, routed to the same registry the same way, so each value that points at the
 * registry keeps only its query; a value pointing at any other host is dropped, never passed to
 * the client as a place to go.
 */
import { clientPath, type PullRoute } from "./routes.ts";

/** Far more than any registry sends; a longer list is not pagination. */
const MAX_VALUES = 16;

interface LinkValue {
  target: string;
  /** `; rel="next"` and any other parameters, as sent. */
  params: string;
}

/** Splits a field value into link-values; commas inside quoted parameters do not split. Null when malformed. */
export function parseLinkValues(header: string): LinkValue[] | null {
  const out: LinkValue[] = [];
  let i = 0;
  while (i < header.length) {
    while (header[i] === " " || header[i] === "\t" || header[i] === ",") i++;
    if (i >= header.length) break;
    if (header[i] !== "<" || out.length === MAX_VALUES) return null;
    const close = header.indexOf(">", i);
    if (close < 0) return null;
    const target = header.slice(i + 1, close);
    i = close + 1;
    const start = i;
    let quoted = false;
    for (; i < header.length; i++) {
      const ch = header[i];
      if (quoted) {
        if (ch === "\\") i++;
        else if (ch === '"') quoted = false;
      } else if (ch === '"') quoted = true;
      else if (ch === ",") break;
    }
    out.push({ target, params: header.slice(start, i).replace(/[ \t]+$/, "") });
  }
  return out;
}

/** `mountPrefix`: mirror.path_prefix ("" or "/SECRET"), which crm's own links must carry. */
export function rewriteLink(headers: Headers, route: PullRoute, mountPrefix: string): void {
  const link = headers.get("link");
  if (link === null) return;
  const values =
    route.resource === "tags" || route.resource === "referrers" ? parseLinkValues(link) : null;
  const kept: string[] = [];
  for (const v of values ?? []) {
    let url: URL;
    try {
      url = new URL(v.target, route.registry.upstream);
    } catch {
      continue;
    }
    if (url.origin !== route.registry.upstream.origin) continue;
    kept.push(`<${mountPrefix}${clientPath(route, url.searchParams)}>${v.params}`);
  }
  if (kept.length === 0) headers.delete("link");
  else headers.set("link", kept.join(", "));
}
