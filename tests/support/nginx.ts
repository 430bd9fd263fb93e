/**
 * A real nginx (Debian's nginx-light plus libnginx-mod-stream) as the front of a public mirror,
 * started with its own prefix and config in a temp dir: an http server that proxies to crm's
 * unix socket with X-Forwarded-For (the README's set-up), and a stream server that passes TCP
 * to crm with the PROXY protocol header (as HAProxy and cloud balancers do). Loopback only.
 */
import { test } from "bun:test";
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePorts } from "./ports.ts";

export const NGINX = "/usr/sbin/nginx";
/** The stream front connects to crm from this address: what crm lists in access.trusted_proxies. */
export const STREAM_BIND = "127.0.0.9";
const STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so";

export interface Nginx {
  /** http → crm's unix socket, with X-Forwarded-For. */
  httpPort: number;
  /** TCP → crm's proxy_protocol listener. */
  streamPort: number;
  dir: string;
  stop(): Promise<void>;
}

/**
 * nginx lives in /usr/sbin (often not on a user's PATH) and its stream module (PROXY protocol to
 * crm) is a package of its own. Like tools.ts: a note and a skip outside CI, a failing test in CI.
 */
export function missingNginx(): boolean {
  const missing = [NGINX, STREAM_MODULE].filter((f) => !existsSync(f));
  if (missing.length === 0) return false;
  if (process.env.CRM_SKIP_E2E === "1") return true;
  const hint = "Debian: apt-get install nginx-light libnginx-mod-stream";
  if (process.env.CI === "true" || process.env.CI === "1") {
    test("crm behind nginx: prerequisites", () => {
      throw new Error(`missing ${missing.join(", ")} (${hint}); .ci/run installs them`);
    });
  } else
    console.warn(`[skip] crm behind nginx: missing ${missing.join(", ")} (${hint}); CI runs these`);
  return true;
}

/** A directory nginx's workers (user nobody when started as root) can traverse. */
export async function sharedTempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await chmod(dir, 0o755);
  return dir;
}

export async function startNginx(opts: {
  unixSocket: string;
  proxyProtocolPort: number;
}): Promise<Nginx> {
  const dir = await sharedTempDir("crm-nginx-");
  for (const d of ["logs", "tmp"]) await mkdir(join(dir, d), { recursive: true });
  // Taken together: two separate probes can be handed the same port.
  const [httpPort, streamPort] = freePorts(2) as [number, number];
  const conf = `
load_module ${STREAM_MODULE};
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log info;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  server {
    listen 127.0.0.1:${httpPort};
    location / {
      proxy_pass http://unix:${opts.unixSocket};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_request_buffering off;
      client_max_body_size 0;
    }
  }
}
stream {
  server {
    listen 127.0.0.1:${streamPort};
    proxy_pass 127.0.0.1:${opts.proxyProtocolPort};
    proxy_bind ${STREAM_BIND};
    proxy_protocol on;
  }
}
`;
  const stop = await runNginx(dir, conf, [httpPort, streamPort]);
  return { httpPort, streamPort, dir, stop };
}

/**
 * Writes `conf` into `dir` (made by sharedTempDir, with logs/ and tmp/), starts nginx on it and
 * waits, 15 s at most, until every port in `ports` accepts. Gives the stop, which also removes
 * `dir`. One runner for every nginx fixture: the front of a public mirror, the balancer.
 */
export async function runNginx(
  dir: string,
  conf: string,
  ports: number[],
): Promise<() => Promise<void>> {
  await writeFile(join(dir, "nginx.conf"), conf);
  const proc = Bun.spawn(
    [
      NGINX,
      "-p",
      dir,
      "-c",
      join(dir, "nginx.conf"),
      "-e",
      join(dir, "logs", "error.log"),
      "-g",
      "daemon off;",
    ],
    { stdout: "ignore", stderr: "pipe" },
  );
  const end = Date.now() + 15_000;
  for (;;) {
    if (proc.exitCode !== null) {
      const log = await readFile(join(dir, "logs", "error.log"), "utf8").catch(() => "");
      throw new Error(
        `nginx exited with ${proc.exitCode}: ${await new Response(proc.stderr).text()} ${log}`,
      );
    }
    if ((await Promise.all(ports.map(canConnect))).every(Boolean)) break;
    if (Date.now() > end) {
      proc.kill("SIGKILL");
      throw new Error("nginx did not start listening within 15 s");
    }
    await Bun.sleep(50);
  }
  return async () => {
    proc.kill("SIGQUIT");
    const t = setTimeout(() => proc.kill("SIGKILL"), 5000);
    await proc.exited;
    clearTimeout(t);
    await rm(dir, { recursive: true, force: true });
  };
}

async function canConnect(port: number): Promise<boolean> {
  try {
    const s = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {}, error() {} } });
    s.end();
    return true;
  } catch {
    return false;
  }
}
