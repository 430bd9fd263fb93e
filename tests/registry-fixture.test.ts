/**
 * Checks the registry fixture itself, so a failing mirror test can trust its upstream: the
 * challenge, the token flow, digests of what was seeded, and a real Go client (skopeo) pulling.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { missingTools } from "./support/tools.ts";
import {
  MANIFEST_ACCEPT,
  getToken,
  registryFetch,
  runSkopeo,
  sha256Digest,
  startRegistry,
  type RegistryFixture,
} from "./support/registry.ts";

const USERS = { alice: "wonderland" };
const skip = missingTools("registry fixture", ["docker-registry", "skopeo"]);

let fx: RegistryFixture;
let tlsFx: RegistryFixture;
let openFx: RegistryFixture;
let privateFx: RegistryFixture;
let startMs = 0;

beforeAll(async () => {
  if (skip) return;
  const t0 = performance.now();
  // Started together: each is its own registry process, temp dir and ports.
  const started = await Promise.allSettled([
    startRegistry({ users: USERS }),
    startRegistry({ tls: true }),
    startRegistry({ auth: "none" }),
    startRegistry({ users: USERS, anonymousPull: false, tokenExpiresIn: 300 }),
  ]);
  const failed = started.find((r) => r.status === "rejected");
  if (failed) {
    // Stop the ones that did start: afterAll cannot see them, and they would outlive the run.
    await Promise.all(started.map((r) => (r.status === "fulfilled" ? r.value.stop() : undefined)));
    throw (failed as PromiseRejectedResult).reason;
  }
  [fx, tlsFx, openFx, privateFx] = started.map(
    (r) => (r as PromiseFulfilledResult<RegistryFixture>).value,
  ) as [RegistryFixture, RegistryFixture, RegistryFixture, RegistryFixture];
  startMs = performance.now() - t0;
  // Hooks get bun's 5 s default, not bunfig's test timeout; four registries on a busy 2-CPU box
  // (other test files running in parallel) can need more.
}, 60_000);

afterAll(async () => {
  await Promise.all([fx?.stop(), tlsFx?.stop(), openFx?.stop(), privateFx?.stop()]);
}, 20_000);

function challengeParams(header: string | null): Record<string, string> {
  expect(header).toMatch(/^Bearer /);
  const params: Record<string, string> = {};
  for (const m of (header ?? "").matchAll(/(\w+)="([^"]*)"/g)) params[m[1]!] = m[2]!;
  return params;
}

describe.skipIf(skip)("token-auth registry over http", () => {
  test("starts quickly enough to use per test file", () => {
    expect(startMs).toBeLessThan(30_000);
    expect(fx.url).toBe(`http://${fx.host}`);
    expect(fx.token).not.toBeNull();
  });

  test("anonymous GET /v2/ gets a Bearer challenge naming the token realm", async () => {
    const res = await fetch(`${fx.url}/v2/`, { proxy: false });
    expect(res.status).toBe(401);
    expect(res.headers.get("docker-distribution-api-version")).toBe("registry/2.0");
    const params = challengeParams(res.headers.get("www-authenticate"));
    expect(params.realm).toBe(fx.token!.realm);
    expect(params.service).toBe(fx.token!.service);
  });

  test("a manifest request's challenge carries the repository scope", async () => {
    const { repo, tag } = fx.images.index;
    const res = await fetch(`${fx.url}/v2/${repo}/manifests/${tag}`, { proxy: false });
    expect(res.status).toBe(401);
    expect(challengeParams(res.headers.get("www-authenticate")).scope).toBe(
      `repository:${repo}:pull`,
    );
  });

  test("token then index manifest and blob, digests verified", async () => {
    const before = fx.token!.calls();
    const { index, multiLayer } = fx.images;
    const token = await getToken(fx, [
      `repository:${index.repo}:pull`,
      `repository:${multiLayer.repo}:pull`,
    ]);
    expect(fx.token!.calls()).toBe(before + 1);
    expect(fx.token!.callLog.at(-1)).toMatchObject({
      authorization: null,
      scope: [`repository:${index.repo}:pull`, `repository:${multiLayer.repo}:pull`],
      status: 200,
    });
    const auth = { authorization: `Bearer ${token}` };

    const man = await fetch(`${fx.url}/v2/${index.repo}/manifests/${index.tag}`, {
      headers: { ...auth, accept: MANIFEST_ACCEPT },
      proxy: false,
    });
    expect(man.status).toBe(200);
    expect(man.headers.get("content-type")).toBe("application/vnd.oci.image.index.v1+json");
    const body = new Uint8Array(await man.arrayBuffer());
    expect(sha256Digest(body)).toBe(index.digest);
    expect(man.headers.get("docker-content-digest")).toBe(index.digest);
    const parsed = JSON.parse(new TextDecoder().decode(body)) as {
      manifests: Array<{ platform: { architecture: string } }>;
    };
    expect(parsed.manifests.map((m) => m.platform.architecture)).toEqual(["amd64", "arm64"]);

    const big = multiLayer.layers.reduce((a, b) => (b.size > a.size ? b : a));
    expect(multiLayer.layers.length).toBeGreaterThanOrEqual(3);
    expect(big.size).toBeGreaterThanOrEqual(2 * 1024 * 1024);
    const blob = await fetch(`${fx.url}/v2/${multiLayer.repo}/blobs/${big.digest}`, {
      headers: auth,
      proxy: false,
    });
    expect(blob.status).toBe(200);
    const blobBytes = new Uint8Array(await blob.arrayBuffer());
    expect(blobBytes.length).toBe(big.size);
    expect(sha256Digest(blobBytes)).toBe(big.digest);
  });

  test("seeding pushed with Basic credentials; wrong ones are refused", async () => {
    const pushes = fx.token!.callLog.filter((c) => c.scope.some((s) => s.endsWith(":pull,push")));
    expect(pushes.length).toBeGreaterThanOrEqual(2);
    const basic = "Basic " + Buffer.from(`alice:${USERS.alice}`).toString("base64");
    for (const call of pushes) expect(call.authorization).toBe(basic);

    await expect(
      getToken(fx, [`repository:${fx.images.multiLayer.repo}:push`], {
        user: "alice",
        password: "nope",
      }),
    ).rejects.toThrow(/401/);
  });

  test("an anonymous token does not allow push", async () => {
    const repo = fx.images.multiLayer.repo;
    const res = await registryFetch(fx, `/v2/${repo}/blobs/uploads/`, {
      method: "POST",
      scope: [`repository:${repo}:pull,push`],
    });
    expect(res.status).toBe(401);
    await res.arrayBuffer();
  });

  test("a token past exp + distribution's 60 s leeway is invalid_token", async () => {
    const { repo, tag } = fx.images.multiLayer;
    const expired = fx.token!.mint([`repository:${repo}:pull`], { expiresIn: -120 });
    const res = await fetch(`${fx.url}/v2/${repo}/manifests/${tag}`, {
      headers: { authorization: `Bearer ${expired}`, accept: MANIFEST_ACCEPT },
      proxy: false,
    });
    expect(res.status).toBe(401);
    expect(res.headers.get("www-authenticate")).toContain('error="invalid_token"');
    await res.arrayBuffer();
  });

  test("skopeo inspect pulls through the token flow", async () => {
    const { repo, tag, digest, layers } = fx.images.multiLayer;
    const before = fx.token!.calls();
    const { stdout } = await runSkopeo(fx, [
      "inspect",
      "--tls-verify=false",
      `docker://${fx.host}/${repo}:${tag}`,
    ]);
    const info = JSON.parse(stdout) as { Digest: string; Layers: string[] };
    expect(info.Digest).toBe(digest);
    expect(info.Layers).toEqual(layers.map((l) => l.digest));
    expect(fx.token!.calls()).toBeGreaterThan(before);

    const raw = await runSkopeo(fx, [
      "inspect",
      "--raw",
      "--tls-verify=false",
      `docker://${fx.host}/${fx.images.index.repo}:${fx.images.index.tag}`,
    ]);
    expect(sha256Digest(raw.stdout)).toBe(fx.images.index.digest);
  });
});

describe.skipIf(skip)("token-auth registry over https", () => {
  test("registry and token realm are https and verify against the test CA", async () => {
    expect(tlsFx.url).toBe(`https://${tlsFx.host}`);
    expect(tlsFx.caPem).toContain("BEGIN CERTIFICATE");
    expect(tlsFx.token!.realm).toStartWith("https://127.0.0.1:");
    const res = await fetch(`${tlsFx.url}/v2/`, { tls: { ca: tlsFx.caPem }, proxy: false });
    expect(res.status).toBe(401);
    expect(challengeParams(res.headers.get("www-authenticate")).realm).toBe(tlsFx.token!.realm);

    const { repo, tag, digest } = tlsFx.images.index;
    const man = await registryFetch(tlsFx, `/v2/${repo}/manifests/${tag}`, {
      headers: { accept: MANIFEST_ACCEPT },
      scope: [`repository:${repo}:pull`],
    });
    expect(man.status).toBe(200);
    expect(sha256Digest(new Uint8Array(await man.arrayBuffer()))).toBe(digest);
  });

  test("skopeo verifies the registry and the realm with --cert-dir", async () => {
    const { repo, tag, digest } = tlsFx.images.multiLayer;
    const { stdout } = await runSkopeo(tlsFx, [
      "inspect",
      "--cert-dir",
      tlsFx.certDir!,
      `docker://${tlsFx.host}/${repo}:${tag}`,
    ]);
    expect((JSON.parse(stdout) as { Digest: string }).Digest).toBe(digest);
  });
});

describe.skipIf(skip)("registry without auth", () => {
  test("answers /v2/ with 200 and serves the seeded images", async () => {
    expect(openFx.token).toBeNull();
    const res = await fetch(`${openFx.url}/v2/`, { proxy: false });
    expect(res.status).toBe(200);
    const { repo, tag, digest } = openFx.images.index;
    const man = await registryFetch(openFx, `/v2/${repo}/manifests/${tag}`, {
      headers: { accept: MANIFEST_ACCEPT },
    });
    expect(man.headers.get("docker-content-digest")).toBe(digest);
    await man.arrayBuffer();
  });
});

describe.skipIf(skip)("registry with anonymousPull: false", () => {
  test("anonymous tokens grant nothing; a user's token pulls", async () => {
    const { repo, tag, digest } = privateFx.images.multiLayer;
    const path = `/v2/${repo}/manifests/${tag}`;
    const headers = { accept: MANIFEST_ACCEPT };
    const anon = await registryFetch(privateFx, path, {
      headers,
      scope: [`repository:${repo}:pull`],
    });
    expect(anon.status).toBe(401);
    await anon.arrayBuffer();

    const creds = { user: "alice", password: USERS.alice };
    const res = await registryFetch(privateFx, path, {
      headers,
      scope: [`repository:${repo}:pull`],
      creds,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("docker-content-digest")).toBe(digest);
    await res.arrayBuffer();

    const tokenRes = await fetch(
      `${privateFx.token!.realm}?service=${privateFx.token!.service}&scope=repository:${repo}:pull`,
      { proxy: false },
    );
    expect(((await tokenRes.json()) as { expires_in: number }).expires_in).toBe(300);
  });
});
