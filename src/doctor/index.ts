/**
 * `crm doctor [-config PATH] [--json]`, run on the crm host: is the config valid, can crm bind,
 * can it reach every mirrored registry the whole way a pull goes, does the allow-list cover what
 * a CONNECT pull needs, and what state the TLS certificate and the upstream quotas are in.
 * Exit 0 when every check passes, 1 otherwise.
 */
import { findConfigFile, loadConfigFile } from "../config/load.ts";
import type { Config } from "../config/types.ts";
import { createRuntime } from "../context.ts";
import { ConfigError, ConfigErrors } from "../errors.ts";
import type { Resolver } from "../net/resolver.ts";
import type { CertificateState } from "../status/sources.ts";
import { staticCertificateState } from "../tls/certificate-state.ts";
import { checkListen } from "./listen.ts";
import { checkCluster } from "../cluster/doctor.ts";
import { checkRegistry } from "./registry.ts";
import { upstreamsOf } from "../config/registries.ts";
import { renderJson, renderTable, Report } from "./report.ts";

export interface DoctorOptions {
  configPath: string | null;
  json: boolean;
  /** Tests map names to 127.0.0.1; the system resolver otherwise. */
  resolver?: Resolver;
  /** PEM trusted besides the system roots for the TLS check (tests). */
  extraCa?: string;
  /** The certificate state, when something better than the static file is known (ACME). */
  certificate?: (config: Config) => CertificateState;
}

export async function diagnose(opts: DoctorOptions): Promise<Report> {
  const report = new Report();
  let config: Config;
  try {
    const loaded = loadConfigFile(findConfigFile(opts.configPath, process.cwd()));
    config = loaded.config;
    report.pass(
      "config",
      `${config.file} is valid${loaded.warnings.length > 0 ? ` (${loaded.warnings.length} warning${loaded.warnings.length === 1 ? "" : "s"}: ${loaded.warnings.join("; ")})` : ""}`,
    );
  } catch (e) {
    if (!(e instanceof ConfigError || e instanceof ConfigErrors)) throw e;
    report.fail(
      "config",
      e.message.replace(/\n\s*/g, " "),
      "fix the keys named, then run crm doctor again (crm -t checks the config alone)",
    );
    return report;
  }
  await checkListen(config, report);

  const rt = createRuntime(config, () => {}, opts.resolver);
  const needed = new Map<string, [string, number]>();
  if (!config.mirror.enabled)
    report.pass("mirror", "disabled (mirror.enabled: false); no registry checked");
  else {
    for (const reg of config.mirror.registries.values()) {
      // Every upstream of a registry with several is checked on its own rows (a fallback that is
      // down is found before the day it is needed).
      const urls = upstreamsOf(reg);
      for (const [i, url] of urls.entries()) {
        const label = urls.length > 1 ? `${reg.name} upstream ${i + 1} (${url.host})` : reg.name;
        // One registry's unexpected failure is its own row; the report of the others is kept.
        const hosts = await checkRegistry(
          rt,
          { ...reg, upstream: url },
          config.doctor.images.get(reg.name) ?? null,
          report,
          { extraCa: opts.extraCa, label },
        ).catch((e: unknown) => {
          report.fail(
            `${label}: probe`,
            `the check stopped: ${(e as Error).message ?? String(e)}`,
            "report this as a crm bug, with this line",
          );
          return [] as Array<[string, number]>;
        });
        for (const [h, p] of hosts) needed.set(`${h}:${p}`, [h, p]);
      }
    }
  }
  // A CONNECT (HTTPS_PROXY) pull reaches every one of these hosts itself, through the allow-list.
  const missing = [...needed.values()]
    .filter(([h, p]) => !rt.policy.check(h, p).allowed)
    .map(([h, p]) => `${h}:${p}`);
  if (needed.size === 0) report.skip("allow-list (CONNECT pulls)", "no registry host learned");
  else if (missing.length === 0)
    report.pass(
      "allow-list (CONNECT pulls)",
      `allowed_hosts and allowed_ports cover ${[...needed.keys()].join(", ")}`,
    );
  else
    report.fail(
      "allow-list (CONNECT pulls)",
      `a pull through HTTPS_PROXY needs ${missing.join(", ")}, which allowed_hosts/allowed_ports refuse`,
      `add ${missing.map((m) => m.replace(/:\d+$/, "")).join(", ")} to allowed_hosts (and the ports to allowed_ports), or use crm only as a mirror`,
    );

  await checkCluster(config, report);

  const cert = (opts.certificate ?? staticCertificateState)(config);
  if (cert.mode === "none")
    report.pass(
      "TLS certificate",
      "no TLS on the listener (plain http): Docker needs https or insecure-registries for a mirror off localhost",
    );
  else if (cert.error !== undefined)
    report.fail(
      "TLS certificate",
      `${cert.mode} certificate: ${cert.error}`,
      cert.mode === "acme"
        ? "check the ACME account and that port 80/443 reaches crm"
        : "renew it (tls.cert_path), then systemctl reload crm",
    );
  else if ((cert.daysLeft ?? 0) < 14)
    report.fail(
      "TLS certificate",
      `${cert.mode} certificate for ${cert.names?.join(", ") ?? cert.subject} expires in ${cert.daysLeft} days (${cert.notAfter})`,
      "renew it (tls.cert_path), then systemctl reload crm",
    );
  else
    report.pass(
      "TLS certificate",
      `${cert.mode} certificate for ${cert.names?.join(", ") ?? cert.subject}, ${cert.daysLeft} days left`,
    );
  return report;
}

export async function runDoctor(opts: DoctorOptions): Promise<number> {
  const report = await diagnose(opts);
  process.stdout.write(
    opts.json
      ? renderJson(report.rows)
      : renderTable(report.rows, Math.max(100, process.stdout.columns ?? 120)),
  );
  return report.ok ? 0 : 1;
}
