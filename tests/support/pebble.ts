/**
 * A real RFC 8555 test CA for the ACME tests: Debian's `pebble`, with `pebble-challtestsrv` as
 * its only DNS server (every name answers 127.0.0.1, nothing is forwarded, so no public name is
 * ever resolved). Both run from a temp dir with their own config on free loopback ports; pebble
 * validates http-01 against `httpPort` and tls-alpn-01 against `tlsPort`, which the test points
 * at crm's listeners.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { BIND_FAILED, freePorts, startOnFreePorts } from "./ports.ts";
import { makeLeaf, makeTestCa } from "./tls.ts";

export interface Pebble {
  /** ACME directory URL (https, served with `caBundle`). */
  directory: string;
  /** PEM of the CA that signed pebble's own API certificate (for `tls.acme.ca_bundle`). */
  caBundlePath: string;
  /** PEM of pebble's issuing root, fetched from its management port. */
  root(): Promise<string>;
  /** Everything pebble printed (its log names each new order). */
  output(): string;
  /** challtestsrv management calls: add-a, add-caa, set-servfail, ... */
  dns(path: string, body: Record<string, unknown>): Promise<void>;
  stop(): Promise<void>;
}

async function waitPort(
  port: number,
  proc: Subprocess,
  what: string,
  out: () => string,
): Promise<void> {
  await waitUntilServed(proc, what, port, out, async () => {
    const s = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
    s.end();
    return true;
  });
}

/**
 * Waits until `served()` says this process answers on `port`. A bare connect cannot tell: a port
 * handed out free may be taken by another process first (a fixture started at the same time
 * and handed the same port), and the one that lost the bind then exits, or for challtestsrv only logs it.
 */
async function waitUntilServed(
  proc: Subprocess,
  what: string,
  port: number,
  out: () => string,
  served: () => Promise<boolean>,
): Promise<void> {
  const end = Date.now() + 15_000;
  for (;;) {
    if (await served().catch(() => false)) return;
    // challtestsrv logs a failed bind and keeps running: waiting longer would not help.
    if (proc.exitCode !== null || Date.now() > end || BIND_FAILED.test(out()))
      throw new Error(`${what} did not start on port ${port}:\n${out()}`);
    await Bun.sleep(50);
  }
}

function collect(stream: ReadableStream<Uint8Array>, into: string[]): void {
  const dec = new TextDecoder();
  void (async () => {
    for await (const chunk of stream) into.push(dec.decode(chunk));
  })();
}

interface Running {
  acmePort: number;
  mgmtPort: number;
  dnsMgmtPort: number;
  /** Everything both printed. */
  out: string[];
  stop(): Promise<void>;
}

