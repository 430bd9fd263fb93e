/**
 * `GET <mirror>/v2/_crm/requests?after=SEQ`: the journal entries of the caller's own address,
 * for `crm client-config --check`. It lives under the mirror's path so it is reached exactly the
 * way a runtime reaches the mirror (same URL, path_prefix, credentials, reverse proxy), and it
 * shows a client only its own requests. `_crm` can never be a repository name (OCI names start
 * with a letter or digit), so it cannot shadow an image.
 */
import { isUnknownClient } from "../access/client-address.ts";
import type { Exchange } from "../proxy/exchange.ts";
import type { Runtime } from "../context.ts";

export const REQUESTS_PATH = "/v2/_crm/requests";
/** Most entries one answer carries: a check looks at a few requests, never the whole ring. */
const MAX_ANSWER = 200;

/** What the endpoint answers; client-config's check parses the same shape. */
export interface RequestsAnswer {
  instance: string;
  /** The caller's address as crm sees it. */
  client: string;
  /** Sequence number of the last request id handed out (this request's own). */
  last: number;
  requests: Array<{
    id: string;
    seq: number;
    method: string;
    target: string;
    status: number;
    registry?: string;
    repo?: string;
    ref?: string;
    kind: string;
    notes: Record<string, string | number>;
  }>;
}

export function isRequestsPath(target: string): boolean {
  return (target.split("?")[0] ?? "") === REQUESTS_PATH;
}

export function requestsAnswer(ex: Exchange, rt: Runtime, target: string): Response {
  const q = target.indexOf("?");
  const afterText = new URLSearchParams(q < 0 ? "" : target.slice(q + 1)).get("after") ?? "0";
  const after = /^\d{1,15}$/.test(afterText) ? Number(afterText) : 0;
  // A client its balancer did not name shares its identity with every other such client: none of
  // those requests is provably its own, so it is shown none.
  const own = isUnknownClient(ex.client)
    ? []
    : rt.journal.after(after, ex.client).slice(-MAX_ANSWER);
  const answer: RequestsAnswer = {
    instance: rt.journal.instance,
    client: ex.client,
    last: rt.journal.last,
    requests: own.map((e) => ({
      id: e.id,
      seq: e.seq,
      kind: e.kind,
      method: e.method,
      target: e.target,
      status: e.status,
      registry: e.registry,
      repo: e.repo,
      ref: e.ref,
      notes: e.notes,
    })),
  };
  const body = JSON.stringify(answer);
  return new Response(body, {
    headers: {
      "content-type": "application/json",
      "cache-control": "no-store",
      "content-length": String(Buffer.byteLength(body)),
    },
  });
}
