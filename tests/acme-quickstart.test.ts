/**
 * The README's quick start, as written, run by the compiled binary against pebble: the six config
 * lines are taken from README.md, and only what a test machine cannot have is substituted (the
 * CA's directory and its API certificate, loopback ports for :443/:80, test names for
 * crm.example.com, the local registry for docker.io). The state directory comes from
 * $STATE_DIRECTORY, as systemd's StateDirectory=crm sets it. So this also proves acme-client
 * works inside a `bun build --compile` binary.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import YAML from "yaml";
import { buildTarget } from "../scripts/build.ts";
import { startPebble, type Pebble } from "./support/pebble.ts";
import { reservePorts } from "./support/ports.ts";
import { run } from "./support/raw.ts";
import { MANIFEST_ACCEPT, startRegistry, type RegistryFixture } from "./support/registry.ts";
import { missingTools } from "./support/tools.ts";

const root = resolve(import.meta.dir, "..");
const skip = missingTools("README quick start with pebble", [
  "pebble",
  "pebble-challtestsrv",
  "curl",
  "docker-registry",
  "skopeo",
]);

/** The heredoc of the quick start's config step. */
export function quickStartConfig(readme: string): string {
  const at = readme.indexOf("<!-- quick-start-config");
  if (at < 0) throw new Error("README.md has no quick-start-config marker");
  const m = /<<'EOF'\n([\s\S]*?)\n\s*EOF\n/.exec(readme.slice(at));
  if (!m) throw new Error("no heredoc after the quick-start-config marker");
  return (m[1] as string).replace(/^ {3}/gm, "");
}

describe.skipIf(skip)("README quick start", () => {
  let work: string;
  let pebble: Pebble;
  let fx: RegistryFixture;
  let binary: string;
  let plainPort: number;
  let tlsPort: number;
  let cfgFile: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "crm-quickstart-"));
    binary = join(work, "crm");
    // crm's ports stay held while the other servers start: their bind(0) must not be handed them.
    const held = reservePorts(3);
    [plainPort, tlsPort] = held.ports as [number, number];
    const [, p, r] = await Promise.all([
      buildTarget("bun-linux-x64", binary),
      startPebble({ httpPort: plainPort, tlsPort: held.ports[2] as number }),
      startRegistry({ auth: "none" }),
    ]);
    held.release();
    pebble = p;
    fx = r;
  }, 120_000);

  afterAll(async () => {
    await pebble?.stop();
    await fx?.stop();
    rmSync(work, { recursive: true, force: true });
  }, 30_000);

  test("six lines: the config as written", () => {
    const text = quickStartConfig(readFileSync(join(root, "README.md"), "utf8"));
    expect(text.trim().split("\n")).toHaveLength(6);
    const cfg = YAML.parse(text) as {
      listen: unknown[];
      tls: { redirect_http: boolean; acme: Record<string, unknown> };
    };
    expect(cfg.listen).toEqual([":443", { address: ":80", tls: false }]);
    expect(cfg.tls.acme.domains).toEqual(["crm.example.com"]);
    // Substitutions for a machine without the internet; nothing else changes.
    cfg.listen = [
      `127.0.0.1:${tlsPort}`,
      { ...(cfg.listen[1] as object), address: `127.0.0.1:${plainPort}` },
    ];
    cfg.tls.acme.domains = ["crm.test"];
    cfg.tls.acme.email = "you@crm.test";
    Object.assign(cfg.tls.acme, { directory: pebble.directory, ca_bundle: pebble.caBundlePath });
    const full = {
      ...cfg,
      allow_private_networks: true,
      mirror: { registries: { "docker.io": fx.url } },
    };
    cfgFile = join(work, "config.yaml");
    writeFileSync(cfgFile, YAML.stringify(full));
  });

  test("the binary gets the certificate, and a docker-style pull works over https trusting only pebble's root", async () => {
    const state = join(work, "state");
    const env = { ...process.env, STATE_DIRECTORY: state };
    const check = await run([binary, "-t", "-config", cfgFile], { env });
    // The one warning comes from the test's own substitution of :80.
    expect(check.stderr).toBe(
      "crm: warning: tls.acme: the CA validates http-01 on port 80, and no plain listener is on :80 (fine only if port 80 is forwarded to one)\n",
    );
    expect(check.stdout).toContain(
      "tls: ACME http-01 for crm.test; plain listeners redirect to https",
    );
    expect(check.stdout).toContain(`state_dir ${state};`);
    expect(check.stdout).toContain("stored certificate: none");

    const p = Bun.spawn([binary, "-config", cfgFile], { env, stdout: "ignore", stderr: "pipe" });
    let err = "";
    const reading = (async () => {
      for await (const chunk of p.stderr) err += new TextDecoder().decode(chunk);
    })();
    try {
      const end = Date.now() + 60_000;
      while (!err.includes("ACME: certificate issued")) {
        if (Date.now() > end || p.exitCode !== null)
          throw new Error(`no certificate; crm said:\n${err}`);
        await Bun.sleep(50);
      }
      expect(err).toContain("serving a temporary self-signed one while issuance is under way");
      expect(statSync(state).mode & 0o777).toBe(0o700);
      const rootPem = join(work, "root.pem");
      writeFileSync(rootPem, await pebble.root());
      const curl = (args: string[]) =>
        run([
          "curl",
          "-sS",
          "--noproxy",
          "*",
          "--cacert",
          rootPem,
          "--resolve",
          `crm.test:${tlsPort}:127.0.0.1`,
          ...args,
        ]);
      expect((await curl([`https://crm.test:${tlsPort}/healthz`])).stdout).toBe("ok\n");
      // What docker pull asks a mirror first: the ping, then the manifest by tag.
      const ping = await curl([
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        `https://crm.test:${tlsPort}/v2/`,
      ]);
      expect(["200", "401"]).toContain(ping.stdout);
      const img = fx.images.multiLayer;
      const manifest = await curl([
        "-I",
        "-H",
        `Accept: ${MANIFEST_ACCEPT}`,
        `https://crm.test:${tlsPort}/v2/${img.repo}/manifests/${img.tag}`,
      ]);
      expect(manifest.stdout).toMatch(/^HTTP\/1\.1 200/);
      expect(manifest.stdout.toLowerCase()).toContain(`docker-content-digest: ${img.digest}`);
      // :80 redirects to https.
      const redirect = await run([
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: crm.test",
        `http://127.0.0.1:${plainPort}/v2/`,
      ]);
      expect(redirect.stdout).toBe(`301 https://crm.test:${tlsPort}/v2/`);
    } finally {
      p.kill("SIGTERM");
      await p.exited;
      await reading;
    }
    expect(p.exitCode).toBe(0);
  }, 90_000);
});