/** Starts challtestsrv and pebble on fresh ports; throws (both stopped) if either does not come up. */
async function launch(
  dir: string,
  apiCa: string,
  opts: { httpPort: number; tlsPort: number; validityPeriod?: number },
): Promise<Running> {
  const out: string[] = [];
  const [acmePort, mgmtPort, dnsPort, dnsMgmtPort] = freePorts(4) as [
    number,
    number,
    number,
    number,
  ];
  const configPath = join(dir, `pebble-config-${acmePort}.json`);
  writeFileSync(
    configPath,
    JSON.stringify({
      pebble: {
        listenAddress: `127.0.0.1:${acmePort}`,
        managementListenAddress: `127.0.0.1:${mgmtPort}`,
        certificate: join(dir, "cert.pem"),
        privateKey: join(dir, "key.pem"),
        httpPort: opts.httpPort,
        tlsPort: opts.tlsPort,
        ocspResponderURL: "",
        externalAccountBindingRequired: false,
        ...(opts.validityPeriod ? { certificateValidityPeriod: opts.validityPeriod } : {}),
      },
    }),
  );
  const dns = Bun.spawn(
    [
      "pebble-challtestsrv",
      "-dns01",
      `127.0.0.1:${dnsPort}`,
      "-http01",
      "",
      "-https01",
      "",
      "-tlsalpn01",
      "",
      "-management",
      `127.0.0.1:${dnsMgmtPort}`,
      "-defaultIPv4",
      "127.0.0.1",
      "-defaultIPv6",
      "",
    ],
    { stdout: "pipe", stderr: "pipe", stdin: "ignore" },
  );
  collect(dns.stdout, out);
  collect(dns.stderr, out);
  // NOSLEEP: validate at once instead of after a random 0-15 s; NONCEREJECT=0: no spurious badNonce.
  const pebble = Bun.spawn(
    ["pebble", "-config", configPath, "-dnsserver", `127.0.0.1:${dnsPort}`, "-strict=false"],
    {
      stdout: "pipe",
      stderr: "pipe",
      stdin: "ignore",
      env: {
        ...process.env,
        PEBBLE_VA_NOSLEEP: "1",
        PEBBLE_WFE_NONCEREJECT: "0",
        PEBBLE_AUTHZREUSE: "0",
      },
    },
  );
  collect(pebble.stdout, out);
  collect(pebble.stderr, out);
  const stop = async (): Promise<void> => {
    pebble.kill();
    dns.kill();
    await Promise.all([pebble.exited, dns.exited]);
  };
  try {
    const log = (): string => out.join("");
    // Only this challtestsrv logs the setting it is sent; only this pebble holds the key of this run's API CA.
    const setDefault = `Set default IPv4 address for DNS A queries to "127.0.0.1"`;
    await waitUntilServed(dns, "pebble-challtestsrv", dnsMgmtPort, log, async () => {
      const r = await fetch(`http://127.0.0.1:${dnsMgmtPort}/set-default-ipv4`, {
        method: "POST",
        body: JSON.stringify({ ip: "127.0.0.1" }),
        proxy: false,
        signal: AbortSignal.timeout(2000),
      } as RequestInit);
      await r.arrayBuffer();
      return r.ok && log().includes(setDefault);
    });
    const ownTls = (url: string) => async (): Promise<boolean> => {
      const r = await fetch(url, {
        tls: { ca: apiCa },
        proxy: false,
        signal: AbortSignal.timeout(2000),
      } as RequestInit);
      await r.arrayBuffer();
      return r.ok;
    };
    await waitUntilServed(
      pebble,
      "pebble",
      acmePort,
      log,
      ownTls(`https://127.0.0.1:${acmePort}/dir`),
    );
    await waitUntilServed(
      pebble,
      "pebble management",
      mgmtPort,
      log,
      ownTls(`https://127.0.0.1:${mgmtPort}/roots/0`),
    );
    await waitPort(dnsPort, dns, "pebble-challtestsrv DNS", log);
    // challtestsrv keeps running when its DNS server cannot bind and only logs it (UDP too).
    await Bun.sleep(50);
    if (BIND_FAILED.test(log()))
      throw new Error(`pebble-challtestsrv could not bind 127.0.0.1:${dnsPort}:\n${log()}`);
  } catch (e) {
    await stop();
    throw e;
  }
  return { acmePort, mgmtPort, dnsMgmtPort, out, stop };
}

export async function startPebble(opts: {
  httpPort: number;
  tlsPort: number;
  validityPeriod?: number;
}): Promise<Pebble> {
  const dir = mkdtempSync(join(tmpdir(), "crm-pebble-"));
  const ca = await makeTestCa("pebble API test CA");
  const leaf = await makeLeaf(ca, ["localhost", "127.0.0.1"]);
  writeFileSync(join(dir, "api-ca.pem"), ca.cert);
  writeFileSync(join(dir, "cert.pem"), leaf.cert);
  writeFileSync(join(dir, "key.pem"), leaf.key);
  // The DNS port is also bound over UDP, which a TCP reservation cannot hold.
  let proc: Running;
  try {
    proc = await startOnFreePorts("pebble", () => launch(dir, ca.cert, opts));
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const { acmePort, mgmtPort, dnsMgmtPort, out } = proc;
  const stop = async (): Promise<void> => {
    await proc.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  return {
    directory: `https://127.0.0.1:${acmePort}/dir`,
    caBundlePath: join(dir, "api-ca.pem"),
    async root() {
      const r = await fetch(`https://127.0.0.1:${mgmtPort}/roots/0`, {
        tls: { ca: ca.cert },
        proxy: false,
      } as RequestInit);
      if (!r.ok) throw new Error(`pebble /roots/0: ${r.status}`);
      return r.text();
    },
    output: () => out.join(""),
    async dns(path, body) {
      const r = await fetch(`http://127.0.0.1:${dnsMgmtPort}${path}`, {
        method: "POST",
        body: JSON.stringify(body),
        proxy: false,
      } as RequestInit);
      if (!r.ok) throw new Error(`challtestsrv ${path}: ${r.status} ${await r.text()}`);
    },
    stop,
  };
}
