/**
 * `--write`: each planned file is written whole (temporary file, then rename, so a runtime never
 * reads half a config), and a file it replaces is first copied to `<file>.crm-backup-<time>`.
 * A file that already has the planned content is left alone.
 */
import { copyFileSync, mkdirSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { readIfExists, type PlannedFile } from "./plan.ts";

export interface Installed {
  path: string;
  state: "created" | "replaced" | "unchanged";
  backup: string | null;
}

export function installFiles(files: readonly PlannedFile[], now = new Date()): Installed[] {
  const stamp = now.toISOString().replace(/[-:]/g, "").replace(/\..*$/, "");
  return files.map((f) => {
    const old = readIfExists(f.path);
    if (old === f.content) return { path: f.path, state: "unchanged", backup: null };
    mkdirSync(dirname(f.path), { recursive: true });
    let backup: string | null = null;
    if (old !== null) {
      backup = `${f.path}.crm-backup-${stamp}`;
      copyFileSync(f.path, backup);
    }
    const tmp = `${f.path}.crm-tmp-${process.pid}`;
    writeFileSync(tmp, f.content, { mode: 0o644 });
    renameSync(tmp, f.path);
    return { path: f.path, state: old === null ? "created" : "replaced", backup };
  });
}
