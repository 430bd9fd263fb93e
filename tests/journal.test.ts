/**
 * The request record: ids on mirror answers (X-Crm-Request-Id), a bounded ring, and the
 * `/v2/_crm/requests` answer that shows a client only its own requests and never the mirror's
 * secret path.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { RequestJournal } from "../src/status/journal.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { startFakeRegistry, type FakeRegistry } from "./support/mirror-upstreams.ts";
import type { RequestsAnswer } from "../src/status/requests-endpoint.ts";

describe("RequestJournal", () => {
  test("keeps the last N entries, in order, and finds them by sequence and client", () => {
    const j = new RequestJournal(3, "abcd");
    const ids = Array.from({ length: 5 }, () => j.nextId());
    expect(ids[0]).toBe("abcd-1");
    ids.forEach((id, i) =>
      j.record({
        id,
        client: i % 2 ? "10.0.0.2" : "10.0.0.1",
        kind: "mirror",
        method: "GET",
        target: "/v2/" + "x".repeat(1000),
        status: 200,
        bytesIn: 0,
        bytesOut: 1,
        ms: 1,
      }),
    );
    expect(j.entries().map((e) => e.seq)).toEqual([3, 4, 5]);
    expect(j.recent(2).map((e) => e.seq)).toEqual([5, 4]);
    expect(j.after(3, "10.0.0.1").map((e) => e.seq)).toEqual([5]);
    // Strings are cut so a hostile target cannot grow the ring.
    expect(j.entries()[0]!.target.length).toBeLessThan(310);
    // An id of another instance (a restarted crm, another replica) is not recorded.
    j.record({
      id: "ffff-9",
      client: "x",
      kind: "local",
      method: "GET",
      target: "/",
      status: 200,
      bytesIn: 0,
      bytesOut: 0,
      ms: 0,
    });
    expect(j.entries().map((e) => e.seq)).toEqual([3, 4, 5]);
  });
});

describe("X-Crm-Request-Id and /v2/_crm/requests", () => {
  let reg: FakeRegistry;
  let crm: TestCrm;
  beforeAll(async () => {
    reg = startFakeRegistry({ auth: { kind: "none" } });
    crm = await startCrm(
      { mirror: { path_prefix: "/s3cret", registries: { "docker.io": reg.url } } },
      "warn",
    );
  });
  afterAll(async () => {
    await crm.stop();
    reg.stop();
  });

  test("every mirror answer carries its id, and the record lists it with registry, repo and ref", async () => {
    const base = await fetch(`${crm.url}/s3cret/v2/`);
    const baseId = base.headers.get("x-crm-request-id");
    expect(baseId).toMatch(/^[0-9a-f]{8}-\d+$/);
    const man = await fetch(`${crm.url}/s3cret/v2/library/app/manifests/v1`, { method: "HEAD" });
    const manId = man.headers.get("x-crm-request-id");
    expect(manId).not.toBe(baseId);
    const missing = await fetch(`${crm.url}/s3cret/v2/library/nope/manifests/v9`);
    await missing.body?.cancel();
    expect(missing.headers.get("x-crm-request-id")).not.toBeNull();

    const after = Number(baseId!.split("-")[1]);
    const res = await fetch(`${crm.url}/s3cret/v2/_crm/requests?after=${after}`);
    expect(res.status).toBe(200);
    const answer = (await res.json()) as RequestsAnswer;
    expect(answer.client).toBe("127.0.0.1");
    const entry = answer.requests.find((r) => r.id === manId);
    expect(entry).toMatchObject({
      kind: "mirror",
      method: "HEAD",
      registry: "docker.io",
      repo: "library/app",
      ref: "v1",
    });
    expect(
      answer.requests.find((r) => r.id === missing.headers.get("x-crm-request-id"))?.status,
    ).toBeGreaterThanOrEqual(400);
    // The base request itself is not "after" its own id; the secret path is never recorded.
    expect(answer.requests.some((r) => r.id === baseId)).toBe(false);
    expect(JSON.stringify(answer)).not.toContain("s3cret");
  });

  test("another client address sees none of these requests", () => {
    const j = crm.server.rt.journal;
    expect(j.after(0, "192.0.2.7")).toEqual([]);
    expect(j.after(0, "127.0.0.1").length).toBeGreaterThan(0);
  });
});
