/** The `listen` item objects and the `tls` / `tls.acme` section: forms, defaults, every refusal. */
import { describe, expect, test } from "bun:test";
import { buildConfig } from "../src/config/load.ts";
import { defaultStateDir, LETS_ENCRYPT, LETS_ENCRYPT_STAGING } from "../src/tls/config.ts";

/** Each error is one "  - path: message" line of the thrown ConfigErrors. */
const refuses = (raw: unknown, message: string): void => {
  expect(() => buildConfig(raw, "/etc/crm/t.yaml")).toThrow(
    new RegExp(`\\n  - ${message.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`),
  );
};

const acme = (extra: Record<string, unknown> = {}) => ({
  listen: [":443", { address: ":80", tls: false }],
  tls: { acme: { domains: ["crm.example.com"], ...extra } },
});

describe("listen items", () => {
  test("strings, ports and objects mix; tls and proxy_protocol per listener", () => {
    const { config } = buildConfig(
      {
        listen: [
          ":443",
          8080,
          { address: "127.0.0.1:80", tls: false, proxy_protocol: true },
          "/run/crm.sock",
        ],
        access: { trusted_proxies: ["10.0.0.0/8"] },
      },
      "t",
    );
    expect(
      config.listen.map((l) => [l.hostname, l.port, l.tls, l.proxyProtocol, l.unix ?? null]),
    ).toEqual([
      ["0.0.0.0", 443, null, false, null],
      ["0.0.0.0", 8080, null, false, null],
      ["127.0.0.1", 80, false, true, null],
      ["", 0, null, false, "/run/crm.sock"],
    ]);
  });
  test.each([
    [{ listen: [{ tls: false }] }, "listen[0].address: null is required"],
    [{ listen: [{ address: "x:y" }] }, 'listen[0].address: "x:y" must be a port or address'],
    [{ listen: [{ address: ":80", tls: "no" }] }, 'listen[0].tls: "no" must be true or false'],
    [
      { listen: [{ address: ":80", proxy_protocol: 1 }] },
      "listen[0].proxy_protocol: 1 must be true or false",
    ],
    [{ listen: { address: ":443", tls: true } }, "listen[0].tls: true needs a tls section"],
  ])("%j", (raw, message) => {
    refuses(raw, message);
  });
  test("an unknown key in a listen item is an error naming it, with the nearest known key", () => {
    refuses(
      { listen: [{ address: ":80", tsl: false }] },
      'listen[0].tsl: unknown key "tsl" in listen[0] (did you mean listen[0].tls?)',
    );
    refuses(
      { tls: { acme: { domains: ["crm.example.com"], stat_dir: "/x" } } },
      'tls.acme.stat_dir: unknown key "stat_dir" in tls.acme (did you mean tls.acme.state_dir?)',
    );
  });
});

describe("tls.acme", () => {
  test("defaults: Let's Encrypt production, http-01, state_dir from $STATE_DIRECTORY or /var/lib/crm", () => {
    const { config, warnings } = buildConfig(acme(), "/etc/crm/t.yaml");
    expect(warnings).toEqual([]);
    const a = config.tls?.acme;
    expect(a?.directory).toBe(LETS_ENCRYPT);
    expect(a?.challenge).toBe("http-01");
    expect(a?.renewBeforeMs).toBeNull();
    expect(a?.stateDir).toBe(defaultStateDir());
    expect(defaultStateDir({ STATE_DIRECTORY: "/var/lib/crm" })).toBe("/var/lib/crm");
    expect(defaultStateDir({})).toBe("/var/lib/crm");
    expect(config.tls?.redirectHttp).toBe(false);
  });
  test("staging shorthand, relative paths resolve next to the config, renew_before", () => {
    const { config } = buildConfig(
      acme({
        directory: "staging",
        ca_bundle: "ca.pem",
        state_dir: "state",
        renew_before: "30d",
        email: "a@b.c",
      }),
      "/etc/crm/t.yaml",
    );
    expect(config.tls?.acme).toEqual({
      domains: ["crm.example.com"],
      email: "a@b.c",
      directory: LETS_ENCRYPT_STAGING,
      caBundlePath: "/etc/crm/ca.pem",
      stateDir: "/etc/crm/state",
      challenge: "http-01",
      renewBeforeMs: 30 * 86400_000,
    });
  });
  test.each([
    [acme({ domains: [] }), "tls.acme.domains: [] must list the DNS names"],
    [acme({ domains: ["*.example.com"] }), 'tls.acme.domains[0]: "*.example.com" is a wildcard'],
    [acme({ domains: ["10.0.0.1"] }), 'tls.acme.domains[0]: "10.0.0.1" must be a DNS name'],
    [acme({ domains: ["a.example.com", "A.example.com"] }), "tls.acme.domains: "],
    [acme({ email: "nobody" }), 'tls.acme.email: "nobody" must be an e-mail address'],
    [
      acme({ directory: "http://ca.test/dir" }),
      'tls.acme.directory: "http://ca.test/dir" must be an https:// URL',
    ],
    [
      acme({ challenge: "tls-alpn-01" }),
      'tls.acme.challenge: "tls-alpn-01" is not supported: Bun\'s TLS listener cannot pick a certificate by ALPN',
    ],
    [acme({ challenge: "dns-01" }), 'tls.acme.challenge: "dns-01" must be http-01'],
    [acme({ renew_before: "0s" }), 'tls.acme.renew_before: "0s" must be greater than zero'],
    [
      { tls: { cert_path: "a", key_path: "b", acme: { domains: ["crm.example.com"] } } },
      "tls: takes either cert_path/key_path or acme, not both",
    ],
    [{ tls: { cert_path: "a" } }, "tls: needs both cert_path and key_path; missing: key_path"],
    [
      { listen: ["/run/crm.sock"], tls: { acme: { domains: ["crm.example.com"] } } },
      'listen[0]: "/run/crm.sock" a unix socket cannot serve the ACME certificate',
    ],
  ])("%j", (raw, message) => {
    refuses(raw, message);
  });
  test("warnings when no plain listener can take http-01, or none is on :80", () => {
    expect(
      buildConfig({ listen: ":443", tls: { acme: { domains: ["crm.example.com"] } } }, "t")
        .warnings,
    ).toContain(
      'tls.acme: http-01 needs a plain listener that the CA reaches on port 80; add {address: ":80", tls: false} to listen',
    );
    expect(
      buildConfig(
        {
          listen: [":443", { address: ":8080", tls: false }],
          tls: { acme: { domains: ["crm.example.com"] } },
        },
        "t",
      ).warnings[0],
    ).toMatch(/no plain listener is on :80/);
  });
  test("the file form keeps working, with the same TLS-for-every-listener default", () => {
    const { config } = buildConfig(
      { listen: [":8443"], tls: { cert_path: "c.pem", key_path: "k.pem" } },
      "/etc/crm/t.yaml",
    );
    expect(config.tls).toEqual({
      certPath: "/etc/crm/c.pem",
      keyPath: "/etc/crm/k.pem",
      acme: null,
      redirectHttp: false,
    });
    expect(config.listen[0]?.tls).toBeNull();
  });
});
