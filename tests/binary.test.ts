/** The single binary: built for linux-x64, it proxies, serves /healthz and exits 0 on SIGTERM. */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildTarget } from "../scripts/build.ts";
import { startOrigin } from "./support/origins.ts";
import { run } from "./support/raw.ts";

const dir = mkdtempSync(join(tmpdir(), "crm-bin-"));
const binary = join(dir, "crm-linux-x64");
let origin: ReturnType<typeof startOrigin>;

beforeAll(async () => {
  origin = startOrigin();
  await buildTarget("bun-linux-x64", binary);
}, 120_000);

afterAll(() => {
  origin.stop(true);
  rmSync(dir, { recursive: true, force: true });
});

/** Reads stderr until the "listening" line and returns the bound port. */
async function waitListening(stderr: ReadableStream<Uint8Array>, seen: string[]): Promise<number> {
  const reader = stderr.getReader();
  const dec = new TextDecoder();
  let buf = "";
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += dec.decode(value);
    const m = /listening address=127\.0\.0\.1:(\d+)/.exec(buf);
    if (m) {
      seen.push(buf);
      // Keep draining so the child never blocks on a full pipe.
      void (async () => {
        for (;;) {
          const r = await reader.read();
          if (r.done) return;
          seen.push(dec.decode(r.value));
        }
      })();
      return Number(m[1]);
    }
  }
  throw new Error(`binary did not report listening; stderr:\n${buf}`);
}

test("binary: version, check, proxy, healthz, SIGTERM → exit 0", async () => {
  const version = await run([binary, "--version"]);
  expect(version.code).toBe(0);
  expect(version.stdout).toMatch(/^crm \d+\.\d+\.\d+/);

  const cfg = join(dir, "config.yaml");
  writeFileSync(
    cfg,
    `listen: "127.0.0.1:0"\nallow_private_networks: true\nallowed_hosts: ["127.0.0.1"]\nallowed_ports: [${origin.port}]\n`,
  );
  const check = await run([binary, "-t", "-c", cfg]);
  expect(check.code).toBe(0);
  expect(check.stdout).toContain("configuration OK");

  const bad = join(dir, "bad.yaml");
  writeFileSync(bad, "log_level: loud\n");
  const badCheck = await run([binary, "-t", "-config", bad]);
  expect(badCheck.code).toBe(1);
  expect(badCheck.stderr).toContain('log_level: "loud" must be one of debug, info, warn, error');

  const none = await run([binary], { cwd: dir + "/.." });
  expect(none.code).toBe(1);
  expect(none.stderr).toContain("no config file found");

  const p = Bun.spawn([binary, "-config", cfg], { stdout: "ignore", stderr: "pipe" });
  const logs: string[] = [];
  try {
    const port = await waitListening(p.stderr, logs);
    const proxied = await run([
      "curl",
      "-sS",
      "--noproxy",
      "",
      "-x",
      `http://127.0.0.1:${port}`,
      `http://127.0.0.1:${origin.port}/through-binary`,
    ]);
    expect(proxied.stdout).toBe("origin GET /through-binary");
    const health = await run(["curl", "-sS", "--noproxy", "*", `http://127.0.0.1:${port}/healthz`]);
    expect(health.stdout).toBe("ok\n");
    p.kill("SIGTERM");
    expect(await p.exited).toBe(0);
    expect(logs.join("")).toContain("SIGTERM received");
  } finally {
    p.kill("SIGKILL");
  }
}, 60_000);
