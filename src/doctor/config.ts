/**
 * The `doctor:` config section: which public image `crm doctor` asks each registry for (one
 * HEAD, and the manifest it names to find a blob). Defaults are small official images; a
 * registry without one (a private upstream) needs an entry, or its manifest check is skipped.
 *
 *   doctor:
 *     images:
 *       docker.io: library/busybox:latest
 *       registry.example.com: team/base:1
 */
import type { Checker } from "../config/checker.ts";
import { CHECK_IMAGES } from "../client-config/image-ref.ts";

export interface DoctorConfig {
  /** registry name → `repository:tag` (or `@digest`) as the registry knows it. */
  images: ReadonlyMap<string, string>;
}

const REF =
  /^[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|@[a-z0-9]+:[a-f0-9]{32,})$/;

/** The built-in image per registry, without the registry name. */
export function defaultImages(): Map<string, string> {
  const out = new Map<string, string>();
  for (const [registry, full] of Object.entries(CHECK_IMAGES))
    out.set(registry, full.slice(registry.length + 1));
  return out;
}

export function buildDoctorConfig(c: Checker, raw: unknown): DoctorConfig {
  const d = c.object("doctor", raw, ["images"]) ?? {};
  const images = defaultImages();
  const given = c.object(
    "doctor.images",
    d.images,
    Object.keys((d.images as Record<string, unknown> | undefined) ?? {}),
  );
  for (const [registry, v] of Object.entries(given ?? {})) {
    if (typeof v !== "string" || !REF.test(v))
      c.fail(
        `doctor.images.${registry}`,
        v,
        'must be "repository:tag" as the registry names it, e.g. "library/busybox:latest"',
      );
    else images.set(registry.toLowerCase(), v);
  }
  return { images };
}
