/**
 * The one connection to the shared store (Redis or Valkey), wrapped so that no request ever
 * depends on it: every call has a deadline (cluster.deadline, default 100 ms) and never throws;
 * `undefined` means "decide with local state". Bun's RedisClient queues commands while
 * disconnected and does not reconnect after an idle close by itself, so both are off here:
 * commands fail at once while down, and this module reconnects in the background with back-off.
 * Going down logs one warning and sets `crm_cluster_up 0`; coming back logs one line.
 *
 * A second connection (`duplicate()`) carries pub/sub: a subscribed connection can run nothing
 * else. Messages are strings on one channel per key prefix.
 */
import { RedisClient } from "bun";
import type { Logger } from "../log.ts";
import type { ClusterConfig } from "./config.ts";
import { detachedFromBudget, storeBudget } from "./budget.ts";
import { isAuthRefusal, probeStore } from "./probe.ts";

const TIMEOUT = Symbol("timeout");
/** Error replies that say the store cannot take writes at all (not this one command's fault). */
const WRITE_REFUSAL = /^(?:ERR )?(READONLY|OOM|MISCONF)\b/i;
/** A connect (TCP, TLS, HELLO) is not on a request's path: it may take longer than a call. */
const CONNECT_MS = 2000;
const RECONNECT_MIN_MS = 200;
const RECONNECT_MAX_MS = 5000;
/** Full-deadline timeouts in a row that mark the store down even on a busy event loop. */
const DOWN_AFTER_TIMEOUTS = 3;
/** Deadlines without any answer that mark the store down whatever else happens. */
const SILENT_DEADLINES = 3;

export type StoreClient = RedisClient;

export class StoreError extends Error {}

export class Store {
  private client: RedisClient | null = null;
  private sub: RedisClient | null = null;
  private upState = false;
  private closed = false;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private attempts = 0;
  /** Why it is down, for the status page and doctor. */
  lastError: string | null = null;
  private readonly downListeners = new Set<() => void>();
  private readonly messageListeners = new Set<(message: string) => void>();
  /** overBudget: not sent, the request had spent its store budget (budget.ts). */
  readonly stats = { ok: 0, timeout: 0, error: 0, skipped: 0, overBudget: 0, downs: 0 };
  /** The longest a call waited, in ms (doctor, bench, tests read it). */
  maxWaitMs = 0;
  /** When the store last answered anything (performance.now()). */
  private lastAnswerAt = 0;
  /** READONLY, OOM or MISCONF when the last down was such a refusal (said once). */
  private lastRefusal: string | null = null;
  /** When the store last came (back) up. */
  private upSince = 0;
  /** Calls given the full deadline that ran out since the last answer. */
  private fullTimeouts = 0;
  /** When the oldest call that ran out since the last answer started; null: none did. */
  private silentSince: number | null = null;
  readonly channel: string;

  private constructor(
    readonly config: ClusterConfig,
    private readonly log: () => Logger,
  ) {
    this.channel = `${config.keyPrefix}events`;
  }

  /**
   * Connects once. A refused password is an Error (start-up stops with it); an unreachable
   * store is not: crm runs on local state, says so once, and keeps trying.
   */
  static async open(config: ClusterConfig, log: () => Logger): Promise<Store> {
    const s = new Store(config, log);
    const failure = await s.connect();
    if (failure === null) {
      s.upState = true;
      log().info("cluster store connected", { store: config.url.href, prefix: config.keyPrefix });
      return s;
    }
    const probe = await probeStore(config, CONNECT_MS);
    if (probe.kind === "refused" && isAuthRefusal(probe.message)) {
      throw new StoreError(
        `cluster.redis: ${config.url.href} refused crm's credentials: ${probe.message}${config.password === null ? " (no cluster.password_file is set)" : ` (check cluster.password_file ${config.passwordFile}${config.username !== null ? " and cluster.username" : ""})`}`,
      );
    }
    s.lastError = probe.kind === "ok" ? failure : probe.message;
    s.stats.downs++;
    log().warn(
      "cluster store unreachable; every replica-shared decision is local until it answers (reconnecting in the background)",
      { store: config.url.href, error: s.lastError },
    );
    s.scheduleReconnect();
    return s;
  }

  get up(): boolean {
    return this.upState;
  }

  key(...parts: string[]): string {
    return this.config.keyPrefix + parts.join(":");
  }

