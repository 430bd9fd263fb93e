/**
 * The allow-list rule. An entry is a regular expression if it contains any of ^ $ * + ? ( ) [ ] { } | \
 * and then must match the WHOLE host name (implicitly anchored, case-insensitive); any other
 * entry, dots included, is one exact name. So `docker.io` admits neither `sub.docker.io` nor
 * `docker.io.evil.test`, and a regex `docker\.io` cannot match a substring of `docker.io.evil.test`.
 */
const REGEX_CHARS = /[\^$*+?()[\]{}|\\]/;

export type HostPattern =
  { kind: "exact"; name: string; source: string } | { kind: "regex"; re: RegExp; source: string };

export function isRegexEntry(entry: string): boolean {
  return REGEX_CHARS.test(entry);
}

/** Compiles one entry; throws SyntaxError (with the engine's reason) for a bad expression. */
export function compileHostPattern(entry: string): HostPattern {
  if (isRegexEntry(entry)) {
    // (?: ) keeps an alternation like `a|b` inside the anchors.
    return { kind: "regex", re: new RegExp(`^(?:${entry})$`, "i"), source: entry };
  }
  return { kind: "exact", name: normalizeHost(entry), source: entry };
}

/**
 * Canonical host for matching and dialing: lower case, IPv6 brackets removed, one trailing dot
 * removed (`DOCKER.IO.` is `docker.io`). Returns "" for names no resolver would accept, so a
 * percent-encoded or userinfo-carrying name can never be matched against an exact entry.
 */
export function normalizeHost(host: string): string {
  let h = host.trim().toLowerCase();
  if (h.startsWith("[") && h.endsWith("]")) h = h.slice(1, -1);
  if (h.endsWith(".") && !h.includes(":")) h = h.slice(0, -1);
  if (h === "" || h.length > 253) return "";
  if (h.includes(":")) {
    // One spelling per address (`0::1` is `::1`, `::ffff:127.0.0.1` is `::ffff:7f00:1`), so an
    // entry, a target and the address dialled always compare equal.
    if (!/^[0-9a-f:.]+$/.test(h)) return "";
    try {
      return new URL(`http://[${h}]/`).hostname.slice(1, -1);
    } catch {
      return "";
    }
  }
  return /^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$/.test(h) ? h : "";
}

/** A set of host patterns: the allow-list itself, and the same syntax for redirect and MITM host lists. */
export class HostMatcher {
  private readonly exact = new Set<string>();
  private readonly regexes: RegExp[] = [];
  readonly entries: readonly string[];

  constructor(entries: readonly string[]) {
    this.entries = [...entries];
    for (const e of entries) {
      const p = compileHostPattern(e);
      if (p.kind === "exact") this.exact.add(p.name);
      else this.regexes.push(p.re);
    }
  }

  /** `host` must already be normalised; "" never matches. */
  matches(host: string): boolean {
    if (host === "") return false;
    if (this.exact.has(host)) return true;
    for (const re of this.regexes) if (re.test(host)) return true;
    return false;
  }
}

export type PolicyDecision =
  { allowed: true; host: string } | { allowed: false; host: string; reason: string };

/** Host plus port: the question every CONNECT and forward request asks before any DNS lookup. */
export class HostPolicy {
  private readonly hosts: HostMatcher;
  private readonly ports: ReadonlySet<number>;

  constructor(hosts: readonly string[], ports: readonly number[]) {
    this.hosts = new HostMatcher(hosts);
    this.ports = new Set(ports);
  }

  get entries(): readonly string[] {
    return this.hosts.entries;
  }

  portAllowed(port: number): boolean {
    return this.ports.has(port);
  }

  hostAllowed(rawHost: string): boolean {
    return this.hosts.matches(normalizeHost(rawHost));
  }

  check(rawHost: string, port: number): PolicyDecision {
    const host = normalizeHost(rawHost);
    if (host === "") return { allowed: false, host: rawHost, reason: "invalid host name" };
    if (!this.hosts.matches(host))
      return { allowed: false, host, reason: "host not in allowed_hosts" };
    if (!this.ports.has(port)) return { allowed: false, host, reason: "port not in allowed_ports" };
    return { allowed: true, host };
  }
}
