/**
 * Who may use crm: the client CIDR list (checked at accept), users with Basic credentials
 * (Proxy-Authorization for forward and CONNECT, Authorization for the mirror), and a brake on
 * guessing. The brake counts full password checks when they START, in flight included, so one
 * address (an IPv6 /64 counts as one) gets at most FAILURES_PER_MINUTE of them a minute however it sends them (a success is
 * refunded); past that it gets 429 without a check. Credentials already verified (cached) keep
 * working while their address is braked, so one guesser behind a shared front (every client is
 * `unix`, or one NAT address) cannot lock the others out. Unknown names are checked against a
 * dummy hash of the same cost, so timing does not tell which names exist.
 */
import { createHash, randomBytes } from "node:crypto";
import type { Config } from "../config/types.ts";
import { CidrList } from "./cidr.ts";
import { clientKey } from "./client-address.ts";
import { HttpError } from "../errors.ts";

export const FAILURES_PER_MINUTE = 10;
export const BLOCK_MS = 60_000;
const WINDOW_MS = 60_000;
/** A verified credential is trusted this long, so keep-alive traffic does not pay argon2 each time. */
const VERIFIED_TTL_MS = 5 * 60_000;
const VERIFIED_MAX = 1024;
/** Addresses tracked before the least recently used are dropped; bounds memory under a spray of addresses. */
const TRACKED_MAX = 10_000;

/**
 * The brake counted once for every replica (cluster/brake.ts implements it). `undefined`: the
 * store did not decide, the local brake does.
 */
export interface SharedBrakeCounter {
  begin(
    client: string,
  ): Promise<{ kind: "check"; ticket: string } | { kind: "braked"; ms: number } | undefined>;
  refund(client: string, ticket: string): void;
  fail(client: string): Promise<void>;
}

/** "page": the index page `/`, which names allowed hosts and registries. */
export type Realm = "proxy" | "mirror" | "page";

interface Credentials {
  name: string;
  password: string;
  /** A digest of name:password: what the cache and the in-flight table are keyed by. */
  key: string;
}

/** A check's result: passed, failed, or not made because the address is braked. */
type CheckOutcome = boolean | { brakedMs: number };

/** Full checks started (in flight or failed) within the window, per address. */
interface Attempts {
  /** Start times of checks that failed or are still running. */
  times: number[];
  /** When requests of this address failed (shared checks included). */
  failed: number[];
}

/** Hash options for Bun.password.hash with the cost of an existing hash, for the dummy. */
function sameCost(hash: string): Parameters<typeof Bun.password.hash>[1] {
  const argon = /^\$(argon2id|argon2i|argon2d)\$v=\d+\$m=(\d+),t=(\d+)/.exec(hash);
  if (argon)
    return {
      algorithm: argon[1] as "argon2id" | "argon2i" | "argon2d",
      memoryCost: Number(argon[2]),
      timeCost: Number(argon[3]),
    };
  const bcrypt = /^\$2[aby]\$(\d+)\$/.exec(hash);
  return { algorithm: "bcrypt", cost: bcrypt ? Number(bcrypt[1]) : 10 };
}

export class AccessControl {
  private readonly clients: CidrList | null;
  private readonly verified = new Map<string, number>();
  private readonly attempts = new Map<string, Attempts>();
  private readonly blockedUntil = new Map<string, number>();
  /** Checks under way, by credential digest: parallel requests with the same credentials share one. */
  private readonly inFlight = new Map<string, Promise<CheckOutcome>>();
  /** What unknown names are verified against; until it is made, the first user's hash (same cost, result ignored). */
  private dummyHash: string | null = null;
  /** Full password verifications started, for tests and metrics. */
  fullChecks = 0;
  /** Set by the cluster (cluster/brake.ts): attempts are counted once for every replica. */
  shared: SharedBrakeCounter | null = null;

  private readonly metricsClients: CidrList;

