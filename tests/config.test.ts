import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "../src/cli.ts";
import { buildConfig, findConfigFile, loadConfigFile } from "../src/config/load.ts";
import { DEFAULT_ALLOWED_HOSTS } from "../src/config/types.ts";
import { parseListen } from "../src/config/listen.ts";
import { ConfigError, ConfigErrors } from "../src/errors.ts";
import { MAX_WORD, nearest } from "../src/config/did-you-mean.ts";
import { parseDuration } from "../src/config/duration.ts";

const dir = mkdtempSync(join(tmpdir(), "crm-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The messages of every validation error for a raw config. */
function errorsOf(raw: unknown): string[] {
  try {
    buildConfig(raw, "t.yaml");
  } catch (e) {
    if (e instanceof ConfigErrors) return e.errors.map((x) => x.message);
    throw e;
  }
  return [];
}

describe("defaults", () => {
  const { config, warnings } = buildConfig({}, "t.yaml");
  test("an empty file is a working config", () => {
    expect(warnings).toEqual([]);
    expect(config.listen).toEqual([
      { hostname: "0.0.0.0", port: 8080, source: ":8080", tls: null, proxyProtocol: false },
    ]);
    expect(config.allowedHosts).toEqual([...DEFAULT_ALLOWED_HOSTS]);
    expect(config.allowedPorts).toEqual([80, 443]);
    expect(config.insecureTls).toBe(false);
    expect(config.logLevel).toBe("info");
    expect(config.mitm.enabled).toBe(false);
    expect(config.timeouts).toEqual({
      headerMs: 10_000,
      connectMs: 10_000,
      idleMs: 300_000,
      shutdownGraceMs: 30_000,
      upstreamHeaderMs: 60_000,
    });
  });
  test("the default allow-list is exactly the documented one", () => {
    expect([...DEFAULT_ALLOWED_HOSTS].sort()).toEqual(
      [
        "docker.io",
        "registry-1.docker.io",
        "auth.docker.io",
        "production.cloudflare.docker.com",
        "production.cloudfront.docker.com",
        "gcr.io",
        "k8s.io",
        "registry.k8s.io",
        "docker.elastic.co",
        "ghcr.io",
      ].sort(),
    );
  });
  test("the config is frozen", () => {
    expect(Object.isFrozen(config)).toBe(true);
  });
  test("config.example.yaml spells out the defaults", () => {
    const ex = loadConfigFile(join(import.meta.dir, "..", "config.example.yaml"));
    expect(ex.warnings).toEqual([]);
    expect(ex.config.allowedHosts).toEqual(config.allowedHosts);
    expect(ex.config.timeouts).toEqual(config.timeouts);
  });
});

describe("each key", () => {
  test.each([
    [":8080", "0.0.0.0", 8080],
    ["8080", "0.0.0.0", 8080],
    [8080, "0.0.0.0", 8080],
    ["127.0.0.1:9000", "127.0.0.1", 9000],
    ["[::]:8080", "::", 8080],
    ["[::1]:0", "::1", 0],
    ["localhost:81", "localhost", 81],
  ])("listen %p", (v, hostname, port) => {
    const a = parseListen(v);
    expect(typeof a).toBe("object");
    if (typeof a === "object") expect([a.hostname, a.port]).toEqual([hostname, port]);
  });
  test("listen may be a list", () => {
    expect(
      buildConfig({ listen: ["127.0.0.1:1", "[::1]:2"] }, "t").config.listen.map((l) => l.port),
    ).toEqual([1, 2]);
  });
  test("allowed_hosts replaces the defaults", () => {
    expect(buildConfig({ allowed_hosts: ["example.test"] }, "t").config.allowedHosts).toEqual([
      "example.test",
    ]);
  });
  test("allowed_ports", () => {
    expect(buildConfig({ allowed_ports: [443, 5000] }, "t").config.allowedPorts).toEqual([
      443, 5000,
    ]);
  });
  test("insecure_tls", () => {
    expect(buildConfig({ insecure_tls: true }, "t").config.insecureTls).toBe(true);
  });
  test.each(["debug", "INFO", "Warn", "error"])("log_level %p in any case", (l) => {
    expect(buildConfig({ log_level: l }, "t").config.logLevel).toBe(l.toLowerCase() as "debug");
  });
  test("timeouts accept durations in any unit, and bare seconds", () => {
    const t = buildConfig(
      {
        timeouts: {
          header: "500ms",
          connect: "3s",
          idle: "5m",
          shutdown_grace: "1h",
          upstream_header: 20,
        },
      },
      "t",
    ).config.timeouts;
    expect(t).toEqual({
      headerMs: 500,
      connectMs: 3000,
      idleMs: 300_000,
      shutdownGraceMs: 3_600_000,
      upstreamHeaderMs: 20_000,
    });
  });
  test("mitm is parsed and validated", () => {
    const m = buildConfig(
      {
        mitm: {
          enabled: true,
          ca_cert_path: "/x/ca.crt",
          ca_key_path: "/x/ca.key",
          hosts: ["a.test"],
        },
      },
      "t",
    ).config.mitm;
    expect(m).toEqual({
      enabled: true,
      caCertPath: "/x/ca.crt",
      caKeyPath: "/x/ca.key",
      hosts: ["a.test"],
    });
  });
  test("durations", () => {
    expect(parseDuration("1m30s")).toBe(90_000);
    expect(parseDuration("2h")).toBe(7_200_000);
    expect(parseDuration("10")).toBe(10_000);
    expect(typeof parseDuration("10 minutes")).toBe("string");
    expect(typeof parseDuration("-1s")).toBe("string");
    expect(typeof parseDuration(true)).toBe("string");
  });
});

describe("every error names the key path, the value and the rule", () => {
  test.each([
    [
      { allowed_hosts: ["docker.io", "a.test", "b.test", "^("] },
      'allowed_hosts[3]: invalid regular expression "^(": ',
    ],
    [{ allowed_hosts: "docker.io" }, 'allowed_hosts: "docker.io" must be a list'],
    [{ allowed_hosts: ["bad host"] }, 'allowed_hosts[0]: "bad host" is not a valid host name'],
    [{ allowed_hosts: [42] }, "allowed_hosts[0]: 42 must be a non-empty string"],
    [
      { allowed_ports: [443, 70000] },
      "allowed_ports[1]: 70000 must be a port number from 1 to 65535",
    ],
    [{ allowed_ports: 443 }, "allowed_ports: 443 must be a list of ports"],
    [{ listen: "localhost:http" }, 'listen: "localhost:http" must be a port or address'],
    [{ listen: "99999" }, 'listen: "99999" port must be between 0 and 65535'],
    [{ insecure_tls: "yes" }, 'insecure_tls: "yes" must be true or false'],
    [{ log_level: "verbose" }, 'log_level: "verbose" must be one of debug, info, warn, error'],
    [
      { timeouts: { idle: "forever" } },
      'timeouts.idle: "forever" must be a duration such as "30s"',
    ],
    [{ timeouts: { header: "0s" } }, 'timeouts.header: "0s" must be greater than zero'],
    [{ timeouts: "30s" }, 'timeouts: "30s" must be a mapping'],
    [
      { mitm: { enabled: true } },
      "mitm.ca_cert_path: missing; it is required when mitm.enabled is true",
    ],
    [{ mitm: { enabled: "on" } }, 'mitm.enabled: "on" must be true or false'],
    [{ mitm: { hosts: ["(("] } }, 'mitm.hosts[0]: invalid regular expression "(("'],
    [
      { mirror: { default_registry: "nope.io" } },
      'mirror.default_registry: "nope.io" must be one of the mirrored registries',
    ],
    [
      { mirror: { registries: { "quay.io": "ftp://quay.io" } } },
      'mirror.registries.quay.io.upstream: "ftp://quay.io" must be an https:// (or http://) URL',
    ],
    [
      {
        mirror: {
          registries: {
            "quay.io": { upstream: "https://quay.io", password_file: "/nonexistent/pass" },
          },
        },
      },
      "mirror.registries.quay.io.password_file: cannot read /nonexistent/pass: ENOENT",
    ],
  ])("%j", (raw, message) => {
    const errs = errorsOf(raw);
    expect(errs.some((e) => e.startsWith(message))).toBe(true);
  });

  test("all errors are reported at once", () => {
    expect(errorsOf({ log_level: "x", insecure_tls: 1, allowed_ports: ["a"] })).toHaveLength(3);
  });

  test("unknown keys are errors naming the key, its path and the nearest known key", () => {
    const errs = errorsOf({
      allowed_host: ["docker.io"],
      timeouts: { idel: "1m" },
      mirror: { rule: [] },
      access: { clientz: [] },
      mitm: { enabled: false, zzzzzz: 1 },
    });
    expect(errs).toContain(
      'allowed_host: unknown key "allowed_host" at the top level (did you mean allowed_hosts?); crm refuses to run with a setting it does not understand',
    );
    expect(
      errs.some((e) =>
        e.startsWith('timeouts.idel: unknown key "idel" in timeouts (did you mean timeouts.idle?)'),
      ),
    ).toBe(true);
    expect(
      errs.some((e) =>
        e.startsWith(
          'access.clientz: unknown key "clientz" in access (did you mean access.clients?)',
        ),
      ),
    ).toBe(true);
    // Nothing close: the section's keys are listed instead.
    expect(
      errs.some((e) =>
        e.startsWith(
          'mitm.zzzzzz: unknown key "zzzzzz" in mitm (known keys: enabled, ca_cert_path, ca_key_path, hosts)',
        ),
      ),
    ).toBe(true);
    expect(errs.some((e) => e.startsWith('mirror.rule: unknown key "rule" in mirror'))).toBe(true);
    expect(errs).toHaveLength(5);
  });

  test("a pathologically long unknown key gets no suggestion (the distance is quadratic), only the known keys", () => {
    // A long candidate one edit away: matched below the cap, never computed above it.
    expect(nearest("a".repeat(MAX_WORD), ["a".repeat(MAX_WORD - 1)])).toBe(
      "a".repeat(MAX_WORD - 1),
    );
    expect(nearest("a".repeat(MAX_WORD + 1), ["a".repeat(MAX_WORD)])).toBeNull();
    const errs = errorsOf({ ["m".repeat(1_000_000)]: 1 });
    expect(errs).toHaveLength(1);
    expect(errs[0]).toStartWith(
      `${"m".repeat(100)}: unknown key "${"m".repeat(100)}" at the top level (known keys: `,
    );
  });

  test("errors and unknown keys are reported together, and no placeholder is shown as a value", () => {
    const errs = errorsOf({
      log_level: "loud",
      tls: { cert_path: "c.pem" },
      typo_key: 1,
      access: { users: { alice: "plain-password" } },
    });
    expect(errs).toContain('log_level: "loud" must be one of debug, info, warn, error');
    expect(errs.some((e) => e.startsWith('typo_key: unknown key "typo_key"'))).toBe(true);
    expect(errs).toContain("tls: needs both cert_path and key_path; missing: key_path");
    expect(errs.some((e) => e.startsWith("access.users.alice: must be a password hash"))).toBe(
      true,
    );
    expect(errs.join("\n")).not.toMatch(/"<[a-z ]+>"|plain-password/);
    const creds = errorsOf({
      mirror: {
        default_registry: "quay.io",
        registries: { "quay.io": { upstream: "https://quay.io", username: "robot" } },
      },
    });
    expect(creds).toEqual([
      "mirror.registries.quay.io: username and password (or password_file) must be given together; password is missing",
    ]);
  });

  test("a registry password never appears in an error", () => {
    const errs = errorsOf({
      mirror: { registries: { "quay.io": "https://robot:s3cret@quay.io" } },
    });
    expect(errs.join("\n")).not.toContain("s3cret");
    expect(errs.join("\n")).toContain("must not carry user:password");
  });
});

describe("finding and parsing the file", () => {
  test("config.yaml, then config.yml, then config.json", () => {
    const d = mkdtempSync(join(dir, "find-"));
    writeFileSync(join(d, "config.json"), "{}");
    expect(findConfigFile(null, d)).toBe(join(d, "config.json"));
    writeFileSync(join(d, "config.yml"), "");
    expect(findConfigFile(null, d)).toBe(join(d, "config.yml"));
    writeFileSync(join(d, "config.yaml"), "");
    expect(findConfigFile(null, d)).toBe(join(d, "config.yaml"));
  });
  test("none found names the three files and the flag", () => {
    const d = mkdtempSync(join(dir, "none-"));
    expect(() => findConfigFile(null, d)).toThrow(
      /config\.yaml, config\.yml, config\.json.*-config PATH/,
    );
  });
  test("an explicit path that does not exist", () => {
    expect(() => findConfigFile("nope.yaml", dir)).toThrow(ConfigError);
  });
  test("JSON with durations as strings", () => {
    const f = join(dir, "c.json");
    writeFileSync(f, JSON.stringify({ listen: 9000, timeouts: { idle: "2m" } }));
    expect(loadConfigFile(f).config.timeouts.idleMs).toBe(120_000);
  });
  test("YAML syntax error", () => {
    const f = join(dir, "bad.yaml");
    writeFileSync(f, "listen: [unclosed\n");
    expect(() => loadConfigFile(f)).toThrow(/is not valid YAML/);
  });
  test("duplicate YAML keys are an error, not a silent override", () => {
    const f = join(dir, "dup.yaml");
    writeFileSync(f, "listen: 1\nlisten: 2\n");
    expect(() => loadConfigFile(f)).toThrow(/not valid YAML/);
  });
  test("JSON syntax error", () => {
    const f = join(dir, "bad.json");
    writeFileSync(f, "{");
    expect(() => loadConfigFile(f)).toThrow(/is not valid JSON/);
  });
});

describe("command line", () => {
  test.each([
    [["-config", "a.yaml"], { kind: "run", configPath: "a.yaml", check: false }],
    [["-c", "a.yaml"], { kind: "run", configPath: "a.yaml", check: false }],
    [["--config", "a.yaml", "-t"], { kind: "run", configPath: "a.yaml", check: true }],
    [["--config=a.yaml", "--check"], { kind: "run", configPath: "a.yaml", check: true }],
    [[], { kind: "run", configPath: null, check: false }],
    [["--version"], { kind: "version" }],
    [["--help"], { kind: "help" }],
    [
      ["ca", "init", "--out", "/tmp/x", "--days", "30", "--force"],
      { kind: "ca-init", outDir: "/tmp/x", cn: null, days: 30, force: true },
    ],
  ])("%j", (argv, cmd) => {
    expect(parseArgs(argv)).toEqual(cmd as ReturnType<typeof parseArgs>);
  });
  test.each([[["-config"]], [["--bogus"]], [["ca", "init", "--days", "x"]], [["ca", "burn"]]])(
    "%j is an error",
    (argv) => {
      expect(parseArgs(argv).kind).toBe("error");
    },
  );
});

describe("crm -t output", () => {
  test("an unknown key stops crm -t and start-up with every error and every unknown key", async () => {
    const f = join(dir, "typo.yaml");
    writeFileSync(
      f,
      'listen: "127.0.0.1:0"\nlog_level: loud\nallowed_host: [a.test]\nmirror:\n  registries: { "quay.io": "https://quay.io" }\n  default_registry: quay.io\n  path_prefx: /x\n',
    );
    const main = join(import.meta.dir, "..", "src", "main.ts");
    for (const args of [
      ["-t", "-c", f],
      ["-c", f],
    ]) {
      const p = Bun.spawn([process.execPath, main, ...args], { stdout: "pipe", stderr: "pipe" });
      const [code, stdout, stderr] = await Promise.all([
        p.exited,
        new Response(p.stdout).text(),
        new Response(p.stderr).text(),
      ]);
      expect(code).toBe(1);
      expect(stdout).not.toContain("configuration OK");
      expect(stderr).toContain("3 errors");
      expect(stderr).toContain('log_level: "loud" must be one of');
      expect(stderr).toContain(
        'allowed_host: unknown key "allowed_host" at the top level (did you mean allowed_hosts?)',
      );
      expect(stderr).toContain(
        'mirror.path_prefx: unknown key "path_prefx" in mirror (did you mean mirror.path_prefix?)',
      );
    }
  });

  test("describes the effective config and never prints a password", async () => {
    const { describeConfig } = await import("../src/config/describe.ts");
    const { config } = buildConfig(
      {
        mirror: {
          default_registry: "quay.io",
          registries: {
            "quay.io": { upstream: "https://quay.io", username: "robot", password: "sup3r-s3cret" },
          },
        },
      },
      "t.yaml",
    );
    const text = describeConfig(config);
    expect(text).toContain("quay.io -> https://quay.io/ (credentials: robot, password set)");
    expect(text).toContain("allowed_hosts (10)");
    expect(text).not.toContain("sup3r-s3cret");
  });
});
