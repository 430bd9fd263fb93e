/**
 * A real redis-server (Debian's redis-server, or Valkey's valkey-server) on loopback for the
 * cluster tests: no persistence (`--save "" --appendonly no`), no system service, its own temp
 * dir. Optionally with a password (`requirepass`) and TLS only (`--tls-port`, certificates from a
 * CA the test makes). The test can stop it (SIGSTOP), let it go on (SIGCONT), kill it (SIGKILL)
 * and start it again on the same port, as a failing store does.
 */
import { RedisClient } from "bun";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePorts, startOnFreePorts } from "./ports.ts";
import type { Pem } from "./tls.ts";

export const REDIS_SERVER =
  Bun.which("redis-server") ?? Bun.which("valkey-server") ?? "redis-server";

export interface RedisFixture {
  port: number;
  /** redis:// or rediss:// URL without credentials. */
  url: string;
  password: string | null;
  dir: string;
  /** A client for the test itself (with the password and CA). */
  client(): Promise<RedisClient>;
  signal(sig: "SIGSTOP" | "SIGCONT" | "SIGKILL"): void;
  /** Starts it again on the same port (after SIGKILL). */
  restart(): Promise<void>;
  logs(): string;
  stop(): Promise<void>;
}

export interface RedisOptions {
  password?: string;
  /** Server certificate (and its CA) for TLS only. */
  tls?: { ca: Pem; leaf: Pem };
}

export async function startRedis(opts: RedisOptions = {}): Promise<RedisFixture> {
  const dir = await mkdtemp(join(tmpdir(), "crm-redis-"));
  if (opts.tls) {
    await writeFile(join(dir, "ca.crt"), opts.tls.ca.cert);
    await writeFile(join(dir, "server.crt"), opts.tls.leaf.cert);
    await writeFile(join(dir, "server.key"), opts.tls.leaf.key);
  }
  let proc: Bun.Subprocess<"ignore", "pipe", "pipe"> | null = null;
  let output = "";
  const args = (port: number): string[] => {
    const a = [
      REDIS_SERVER,
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      dir,
      "--daemonize",
      "no",
      "--loglevel",
      "notice",
    ];
    if (opts.tls)
      a.push(
        "--port",
        "0",
        "--tls-port",
        String(port),
        "--tls-cert-file",
        join(dir, "server.crt"),
        "--tls-key-file",
        join(dir, "server.key"),
        "--tls-ca-cert-file",
        join(dir, "ca.crt"),
        "--tls-auth-clients",
        "no",
      );
    else a.push("--port", String(port));
    if (opts.password !== undefined) a.push("--requirepass", opts.password);
    return a;
  };
  const launch = async (port: number): Promise<void> => {
    output = "";
    const p = Bun.spawn(args(port), { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    proc = p;
    const decoder = new TextDecoder();
    void (async () => {
      for await (const chunk of p.stdout)
        output = (output + decoder.decode(chunk)).slice(-64 * 1024);
    })().catch(() => {});
    void (async () => {
      for await (const chunk of p.stderr)
        output = (output + decoder.decode(chunk)).slice(-64 * 1024);
    })().catch(() => {});
    // Ready when it says so; a bind failure is its own error (startOnFreePorts retries it).
    for (;;) {
      if (/Ready to accept connections/.test(output)) return;
      if (p.exitCode !== null)
        throw new Error(`redis-server exited with ${p.exitCode}: ${output.slice(-2000)}`);
      await Bun.sleep(20);
    }
  };
  const port = await startOnFreePorts("redis-server", async () => {
    const [p] = freePorts(1) as [number];
    await launch(p);
    return p;
  });
  const scheme = opts.tls ? "rediss" : "redis";
  const url = `${scheme}://127.0.0.1:${port}/0`;
  const fx: RedisFixture = {
    port,
    url,
    password: opts.password ?? null,
    dir,
    async client() {
      const u = new URL(url);
      if (opts.password !== undefined) u.password = opts.password;
      const c = new RedisClient(u.href, {
        tls: opts.tls ? { ca: opts.tls.ca.cert } : false,
        enableOfflineQueue: false,
        autoReconnect: false,
      });
      await c.connect();
      return c;
    },
    signal(sig) {
      proc?.kill(sig);
    },
    async restart() {
      const old = proc;
      if (old !== null && old.exitCode === null) {
        old.kill("SIGKILL");
        await old.exited;
      }
      await launch(port);
    },
    logs: () => output,
    async stop() {
      const p = proc;
      if (p !== null && p.exitCode === null) {
        p.kill("SIGCONT");
        p.kill("SIGKILL");
        await p.exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
  return fx;
}
