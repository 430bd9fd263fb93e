/**
 * `mirror.fanout`: whether concurrent GETs of one blob share one upstream download, and how much
 * memory that may take (a window of recent bytes per download, one budget for all windows). Its
 * own module so config.ts only hooks it in.
 */
import { parseSize, type Checker } from "../../config.ts";

export interface FanoutConfig {
  enabled: boolean;
  /** Recent bytes each shared download keeps for joiners and for readers a little behind. */
  window: number;
  /** All windows together; a download that would go over it is not shared. */
  budget: number;
}

export const DEFAULT_FANOUT: FanoutConfig = Object.freeze({ enabled: true, window: 32 * 1024 * 1024, budget: 256 * 1024 * 1024 });

const KEYS = ["enabled", "window", "budget"] as const;
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
  if (budget < window) c.fail(`${path}.budget`, o.budget ?? budget, `must be at least the window (${window} bytes): no download could be shared`);
  return Object.freeze({ enabled, window, budget });
}
