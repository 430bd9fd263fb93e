/**
 * Regressions from an independent review: async gaps around proxy authentication, a tunnel
 * paused for good, a credential in a log line, and a header the parser accepted but fetch refused.
 * Each test failed before its fix.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { Resolver } from "../src/net/resolver.ts";
import { startCrm } from "./support/crm.ts";
import { startOrigin, startTcp } from "./support/origins.ts";
import { rawConnect } from "./support/raw.ts";

const PASSWORD = "correct horse battery";
const AUTH = "Basic " + Buffer.from(`alice:${PASSWORD}`).toString("base64");
let hash: string;
let origin: ReturnType<typeof startOrigin>;

beforeAll(async () => {
  hash = await Bun.password.hash(PASSWORD, { algorithm: "argon2id" });
  origin = startOrigin();
});
afterAll(() => origin.stop(true));

/** A TCP upstream that counts accepted and still-open sockets and never closes on its own. */
function silentUpstream() {
  const st = { opened: 0, open: 0 };
  const l = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      open() {
        st.opened++;
        st.open++;
      },
      data() {},
      close() {
        st.open--;
      },
      error() {},
    },
  });
  return Object.assign(st, { port: l.port, stop: () => l.stop(true) });
}

test("client that disconnects while its proxy credentials are checked gets no CONNECT tunnel (no leaked upstream socket)", async () => {
  const up = silentUpstream();
  const crm = await startCrm(
    { allowed_hosts: ["127.0.0.1"], allowed_ports: [up.port], access: { users: { alice: hash } } },
    "info",
  );
  try {
    const c = await rawConnect(crm.port);
    c.write(
      `CONNECT 127.0.0.1:${up.port} HTTP/1.1\r\nHost: 127.0.0.1:${up.port}\r\nProxy-Authorization: ${AUTH}\r\n\r\n`,
    );
    c.socket.terminate(); // gone while argon2 runs
    await Bun.sleep(1000);
    const metrics = await (await fetch(`${crm.url}/metrics`)).text();
    // Nothing will ever close this upstream socket: the Connection already left the sweeper's set.
    expect(up.open).toBe(0);
    expect(metrics).toContain("crm_active_tunnels 0");
  } finally {
    await crm.stop();
    up.stop();
  }
});

test("client that disconnects while its proxy credentials are checked: its forward request is not sent upstream", async () => {
  const before = origin.seen.length;
  const crm = await startCrm(
    {
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [origin.port],
      access: { users: { alice: hash } },
    },
    "info",
  );
  try {
    const c = await rawConnect(crm.port);
    c.write(
      `DELETE http://127.0.0.1:${origin.port}/gone-client HTTP/1.1\r\nHost: a\r\nProxy-Authorization: ${AUTH}\r\n\r\n`,
    );
    c.socket.terminate();
    await Bun.sleep(1000);
    expect(origin.seen.slice(before).map((s) => s.url)).not.toContain("/gone-client");
  } finally {
    await crm.stop();
  }
});

test("CONNECT: more than 64 KiB sent before the dial completes does not stall the client->upstream direction forever", async () => {
  const up = startTcp("echo");
  // A dial that takes a moment (slow DNS), so the client's bytes pile up as early data.
  const slow: Resolver = async () => {
    await Bun.sleep(300);
    return "127.0.0.1";
  };
  const crm = await startCrm(
    { allowed_hosts: ["slow.test"], allowed_ports: [up.port] },
    "info",
    slow,
  );
  try {
    const c = await rawConnect(crm.port);
    c.write(
      Buffer.concat([
        Buffer.from(`CONNECT slow.test:${up.port} HTTP/1.1\r\nHost: slow.test:${up.port}\r\n\r\n`),
        Buffer.alloc(100 * 1024, 0x61),
      ]),
    );
    await c.waitFor("aaaa", 3000);
    await Bun.sleep(300);
    c.write("later-bytes");
    await c.waitFor("later-bytes", 3000);
  } finally {
    await crm.stop();
    up.stop(true);
  }
});

test("a password in the request target's userinfo is not written to the log when proxy auth fails", async () => {
  const crm = await startCrm(
    {
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [origin.port],
      access: { users: { alice: hash } },
    },
    "info",
  );
  try {
    const c = await rawConnect(crm.port);
    c.write(
      `GET http://bob:TopSecretPw@127.0.0.1:${origin.port}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`,
    );
    await c.closed();
    await crm.waitLog(/proxy authentication failed/);
    expect(crm.logs.join("\n")).not.toContain("TopSecretPw");
  } finally {
    await crm.stop();
  }
});

test("identical repeated Content-Length values (accepted by the parser) are forwarded as one, not answered 502", async () => {
  const crm = await startCrm(
    { allowed_hosts: ["127.0.0.1"], allowed_ports: [origin.port] },
    "info",
  );
  try {
    const c = await rawConnect(crm.port);
    c.write(
      `POST http://127.0.0.1:${origin.port}/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello`,
    );
    await c.closed();
    expect(c.text()).toMatch(/^HTTP\/1\.1 200 /);
    expect(c.text()).toContain('"length":5');
  } finally {
    await crm.stop();
  }
});

test("a GET with a body gets a clear 400, not a false upstream failure", async () => {
  const crm = await startCrm({ allowed_hosts: ["127.0.0.1"], allowed_ports: [origin.port] });
  try {
    const c = await rawConnect(crm.port);
    c.write(
      `GET http://127.0.0.1:${origin.port}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello`,
    );
    await c.closed();
    expect(c.text()).toMatch(/^HTTP\/1\.1 400 [^]*cannot forward a request body with GET/);
    expect(crm.logs.join("\n")).not.toContain("upstream failed");
  } finally {
    await crm.stop();
  }
});
