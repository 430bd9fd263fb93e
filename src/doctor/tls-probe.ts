/**
 * One TLS handshake with an upstream, judged the way crm's fetch will judge it: is the chain
 * trusted, is the certificate for this name, is it valid now by this host's clock. Each failure
 * gets its own message, because "certificate verify failed" alone does not say what to fix.
 */
import { isIP } from "node:net";
import {
  checkServerIdentity,
  connect,
  rootCertificates,
  type PeerCertificate,
  type TLSSocket,
} from "node:tls";

export type TlsVerdict = { ok: true; detail: string } | { ok: false; detail: string; fix: string };

const CHAIN_ERRORS = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_UNTRUSTED",
  "CERT_SIGNATURE_FAILURE",
]);

export function judgeCertificate(
  host: string,
  cert: PeerCertificate,
  authorizationError: string | null,
  now = Date.now(),
): TlsVerdict {
  const from = Date.parse(cert.valid_from);
  const to = Date.parse(cert.valid_to);
  if (Number.isFinite(from) && now < from) {
    return {
      ok: false,
      detail: `certificate of ${host} is not valid before ${new Date(from).toISOString()}; this host's clock says ${new Date(now).toISOString()}`,
      fix: "set the clock right (timedatectl set-ntp true)",
    };
  }
  if (Number.isFinite(to) && now > to) {
    return {
      ok: false,
      detail: `certificate of ${host} expired on ${new Date(to).toISOString()} (this host's clock: ${new Date(now).toISOString()})`,
      fix: "if the clock is right the registry's certificate is expired; else set the clock (timedatectl set-ntp true)",
    };
  }
  const nameError = checkServerIdentity(host, cert);
  if (nameError) {
    return {
      ok: false,
      detail: `certificate is for ${cert.subjectaltname ?? cert.subject?.CN ?? "another name"}, not ${host}`,
      fix: `the upstream URL must name a host the certificate covers; a proxy or captive portal may be intercepting`,
    };
  }
  if (authorizationError !== null) {
    const chain = CHAIN_ERRORS.has(authorizationError);
    return {
      ok: false,
      detail: `certificate of ${host} is not trusted: ${authorizationError}${chain ? ` (issuer: ${cert.issuer?.CN ?? cert.issuer?.O ?? "unknown"})` : ""}`,
      fix: chain
        ? "install the issuing CA in the system store (update-ca-certificates) or NODE_EXTRA_CA_CERTS; a TLS-intercepting proxy causes this too"
        : "check the upstream's certificate",
    };
  }
  return {
    ok: true,
    detail: `trusted, for ${host}, valid until ${new Date(to).toISOString().slice(0, 10)}`,
  };
}

/** `extraCa`: PEM added to the system roots (tests; crm itself reads NODE_EXTRA_CA_CERTS). */
/** `now`: the clock the certificate is judged by (tests move it). */
export function probeTls(
  address: string,
  port: number,
  host: string,
  timeoutMs: number,
  extraCa?: string,
  now?: number,
): Promise<TlsVerdict> {
  return new Promise((resolve) => {
    let socket: TLSSocket;
    try {
      // SNI carries host names only (RFC 6066 §3): an IP as servername throws ERR_INVALID_ARG_VALUE.
      socket = connect({
        host: address,
        port,
        ...(isIP(host) ? {} : { servername: host }),
        rejectUnauthorized: false,
        ...(extraCa ? { ca: [...rootCertificates, extraCa] } : {}),
      });
    } catch (e) {
      // A synchronous throw would otherwise escape the report and lose every other row.
      resolve({
        ok: false,
        detail: `TLS handshake with ${host} could not start: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
        fix: `check the upstream URL's host (${host})`,
      });
      return;
    }
    const done = (v: TlsVerdict): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(v);
    };
    const timer = setTimeout(
      () =>
        done({
          ok: false,
          detail: `no TLS handshake with ${host} within ${timeoutMs} ms`,
          fix: "a firewall or a non-TLS service on that port",
        }),
      timeoutMs,
    );
    socket.once("secureConnect", () => {
      const err = socket.authorizationError;
      done(
        judgeCertificate(
          host,
          socket.getPeerCertificate(),
          err ? String((err as NodeJS.ErrnoException).code ?? err) : null,
          now,
        ),
      );
    });
    socket.once("error", (e: NodeJS.ErrnoException) =>
      done({
        ok: false,
        detail: `TLS handshake with ${host} failed: ${e.code ?? e.message}`,
        fix: "the port may not speak TLS (an http:// upstream?) or a middlebox cuts it",
      }),
    );
  });
}
