/**
 * Where requests and tunnels enter and leave the status record: `trackExchange` when a request's
 * handler starts (the activity board shows it in flight), `recordExchange` when its answer is
 * written (the journal keeps it, the board counts it), and the same pair for CONNECT tunnels.
 * The mirror's pull (registry, repo, ref) is a typed field of the exchange and of the entry, so
 * `--check` can match a pull; the log fields stay notes.
 */
import type { Exchange } from "../proxy/exchange.ts";
import type { Runtime } from "../context.ts";
import type { Active } from "./activity.ts";

/** `mountPrefix` (mirror.path_prefix) is itself a credential for Docker's mirrors: it is never kept. */
function withoutPrefix(target: string, mountPrefix: string): string {
  return mountPrefix !== "" && target.startsWith(mountPrefix + "/")
    ? target.slice(mountPrefix.length)
    : target;
}

export function trackExchange(
  rt: Runtime,
  ex: Exchange,
  target: () => string,
  kind: () => string,
  bytes: () => number,
): void {
  const prefix = rt.config.mirror.pathPrefix;
  ex.tracked = rt.activity.begin({
    id: ex.id,
    client: ex.client,
    method: ex.head.method,
    target: () => withoutPrefix(target(), prefix),
    kind,
    pull: () => ex.pull,
    bytes,
  });
}

export function recordExchange(
  rt: Runtime,
  ex: Exchange,
  kind: string,
  target: string,
  status: number,
  bytesIn: number,
  bytesOut: number,
  ms: number,
  note: string | undefined,
): void {
  if (ex.tracked) rt.activity.end(ex.tracked, status, bytesIn + bytesOut);
  // crm's own endpoints (health checks, the status page polling itself) would push the pulls out.
  if (kind === "local") return;
  rt.journal.record({
    id: ex.id,
    client: ex.client,
    kind,
    method: ex.head.method,
    target: withoutPrefix(target, rt.config.mirror.pathPrefix),
    status,
    bytesIn,
    bytesOut,
    ms: Math.round(ms),
    ...ex.pull,
    notes: { ...ex.logFields, note },
  });
}

export interface TunnelRecord {
  id: string;
  client: string;
  target: string;
  /** Set by trackTunnel: its entry on the activity board. */
  tracked?: Active;
}

/** A tunnel is in flight from its dial to its close; `bytes` reads both directions. */
export function trackTunnel(rt: Runtime, t: TunnelRecord, bytes: () => number): void {
  t.tracked = rt.activity.begin({
    id: t.id,
    client: t.client,
    method: "CONNECT",
    target: () => t.target,
    kind: () => "connect",
    pull: () => null,
    bytes,
  });
}

export function recordTunnel(
  rt: Runtime,
  t: TunnelRecord,
  status: number,
  bytesIn: number,
  bytesOut: number,
  ms: number,
  note?: string,
): void {
  if (t.tracked) rt.activity.end(t.tracked, status, bytesIn + bytesOut);
  rt.journal.record({
    id: t.id,
    client: t.client,
    kind: "connect",
    method: "CONNECT",
    target: t.target,
    status,
    bytesIn,
    bytesOut,
    ms: Math.round(ms),
    notes: { note },
  });
}

/** A request refused before it was routed (allow-list, bad target): it ends where it starts. */
export function recordRefusal(
  rt: Runtime,
  client: string,
  kind: string,
  method: string,
  target: string,
  status: number,
  message: string,
): void {
  rt.journal.record({
    id: rt.journal.nextId(),
    client,
    kind,
    method,
    target,
    status,
    bytesIn: 0,
    bytesOut: 0,
    ms: 0,
    notes: { error: message },
  });
}
