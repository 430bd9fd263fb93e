/**
 * Docker's daemon.json, merged: every key the operator has stays, crm's URL goes first in
 * `registry-mirrors` (Docker tries them in order), and a plain-http mirror off loopback is listed
 * in `insecure-registries`, without which Docker skips it and silently pulls from Docker Hub.
 */
import { mirrorBase, type ClientConfigOptions } from "./options.ts";
import { PlanError, type Plan } from "./plan.ts";

/** Docker treats 127.0.0.0/8 as insecure-OK by itself. */
function needsInsecure(u: URL): boolean {
  return u.protocol === "http:" && !/^127\.\d+\.\d+\.\d+$/.test(u.hostname);
}

export function planDocker(o: ClientConfigOptions, existing: string | null): Plan {
  let doc: Record<string, unknown> = {};
  if (existing !== null && existing.trim() !== "") {
    let parsed: unknown;
    try {
      parsed = JSON.parse(existing);
    } catch (cause) {
      throw new PlanError(
        `${o.dest} is not valid JSON (${(cause as Error).message}); dockerd would not start with it either: fix it, then run this again`,
        { cause },
      );
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
      throw new PlanError(`${o.dest} must hold a JSON object`);
    doc = parsed as Record<string, unknown>;
  }
  const url = mirrorBase(o.mirror);
  const list = (key: string): string[] => {
    const v = doc[key];
    if (v === undefined) return [];
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string"))
      throw new PlanError(`${o.dest}: "${key}" must be a list of strings`);
    return v as string[];
  };
  const same = (m: string): boolean => m.replace(/\/+$/, "") === url;
  doc["registry-mirrors"] = [url, ...list("registry-mirrors").filter((m) => !same(m))];
  if (needsInsecure(o.mirror)) {
    const insecure = list("insecure-registries");
    if (!insecure.includes(o.mirror.host))
      doc["insecure-registries"] = [...insecure, o.mirror.host];
  }
  const notes = [
    "dockerd reads daemon.json at start and on SIGHUP: systemctl reload docker (or restart) after writing it",
    "docker uses registry-mirrors for docker.io images only; pull other registries by prefix, e.g. " +
      `docker pull ${o.mirror.host}${o.mirror.pathname.replace(/\/+$/, "")}/gcr.io/distroless/static:nonroot`,
  ];
  if (o.mirror.protocol === "http:" && needsInsecure(o.mirror))
    notes.push(`the mirror is plain http: ${o.mirror.host} is added to insecure-registries`);
  return { files: [{ path: o.dest, content: JSON.stringify(doc, null, 2) + "\n" }], notes };
}
