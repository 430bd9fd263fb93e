/** `mirror.fanout` (src/mirror/fanout/config.ts) and the Range forms fan-out shares (serve.ts). */
import { describe, expect, test } from "bun:test";
import { buildConfig } from "../src/config/load.ts";
import { ConfigErrors } from "../src/errors.ts";
import { DEFAULT_FANOUT } from "../src/mirror/fanout/config.ts";
import { parseRange } from "../src/mirror/fanout/serve.ts";

function errorsOf(fanout: unknown): string[] {
  try {
    buildConfig({ mirror: { fanout } }, "t.yaml");
    return [];
  } catch (e) {
    if (e instanceof ConfigErrors) return e.errors.map((x) => x.message);
    throw e;
  }
}

describe("mirror.fanout", () => {
  test("defaults: on, a 32 MiB window, a 256 MiB budget, 1 s of lag grace", () => {
    expect(buildConfig({}, "t.yaml").config.mirror.fanout).toEqual(DEFAULT_FANOUT);
    expect(DEFAULT_FANOUT).toEqual({
      enabled: true,
      window: 32 * 1024 * 1024,
      budget: 256 * 1024 * 1024,
      lagGraceMs: 1000,
    });
  });

  test("sizes and enabled are read", () => {
    expect(
      buildConfig(
        {
          mirror: {
            fanout: { enabled: false, window: "8MiB", budget: "1GiB", lag_grace: "250ms" },
          },
        },
        "t.yaml",
      ).config.mirror.fanout,
    ).toEqual({ enabled: false, window: 8 * 1024 * 1024, budget: 1024 ** 3, lagGraceMs: 250 });
    expect(
      buildConfig({ mirror: { fanout: { lag_grace: 0 } } }, "t.yaml").config.mirror.fanout
        .lagGraceMs,
    ).toBe(0);
  });

  test("an unknown key names the nearest known one", () => {
    const errs = errorsOf({ windw: "8MiB" });
    expect(errs.join("\n")).toContain("mirror.fanout.windw");
    expect(errs.join("\n")).toContain("did you mean mirror.fanout.window?");
  });

  test("bad values are errors with their key path", () => {
    expect(errorsOf({ enabled: "yes" }).join("\n")).toContain("mirror.fanout.enabled");
    expect(errorsOf({ window: "lots" }).join("\n")).toContain("mirror.fanout.window");
    expect(errorsOf({ window: 10 }).join("\n")).toContain("at least 64KiB");
    expect(errorsOf({ window: "64MiB", budget: "32MiB" }).join("\n")).toContain(
      "mirror.fanout.budget",
    );
    expect(errorsOf("on").join("\n")).toContain("mirror.fanout");
    expect(errorsOf({ lag_grace: "soon" }).join("\n")).toContain("mirror.fanout.lag_grace");
    expect(errorsOf({ lag_grace: "1m" }).join("\n")).toContain("at most 30s");
  });
});

describe("Range forms a shared download may serve", () => {
  test("one bytes= range: from-to, from-, suffix", () => {
    expect(parseRange("bytes=0-99")).toEqual({ from: 0, to: 99 });
    expect(parseRange("bytes=100-")).toEqual({ from: 100, to: null });
    expect(parseRange("bytes=-500")).toEqual({ suffix: 500 });
  });

  test("anything else is answered by the client's own request", () => {
    for (const v of [
      "bytes=0-1,5-6",
      "items=0-1",
      "bytes=5-1",
      "bytes=-",
      "bytes=-0",
      "bytes=abc",
      `bytes=${"9".repeat(20)}-`,
    ])
      expect(parseRange(v)).toBe("unsupported");
  });
});
