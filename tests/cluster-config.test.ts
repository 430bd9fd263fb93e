/**
 * The `cluster:` section: validated like every section (key paths, unknown keys with "did you
 * mean", no credentials in the URL), printed by `crm -t` without its secret, and checked by
 * `crm doctor` against a real redis-server: answers, latency, and a key prefix shared with
 * replicas of another config.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildConfig } from "../src/config/load.ts";
import { describeConfig } from "../src/config/describe.ts";
import { diagnose } from "../src/doctor/index.ts";
import { startCrm } from "./support/crm.ts";
import { startRedis, type RedisFixture } from "./support/redis.ts";
import { missingTools } from "./support/tools.ts";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "crm-cluster-config-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const errorsOf = (raw: Record<string, unknown>): string => {
  try {
    buildConfig(raw, join(dir, "c.yaml"));
    return "";
  } catch (e) {
    return (e as Error).message;
  }
};

describe("cluster config", () => {
  test("absent: null, and crm -t prints what it always printed", () => {
    const { config } = buildConfig({}, "c.yaml");
    expect(config.cluster).toBeNull();
    expect(describeConfig(config)).not.toContain("cluster");
  });

  test("defaults, and crm -t prints the set-up without the password", () => {
    writeFileSync(join(dir, "pw"), "hunter2-store\n");
    const { config } = buildConfig(
      { cluster: { redis: "redis://redis.internal:6379/2", password_file: "pw" } },
      join(dir, "c.yaml"),
    );
    const k = config.cluster!;
    expect(k.password).toBe("hunter2-store");
    expect(k.keyPrefix).toBe("crm:");
    expect(k.deadlineMs).toBe(100);
    expect(k.manifestTtlMs).toBe(24 * 3600_000);
    expect(k.shareTokens).toBe(true);
    const text = describeConfig(config);
    expect(text).toContain("cluster: redis://redis.internal:6379/2 (password from ");
    expect(text).toContain('key_prefix "crm:", deadline 100ms');
    expect(text).toContain("per replica: connection caps, bandwidth pacing");
    expect(text).not.toContain("hunter2");
  });

  test("crm -t prints the cluster set-up (the command itself)", async () => {
    writeFileSync(join(dir, "pw-t"), "t-secret-store\n");
    const file = join(dir, "t.yaml");
    writeFileSync(
      file,
      `listen: "127.0.0.1:0"\ncluster:\n  redis: "rediss://store.internal:6380/1"\n  password_file: pw-t\n  key_prefix: "crm-eu:"\n  share_tokens: false\n  deadline: 50ms\n`,
    );
    const p = Bun.spawn(
      [process.execPath, join(import.meta.dir, "..", "src/main.ts"), "-t", "-config", file],
      { stdout: "pipe", stderr: "pipe" },
    );
    const [out, code] = await Promise.all([new Response(p.stdout).text(), p.exited]);
    expect(code).toBe(0);
    expect(out).toContain("cluster: rediss://store.internal:6380/1 (password from ");
    expect(out).toContain('key_prefix "crm-eu:", deadline 50ms');
    expect(out).toContain(
      "per replica: connection caps, bandwidth pacing, upstream tokens (share_tokens: false)",
    );
    expect(out).not.toContain("t-secret-store");
  });

  test("every error names its key; unknown keys get a did-you-mean", () => {
    writeFileSync(join(dir, "pw"), "not a certificate\n");
    expect(errorsOf({ cluster: { redis: "redis://r:6379", key_prefx: "x:" } })).toContain(
      'cluster.key_prefx: unknown key "key_prefx" in cluster (did you mean cluster.key_prefix?)',
    );
    expect(errorsOf({ cluster: { redis: "redis://user:pw@r:6379" } })).toContain(
      "cluster.redis: must not carry user:password",
    );
    expect(errorsOf({ cluster: { redis: "http://r:6379" } })).toContain(
      'cluster.redis: "http://r:6379" must be a redis:// or rediss:// URL',
    );
    expect(errorsOf({ cluster: { key_prefix: "x:" } })).toContain("cluster.redis: missing");
    expect(errorsOf({ cluster: { redis: "redis://r", deadline: "10s" } })).toContain(
      'cluster.deadline: "10s" must be from 1ms to 5s',
    );
    expect(errorsOf({ cluster: { redis: "redis://r", password_file: "nope" } })).toMatch(
      /cluster\.password_file: cannot read .*nope: ENOENT/,
    );
    expect(errorsOf({ cluster: { redis: "redis://r", ca_file: "pw" } })).toContain(
      "cluster.ca_file: needs a rediss:// URL",
    );
    expect(errorsOf({ cluster: { redis: "rediss://r", ca_file: "pw" } })).toMatch(
      /cluster\.ca_file: .*pw is not a PEM certificate/,
    );
  });
});

const skip = missingTools("crm doctor with a cluster store", ["redis-server"]);

describe.skipIf(skip)("crm doctor: the cluster store", () => {
  let redis: RedisFixture;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis?.stop();
  });

  let n = 0;
  async function doctor(cfg: Record<string, unknown>) {
    const file = join(dir, `d${++n}.json`);
    writeFileSync(
      file,
      JSON.stringify({ listen: "127.0.0.1:0", mirror: { enabled: false }, ...cfg }),
    );
    const r = await diagnose({ configPath: file, json: false });
    return (name: string) => {
      const hit = r.rows.find((x) => x.check === name);
      if (!hit) throw new Error(`no row ${name}; rows: ${r.rows.map((x) => x.check).join(", ")}`);
      return hit;
    };
  }

  test("answers, latency, version; a prefix used by another config's replicas fails", async () => {
    const row = await doctor({ cluster: { redis: redis.url, key_prefix: "doc1:" } });
    expect(row("cluster store").result).toBe("pass");
    expect(row("cluster store").detail).toMatch(
      /Redis \d+\.\d+\.\d+, PING \d+\.\d ms \(median of 5; deadline 100 ms\)/,
    );
    expect(row("cluster key prefix").result).toBe("pass");

    // A replica of another config (other rate limit) is alive under the same prefix.
    const other = await startCrm(
      {
        mirror: { enabled: false },
        limits: { requests_per_second: 5 },
        cluster: { redis: redis.url, key_prefix: "doc1:" },
      },
      "info",
    );
    try {
      await other.server.cluster!.heartbeat.beat();
      const row2 = await doctor({ cluster: { redis: redis.url, key_prefix: "doc1:" } });
      expect(row2("cluster key prefix").result).toBe("fail");
      expect(row2("cluster key prefix").detail).toContain(`${other.server.cluster!.id}`);
      expect(row2("cluster key prefix").fix).toContain("own cluster.key_prefix");
      // The same config under that prefix is its own fleet: pass.
      const row3 = await doctor({
        limits: { requests_per_second: 5 },
        cluster: { redis: redis.url, key_prefix: "doc1:" },
      });
      expect(row3("cluster key prefix").result).toBe("pass");
      // A running replica of the first config warns (once) when it sees the other.
      const mine = await startCrm(
        { mirror: { enabled: false }, cluster: { redis: redis.url, key_prefix: "doc1:" } },
        "info",
      );
      try {
        await mine.server.cluster!.heartbeat.beat();
        await mine.server.cluster!.heartbeat.beat();
        const warned = mine.logs.filter((l) =>
          /replicas of another config share this cluster.key_prefix/.test(l),
        );
        expect(warned.length).toBe(1);
        expect(warned[0]).toContain(other.server.cluster!.id);
      } finally {
        await mine.stop();
      }
    } finally {
      await other.stop();
    }
  }, 30_000);

  test("a store that refuses crm's password fails with the key to fix", async () => {
    const locked = await startRedis({ password: "doctor-secret" });
    try {
      writeFileSync(join(dir, "wrong-pw"), "nope\n");
      const row = await doctor({
        cluster: { redis: locked.url, password_file: join(dir, "wrong-pw") },
      });
      expect(row("cluster store").result).toBe("fail");
      expect(row("cluster store").detail).toMatch(/WRONGPASS/);
      expect(row("cluster store").fix).toContain("cluster.password_file");
      writeFileSync(join(dir, "right-pw"), "doctor-secret\n");
      const ok = await doctor({
        cluster: { redis: locked.url, password_file: join(dir, "right-pw") },
      });
      expect(ok("cluster store").result).toBe("pass");
    } finally {
      await locked.stop();
    }
  }, 30_000);

  test("a reload keeps the replica sharing (brake, rate, mirror state)", async () => {
    const hash = await Bun.password.hash("pw", { algorithm: "bcrypt", cost: 4 });
    const raw = {
      mirror: {
        enabled: true,
        registries: { "reg.test": "http://127.0.0.1:1" },
        default_registry: "reg.test",
      },
      access: { users: { a: hash } },
      limits: { requests_per_second: 5 },
      cluster: { redis: redis.url, key_prefix: "reload:" },
    };
    const crm = await startCrm(raw, "info");
    try {
      const brake = crm.server.rt.access.shared;
      expect(brake).not.toBeNull();
      const { config } = buildConfig(
        { listen: "127.0.0.1:0", allow_private_networks: true, ...raw, log_level: "warn" },
        "test.yaml",
      );
      await crm.server.reload(config);
      expect(crm.server.rt.access.shared).toBe(brake);
      expect(crm.server.rt.rate.shared).not.toBeNull();
      expect(crm.logs.some((l) => /cluster section changed/.test(l))).toBe(false);
    } finally {
      await crm.stop();
    }
  }, 30_000);

  test("a dead store fails with what to do", async () => {
    const row = await doctor({ cluster: { redis: "redis://127.0.0.1:1/0" } });
    expect(row("cluster store").result).toBe("fail");
    expect(row("cluster store").fix).toContain("pulls still work");
  }, 30_000);
});
