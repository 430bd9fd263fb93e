/**
 * Issue 19 §2: a blob whose upstream connection drops mid-body is resumed by crm with a Range
 * request and the client gets one whole answer, without retrying itself. Real parts: Debian's
 * docker-registry (token auth) behind a relay in this test that cuts the answer where the test
 * says (tests/support/cutting-relay.ts), crm, and curl, skopeo and containerd's ctr as clients.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  startCuttingRelay,
  type CuttingRelay,
  type RelayPlan,
  type RelayRequest,
} from "./support/cutting-relay.ts";
import { deadPort } from "./support/mirror-upstreams.ts";
import { runSkopeo, startRegistry, type RegistryFixture } from "./support/registry.ts";
import { startContainerd, type RuntimeProcess } from "./support/runtimes.ts";
import { missingTools } from "./support/tools.ts";

const skip = missingTools("mirror resume", [
  "docker-registry",
  "skopeo",
  "curl",
  "containerd",
  "ctr",
]);

describe.skipIf(skip)("resume when the upstream drops mid-blob", () => {
  let fx: RegistryFixture;
  let relay: CuttingRelay;
  let crm: TestCrm;
  let dir: string;
  /** The image's biggest layer (~2.5 MiB of random bytes). */
  let blob: { digest: string; size: number };
  const repo = "library/multi";

  /** A blob GET with a token (crm's very first request of the run only learns the challenge: 401). */
  const isBlobGet = (r: RelayRequest): boolean =>
    r.method === "GET" &&
    r.path.includes(`/blobs/${blob.digest}`) &&
    r.headers.authorization !== undefined;
  const blobGets = (): RelayRequest[] => relay.requests.filter(isBlobGet);
  /** Cut the blob GETs numbered in `cuts` (0 = the first) after that share of the blob; pass everything else. */
  const cutting = (cuts: Record<number, RelayPlan & { kind: "pass" }>): CuttingRelay["plan"] => {
    let n = 0;
    return (r) => {
      if (!isBlobGet(r)) return { kind: "pass" };
      return cuts[n++] ?? { kind: "pass" };
    };
  };
  const at = (share: number): number => Math.floor(blob.size * share);
  /** crm's request log lines for the blob: one per client request. */
  const clientBlobRequests = (): number =>
    crm.logs.filter(
      (l) =>
        l.includes(`blobs/${blob.digest}`) &&
        /\bstatus=\d{3}\b/.test(l) &&
        !/mirror (upstream|blob resume)/.test(l),
    ).length;

  const reset = (plan: CuttingRelay["plan"]): void => {
    relay.requests.length = 0;
    crm.logs.length = 0;
    relay.plan = plan;
  };

  const curlBlob = async (
    extra: string[] = [],
  ): Promise<{ code: number; body: Buffer; stderr: string }> => {
    const out = join(dir, `curl-${Math.random().toString(36).slice(2)}`);
    const p = Bun.spawn(
      [
        "curl",
        "-sS",
        "-v",
        "--noproxy",
        "*",
        "-o",
        out,
        ...extra,
        `${crm.url}/v2/${repo}/blobs/${blob.digest}`,
      ],
      { stdout: "pipe", stderr: "pipe" },
    );
    const stderr = await new Response(p.stderr).text();
    const code = await p.exited;
    const body = await readFile(out).catch(() => Buffer.alloc(0));
    await rm(out, { force: true });
    return { code, body, stderr };
  };
  const sha = (b: Uint8Array): string => "sha256:" + createHash("sha256").update(b).digest("hex");

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "crm-resume-"));
    fx = await startRegistry({ auth: "token" });
    const layers = [...fx.images.multiLayer.layers].sort((a, b) => b.size - a.size);
    blob = {
      digest: (layers[0] as { digest: string }).digest,
      size: (layers[0] as { size: number }).size,
    };
    const u = new URL(fx.url);
    relay = await startCuttingRelay({ host: u.hostname, port: Number(u.port) });
    crm = await startCrm(
      {
        // containers/image tries https first; crm's plain port answers the ClientHello at this timeout.
        timeouts: { header: "300ms" },
        allowed_ports: [80, 443, ...(fx.token ? [Number(new URL(fx.token.url).port)] : [])],
        mirror: { default_registry: "reg.test", registries: { "reg.test": relay.url } },
      },
      "info",
    );
  }, 60_000);

  afterAll(async () => {
    await crm?.stop();
    relay?.stop();
    await fx?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 30_000);

  for (const share of [0.3, 0.8]) {
    test(`curl: the upstream cut at ${share * 100} % is resumed; one whole answer, one client request`, async () => {
      reset(cutting({ 0: { kind: "pass", cutAfter: at(share) } }));
      const r = await curlBlob();
      expect(r.code).toBe(0);
      expect(r.body.length).toBe(blob.size);
      expect(sha(r.body)).toBe(blob.digest);
      // crm asked again from where the cut left off, once.
      const gets = blobGets();
      expect(gets.length).toBe(2);
      expect(gets[0]?.headers.range).toBeUndefined();
      expect(gets[1]?.headers.range).toBe(`bytes=${at(share)}-${blob.size - 1}`);
      expect(
        crm.logs.some((l) => l.includes("mirror blob resume") && l.includes(`at=${at(share)}`)),
      ).toBe(true);
      expect(clientBlobRequests()).toBe(1);
      expect(r.stderr.match(/^> GET /gm)?.length).toBe(1);
    });
  }

  test("curl: a cut inside a chunk of a chunked answer is resumed", async () => {
    reset(cutting({ 0: { kind: "pass", chunked: true, cutAfter: at(0.5) } }));
    const r = await curlBlob();
    expect(r.code).toBe(0);
    expect(sha(r.body)).toBe(blob.digest);
    expect(blobGets().length).toBe(2);
    expect(blobGets()[1]?.headers.range).toBe(`bytes=${at(0.5)}-`);
    expect(clientBlobRequests()).toBe(1);
  });

  test("curl over HTTP/1.0: a chunked answer cut inside a chunk reaches it whole as content (close-delimited)", async () => {
    reset(cutting({ 0: { kind: "pass", chunked: true, cutAfter: at(0.4) } }));
    const r = await curlBlob(["--http1.0"]);
    expect(r.code).toBe(0);
    expect(sha(r.body)).toBe(blob.digest);
    expect(blobGets().length).toBe(2);
  });

  test("curl: an upstream without range support (200 to a Range) is read past what was sent", async () => {
    reset(
      cutting({ 0: { kind: "pass", cutAfter: at(0.3) }, 1: { kind: "pass", stripRange: true } }),
    );
    const r = await curlBlob();
    expect(r.code).toBe(0);
    expect(r.body.length).toBe(blob.size);
    expect(sha(r.body)).toBe(blob.digest);
    expect(blobGets().length).toBe(2);
    expect(clientBlobRequests()).toBe(1);
  });

  test("curl: a client's own Range is honoured exactly across a resume", async () => {
    const from = 1000;
    const to = at(0.9);
    reset(cutting({ 0: { kind: "pass", cutAfter: at(0.4) } }));
    const r = await curlBlob(["-H", `Range: bytes=${from}-${to}`]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/< HTTP\/1\.1 206/);
    expect(r.stderr).toContain(`content-range: bytes ${from}-${to}/${blob.size}`);
    const full = await (
      await fetch(`${fx.url}/v2/${repo}/blobs/${blob.digest}`, {
        headers: { authorization: `Bearer ${fx.token?.mint([`repository:${repo}:pull`]) ?? ""}` },
      })
    ).arrayBuffer();
    expect(Buffer.compare(r.body, Buffer.from(full).subarray(from, to + 1))).toBe(0);
    expect(blobGets()[1]?.headers.range).toBe(`bytes=${from + at(0.4)}-${to}`);
  });

  test("three failures in a row end as today: the client's body is cut, never complete-looking", async () => {
    reset(
      cutting({
        0: { kind: "pass", cutAfter: at(0.2) },
        1: { kind: "pass", cutAfter: 1000 },
        2: { kind: "pass", cutAfter: 1000 },
        3: { kind: "pass", cutAfter: 1000 },
      }),
    );
    const r = await curlBlob();
    expect(r.code).not.toBe(0);
    expect(r.body.length).toBeLessThan(blob.size);
    expect(r.body.length).toBe(at(0.2) + 3000);
    expect(blobGets().length).toBe(4);
    expect(crm.logs.some((l) => l.includes("mirror blob resume gave up"))).toBe(true);
    const metrics = await (await fetch(`${crm.url}/metrics`)).text();
    expect(metrics).toMatch(
      /crm_mirror_blob_resumes_total\{registry="reg\.test",result="exhausted"\} [1-9]/,
    );
    expect(metrics).toMatch(
      /crm_mirror_blob_resumes_total\{registry="reg\.test",result="continued"\} [1-9]/,
    );
    const page = await (await fetch(`${crm.url}/`)).text();
    expect(page).toMatch(
      /reg\.test: \d+ continued, \d+ refused, [1-9]\d* cut after every re-request failed/,
    );
  });

  test("curl: an upstream that goes silent mid-body (connection open) is resumed after timeouts.upstream_header", async () => {
    const quick = await startCrm(
      {
        timeouts: { upstream_header: "1s" },
        allowed_ports: [80, 443, ...(fx.token ? [Number(new URL(fx.token.url).port)] : [])],
        mirror: { default_registry: "reg.test", registries: { "reg.test": relay.url } },
      },
      "info",
    );
    try {
      reset(cutting({ 0: { kind: "pass", stallAfter: at(0.5) } }));
      // This crm's first blob GET learns the challenge (401), uncounted by isBlobGet.
      const p = Bun.spawn(
        ["curl", "-sS", "--noproxy", "*", `${quick.url}/v2/${repo}/blobs/${blob.digest}`],
        { stdout: "pipe", stderr: "pipe" },
      );
      const body = Buffer.from(await new Response(p.stdout).arrayBuffer());
      expect(await p.exited).toBe(0);
      expect(sha(body)).toBe(blob.digest);
      expect(blobGets().length).toBe(2);
      expect(blobGets()[1]?.headers.range).toBe(`bytes=${at(0.5)}-${blob.size - 1}`);
      expect(
        quick.logs.some(
          (l) => l.includes("mirror blob resume") && l.includes("sent nothing for 1000 ms"),
        ),
      ).toBe(true);
    } finally {
      await quick.stop();
    }
  });

  test("a manifest by digest whose upstream body is cut is resumed (and its digest checked)", async () => {
    const m = fx.images.multiLayer;
    let n = 0;
    reset((r) =>
      r.method === "GET" &&
      r.path.endsWith(`/manifests/${m.digest}`) &&
      r.headers.authorization !== undefined &&
      n++ === 0
        ? { kind: "pass", cutAfter: Math.floor(m.size / 2) }
        : { kind: "pass" },
    );
    const res = await fetch(`${crm.url}/v2/${repo}/manifests/${m.digest}`, {
      headers: { accept: m.mediaType },
    });
    expect(res.status).toBe(200);
    const body = Buffer.from(await res.arrayBuffer());
    expect(sha(body)).toBe(m.digest);
    const gets = relay.requests.filter(
      (r) =>
        r.method === "GET" &&
        r.path.endsWith(`/manifests/${m.digest}`) &&
        r.headers.authorization !== undefined,
    );
    expect(gets.length).toBe(2);
    expect(gets[1]?.headers.range).toBe(`bytes=${Math.floor(m.size / 2)}-${m.size - 1}`);
    expect(crm.logs.some((l) => l.includes("mirror blob resume") && l.includes(m.digest))).toBe(
      true,
    );
  });

  test("HEAD is never resumed (nothing to resume) and answers as before", async () => {
    reset(cutting({}));
    const res = await fetch(`${crm.url}/v2/${repo}/blobs/${blob.digest}`, { method: "HEAD" });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-length")).toBe(String(blob.size));
    expect(crm.logs.some((l) => l.includes("mirror blob resume"))).toBe(false);
  });

  /** The three cuts every client is put through: at 30 %, at 80 %, and inside a chunk of a chunked answer. */
  const CUTS: Array<[string, () => RelayPlan & { kind: "pass" }]> = [
    ["a cut at 30 %", () => ({ kind: "pass", cutAfter: at(0.3) })],
    ["a cut at 80 %", () => ({ kind: "pass", cutAfter: at(0.8) })],
    ["a cut inside a chunk", () => ({ kind: "pass", chunked: true, cutAfter: at(0.6) })],
  ];

  for (const [what, plan] of CUTS)
    test(`skopeo copy gets the whole image over ${what} with no retry of its own`, async () => {
      reset(cutting({ 0: plan() }));
      const dest = join(dir, `skopeo-out-${Math.random().toString(36).slice(2)}`);
      const r = await runSkopeo(
        fx,
        [
          "--debug",
          "copy",
          "--src-tls-verify=false",
          "--preserve-digests",
          `docker://127.0.0.1:${crm.port}/${repo}:v1`,
          `dir:${dest}`,
        ],
        { timeoutMs: 120_000 },
      );
      const layer = await readFile(join(dest, blob.digest.slice("sha256:".length)));
      expect(sha(layer)).toBe(blob.digest);
      // containers/image logs "reconnecting" when it resumes a blob itself.
      expect(r.stderr).not.toMatch(/reconnecting|retrying/i);
      expect(blobGets().length).toBe(2);
      expect(clientBlobRequests()).toBe(1);
    }, 120_000);

  describe("containerd", () => {
    let ctrd: RuntimeProcess;
    const dead = `http://127.0.0.1:${deadPort()}`;
    const env = {
      HTTPS_PROXY: dead,
      HTTP_PROXY: dead,
      https_proxy: dead,
      http_proxy: dead,
      NO_PROXY: "127.0.0.1,localhost",
      no_proxy: "127.0.0.1,localhost",
    };
    beforeAll(async () => {
      ctrd = await startContainerd(join(dir, "containerd"), env);
    }, 90_000);
    afterAll(async () => {
      await ctrd?.stop();
    }, 30_000);

    let round = 0;
    for (const [what, plan] of CUTS)
      test(`ctr pull gets the whole image over ${what} with no retry of its own`, async () => {
        reset(cutting({ 0: plan() }));
        // A namespace of its own each time, its content removed before: containerd must fetch the blob.
        const ns = `crm-resume-${++round}`;
        const ctr = (args: string[]) =>
          Bun.spawnSync(["ctr", "--address", ctrd.socket, "-n", ns, ...args], {
            env: { ...process.env, ...env },
          });
        for (let i = 1; i < round; i++) {
          Bun.spawnSync(
            [
              "ctr",
              "--address",
              ctrd.socket,
              "-n",
              `crm-resume-${i}`,
              "images",
              "rm",
              "--sync",
              `127.0.0.1:${crm.port}/${repo}:v1`,
            ],
            { env: { ...process.env, ...env } },
          );
          Bun.spawnSync(
            [
              "ctr",
              "--address",
              ctrd.socket,
              "-n",
              `crm-resume-${i}`,
              "content",
              "rm",
              blob.digest,
            ],
            { env: { ...process.env, ...env } },
          );
        }
        const p = Bun.spawn(
          [
            "ctr",
            "--address",
            ctrd.socket,
            "-n",
            ns,
            "--debug",
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "native",
            `127.0.0.1:${crm.port}/${repo}:v1`,
          ],
          {
            stdout: "pipe",
            stderr: "pipe",
            env: { ...process.env, ...env },
          },
        );
        const [out, err, code] = await Promise.all([
          new Response(p.stdout).text(),
          new Response(p.stderr).text(),
          p.exited,
        ]);
        expect({ code, out: out.slice(-2000), err: err.slice(-2000) }).toMatchObject({ code: 0 });
        expect(err).not.toMatch(/retry|reconnect/i);
        expect(blobGets().length).toBe(2);
        expect(clientBlobRequests()).toBe(1);
        // containerd checked the digest of what it wrote.
        expect(ctr(["content", "ls", "-q"]).stdout.toString()).toContain(blob.digest);
      }, 120_000);
  });
});
