/**
 * The live status page: the activity board and snapshot rules in isolation, the page's access
 * and secrecy rules over HTTP, and the page itself in a real browser (Debian's chromium driven by
 * playwright-core): an image pulled through crm by skopeo appears in its tables, a request in
 * flight appears while it runs, the sparkline is drawn. The screenshot is kept at
 * test-artifacts/status-page.png (a CI artefact).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser } from "playwright-core";
import { ActivityBoard, BUCKETS, BUCKET_MS, type PullFields } from "../src/status/activity.ts";
import { describeTarget, scrubUrls } from "../src/status/live/snapshot.ts";
import type { StatusSnapshot } from "../src/status/live/snapshot.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { deadPort, startFakeRegistry, type FakeRegistry } from "./support/mirror-upstreams.ts";
import { runSkopeo, startRegistry, type RegistryFixture } from "./support/registry.ts";
import { missingTools } from "./support/tools.ts";

export const SCREENSHOT = join(import.meta.dir, "..", "test-artifacts", "status-page.png");

describe("activity board and snapshot", () => {
  test("bytes land in 10 s buckets of their registry; the ring keeps 15 minutes; an end counts the request", () => {
    let now = 1_000_000 * BUCKET_MS;
    const board = new ActivityBoard(() => now);
    let sent = 0;
    let pull: PullFields | null = null;
    const entry = board.begin({
      id: "a-1",
      client: "10.0.0.1",
      method: "GET",
      target: () => "/v2/library/x/blobs/sha256:00",
      kind: () => "mirror",
      pull: () => pull,
      bytes: () => sent,
    });
    pull = { registry: "docker.io", repo: "library/x", ref: "sha256:00" };
    sent = 5000;
    now += 2000;
    const [active] = board.activeView();
    expect(active).toMatchObject({ registry: "docker.io", bytes: 5000, rate: 2500 });
    now += BUCKET_MS;
    sent = 8000;
    board.end(entry, 200, 9000);
    const [reg] = board.registries();
    expect(reg).toMatchObject({ name: "docker.io", requests: 1, errors: 0, bytes: 9000 });
    expect(reg!.spark).toHaveLength(BUCKETS);
    expect(reg!.spark.slice(-2)).toEqual([5000, 4000]);
    expect(board.size).toBe(0);
    // 15 minutes later the ring has rolled past every bucket.
    now += BUCKETS * BUCKET_MS;
    expect(board.registries()[0]!.spark.every((b) => b === 0)).toBe(true);
  });

  test("targets are described without upstream URLs or queries", () => {
    expect(
      describeTarget("forward", "http://deb.example.org:8080/pool/x.deb?sig=1", null, null),
    ).toBe("deb.example.org:8080");
    expect(describeTarget("mirror", "/v2/library/a/manifests/v1", "library/a", "v1")).toBe(
      "library/a:v1",
    );
    expect(
      describeTarget(
        "mirror",
        "/v2/library/a/blobs/sha256:" + "ab".repeat(32),
        "library/a",
        "sha256:" + "ab".repeat(32),
      ),
    ).toBe("library/a blob sha256:abababababab…");
    expect(scrubUrls("redirect to https://user:pw@cdn.example.com/p?sig=s refused")).toBe(
      "redirect to cdn.example.com refused",
    );
  });
});

describe("status endpoints over HTTP", () => {
  let reg: FakeRegistry;
  beforeAll(() => {
    reg = startFakeRegistry({ auth: { kind: "none" } });
  });
  afterAll(() => reg.stop());

  test("with access.users and mirror_auth, /, /status.json and /status.js ask for the mirror's credentials", async () => {
    const hash = await Bun.password.hash("pw-for-status", { algorithm: "argon2id" });
    const crm = await startCrm(
      { access: { users: { alice: hash } }, mirror: { registries: { "docker.io": reg.url } } },
      "warn",
    );
    try {
      for (const p of ["/", "/status.json", "/status.js"]) {
        const res = await fetch(crm.url + p);
        expect(res.status).toBe(401);
        expect(res.headers.get("www-authenticate")).toBe('Basic realm="crm"');
      }
      const ok = await fetch(crm.url + "/status.json", {
        headers: { authorization: "Basic " + btoa("alice:pw-for-status") },
      });
      expect(ok.status).toBe(200);
    } finally {
      await crm.stop();
    }
  });

  test("no secret and no upstream URL: not the path prefix, not a registry password, not the upstream", async () => {
    const crm = await startCrm(
      {
        mirror: {
          path_prefix: "/hidden-path-77",
          registries: {
            "docker.io": { upstream: reg.url, username: "robot", password: "robot-pw-77" },
          },
        },
      },
      "warn",
    );
    try {
      await (await fetch(`${crm.url}/hidden-path-77/v2/library/app/manifests/v1`)).text();
      await (await fetch(`${crm.url}/hidden-path-77/v2/other.test/x/manifests/v1`)).text();
      const json = await (await fetch(`${crm.url}/status.json`)).text();
      const page = await fetch(`${crm.url}/`);
      const html = await page.text();
      const snap = JSON.parse(json) as StatusSnapshot;
      expect(snap.recent.map((r) => r.what)).toContain("library/app:v1");
      expect(snap.errors[0]).toMatchObject({
        status: 404,
        hint: "add the registry to mirror.registries (crm doctor checks it end to end)",
      });
      expect(snap.errors[0]!.message).toContain("registry other.test is not mirrored here");
      // The mirror tracks both: this upstream reports no quota, and the one manifest pulled is cached.
      expect(snap.quota).toEqual([]);
      expect(snap.manifestCache).toMatchObject({ entries: 1, misses: 1 });
      expect(snap.certificate).toEqual({ mode: "none" });
      for (const text of [json, html]) {
        for (const secret of ["hidden-path-77", "robot-pw-77", reg.url, `127.0.0.1:${reg.port}`])
          expect(text).not.toContain(secret);
      }
      // Static parts without JavaScript: state and set-up are in the HTML itself.
      expect(html).toContain("no TLS on this listener");
      expect(html).toContain("no upstream has reported a quota yet");
      expect(html).toMatch(/1 manifest, \d+ bytes; 0 hits, 1 miss/);
      expect(html).toContain("registry-mirrors");
      expect(html).toContain("<code>docker.io</code>");
      // The only script is crm's own file; the CSP forbids any inline one.
      expect(html.match(/<script/g)).toEqual(["<script"]);
      expect(html).toContain('<script src="status.js" defer></script>');
      expect(page.headers.get("content-security-policy")).toContain("script-src 'self'");
      const js = await fetch(`${crm.url}/status.js`);
      expect(js.headers.get("content-type")).toBe("text/javascript; charset=utf-8");
      expect(await js.text()).toContain('fetch("status.json"');
    } finally {
      await crm.stop();
    }
  });
});

const skip = missingTools("status page in a browser", ["docker-registry", "skopeo", "chromium"]);

describe.skipIf(skip)("status page in Chromium", () => {
  let fx: RegistryFixture;
  let slowReg: FakeRegistry;
  let crm: TestCrm;
  let browser: Browser;

  beforeAll(async () => {
    fx = await startRegistry({ auth: "token" });
    slowReg = startFakeRegistry({ auth: { kind: "none" }, slowMs: 4000 });
    crm = await startCrm(
      {
        timeouts: { header: "300ms" },
        allowed_ports: [80, 443, ...(fx.token ? [Number(new URL(fx.token.url).port)] : [])],
        mirror: {
          default_registry: "reg.test",
          registries: { "reg.test": fx.url, "slow.test": slowReg.url },
        },
      },
      "warn",
    );
    browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      // Loopback only: every other name fails to resolve inside the browser.
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
      ],
    });
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await crm?.stop();
    slowReg?.stop();
    await fx?.stop();
  }, 30_000);

  test("an image pulled through crm appears on the page, a request in flight shows while it runs, the sparkline is drawn", async () => {
    const conf = join(fx.dir, "status-registries.conf");
    writeFileSync(
      conf,
      [
        "[[registry]]",
        'prefix = "reg.test"',
        `location = "127.0.0.1:${deadPort()}"`,
        "insecure = true",
        "[[registry.mirror]]",
        `location = "127.0.0.1:${crm.port}/reg.test"`,
        "insecure = true",
        "",
      ].join("\n"),
    );
    const img = fx.images.multiLayer;
    await runSkopeo(fx, [
      "--registries-conf",
      conf,
      "copy",
      "--quiet",
      `docker://reg.test/${img.repo}:${img.tag}`,
      `dir:${join(fx.dir, "status-out")}`,
    ]);

    const page = await browser.newPage({ viewport: { width: 1280, height: 1400 } });
    await page.goto(`${crm.url}/`);
    await page.locator("#live", { hasText: /^live, updated/ }).waitFor({ timeout: 10_000 });
    const recent = await page.textContent("#recent");
    expect(recent).toContain(`reg.test GET ${img.repo}:${img.tag}`);
    expect(recent).toContain(`${img.repo} blob sha256:`);
    const regRow = page.locator("#registries tr", { hasText: "reg.test" });
    expect(await regRow.locator("svg polyline").count()).toBe(1);
    const points = (await regRow.locator("svg polyline").getAttribute("points")) ?? "";
    expect(points.split(" ")).toHaveLength(90);
    expect(await page.textContent("#certificate")).toContain("no TLS on this listener");

    // A manifest request the upstream answers only after 4 s: it is shown in flight, then done.
    const slow = fetch(`${crm.url}/v2/slow.test/slow/app/manifests/v1`).then((r) => r.text());
    await page.locator("#active td", { hasText: "slow/app:v1" }).waitFor({ timeout: 10_000 });
    expect(await page.textContent("#active")).toContain("slow.test");
    mkdirSync(join(SCREENSHOT, ".."), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    await slow;
    await page
      .locator("#active td", { hasText: "slow/app:v1" })
      .waitFor({ state: "detached", timeout: 10_000 });
    expect(await page.textContent("#recent")).toContain("slow.test GET slow/app:v1");
    const shot = new Uint8Array(await Bun.file(SCREENSHOT).arrayBuffer());
    expect([...shot.slice(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    await page.close();
  }, 90_000);
});
