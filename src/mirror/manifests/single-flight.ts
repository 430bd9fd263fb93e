/**
 * Concurrent identical requests share one upstream request: 50 nodes starting the same image
 * at once cost one. The first caller for a key runs the work; callers arriving while it runs get
 * its result (or its error). The work is cancelled only when every caller waiting for it has
 * gone (their signals aborted): one client leaving must not fail the others, and nobody left
 * means nobody to pay for. A cancelled flight is never joined: its outcome is an abort. Nothing is kept after it settles: what outlives a flight is the
 * manifest cache's business.
 */
import { MirrorError } from "../errors.ts";

interface Flight<T> {
  promise: Promise<T>;
  waiting: number;
  abort: AbortController;
}

export class SingleFlight<T> {
  private readonly running = new Map<string, Flight<T>>();

  get size(): number {
    return this.running.size;
  }

  /** `leader` is true for the caller whose `work` ran. `signal` is the caller's own. */
  async run(
    key: string,
    signal: AbortSignal,
    work: (signal: AbortSignal) => Promise<T>,
  ): Promise<{ value: T; leader: boolean }> {
    // A caller already gone starts nothing and joins nothing (its request would still go
    // upstream: a token fetch ignores the abort, and for Docker Hub a manifest GET is a pull).
    if (signal.aborted) throw new MirrorError(499, "UNKNOWN", "client went away");
    let flight = this.running.get(key);
    // Every waiter of that one left and it was cancelled; its work may still run (a token fetch
    // ignores the abort), but its outcome is an abort nobody may be handed: start afresh.
    if (flight !== undefined && flight.abort.signal.aborted) {
      this.running.delete(key);
      flight = undefined;
    }
    const leader = flight === undefined;
    if (!flight) {
      const abort = new AbortController();
      const made: Flight<T> = { promise: work(abort.signal), waiting: 0, abort };
      this.running.set(key, made);
      // Removed when settled, before any waiter resumes: a later caller starts afresh or hits the cache.
      void made.promise.then(
        () => this.running.get(key) === made && this.running.delete(key),
        () => this.running.get(key) === made && this.running.delete(key),
      );
      flight = made;
    }
    const f = flight;
    f.waiting++;
    let onAbort = (): void => {};
    const left = new Promise<never>((_, reject) => {
      onAbort = () => {
        reject(new MirrorError(499, "UNKNOWN", "client went away"));
        if (--f.waiting === 0) {
          f.abort.abort();
          // Not joinable from now on (see above); a later caller starts its own flight.
          if (this.running.get(key) === f) this.running.delete(key);
        }
      };
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    });
    left.catch(() => {});
    try {
      return { value: await Promise.race([f.promise, left]), leader };
    } finally {
      signal.removeEventListener("abort", onAbort);
      if (!signal.aborted) f.waiting--;
    }
  }
}
