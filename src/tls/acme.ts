/**
 * One ACME order (RFC 8555) with the npm package acme-client: account (key reused from
 * state_dir), order, http-01 for every name, finalize with a fresh EC key, download the chain.
 * Failures become an AcmeError whose message says what to do (DNS, port 80, CAA, rate limit),
 * built from the CA's problem document rather than acme-client's flattened text. A CA is a
 * peer like any other: each request has a timeout, each order a deadline, each answer a size limit.
 */
import { Agent } from "node:https";
import { readFileSync } from "node:fs";
import type * as AcmeClient from "acme-client";
import type { AcmeConfig } from "./config.ts";
import { describePem, type CertStore, type StoredCertificate } from "./cert-store.ts";

export type AcmeFailure =
  | "dns"
  | "connection"
  | "caa"
  | "rate-limited"
  | "wrong-answer"
  | "rejected"
  | "unreachable-ca"
  | "other";

export class AcmeError extends Error {
  constructor(
    message: string,
    readonly failure: AcmeFailure,
    /** When the CA said to come back (Retry-After), in ms from now. */
    readonly retryAfterMs: number | null = null,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

interface Problem {
  type: string;
  detail: string;
  status: number;
  retryAfterMs: number | null;
}

/** Where the challenge responder finds the key authorization for a token. */
export interface ChallengeTokens {
  set(token: string, keyAuthorization: string): void;
  delete(token: string): void;
}

/** One request to the CA: a CA that accepts and never answers must not stall issuance. */
export const REQUEST_TIMEOUT_MS = 30_000;
/** A whole order (account, challenges, polling, download); then it counts as a failure. */
export const ORDER_DEADLINE_MS = 10 * 60_000;
/** ACME documents and certificate chains are a few KiB; a larger answer is refused, not buffered. */
export const MAX_RESPONSE_BYTES = 1 << 20;

// acme-client talks through one shared axios instance: per-directory trust (ca_bundle), limits,
// the last problem document and the last transport error are kept by origin, and its own
// retries are off so that crm's backoff, which honours Retry-After, is the only one (a 429 from
// a CA can say "in 3 hours").
interface OriginLimits {
  timeoutMs: number;
  /** Aborted when the order's deadline passes: every request still out is cancelled. */
  signal: AbortSignal;
}
/** By origin, with the bundle it trusts: a reload may change tls.acme.ca_bundle for the same directory. */
const agents = new Map<string, { ca: string; agent: Agent }>();
const limits = new Map<string, OriginLimits>();
const problems = new Map<string, Problem>();
const transport = new Map<string, TransportFailure>();
let loaded: typeof AcmeClient | null = null;

/** A request that got no answer (reset, timeout, too large, cancelled). */
interface TransportFailure {
  error: Error & { code?: string };
  url: string;
  timedOut: boolean;
}

/** The part of axios' error that tells a transport failure from an answer. */
interface AxiosLikeError extends Error {
  code?: string;
  response?: unknown;
  config?: { url?: string };
}

/** acme-client (and axios, node-forge) load on the first order, not at every crm start. */
async function loadClient(): Promise<typeof AcmeClient> {
  if (loaded) return loaded;
  // A CommonJS package: its exports arrive as `default` (and, in Bun, also as named exports).
  const mod = await import("acme-client");
  const acme = (mod as { default?: typeof AcmeClient }).default ?? mod;
  installHooks(acme);
  loaded = acme;
  return acme;
}

function installHooks(acme: typeof AcmeClient): void {
  const ax = acme.axios;
  (
    ax.defaults as unknown as { acmeSettings: { retryMaxAttempts: number } }
  ).acmeSettings.retryMaxAttempts = 0;
  ax.defaults.maxContentLength = MAX_RESPONSE_BYTES;
  ax.defaults.maxBodyLength = MAX_RESPONSE_BYTES;
  ax.defaults.timeout = REQUEST_TIMEOUT_MS;
  ax.interceptors.request.use((cfg) => {
    const origin = cfg.url ? originOf(cfg.url) : "";
    const agent = agents.get(origin)?.agent;
    if (agent) cfg.httpsAgent = agent;
    const l = limits.get(origin);
    if (l) {
      cfg.timeout = l.timeoutMs;
      // axios' own timeout only watches the socket; the signal also ends a body that drips.
      cfg.signal = AbortSignal.any([l.signal, AbortSignal.timeout(l.timeoutMs)]);
    }
    return cfg;
  });
  // acme-client's own error handler reads `error.response.config` and throws a TypeError when
  // there is no response (connection reset, timeout, too large): this one runs before it and
  // keeps the real cause. The interceptor list is public (axios' InterceptorManager.handlers).
  const rejected = (e: unknown): Promise<never> => {
    const err = e as AxiosLikeError;
    const url = err?.config?.url;
    if (err instanceof Error && err.response === undefined && url) {
      const l = limits.get(originOf(url));
      const timedOut =
        err.code === "ECONNABORTED" ||
        err.code === "ETIMEDOUT" ||
        (err.code === "ERR_CANCELED" && l !== undefined && !l.signal.aborted);
      transport.set(originOf(url), { error: err, url, timedOut });
    }
    return Promise.reject(e);
  };
  (
    ax.interceptors.response as unknown as {
      handlers: Array<{
        fulfilled: null;
        rejected: typeof rejected;
        synchronous: boolean;
        runWhen: null;
      }>;
    }
  ).handlers.unshift({ fulfilled: null, rejected, synchronous: false, runWhen: null });
  ax.interceptors.response.use((res) => {
    const data = res.data as { type?: unknown; detail?: unknown } | null;
    if (res.status >= 400 && data && typeof data.type === "string" && res.config.url) {
      problems.set(originOf(res.config.url), {
        type: data.type,
        detail: typeof data.detail === "string" ? data.detail : "",
        status: res.status,
        retryAfterMs: parseRetryAfter(String(res.headers["retry-after"] ?? "")),
      });
    }
    return res;
  });
}

function originOf(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return url;
  }
}

/** Retry-After: seconds or an HTTP date (RFC 9110 §10.2.3). */
export function parseRetryAfter(v: string, now = Date.now()): number | null {
  if (v === "") return null;
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? null : Math.max(0, t - now);
}

const hostOf = (directory: string): string => {
  try {
    return new URL(directory).host;
  } catch {
    return directory;
  }
};

/** Turns a CA problem (RFC 8555 §6.7) about `domain` into a message that says what to do. */
export function explainProblem(
  p: Pick<Problem, "type" | "detail" | "retryAfterMs">,
  domain: string | null,
  directory: string,
  now = Date.now(),
): AcmeError {
  const type = p.type.replace(/^urn:ietf:params:acme:error:/, "");
  const d = domain ?? "the domain";
  const said = p.detail ? ` (the CA said: ${p.detail})` : "";
  // Some CAs (pebble) report a failed lookup as a connection problem: the detail tells.
  const lookupFailed = /could not resolve|NXDOMAIN|SERVFAIL|no valid A|DNS problem/i.test(p.detail);
  switch (lookupFailed && (type === "connection" || type === "dns") ? "dns" : type) {
    case "dns":
      return new AcmeError(
        `${d} does not resolve for the CA${said}: create an A (and/or AAAA) record for ${d} pointing to this host's public address, wait for DNS to propagate, and crm retries by itself`,
        "dns",
      );
    case "connection":
      return new AcmeError(
        `the CA could not connect to http://${d}/.well-known/acme-challenge/${said}: port 80 is unreachable; make sure ${d} resolves to this host, crm has a plain listener on :80 ({address: ":80", tls: false}), and firewalls or security groups let port 80 in from the internet`,
        "connection",
      );
    case "unauthorized":
    case "incorrectResponse":
      return new AcmeError(
        `the CA reached ${d} on port 80 but did not get crm's challenge answer${said}: ${d} probably resolves to another host, or something else answers port 80 there; point ${d} at this host and let crm's plain listener have :80`,
        "wrong-answer",
      );
    case "caa":
      return new AcmeError(
        `a CAA record forbids ${hostOf(directory)} to issue for ${d}${said}: add the CA to ${d}'s CAA record (Let's Encrypt: ${d}. CAA 0 issue "letsencrypt.org") or remove the record`,
        "caa",
      );
    case "rateLimited": {
      const when = p.retryAfterMs !== null ? new Date(now + p.retryAfterMs).toISOString() : null;
      return new AcmeError(
        `rate limited by the CA${said}; ${when ? `the CA allows a new try after ${when}, and crm waits until then` : "crm backs off before the next try"} (use directory: staging while testing)`,
        "rate-limited",
        p.retryAfterMs,
      );
    }
    case "rejectedIdentifier":
      return new AcmeError(
        `the CA will not issue for ${d}${said}: use a public DNS name you control in tls.acme.domains`,
        "rejected",
      );
    default:
      return new AcmeError(`the CA refused: ${type}${said}`, "other", p.retryAfterMs);
  }
}

/** A request that got no answer at all: say which, not acme-client's TypeError. */
function explainNoAnswer(
  f: TransportFailure,
  directory: string,
  step: string,
  timeoutMs: number,
): AcmeError {
  const code = f.error.code;
  if (f.timedOut) {
    return new AcmeError(
      `the CA at ${directory} did not answer within ${Math.round(timeoutMs / 1000)} s (${step}: ${f.url}); crm retries later; check that the CA is up and this host's outgoing https is not blocked or filtered`,
      "unreachable-ca",
      null,
      { cause: f.error },
    );
  }
  if (/maxContentLength|maxBodyLength/.test(f.error.message)) {
    return new AcmeError(
      `the CA at ${directory} sent an answer larger than ${MAX_RESPONSE_BYTES} bytes (${step}: ${f.url}); that is not an ACME document: check tls.acme.directory`,
      "other",
      null,
      { cause: f.error },
    );
  }
  if (code === "ERR_CANCELED")
    return new AcmeError(
      `${step} was cancelled: the order ran past its deadline`,
      "unreachable-ca",
      null,
      { cause: f.error },
    );
  if (
    code !== "ECONNRESET" &&
    code !== "EPIPE" &&
    code !== undefined &&
    /^(E[A-Z]+|ERR_|CERT_|DEPTH_|UNABLE_|SELF_SIGNED)/.test(code) &&
    code !== "ERR_BAD_RESPONSE"
  )
    return explainTransport(f.error, directory, step);
  return new AcmeError(
    `the CA at ${directory} closed the connection without an answer (${step}: ${f.url}: ${f.error.message}); crm retries later; check tls.acme.directory and any proxy or firewall between`,
    "unreachable-ca",
    null,
    { cause: f.error },
  );
}

/** A request that failed without a problem document: the CA itself is out of reach. */
function explainTransport(e: Error, directory: string, step: string): AcmeError {
  const code = (e as NodeJS.ErrnoException).code;
  return new AcmeError(
    `cannot reach the ACME directory ${directory} (${step}: ${code ?? e.message}): check tls.acme.directory, that this host can make outgoing https connections${code === "DEPTH_ZERO_SELF_SIGNED_CERT" || code === "UNABLE_TO_VERIFY_LEAF_SIGNATURE" || /certificate/i.test(e.message) ? ", and tls.acme.ca_bundle for a CA with its own certificate" : ""}`,
    "unreachable-ca",
    null,
    { cause: e },
  );
}

export interface IssueOptions {
  config: AcmeConfig;
  store: CertStore;
  tokens: ChallengeTokens;
  /** Progress lines (account, order, challenge accepted). */
  progress(msg: string, fields?: Record<string, string>): void;
  /** Defaults REQUEST_TIMEOUT_MS and ORDER_DEADLINE_MS (tests shorten them). */
  requestTimeoutMs?: number;
  orderDeadlineMs?: number;
}

/** One order, cancelled (requests aborted, a failure returned) when its deadline passes. */
export async function issueCertificate(opts: IssueOptions): Promise<StoredCertificate> {
  const { config } = opts;
  const origin = originOf(config.directory);
  const deadlineMs = opts.orderDeadlineMs ?? ORDER_DEADLINE_MS;
  const abort = new AbortController();
  limits.set(origin, {
    timeoutMs: opts.requestTimeoutMs ?? REQUEST_TIMEOUT_MS,
    signal: abort.signal,
  });
  let timer: Timer | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      abort.abort();
      reject(
        new AcmeError(
          `the order did not finish within ${Math.round(deadlineMs / 1000)} s (the CA at ${config.directory} is too slow or stopped answering); crm retries later`,
          "unreachable-ca",
        ),
      );
    }, deadlineMs);
  });
  const work = order(opts, origin);
  // The abandoned order ends at its next request (aborted); its rejection is not the answer.
  work.catch(() => {});
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** The agent for `origin` trusts `ca` (null: the system roots); a kept-alive socket verified against another bundle is not reused. */
function trustFor(origin: string, ca: string | null): void {
  const had = agents.get(origin);
  if (had !== undefined && had.ca === ca) return;
  had?.agent.destroy();
  if (ca === null) agents.delete(origin);
  else agents.set(origin, { ca, agent: new Agent({ ca, keepAlive: true }) });
}

