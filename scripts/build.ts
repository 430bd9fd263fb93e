/**
 * `npm run build`: one self-contained crm binary per platform in dist/, plus SHA256SUMS.
 * `--minify --bytecode --format=esm` starts in ~30 ms instead of ~80 (bun.md, Single binary);
 * ESM because bytecode defaults to CommonJS, where top-level await fails.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";

export const TARGETS = [
  { target: "bun-linux-x64", file: "crm-linux-x64" },
  { target: "bun-linux-arm64", file: "crm-linux-arm64" },
  { target: "bun-darwin-x64", file: "crm-darwin-x64" },
  { target: "bun-darwin-arm64", file: "crm-darwin-arm64" },
  { target: "bun-windows-x64", file: "crm-windows-x64.exe" },
] as const;

const root = resolve(import.meta.dir, "..");

/** Compiles one target; throws with the compiler's output on failure. */
export async function buildTarget(target: string, outfile: string): Promise<void> {
  const p = Bun.spawn(
    [
      process.execPath,
      "build",
      join(root, "src/main.ts"),
      "--compile",
      "--minify",
      "--bytecode",
      "--format=esm",
      `--target=${target}`,
      "--outfile",
      outfile,
    ],
    { cwd: root, stdout: "pipe", stderr: "pipe" },
  );
  const [out, err, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  if (code !== 0)
    throw new Error(`bun build --target=${target} failed (exit ${code}):\n${out}${err}`);
}

export function sha256File(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

if (import.meta.main) {
  const dist = join(root, "dist");
  mkdirSync(dist, { recursive: true });
  const only = process.argv.slice(2);
  const sums: string[] = [];
  for (const t of TARGETS) {
    if (only.length > 0 && !only.includes(t.target)) continue;
    const out = join(dist, t.file);
    const started = performance.now();
    await buildTarget(t.target, out);
    sums.push(`${sha256File(out)}  ${basename(out)}`);
    console.log(`built ${out} in ${Math.round(performance.now() - started)} ms`);
  }
  writeFileSync(join(dist, "SHA256SUMS"), sums.join("\n") + "\n");
  console.log(`wrote ${join(dist, "SHA256SUMS")}`);
}
