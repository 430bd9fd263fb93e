/**
 * Issue 21, defect 6: the plain listener beside ACME admits every address for the CA's
 * validators. Those outside access.clients may reach only the challenge route, so they get their
 * own small connection budget and a short head timeout, outside max_connections, and a proxy
 * request from them is refused before any password is checked.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CHALLENGE_ONLY } from "../src/tls/challenge-budget.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { freePorts } from "./support/ports.ts";
import { sendFrom } from "./support/raw.ts";

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "crm-acme-strangers-"));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

async function start(
  extra: Record<string, unknown> = {},
): Promise<{ crm: TestCrm; plainPort: number }> {
  const [plainPort, tlsPort, deadCa] = freePorts(3) as [number, number, number];
  const crm = await startCrm(
    {
      listen: [`127.0.0.1:${tlsPort}`, { address: `127.0.0.1:${plainPort}`, tls: false }],
      tls: {
        acme: {
          domains: ["crm.test"],
          email: "a@crm.test",
          directory: `https://127.0.0.1:${deadCa}/dir`,
          state_dir: join(work, `s-${plainPort}`),
        },
      },
      access: {
        clients: ["127.0.0.1/32"],
        users: { alice: await Bun.password.hash("pw", { algorithm: "argon2id" }) },
      },
      allowed_hosts: ["origin.test"],
      ...extra,
    },
    "info",
  );
  return { crm, plainPort };
}

/** Opens a connection from `from` and keeps it; `closed` settles when crm closes it. */
function hold(from: string, port: number): Promise<{ socket: Socket; closed: Promise<string> }> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    let done: (s: string) => void = () => {};
    const closed = new Promise<string>((r) => (done = r));
    const socket = connect({ host: "127.0.0.1", port, localAddress: from }, () =>
      resolve({ socket, closed }),
    );
    socket.on("data", (d: Buffer) => got.push(d));
    socket.on("close", () => done(Buffer.concat(got).toString("latin1")));
    socket.on("error", reject);
  });
}

const healthz = "GET /healthz HTTP/1.1\r\nHost: crm.test\r\nConnection: close\r\n\r\n";

test("strangers holding connections on the ACME plain listener do not use up max_connections", async () => {
  const { crm, plainPort } = await start({ limits: { max_connections: 4 } });
  const held: Socket[] = [];
  try {
    // More idle strangers than max_connections, from several addresses, within their own budget.
    for (let i = 0; i < 6; i++) held.push((await hold(`127.0.0.${2 + (i % 3)}`, plainPort)).socket);
    await Bun.sleep(50);
    // The operator's own client is still let in.
    expect(await sendFrom("127.0.0.1", plainPort, healthz)).toMatch(/^HTTP\/1\.1 200 [^]*ok\n$/);
  } finally {
    for (const s of held) s.destroy();
    await crm.stop();
  }
});

test("a stranger has a small connection budget of its own", async () => {
  const { crm, plainPort } = await start();
  const held: Socket[] = [];
  try {
    for (let i = 0; i < CHALLENGE_ONLY.perClient; i++)
      held.push((await hold("127.0.0.2", plainPort)).socket);
    await Bun.sleep(50);
    expect(
      await sendFrom(
        "127.0.0.2",
        plainPort,
        "GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: crm.test\r\nConnection: close\r\n\r\n",
      ),
    ).toMatch(/^HTTP\/1\.1 429 /);
    // Strangers count by network (IPv4 /24): another address of the same /24 is the same stranger.
    expect(
      await sendFrom(
        "127.0.0.3",
        plainPort,
        "GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: crm.test\r\nConnection: close\r\n\r\n",
      ),
    ).toMatch(/^HTTP\/1\.1 429 /);
    // A stranger from another network is not affected, and neither is a client in access.clients.
    expect(
      await sendFrom(
        "127.0.1.3",
        plainPort,
        "GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: crm.test\r\nConnection: close\r\n\r\n",
      ),
    ).toMatch(/^HTTP\/1\.1 404 /);
    expect(await sendFrom("127.0.0.1", plainPort, healthz)).toMatch(/^HTTP\/1\.1 200 /);
  } finally {
    for (const s of held) s.destroy();
    await crm.stop();
  }
});

test("a stranger's silent connection is closed after the short challenge head timeout, not timeouts.header", async () => {
  const { crm, plainPort } = await start({ timeouts: { header: "10m" } });
  try {
    const stranger = await hold("127.0.0.2", plainPort);
    const member = await hold("127.0.0.1", plainPort);
    let memberClosed = false;
    void member.closed.then(() => (memberClosed = true));
    const got = await stranger.closed;
    expect(got).toMatch(/^HTTP\/1\.1 408 /);
    expect(memberClosed).toBe(false);
    member.socket.destroy();
  } finally {
    await crm.stop();
  }
});

test("a stranger's proxy request is refused before its password is checked", async () => {
  const { crm, plainPort } = await start();
  try {
    const auth = `Proxy-Authorization: Basic ${btoa("alice:wrong")}\r\n`;
    const forward = await sendFrom(
      "127.0.0.2",
      plainPort,
      `GET http://origin.test/x HTTP/1.1\r\nHost: origin.test\r\n${auth}Connection: close\r\n\r\n`,
    );
    expect(forward).toMatch(/^HTTP\/1\.1 403 /);
    const tunnel = await sendFrom(
      "127.0.0.2",
      plainPort,
      `CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n${auth}\r\n`,
    );
    expect(tunnel).not.toMatch(/^HTTP\/1\.1 (200|407)/);
    expect(crm.server.rt.access.fullChecks).toBe(0);
    // A client in access.clients still has its password checked.
    expect(
      await sendFrom(
        "127.0.0.1",
        plainPort,
        `GET http://origin.test/x HTTP/1.1\r\nHost: origin.test\r\n${auth}Connection: close\r\n\r\n`,
      ),
    ).toMatch(/^HTTP\/1\.1 407 /);
    expect(crm.server.rt.access.fullChecks).toBe(1);
  } finally {
    await crm.stop();
  }
});

test("a stranger's connection is closed after one answer, even when it asks to keep it", async () => {
  const { crm, plainPort } = await start();
  try {
    const stranger = await hold("127.0.1.2", plainPort);
    stranger.socket.write("GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: crm.test\r\n\r\n");
    const got = await stranger.closed;
    expect(got).toMatch(/^HTTP\/1\.1 404 [^]*connection: close/i);
  } finally {
    await crm.stop();
  }
});

test("a full stranger budget closes its oldest connection for a newcomer, so a validator still gets its answer", async () => {
  const { crm, plainPort } = await start();
  const held: Array<{ socket: Socket; closed: Promise<string> }> = [];
  try {
    // The whole budget, held by CHALLENGE_ONLY.total / perClient networks.
    const networks = CHALLENGE_ONLY.total / CHALLENGE_ONLY.perClient;
    for (let n = 0; n < networks; n++)
      for (let i = 0; i < CHALLENGE_ONLY.perClient; i++)
        held.push(await hold(`127.0.${10 + n}.${1 + i}`, plainPort));
    let firstClosed = false;
    void (held[0] as { closed: Promise<string> }).closed.then(() => (firstClosed = true));
    const validator = await sendFrom(
      "127.0.200.1",
      plainPort,
      "GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: crm.test\r\nConnection: close\r\n\r\n",
    );
    expect(validator).toMatch(/^HTTP\/1\.1 404 /);
    await (held[0] as { closed: Promise<string> }).closed;
    expect(firstClosed).toBe(true);
  } finally {
    for (const h of held) h.socket.destroy();
    await crm.stop();
  }
}, 30000);
