/**
 * A real RFC 8555 test CA for the ACME tests: Debian's `pebble`, with `pebble-challtestsrv` as
 * its only DNS server (every name answers 127.0.0.1, nothing is forwarded, so no public name is
 * ever resolved). Both run from a temp dir with their own config on free loopback ports; pebble
 * validates http-01 against `httpPort` and tls-alpn-01 against `tlsPort`, which the test points
 * at crm's listeners.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
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

/** A TCP port that was free a moment ago on 127.0.0.1 (pebble takes ports only from its config). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function waitPort(port: number, proc: Subprocess, what: string, out: () => string): Promise<void> {
  const end = Date.now() + 15_000;
  for (;;) {
    try {
      const s = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
      s.end();
      return;
    } catch {
      if (proc.exitCode !== null || Date.now() > end) throw new Error(`${what} did not start on port ${port}:\n${out()}`);
      await Bun.sleep(50);
    }
  }
}

function collect(stream: ReadableStream<Uint8Array>, into: string[]): void {
  const dec = new TextDecoder();
  void (async () => {
    for await (const chunk of stream) into.push(dec.decode(chunk));
  })();
}

export async function startPebble(opts: { httpPort: number; tlsPort: number; validityPeriod?: number }): Promise<Pebble> {
  const dir = mkdtempSync(join(tmpdir(), "crm-pebble-"));
  const ca = await makeTestCa("pebble API test CA");
  const leaf = await makeLeaf(ca, ["localhost", "127.0.0.1"]);
  writeFileSync(join(dir, "api-ca.pem"), ca.cert);
  writeFileSync(join(dir, "cert.pem"), leaf.cert);
  writeFileSync(join(dir, "key.pem"), leaf.key);
  const [acmePort, mgmtPort, dnsPort, dnsMgmtPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
  writeFileSync(
    join(dir, "pebble-config.json"),
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
  const out: string[] = [];
  const dns = Bun.spawn(
    ["pebble-challtestsrv", "-dns01", `127.0.0.1:${dnsPort}`, "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", `127.0.0.1:${dnsMgmtPort}`, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
    { stdout: "pipe", stderr: "pipe", stdin: "ignore" },
  );
  collect(dns.stdout, out);
  collect(dns.stderr, out);
  // NOSLEEP: validate at once instead of after a random 0-15 s; NONCEREJECT=0: no spurious badNonce.
  const pebble = Bun.spawn(["pebble", "-config", join(dir, "pebble-config.json"), "-dnsserver", `127.0.0.1:${dnsPort}`, "-strict=false"], {
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
    env: { ...process.env, PEBBLE_VA_NOSLEEP: "1", PEBBLE_WFE_NONCEREJECT: "0", PEBBLE_AUTHZREUSE: "0" },
  });
  collect(pebble.stdout, out);
  collect(pebble.stderr, out);
  const stop = async (): Promise<void> => {
    pebble.kill();
    dns.kill();
    await Promise.all([pebble.exited, dns.exited]);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitPort(dnsMgmtPort, dns, "pebble-challtestsrv", () => out.join(""));
    await waitPort(acmePort, pebble, "pebble", () => out.join(""));
    await waitPort(mgmtPort, pebble, "pebble management", () => out.join(""));
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    directory: `https://127.0.0.1:${acmePort}/dir`,
    caBundlePath: join(dir, "api-ca.pem"),
    async root() {
      const r = await fetch(`https://127.0.0.1:${mgmtPort}/roots/0`, { tls: { ca: ca.cert }, proxy: false } as RequestInit);
      if (!r.ok) throw new Error(`pebble /roots/0: ${r.status}`);
      return r.text();
    },
    output: () => out.join(""),
    async dns(path, body) {
      const r = await fetch(`http://127.0.0.1:${dnsMgmtPort}${path}`, { method: "POST", body: JSON.stringify(body), proxy: false } as RequestInit);
      if (!r.ok) throw new Error(`challtestsrv ${path}: ${r.status} ${await r.text()}`);
    },
    stop,
  };
}
