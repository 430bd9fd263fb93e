/**
 * The `tls` section: a certificate from files (`cert_path`, `key_path`) or one crm obtains and
 * renews itself (`acme`), plus `redirect_http`. Also the rules that tie it to `listen`: which
 * listeners are TLS, and what ACME needs from them.
 */
import { resolve } from "node:path";
import type { Checker } from "../config/checker.ts";
import { ConfigError } from "../errors.ts";
import { listenerIsTls, type ListenAddress } from "../config/listen.ts";

export const LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory";
export const LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory";

export interface AcmeConfig {
  /** Names on the certificate; the first one names the files in state_dir and the metric. */
  domains: readonly string[];
  email: string | null;
  /** The CA's ACME directory URL. */
  directory: string;
  /** Extra CA certificates (PEM) trusted for the directory's https, e.g. a private or test CA. */
  caBundlePath: string | null;
  /** Account key and certificates live here (0700; keys 0600). */
  stateDir: string;
  challenge: "http-01";
  /** Renew when this much validity is left; null: when a third of the lifetime is left. */
  renewBeforeMs: number | null;
}

export interface TlsListenConfig {
  /** From files; both null when `acme` is used. */
  certPath: string | null;
  keyPath: string | null;
  acme: AcmeConfig | null;
  /** A plain listener answers origin-form requests (other than ACME challenges) with a redirect to https. */
  redirectHttp: boolean;
}

export const TLS_KEYS = ["cert_path", "key_path", "acme", "redirect_http"] as const;
export const ACME_KEYS = [
  "domains",
  "email",
  "directory",
  "ca_bundle",
  "state_dir",
  "challenge",
  "renew_before",
] as const;

const DNS_NAME =
  /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$/;

