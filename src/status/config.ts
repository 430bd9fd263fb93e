/**
 * The `status:` config section: who may read the live page (`/`), `/status.json` and
 * `/status.js`. They show every client's address and the images it pulls, so like /metrics they
 * are readable from loopback only unless opened on purpose; `access.users`, when set, still asks
 * for credentials on top.
 *
 *   status:
 *     clients: ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]
 */
import type { Checker } from "../config/checker.ts";
import { CidrList, parseCidr } from "../access/cidr.ts";

export interface StatusConfig {
  /** CIDR ranges that may read the status page and its data. */
  clients: readonly string[];
}

export const STATUS_KEYS = ["clients"] as const;
export const DEFAULT_STATUS_CLIENTS: readonly string[] = ["127.0.0.0/8", "::1/128"];

export function buildStatusConfig(c: Checker, raw: unknown): StatusConfig {
  const s = c.object("status", raw, STATUS_KEYS) ?? {};
  const clients = c.stringList("status.clients", s.clients) ?? [...DEFAULT_STATUS_CLIENTS];
  clients.forEach((entry, i) => {
    const r = parseCidr(entry);
    if (typeof r === "string") c.fail(`status.clients[${i}]`, entry, r);
  });
  return { clients };
}

/** One matcher per loaded config (a reload brings a new StatusConfig object). */
const matchers = new WeakMap<StatusConfig, CidrList>();

export function statusAllowed(config: StatusConfig, client: string): boolean {
  let list = matchers.get(config);
  if (list === undefined) {
    list = new CidrList(config.clients);
    matchers.set(config, list);
  }
  return list.match(client) !== null;
}
