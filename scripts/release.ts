/**
 * `npm run release`: every target of scripts/build.ts, packaged for download in dist/release/:
 *
 *   crm-<version>-<os>-<arch>[.exe]          the bare binary
 *   crm-<version>-<os>-<arch>.tar.gz         crm-<version>-<os>-<arch>/{crm, README.md,
 *                                            config.example.yaml, deploy/crm.service,
 *                                            scripts/install.sh}
 *   crm-<version>-windows-x64.zip            crm.exe, README.md, config.example.yaml
 *                                            (a .tar.gz when `zip` is not installed)
 *   SHA256SUMS                               over all of the above (`sha256sum -c SHA256SUMS`)
 *
 * Usage: bun scripts/release.ts [--out DIR] [TARGET...]
 *   TARGET   names from build.ts (bun-linux-x64, ...); default all. CRM_RELEASE_TARGETS=a,b also works.
 *   --out    output directory (default dist/release, emptied first; another DIR must be empty).
 *
 * Archives are reproducible: sorted members, owner 0:0, mtimes from SOURCE_DATE_EPOCH (default:
 * the last commit's time), gzip without a timestamp. Needs `tar` and `gzip`; `zip` is optional.
 */
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { TARGETS, buildTarget, sha256File } from "./build.ts";

const root = resolve(import.meta.dir, "..");

export interface ReleaseOptions {
  /** Output directory; default dist/release. */
  out?: string;
  /** build.ts target names; default all. */
  targets?: readonly string[];
  log?: (line: string) => void;
}

export interface ReleaseArtifact {
  target: string;
  /** The bare binary in the output directory. */
  binary: string;
  archive: string;
}

/** crm-0.1.0-linux-x64 for bun-linux-x64. */
export function releaseName(version: string, target: string): string {
  return `crm-${version}-${target.replace(/^bun-/, "")}`;
}

interface Member {
  /** Path inside the archive's top directory. */
  path: string;
  /** Source file. */
  from: string;
  mode: number;
}

function members(target: string, binary: string): Member[] {
  const windows = target.includes("windows");
  const list: Member[] = [
    { path: windows ? "crm.exe" : "crm", from: binary, mode: 0o755 },
    { path: "README.md", from: join(root, "README.md"), mode: 0o644 },
    { path: "config.example.yaml", from: join(root, "config.example.yaml"), mode: 0o644 },
  ];
  if (!windows) {
    list.push({ path: "deploy/crm.service", from: join(root, "deploy/crm.service"), mode: 0o644 });
    list.push({ path: "scripts/install.sh", from: join(root, "scripts/install.sh"), mode: 0o755 });
  }
  return list;
}