  constructor(private readonly config: Config) {
    this.clients = config.access.clients.length > 0 ? new CidrList(config.access.clients) : null;
    this.metricsClients = new CidrList(config.metrics.clients);
    const first = config.access.users.values().next().value;
    if (first !== undefined) {
      Bun.password.hash(randomBytes(24).toString("base64"), sameCost(first)).then(
        (h) => (this.dummyHash = h),
        () => {},
      );
    }
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
   * Returns the user name, or throws HttpError 407/401 with a challenge, or 429 while braked.
   */
  async authenticate(realm: Realm, header: string | null, client: string): Promise<string | null> {
    if (!this.required(realm)) return null;
    const cred = parseBasic(header);
    // No credentials guess nothing: the challenge, and nothing counted.
    if (cred === null) throw challenge(realm);
    const now = Date.now();
    const hash = this.config.access.users.get(cred.name);
    if (hash !== undefined && (this.verified.get(cred.key) ?? 0) > now) return cred.name;
    // Braked per IPv4 address or IPv6 /64, so one LAN's 2^64 addresses are one guesser.
    const key = clientKey(client);

    const until = this.blockedUntil.get(key) ?? 0;
    if (until > now) throw braked(until - now);
    // Registered before anything is awaited: identical credentials arriving together share one
    // brake decision (local or the cluster's) and one check, never one each.
    let check = this.inFlight.get(cred.key);
    if (check === undefined) {
      const started = this.startCheck(cred, hash, key, now);
      check = started;
      this.inFlight.set(cred.key, started);
      void started
        .finally(() => {
          if (this.inFlight.get(cred.key) === started) this.inFlight.delete(cred.key);
        })
        .catch(() => {});
    }
    const ok = await check;
    if (typeof ok === "object") throw braked(ok.brakedMs);
    if (ok) return cred.name;
    this.recordFailure(key);
    if (this.shared !== null) await this.shared.fail(key);
    throw challenge(realm);
  }

  /**
   * One full check, counted when it starts and refunded when it passes. The cluster's count
   * decides when the store answers; the local window when it does not.
   */
  private async startCheck(
    cred: Credentials,
    hash: string | undefined,
    key: string,
    now: number,
  ): Promise<CheckOutcome> {
    const shared = this.shared;
    if (shared !== null) {
      const s = await shared.begin(key);
      if (s?.kind === "braked") return { brakedMs: s.ms };
      if (s?.kind === "check") {
        this.fullChecks++;
        const ok = await this.verify(cred, hash);
        if (ok) shared.refund(key, s.ticket);
        return ok;
      }
      now = Date.now();
    }
    const a = this.window(key, now);
    if (a.times.length >= FAILURES_PER_MINUTE) {
      // Ten checks failed or still running. While some still run (and may be refunded), a retry
      // soon may pass; otherwise the oldest must leave the window first.
      const inFlight = a.times.length > a.failed.length;
      return { brakedMs: inFlight ? 1000 : Math.max(1000, (a.times[0] ?? now) + WINDOW_MS - now) };
    }
    a.times.push(now);
    this.fullChecks++;
    const ok = await this.verify(cred, hash);
    if (ok) this.refund(key, now);
    return ok;
  }

  private async verify(cred: Credentials, hash: string | undefined): Promise<boolean> {
    const against =
      hash ?? this.dummyHash ?? (this.config.access.users.values().next().value as string);
    let ok = false;
    try {
      ok = await Bun.password.verify(cred.password, against);
    } catch {
      ok = false;
    }
    // An unknown name never passes, whatever the dummy check said.
    if (!ok || hash === undefined) return false;
    if (this.verified.size >= VERIFIED_MAX)
      this.verified.delete(this.verified.keys().next().value as string);
    this.verified.set(cred.key, Date.now() + VERIFIED_TTL_MS);
    return true;
  }

  /** The address's attempts within the last minute (older ones dropped). */
  private window(client: string, now: number): Attempts {
    let a = this.attempts.get(client);
    if (a === undefined) {
      // The least recently used window goes, never the whole table: a spray of new addresses
      // must not wipe the window of a guesser (or anyone) still active.
      if (this.attempts.size >= TRACKED_MAX)
        this.attempts.delete(this.attempts.keys().next().value as string);
      a = { times: [], failed: [] };
    } else this.attempts.delete(client);
    // (Re)inserted last: the Map's order is the order of use.
    this.attempts.set(client, a);
    while (a.times.length > 0 && (a.times[0] as number) <= now - WINDOW_MS) a.times.shift();
    while (a.failed.length > 0 && (a.failed[0] as number) <= now - WINDOW_MS) a.failed.shift();
    return a;
  }

  private refund(client: string, started: number): void {
    const a = this.attempts.get(client);
    if (a === undefined) return;
    const i = a.times.indexOf(started);
    if (i >= 0) a.times.splice(i, 1);
    if (a.times.length === 0 && a.failed.length === 0) this.attempts.delete(client);
  }

  private recordFailure(client: string): void {
    const now = Date.now();
    const a = this.window(client, now);
    // A failure shared with a check another request started is counted too: a flood of one
    // guess is braked like a flood of many.
    a.failed.push(now);
    if (a.failed.length >= FAILURES_PER_MINUTE) {
      this.blockedUntil.set(client, now + BLOCK_MS);
      this.attempts.delete(client);
    }
    if (this.blockedUntil.size > TRACKED_MAX)
      for (const [k, v] of this.blockedUntil) if (v <= now) this.blockedUntil.delete(k);
  }
}

function parseBasic(header: string | null): Credentials | null {
  const m = header === null ? null : /^basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
  if (!m) return null;
  const decoded = Buffer.from(m[1] as string, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon <= 0) return null;
  // The key is a digest of the credentials, so no password sits in a table as text.
  return {
    name: decoded.slice(0, colon),
    password: decoded.slice(colon + 1),
    key: createHash("sha256").update(decoded).digest("base64"),
  };
}

function challenge(realm: Realm): HttpError {
  return realm === "proxy"
    ? new HttpError(407, "proxy authentication required", {
        headers: { "proxy-authenticate": 'Basic realm="crm"' },
      })
    : new HttpError(401, "authentication required", {
        headers: { "www-authenticate": 'Basic realm="crm"' },
      });
}

function braked(ms: number): HttpError {
  return new HttpError(429, "too many failed logins; try again later", {
    headers: { "retry-after": String(Math.ceil(ms / 1000)) },
  });
}
