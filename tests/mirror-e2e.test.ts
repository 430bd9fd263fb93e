/**
 * The mirror with real parts on both sides: Debian's docker-registry (distribution 2.8) behind a
 * real token service as the upstream (tests/support/registry.ts), skopeo as a containers/image
 * client using crm as a registries.conf mirror, and curl speaking containerd's `?ns=` dialect.
 *
 * In CI a missing tool fails the run and says what to install (tests/support/tools.ts).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { deadPort } from "./support/mirror-upstreams.ts";
import { run } from "./support/raw.ts";
import { missingTools } from "./support/tools.ts";
import {
  MANIFEST_ACCEPT,
  registryFetch,
  runSkopeo,
  sha256Digest,
  startRegistry,
  type RegistryFixture,
} from "./support/registry.ts";

const skipE2E = missingTools("mirror end-to-end", ["docker-registry", "skopeo", "curl"]);

describe.skipIf(skipE2E)("crm mirroring a real registry", () => {
  let fx: RegistryFixture;
  let crm: TestCrm;
  let registriesConf: string;

  beforeAll(async () => {
    fx = await startRegistry({ auth: "token" });
    crm = await startCrm(
      {
        // containers/image tries https first even for an insecure mirror; crm's plain port reads
        // the ClientHello as an unfinished request head and only answers at this timeout, after
        // which skopeo falls back to http. The 10 s default would be the whole test's budget.
        timeouts: { header: "300ms" },
        // The token service listens on its own port (realms may only use allowed ones).
        allowed_ports: [80, 443, ...(fx.token ? [Number(new URL(fx.token.url).port)] : [])],
        mirror: { default_registry: "reg.test", registries: { "reg.test": fx.url } },
      },
      "info",
    );
    // The primary location is a dead loopback port: if skopeo ever left the mirror it would fail
    // there, never resolve reg.test, and the copy could not succeed without crm.
    registriesConf = join(fx.dir, "mirror-registries.conf");
    await writeFile(
      registriesConf,
      [
        "unqualified-search-registries = []",
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
  }, 60_000);

  afterAll(async () => {
    await crm?.stop();
    await fx?.stop();
  }, 20_000);

  /** skopeo (hermetic, see runSkopeo) with our registries.conf: hidden global flag in 1.9.3. */
  const skopeo = (args: string[]) => runSkopeo(fx, ["--registries-conf", registriesConf, ...args]);

  test("skopeo copies the multi-layer image through crm, digests intact", async () => {
    const img = fx.images.multiLayer;
    const tokensBefore = fx.token!.calls();
    const dest = join(fx.dir, "out-multi");
    await skopeo([
      "copy",
      "--preserve-digests",
      "--quiet",
      `docker://reg.test/${img.repo}:${img.tag}`,
      `dir:${dest}`,
    ]);

    const manifest = await readFile(join(dest, "manifest.json"));
    expect(sha256Digest(manifest)).toBe(img.digest);
    for (const blob of [...img.layers, img.config!]) {
      const bytes = await readFile(join(dest, blob.digest.slice("sha256:".length)));
      expect(bytes.byteLength).toBe(blob.size);
      expect(sha256Digest(bytes)).toBe(blob.digest);
    }
    // crm, not skopeo, answered the registry's challenge.
    expect(fx.token!.callLog.slice(tokensBefore).map((c) => c.scope)).toContainEqual([
      `repository:${img.repo}:pull`,
    ]);
    await crm.waitLog(
      new RegExp(
        `GET /v2/reg\\.test/${img.repo}/blobs/${img.layers[1]!.digest} .*status=200 .*registry=reg\\.test repo=${img.repo}`,
      ),
    );
  }, 30_000);

  test("skopeo copies the multi-arch index with --all through crm", async () => {
    const img = fx.images.index;
    const dest = join(fx.dir, "out-index");
    await skopeo([
      "copy",
      "--all",
      "--preserve-digests",
      "--quiet",
      `docker://reg.test/${img.repo}:${img.tag}`,
      `oci:${dest}:${img.tag}`,
    ]);

    const layout = JSON.parse(await readFile(join(dest, "index.json"), "utf8")) as {
      manifests: Array<{ digest: string }>;
    };
    expect(layout.manifests.map((m) => m.digest)).toEqual([img.digest]);
    const blobs = new Set(await readdir(join(dest, "blobs", "sha256")));
    for (const d of [img.digest, ...img.children.map((c) => c.digest)]) {
      const hex = d.slice("sha256:".length);
      expect(blobs.has(hex)).toBe(true);
      expect(sha256Digest(await readFile(join(dest, "blobs", "sha256", hex)))).toBe(d);
    }
    expect(img.children.length).toBe(2);
  }, 30_000);

  test("containerd style: HEAD manifest with ?ns= gets Docker-Content-Digest and Content-Length", async () => {
    const img = fx.images.index;
    const r = await run([
      "curl",
      "-sS",
      "--noproxy",
      "*",
      "-I",
      "-H",
      `Accept: ${MANIFEST_ACCEPT}`,
      `${crm.url}/v2/${img.repo}/manifests/${img.tag}?ns=reg.test`,
    ]);
    expect(r.code).toBe(0);
    const head = r.stdout.toLowerCase();
    expect(head).toMatch(/^http\/1\.1 200/);
    expect(head).toContain(`docker-content-digest: ${img.digest}`);
    expect(head).toContain(`content-length: ${img.size}`);
    expect(head).toContain("docker-distribution-api-version: registry/2.0");
    expect(head).not.toContain("www-authenticate");
  });

  test("containerd style: GET blob with Range and ?ns= is 206 with the exact bytes", async () => {
    const img = fx.images.multiLayer;
    const big = img.layers.reduce((a, b) => (b.size > a.size ? b : a));
    const direct = await registryFetch(fx, `/v2/${img.repo}/blobs/${big.digest}`, {
      scope: [`repository:${img.repo}:pull`],
    });
    const whole = new Uint8Array(await direct.arrayBuffer());
    expect(sha256Digest(whole)).toBe(big.digest);

    const bodyFile = join(fx.dir, "range.bin");
    const r = await run([
      "curl",
      "-sS",
      "--noproxy",
      "*",
      "-D",
      "-",
      "-o",
      bodyFile,
      "-r",
      "1000-1999",
      `${crm.url}/v2/${img.repo}/blobs/${big.digest}?ns=reg.test`,
    ]);
    expect(r.code).toBe(0);
    const head = r.stdout.toLowerCase();
    expect(head).toMatch(/^http\/1\.1 206/);
    expect(head).toContain(`content-range: bytes 1000-1999/${big.size}`);
    expect(new Uint8Array(await readFile(bodyFile))).toEqual(whole.subarray(1000, 2000));
  });

  test("a second pull of the same image sends no manifest GET to the registry (its own log says so)", async () => {
    const img = fx.images.index;
    /** distribution's "response completed" lines for manifest requests of this repo: request id → method. */
    const manifestLines = (): Map<string, string> => {
      const out = new Map<string, string>();
      for (const line of fx.logs().split("\n")) {
        // logfmt quotes a value with a colon in it (a digest).
        if (
          !line.includes('msg="response completed"') ||
          !new RegExp(`http\\.request\\.uri="?/v2/${img.repo}/manifests/`).test(line)
        )
          continue;
        const id = /http\.request\.id=(\S+)/.exec(line)?.[1];
        const method = /http\.request\.method=(\S+)/.exec(line)?.[1];
        if (id && method) out.set(id, method);
      }
      return out;
    };
    await skopeo([
      "copy",
      "--all",
      "--preserve-digests",
      "--quiet",
      `docker://reg.test/${img.repo}:${img.tag}`,
      `oci:${join(fx.dir, "pull-1")}:${img.tag}`,
    ]);
    const before = manifestLines();
    // The first pull (here or in an earlier test) did GET the index and both platform manifests.
    expect([...before.values()].filter((m) => m === "GET").length).toBeGreaterThanOrEqual(3);

    const dest = join(fx.dir, "pull-2");
    await skopeo([
      "copy",
      "--all",
      "--preserve-digests",
      "--quiet",
      `docker://reg.test/${img.repo}:${img.tag}`,
      `oci:${dest}:${img.tag}`,
    ]);
    const layout = JSON.parse(await readFile(join(dest, "index.json"), "utf8")) as {
      manifests: Array<{ digest: string }>;
    };
    expect(layout.manifests.map((m) => m.digest)).toEqual([img.digest]);
    for (const d of [img.digest, ...img.children.map((c) => c.digest)]) {
      expect(
        sha256Digest(await readFile(join(dest, "blobs", "sha256", d.slice("sha256:".length)))),
      ).toBe(d);
    }
    // distribution logs a request when it completes; give the last line a moment to arrive.
    await Bun.sleep(200);
    const fresh = [...manifestLines()]
      .filter(([id]) => !before.has(id))
      .map(([, method]) => method);
    expect(fresh.length).toBeGreaterThan(0); // the tag was resolved again: a moved tag would be seen
    expect(fresh.every((m) => m === "HEAD")).toBe(true);
  }, 60_000);
});