async function order(
  { config, store, tokens, progress, requestTimeoutMs }: IssueOptions,
  origin: string,
): Promise<StoredCertificate> {
  const acme = await loadClient();
  trustFor(origin, config.caBundlePath === null ? null : readFileSync(config.caBundlePath, "utf8"));
  problems.delete(origin);
  transport.delete(origin);
  const step = async <T>(
    name: string,
    domain: string | null,
    run: () => Promise<T>,
  ): Promise<T> => {
    try {
      return await run();
    } catch (e) {
      if (e instanceof AcmeError) throw e;
      const p = problems.get(origin);
      problems.delete(origin);
      if (p) throw explainProblem(p, domain, config.directory);
      const t = transport.get(origin);
      transport.delete(origin);
      if (t)
        throw explainNoAnswer(t, config.directory, name, requestTimeoutMs ?? REQUEST_TIMEOUT_MS);
      if (
        e instanceof Error &&
        /^(E[A-Z]+|ERR_|CERT_|DEPTH_|UNABLE_|SELF_SIGNED)/.test(
          String((e as NodeJS.ErrnoException).code ?? ""),
        )
      )
        throw explainTransport(e, config.directory, name);
      throw new AcmeError(`${name} failed: ${(e as Error).message}`, "other", null, { cause: e });
    }
  };

  let accountKey = store.readAccountKey();
  const knownKey = accountKey !== null;
  if (accountKey === null) {
    accountKey = (await acme.crypto.createPrivateEcdsaKey("P-256")).toString();
    store.writeAccountKey(accountKey);
    progress("ACME: created an account key", { file: `${store.dir}/account.key` });
  }
  const client = new acme.Client({
    directoryUrl: config.directory,
    accountKey,
    backoffAttempts: 15,
    backoffMin: 1000,
    backoffMax: 10_000,
  });
  const contact = config.email ? [`mailto:${config.email}`] : null;
  await step("account", null, async () => {
    // acme-client's createAccount on an existing account sends an update with whatever it was
    // given, and a CA may refuse an update that changes nothing (pebble: "empty update"): look
    // the account up, and update only a contact that differs.
    const existing = knownKey ? await existingAccount(client, origin) : null;
    if (existing === null)
      await client.createAccount({ termsOfServiceAgreed: true, ...(contact ? { contact } : {}) });
    else if (contact !== null && JSON.stringify(existing.contact ?? []) !== JSON.stringify(contact))
      await client.updateAccount({ contact });
  });
  const order = await step("new order", config.domains[0] ?? null, () =>
    client.createOrder({ identifiers: config.domains.map((value) => ({ type: "dns", value })) }),
  );
  progress("ACME: order placed", { names: config.domains.join(","), order: order.url });
  const authzs = await step("authorizations", null, () => client.getAuthorizations(order));
  const placed: string[] = [];
  try {
    await Promise.all(
      authzs.map(async (authz) => {
        const domain = authz.identifier.value;
        if (authz.status === "valid") return;
        const ch = authz.challenges.find((c) => c.type === "http-01");
        if (!ch)
          throw new AcmeError(
            `the CA offers no http-01 challenge for ${domain} (it offers ${authz.challenges.map((c) => c.type).join(", ")})`,
            "other",
          );
        tokens.set(ch.token, await client.getChallengeKeyAuthorization(ch));
        placed.push(ch.token);
        await step("challenge", domain, () => client.completeChallenge(ch));
        try {
          await client.waitForValidStatus(ch);
        } catch (e) {
          const t = transport.get(origin);
          transport.delete(origin);
          if (t)
            throw explainNoAnswer(
              t,
              config.directory,
              "challenge status",
              requestTimeoutMs ?? REQUEST_TIMEOUT_MS,
            );
          throw await diagnose(client, authz.url, domain, config.directory, e as Error);
        }
        progress("ACME: http-01 validated", { name: domain });
      }),
    );
  } finally {
    for (const t of placed) tokens.delete(t);
  }
  const [key, csr] = await acme.crypto.createCsr(
    { altNames: [...config.domains] },
    await acme.crypto.createPrivateEcdsaKey("P-256"),
  );
  const done = await step("finalize", config.domains[0] ?? null, () =>
    client.finalizeOrder(order, csr),
  );
  const chain = await step("download", null, () => client.getCertificate(done));
  const cert = describePem(chain, key.toString());
  const missing = config.domains.filter((d) => !cert.names.includes(d));
  if (missing.length > 0)
    throw new AcmeError(`the CA's certificate lacks ${missing.join(", ")}`, "other");
  store.writeCertificate(config.domains[0] as string, cert.cert, cert.key);
  return cert;
}

