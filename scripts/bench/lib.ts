/**
 * Process plumbing for scripts/bench.ts: children that are always stopped (by pid, never by
 * name), bounded waits, curl/wrk runners, and /proc readers for a child's RSS, CPU and ports.
 */
import type { Subprocess } from "bun";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";

/** Children's environment: no proxy variables, so "direct" really is direct. */
export const CHILD_ENV: Record<string, string> = Object.fromEntries(
  Object.entries(process.env).filter(
    (e): e is [string, string] => e[1] !== undefined && !/^(https?|all|no)_proxy$/i.test(e[0]),
  ),
);

const children = new Set<Subprocess>();

/** Stops every child still running (SIGTERM, then SIGKILL); each by its own pid. */
export async function stopAllChildren(): Promise<void> {
  await Promise.all([...children].map((c) => stopChild(c)));
}

export async function stopChild(c: Subprocess, graceMs = 2000): Promise<void> {
  if (c.exitCode === null && c.signalCode === null) {
    c.kill("SIGTERM");
    const t = setTimeout(() => c.kill("SIGKILL"), graceMs);
    await c.exited;
    clearTimeout(t);
  }
  children.delete(c);
}

export interface Child {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  pid: number;
  /** The last few KiB of stderr, for error messages. */
  stderrTail(): string;
  /** Resolves with the first stdout line (JSON from our helper scripts). */
  firstLine(timeoutMs: number): Promise<string>;
  /** Resolves with the first stderr match of `re`. */
  waitStderr(re: RegExp, timeoutMs: number): Promise<RegExpExecArray>;
  stop(): Promise<void>;
}

