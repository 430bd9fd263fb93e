/**
 * Real container runtimes for tests, each in its own temp dir with its own socket, so nothing of
 * the host's /etc, /var/lib or /run is read or written:
 *   startContainerd(dir, env)  containerd 1.6 without the CRI plugin (content fetch + unpack only)
 *   startDockerd(dir, configFile, env)  dockerd 20.10 on vfs, no networking, its own containerd
 * Pass HTTPS_PROXY / HTTP_PROXY pointing at a dead loopback port in `env`: Go never proxies
 * loopback, so a mirror on 127.0.0.1 is reached, and any fallback to a public registry dies at
 * the dead proxy instead of resolving a public name.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface RuntimeProcess {
  /** containerd: the gRPC socket; dockerd: the API socket. */
  socket: string;
  logs(): string;
  stop(): Promise<void>;
}

function spawnDaemon(
  cmd: string[],
  env: Record<string, string>,
): { proc: Bun.Subprocess; logs: () => string } {
  let out = "";
  const proc = Bun.spawn(cmd, {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, ...env },
  });
  const drain = async (s: ReadableStream<Uint8Array>): Promise<void> => {
    const d = new TextDecoder();
    try {
      for await (const c of s) out = (out + d.decode(c, { stream: true })).slice(-200_000);
    } catch {
      // killed mid-write
    }
  };
  void drain(proc.stdout as ReadableStream<Uint8Array>);
  void drain(proc.stderr as ReadableStream<Uint8Array>);
  return { proc, logs: () => out };
}

async function waitFor(
  what: string,
  ready: () => Promise<boolean>,
  proc: Bun.Subprocess,
  logs: () => string,
  ms = 60_000,
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ready())) {
    if (proc.exitCode !== null)
      throw new Error(`${what} exited with ${proc.exitCode}:\n${logs().slice(-4000)}`);
    if (Date.now() > end)
      throw new Error(`${what} not ready within ${ms} ms:\n${logs().slice(-4000)}`);
    await Bun.sleep(100);
  }
}

async function stopProcess(proc: Bun.Subprocess): Promise<void> {
  if (proc.exitCode !== null) return;
  proc.kill("SIGTERM");
  const t = setTimeout(() => proc.kill("SIGKILL"), 10_000);
  await proc.exited;
  clearTimeout(t);
}

async function commandOk(cmd: string[], env: Record<string, string>): Promise<boolean> {
  const p = Bun.spawn(cmd, {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "ignore",
    env: { ...process.env, ...env },
  });
  return (await p.exited) === 0;
}

export async function startContainerd(
  dir: string,
  env: Record<string, string>,
): Promise<RuntimeProcess> {
  mkdirSync(dir, { recursive: true });
  const socket = join(dir, "containerd.sock");
  const config = join(dir, "config.toml");
  writeFileSync(
    config,
    [
      "version = 2",
      `root = "${join(dir, "root")}"`,
      `state = "${join(dir, "state")}"`,
      // Content fetch and unpack need neither CRI nor a network.
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      "[grpc]",
      `  address = "${socket}"`,
      "[ttrpc]",
      `  address = "${socket}.ttrpc"`,
      "[debug]",
      `  address = "${join(dir, "debug.sock")}"`,
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = "${join(dir, "opt")}"`,
      "",
    ].join("\n"),
  );
  const { proc, logs } = spawnDaemon(["containerd", "--config", config], env);
  await waitFor(
    "containerd",
    () => commandOk(["ctr", "--address", socket, "version"], {}),
    proc,
    logs,
  );
  return { socket, logs, stop: () => stopProcess(proc) };
}

export async function startDockerd(
  dir: string,
  configFile: string,
  env: Record<string, string>,
): Promise<RuntimeProcess> {
  for (const d of ["data", "exec"]) mkdirSync(join(dir, d), { recursive: true });
  const socket = join(dir, "docker.sock");
  const { proc, logs } = spawnDaemon(
    [
      "dockerd",
      "--config-file",
      configFile,
      "--storage-driver",
      "vfs",
      "--data-root",
      join(dir, "data"),
      "--exec-root",
      join(dir, "exec"),
      "--pidfile",
      join(dir, "docker.pid"),
      "-H",
      `unix://${socket}`,
      "--iptables=false",
      "--ip6tables=false",
      "--bridge=none",
    ],
    env,
  );
  await waitFor(
    "dockerd",
    () => commandOk(["docker", "-H", `unix://${socket}`, "info", "--format", "{{.ID}}"], {}),
    proc,
    logs,
  );
  return { socket, logs, stop: () => stopProcess(proc) };
}
