/**
 * `crm doctor` checks every upstream of a registry with several (issue 19 §3): each gets its own
 * rows, labelled with its place and host, so a fallback that is down shows before it is needed.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { diagnose } from "../src/doctor/index.ts";
import { staticResolver } from "../src/net/resolver.ts";
import { deadPort, startFakeRegistry, type FakeRegistry } from "./support/mirror-upstreams.ts";

let dir: string;
let reg: FakeRegistry;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "crm-doctor-up-"));
  reg = startFakeRegistry({ auth: { kind: "none" } });
});
afterAll(async () => {
  reg.stop();
  await rm(dir, { recursive: true, force: true });
});

test("every upstream of a registry is checked on its own rows: the dead first one fails, the second passes", async () => {
  const file = join(dir, "c.json");
  const live = new URL(reg.url);
  writeFileSync(
    file,
    JSON.stringify({
      listen: "127.0.0.1:0",
      allow_private_networks: true,
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [Number(live.port)],
      timeouts: { connect: "2s", upstream_header: "5s" },
      mirror: {
        registries: { "docker.io": { upstreams: [`http://127.0.0.1:${deadPort()}`, reg.url] } },
      },
      doctor: { images: { "docker.io": "team/app:v1" } },
    }),
  );
  const r = await diagnose({ configPath: file, json: false, resolver: staticResolver({}) });
  const row = (name: string) => r.rows.find((x) => x.check === name);
  expect(row(`docker.io upstream 1 (127.0.0.1:${deadPort()}): TCP`)?.result).toBe("fail");
  expect(row(`docker.io upstream 1 (127.0.0.1:${deadPort()}): TCP`)?.fix).toBeTruthy();
  expect(row(`docker.io upstream 2 (${live.host}): TCP`)?.result).toBe("pass");
  expect(row(`docker.io upstream 2 (${live.host}): GET /v2/`)?.result).toBe("pass");
  expect(row(`docker.io upstream 2 (${live.host}): manifest`)?.result).toBe("pass");
  expect(r.ok).toBe(false);
});
