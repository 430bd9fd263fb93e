/**
 * Keeps an ACME certificate current: at start the stored one (or a temporary self-signed one
 * while the first order runs, never blocking start-up), renewal when a third of the lifetime
 * is left (or `renew_before`, but never before half the lifetime has passed), exponential backoff on failure that never undercuts the CA's
 * Retry-After, an error line every hour while renewal keeps failing, and a callback that hot
 * swaps the listeners' certificate.
 */
import type { Runtime } from "../context.ts";
import type { AcmeConfig } from "./config.ts";
import { AcmeError, issueCertificate, type IssueOptions } from "./acme.ts";
import { CertStore, type StoredCertificate } from "./cert-store.ts";
import { temporaryCertificate } from "./self-signed.ts";
import type { CertificateStatus } from "./status.ts";

/** First retry after 5 min, doubling to 4 h: Let's Encrypt allows 5 failed validations per name per hour. */
export const RETRY_BASE_MS = 5 * 60_000;
export const RETRY_MAX_MS = 4 * 3600_000;
const HOURLY_MS = 3600_000;
/** setTimeout's limit; longer waits are taken in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A renewal never comes sooner than this after issuance, whatever renew_before says. */
export const MIN_RENEWAL_AGE_MS = 3600_000;

/**
 * When to renew: `renewBeforeMs` before expiry, else when a third of the lifetime is left; never
 * before half the lifetime (or an hour, whichever is later) has passed since issuance, so a
 * renew_before at least as long as the CA's lifetime cannot re-order in a loop. The hour gives
 * way to 90% of a lifetime shorter than that: renewing after expiry would serve an expired one.
 */
export function renewalTime(
  cert: Pick<StoredCertificate, "notBefore" | "notAfter">,
  renewBeforeMs: number | null,
): number {
  const lifetime = cert.notAfter - cert.notBefore;
  const before = renewBeforeMs ?? lifetime / 3;
  const minAge = Math.max(lifetime / 2, Math.min(MIN_RENEWAL_AGE_MS, lifetime * 0.9));
  return Math.max(cert.notAfter - before, cert.notBefore + minAge);
}

/** Wait before try number `failures + 1`: doubling from base to max, never before Retry-After. */
export function retryDelay(
  failures: number,
  retryAfterMs: number | null,
  baseMs = RETRY_BASE_MS,
  maxMs = RETRY_MAX_MS,
): number {
  const exp = Math.min(maxMs, baseMs * 2 ** Math.max(0, failures - 1));
  return Math.max(exp, retryAfterMs ?? 0);
}

export interface ServedCertificate {
  cert: string;
  key: string;
}

export class AcmeCertificates {
  private readonly store: CertStore;
  private readonly tokens = new Map<string, string>();
  private current: StoredCertificate;
  private temporary: boolean;
  private timer: Timer | null = null;
  private hourly: Timer | null = null;
  private running: Promise<boolean> | null = null;
  private stopped = false;
  private started = false;
  private failures = 0;
  private totalFailures = 0;
  private lastError: string | null = null;
  private nextAttemptAt: number | null = null;

  private constructor(
    readonly config: AcmeConfig,
    private readonly rt: Runtime,
    private readonly onCertificate: (c: ServedCertificate) => void,
    store: CertStore,
    current: StoredCertificate,
    temporary: boolean,
    private readonly remindEveryMs: number,
    private readonly limits: Pick<IssueOptions, "requestTimeoutMs" | "orderDeadlineMs"> = {},
  ) {
    this.store = store;
    this.current = current;
    this.temporary = temporary;
  }

  /** Reads state_dir; without a usable stored certificate, makes the temporary one. */
  static async load(
    config: AcmeConfig,
    rt: Runtime,
    onCertificate: (c: ServedCertificate) => void,
    opts: { remindEveryMs?: number } & Pick<
      IssueOptions,
      "requestTimeoutMs" | "orderDeadlineMs"
    > = {},
  ): Promise<AcmeCertificates> {
    const remind = opts.remindEveryMs ?? HOURLY_MS;
    const store = new CertStore(config.stateDir);
    let warning: string | null;
    try {
      warning = store.prepare();
    } catch (e) {
      throw new Error(
        `tls.acme.state_dir: cannot create ${config.stateDir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (systemd: StateDirectory=crm)`,
        { cause: e },
      );
    }
    if (warning) rt.log.warn(warning);
    const name = config.domains[0] as string;
    const stored = store.readCertificate(name);
    if (stored !== null) {
      rt.log.info("ACME: using the stored certificate", {
        names: stored.names.join(","),
        expires: new Date(stored.notAfter).toISOString(),
        file: `${config.stateDir}/${name}.crt`,
      });
      return new AcmeCertificates(config, rt, onCertificate, store, stored, false, remind, opts);
    }
    const temp = await temporaryCertificate(config.domains);
    rt.log.info(
      "ACME: no certificate yet; serving a temporary self-signed one while issuance is under way",
      { names: config.domains.join(","), directory: config.directory },
    );
    return new AcmeCertificates(config, rt, onCertificate, store, temp, true, remind, opts);
  }

  get served(): ServedCertificate {
    return { cert: this.current.cert, key: this.current.key };
  }

  /** The key authorization for an http-01 token, or null. */
  challenge(token: string): string | null {
    return this.tokens.get(token) ?? null;
  }

