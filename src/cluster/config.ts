/**
 * The `cluster:` section: where replicas of one crm keep the state they share (a Redis or Valkey
 * endpoint). Absent, crm keeps everything per process, exactly as a single replica always has.
 *
 *   cluster:
 *     redis: "rediss://redis.internal:6380/0"   # redis:// or rediss://, one endpoint
 *     username: crm                             # ACL user (optional)
 *     password_file: /etc/crm/redis-password
 *     ca_file: /etc/crm/redis-ca.crt            # rediss:// with a private CA (optional)
 *     key_prefix: "crm:"
 *     share_tokens: true
 *     deadline: 100ms                           # every store call; past it the replica decides alone
 *     manifest_ttl: 24h
 *
 * The password is never part of the URL crm prints (`crm -t`) or logs: a URL with user info is
 * refused, like a registry's upstream.
 */
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import type { Checker } from "../config/checker.ts";
import { ConfigError } from "../errors.ts";
import { formatDuration } from "../config/duration.ts";

export interface ClusterConfig {
  /** redis:// or rediss:// without user info; the database index is its path. */
  url: URL;
  tls: boolean;
  username: string | null;
  /** Read from password_file at load time; never printed. */
  password: string | null;
  passwordFile: string | null;
  /** PEM trusted for rediss:// besides the system roots. */
  ca: string | null;
  caFile: string | null;
  keyPrefix: string;
  shareTokens: boolean;
  /** Upper bound on one store call, in ms. */
  deadlineMs: number;
  /** How long a verified manifest stays in the store, in ms. */
  manifestTtlMs: number;
}

export const CLUSTER_KEYS = [
  "redis",
  "username",
  "password_file",
  "ca_file",
  "key_prefix",
  "share_tokens",
  "deadline",
  "manifest_ttl",
] as const;
export const DEFAULT_DEADLINE_MS = 100;
export const DEFAULT_MANIFEST_TTL_MS = 24 * 3_600_000;

export function buildCluster(c: Checker, raw: unknown, file: string): ClusterConfig | null {
  const o = c.object("cluster", raw, CLUSTER_KEYS);
  if (o === null) return null;
  const text = c.string("cluster.redis", o.redis);
  if (text === null) {
    if (o.redis === undefined)
      c.rule(
        "cluster.redis",
        'missing; it is required in a cluster section (e.g. "redis://redis:6379/0")',
      );
    return null;
  }
  let url: URL;
  try {
    url = new URL(text);
  } catch (cause) {
    c.errors.push(
      new ConfigError("cluster.redis", `${JSON.stringify(text)} is not a URL`, { cause }),
    );
    return null;
  }
  if (
    url.protocol !== "redis:" &&
    url.protocol !== "rediss:" &&
    url.protocol !== "valkey:" &&
    url.protocol !== "valkeys:"
  ) {
    c.fail(
      "cluster.redis",
      text,
      "must be a redis:// or rediss:// URL (one endpoint; see README, Scaling out)",
    );
    return null;
  }
  if (url.username || url.password) {
    c.rule(
      "cluster.redis",
      "must not carry user:password (the URL is not shown); use cluster.username and cluster.password_file",
    );
    return null;
  }
  if (url.pathname !== "" && url.pathname !== "/" && !/^\/\d{1,2}$/.test(url.pathname))
    c.fail("cluster.redis", text, "path must be a database number such as /0");
  const read = (key: string, v: unknown): { text: string; path: string } | null => {
    const name = c.string(`cluster.${key}`, v);
    if (name === null) return null;
    const p = resolve(file, "..", name);
    try {
      return { text: readFileSync(p, "utf8"), path: p };
    } catch (cause) {
      c.errors.push(
        new ConfigError(
          `cluster.${key}`,
          `cannot read ${p}: ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}`,
          { cause },
        ),
      );
      return null;
    }
  };
  const pw = read("password_file", o.password_file);
  const ca = read("ca_file", o.ca_file);
  const tls = url.protocol === "rediss:" || url.protocol === "valkeys:";
  if (ca !== null && !tls) c.rule("cluster.ca_file", "needs a rediss:// URL in cluster.redis");
  if (ca !== null) {
    try {
      new X509Certificate(ca.text);
    } catch {
      c.rule("cluster.ca_file", `${ca.path} is not a PEM certificate`);
    }
  }
  let keyPrefix = "crm:";
  if (o.key_prefix !== undefined && o.key_prefix !== null) {
    if (typeof o.key_prefix === "string" && /^[A-Za-z0-9:._{}-]{1,64}$/.test(o.key_prefix))
      keyPrefix = o.key_prefix;
    else
      c.fail(
        "cluster.key_prefix",
        o.key_prefix,
        'must be 1-64 letters, digits or : . _ - { } (e.g. "crm:" or "crm-eu:")',
      );
  }
  const deadlineMs = c.duration("cluster.deadline", o.deadline, DEFAULT_DEADLINE_MS);
  if (deadlineMs < 1 || deadlineMs > 5000)
    c.fail(
      "cluster.deadline",
      o.deadline,
      "must be from 1ms to 5s (a pull waits at most this long for the store)",
    );
  const manifestTtlMs = c.duration("cluster.manifest_ttl", o.manifest_ttl, DEFAULT_MANIFEST_TTL_MS);
  if (manifestTtlMs < 1000) c.fail("cluster.manifest_ttl", o.manifest_ttl, "must be at least 1s");
  const password = pw === null ? null : pw.text.replace(/\r?\n$/, "");
  if (password === "") c.rule("cluster.password_file", `${pw?.path} is empty`);
  return {
    url: new URL(`${url.protocol}//${url.host}${url.pathname === "" ? "/0" : url.pathname}`),
    tls,
    username: c.string("cluster.username", o.username),
    password,
    passwordFile: pw?.path ?? null,
    ca: ca?.text ?? null,
    caFile: ca?.path ?? null,
    keyPrefix,
    shareTokens: c.bool("cluster.share_tokens", o.share_tokens, true),
    deadlineMs,
    manifestTtlMs,
  };
}

/** `crm -t` lines: what is shared and where; the password only as "set". */
export function describeCluster(k: ClusterConfig | null): string[] {
  if (k === null) return ["cluster: off (every replica keeps its own state)"];
  const auth = [
    k.username !== null ? `user ${k.username}` : null,
    k.password !== null ? `password from ${k.passwordFile}` : "no password",
  ]
    .filter((v) => v !== null)
    .join(", ");
  return [
    `cluster: ${k.url.href} (${auth}${k.caFile !== null ? `, CA ${k.caFile}` : ""}), key_prefix ${JSON.stringify(k.keyPrefix)}, deadline ${formatDuration(k.deadlineMs)}`,
    `  shared: manifests (ttl ${formatDuration(k.manifestTtlMs)}), manifest single flight, ${k.shareTokens ? "upstream tokens, " : ""}requests_per_second, password brake, upstream quota, heartbeats`,
    `  per replica: connection caps, bandwidth pacing${k.shareTokens ? "" : ", upstream tokens (share_tokens: false)"}`,
  ];
}