/** The account of this key (RFC 8555 §7.3.1 onlyReturnExisting), or null when the CA has none. */
async function existingAccount(
  client: AcmeClient.Client,
  origin: string,
): Promise<{ contact?: string[] } | null> {
  try {
    return (await client.createAccount({ onlyReturnExisting: true })) as { contact?: string[] };
  } catch (e) {
    if (problems.get(origin)?.type !== "urn:ietf:params:acme:error:accountDoesNotExist") throw e;
    problems.delete(origin);
    return null;
  }
}

/** The challenge went invalid: the authorization's challenge carries the CA's reason. */
async function diagnose(
  client: AcmeClient.Client,
  authzUrl: string,
  domain: string,
  directory: string,
  e: Error,
): Promise<AcmeError> {
  try {
    const authz = (
      await client.getAuthorizations({ authorizations: [authzUrl] } as unknown as AcmeClient.Order)
    )[0];
    const err = authz?.challenges.find((c) => c.type === "http-01")?.error as
      { type?: string; detail?: string } | undefined;
    if (err?.type)
      return explainProblem(
        { type: err.type, detail: err.detail ?? "", retryAfterMs: null },
        domain,
        directory,
      );
  } catch {
    // Fall through to acme-client's own text.
  }
  return new AcmeError(`http-01 for ${domain} failed: ${e.message}`, "other", null, { cause: e });
}
