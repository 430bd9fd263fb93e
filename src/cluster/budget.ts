/**
 * One store budget per request: every hook a request passes (rate, password brake, upstream
 * token, shared manifest) may wait for the store, and each has cluster.deadline; without a
 * common budget a slow store would cost one request several deadlines. The budget is the time
 * the request has spent waiting in store calls (not wall-clock: waiting for another replica's
 * upstream GET is not the store's slowness); once it reaches cluster.deadline, the rest of the
 * request's calls decide locally at once (store.ts reads it).
 *
 * It travels with the request's async context (AsyncLocalStorage), so no hook's signature
 * changes. Calls whose result the request does not wait for (writes after an answer, refunds,
 * publishes) run detached: they neither draw from nor are refused by a spent budget.
 */
import { AsyncLocalStorage } from "node:async_hooks";

export class StoreBudget {
  /** Ms this request has waited in store calls. */
  spentMs = 0;
}

const current = new AsyncLocalStorage<StoreBudget | null>();

/** Runs one request's work with a fresh budget. */
export function withStoreBudget<T>(fn: () => T): T {
  return current.run(new StoreBudget(), fn);
}

/** The budget of the request this code runs for; null outside any (timers, heartbeats, detached). */
export function storeBudget(): StoreBudget | null {
  return current.getStore() ?? null;
}

/** Runs `fn` outside any request's budget (work the request does not wait for). */
export function detachedFromBudget<T>(fn: () => T): T {
  return current.run(null, fn);
}