/** systemd's StateDirectory=crm sets STATE_DIRECTORY; elsewhere the same path by convention. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.STATE_DIRECTORY?.split(":")[0] || "/var/lib/crm";
}

export function buildTls(c: Checker, raw: unknown, file: string): TlsListenConfig | null {
  const tl = c.object("tls", raw, TLS_KEYS);
  if (tl === null) return null;
  const redirectHttp = c.bool("tls.redirect_http", tl.redirect_http, false);
  const certPath = c.string("tls.cert_path", tl.cert_path);
  const keyPath = c.string("tls.key_path", tl.key_path);
  const acme = buildAcme(c, tl.acme, file);
  if (acme !== null) {
    if (certPath !== null || keyPath !== null)
      c.rule("tls", "takes either cert_path/key_path or acme, not both");
    return { certPath: null, keyPath: null, acme, redirectHttp };
  }
  if (certPath === null || keyPath === null) {
    // An invalid value was reported by c.string already; only say what is missing.
    const missing = (["cert_path", "key_path"] as const).filter(
      (k) => tl[k] === undefined || tl[k] === null,
    );
    if (missing.length > 0)
      c.rule("tls", `needs both cert_path and key_path; missing: ${missing.join(", ")}`);
    return null;
  }
  return {
    certPath: resolve(file, "..", certPath),
    keyPath: resolve(file, "..", keyPath),
    acme: null,
    redirectHttp,
  };
}

function buildAcme(c: Checker, raw: unknown, file: string): AcmeConfig | null {
  const a = c.object("tls.acme", raw, ACME_KEYS);
  if (a === null) return null;
  const domains = (c.stringList("tls.acme.domains", a.domains) ?? []).map((d) =>
    d.toLowerCase().replace(/\.$/, ""),
  );
  if (domains.length === 0)
    c.fail(
      "tls.acme.domains",
      a.domains ?? null,
      "must list the DNS names of this host, e.g. [crm.example.com]",
    );
  domains.forEach((d, i) => {
    if (d.startsWith("*."))
      c.fail(
        `tls.acme.domains[${i}]`,
        d,
        "is a wildcard: those need the dns-01 challenge, which crm does not do; list the names",
      );
    else if (!DNS_NAME.test(d) || /\.\d+$/.test(d))
      c.fail(
        `tls.acme.domains[${i}]`,
        d,
        "must be a DNS name such as crm.example.com (an IP address or a bare name cannot get a certificate)",
      );
  });
  if (new Set(domains).size !== domains.length)
    c.fail("tls.acme.domains", domains, "lists a name twice");
  const email = c.string("tls.acme.email", a.email);
  if (email !== null && !/^[^@\s]+@[^@\s]+$/.test(email))
    c.fail(
      "tls.acme.email",
      email,
      "must be an e-mail address (the CA writes there about expiry and problems)",
    );
  let directory = c.string("tls.acme.directory", a.directory) ?? LETS_ENCRYPT;
  if (directory === "staging") directory = LETS_ENCRYPT_STAGING;
  else if (directory === "production") directory = LETS_ENCRYPT;
  else {
    try {
      if (new URL(directory).protocol !== "https:")
        c.fail(
          "tls.acme.directory",
          directory,
          'must be an https:// URL, "staging" or "production"',
        );
    } catch (cause) {
      c.errors.push(
        new ConfigError(
          "tls.acme.directory",
          `${JSON.stringify(directory)} must be an https:// URL, "staging" or "production"`,
          { cause },
        ),
      );
    }
  }
  const caBundle = c.string("tls.acme.ca_bundle", a.ca_bundle);
  const stateDir = c.string("tls.acme.state_dir", a.state_dir);
  const challenge = c.string("tls.acme.challenge", a.challenge) ?? "http-01";
  if (challenge === "tls-alpn-01") {
    // Bun.listen fixes one certificate per TLS listener and has no ALPN or SNI callback, so
    // crm cannot answer acme-tls/1 with the challenge certificate on its TLS port.
    c.fail(
      "tls.acme.challenge",
      challenge,
      "is not supported: Bun's TLS listener cannot pick a certificate by ALPN; use http-01 (a plain listener on :80)",
    );
  } else if (challenge !== "http-01") c.fail("tls.acme.challenge", challenge, "must be http-01");
  const renewBefore =
    a.renew_before === undefined || a.renew_before === null
      ? null
      : c.duration("tls.acme.renew_before", a.renew_before, 0);
  if (renewBefore === 0)
    c.fail("tls.acme.renew_before", a.renew_before, "must be greater than zero");
  return {
    domains,
    email,
    directory,
    caBundlePath: caBundle === null ? null : resolve(file, "..", caBundle),
    stateDir: resolve(file, "..", stateDir ?? defaultStateDir()),
    challenge: "http-01",
    renewBeforeMs: renewBefore,
  };
}

/** What `listen` and `tls` must agree on. */
export function checkTlsListeners(
  c: Checker,
  tls: TlsListenConfig | null,
  listen: readonly ListenAddress[],
): void {
  listen.forEach((l, i) => {
    if (l.tls === true && tls === null)
      c.fail(`listen[${i}].tls`, true, "needs a tls section (cert_path/key_path or acme)");
    if (l.unix !== undefined && tls?.acme && listenerIsTls(l, true)) {
      c.fail(
        `listen[${i}]`,
        l.source,
        "a unix socket cannot serve the ACME certificate (renewal re-listens); give it tls: false",
      );
    }
  });
  if (tls === null) return;
  const tcp = listen.filter((l) => l.unix === undefined);
  if (!listen.some((l) => listenerIsTls(l, true)))
    c.warnings.push("tls: no listener serves TLS (every listen item says tls: false)");
  if (tls.redirectHttp && !tcp.some((l) => !listenerIsTls(l, true)))
    c.warnings.push(
      'tls.redirect_http: there is no plain listener to redirect from (add {address: ":80", tls: false} to listen)',
    );
  if (tls.acme) {
    const plain = tcp.filter((l) => !listenerIsTls(l, true));
    // A plain listener beside ACME admits every address (the CA's validators are not in
    // access.clients) and checks the client per request; a PROXY header there would name that
    // client, and anyone can send one, so it would grant everything access.clients allows.
    listen.forEach((l, i) => {
      if (l.proxyProtocol && l.unix === undefined && !listenerIsTls(l, true)) {
        c.fail(
          `listen[${i}].proxy_protocol`,
          true,
          "cannot be used on a plain listener beside tls.acme (it admits everyone for http-01, so a forged PROXY header would pass access.clients): drop proxy_protocol there, or pass port 80 through without it",
        );
      }
    });
    if (plain.length === 0)
      c.warnings.push(
        'tls.acme: http-01 needs a plain listener that the CA reaches on port 80; add {address: ":80", tls: false} to listen',
      );
    else if (!plain.some((l) => l.port === 80))
      c.warnings.push(
        "tls.acme: the CA validates http-01 on port 80, and no plain listener is on :80 (fine only if port 80 is forwarded to one)",
      );
  }
}
