/**
 * Can crm bind its listen addresses? On a host where crm already runs, the port is taken by crm
 * itself: an address in use that answers crm's /healthz counts as fine.
 */
import { existsSync, statSync, accessSync, constants } from "node:fs";
import { dirname } from "node:path";
import type { Config } from "../config/types.ts";
import type { ListenAddress } from "../config/listen.ts";
import type { Report } from "./report.ts";

async function crmAnswers(a: ListenAddress, tls: boolean): Promise<boolean> {
  const host =
    a.hostname === "0.0.0.0" || a.hostname === ""
      ? "127.0.0.1"
      : a.hostname === "::"
        ? "[::1]"
        : a.hostname.includes(":")
          ? `[${a.hostname}]`
          : a.hostname;
  try {
    const res = await fetch(`${tls ? "https" : "http"}://${host}:${a.port}/healthz`, {
      proxy: false,
      tls: { rejectUnauthorized: false },
      signal: AbortSignal.timeout(3000),
    } as RequestInit);
    const text = (await res.text()).trim();
    return (
      (res.status === 200 && text === "ok") || (res.status === 503 && text === "shutting down")
    );
  } catch {
    return false;
  }
}

async function unixLive(path: string): Promise<boolean> {
  try {
    const res = await fetch("http://localhost/healthz", {
      unix: path,
      signal: AbortSignal.timeout(3000),
    } as RequestInit);
    await res.body?.cancel();
    return true;
  } catch {
    return false;
  }
}

export async function checkListen(config: Config, report: Report): Promise<void> {
  for (const a of config.listen) {
    const name = `listen ${a.source}`;
    if (a.unix !== undefined) {
      const dir = dirname(a.unix);
      if (existsSync(a.unix)) {
        if (!statSync(a.unix).isSocket())
          report.fail(
            name,
            `${a.unix} exists and is not a socket`,
            "remove or move that file, or listen on another path",
          );
        else if (await unixLive(a.unix))
          report.pass(name, "in use by a running server (crm?) that answers /healthz");
        else report.pass(name, "a stale socket; crm replaces it at start");
        continue;
      }
      try {
        accessSync(dir, constants.W_OK);
        report.pass(name, `${dir} is writable`);
      } catch (e) {
        report.fail(
          name,
          `cannot create a socket in ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
          `create ${dir} for the crm user (systemd: RuntimeDirectory=crm)`,
        );
      }
      continue;
    }
    try {
      const l = Bun.listen({ hostname: a.hostname, port: a.port, socket: { data() {} } });
      l.stop(true);
      report.pass(name, "bindable");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      if (/EADDRINUSE/.test(code) || /in use/i.test((e as Error).message)) {
        if (await crmAnswers(a, config.tls !== null))
          report.pass(name, "in use by the running crm (its /healthz answers)");
        else
          report.fail(
            name,
            `port ${a.port} is in use by another process`,
            `stop it (ss -ltnp 'sport = :${a.port}' names it) or change listen`,
          );
      } else if (/EACCES/.test(code)) {
        report.fail(
          name,
          `no permission to bind port ${a.port}`,
          "ports below 1024 need CAP_NET_BIND_SERVICE (the unit's AmbientCapabilities line) or a higher port",
        );
      } else if (/EADDRNOTAVAIL/.test(code)) {
        report.fail(
          name,
          `${a.hostname} is not an address of this host`,
          "use one of this host's addresses (ip -brief address), or 0.0.0.0",
        );
      } else report.fail(name, `cannot bind: ${code}`, "check the address");
    }
  }
}
