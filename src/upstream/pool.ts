/**
 * Idle keep-alive connections, per (scheme, host, port, resolved IP, TLS options): a socket is
 * reused only for the exact address the SSRF guard approved and the exact TLS trust it was
 * verified with. Bounded per origin and in total (the oldest idle socket goes first), closed
 * after an idle timeout, and dropped as soon as the upstream closes it or sends anything
 * unasked (bytes on an idle HTTP/1.1 connection are a broken upstream).
 */
import { LinkedList, type Linked } from "../linked-list.ts";
import type { UpstreamConn } from "./connect.ts";

export interface PoolLimits {
  maxIdlePerOrigin: number;
  maxIdleTotal: number;
  idleTimeoutMs: number;
}

export const DEFAULT_POOL_LIMITS: PoolLimits = {
  maxIdlePerOrigin: 64,
  maxIdleTotal: 512,
  idleTimeoutMs: 30_000,
};

interface Idle extends Linked<Idle> {
  conn: UpstreamConn;
  timer: Timer;
}

export class UpstreamPool {
  /** Per key, oldest first; Map order over keys is not age order, the list below is. */
  private readonly idle = new Map<string, Idle[]>();
  /** Every idle entry by age, oldest first: a linked list, not a Set (linked-list.ts says why). */
  private readonly byAge = new LinkedList<Idle>();

  constructor(readonly limits: PoolLimits = DEFAULT_POOL_LIMITS) {}

  get idleCount(): number {
    return this.byAge.size;
  }

  idleFor(key: string): number {
    return this.idle.get(key)?.length ?? 0;
  }

  /** The most recently used live idle connection for `key`, or null. */
  take(key: string): UpstreamConn | null {
    const list = this.idle.get(key);
    while (list && list.length > 0) {
      const entry = list.pop() as Idle;
      this.forget(key, entry, list);
      if (!entry.conn.closed) {
        entry.conn.socket.ref();
        return entry.conn;
      }
    }
    return null;
  }

  /** Keeps `conn` for reuse, or closes it when the limits say no. */
  put(conn: UpstreamConn): void {
    if (conn.closed) return;
    if (this.limits.maxIdlePerOrigin <= 0 || this.limits.maxIdleTotal <= 0) return conn.destroy();
    const key = conn.key;
    let list = this.idle.get(key);
    if (!list) this.idle.set(key, (list = []));
    if (list.length >= this.limits.maxIdlePerOrigin) this.drop(key, list[0] as Idle);
    const oldest = this.byAge.first;
    if (this.byAge.size >= this.limits.maxIdleTotal && oldest) this.drop(oldest.conn.key, oldest);
    const entry: Idle = {
      conn,
      timer: setTimeout(() => this.drop(key, entry), this.limits.idleTimeoutMs),
      prev: null,
      next: null,
    };
    // An idle connection keeps no process alive (`crm doctor` ends when its checks do).
    entry.timer.unref();
    conn.socket.unref();
    list = this.idle.get(key) ?? [];
    this.idle.set(key, list);
    list.push(entry);
    this.byAge.push(entry);
    conn.listener = {
      data: () => this.drop(key, entry),
      close: () => this.drop(key, entry, false),
    };
  }

  /** Closes every idle connection (shutdown, tests). */
  close(): void {
    for (let e = this.byAge.first; e !== null; e = this.byAge.first) this.drop(e.conn.key, e);
  }

  private drop(key: string, entry: Idle, destroy = true): void {
    const list = this.idle.get(key);
    if (list) {
      const i = list.indexOf(entry);
      if (i >= 0) list.splice(i, 1);
    }
    this.forget(key, entry, list);
    entry.conn.listener = null;
    if (destroy) entry.conn.destroy();
  }

  private forget(key: string, entry: Idle, list: Idle[] | undefined): void {
    clearTimeout(entry.timer);
    this.byAge.remove(entry);
    if (list && list.length === 0) this.idle.delete(key);
  }
}
