/**
 * nginx as the benchmark's peer: a reverse proxy in front of the bench origin, so crm's rows can
 * be set against the proxy the issue compared it with ("nginx 1.22 as a reverse proxy"), in the
 * same run, on the same cores. One worker process, because crm is one process; proxy_buffering
 * off (crm does not buffer either); a keep-alive upstream pool; no access log. Everything nginx
 * writes (pid, error log, temp dirs) stays inside the bench's tmp dir, and it runs in the
 * foreground (`daemon off;`) as a child that is stopped by its pid like every other child.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePorts } from "../../tests/support/ports.ts";
import { spawnChild, type Child } from "./lib.ts";

export const NGINX_BIN = "/usr/sbin/nginx";

/** The directives that decide what nginx does per request, shown in the notes. */
export const NGINX_SETUP =
  "worker_processes 1, proxy_buffering off, upstream keepalive 32, access_log off";

/**
 * With proxy_buffering off nginx moves a body through one proxy_buffer_size buffer, by default
 * one page (4 KiB): a read and a write per 4 KiB. The tuned peer raises it to 64 KiB, which on
 * this machine made 8 parallel transfers ~1.8× faster; the parallel rows measure both, so
 * "ahead of the peers" is judged against the faster one.
 */
export const TUNED_BUFFER = "64k";

export interface Nginx {
  /** Listening port per upstream name given to startNginx. */
  ports: Record<string, number>;
  /** The master's pid (the one to stop). */
  pid: number;
  /** The worker's pid (the one doing the work, whose CPU counts). */
  workerPid: number;
  version: string;
  child: Child;
  stop(): Promise<void>;
}

function config(
  dir: string,
  servers: Array<{ name: string; listen: number; upstream: number }>,
  buffer: string | undefined,
): string {
  const buffers = buffer
    ? `\n      proxy_buffer_size ${buffer};\n      proxy_buffers 8 ${buffer};\n      proxy_busy_buffers_size ${buffer};`
    : "";
  const blocks = servers.map(
    (s) => `
  upstream up_${s.name} {
    server 127.0.0.1:${s.upstream};
    keepalive 32;
  }
  server {
    listen 127.0.0.1:${s.listen};
    location / {
      proxy_pass http://up_${s.name};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;${buffers}
      proxy_read_timeout 120s;
      proxy_send_timeout 120s;
    }
  }`,
  );
  return `worker_processes 1;
pid ${join(dir, "nginx.pid")};
error_log ${join(dir, "error.log")} warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path ${join(dir, "client_body")};
  proxy_temp_path ${join(dir, "proxy")};
  fastcgi_temp_path ${join(dir, "fastcgi")};
  uwsgi_temp_path ${join(dir, "uwsgi")};
  scgi_temp_path ${join(dir, "scgi")};
${blocks.join("\n")}
}
`;
}

/** The one child of the master (`/proc/PID/task/PID/children`), or 0 while there is none yet. */
function workerOf(pid: number): number {
  try {
    return (
      Number(
        readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/)[0] ?? "0",
      ) || 0
    );
  } catch {
    return 0;
  }
}

/**
 * Starts nginx with one reverse-proxy server per entry of `upstreams` (name → port on 127.0.0.1),
 * or answers null when nginx is not installed. Ready when every port answers an HTTP request.
 * `buffer`: proxy_buffer_size (and the buffers that must match it); nginx's default without.
 */
export async function startNginx(
  dir: string,
  upstreams: Record<string, number>,
  buffer?: string,
): Promise<Nginx | null> {
  if (!existsSync(NGINX_BIN)) return null;
  mkdirSync(dir, { recursive: true });
  // nginx has no port 0: it binds ports freed for it just before; one taken in between fails its
  // start with "Address already in use" in the error, which the caller reports.
  const entries = Object.entries(upstreams);
  const ports = freePorts(entries.length);
  const servers = entries.map(([name, upstream], i) => ({
    name,
    upstream,
    listen: ports[i] as number,
  }));
  const file = join(dir, "nginx.conf");
  writeFileSync(file, config(dir, servers, buffer));
  const version = await Bun.spawn([NGINX_BIN, "-v"], {
    stdout: "ignore",
    stderr: "pipe",
  }).stderr.text();
  const child = spawnChild(
    [NGINX_BIN, "-e", join(dir, "error.log"), "-p", dir, "-c", file, "-g", "daemon off;"],
    { cwd: dir },
  );
  const stop = (): Promise<void> => child.stop();
  const end = performance.now() + 10_000;
  try {
    for (const s of servers) {
      for (;;) {
        const ok = await fetch(`http://127.0.0.1:${s.listen}/`)
          .then(async (r) => (await r.arrayBuffer(), true))
          .catch(() => false);
        if (ok) break;
        if (child.proc.exitCode !== null)
          throw new Error(`nginx exited (${child.proc.exitCode}): ${errorLog(dir)}`);
        if (performance.now() > end)
          throw new Error(
            `nginx did not answer on 127.0.0.1:${s.listen} within 10 s: ${errorLog(dir)}`,
          );
        await Bun.sleep(10);
      }
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    ports: Object.fromEntries(servers.map((s) => [s.name, s.listen])),
    pid: child.pid,
    workerPid: workerOf(child.pid),
    version: version.trim().replace(/^nginx version: /, ""),
    child,
    stop,
  };
}

function errorLog(dir: string): string {
  try {
    return readFileSync(join(dir, "error.log"), "utf8").trim().slice(-600);
  } catch {
    return "(no error log)";
  }
}
