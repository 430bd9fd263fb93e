/**
 * `crm client-config`: the files it writes (merged, backed up) and `--check` with the real
 * runtimes reading them — skopeo (containers/image, podman's library), containerd + ctr, and
 * dockerd — pulling from Debian's docker-registry through crm on 127.0.0.1. Every runtime gets
 * HTTPS_PROXY at a dead loopback port: the mirror on 127.0.0.1 is never proxied by Go, and a
 * fallback to a public registry dies there instead of resolving a public name.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { installFiles } from "../src/client-config/install.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { staticResolver } from "../src/net/resolver.ts";
import { deadPort, startFakeRegistry } from "./support/mirror-upstreams.ts";
import { run } from "./support/raw.ts";
import { startRegistry, type RegistryFixture } from "./support/registry.ts";
import { startContainerd, startDockerd, type RuntimeProcess } from "./support/runtimes.ts";
import { missingTools } from "./support/tools.ts";

const MAIN = join(import.meta.dir, "..", "src", "main.ts");

async function clientConfig(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return run([process.execPath, MAIN, "client-config", ...args], { env, timeoutMs: 240_000 });
}

describe("client-config files", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "crm-cc-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("docker: daemon.json is merged, not replaced, and the old one is kept as a backup", async () => {
    const dest = join(dir, "daemon.json");
    const before = {
      "log-level": "warn",
      "registry-mirrors": ["https://other.example"],
      "insecure-registries": ["10.1.1.1:5000"],
    };
    writeFileSync(dest, JSON.stringify(before));
    const r = await clientConfig([
      "docker",
      "--mirror",
      "http://10.0.0.5:8080/s3cret/",
      "--dest",
      dest,
      "--write",
    ]);
    expect(r.code).toBe(0);
    const after = JSON.parse(readFileSync(dest, "utf8")) as Record<string, unknown>;
    expect(after["log-level"]).toBe("warn");
    expect(after["registry-mirrors"]).toEqual([
      "http://10.0.0.5:8080/s3cret",
      "https://other.example",
    ]);
    // Plain http off loopback: without this Docker skips the mirror and pulls from Docker Hub.
    expect(after["insecure-registries"]).toEqual(["10.1.1.1:5000", "10.0.0.5:8080"]);
    const backup = /previous file kept as (\S+)\)/.exec(r.stdout)?.[1];
    expect(backup).toBeDefined();
    expect(JSON.parse(readFileSync(backup!, "utf8"))).toEqual(before);
    // Again: nothing changes, nothing duplicated.
    const again = await clientConfig([
      "docker",
      "--mirror",
      "http://10.0.0.5:8080/s3cret",
      "--dest",
      dest,
      "--write",
    ]);
    expect(again.stdout).toContain(`unchanged ${dest}`);
    expect(
      (JSON.parse(readFileSync(dest, "utf8")) as { "registry-mirrors": string[] })[
        "registry-mirrors"
      ],
    ).toHaveLength(2);
  });

  test("docker: a daemon.json that is not JSON is refused with what to do, and left alone", async () => {
    const dest = join(dir, "broken.json");
    writeFileSync(dest, "{ not json");
    const r = await clientConfig([
      "docker",
      "--mirror",
      "http://127.0.0.1:8080",
      "--dest",
      dest,
      "--write",
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${dest} is not valid JSON`);
    expect(r.stderr).toContain("fix it");
    expect(readFileSync(dest, "utf8")).toBe("{ not json");
  });

  test("containerd: one hosts.toml per registry, crm first, the registry as server", async () => {
    const dest = join(dir, "certs.d");
    const r = await clientConfig([
      "containerd",
      "--mirror",
      "https://crm.example.com/s3cret",
      "--registries",
      "docker.io,registry.k8s.io",
      "--dest",
      dest,
      "--write",
    ]);
    expect(r.code).toBe(0);
    expect(readdirSync(dest).sort()).toEqual(["docker.io", "registry.k8s.io"]);
    const hub = readFileSync(join(dest, "docker.io", "hosts.toml"), "utf8");
    expect(hub).toContain('server = "https://registry-1.docker.io"');
    expect(hub).toContain(
      '[host."https://crm.example.com/s3cret"]\n  capabilities = ["pull", "resolve"]',
    );
    expect(readFileSync(join(dest, "registry.k8s.io", "hosts.toml"), "utf8")).toContain(
      'server = "https://registry.k8s.io"',
    );
    expect(r.stderr).toContain(`config_path = "${dest}"`);
  });

  test("podman: running again replaces crm's block; another entry for the same prefix is refused by name", async () => {
    const dest = join(dir, "registries.conf");
    writeFileSync(dest, 'unqualified-search-registries = ["docker.io"]\n');
    expect(
      (
        await clientConfig([
          "podman",
          "--mirror",
          "http://127.0.0.1:8080",
          "--registries",
          "docker.io,quay.io",
          "--dest",
          dest,
          "--write",
        ])
      ).code,
    ).toBe(0);
    expect(
      (
        await clientConfig([
          "podman",
          "--mirror",
          "http://127.0.0.1:9090",
          "--registries",
          "docker.io",
          "--dest",
          dest,
          "--write",
        ])
      ).code,
    ).toBe(0);
    const text = readFileSync(dest, "utf8");
    expect(text.startsWith('unqualified-search-registries = ["docker.io"]\n')).toBe(true);
    expect(text.match(/\[\[registry\]\]/g)).toHaveLength(1);
    expect(text).toContain('location = "127.0.0.1:9090/docker.io"\ninsecure = true');
    expect(text).not.toContain("8080");

    const mine = join(dir, "own.conf");
    writeFileSync(mine, '[[registry]]\nprefix = "quay.io"\nlocation = "quay.io"\n');
    const r = await clientConfig([
      "podman",
      "--mirror",
      "http://127.0.0.1:8080",
      "--registries",
      "docker.io,quay.io",
      "--dest",
      mine,
      "--write",
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("already has [[registry]] entries for quay.io");
  });

  test("podman: an entry with location and no prefix (prefix defaults to location) is a clash too", async () => {
    const own =
      '[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n\n[[registry]]\nprefix = "quay.io/team"\nlocation = "quay.io"\n[[registry.mirror]]\nlocation = "docker.io"\n';
    const dest = join(dir, "location-only.conf");
    writeFileSync(dest, own);
    const r = await clientConfig([
      "podman",
      "--mirror",
      "http://127.0.0.1:8080",
      "--registries",
      "127.0.0.1:5000",
      "--dest",
      dest,
      "--write",
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("already has [[registry]] entries for 127.0.0.1:5000");
    expect(readFileSync(dest, "utf8")).toBe(own);
    // Neither a prefix'd entry's location nor a mirror's location is that entry's prefix.
    const ok = await clientConfig([
      "podman",
      "--mirror",
      "http://127.0.0.1:8080",
      "--registries",
      "docker.io,quay.io",
      "--dest",
      dest,
      "--write",
    ]);
    expect(ok.code).toBe(0);
  });

  test("--write: a symlinked destination is written through, its mode is kept, and backups in the same second never overwrite each other", () => {
    mkdirSync(join(dir, "real"), { recursive: true });
    const target = join(dir, "real", "daemon.json");
    const link = join(dir, "linked.json");
    writeFileSync(target, '{"original":true}');
    chmodSync(target, 0o600);
    symlinkSync(join("real", "daemon.json"), link);
    const now = new Date("2026-01-02T03:04:05Z");
    const first = installFiles([{ path: link, content: '{"run":1}' }], now);
    const second = installFiles([{ path: link, content: '{"run":2}' }], now);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readFileSync(target, "utf8")).toBe('{"run":2}');
    expect(statSync(target).mode & 0o777).toBe(0o600);
    expect(first[0]?.backup).toBe(`${link}.crm-backup-20260102T030405`);
    expect(second[0]?.backup).toBe(`${link}.crm-backup-20260102T030405-1`);
    expect(readFileSync(first[0]!.backup!, "utf8")).toBe('{"original":true}');
    expect(readFileSync(second[0]!.backup!, "utf8")).toBe('{"run":1}');
    // A new file gets the usual 0644.
    const fresh = join(dir, "fresh", "daemon.json");
    expect(installFiles([{ path: fresh, content: "{}" }], now)[0]).toMatchObject({
      state: "created",
      backup: null,
    });
    expect(statSync(fresh).mode & 0o777).toBe(0o644);
  });

  test("bad arguments say what to type", async () => {
    const r = await clientConfig(["docker", "--mirror", "ftp://x"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("--mirror must be an http:// or https:// URL");
    expect(
      (await clientConfig(["docker", "--mirror", "http://x", "--registries", "gcr.io"])).stderr,
    ).toContain("docker.io only");
    expect((await clientConfig(["rkt", "--mirror", "http://x"])).stderr).toContain(
      "needs a runtime: docker, containerd, podman",
    );
  });
});

const skip = missingTools("client-config with real runtimes", [
  "docker-registry",
  "skopeo",
  "containerd",
  "ctr",
  "dockerd",
  "docker",
]);

describe.skipIf(skip)("client-config --check with real runtimes", () => {
  let fx: RegistryFixture;
  let crm: TestCrm;
  /** crm without docker.io: answers 404 for it, so a runtime falls back. */
  let crmWithout: TestCrm;
  let dir: string;
  let env: Record<string, string>;
  const image = () => `docker.io/${fx.images.multiLayer.repo}:${fx.images.multiLayer.tag}`;

  beforeAll(async () => {
    fx = await startRegistry({ auth: "token" });
    dir = await mkdtemp(join(tmpdir(), "crm-cc-e2e-"));
    // skopeo tries https first on an insecure mirror; a short header timeout lets it fall back to http at once.
    // The token service listens on a port of its own: redirect and realm targets are port-checked.
    const allowed_ports = [80, 443, ...(fx.token ? [Number(new URL(fx.token.url).port)] : [])];
    crm = await startCrm(
      {
        timeouts: { header: "300ms" },
        allowed_ports,
        mirror: { registries: { "docker.io": fx.url } },
      },
      "info",
    );
    crmWithout = await startCrm(
      {
        timeouts: { header: "300ms" },
        allowed_ports,
        mirror: { default_registry: "other.test", registries: { "other.test": fx.url } },
      },
      "info",
    );
    const dead = `http://127.0.0.1:${deadPort()}`;
    writeFileSync(join(dir, "auth.json"), JSON.stringify({ auths: {} }));
    env = {
      HTTPS_PROXY: dead,
      HTTP_PROXY: dead,
      https_proxy: dead,
      http_proxy: dead,
      NO_PROXY: "127.0.0.1,localhost",
      no_proxy: "127.0.0.1,localhost",
      REGISTRY_AUTH_FILE: join(dir, "auth.json"),
    };
  }, 60_000);

  afterAll(async () => {
    await crm?.stop();
    await crmWithout?.stop();
    await fx?.stop();
    await rm(dir, { recursive: true, force: true });
  }, 30_000);

  test("podman (skopeo): the written registries.conf pulls through crm, and --check proves it", async () => {
    const dest = join(dir, "podman", "registries.conf");
    const r = await clientConfig(
      [
        "podman",
        "--mirror",
        crm.url,
        "--registries",
        "docker.io",
        "--dest",
        dest,
        "--write",
        "--check",
        "--image",
        image(),
      ],
      env,
    );
    expect(r.stdout).toContain(`PASS crm answers at ${crm.url}`);
    expect(r.stdout).toMatch(
      /PASS podman fetched docker\.io\/library\/multi:v1 through crm \(requests [0-9a-f]+-\d+/,
    );
    expect(r.code).toBe(0);
  }, 120_000);

  test("podman (skopeo): a silent fallback to the upstream is detected and named", async () => {
    // The mirror is a crm that does not mirror docker.io; the primary location is the registry
    // itself, reachable directly: skopeo succeeds, but not through crm.
    const dest = join(dir, "fallback", "registries.conf");
    expect(
      (
        await clientConfig(
          [
            "podman",
            "--mirror",
            crmWithout.url,
            "--registries",
            "docker.io",
            "--dest",
            dest,
            "--write",
          ],
          env,
        )
      ).code,
    ).toBe(0);
    writeFileSync(
      dest,
      readFileSync(dest, "utf8").replace(
        'location = "registry-1.docker.io"',
        `location = "${fx.host}"\ninsecure = true`,
      ),
    );
    const direct = await run(
      ["skopeo", "--registries-conf", dest, "inspect", "--raw", `docker://${image()}`],
      { env },
    );
    expect(direct.code).toBe(0);
    const r = await clientConfig(
      [
        "podman",
        "--mirror",
        crmWithout.url,
        "--registries",
        "docker.io",
        "--dest",
        dest,
        "--check",
        "--image",
        image(),
      ],
      env,
    );
    expect(r.code).toBe(1);
    expect(r.stdout).toContain(
      "FAIL podman fetched docker.io/library/multi:v1, but not from crm: crm answered 404",
    );
    expect(r.stdout).toContain("registry docker.io is not mirrored here");
    expect(r.stdout).toContain(`silently fell back to registry-1.docker.io`);
    expect(r.stdout).toContain("fix: ");
  }, 120_000);

  test("podman (skopeo): a manifest through crm is not enough; a blob crm cannot serve fails the check, named", async () => {
    // evil/...: the blob redirects to a host crm refuses, so every blob GET through crm is a 502.
    const reg = startFakeRegistry({ auth: { kind: "none" } });
    const own = await startCrm(
      { mirror: { default_registry: "reg.test", registries: { "reg.test": reg.url } } },
      "info",
      staticResolver({}),
    );
    try {
      const dest = join(dir, "blob", "registries.conf");
      const r = await clientConfig(
        [
          "podman",
          "--mirror",
          own.url,
          "--registries",
          "reg.test",
          "--image",
          "reg.test/evil/app:v1",
          "--dest",
          dest,
          "--write",
          "--check",
        ],
        env,
      );
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(
        /FAIL crm answered the manifest of reg\.test\/evil\/app:v1 \(requests [0-9a-f]+-\d+\), but 502 \(redirect to evil\.invalid refused for reg\.test/,
      );
      expect(r.stdout).toMatch(/for its blob sha256:[0-9a-f]{12}… \(requests [0-9a-f]+-\d+\)/);
      expect(r.stdout).toContain("fix: blob pulls through crm fail");
      // The same image from a repository whose blobs crm serves: the PASS names the blob requests.
      const good = await clientConfig(
        [
          "podman",
          "--mirror",
          own.url,
          "--registries",
          "reg.test",
          "--image",
          "reg.test/team/app:v1",
          "--dest",
          dest,
          "--check",
        ],
        env,
      );
      expect(good.stdout).toMatch(
        /PASS podman fetched reg\.test\/team\/app:v1 through crm \(requests [0-9a-f]+-\d+(, [0-9a-f]+-\d+)*, blobs [0-9a-f]+-\d+/,
      );
      expect(good.code).toBe(0);
    } finally {
      await own.stop();
      reg.stop();
    }
  }, 120_000);

  test("a URL that is not crm is named as such", async () => {
    const r = await clientConfig(
      [
        "podman",
        "--mirror",
        fx.url,
        "--registries",
        "docker.io",
        "--dest",
        join(dir, "x.conf"),
        "--check",
        "--image",
        image(),
      ],
      env,
    );
    expect(r.code).toBe(1);
    expect(r.stdout).toContain("without an X-Crm-Request-Id header: that URL is not crm");
  });

  describe("containerd", () => {
    let ctrd: RuntimeProcess;
    beforeAll(async () => {
      ctrd = await startContainerd(join(dir, "containerd"), env);
    }, 90_000);
    afterAll(async () => {
      await ctrd?.stop();
    }, 30_000);

    test("ctr pulls and unpacks through the written hosts.toml, and --check proves it went through crm", async () => {
      const dest = join(dir, "certs.d");
      const ctrEnv = {
        ...env,
        CONTAINERD_ADDRESS: ctrd.socket,
        CONTAINERD_NAMESPACE: "crm-test",
        CONTAINERD_SNAPSHOTTER: "native",
      };
      const r = await clientConfig(
        [
          "containerd",
          "--mirror",
          crm.url,
          "--registries",
          "docker.io",
          "--dest",
          dest,
          "--write",
          "--check",
          "--image",
          image(),
        ],
        ctrEnv,
      );
      expect(r.stdout).toContain(`wrote ${join(dest, "docker.io", "hosts.toml")}`);
      expect(r.stdout).toMatch(/PASS containerd fetched docker\.io\/library\/multi:v1 through crm/);
      expect(r.code).toBe(0);
      const images = await run([
        "ctr",
        "--address",
        ctrd.socket,
        "-n",
        "crm-test",
        "images",
        "ls",
        "-q",
      ]);
      expect(images.stdout).toContain(image());
      // containerd named the registry with ?ns=docker.io; crm routed on it.
      await crm.waitLog(/GET \/v2\/library\/multi\/manifests\/[^ ]*ns=docker\.io.* status=200/);
    }, 180_000);

    test("a hosts dir without crm's entry is reported as never asking crm", async () => {
      const dest = join(dir, "certs-empty.d");
      mkdirSync(dest, { recursive: true });
      const ctrEnv = {
        ...env,
        CONTAINERD_ADDRESS: ctrd.socket,
        CONTAINERD_NAMESPACE: "crm-test-2",
        CONTAINERD_SNAPSHOTTER: "native",
      };
      const r = await clientConfig(
        [
          "containerd",
          "--mirror",
          crm.url,
          "--registries",
          "docker.io",
          "--dest",
          dest,
          "--check",
          "--image",
          image(),
        ],
        ctrEnv,
      );
      expect(r.code).toBe(1);
      expect(r.stdout).toContain(
        "FAIL containerd could not fetch docker.io/library/multi:v1 and never asked crm for it",
      );
      expect(r.stdout).toContain(`config_path = "${dest}"`);
    }, 120_000);
  });

  describe("dockerd", () => {
    let dockerd: RuntimeProcess | null = null;
    afterAll(async () => {
      await dockerd?.stop();
    }, 30_000);

    test("dockerd with the written daemon.json pulls through crm, and --check proves it; without it, --check says dockerd never loaded the mirror", async () => {
      const dest = join(dir, "docker", "daemon.json");
      mkdirSync(join(dir, "docker"), { recursive: true });
      writeFileSync(dest, JSON.stringify({ "log-level": "info" }));
      // First a daemon started before the mirror was configured.
      dockerd = await startDockerd(join(dir, "dockerd"), dest, env);
      const dockerEnv = { ...env, DOCKER_HOST: `unix://${dockerd.socket}` };
      const stale = await clientConfig(
        ["docker", "--mirror", crm.url, "--dest", dest, "--write", "--check", "--image", image()],
        dockerEnv,
      );
      expect(stale.code).toBe(1);
      expect(stale.stdout).toContain(
        "FAIL dockerd has not loaded the mirror: its registry mirrors are none, so pulls go to Docker Hub",
      );
      expect(stale.stdout).toContain("systemctl reload docker");
      expect(JSON.parse(readFileSync(dest, "utf8"))).toEqual({
        "log-level": "info",
        "registry-mirrors": [crm.url],
      });

      await dockerd.stop();
      dockerd = await startDockerd(join(dir, "dockerd"), dest, env);
      const r = await clientConfig(
        ["docker", "--mirror", crm.url, "--dest", dest, "--check", "--image", image()],
        dockerEnv,
      );
      expect(r.stdout).toMatch(/PASS docker fetched docker\.io\/library\/multi:v1 through crm/);
      expect(r.code).toBe(0);
      const images = await run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], {
        env: dockerEnv,
      });
      expect(images.stdout).toContain("multi:v1");
    }, 240_000);
  });
});
