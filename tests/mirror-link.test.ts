/**
 * tags/list pagination with several Link values: each value that points at the registry is
 * pointed back at crm, each value pointing elsewhere is dropped (issue 14, point 5).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { Server } from "bun";
import { parseLinkValues } from "../src/mirror/link.ts";
import { startCrm, type TestCrm } from "./support/crm.ts";

let upstream: Server<undefined>;
let crm: TestCrm;
let link = "";

beforeAll(async () => {
  upstream = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: () => Response.json({ name: "team/app", tags: ["a", "b"] }, { headers: { link } }),
  });
  crm = await startCrm({
    mirror: {
      path_prefix: "/p",
      default_registry: "reg.test",
      registries: { "reg.test": `http://127.0.0.1:${upstream.port}` },
    },
  });
});
afterAll(async () => {
  await crm.stop();
  upstream.stop(true);
});

async function linkThroughCrm(
  value: string,
  path = "/p/v2/team/app/tags/list?n=2",
): Promise<string | null> {
  link = value;
  const r = await fetch(crm.url + path);
  await r.arrayBuffer();
  expect(r.status).toBe(200);
  return r.headers.get("link");
}

test("every Link value pointing at the registry is rewritten; values pointing elsewhere are dropped", async () => {
  const got = await linkThroughCrm(
    [
      '</v2/team/app/tags/list?n=2&last=b>; rel="next"',
      '<https://evil.example/v2/team/app/tags/list?n=2&last=a>; rel="prev"',
      `<http://127.0.0.1:${upstream.port}/v2/team/app/tags/list?n=2>; rel="first"; title="page, one"`,
      `<http://127.0.0.1:${(upstream.port ?? 0) + 1}/v2/team/app/tags/list?last=z>; rel="last"`,
    ].join(", "),
  );
  expect(got).toBe(
    '</p/v2/team/app/tags/list?n=2&last=b>; rel="next", </p/v2/team/app/tags/list?n=2>; rel="first"; title="page, one"',
  );
});

test("a Link with only foreign values, or a malformed one, is removed", async () => {
  expect(
    await linkThroughCrm('<https://evil.example/v2/team/app/tags/list?last=a>; rel="next"'),
  ).toBeNull();
  expect(await linkThroughCrm('/v2/team/app/tags/list?last=a; rel="next"')).toBeNull();
});

test("the ns routing survives on every rewritten value", async () => {
  const got = await linkThroughCrm(
    '</v2/team/app/tags/list?last=a>; rel="next", </v2/team/app/tags/list>; rel="first"',
    "/p/v2/team/app/tags/list?ns=reg.test",
  );
  expect(got).toBe(
    '</p/v2/team/app/tags/list?last=a&ns=reg.test>; rel="next", </p/v2/team/app/tags/list?ns=reg.test>; rel="first"',
  );
});

test("parseLinkValues: quoted commas do not split; a list longer than 16 is refused", () => {
  expect(parseLinkValues('<a>; rel="next"; title="x, y", <b>')).toEqual([
    { target: "a", params: '; rel="next"; title="x, y"' },
    { target: "b", params: "" },
  ]);
  expect(parseLinkValues(Array(17).fill("<a>").join(","))).toBeNull();
  expect(parseLinkValues("<unterminated")).toBeNull();
});