export function spawnChild(
  cmd: string[],
  opts: { cwd?: string; env?: Record<string, string> } = {},
): Child {
  const proc = Bun.spawn(cmd, {
    cwd: opts.cwd,
    env: opts.env ?? CHILD_ENV,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  children.add(proc);
  let err = "";
  let out = "";
  const errWaiters: Array<() => void> = [];
  const outWaiters: Array<() => void> = [];
  const pump = async (
    s: ReadableStream<Uint8Array>,
    onText: (t: string) => void,
    waiters: Array<() => void>,
  ): Promise<void> => {
    const dec = new TextDecoder();
    try {
      for await (const chunk of s) {
        onText(dec.decode(chunk, { stream: true }));
        for (const w of waiters.splice(0)) w();
      }
    } catch {
      /* child gone */
    }
    for (const w of waiters.splice(0)) w();
  };
  void pump(proc.stderr, (t) => (err = (err + t).slice(-16384)), errWaiters);
  void pump(proc.stdout, (t) => (out = (out + t).slice(-16384)), outWaiters);
  const until = async <T>(
    check: () => T | null,
    waiters: Array<() => void>,
    timeoutMs: number,
    what: string,
  ): Promise<T> => {
    const end = performance.now() + timeoutMs;
    for (;;) {
      const v = check();
      if (v !== null) return v;
      if (proc.exitCode !== null || proc.signalCode !== null)
        throw new Error(
          `${cmd.join(" ")} exited (${proc.exitCode ?? proc.signalCode}) before ${what}; stderr:\n${err.slice(-3000)}`,
        );
      const left = end - performance.now();
      if (left <= 0)
        throw new Error(
          `${cmd.join(" ")}: no ${what} within ${timeoutMs} ms; stderr:\n${err.slice(-3000)}`,
        );
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 50));
        waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  };
  return {
    proc,
    pid: proc.pid,
    stderrTail: () => err,
    firstLine: (timeoutMs) =>
      until(
        () => (out.includes("\n") ? (out.split("\n")[0] as string) : null),
        outWaiters,
        timeoutMs,
        "output line",
      ),
    waitStderr: (re, timeoutMs) =>
      until(() => re.exec(err), errWaiters, timeoutMs, `stderr matching ${re}`),
    stop: () => stopChild(proc),
  };
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command to completion, killed after `timeoutMs`. */
export async function run(cmd: string[], timeoutMs: number): Promise<RunResult> {
  const started = performance.now();
  const proc = Bun.spawn(cmd, { env: CHILD_ENV, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  children.add(proc);
  const t = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const [stdout, stderr] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
  ]);
  const code = await proc.exited;
  clearTimeout(t);
  children.delete(proc);
  return { code, stdout, stderr, ms: performance.now() - started };
}

export interface CurlResult {
  status: number;
  bytes: number;
  seconds: number;
  exit: number | null;
  stderr: string;
}

/** One curl transfer to /dev/null; `extra` are curl options before the URL. */
export async function curl(url: string, extra: string[], maxTimeS: number): Promise<CurlResult> {
  const r = await run(
    [
      "curl",
      "-sS",
      "--max-time",
      String(maxTimeS),
      "-o",
      "/dev/null",
      "-w",
      "%{http_code} %{size_download} %{time_total}\\n",
      ...extra,
      url,
    ],
    (maxTimeS + 5) * 1000,
  );
  const [status = "0", bytes = "0", seconds = "0"] = r.stdout.trim().split(/\s+/);
  return {
    status: Number(status),
    bytes: Number(bytes),
    seconds: Number(seconds),
    exit: r.code,
    stderr: r.stderr.trim(),
  };
}

export interface WrkResult {
  rps: number;
  p50ms: number;
  requests: number;
  errors: string | null;
  raw: string;
}

function toMs(v: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(v);
  if (!m) return NaN;
  const n = Number(m[1]);
  return m[2] === "us" ? n / 1000 : m[2] === "ms" ? n : m[2] === "s" ? n * 1000 : n * 60_000;
}

export async function wrk(
  target: string,
  opts: { threads: number; conns: number; seconds: number; script?: string },
): Promise<WrkResult> {
  const cmd = [
    "wrk",
    `-t${opts.threads}`,
    `-c${opts.conns}`,
    `-d${opts.seconds}s`,
    "--latency",
    "--timeout",
    "5s",
  ];
  if (opts.script) cmd.push("-s", opts.script);
  cmd.push(target);
  const r = await run(cmd, (opts.seconds + 15) * 1000);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(r.stdout)?.[1] ?? "NaN");
  // Anchored: "92.50%" in the thread stats must not be read as the 50th percentile.
  const p50 = toMs(/^\s*50%\s+(\S+)/m.exec(r.stdout)?.[1] ?? "");
  const requests = Number(/(\d+) requests in/.exec(r.stdout)?.[1] ?? "0");
  const problems = [
    /Non-2xx or 3xx responses: \d+/.exec(r.stdout)?.[0],
    /Socket errors: [^\n]+/.exec(r.stdout)?.[0],
  ].filter((x) => x !== undefined);
  return {
    rps,
    p50ms: p50,
    requests,
    errors:
      problems.length > 0 || r.code !== 0
        ? problems.join("; ") || `wrk exit ${r.code}: ${r.stderr.trim()}`
        : null,
    raw: r.stdout,
  };
}

/** VmRSS of a process in KiB (0 if it is gone). */
export function rssKiB(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

let clkTck = 100;
export async function initClock(): Promise<void> {
  const r = await run(["getconf", "CLK_TCK"], 5000).catch(() => null);
  const n = Number(r?.stdout.trim());
  if (Number.isFinite(n) && n > 0) clkTck = n;
}

/** User+system CPU seconds a process has used so far. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / clkTck;
  } catch {
    return 0;
  }
}

/** TCP ports `pid` is listening on, found through its socket inodes (/proc/net/tcp{,6}). */
export function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.add(m[1] as string);
      } catch {
        /* fd closed meanwhile */
      }
    }
  } catch {
    return [];
  }
  const ports: number[] = [];
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      // local_address is f[1] (HEX_IP:HEX_PORT), st is f[3] (0A = LISTEN), inode is f[9].
      if (f[3] === "0A" && inodes.has(f[9] ?? ""))
        ports.push(parseInt((f[1] ?? "").split(":")[1] ?? "0", 16));
    }
  }
  return ports;
}

export function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

export function fmtBytes(n: number): string {
  if (n >= GiB && n % GiB === 0) return `${n / GiB} GiB`;
  return `${Math.round(n / MiB)} MiB`;
}

export function fmtRate(bytesPerS: number): string {
  return `${(bytesPerS / MiB).toFixed(0)} MiB/s`;
}

/** Busy CPU seconds of the whole machine so far (all cores; /proc/stat). */
export function machineBusySeconds(): number {
  try {
    const f = (readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "")
      .trim()
      .split(/\s+/)
      .slice(1)
      .map(Number);
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    return (total - (f[3] ?? 0) - (f[4] ?? 0)) / clkTck;
  } catch {
    return 0;
  }
}

/** A reference proxy's last step: print `{"port":N}`, then serve until SIGTERM/SIGINT or `lifetimeMs`. */
export function serveUntilStopped(
  listener: { port: number; stop(closeActive?: boolean): void },
  lifetimeMs: number,
): void {
  process.stdout.write(JSON.stringify({ port: listener.port }) + "\n");
  const stop = (): void => {
    listener.stop(true);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  setTimeout(stop, lifetimeMs).unref();
}
