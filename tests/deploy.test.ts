/**
 * Deployment artifacts: the release archives (scripts/release.ts), the installer
 * (scripts/install.sh), the systemd unit, the Dockerfile and the Kubernetes manifests.
 * One linux-x64 release is built first; its binary is the crm every other check runs.
 * Docker and a live systemd are not available to tests: the Dockerfile and the manifests are
 * checked statically, the unit with `systemd-analyze verify`.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { missingTools } from "./support/tools.ts";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import YAML from "yaml";
import { DEFAULT_TIMEOUTS } from "../src/config/types.ts";
import { buildConfig } from "../src/config/load.ts";
import { TARGETS } from "../scripts/build.ts";
import { releaseName } from "../scripts/release.ts";

const root = resolve(import.meta.dir, "..");
const version = (
  JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string }
).version;
const work = mkdtempSync(join(tmpdir(), "crm-deploy-"));
const releaseDir = join(work, "release");
const name = releaseName(version, "bun-linux-x64");
const extracted = join(work, "extracted");
/** The crm from the release archive: every check below runs this binary. */
const crm = join(extracted, name, "crm");

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(
  cmd: string[],
  opts: { cwd?: string; env?: Record<string, string> } = {},
): Promise<Run> {
  const p = Bun.spawn(cmd, {
    cwd: opts.cwd ?? root,
    env: { ...process.env, ...opts.env },
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { code, stdout, stderr };
}

const read = (p: string): string => readFileSync(join(root, p), "utf8");
const mode = (p: string): number => statSync(p).mode & 0o777;

beforeAll(async () => {
  // The release script as `npm run release` runs it, limited to one target for speed.
  const r = await run([
    process.execPath,
    "scripts/release.ts",
    "--out",
    releaseDir,
    "bun-linux-x64",
  ]);
  if (r.code !== 0) throw new Error(`release failed (exit ${r.code}):\n${r.stdout}${r.stderr}`);
  mkdirSync(extracted);
  const x = await run(["tar", "-xzf", join(releaseDir, `${name}.tar.gz`), "-C", extracted]);
  if (x.code !== 0) throw new Error(`tar -x failed: ${x.stderr}`);
}, 120_000);

afterAll(() => {
  rmSync(work, { recursive: true, force: true });
});

// ------------------------------------------------------------------------------------------------
describe("release", () => {
  test("one tar.gz per target with the binary, docs, unit and installer", async () => {
    expect(readdirSync(releaseDir).sort()).toEqual(["SHA256SUMS", name, `${name}.tar.gz`]);
    const list = await run(["tar", "-tvzf", join(releaseDir, `${name}.tar.gz`)]);
    expect(list.code).toBe(0);
    const entries = list.stdout
      .trim()
      .split("\n")
      .map((l) => {
        const f = l.trim().split(/\s+/);
        return { perms: f[0] ?? "", owner: f[1] ?? "", path: f[f.length - 1] ?? "" };
      });
    const files = entries.filter((e) => !e.path.endsWith("/"));
    expect(files.map((e) => e.path).sort()).toEqual(
      ["README.md", "config.example.yaml", "crm", "deploy/crm.service", "scripts/install.sh"].map(
        (p) => `${name}/${p}`,
      ),
    );
    for (const e of entries) expect(e.owner).toBe("0/0");
    const perms = Object.fromEntries(files.map((e) => [e.path.slice(name.length + 1), e.perms]));
    expect(perms).toEqual({
      crm: "-rwxr-xr-x",
      "scripts/install.sh": "-rwxr-xr-x",
      "README.md": "-rw-r--r--",
      "config.example.yaml": "-rw-r--r--",
      "deploy/crm.service": "-rw-r--r--",
    });
  });

  test("archive members are the repository's files and the released binary", () => {
    for (const p of [
      "README.md",
      "config.example.yaml",
      "deploy/crm.service",
      "scripts/install.sh",
    ]) {
      expect(readFileSync(join(extracted, name, p), "utf8")).toBe(read(p));
    }
    expect(Buffer.compare(readFileSync(crm), readFileSync(join(releaseDir, name)))).toBe(0);
  });

  test("SHA256SUMS covers archive and binary and verifies with sha256sum -c", async () => {
    const sums = readFileSync(join(releaseDir, "SHA256SUMS"), "utf8");
    expect(
      sums
        .trim()
        .split("\n")
        .map((l) => l.split(/\s+/)[1]),
    ).toEqual([name, `${name}.tar.gz`]);
    const check = await run(["sha256sum", "-c", "SHA256SUMS"], { cwd: releaseDir });
    expect(check.code).toBe(0);
    expect(check.stdout).toContain(`${name}.tar.gz: OK`);
    expect(check.stdout).toContain(`${name}: OK`);
  });

  test("the released binary runs and reports the package version", async () => {
    const v = await run([crm, "--version"]);
    expect(v.code).toBe(0);
    expect(v.stdout).toStartWith(`crm ${version} `);
  });

  test("unknown targets and a non-empty --out are refused before building", async () => {
    const bad = await run([
      process.execPath,
      "scripts/release.ts",
      "--out",
      join(work, "nope"),
      "bun-plan9-x64",
    ]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("unknown target bun-plan9-x64");
    const full = await run([
      process.execPath,
      "scripts/release.ts",
      "--out",
      releaseDir,
      "bun-linux-x64",
    ]);
    expect(full.code).toBe(1);
    expect(full.stderr).toContain("is not empty");
  });
});

// ------------------------------------------------------------------------------------------------
/** `Key=value` lines of a unit file, in order; comments separate. */
function parseUnit(text: string): { directives: Array<[string, string]>; comments: string[] } {
  const directives: Array<[string, string]> = [];
  const comments: string[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("#") || line.startsWith(";")) comments.push(line.replace(/^[#;]\s*/, ""));
    else if (line.includes("="))
      directives.push([line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]);
  }
  return { directives, comments };
}

describe("systemd unit", () => {
  const unitText = read("deploy/crm.service");
  const { directives, comments } = parseUnit(unitText);
  const all = (k: string): string[] => directives.filter(([key]) => key === k).map(([, v]) => v);
  const one = (k: string): string | undefined => all(k).at(-1);

  test("runs crm as user crm, checks the config first, reloads with SIGHUP", () => {
    expect(one("User")).toBe("crm");
    expect(one("DynamicUser")).toBeUndefined();
    expect(all("ExecStartPre")).toEqual(["/usr/local/bin/crm -t -config /etc/crm/config.yaml"]);
    expect(all("ExecStart")).toEqual(["/usr/local/bin/crm -config /etc/crm/config.yaml"]);
    expect(all("ExecReload")).toContain("/bin/kill -HUP $MAINPID");
    expect(all("ExecReload").at(-1)).toBe("/bin/kill -HUP $MAINPID");
    expect(one("Restart")).toBe("on-failure");
    expect(one("LimitNOFILE")).toBe("65536");
    expect(one("WantedBy")).toBe("multi-user.target");
  });

  test("TimeoutStopSec leaves room for shutdown_grace (default and config.example.yaml)", () => {
    const stop = one("TimeoutStopSec") ?? "";
    expect(stop).toMatch(/^\d+s?$/);
    const stopMs = parseInt(stop, 10) * 1000;
    const example = buildConfig(
      YAML.parse(read("config.example.yaml")),
      "config.example.yaml",
    ).config;
    for (const grace of [DEFAULT_TIMEOUTS.shutdownGraceMs, example.timeouts.shutdownGraceMs]) {
      expect(stopMs).toBeGreaterThan(grace);
      expect(stopMs).toBeLessThanOrEqual(grace + 30_000);
    }
  });

  test("hardening directives", () => {
    const expected: Record<string, string> = {
      NoNewPrivileges: "yes",
      ProtectSystem: "strict",
      ProtectHome: "yes",
      PrivateTmp: "yes",
      PrivateDevices: "yes",
      ProtectKernelTunables: "yes",
      ProtectKernelModules: "yes",
      ProtectKernelLogs: "yes",
      ProtectControlGroups: "yes",
      RestrictAddressFamilies: "AF_INET AF_INET6 AF_UNIX",
      RestrictNamespaces: "yes",
      LockPersonality: "yes",
      SystemCallArchitectures: "native",
      CapabilityBoundingSet: "CAP_NET_BIND_SERVICE",
      AmbientCapabilities: "CAP_NET_BIND_SERVICE",
      ReadOnlyPaths: "/etc/crm",
      StateDirectory: "crm",
      StateDirectoryMode: "0700",
    };
    for (const [k, v] of Object.entries(expected)) expect([k, one(k)]).toEqual([k, v]);
    // JavaScriptCore's JIT needs a writable+executable mapping.
    expect(one("MemoryDenyWriteExecute")).toBeUndefined();
    expect(comments.some((c) => c.startsWith("MemoryDenyWriteExecute"))).toBe(true);
    // :80/:443 for ACME need CAP_NET_BIND_SERVICE (granted); the opt-out is there, commented out.
    expect(comments).toContain("AmbientCapabilities=");
    expect(comments).toContain("CapabilityBoundingSet=");
  });

  test.skipIf(missingTools("systemd unit", ["systemd-analyze"]))(
    "systemd-analyze verify finds nothing to complain about",
    async () => {
      const analyze = Bun.which("systemd-analyze");
      if (analyze === null)
        throw new Error(
          "systemd-analyze not found: apt-get install systemd (it needs no running systemd)",
        );
      // verify checks that Exec binaries exist: point them at the built binary.
      const dir = join(work, "unit");
      mkdirSync(dir, { recursive: true });
      const unit = join(dir, "crm.service");
      writeFileSync(unit, unitText.replaceAll("/usr/local/bin/crm", crm));
      const v = await run([analyze, "verify", unit]);
      const about = (v.stdout + v.stderr).split("\n").filter((l) => l.includes("crm.service"));
      expect(about).toEqual([]);
      expect(v.code).toBe(0);
      // For information only: the exposure score (lower is better), if this systemd can do it offline.
      const s = await run([analyze, "security", "--offline=yes", "--no-pager", unit]);
      const score = /Overall exposure level for crm\.service: (.+)/.exec(s.stdout + s.stderr)?.[1];
      if (score) console.log(`systemd-analyze security: ${score}`);
    },
  );

  test("the ExecStartPre check accepts the config install.sh writes", async () => {
    const c = await run([crm, "-t", "-config", join(root, "config.example.yaml")]);
    expect(c.stderr).toBe("");
    expect(c.code).toBe(0);
  });
});

// ------------------------------------------------------------------------------------------------
describe("install.sh", () => {
  const script = join(root, "scripts/install.sh");
  const sh = Bun.which("dash") ?? "/bin/sh";
  const install = (
    target: string,
    args: string[],
    env: Record<string, string> = {},
  ): Promise<Run> =>
    run([sh, script, ...args], { env: { CRM_ROOT: target, CRM_SYSTEMD: "yes", ...env } });
  const listTree = (dir: string): string[] =>
    existsSync(dir) ? (readdirSync(dir, { recursive: true }) as string[]).sort() : [];

  test("is POSIX sh (and clean under shellcheck, when installed)", async () => {
    expect((await run([sh, "-n", script])).code).toBe(0);
    expect(readFileSync(script, "utf8")).toStartWith("#!/bin/sh\n");
    expect(readFileSync(script, "utf8")).toContain("\nset -eu\n");
    const shellcheck = Bun.which("shellcheck");
    if (shellcheck !== null) {
      const r = await run([shellcheck, "-s", "sh", script]);
      expect(r.stdout + r.stderr).toBe("");
      expect(r.code).toBe(0);
    }
  });

  test("first install creates binary, config, unit with the right modes; a second keeps the config", async () => {
    const target = join(work, "root1");
    const first = await install(target, [crm]);
    expect(first.stderr).toBe("");
    expect(first.code).toBe(0);
    expect(first.stdout).toContain("configuration OK");
    expect(first.stdout).toContain("systemctl daemon-reload && systemctl enable --now crm");

    const bin = join(target, "usr/local/bin/crm");
    const etc = join(target, "etc/crm");
    const config = join(etc, "config.yaml");
    const unit = join(target, "etc/systemd/system/crm.service");
    expect(mode(bin)).toBe(0o755);
    expect(Buffer.compare(readFileSync(bin), readFileSync(crm))).toBe(0);
    expect(mode(etc)).toBe(0o750);
    expect(mode(config)).toBe(0o640);
    expect(readFileSync(config, "utf8")).toBe(read("config.example.yaml"));
    expect(mode(unit)).toBe(0o644);
    expect(readFileSync(unit, "utf8")).toBe(read("deploy/crm.service"));
    expect(readFileSync(join(target, "usr/local/share/doc/crm/README.md"), "utf8")).toBe(
      read("README.md"),
    );
    expect(listTree(target).filter((p) => p.includes(".tmp."))).toEqual([]);

    // The operator edits the config; an upgrade must not touch it.
    const edited =
      read("config.example.yaml").replace('listen: "127.0.0.1:8080"', 'listen: "127.0.0.1:9090"') +
      "# local change\n";
    writeFileSync(config, edited);
    chmodSync(config, 0o640);
    const inode = statSync(bin).ino;
    const second = await install(target, [crm]);
    expect(second.code).toBe(0);
    expect(second.stdout).toContain(`kept existing ${config}`);
    expect(second.stdout).toContain("listen: 127.0.0.1:9090"); // crm -t ran on the kept config
    expect(readFileSync(config, "utf8")).toBe(edited);
    expect(mode(config)).toBe(0o640);
    // Replaced by rename, not rewritten in place: a running crm keeps its old file.
    expect(statSync(bin).ino).not.toBe(inode);
    expect(Buffer.compare(readFileSync(bin), readFileSync(crm))).toBe(0);
    expect(listTree(target).filter((p) => p.includes(".tmp."))).toEqual([]);
  });

  test("a config crm -t rejects fails the install, and is still kept", async () => {
    const target = join(work, "root-bad");
    mkdirSync(join(target, "etc/crm"), { recursive: true });
    writeFileSync(join(target, "etc/crm/config.yaml"), "log_level: loud\n");
    const r = await install(target, [crm]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('log_level: "loud" must be one of');
    expect(r.stderr).toContain("config check failed");
    expect(readFileSync(join(target, "etc/crm/config.yaml"), "utf8")).toBe("log_level: loud\n");
  });

  test("--dry-run changes nothing", async () => {
    const target = join(work, "root-dry");
    const r = await install(target, ["--dry-run", crm]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("would install:");
    expect(r.stdout).toContain("would write");
    expect(existsSync(target)).toBe(false);
  });

  test("missing, non-executable and non-crm binaries are refused, nothing installed", async () => {
    const target = join(work, "root-refused");
    const missing = await install(target, [join(work, "no-such-crm")]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("no-such-crm does not exist");

    const plain = join(work, "crm-not-executable");
    copyFileSync(crm, plain);
    chmodSync(plain, 0o644);
    const noexec = await install(target, [plain]);
    expect(noexec.code).toBe(1);
    expect(noexec.stderr).toContain("is not executable");

    const impostor = join(work, "impostor");
    writeFileSync(impostor, "#!/bin/sh\necho hello\n");
    chmodSync(impostor, 0o755);
    const other = await install(target, [impostor]);
    expect(other.code).toBe(1);
    expect(other.stderr).toContain("does not look like crm");

    const none = await install(target, []);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain("no BINARY given");
    expect(existsSync(target)).toBe(false);
  });

  test("from an unpacked release archive, and with no config.example.yaml anywhere", async () => {
    // The archive's own copy finds its config.example.yaml and crm.service beside the binary.
    const target = join(work, "root-archive");
    const fromArchive = await run(
      [sh, join(extracted, name, "scripts/install.sh"), join(extracted, name, "crm")],
      {
        env: { CRM_ROOT: target, CRM_SYSTEMD: "yes" },
      },
    );
    expect(fromArchive.code).toBe(0);
    expect(readFileSync(join(target, "etc/crm/config.yaml"), "utf8")).toBe(
      read("config.example.yaml"),
    );
    expect(existsSync(join(target, "etc/systemd/system/crm.service"))).toBe(true);

    // A lone binary and script: a minimal config that passes crm -t, and no unit to install.
    const lone = join(work, "lone");
    mkdirSync(lone);
    copyFileSync(crm, join(lone, "crm"));
    chmodSync(join(lone, "crm"), 0o755);
    copyFileSync(script, join(lone, "install.sh"));
    const target2 = join(work, "root-lone");
    const r = await run([sh, join(lone, "install.sh"), join(lone, "crm")], {
      env: { CRM_ROOT: target2, CRM_SYSTEMD: "yes" },
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("a built-in minimal config");
    expect(r.stdout).toContain("configuration OK");
    expect(r.stderr).toContain("systemd unit not installed");
    expect(mode(join(target2, "etc/crm/config.yaml"))).toBe(0o640);
  });
});

// ------------------------------------------------------------------------------------------------
interface Instruction {
  cmd: string;
  args: string;
}

/** Dockerfile instructions with line continuations joined and comments dropped. */
function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  let pending = "";
  for (const raw of text.split("\n")) {
    const line = raw.trimEnd();
    if (pending === "" && /^\s*#/.test(line)) continue;
    if (line.endsWith("\\")) {
      pending += line.slice(0, -1) + " ";
      continue;
    }
    const full = (pending + line).trim();
    pending = "";
    if (full === "") continue;
    const m = /^(\S+)\s*(.*)$/.exec(full);
    if (m) out.push({ cmd: (m[1] ?? "").toUpperCase(), args: m[2] ?? "" });
  }
  return out;
}

describe("Dockerfile", () => {
  const text = read("Dockerfile");
  const ins = parseDockerfile(text);
  const froms = ins.filter((i) => i.cmd === "FROM");
  const finalStageAt = ins.lastIndexOf(froms.at(-1) as Instruction);
  const buildStage = ins.slice(0, finalStageAt);
  const finalStage = ins.slice(finalStageAt);
  const entrypoint = JSON.parse(
    finalStage.find((i) => i.cmd === "ENTRYPOINT")?.args ?? "null",
  ) as string[];

  test("two stages: node build stage, distroless glibc runtime", () => {
    expect(froms.map((f) => f.args)).toEqual([
      "--platform=$BUILDPLATFORM node:20-bookworm-slim AS build",
      "gcr.io/distroless/base-nossl-debian12:nonroot",
    ]);
  });

  test("the runtime base has every library the binary links", async () => {
    // base-nossl carries glibc only: no libstdc++, libgcc_s or libssl.
    const ldd = await run(["ldd", crm]);
    expect(ldd.code).toBe(0);
    const libs = [...ldd.stdout.matchAll(/^\s*(\S+)/gm)].map((m) =>
      (m[1] ?? "").replace(/^.*\//, ""),
    );
    const glibc =
      /^(linux-vdso\.so\.1|libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux-x86-64\.so\.2)$/;
    expect(libs.filter((l) => !glibc.test(l))).toEqual([]);
  });

  test("ENTRYPOINT runs the binary the build stage produced, with the copied config", () => {
    expect(entrypoint).toEqual(["/crm", "-config", "/etc/crm/config.yaml"]);
    const copies = finalStage.filter((i) => i.cmd === "COPY").map((i) => i.args.split(/\s+/));
    expect(copies).toContainEqual(["--from=build", "/out/crm", "/crm"]);
    expect(copies).toContainEqual(["deploy/container-config.yaml", "/etc/crm/config.yaml"]);
    // The build stage writes /out/crm from dist/crm-linux-${arch}, the file build.ts makes for
    // bun-linux-${arch}, for both architectures the RUN maps TARGETARCH to.
    const buildRun = buildStage
      .filter((i) => i.cmd === "RUN")
      .map((i) => i.args)
      .join("\n");
    expect(buildRun).toContain('npm run build -- "bun-linux-${arch}"');
    expect(buildRun).toContain('cp "dist/crm-linux-${arch}" /out/crm');
    for (const [docker, arch] of [
      ["amd64", "x64"],
      ["arm64", "arm64"],
    ] as const) {
      expect(buildRun).toContain(`${docker}) arch=${arch}`);
      expect(TARGETS.find((t) => t.target === `bun-linux-${arch}`)?.file).toBe(`crm-linux-${arch}`);
    }
  });

  test("build-stage COPY sources exist and are not in .dockerignore; heavy dirs are", () => {
    const ignore = read(".dockerignore")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith("#"));
    for (const must of ["node_modules", "dist", ".git"]) expect(ignore).toContain(must);
    const sources = ins
      .filter((i) => i.cmd === "COPY" && !i.args.startsWith("--from"))
      .flatMap((i) => i.args.split(/\s+/).slice(0, -1));
    expect(sources.length).toBeGreaterThan(3);
    for (const s of sources) {
      expect([s, existsSync(join(root, s))]).toEqual([s, true]);
      const top = s.replace(/\/$/, "").split("/")[0] ?? "";
      expect([s, ignore.includes(top)]).toEqual([s, false]);
    }
    // package.json is imported by src/main.ts (the version), so it must be in the build stage.
    expect(sources).toContain("package.json");
  });

  test("the image config listens on :8080, matches EXPOSE and passes crm -t", async () => {
    const file = join(root, "deploy/container-config.yaml");
    const { config, warnings } = buildConfig(YAML.parse(readFileSync(file, "utf8")), file);
    expect(warnings).toEqual([]);
    expect(config.listen.map((l) => [l.hostname, l.port])).toEqual([["0.0.0.0", 8080]]);
    expect(config.allowPrivateNetworks).toBe(false);
    expect(finalStage.find((i) => i.cmd === "EXPOSE")?.args).toBe("8080");
    const check = await run([crm, "-t", "-config", file]);
    expect(check.stderr).toBe("");
    expect(check.code).toBe(0);
    expect(check.stdout).toContain("listen: 0.0.0.0:8080");
  });

  test("runs as a numeric non-root user (Kubernetes runAsNonRoot can verify it)", () => {
    const user = finalStage.filter((i) => i.cmd === "USER").at(-1)?.args ?? "";
    expect(user).toMatch(/^\d+(:\d+)?$/);
    expect(Number(user.split(":")[0])).toBeGreaterThan(0);
    expect(finalStage.some((i) => i.cmd === "HEALTHCHECK")).toBe(false);
  });
});

// ------------------------------------------------------------------------------------------------
type Doc = Record<string, any>;

describe("Kubernetes manifests", () => {
  const dir = join(root, "deploy/kubernetes");
  const files = readdirSync(dir)
    .filter((f) => f.endsWith(".yaml") || f.endsWith(".yml"))
    .sort();
  const texts = Object.fromEntries(files.map((f) => [f, readFileSync(join(dir, f), "utf8")]));
  const docs: Array<{ file: string; doc: Doc }> = [];
  for (const f of files) {
    for (const d of YAML.parseAllDocuments(texts[f] as string)) {
      if (d.errors.length > 0) throw new Error(`${f}: ${d.errors[0]?.message}`);
      const js = d.toJS() as Doc | null;
      if (js) docs.push({ file: f, doc: js });
    }
  }
  const kind = (k: string): Doc => {
    const found = docs.filter((d) => d.doc.kind === k);
    if (found.length !== 1) throw new Error(`expected one ${k}, found ${found.length}`);
    return (found[0] as { doc: Doc }).doc;
  };
  const kustomization = kind("Kustomization");
  const configMap = kind("ConfigMap");
  const deployment = kind("Deployment");
  const service = kind("Service");
  const hpa = kind("HorizontalPodAutoscaler");
  const pod = deployment.spec.template.spec;
  const container = pod.containers[0];
  const crmConfigText = configMap.data["config.yaml"] as string;
  const crmConfig = buildConfig(YAML.parse(crmConfigText), "configmap");
  const containerPort = (port: number | string): number =>
    typeof port === "number"
      ? port
      : container.ports.find((p: Doc) => p.name === port)?.containerPort;

  test("every file parses; kinds and apiVersions; kustomization lists the rest", () => {
    const kinds = Object.fromEntries(
      docs.map((d) => [d.file, `${d.doc.apiVersion} ${d.doc.kind}`]),
    );
    expect(kinds).toEqual({
      "configmap.yaml": "v1 ConfigMap",
      "deployment.yaml": "apps/v1 Deployment",
      "service.yaml": "v1 Service",
      "hpa.yaml": "autoscaling/v2 HorizontalPodAutoscaler",
      "pdb.yaml": "policy/v1 PodDisruptionBudget",
      "kustomization.yaml": "kustomize.config.k8s.io/v1beta1 Kustomization",
    });
    expect([...kustomization.resources].sort()).toEqual(
      files.filter((f) => f !== "kustomization.yaml"),
    );
    // The image kustomize substitutes is this version of the Dockerfile's image.
    expect(kustomization.images).toEqual([
      { name: container.image, newName: expect.any(String), newTag: version },
    ]);
  });

  test("the ConfigMap's config passes crm's validator and listens on the container port", async () => {
    expect(crmConfig.warnings).toEqual([]);
    const c = crmConfig.config;
    expect(c.listen.map((l) => [l.hostname, l.port])).toEqual([["0.0.0.0", 8080]]);
    expect(c.allowPrivateNetworks).toBe(false);
    expect(container.ports.map((p: Doc) => p.containerPort)).toEqual([8080]);
    // And the binary agrees.
    const f = join(work, "configmap-config.yaml");
    writeFileSync(f, crmConfigText);
    const check = await run([crm, "-t", "-config", f]);
    expect(check.stderr).toBe("");
    expect(check.code).toBe(0);
  });

  test("Deployment: replicas, rollout, probes on /healthz, grace period beyond shutdown_grace", () => {
    expect(deployment.spec.replicas).toBe(2);
    expect(deployment.spec.strategy.rollingUpdate.maxUnavailable).toBe(0);
    expect(deployment.spec.selector.matchLabels).toEqual(deployment.spec.template.metadata.labels);
    for (const probe of [container.readinessProbe, container.livenessProbe]) {
      expect(probe.httpGet.path).toBe("/healthz");
      expect(containerPort(probe.httpGet.port)).toBe(8080);
    }
    const preStopMs = (container.lifecycle?.preStop?.sleep?.seconds ?? 0) * 1000;
    expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan(
      crmConfig.config.timeouts.shutdownGraceMs + preStopMs,
    );
    // The image's ENTRYPOINT picks the config; the manifest must not replace it.
    expect(container.command).toBeUndefined();
    expect(container.args).toBeUndefined();
  });

  test("Deployment: locked-down security context, resources, config mounted from the ConfigMap", () => {
    expect(pod.securityContext.runAsNonRoot).toBe(true);
    expect(pod.securityContext.runAsUser).toBeGreaterThan(0);
    expect(pod.securityContext.seccompProfile).toEqual({ type: "RuntimeDefault" });
    expect(pod.automountServiceAccountToken).toBe(false);
    const sc = container.securityContext;
    expect(sc.allowPrivilegeEscalation).toBe(false);
    expect(sc.readOnlyRootFilesystem).toBe(true);
    expect(sc.capabilities.drop).toEqual(["ALL"]);
    expect(sc.capabilities.add).toBeUndefined();
    for (const r of ["cpu", "memory"]) expect(container.resources.requests[r]).toBeDefined();
    expect(container.resources.limits.memory).toBeDefined();

    const mount = container.volumeMounts.find((m: Doc) => m.mountPath === "/etc/crm");
    expect(mount.readOnly).toBe(true);
    const volume = pod.volumes.find((v: Doc) => v.name === mount.name);
    expect(volume.configMap.name).toBe(configMap.metadata.name);
    // Mounted as /etc/crm/config.yaml: the path in the Dockerfile's ENTRYPOINT.
    expect(volume.configMap.items).toEqual([{ key: "config.yaml", path: "config.yaml" }]);
    expect(read("Dockerfile")).toContain('ENTRYPOINT ["/crm", "-config", "/etc/crm/config.yaml"]');
  });

  test("Service and HPA point at the Deployment", () => {
    expect(service.spec.type).toBe("ClusterIP");
    expect(service.spec.selector).toEqual(deployment.spec.template.metadata.labels);
    expect(service.spec.ports.map((p: Doc) => [p.port, containerPort(p.targetPort)])).toEqual([
      [8080, 8080],
    ]);
    expect(hpa.spec.scaleTargetRef).toEqual({
      apiVersion: "apps/v1",
      kind: "Deployment",
      name: deployment.metadata.name,
    });
    expect([hpa.spec.minReplicas, hpa.spec.maxReplicas]).toEqual([2, 10]);
    expect(hpa.spec.metrics).toEqual([
      {
        type: "Resource",
        resource: { name: "cpu", target: { type: "Utilization", averageUtilization: 70 } },
      },
    ]);
    // Utilization is relative to the request, so there must be one.
    expect(container.resources.requests.cpu).toBeDefined();
  });

  test("no Secrets, passwords or credentials in the manifests", () => {
    expect(docs.filter((d) => d.doc.kind === "Secret")).toEqual([]);
    expect(crmConfig.config.access.users.size).toBe(0);
    for (const r of crmConfig.config.mirror.registries.values()) expect(r.password).toBeNull();
    for (const [f, t] of Object.entries(texts)) {
      const code = t
        .split("\n")
        .filter((l) => !l.trim().startsWith("#"))
        .join("\n");
      expect([
        f,
        /\b(password|passwd|password_file|secret|token)\b|\$argon2|\$2[aby]\$|BEGIN [A-Z ]*PRIVATE KEY/i.test(
          code,
        ),
      ]).toEqual([f, false]);
    }
  });
});