async function exec(cmd: string[], cwd: string): Promise<string> {
  const p = Bun.spawn(cmd, { cwd, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  if (code !== 0) throw new Error(`${cmd.join(" ")} failed (exit ${code}):\n${out}${err}`);
  return out;
}

/** The build.ts target that runs on this machine. */
function hostTarget(): string {
  const os = process.platform === "win32" ? "windows" : process.platform;
  return `bun-${os}-${process.arch}`;
}

function hasCommand(name: string): boolean {
  return Bun.which(name) !== null;
}

async function sourceDateEpoch(): Promise<number> {
  const env = process.env.SOURCE_DATE_EPOCH;
  if (env !== undefined && /^\d+$/.test(env)) return Number(env);
  try {
    const out = (await exec(["git", "log", "-1", "--format=%ct"], root)).trim();
    if (/^\d+$/.test(out)) return Number(out);
  } catch {
    // Not a git checkout (a source tarball): fall through.
  }
  return Math.floor(Date.now() / 1000);
}

/** GNU tar can sort members and fix owners itself; other tars get the plain form. */
async function tarFlags(epoch: number): Promise<string[]> {
  let gnu = false;
  try {
    gnu = (await exec(["tar", "--version"], root)).includes("GNU tar");
  } catch {
    gnu = false;
  }
  return gnu
    ? [
        "--sort=name",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        `--mtime=@${epoch}`,
        "--format=gnu",
      ]
    : [];
}

async function tarGz(
  stage: string,
  top: string,
  archive: string,
  flags: readonly string[],
): Promise<void> {
  const tar = Bun.spawn(["tar", ...flags, "-cf", "-", top], {
    cwd: stage,
    stdout: "pipe",
    stderr: "pipe",
  });
  const gzip = Bun.spawn(["gzip", "-n"], {
    stdin: tar.stdout,
    stdout: Bun.file(archive),
    stderr: "pipe",
  });
  const [tarErr, gzErr, tarCode, gzCode] = await Promise.all([
    new Response(tar.stderr).text(),
    new Response(gzip.stderr).text(),
    tar.exited,
    gzip.exited,
  ]);
  if (tarCode !== 0 || gzCode !== 0)
    throw new Error(
      `packing ${archive} failed: tar exit ${tarCode}, gzip exit ${gzCode}\n${tarErr}${gzErr}`,
    );
}

function prepareOut(out: string, isDefault: boolean): void {
  if (existsSync(out)) {
    if (isDefault) rmSync(out, { recursive: true, force: true });
    else if (readdirSync(out).length > 0)
      throw new Error(`${out} is not empty; give an empty or new directory with --out`);
  }
  mkdirSync(out, { recursive: true });
}

/** Builds, packs and checksums; returns what it made. */
export async function release(opts: ReleaseOptions = {}): Promise<ReleaseArtifact[]> {
  const log = opts.log ?? ((line: string) => console.log(line));
  const version = (
    JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string }
  ).version;
  const wanted =
    opts.targets && opts.targets.length > 0 ? opts.targets : TARGETS.map((t) => t.target);
  const unknown = wanted.filter((w) => !TARGETS.some((t) => t.target === w));
  if (unknown.length > 0)
    throw new Error(
      `unknown target ${unknown.join(", ")}; known: ${TARGETS.map((t) => t.target).join(", ")}`,
    );
  for (const tool of ["tar", "gzip"])
    if (!hasCommand(tool)) throw new Error(`${tool} is needed to pack the release archives`);
  const zip = hasCommand("zip");

  const out = resolve(opts.out ?? join(root, "dist/release"));
  prepareOut(out, opts.out === undefined);
  const epoch = await sourceDateEpoch();
  const flags = await tarFlags(epoch);
  const stage = mkdtempSync(join(tmpdir(), "crm-release-"));
  const artifacts: ReleaseArtifact[] = [];
  try {
    for (const t of TARGETS) {
      if (!wanted.includes(t.target)) continue;
      const name = releaseName(version, t.target);
      const windows = t.target.includes("windows");
      const binary = join(out, name + (windows ? ".exe" : ""));
      const started = performance.now();
      await buildTarget(t.target, binary);
      chmodSync(binary, 0o755);
      if (t.target === hostTarget()) {
        const v = (await exec([binary, "--version"], root)).trim();
        if (!v.startsWith(`crm ${version} `))
          throw new Error(
            `${binary} --version printed ${JSON.stringify(v)}, expected crm ${version}`,
          );
      }

      const top = join(stage, name);
      for (const m of members(t.target, binary)) {
        const dest = join(top, m.path);
        mkdirSync(dirname(dest), { recursive: true });
        copyFileSync(m.from, dest);
        chmodSync(dest, m.mode);
      }
      // Directories and files alike get the same mtime, so non-GNU tar and zip are stable too.
      const stamp = (dir: string): void => {
        for (const e of readdirSync(dir, { withFileTypes: true })) {
          const p = join(dir, e.name);
          if (e.isDirectory()) stamp(p);
          utimesSync(p, epoch, epoch);
        }
      };
      stamp(top);
      utimesSync(top, epoch, epoch);

      let archive: string;
      if (windows && zip) {
        archive = join(out, `${name}.zip`);
        // -X: no extra attributes (uid/gid, extended timestamps); entries in sorted order.
        const files = await exec(["find", name, "-print"], stage);
        const sorted = files.split("\n").filter(Boolean).sort();
        await exec(["zip", "-X", "-q", archive, ...sorted], stage);
      } else {
        archive = join(out, `${name}.tar.gz`);
        await tarGz(stage, name, archive, flags);
      }
      artifacts.push({ target: t.target, binary, archive });
      log(`${t.target}: ${archive} (${Math.round(performance.now() - started)} ms)`);
    }
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }

  const files = artifacts.flatMap((a) => [a.binary, a.archive]).sort();
  const sums = files.map((f) => `${sha256File(f)}  ${f.slice(out.length + 1)}`);
  writeFileSync(join(out, "SHA256SUMS"), sums.join("\n") + "\n");
  log(`wrote ${join(out, "SHA256SUMS")} (${files.length} files)`);
  return artifacts;
}

function parseCli(argv: readonly string[]): ReleaseOptions {
  const opts: { out?: string; targets: string[] } = { targets: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === "--out" || a === "-o") {
      const v = argv[++i];
      if (!v) throw new Error("--out needs a directory");
      opts.out = v;
    } else if (a.startsWith("--out=")) opts.out = a.slice("--out=".length);
    else if (a === "--help" || a === "-h") {
      console.log(
        "usage: bun scripts/release.ts [--out DIR] [TARGET...]   (targets: " +
          TARGETS.map((t) => t.target).join(", ") +
          ")",
      );
      process.exit(0);
    } else if (a.startsWith("-")) throw new Error(`unknown option ${a}`);
    else opts.targets.push(a);
  }
  const env = process.env.CRM_RELEASE_TARGETS;
  if (opts.targets.length === 0 && env)
    opts.targets = env
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
  return opts;
}

if (import.meta.main) {
  try {
    await release(parseCli(process.argv.slice(2)));
  } catch (e) {
    console.error(`release: ${(e as Error).message}`);
    process.exit(1);
  }
}
