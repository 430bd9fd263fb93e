/**
 * `/` (the live page), `/status.json` (its data) and `/status.js` (its script). Readable from
 * `status.clients` (loopback by default); then access is the index page's: with access.users set they ask for a user's credentials, also when
 * access.mirror_auth is false (a browser can send them; Docker's registry-mirrors cannot).
 */
import type { Exchange } from "../../proxy/exchange.ts";
import type { Runtime } from "../../context.ts";
import { textResponse } from "../../http/response.ts";
import { PAGE_CSP, renderStatusPage } from "./page.ts";
import { STATUS_SCRIPT } from "./script.ts";
import { buildSnapshot } from "./snapshot.ts";

const PATHS = new Set(["/", "/status.json", "/status.js"]);

export function isStatusPath(path: string): boolean {
  return PATHS.has(path);
}

function answer(body: string, type: string, extra: Record<string, string> = {}): Response {
  return new Response(body, {
    headers: {
      "content-type": type,
      "content-length": String(Buffer.byteLength(body)),
      "cache-control": "no-store",
      "x-content-type-options": "nosniff",
      ...extra,
    },
  });
}

export async function statusEndpoint(ex: Exchange, rt: Runtime, path: string): Promise<Response> {
  if (ex.head.method !== "GET" && ex.head.method !== "HEAD")
    return textResponse(405, "method not allowed", { allow: "GET, HEAD" });
  if (path === "/status.json") return answer(JSON.stringify(buildSnapshot(rt)), "application/json");
  if (path === "/status.js") return answer(STATUS_SCRIPT, "text/javascript; charset=utf-8");
  return answer(renderStatusPage(rt), "text/html; charset=utf-8", {
    "content-security-policy": PAGE_CSP,
    "referrer-policy": "no-referrer",
  });
}
