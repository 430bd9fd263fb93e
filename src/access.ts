/**
 * Who may use crm: the client CIDR list (checked at accept), users with Basic credentials
 * (Proxy-Authorization for forward and CONNECT, Authorization for the mirror), and a brake on
 * guessing: an address with too many failures in a minute gets 429 for a while, answered without
 * spending a password verification on it.
 */
import { createHash } from "node:crypto";
import type { Config } from "./config.ts";
import { CidrList } from "./cidr.ts";
import { HttpError } from "./errors.ts";

export const FAILURES_PER_MINUTE = 10;
export const BLOCK_MS = 60_000;
/** A verified credential is trusted this long, so keep-alive traffic does not pay argon2 each time. */
const VERIFIED_TTL_MS = 5 * 60_000;
const VERIFIED_MAX = 1024;

/** "page": the index page `/`, which names allowed hosts and registries. */
export type Realm = "proxy" | "mirror" | "page";

export class AccessControl {
  private readonly clients: CidrList | null;
  private readonly verified = new Map<string, number>();
  private readonly failures = new Map<string, number[]>();
  private readonly blockedUntil = new Map<string, number>();

  private readonly metricsClients: CidrList;

  constructor(private readonly config: Config) {
    this.clients = config.access.clients.length > 0 ? new CidrList(config.access.clients) : null;
    this.metricsClients = new CidrList(config.metrics.clients);
  }

  clientAllowed(address: string): boolean {
    return this.clients === null || this.clients.match(address) !== null;
  }

  /** Who may read /metrics (metrics.clients). */
  metricsAllowed(address: string): boolean {
    return this.metricsClients.match(address) !== null;
  }

  /** Whether this realm needs credentials at all. */
  required(realm: Realm): boolean {
    if (this.config.access.users.size === 0) return false;
    // mirror_auth: false exists because Docker cannot send credentials to a mirror; a browser can.
    return realm !== "mirror" || this.config.access.mirrorAuth;
  }

  /**
   * Checks the Basic credentials in `header` (the value of Proxy-Authorization or Authorization).
   * Returns the user name, or throws HttpError 407/401 with a challenge, or 429 while blocked.
   */
  async authenticate(realm: Realm, header: string | null, client: string): Promise<string | null> {
    if (!this.required(realm)) return null;
    const now = Date.now();
    const until = this.blockedUntil.get(client) ?? 0;
    if (until > now) {
      throw new HttpError(429, "too many failed logins; try again later", { headers: { "retry-after": String(Math.ceil((until - now) / 1000)) } });
    }
    const user = await this.verify(header);
    if (user !== null) return user;
    this.recordFailure(client, now);
    throw realm === "proxy"
      ? new HttpError(407, "proxy authentication required", { headers: { "proxy-authenticate": 'Basic realm="crm"' } })
      : new HttpError(401, "authentication required", { headers: { "www-authenticate": 'Basic realm="crm"' } });
  }

  private async verify(header: string | null): Promise<string | null> {
    const m = header === null ? null : /^basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
    if (!m) return null;
    const decoded = Buffer.from(m[1] as string, "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon <= 0) return null;
    const name = decoded.slice(0, colon);
    const hash = this.config.access.users.get(name);
    if (hash === undefined) return null;
    // The cache key is a digest of the credentials, so no password sits in memory as text.
    const key = createHash("sha256").update(decoded).digest("base64");
    const exp = this.verified.get(key);
    if (exp !== undefined && exp > Date.now()) return name;
    let ok = false;
    try {
      ok = await Bun.password.verify(decoded.slice(colon + 1), hash);
    } catch {
      ok = false;
    }
    if (!ok) return null;
    if (this.verified.size >= VERIFIED_MAX) this.verified.delete(this.verified.keys().next().value as string);
    this.verified.set(key, Date.now() + VERIFIED_TTL_MS);
    return name;
  }

  private recordFailure(client: string, now: number): void {
    const recent = (this.failures.get(client) ?? []).filter((t) => t > now - 60_000);
    recent.push(now);
    if (recent.length >= FAILURES_PER_MINUTE) {
      this.blockedUntil.set(client, now + BLOCK_MS);
      this.failures.delete(client);
    } else this.failures.set(client, recent);
    // Bound the tables under a spray of addresses.
    if (this.failures.size > 10_000) this.failures.clear();
    if (this.blockedUntil.size > 10_000) for (const [k, v] of this.blockedUntil) if (v <= now) this.blockedUntil.delete(k);
  }
}
