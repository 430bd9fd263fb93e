/**
 * Image rules and the request rate with real clients: skopeo (containers/image) pulling through
 * crm from Debian's docker-registry, and curl. A refused pull is OCI DENIED whose message names
 * the rule (and the operator's deny_message), for manifests, blobs, tags/list and referrers
 * alike; a rate-limited client gets TOOMANYREQUESTS with Retry-After. Rules reload on SIGHUP.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { buildConfig } from "../src/config/load.ts";
import { globToRegExp, RuleSet } from "../src/mirror/rules.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { deadPort } from "./support/mirror-upstreams.ts";
import { run } from "./support/raw.ts";
import { runSkopeo, startRegistry, type RegistryFixture } from "./support/registry.ts";
import { missingTools } from "./support/tools.ts";

describe("glob patterns", () => {
  test.each([
    ["library/*", "library/nginx", true],
    ["library/*", "library/a/b", false],
    ["library/*", "bitnami/nginx", false],
    ["bitnami/**", "bitnami/nginx", true],
    ["bitnami/**", "bitnami/charts/redis", true],
    ["bitnami/**", "bitnami", false],
    ["*/redis", "library/redis", true],
    ["*/redis", "a/b/redis", false],
    ["**/redis", "a/b/redis", true],
    ["team/app.v1", "team/appxv1", false],
  ])("%p on %p → %p", (pattern, name, hit) => {
    expect(globToRegExp(pattern).test(name)).toBe(hit);
  });

  test("deny wins over allow; an allow list admits only what it names", () => {
    const r = new RuleSet(
      { allow: ["library/*"], deny: ["library/redis"], denyMessage: null },
      "mirror.rules",
    );
    expect(r.check("library/nginx")).toBeNull();
    expect(r.check("library/redis")?.rule).toBe('mirror.rules.deny[0] "library/redis"');
    expect(r.check("bitnami/redis")?.rule).toBe("mirror.rules.allow");
  });

  test("bad patterns and keys are config errors naming the path", () => {
    expect(() => buildConfig({ mirror: { rules: { deny: ["Library/*"] } } }, "t")).toThrow(
      /mirror\.rules\.deny\[0\]: "Library\/\*" must be a repository pattern/,
    );
    expect(() =>
      buildConfig(
        {
          mirror: {
            registries: {
              "docker.io": {
                upstream: "https://registry-1.docker.io",
                rules: { allow: "library/*" },
              },
            },
          },
        },
        "t",
      ),
    ).toThrow(/mirror\.registries\.docker\.io\.rules\.allow: "library\/\*" must be a list/);
  });
});

const skipE2E = missingTools("image rules and rate limit with skopeo", [
  "docker-registry",
  "skopeo",
  "curl",
]);

