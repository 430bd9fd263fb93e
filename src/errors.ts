/**
 * Errors are values with causes. Each kind names what went wrong for the operator; the
 * HTTP status an error maps to lives beside it so every layer answers the same way.
 */

/** A configuration that cannot run. `path` is the key path (`allowed_hosts[3]`). */
export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(
    readonly path: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(path ? `${path}: ${message}` : message, options);
  }
}

/** Several ConfigErrors at once, so an operator fixes a file in one pass. */
export class ConfigErrors extends Error {
  override name = "ConfigErrors";
  constructor(
    readonly file: string,
    readonly errors: ConfigError[],
  ) {
    super(
      `${file}: ${errors.length} error${errors.length === 1 ? "" : "s"}:\n` +
        errors.map((e) => `  - ${e.message}`).join("\n"),
    );
  }
}

/** A request crm answers itself with an error status (malformed input, refused target, dead upstream). */
export class HttpError extends Error {
  override name = "HttpError";
  constructor(
    readonly status: number,
    message: string,
    options?: ErrorOptions & { headers?: Record<string, string> },
  ) {
    super(message, options);
    this.headers = options?.headers ?? {};
  }
  readonly headers: Record<string, string>;
}

/** Why a dial failed; each reason maps to one status (RFC 9110 §15.6.3 502, §15.6.5 504). */
export type DialFailure =
  | "refused"
  | "dns"
  | "timeout"
  | "reset"
  | "tls"
  | "unreachable"
  | "private"
  | "self"
  | "framing"
  | "other";

export class DialError extends Error {
  override name = "DialError";
  /** What exactly was wrong, when the reason alone does not say (the framing an upstream used). */
  readonly detail: string | null;
  constructor(
    readonly reason: DialFailure,
    readonly target: string,
    options?: ErrorOptions & { detail?: string },
  ) {
    super(
      `${target}: ${describeDialFailure(reason)}${options?.detail ? `: ${options.detail}` : ""}`,
      options,
    );
    this.detail = options?.detail ?? null;
  }
  get status(): number {
    if (this.reason === "private" || this.reason === "self") return 403;
    return this.reason === "timeout" ? 504 : 502;
  }
}

function describeDialFailure(reason: DialFailure): string {
  switch (reason) {
    case "refused":
      return "connection refused";
    case "dns":
      return "DNS lookup failed";
    case "timeout":
      return "timed out";
    case "reset":
      return "connection reset";
    case "tls":
      return "TLS handshake failed";
    case "unreachable":
      return "network unreachable";
    case "private":
      return "resolves to a non-public address (set allow_private_networks: true to allow)";
    case "self":
      return "is crm's own listener (a request crm sends itself would come back from crm's own address)";
    case "framing":
      return "answered with a message framing crm cannot relay";
    default:
      return "connection failed";
  }
}

/** The SSRF guard refused the address a name resolved to. */
export class PrivateAddressError extends Error {
  override name = "PrivateAddressError";
  constructor(
    readonly host: string,
    readonly address: string,
    readonly range: string,
  ) {
    super(`${host} resolves to ${address} (in ${range}), a non-public address`);
  }
}

/** A client's target resolves to one of crm's own listeners (net/self-targets.ts). */
export class SelfTargetError extends Error {
  override name = "SelfTargetError";
  constructor(
    readonly host: string,
    readonly address: string,
    readonly port: number,
  ) {
    super(`${host} resolves to ${address}, and port ${port} there is crm's own listener`);
  }
}

/** Maps a low-level error (Bun socket or fetch) to a DialFailure by its code. */
export function classifyNetworkError(err: unknown): DialFailure {
  if (err instanceof PrivateAddressError) return "private";
  const code = errorCode(err);
  const msg = err instanceof Error ? err.message : String(err);
  if (code === "ECONNREFUSED" || /refused/i.test(msg)) return "refused";
  if (
    code === "ENOTFOUND" ||
    code === "EAI_AGAIN" ||
    code === "EAI_NONAME" ||
    /dns|getaddrinfo|resolve/i.test(msg) ||
    code === "DNSException"
  )
    return "dns";
  if (
    code === "ETIMEDOUT" ||
    code === "TimeoutError" ||
    (code === "ABORT_ERR" && /timeout/i.test(msg))
  )
    return "timeout";
  if (
    code === "ECONNRESET" ||
    code === "EPIPE" ||
    /reset|socket closed|ConnectionClosed/i.test(msg)
  )
    return "reset";
  if (/tls|certificate|CERT_|SSL|self.signed|UNABLE_TO/i.test(code + " " + msg)) return "tls";
  if (code === "ENETUNREACH" || code === "EHOSTUNREACH") return "unreachable";
  return "other";
}

export function errorCode(err: unknown): string {
  if (err && typeof err === "object") {
    const o = err as { code?: unknown; name?: unknown };
    if (typeof o.code === "string") return o.code;
    if (typeof o.name === "string") return o.name;
  }
  return "";
}