  /**
   * Runs `fn` on the store within the deadline. Never throws: undefined when the store is down,
   * slow, or answered an error (then the caller decides with its local state). A call given less
   * than the configured deadline (what is left of a request's budget) that runs out says nothing
   * about the store, so only a full deadline's silence marks it down.
   */
  async call<T>(
    fn: (c: RedisClient) => Promise<T>,
    deadlineMs = this.config.deadlineMs,
  ): Promise<T | undefined> {
    const c = this.client;
    if (!this.upState || c === null) {
      this.stats.skipped++;
      return undefined;
    }
    // What is left of the request's store budget (budget.ts) caps this call's deadline.
    const budget = storeBudget();
    if (budget !== null) {
      const left = Math.floor(this.config.deadlineMs - budget.spentMs);
      if (left < 1) {
        this.stats.overBudget++;
        return undefined;
      }
      deadlineMs = Math.min(deadlineMs, left);
    }
    const started = performance.now();
    let timer: ReturnType<typeof setTimeout> | undefined;
    // When the timer fires, one more turn of the event loop reads what the socket already holds:
    // a reply that arrived in time but was not read yet (a busy loop) still wins the race.
    const deadline = new Promise<typeof TIMEOUT>(
      (r) => (timer = setTimeout(() => setImmediate(() => r(TIMEOUT)), deadlineMs)),
    );
    try {
      const v = await Promise.race([fn(c), deadline]);
      if (v === TIMEOUT) {
        this.stats.timeout++;
        if (deadlineMs >= this.config.deadlineMs) this.fullTimeouts++;
        // The oldest call still unanswered since the store last answered anything.
        if (this.silentSince === null || this.lastAnswerAt > this.silentSince)
          this.silentSince = started;
        const silentMs = performance.now() - this.silentSince;
        // Answers to other calls while this one waited, or a deadline timer that itself fired
        // late: the store may be fine and this process busy (a loaded event loop reads replies
        // late), so one such timeout decides locally. But a stopped store looks the same from a
        // busy loop: DOWN_AFTER_TIMEOUTS full deadlines in a row, or SILENT_DEADLINES deadlines
        // with no answer at all, mark it down whatever the excuse.
        const late = performance.now() - started > deadlineMs * 1.5;
        const excused = deadlineMs < this.config.deadlineMs || this.lastAnswerAt > started || late;
        const hopeless =
          this.fullTimeouts >= DOWN_AFTER_TIMEOUTS ||
          silentMs >= SILENT_DEADLINES * this.config.deadlineMs;
        if (excused && !hopeless) return undefined;
        // A stopped store keeps its TCP connection open: silence is how it looks. Every later
        // call must not pay the deadline again, so the connection is dropped and re-made.
        this.markDown(
          `no answer within ${deadlineMs} ms${hopeless ? ` (nothing for ${Math.round(silentMs)} ms)` : ""}`,
        );
        return undefined;
      }
      this.fullTimeouts = 0;
      this.silentSince = null;
      this.stats.ok++;
      this.lastAnswerAt = performance.now();
      return v;
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      const refusal = WRITE_REFUSAL.exec(message)?.[1]?.toUpperCase() ?? null;
      if (!c.connected || this.client !== c) this.markDown(message);
      // A read-only replica, a full or misconfigured store: it answers, but nothing can be
      // shared through it, so it counts as down (crm_cluster_up 0) rather than a quiet failure.
      else if (refusal !== null) this.markDown(message, refusal);
      else {
        // An error reply is an answer: the store is there.
        this.lastAnswerAt = performance.now();
        this.fullTimeouts = 0;
        this.silentSince = null;
        this.stats.error++;
        this.log().debug("cluster store call failed", { error: message.slice(0, 200) });
      }
      return undefined;
    } finally {
      clearTimeout(timer);
      const waited = performance.now() - started;
      if (budget !== null) budget.spentMs += waited;
      if (waited > this.maxWaitMs) this.maxWaitMs = waited;
    }
  }

  /** An atomic script: EVALSHA, and EVAL once when the store does not have it yet (NOSCRIPT). */
  script(s: Script, keys: string[], args: string[], deadlineMs?: number): Promise<unknown> {
    return this.call(async (c) => {
      const tail = [String(keys.length), ...keys, ...args];
      try {
        return (await c.send("EVALSHA", [s.sha, ...tail])) as unknown;
      } catch (e) {
        if (!/NOSCRIPT/i.test((e as Error).message)) throw e;
        return (await c.send("EVAL", [s.source, ...tail])) as unknown;
      }
    }, deadlineMs);
  }

  /** Fire and forget within the deadline (the result is nobody's business). */
  publish(message: string): void {
    this.detached((c) => c.publish(this.channel, message));
  }

  /**
   * A call no request waits for (a write after the answer, a refund): outside any request's
   * store budget, fire and forget.
   */
  detached<T>(fn: (c: RedisClient) => Promise<T>): void {
    void detachedFromBudget(() => this.call(fn));
  }

  /** A script no request waits for (see detached). */
  detachedScript(s: Script, keys: string[], args: string[]): void {
    void detachedFromBudget(() => this.script(s, keys, args));
  }

  /** Called on every message of this prefix's channel; returns the unsubscribe. */
  onMessage(fn: (message: string) => void): () => void {
    this.messageListeners.add(fn);
    return () => this.messageListeners.delete(fn);
  }

  /** Called once each time the store goes down (waiters stop waiting for it). */
  onDown(fn: () => void): () => void {
    this.downListeners.add(fn);
    return () => this.downListeners.delete(fn);
  }

  close(): void {
    this.closed = true;
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.dropConnections();
    this.upState = false;
  }

