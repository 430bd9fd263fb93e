/**
 * System tools some tests need (docker-registry, skopeo, systemd-analyze, nginx, pebble, containerd,
 * dockerd, chromium). In CI (CI=true) a missing tool fails a test that says what to install, so CI never goes green by skipping.
 * Elsewhere those tests are skipped with a note, so `npm ci && npm test` works on a machine with
 * only Node and npm. CRM_SKIP_E2E=1 skips them anywhere.
 */
import { test } from "bun:test";

export const APT_HINT =
  "apt-get install docker-registry skopeo systemd curl openssl nginx-light libnginx-mod-stream containerd docker.io chromium pebble";

/** Returns true when the suite must be skipped; registers a failing test when CI lacks a tool. */
export function missingTools(suite: string, tools: readonly string[]): boolean {
  const missing = tools.filter((t) => Bun.which(t) === null);
  if (missing.length === 0) return false;
  if (process.env.CRM_SKIP_E2E === "1") return true;
  if (process.env.CI === "true" || process.env.CI === "1") {
    test(`${suite}: prerequisites`, () => {
      throw new Error(`missing ${missing.join(", ")} (Debian: ${APT_HINT}); .ci/run installs them`);
    });
  } else {
    console.warn(
      `[skip] ${suite}: missing ${missing.join(", ")} (Debian: ${APT_HINT}); CI runs these`,
    );
  }
  return true;
}
