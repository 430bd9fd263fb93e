/**
 * Fan-out (issue 19 §1) against an upstream that lies (tests/support/hostile-registry.ts): a
 * reader that left the shared download checks its own bytes, so neither a corrupted shared prefix
 * nor a corrupted answer to its own range request reaches its client as a clean end; and a
 * cancelled resuming own-request body raises no error in crm.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import type { Socket } from "bun";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  parseRangeHeader,
  sha,
  startHostile,
  type Hostile,
  type Plan,
  type Req,
} from "./support/hostile-registry.ts";

const MiB = 1024 * 1024;
const DATA = randomBytes(16 * MiB);
const DIGEST = sha(DATA);
const PATH = `/v2/reg.test/fan/x/blobs/${DIGEST}`;
const FAN = { window: "256KiB", budget: "1MiB", lag_grace: "0s" };

const stops: Array<() => unknown> = [];
afterEach(async () => {
  for (const s of stops.splice(0).reverse()) await s();
});

async function setup(plan: (r: Req) => Plan): Promise<{ crm: TestCrm; up: Hostile }> {
  const up = startHostile(plan);
  stops.push(() => up.stop());
  const crm = await startCrm(
    {
      timeouts: { header: "2s" },
      mirror: {
        default_registry: "reg.test",
        registries: { "reg.test": `http://127.0.0.1:${up.port}` },
        fanout: FAN,
      },
    },
    "warn",
  );
  stops.push(() => crm.stop());
  return { crm, up };
}

const metric = (crm: TestCrm, name: string): number => {
  const line = crm.server.rt.metrics
    .render()
    .split("\n")
    .find((l) => l.startsWith(name + " ") || l.startsWith(name + "{"));
  return line === undefined ? 0 : Number(line.split(" ").pop());
};
async function until(f: () => boolean): Promise<void> {
  while (!f()) await Bun.sleep(10);
}

interface Raw {
  pause(): void;
  resume(): void;
  close(): void;
  /** clean: the body came whole by its Content-Length before the connection closed. */
  done: Promise<{ clean: boolean; body: Buffer }>;
}

async function raw(port: number, path: string): Promise<Raw> {
  const parts: Buffer[] = [];
  let length = -1;
  let bodyStart = -1;
  let finish: (v: { clean: boolean; body: Buffer }) => void = () => {};
  const done = new Promise<{ clean: boolean; body: Buffer }>((r) => (finish = r));
  const s: Socket<undefined> = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data(_s, d) {
        parts.push(Buffer.from(d));
        if (bodyStart < 0) {
          const all = Buffer.concat(parts);
          const e = all.indexOf("\r\n\r\n");
          if (e >= 0) {
            bodyStart = e + 4;
            const m = /content-length:\s*(\d+)/i.exec(all.subarray(0, e).toString("latin1"));
            length = m ? Number(m[1]) : -1;
          }
        }
      },
      close() {
        const all = Buffer.concat(parts);
        const body = bodyStart >= 0 ? all.subarray(bodyStart) : Buffer.alloc(0);
        finish({ clean: length >= 0 && body.byteLength === length, body });
      },
      error() {},
    },
  });
  s.write(`GET ${path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n`);
  return { pause: () => s.pause(), resume: () => s.resume(), close: () => s.terminate(), done };
}

const shared = (body: Uint8Array): Plan => ({ body, gateAt: 128 * 1024, delayMs: 1 });
const ranged = (r: Req, src: Uint8Array): Plan => {
  const [a, b] = parseRangeHeader(r.range, src.byteLength) as [number, number];
  return {
    status: 206,
    headers: {
      "content-range": `bytes ${a}-${b}/${src.byteLength}`,
      "content-length": String(b - a + 1),
    },
    body: src.subarray(a, b + 1),
  };
};

/** A fast reader and one that stops until it is detached, then reads its own range request to the end. */
async function detachedRun(
  crm: TestCrm,
  up: Hostile,
  leave: boolean,
): Promise<{ clean: boolean; body: Buffer }> {
  const f = await raw(crm.port, PATH);
  await until(() => metric(crm, "crm_mirror_fanout_downloads_total") >= 1);
  const s = await raw(crm.port, PATH);
  await until(() => metric(crm, "crm_mirror_fanout_joins_total") >= 1);
  s.pause();
  up.gate();
  await until(() => metric(crm, "crm_mirror_fanout_detached_total") >= 1);
  if (leave) f.close();
  await f.done;
  s.resume();
  return s.done;
}

describe("mirror fan-out against a lying upstream", () => {
  test("a detached reader whose own range answer is corrupted never gets a clean end", async () => {
    const bad = Buffer.from(DATA);
    bad[15 * MiB] = (bad[15 * MiB] as number) ^ 1;
    const { crm, up } = await setup((r) => (r.range === null ? shared(DATA) : ranged(r, bad)));
    const r = await detachedRun(crm, up, false);
    expect(r.clean).toBe(false);
    expect(r.body.byteLength).toBeLessThan(DATA.byteLength);
  }, 60_000);

  test("a detached reader whose first part came from a corrupted shared download is cut when the last attached reader leaves", async () => {
    const bad = Buffer.from(DATA);
    bad[100] = (bad[100] as number) ^ 0xff;
    const { crm, up } = await setup((r) => (r.range === null ? shared(bad) : ranged(r, DATA)));
    const r = await detachedRun(crm, up, true);
    expect(r.clean).toBe(false);
  }, 60_000);

  test("a detached reader with true bytes on both parts completes", async () => {
    const { crm, up } = await setup((r) => (r.range === null ? shared(DATA) : ranged(r, DATA)));
    const r = await detachedRun(crm, up, false);
    expect(r.clean).toBe(true);
    expect(sha(r.body)).toBe(DIGEST);
  }, 60_000);
});
