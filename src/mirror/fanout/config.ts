/**
 * `mirror.fanout`: whether concurrent GETs of one blob share one upstream download, and how much
 * memory that may take (a window of recent bytes per download, one budget for all windows). Its
 * own module so config.ts only hooks it in.
 */
import { parseSize, type Checker } from "../../config/checker.ts";

export interface FanoutConfig {
  enabled: boolean;
  /** Recent bytes each shared download keeps for joiners and for readers a little behind. */
  window: number;
  /** All windows together; a download that would go over it is not shared. */
  budget: number;
  /**
   * How long, in total, one reader about to fall out of the window may hold the shared download
   * back (ms) before it is detached; 0 detaches at once. Absorbs a client's short stalls (CPU,
   * network) that would otherwise cost a download of its own.
   */
  lagGraceMs: number;
}

export const DEFAULT_FANOUT: FanoutConfig = Object.freeze({
  enabled: true,
  window: 32 * 1024 * 1024,
  budget: 256 * 1024 * 1024,
  lagGraceMs: 1000,
});

const KEYS = ["enabled", "window", "budget", "lag_grace"] as const;
/** A reader may not hold every other one back for long: a stalled client is not a slow network. */
const MAX_LAG_GRACE_MS = 30_000;
/** Below this a window holds less than a few socket reads: joiners would rarely find byte 0. */
const MIN_WINDOW = 64 * 1024;

export function buildFanout(c: Checker, raw: unknown, path = "mirror.fanout"): FanoutConfig {
  const o = c.object(path, raw, KEYS);
  if (o === null) return DEFAULT_FANOUT;
  const enabled = c.bool(`${path}.enabled`, o.enabled, DEFAULT_FANOUT.enabled);
  const size = (key: "window" | "budget", dflt: number): number => {
    const v = o[key];
    if (v === undefined || v === null) return dflt;
    const n = parseSize(v);
    if (typeof n === "string") {
      c.fail(`${path}.${key}`, v, n);
      return dflt;
    }
    if (n < MIN_WINDOW) {
      c.fail(`${path}.${key}`, v, `must be at least ${MIN_WINDOW / 1024}KiB`);
      return dflt;
    }
    return n;
  };
  const window = size("window", DEFAULT_FANOUT.window);
  const budget = size("budget", DEFAULT_FANOUT.budget);
  if (budget < window)
    c.fail(
      `${path}.budget`,
      o.budget ?? budget,
      `must be at least the window (${window} bytes): no download could be shared`,
    );
  let lagGraceMs = c.duration(`${path}.lag_grace`, o.lag_grace, DEFAULT_FANOUT.lagGraceMs);
  if (lagGraceMs > MAX_LAG_GRACE_MS) {
    c.fail(
      `${path}.lag_grace`,
      o.lag_grace,
      `must be at most ${MAX_LAG_GRACE_MS / 1000}s: one slow client would hold every other one back`,
    );
    lagGraceMs = DEFAULT_FANOUT.lagGraceMs;
  }
  return Object.freeze({ enabled, window, budget, lagGraceMs });
}