  /**
   * Schedules the first order or the next renewal, once: a reload (SIGHUP) calls it again and
   * must keep the schedule, its backoff and the CA's Retry-After, not order at once.
   */
  start(): void {
    if (this.started) return;
    this.started = true;
    const c = this.current;
    const covers = this.config.domains.every((d) => c.names.includes(d));
    if (this.temporary || !covers) {
      if (!covers && !this.temporary)
        this.rt.log.info(
          "ACME: the stored certificate does not cover every configured name; ordering a new one",
          { stored: c.names.join(","), wanted: this.config.domains.join(",") },
        );
      this.schedule(Date.now());
    } else this.scheduleRenewal(c);
  }

  private scheduleRenewal(c: StoredCertificate): void {
    const lifetime = c.notAfter - c.notBefore;
    const before = this.config.renewBeforeMs;
    if (before !== null && before >= lifetime) {
      this.rt.log.warn(
        "ACME: tls.acme.renew_before is not shorter than the certificate's lifetime; renewing at half the lifetime (at least an hour, or 90% of a shorter lifetime, after issuance) instead",
        {
          renew_before_s: Math.round(before / 1000),
          lifetime_s: Math.round(lifetime / 1000),
        },
      );
    }
    this.schedule(renewalTime(c, before));
  }

  /** Renews now, whatever the schedule (operators, tests). Resolves to whether it worked. */
  renewNow(): Promise<boolean> {
    return this.attempt();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.hourly) clearInterval(this.hourly);
    this.timer = this.hourly = null;
  }

  status(): CertificateStatus {
    const c = this.current;
    const now = Date.now();
    return {
      name: this.config.domains[0] as string,
      source: this.temporary ? "self-signed" : "acme",
      names: c.names,
      notAfter: this.temporary ? null : c.notAfter,
      issuer: this.temporary ? null : c.issuer,
      state: this.running
        ? this.temporary
          ? "issuing"
          : "renewing"
        : this.temporary
          ? "issuing"
          : c.notAfter <= now
            ? "expired"
            : this.lastError
              ? "renewal failing"
              : "valid",
      lastError: this.lastError,
      nextAttemptAt: this.nextAttemptAt,
      renewalFailures: this.totalFailures,
    };
  }

  private schedule(at: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.nextAttemptAt = at;
    const wait = Math.max(0, at - Date.now());
    this.timer = setTimeout(
      () => {
        this.timer = null;
        if (Date.now() < at) this.schedule(at);
        else void this.attempt();
      },
      Math.min(wait, MAX_TIMER_MS),
    );
    this.timer.unref();
  }

  private attempt(): Promise<boolean> {
    this.running ??= this.run().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async run(): Promise<boolean> {
    const renewing = !this.temporary;
    const names = this.config.domains.join(",");
    this.rt.log.info(
      renewing ? "ACME: renewing the certificate" : "ACME: requesting a certificate",
      { names, directory: this.config.directory },
    );
    try {
      const cert = await issueCertificate({
        config: this.config,
        store: this.store,
        tokens: this.tokens,
        progress: (msg, fields) => this.rt.log.info(msg, fields),
        ...this.limits,
      });
      if (this.stopped) return false;
      this.current = cert;
      this.temporary = false;
      this.failures = 0;
      this.lastError = null;
      if (this.hourly) clearInterval(this.hourly);
      this.hourly = null;
      try {
        this.onCertificate(this.served);
      } catch (e) {
        // The certificate is stored and will be served after a restart; the order did not fail.
        this.rt.log.error("ACME: could not switch the listeners to the new certificate", {
          error: (e as Error).message,
        });
      }
      this.rt.log.info(renewing ? "ACME: certificate renewed" : "ACME: certificate issued", {
        names: cert.names.join(","),
        expires: new Date(cert.notAfter).toISOString(),
        serial: cert.serial,
        issuer: cert.issuer,
      });
      this.scheduleRenewal(cert);
      return true;
    } catch (e) {
      if (this.stopped) return false;
      this.failures++;
      this.totalFailures++;
      const err =
        e instanceof AcmeError
          ? e
          : new AcmeError((e as Error).message, "other", null, { cause: e });
      this.lastError = err.message;
      const delay = retryDelay(this.failures, err.retryAfterMs);
      this.rt.log.error(renewing ? "ACME: renewal failed" : "ACME: could not get a certificate", {
        names,
        error: err.message,
        retry_at: new Date(Date.now() + delay).toISOString(),
        serving: this.servingText(),
      });
      this.hourly ??= setInterval(() => this.remind(), this.remindEveryMs);
      this.hourly.unref();
      this.schedule(Date.now() + delay);
      return false;
    }
  }

  private servingText(): string {
    if (this.temporary) return "the temporary self-signed certificate";
    const until = new Date(this.current.notAfter).toISOString();
    return this.current.notAfter > Date.now()
      ? `the current certificate until it expires at ${until}`
      : `the certificate that expired at ${until}`;
  }

  private remind(): void {
    this.rt.log.error("ACME: the certificate could not be renewed", {
      names: this.config.domains.join(","),
      error: this.lastError ?? "",
      serving: this.servingText(),
      next_try: this.nextAttemptAt ? new Date(this.nextAttemptAt).toISOString() : "",
    });
  }
}
