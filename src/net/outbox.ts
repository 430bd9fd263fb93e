/**
 * Bun's socket.write() takes what fits and DROPS the rest (bun.md: a 100 MiB write returned
 * ~3.9 MB). Every write to a socket goes through an Outbox: what the kernel did not take is
 * queued, and the producer is told to wait (a promise, or a pause of the source socket) until
 * `drain` empties the queue. That is the whole of crm's backpressure.
 */
import type { Socket } from "bun";

export class Outbox {
  private queue: Uint8Array[] = [];
  private queued = 0;
  private waiters: Array<() => void> = [];
  private listeners: Array<() => void> = [];
  private dead = false;

  constructor(private readonly socket: Socket<unknown>) {}

  /** Bytes accepted by write() that the kernel has not taken yet. */
  get backlog(): number {
    return this.queued;
  }

  get closed(): boolean {
    return this.dead;
  }

  /** Writes now what the socket takes, queues the rest; false means "wait for drain". */
  write(data: Uint8Array | string): boolean {
    if (this.dead) return false;
    const bytes = typeof data === "string" ? Buffer.from(data, "latin1") : data;
    if (bytes.byteLength === 0) return this.queued === 0;
    if (this.queued > 0) {
      this.queue.push(bytes);
      this.queued += bytes.byteLength;
      return false;
    }
    const n = Math.max(0, this.socket.write(bytes));
    if (n === bytes.byteLength) return true;
    const rest = bytes.subarray(n);
    this.queue.push(rest);
    this.queued += rest.byteLength;
    return false;
  }

  /** Call from the socket's `drain` handler. */
  flush(): void {
    while (this.queue.length > 0 && !this.dead) {
      const head = this.queue[0] as Uint8Array;
      const n = Math.max(0, this.socket.write(head));
      this.queued -= n;
      if (n < head.byteLength) {
        this.queue[0] = head.subarray(n);
        return;
      }
      this.queue.shift();
    }
    if (this.queued === 0) this.wake();
  }

  /** Resolves when everything written so far has gone to the kernel (or the socket died). */
  drained(): Promise<void> {
    if (this.queued === 0 || this.dead) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** A callback for every time the queue empties: used to resume a paused source socket. */
  onDrained(fn: () => void): void {
    this.listeners.push(fn);
  }

  offDrained(fn: () => void): void {
    this.listeners = this.listeners.filter((f) => f !== fn);
  }

  /** The socket is gone: drop the queue and release everyone waiting. */
  kill(): void {
    this.dead = true;
    this.queue = [];
    this.queued = 0;
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const fn of w) fn();
    for (const fn of this.listeners) fn();
  }
}