describe.skipIf(skipE2E)("rules and rate limit with skopeo and curl", () => {
  let fx: RegistryFixture;
  let crm: TestCrm;
  let conf: string;
  const DENY_MESSAGE = "team images are not mirrored here, ask ops";
  const rawConfig = (rules: Record<string, unknown> | undefined) => ({
    timeouts: { header: "300ms" },
    mirror: {
      default_registry: "reg.test",
      registries: { "reg.test": fx.url },
      ...(rules ? { rules } : {}),
    },
  });

  beforeAll(async () => {
    fx = await startRegistry({ auth: "none" });
    crm = await startCrm(
      rawConfig({
        allow: ["library/*", "team/**"],
        deny: ["team/multiarch"],
        deny_message: DENY_MESSAGE,
      }),
      "info",
    );
    conf = await mirrorConf("rules-registries.conf", crm.port);
  }, 60_000);

  afterAll(async () => {
    await crm?.stop();
    await fx?.stop();
  }, 20_000);

  /** A registries.conf whose primary is a dead port: a pull can only succeed through crm. */
  const mirrorConf = async (name: string, crmPort: number): Promise<string> => {
    const file = join(fx.dir, name);
    const lines = [
      "unqualified-search-registries = []",
      "[[registry]]",
      'prefix = "reg.test"',
      `location = "127.0.0.1:${deadPort()}"`,
      "insecure = true",
    ];
    await writeFile(
      file,
      [
        ...lines,
        "[[registry.mirror]]",
        `location = "127.0.0.1:${crmPort}/reg.test"`,
        "insecure = true",
        "",
      ].join("\n"),
    );
    return file;
  };
  const skopeo = (args: string[]) => runSkopeo(fx, ["--registries-conf", conf, ...args]);
  const skopeoFails = async (args: string[]): Promise<string> => {
    try {
      await skopeo(args);
    } catch (e) {
      return (e as Error).message;
    }
    throw new Error(`skopeo ${args.join(" ")} succeeded`);
  };

  test("skopeo: an allowed image is pulled; a denied one fails with the rule's message", async () => {
    const ok = fx.images.multiLayer;
    await skopeo([
      "copy",
      "--quiet",
      `docker://reg.test/${ok.repo}:${ok.tag}`,
      `dir:${join(fx.dir, "rules-ok")}`,
    ]);
    const denied = fx.images.index;
    const msg = await skopeoFails([
      "inspect",
      "--raw",
      `docker://reg.test/${denied.repo}:${denied.tag}`,
    ]);
    expect(msg).toContain(DENY_MESSAGE);
    expect(msg).toContain("mirror.rules.deny[0]");
    expect(msg).toContain("team/multiarch");
    expect(msg.toLowerCase()).toContain("denied");
  }, 60_000);

  test("curl: manifests, blobs, tags/list and referrers of a denied repository are all OCI DENIED", async () => {
    const img = fx.images.index;
    const digest = img.children[0]!.digest;
    for (const path of [
      `manifests/${img.tag}`,
      `manifests/${img.digest}`,
      `blobs/${digest}`,
      "tags/list",
      `referrers/${img.digest}`,
    ]) {
      const r = await run([
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "-i",
        `${crm.url}/v2/reg.test/${img.repo}/${path}`,
      ]);
      expect(r.stdout).toMatch(/^HTTP\/1\.1 403/);
      const body = JSON.parse(r.stdout.slice(r.stdout.indexOf("\r\n\r\n") + 4)) as {
        errors: Array<{ code: string; message: string; detail: { rule: string } }>;
      };
      expect(body.errors[0]?.code).toBe("DENIED");
      expect(body.errors[0]?.message).toContain(DENY_MESSAGE);
      expect(body.errors[0]?.detail.rule).toBe('mirror.rules.deny[0] "team/multiarch"');
    }
    // Not named by the allow list at all.
    const other = await run([
      "curl",
      "-sS",
      "--noproxy",
      "*",
      `${crm.url}/v2/reg.test/other/thing/manifests/v1`,
    ]);
    expect(other.stdout).toContain('"code":"DENIED"');
    expect(other.stdout).toContain("is not in mirror.rules.allow");
  });

  test("rules reload on SIGHUP like the rest", async () => {
    const img = fx.images.index;
    await crm.server.reload(
      buildConfig(
        { listen: "127.0.0.1:0", allow_private_networks: true, ...rawConfig(undefined) },
        "test.yaml",
      ).config,
    );
    try {
      await skopeo(["inspect", "--raw", `docker://reg.test/${img.repo}:${img.tag}`]);
    } finally {
      await crm.server.reload(
        buildConfig(
          {
            listen: "127.0.0.1:0",
            allow_private_networks: true,
            ...rawConfig({ deny: ["team/**"] }),
          },
          "test.yaml",
        ).config,
      );
    }
    const msg = await skopeoFails(["inspect", "--raw", `docker://reg.test/${img.repo}:${img.tag}`]);
    expect(msg).toContain("mirror.rules.deny[0]");
    expect(msg).toContain("team/**");
  }, 60_000);

  test("rate limit: curl is told TOOMANYREQUESTS with Retry-After; skopeo waits that long and succeeds", async () => {
    const limited = await startCrm(
      { ...rawConfig(undefined), limits: { requests_per_second: 0.5, burst: 2 } },
      "info",
    );
    try {
      const img = fx.images.multiLayer;
      const url = `${limited.url}/v2/reg.test/${img.repo}/manifests/${img.tag}`;
      const codes: string[] = [];
      for (let i = 0; i < 3; i++)
        codes.push(
          (
            await run([
              "curl",
              "-sS",
              "--noproxy",
              "*",
              "-o",
              "/dev/null",
              "-w",
              "%{http_code}",
              url,
            ])
          ).stdout,
        );
      expect(codes).toEqual(["200", "200", "429"]);
      const r = await run(["curl", "-sS", "--noproxy", "*", "-i", url]);
      expect(r.stdout).toMatch(/^HTTP\/1\.1 429/);
      expect(r.stdout).toMatch(/retry-after: \d+/i);
      expect(r.stdout).toContain('"code":"TOOMANYREQUESTS"');

      const limitedConf = await mirrorConf("limited-registries.conf", limited.port);
      // Let the bucket fill again, then pull: /v2/ and the manifest take the burst, and the rest
      // is refused until the client honours Retry-After.
      await Bun.sleep(4000);
      const before = limited.logs.length;
      const out = await runSkopeo(fx, [
        "--registries-conf",
        limitedConf,
        "copy",
        "--quiet",
        `docker://reg.test/${img.repo}:${img.tag}`,
        `dir:${join(fx.dir, "limited-out")}`,
      ]);
      expect(out.stderr).not.toContain("rror");
      const lines = limited.logs
        .slice(before)
        .filter((l) => l.includes(`/v2/reg.test/${img.repo}/`));
      expect(lines.some((l) => / status=429 /.test(l))).toBe(true);
      expect(lines.some((l) => /blobs\/.* status=200 /.test(l))).toBe(true);
    } finally {
      await limited.stop();
    }
  }, 60_000);
});
