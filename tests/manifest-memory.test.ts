/**
 * What the mirror holds in memory for manifests stays bounded however many clients stall: large
 * in-memory bodies go out as views into one buffer (Bun copies a Uint8Array given to Response),
 * each charged to one budget until sent or abandoned, and past it the caller goes upstream.
 * And a cached manifest belongs to the registry's upstream and account, not just its name.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { buildConfig } from "../src/config/load.ts";
import { MemoryBudget, memoryBody } from "../src/mirror/manifests/memory-body.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { startFakeHub, type FakeHub } from "./support/fake-hub.ts";

const MiB = 1024 * 1024;

describe("memoryBody", () => {
  test("200 stalled readers of one 4 MiB manifest share its buffer (no copy each)", async () => {
    const body = new Uint8Array(4 * MiB).fill(7);
    const budget = new MemoryBudget(Infinity);
    Bun.gc(true);
    const before = process.memoryUsage().arrayBuffers;
    const readers: Array<{ cancel(): Promise<void> }> = [];
    for (let i = 0; i < 200; i++) {
      const b = memoryBody(body, budget);
      if (b === null || b instanceof Uint8Array) throw new Error("a large body must stream");
      const reader = (new Response(b).body as ReadableStream<Uint8Array>).getReader();
      const first = await reader.read();
      expect(first.value?.buffer).toBe(body.buffer);
      readers.push(reader);
    }
    Bun.gc(true);
    // With one copy per response this was +800 MiB.
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 * MiB);
    for (const r of readers) await r.cancel();
    expect(budget.used).toBe(0);
  });

  test("the budget refuses past its bound and is given back when a body is sent or abandoned", async () => {
    const budget = new MemoryBudget(10 * MiB);
    const big = new Uint8Array(4 * MiB);
    const a = memoryBody(big, budget);
    const b = memoryBody(big, budget);
    expect(a).not.toBeNull();
    expect(b).not.toBeNull();
    expect(memoryBody(big, budget)).toBeNull();
    // Small bodies are copied and never charged.
    expect(memoryBody(new Uint8Array(1000), budget)).toBeInstanceOf(Uint8Array);
    expect(
      new Uint8Array(await new Response(a as ReadableStream<Uint8Array>).arrayBuffer()).byteLength,
    ).toBe(4 * MiB);
    expect(budget.used).toBe(4 * MiB);
    await (b as ReadableStream<Uint8Array>).cancel();
    expect(budget.used).toBe(0);
  });
});

describe("cached manifests belong to the upstream and account that fetched them", () => {
  const running: Array<{ stop(): unknown }> = [];
  afterEach(async () => {
    for (const r of running.splice(0)) await r.stop();
  });

  test("a reload that changes the registry's upstream or credentials does not serve the old entries", async () => {
    const hub = startFakeHub({ limit: 1000 });
    const other = startFakeHub({ limit: 1000 });
    running.push(hub, other);
    const raw = {
      listen: "127.0.0.1:0",
      allow_private_networks: true,
      log_level: "info",
      timeouts: { header: "300ms" },
    };
    const cfg = (reg: unknown) =>
      buildConfig(
        { ...raw, mirror: { default_registry: "hub.test", registries: { "hub.test": reg } } },
        "test.yaml",
      ).config;
    const crm: TestCrm = await startCrm(
      {
        allow_private_networks: true,
        mirror: { default_registry: "hub.test", registries: { "hub.test": hub.url } },
      },
      "info",
    );
    running.push(crm);
    const path = `/v2/library/multi/manifests/${hub.image().index.digest}`;
    const get = async (): Promise<number> => {
      const r = await fetch(`${crm.url}${path}`, { proxy: false } as RequestInit);
      await r.arrayBuffer();
      return r.status;
    };
    expect(await get()).toBe(200);
    expect(await get()).toBe(200);
    expect(hub.gets()).toBe(1);
    // Same name, credentials added: another account's view of the registry.
    await crm.server.reload(cfg({ upstream: hub.url, username: "robot", password: "pw" }));
    await get();
    expect(hub.gets()).toBe(2);
    // Same name, another upstream: asked there, never answered from the first one's entry.
    await crm.server.reload(cfg(other.url));
    await get();
    expect(other.gets()).toBe(1);
    expect(hub.gets()).toBe(2);
  });
});
