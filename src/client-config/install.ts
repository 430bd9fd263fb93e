/**
 * `--write`: each planned file is written whole (temporary file, then rename, so a runtime never
 * reads half a config), and a file it replaces is first copied to `<file>.crm-backup-<time>`.
 * A file that already has the planned content is left alone. A symlinked destination is written
 * through to its target (the link is the operator's layout, e.g. a config repository), and the
 * replaced file's mode is kept: a 0600 daemon.json may hold credentials. The temporary file has
 * a random name and is created exclusively, so nothing planted beside the target is followed.
 */
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  constants,
  copyFileSync,
  lstatSync,
  mkdirSync,
  readlinkSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { dirname, resolve } from "node:path";
import { readIfExists, type PlannedFile } from "./plan.ts";

export interface Installed {
  path: string;
  state: "created" | "replaced" | "unchanged";
  backup: string | null;
}

/** The file a write to `path` must replace: the end of its symlinks, even a dangling one. */
function writeTarget(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    try {
      if (lstatSync(path).isSymbolicLink()) return resolve(dirname(path), readlinkSync(path));
    } catch {
      // Nothing at path: it is created.
    }
    return path;
  }
}

/** Copies `from` to the first free `<base>`, `<base>-1`, …: an earlier backup is never overwritten. */
function backupOnce(from: string, base: string): string {
  for (let i = 0; ; i++) {
    const name = i === 0 ? base : `${base}-${i}`;
    try {
      copyFileSync(from, name, constants.COPYFILE_EXCL);
      return name;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST" || i >= 999) throw e;
    }
  }
}

export function installFiles(files: readonly PlannedFile[], now = new Date()): Installed[] {
  const stamp = now.toISOString().replace(/[-:]/g, "").replace(/\..*$/, "");
  return files.map((f) => {
    const old = readIfExists(f.path);
    if (old === f.content) return { path: f.path, state: "unchanged", backup: null };
    const target = writeTarget(f.path);
    mkdirSync(dirname(target), { recursive: true });
    const before = old === null ? null : statSync(target);
    const backup = old === null ? null : backupOnce(target, `${f.path}.crm-backup-${stamp}`);
    // Beside the target, so the rename stays within one file system. A random name and 'wx'
    // (create, fail if anything is there): a planted file or symlink is never written through,
    // chmodded or chowned (the directory may be writable by others, and a pid is guessable).
    const tmp = `${target}.crm-tmp-${randomBytes(12).toString("hex")}`;
    writeFileSync(tmp, f.content, { mode: 0o600, flag: "wx" });
    try {
      chmodSync(tmp, before === null ? 0o644 : before.mode & 0o7777);
      if (
        before !== null &&
        (before.uid !== process.getuid?.() || before.gid !== process.getgid?.())
      ) {
        try {
          chownSync(tmp, before.uid, before.gid);
        } catch {
          // Not root: the file becomes ours, as any editor run by this user would make it.
        }
      }
      renameSync(tmp, target);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw e;
    }
    return { path: f.path, state: old === null ? "created" : "replaced", backup };
  });
}
