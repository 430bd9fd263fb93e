/**
 * Renewal scheduling against a real CA (pebble) that issues one-hour certificates: a
 * renew_before longer than that lifetime must not re-order in a loop, and an existing account
 * without an e-mail renews (no empty account update).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { staticResolver } from "../src/net/resolver.ts";
import { startCrm } from "./support/crm.ts";
import { startPebble, type Pebble } from "./support/pebble.ts";
import { reservePorts } from "./support/ports.ts";
import { missingTools } from "./support/tools.ts";

const skip = missingTools("ACME with pebble", ["pebble", "pebble-challtestsrv"]);
const HOUR = 3600_000;

describe.skipIf(skip)("ACME renewal with pebble (one-hour certificates)", () => {
  let pebble: Pebble;
  let work: string;
  let plainPort: number;
  let tlsPort: number;
  const resolver = staticResolver({ "crm.test": "127.0.0.1" });
  const config = (stateDir: string, acme: Record<string, unknown>) => ({
    listen: [`127.0.0.1:${tlsPort}`, { address: `127.0.0.1:${plainPort}`, tls: false }],
    tls: {
      acme: {
        domains: ["crm.test"],
        directory: pebble.directory,
        ca_bundle: pebble.caBundlePath,
        state_dir: stateDir,
        ...acme,
      },
    },
    allowed_hosts: ["crm.test"],
  });

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "crm-acme-renew-"));
    // Held while pebble picks its own ports, so it cannot be handed crm's.
    const held = reservePorts(3);
    [plainPort, tlsPort] = held.ports as [number, number];
    pebble = await startPebble({
      httpPort: plainPort,
      tlsPort: held.ports[2] as number,
      validityPeriod: 3600,
    });
    held.release();
  }, 60_000);

  afterAll(async () => {
    await pebble?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  test("renew_before 2h on a one-hour certificate: one order, a warning, the renewal late in the lifetime but before expiry", async () => {
    const crm = await startCrm(
      config(join(work, "loop"), { email: "ops@crm.test", renew_before: "2h" }),
      "info",
      resolver,
    );
    try {
      await crm.waitLog(/ACME: certificate issued/, 60_000);
      await Bun.sleep(1500);
      expect(
        crm.logs.filter((l) => /ACME: (certificate issued|certificate renewed|renewing)/.test(l))
          .length,
      ).toBe(1);
      expect(
        crm.logs.some((l) =>
          /WARN +ACME: tls\.acme\.renew_before is not shorter than the certificate's lifetime/.test(
            l,
          ),
        ),
      ).toBe(true);
      const s = crm.server.certificates.status()[0];
      expect(s?.source).toBe("acme");
      expect(s?.nextAttemptAt).toBeGreaterThan(Date.now() + HOUR / 2);
      expect(s?.nextAttemptAt).toBeLessThan(s?.notAfter ?? 0);
    } finally {
      await crm.stop();
    }
  }, 90_000);

  test("an existing account without an e-mail renews (no account update that changes nothing)", async () => {
    const crm = await startCrm(config(join(work, "no-email"), {}), "info", resolver);
    try {
      await crm.waitLog(/ACME: certificate issued/, 60_000);
      const first = crm.server.certificates.status()[0]?.notAfter;
      await Bun.sleep(1100);
      // The account key is now known to the CA: the renewal looks the account up.
      expect(await crm.server.certificates.renewNow()).toBe(true);
      await crm.waitLog(/ACME: certificate renewed/);
      expect(crm.server.certificates.status()[0]?.lastError).toBeNull();
      expect(crm.server.certificates.status()[0]?.notAfter).toBeGreaterThan(first ?? 0);
    } finally {
      await crm.stop();
    }
  }, 90_000);

  test("an e-mail added later is sent as one contact update, and renewals keep working", async () => {
    const dir = join(work, "email-later");
    const a = await startCrm(config(dir, {}), "info", resolver);
    try {
      await a.waitLog(/ACME: certificate issued/, 60_000);
    } finally {
      await a.stop();
    }
    const b = await startCrm(config(dir, { email: "ops@crm.test" }), "info", resolver);
    try {
      expect(await b.server.certificates.renewNow()).toBe(true);
      expect(await b.server.certificates.renewNow()).toBe(true);
    } finally {
      await b.stop();
    }
  }, 90_000);
});
