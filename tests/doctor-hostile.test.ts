/**
 * Issue 21: `crm doctor` against upstreams that lie (defect 8: digests with terminal escapes in
 * a manifest body or header must not be printed raw or put in a request path; no table cell
 * carries a control character), and a healthy set-up whose probe image the upstream does not
 * hold (404 MANIFEST_UNKNOWN): a warning naming doctor.images.<registry>, the blob step skipped,
 * exit 0.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { diagnose } from "../src/doctor/index.ts";
import { renderTable } from "../src/doctor/report.ts";
import { startFakeRegistry, type FakeRegistry } from "./support/mirror-upstreams.ts";
import { run } from "./support/raw.ts";

let dir: string;
let reg: FakeRegistry;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "crm-doctor-hostile-"));
  reg = startFakeRegistry({ auth: { kind: "none" } });
});
afterAll(async () => {
  reg.stop();
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
function configFile(upstreamPort: number, image: string): string {
  const file = join(dir, `c${++n}.json`);
  writeFileSync(
    file,
    JSON.stringify({
      listen: "127.0.0.1:0",
      allow_private_networks: true,
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [upstreamPort],
      timeouts: { connect: "2s", upstream_header: "5s" },
      mirror: { registries: { "docker.io": `http://127.0.0.1:${upstreamPort}` } },
      doctor: { images: { "docker.io": image } },
    }),
  );
  return file;
}

test("a probe image the upstream does not hold (404 MANIFEST_UNKNOWN) is a warning naming doctor.images, the blob step is skipped, and doctor exits 0", async () => {
  const port = Number(new URL(reg.url).port);
  const file = configFile(port, "library/app:not-here");
  const report = await diagnose({ configPath: file, json: false });
  const row = (name: string) => report.rows.find((r) => r.check === name);
  expect(row("docker.io: manifest")).toMatchObject({ result: "warn" });
  expect(row("docker.io: manifest")?.detail).toContain("404");
  expect(`${row("docker.io: manifest")?.detail} ${row("docker.io: manifest")?.fix}`).toContain(
    "doctor.images.docker.io",
  );
  expect(row("docker.io: blob redirect")?.result).toBe("skip");
  expect(report.rows.filter((r) => r.result === "fail")).toEqual([]);
  expect(report.ok).toBe(true);
  const cli = await run([
    process.execPath,
    join(import.meta.dir, "..", "src", "main.ts"),
    "doctor",
    "-config",
    file,
  ]);
  expect(cli.code).toBe(0);
  expect(cli.stdout).toMatch(/WARN: HEAD library\/app:not-here answered 404/);
  const json = await run([
    process.execPath,
    join(import.meta.dir, "..", "src", "main.ts"),
    "doctor",
    "-config",
    file,
    "--json",
  ]);
  expect(json.code).toBe(0);
  expect((JSON.parse(json.stdout) as { ok: boolean }).ok).toBe(true);
});

test("what still breaks pulls still fails: a 403 DENIED on the probe image is FAIL and the run is not ok", async () => {
  const up = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const p = new URL(req.url).pathname;
      if (p === "/v2/") return new Response("{}");
      return Response.json({ errors: [{ code: "DENIED", message: "denied" }] }, { status: 403 });
    },
  });
  try {
    const report = await diagnose({
      configPath: configFile(up.port as number, "library/app:v1"),
      json: false,
    });
    expect(report.rows.find((r) => r.check === "docker.io: manifest")?.result).toBe("fail");
    expect(report.ok).toBe(false);
  } finally {
    up.stop(true);
  }
});

test("digests from a manifest body or header are checked against the digest grammar; escapes are never printed or requested", async () => {
  const ESC = "\x1b]0;owned\x07\x1b[2J";
  const evilDigest = `sha256:${ESC}aaaa`;
  const paths: string[] = [];
  const up = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const url = new URL(req.url);
      paths.push(decodeURIComponent(url.pathname));
      if (url.pathname === "/v2/") return new Response("{}");
      if (/\/manifests\/v1$/.test(url.pathname) && req.method === "HEAD")
        return new Response(null, {
          headers: { "docker-content-digest": "sha256:" + "b".repeat(64) },
        });
      // The manifest by digest names a config blob whose "digest" is a terminal escape.
      const body = JSON.stringify({ schemaVersion: 2, config: { digest: evilDigest }, layers: [] });
      return new Response(body, {
        headers: { "content-type": "application/vnd.oci.image.manifest.v1+json" },
      });
    },
  });
  try {
    const report = await diagnose({
      configPath: configFile(up.port as number, "library/app:v1"),
      json: false,
    });
    const blob = report.rows.find((r) => r.check === "docker.io: blob redirect");
    expect(blob?.result).toBe("fail");
    expect(blob?.detail).toContain("not a valid digest");
    expect(paths.filter((p) => p.includes("\x1b"))).toEqual([]);
    const table = renderTable(report.rows);
    expect(table).not.toContain("\x1b");
    expect(table).not.toContain("\x07");
  } finally {
    up.stop(true);
  }
});

test("an upstream's Docker-Content-Digest header that is not a digest is refused before it is used or printed", async () => {
  const up = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const p = new URL(req.url).pathname;
      if (p === "/v2/") return new Response("{}");
      return new Response(null, { headers: { "docker-content-digest": "sha256:\x1b[31mred" } });
    },
  });
  try {
    const report = await diagnose({
      configPath: configFile(up.port as number, "library/app:v1"),
      json: false,
    });
    const row = report.rows.find((r) => r.check === "docker.io: manifest");
    expect(row?.result).toBe("fail");
    expect(renderTable(report.rows)).not.toContain("\x1b");
  } finally {
    up.stop(true);
  }
});

test("no table cell carries a control character, whatever a row says", () => {
  const table = renderTable([
    {
      check: "x\x1b[2Jy",
      result: "fail",
      detail: "a\x1b]0;title\x07b\u009bc\rd",
      fix: "e\x00f\x7fg",
    },
  ]);
  expect(table).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/);
  expect(table).toContain("x[2Jy");
});

test("a 404 from a web server that is not a registry is FAIL, not a warning", async () => {
  // A docs site or a wrong vhost: /v2/ is a page, every other path an HTML 404.
  const up = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const p = new URL(req.url).pathname;
      if (p === "/v2/")
        return new Response("<html>docs v2</html>", { headers: { "content-type": "text/html" } });
      return new Response("<html>not found</html>", {
        status: 404,
        headers: { "content-type": "text/html" },
      });
    },
  });
  try {
    const report = await diagnose({
      configPath: configFile(up.port as number, "library/busybox:latest"),
      json: false,
    });
    const row = report.rows.find((r) => r.check === "docker.io: manifest");
    expect(row?.result).toBe("fail");
    expect(row?.fix).toContain("upstream");
    expect(report.ok).toBe(false);
  } finally {
    up.stop(true);
  }
});

test("a registry that does not name its API version still warns when its 404 is an OCI MANIFEST_UNKNOWN", async () => {
  const up = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const p = new URL(req.url).pathname;
      if (p === "/v2/") return new Response("{}");
      return Response.json(
        { errors: [{ code: "MANIFEST_UNKNOWN", message: "manifest unknown" }] },
        { status: 404 },
      );
    },
  });
  try {
    const report = await diagnose({
      configPath: configFile(up.port as number, "library/app:gone"),
      json: false,
    });
    expect(report.rows.find((r) => r.check === "docker.io: manifest")?.result).toBe("warn");
    expect(report.ok).toBe(true);
  } finally {
    up.stop(true);
  }
});