  metricLines(): string[] {
    return [
      "# HELP crm_cluster_up 1 while the shared store (cluster.redis) answers, 0 while this replica decides alone.",
      "# TYPE crm_cluster_up gauge",
      `crm_cluster_up ${this.upState ? 1 : 0}`,
      "# HELP crm_cluster_calls_total Store calls by result (skipped: the store was down; over_budget: the request had spent its store budget; local state decided both).",
      "# TYPE crm_cluster_calls_total counter",
      ...(["ok", "timeout", "error", "skipped"] as const).map(
        (r) => `crm_cluster_calls_total{result="${r}"} ${this.stats[r]}`,
      ),
      `crm_cluster_calls_total{result="over_budget"} ${this.stats.overBudget}`,
    ];
  }

  /** null when connected (and subscribed), else why not. */
  private async connect(): Promise<string | null> {
    const { config } = this;
    const url = new URL(config.url.href.replace(/^valkey(s?):/, "redis$1:"));
    if (config.username !== null) url.username = encodeURIComponent(config.username);
    if (config.password !== null) url.password = encodeURIComponent(config.password);
    const client = new RedisClient(url.href, {
      enableOfflineQueue: false,
      autoReconnect: false,
      enableAutoPipelining: true,
      connectionTimeout: CONNECT_MS,
      tls: config.tls ? (config.ca !== null ? { ca: config.ca } : true) : false,
    });
    let sub: RedisClient | null = null;
    let abandoned = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<typeof TIMEOUT>(
      (r) => (timer = setTimeout(() => r(TIMEOUT), CONNECT_MS + 500)),
    );
    try {
      const ready = (async () => {
        await client.connect();
        const made = await client.duplicate();
        sub = made;
        // Given up on while it was being made: it must not stay open.
        if (abandoned) made.close();
        await made.subscribe(this.channel, (message) => {
          for (const fn of this.messageListeners) fn(message);
        });
      })();
      ready.catch(() => {});
      if ((await Promise.race([ready, timeout])) === TIMEOUT)
        throw new Error(`no answer within ${CONNECT_MS} ms`);
    } catch (e) {
      abandoned = true;
      client.close();
      (sub as RedisClient | null)?.close();
      return e instanceof Error ? e.message : String(e);
    } finally {
      clearTimeout(timer);
    }
    const onClose = (e: Error | undefined): void => {
      if (this.client === client) this.markDown(e?.message ?? "connection closed");
    };
    client.onclose = onClose;
    (sub as RedisClient | null)!.onclose = onClose;
    this.client = client;
    this.sub = sub;
    return null;
  }

  private dropConnections(): void {
    const { client, sub } = this;
    this.client = null;
    this.sub = null;
    for (const c of [client, sub]) {
      if (c === null) continue;
      c.onclose = null;
      c.close();
    }
  }

  private markDown(reason: string, refusal: string | null = null): void {
    if (!this.upState) return;
    this.upState = false;
    this.lastError = reason;
    this.stats.downs++;
    this.dropConnections();
    // The same refusal again after a reconnect: said once, and the back-off keeps growing
    // (a read-only store accepts the connection each time).
    const again =
      refusal !== null && refusal === this.lastRefusal && performance.now() - this.upSince < 60_000;
    this.lastRefusal = refusal;
    const fields = { store: this.config.url.href, error: reason.slice(0, 200) };
    const message =
      "cluster store down; replica-shared decisions are local until it is back (reconnecting in the background)";
    if (again) this.log().debug(message, fields);
    else this.log().warn(message, fields);
    for (const fn of this.downListeners) fn();
    if (!again) this.attempts = 0;
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closed || this.reconnectTimer !== null) return;
    const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** this.attempts);
    this.reconnectTimer = setTimeout(() => void this.reconnect(), delay);
    this.reconnectTimer.unref?.();
  }

  private async reconnect(): Promise<void> {
    this.reconnectTimer = null;
    if (this.closed) return;
    this.attempts++;
    const failure = await this.connect();
    if (this.closed) {
      this.dropConnections();
      return;
    }
    if (failure !== null) {
      this.lastError = failure;
      this.scheduleReconnect();
      return;
    }
    this.upState = true;
    this.upSince = performance.now();
    this.lastError = null;
    // A store that refused writes keeps its back-off: it will likely refuse again.
    if (this.lastRefusal === null) this.attempts = 0;
    this.fullTimeouts = 0;
    this.silentSince = null;
    // After a repeated refusal the store may refuse again: that "back" is not news.
    if (this.lastRefusal === null)
      this.log().info("cluster store back; sharing resumed", { store: this.config.url.href });
    else
      this.log().debug("cluster store reconnected after refusing writes", {
        store: this.config.url.href,
      });
  }
}

/** A Lua script with its SHA1, for EVALSHA. */
export interface Script {
  source: string;
  sha: string;
}

export function script(source: string): Script {
  return { source, sha: new Bun.CryptoHasher("sha1").update(source).digest("hex") };
}
