/**
 * What `crm client-config` would write: files with their full new content, and notes for the
 * operator. Built from the options and the files as they are now, without touching the disk, so
 * printing and `--write` show and install exactly the same bytes.
 */
import { existsSync, readFileSync } from "node:fs";

export interface PlannedFile {
  path: string;
  content: string;
}

export interface Plan {
  files: PlannedFile[];
  notes: string[];
}

/** A config that cannot be merged as it is; the message says what to fix. */
export class PlanError extends Error {
  override name = "PlanError";
}

export function readIfExists(path: string): string | null {
  if (!existsSync(path)) return null;
  try {
    return readFileSync(path, "utf8");
  } catch (cause) {
    throw new PlanError(
      `cannot read ${path}: ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}`,
      { cause },
    );
  }
}
