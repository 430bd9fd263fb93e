/**
 * `--check`: proves a runtime's pulls go through crm. It asks crm directly once (the answer must
 * carry X-Crm-Request-Id, so the URL is crm and not some other registry), has the runtime itself
 * fetch a small image through its own configuration, then asks crm which requests it answered
 * for this address since. A pull that worked but left no trace in crm is a silent fallback to the
 * upstream, and is reported as one, with what to fix.
 */
import { basename, dirname } from "node:path";
import type { RequestsAnswer } from "../status/requests-endpoint.ts";
import { CHECK_IMAGES, parseImageRef, type ImageRef } from "./image-ref.ts";
import { mirrorBase, registryUpstream, type ClientConfigOptions } from "./options.ts";

export interface CheckReport {
  ok: boolean;
  /** One line per finding, PASS/FAIL first. */
  lines: string[];
}

const PULL_TIMEOUT_MS = 180_000;
/** crm records a request when its answer is written; the runtime may exit a moment before. */
const JOURNAL_WAIT_MS = 3_000;

function authHeaders(): Record<string, string> {
  const user = process.env.CRM_MIRROR_USER;
  const pass = process.env.CRM_MIRROR_PASSWORD;
  return user && pass !== undefined
    ? { authorization: `Basic ${Buffer.from(`${user}:${pass}`).toString("base64")}` }
    : {};
}

interface Pull {
  cmd: string[];
  env: Record<string, string>;
  /**
   * The command always fetches a blob. A docker/containerd/podman pull skips blobs already on
   * the node, so for them no blob request at all is not a fallback.
   */
  fetchesBlob: boolean;
}

function pullCommand(o: ClientConfigOptions, image: ImageRef): Pull | string {
  switch (o.runtime) {
    case "docker":
      return Bun.which("docker")
        ? { cmd: ["docker", "pull", "-q", image.full], env: {}, fetchesBlob: false }
        : "the docker CLI is not installed on this node";
    case "containerd":
      return Bun.which("ctr")
        ? {
            cmd: ["ctr", "images", "pull", "--hosts-dir", o.dest, image.full],
            env: {},
            fetchesBlob: false,
          }
        : "ctr (containerd's CLI) is not installed on this node";
    case "podman": {
      // A drop-in is found by containers/image itself; a main file has to be named.
      const dropIn = basename(dirname(o.dest)) === "registries.conf.d";
      const env: Record<string, string> = dropIn ? {} : { CONTAINERS_REGISTRIES_CONF: o.dest };
      // skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF; its (hidden) flag is what it reads.
      // --config fetches the image's config blob too: a manifest alone proves nothing about blobs.
      if (Bun.which("skopeo"))
        return {
          cmd: [
            "skopeo",
            ...(dropIn ? [] : ["--registries-conf", o.dest]),
            "inspect",
            "--raw",
            "--config",
            `docker://${image.full}`,
          ],
          env,
          fetchesBlob: true,
        };
      if (Bun.which("podman"))
        return { cmd: ["podman", "pull", "-q", image.full], env, fetchesBlob: false };
      return "neither skopeo nor podman is installed on this node";
    }
  }
}

async function run(p: Pull): Promise<{ code: number; output: string }> {
  const proc = Bun.spawn(p.cmd, {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...p.env },
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), PULL_TIMEOUT_MS);
  const [out, err, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]).finally(() => clearTimeout(timer));
  return {
    code,
    output: (err.trim() || out.trim()).split("\n").slice(-3).join(" | ").slice(0, 600),
  };
}

type Entry = RequestsAnswer["requests"][number];
const is2xx = (r: Entry): boolean => r.status >= 200 && r.status < 300;
/** A blob's GET that crm answered with its content (a HEAD proves nothing about the bytes). */
const blobServed = (r: Entry): boolean => r.method === "GET" && is2xx(r);

/** What crm answered this address for the image's manifest and blobs since `after`. */
async function journalSince(
  base: string,
  after: number,
  image: ImageRef,
): Promise<{ answer: RequestsAnswer; manifest: Entry[]; blobs: Entry[] } | string> {
  const end = Date.now() + JOURNAL_WAIT_MS;
  for (;;) {
    let answer: RequestsAnswer;
    try {
      const res = await fetch(`${base}/v2/_crm/requests?after=${after}`, {
        headers: authHeaders(),
        signal: AbortSignal.timeout(10_000),
      });
      if (res.status !== 200)
        return `crm answered ${res.status} for its request record (${base}/v2/_crm/requests)`;
      answer = (await res.json()) as RequestsAnswer;
    } catch (e) {
      return `cannot read crm's request record: ${(e as Error).message}`;
    }
    const manifest = answer.requests.filter((r) => r.kind === "mirror" && aboutManifest(r, image));
    const blobs = answer.requests.filter((r) => r.kind === "mirror" && aboutBlob(r, image));
    // A pull that found its blobs on the node asks for none: then the wait runs out (a few s).
    if ((manifest.some(is2xx) && blobs.some(blobServed)) || Date.now() > end)
      return { answer, manifest, blobs };
    await Bun.sleep(200);
  }
}

