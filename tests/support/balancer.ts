/**
 * nginx as a round-robin balancer in front of several crm replicas (the deploy kit's Service,
 * or a load balancer in front of one crm per VPS): plain http, buffering off, loopback only.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { runNginx, sharedTempDir } from "./nginx.ts";
import { freePorts, startOnFreePorts } from "./ports.ts";

export interface Balancer {
  port: number;
  stop(): Promise<void>;
}

export async function startBalancer(backends: number[]): Promise<Balancer> {
  const dir = await sharedTempDir("crm-lb-");
  for (const d of ["logs", "tmp"]) await mkdir(join(dir, d), { recursive: true });
  return startOnFreePorts("nginx balancer", async () => {
    const [port] = freePorts(1) as [number];
    const conf = `
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log info;
events { worker_connections 512; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  upstream crm { ${backends.map((p) => `server 127.0.0.1:${p};`).join(" ")} keepalive 16; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://crm;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_next_upstream off;
      client_max_body_size 0;
    }
  }
}
`;
    return { port, stop: await runNginx(dir, conf, [port]) };
  });
}