/**
 * A manifest request for the image; a request crm refused before routing it (a registry it does
 * not mirror) has no registry field, so its path is matched instead.
 */
function aboutManifest(r: RequestsAnswer["requests"][number], image: ImageRef): boolean {
  if (r.registry !== undefined)
    return r.registry === image.registry && r.repo === image.repo && r.ref === image.ref;
  const short = image.repo.replace(/^library\//, "");
  return r.status >= 400 && r.target.includes(`/${short}/manifests/`);
}

/** A blob request of the image's repository (matched by path when crm could not route it). */
function aboutBlob(r: Entry, image: ImageRef): boolean {
  if (!r.target.includes("/blobs/")) return false;
  if (r.registry !== undefined) return r.registry === image.registry && r.repo === image.repo;
  const short = image.repo.replace(/^library\//, "");
  return r.status >= 300 && r.target.includes(`/${short}/blobs/`);
}

function fixFor(o: ClientConfigOptions): string {
  switch (o.runtime) {
    case "docker":
      return `make dockerd load ${o.dest} (systemctl reload docker), and check that docker info lists the mirror under "Registry Mirrors"`;
    case "containerd":
      return `make containerd read ${o.dest}: config_path = "${o.dest}" in /etc/containerd/config.toml, then systemctl restart containerd`;
    case "podman":
      return `check that ${o.dest} is the registries.conf containers/image reads (CONTAINERS_REGISTRIES_CONF, ~/.config/containers/registries.conf override /etc)`;
  }
}

async function dockerLoaded(base: string): Promise<string | null> {
  if (!Bun.which("docker")) return null;
  const r = await run({
    cmd: ["docker", "info", "--format", "{{json .RegistryConfig.Mirrors}}"],
    env: {},
    fetchesBlob: false,
  });
  if (r.code !== 0) return `docker info failed: ${r.output}`;
  let mirrors: unknown;
  try {
    mirrors = JSON.parse(r.output);
  } catch {
    return null;
  }
  const list = Array.isArray(mirrors) ? mirrors.map((m) => String(m).replace(/\/+$/, "")) : [];
  if (list.includes(base)) return null;
  return `dockerd has not loaded the mirror: its registry mirrors are ${list.length > 0 ? list.join(", ") : "none"}, so pulls go to Docker Hub`;
}

export async function runCheck(o: ClientConfigOptions): Promise<CheckReport> {
  const lines: string[] = [];
  const fail = (what: string, fix?: string): CheckReport => ({
    ok: false,
    lines: [...lines, `FAIL ${what}`, ...(fix ? [`     fix: ${fix}`] : [])],
  });
  const base = mirrorBase(o.mirror);
  const imageText =
    o.image ?? CHECK_IMAGES[o.registries[0] ?? "docker.io"] ?? CHECK_IMAGES["docker.io"]!;
  const image = parseImageRef(imageText);
  if (typeof image === "string") return fail(`--image ${image}`);
  if (!o.registries.includes(image.registry))
    return fail(
      `${image.full} is from ${image.registry}, which this config does not send through crm`,
      `add it to --registries or choose another --image`,
    );

  let probeId: string | null;
  try {
    const res = await fetch(`${base}/v2/`, {
      headers: authHeaders(),
      signal: AbortSignal.timeout(10_000),
    });
    await res.body?.cancel();
    probeId = res.headers.get("x-crm-request-id");
    if (probeId === null)
      return fail(
        `${base}/v2/ answered ${res.status} without an X-Crm-Request-Id header: that URL is not crm (or a proxy in front drops the header)`,
        "point --mirror at crm itself",
      );
    if (res.status === 401)
      return fail(
        `crm at ${base} asks for credentials (access.users with mirror_auth)`,
        "set CRM_MIRROR_USER and CRM_MIRROR_PASSWORD for the check, and give the runtime the same credentials",
      );
    if (res.status !== 200) return fail(`crm at ${base} answered ${res.status} for /v2/`);
  } catch (e) {
    return fail(
      `cannot reach crm at ${base}: ${(e as Error).message}`,
      "check the address, the port and access.clients on the crm host",
    );
  }
  lines.push(`PASS crm answers at ${base} (request ${probeId})`);
  const after = Number(probeId.slice(probeId.lastIndexOf("-") + 1));

  if (o.runtime === "docker") {
    const notLoaded = await dockerLoaded(base);
    if (notLoaded !== null) return fail(notLoaded, fixFor(o));
  }
  const pull = pullCommand(o, image);
  if (typeof pull === "string") return fail(pull);
  const pulled = await run(pull);
  const seen = await journalSince(base, after, image);
  if (typeof seen === "string") return fail(seen);
  const ok = seen.manifest.filter(is2xx);
  const bad = seen.manifest.filter((r) => r.status >= 300);
  const blobOk = seen.blobs.filter(blobServed);
  const blobBad = seen.blobs.filter((r) => r.status >= 300);
  const upstream = registryUpstream(image.registry).host;
  const ids = (rs: RequestsAnswer["requests"]): string =>
    rs
      .map((r) => r.id)
      .slice(0, 4)
      .join(", ");
  const why = (rs: Entry[]): string =>
    rs
      .map((r) => `${r.status}${r.notes.error ? ` (${r.notes.error})` : ""}`)
      .slice(0, 2)
      .join(", ");
  const blobName = (r: Entry | undefined): string =>
    (r?.ref ?? /\/blobs\/([^/?]+)/.exec(r?.target ?? "")?.[1] ?? "?").slice(0, 19) + "…";
  const blobFix =
    "blob pulls through crm fail: fix what crm's answer names (its log has the same line), e.g. the blob host in mirror.registries.<name>.redirect_hosts";
  if (ok.length > 0 && blobOk.length === 0 && blobBad.length > 0) {
    const what = `crm answered the manifest of ${image.full} (requests ${ids(ok)}), but ${why(blobBad)} for its blob ${blobName(blobBad[0])} (requests ${ids(blobBad)})`;
    if (pulled.code === 0)
      return fail(`${what}, and ${o.runtime} silently fell back to ${upstream} for it`, blobFix);
    return fail(`${what}; ${o.runtime} said: ${pulled.output}`, blobFix);
  }
  if (pulled.code === 0 && ok.length > 0 && blobOk.length === 0 && pull.fetchesBlob) {
    return fail(
      `${o.runtime} fetched the manifest of ${image.full} through crm but its blob without asking crm: a silent fallback to ${upstream} for blobs (crm saw no blob request from ${seen.answer.client})`,
      fixFor(o),
    );
  }
  if (pulled.code === 0 && ok.length > 0) {
    const blobs = blobOk.length > 0 ? `, blobs ${ids(blobOk)}` : "";
    lines.push(
      `PASS ${o.runtime} fetched ${image.full} through crm (requests ${ids(ok)}${blobs}, client ${seen.answer.client})`,
    );
    if (blobOk.length === 0)
      lines.push(
        `NOTE no blob was fetched: ${image.full} is already on this node, so blob pulls through crm are not proven; remove the image and run the check again`,
      );
    return { ok: true, lines };
  }
  const badWhy = why(bad);
  if (pulled.code === 0 && bad.length > 0) {
    return fail(
      `${o.runtime} fetched ${image.full}, but not from crm: crm answered ${badWhy} (requests ${ids(bad)}), and ${o.runtime} silently fell back to ${upstream}`,
      "fix what crm's answer names (its log has the same line), e.g. add the registry to mirror.registries",
    );
  }
  if (pulled.code === 0) {
    return fail(
      `${o.runtime} fetched ${image.full} without asking crm: a silent fallback to ${upstream} (crm saw no manifest request from ${seen.answer.client})`,
      fixFor(o),
    );
  }
  if (bad.length > 0)
    return fail(
      `${o.runtime} could not fetch ${image.full}: crm answered ${badWhy} (requests ${ids(bad)}); ${o.runtime} said: ${pulled.output}`,
      "fix what crm's answer names (its log has the same line)",
    );
  if (ok.length > 0)
    return fail(
      `crm answered ${image.full} (requests ${ids(ok)}), but ${o.runtime} failed afterwards: ${pulled.output}`,
    );
  return fail(
    `${o.runtime} could not fetch ${image.full} and never asked crm for it; it said: ${pulled.output}`,
    fixFor(o),
  );
}
