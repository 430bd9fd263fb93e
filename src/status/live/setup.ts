/**
 * The set-up part of the status page at `/` (page.ts): what a node operator copies. It shows this
 * instance's URL, the mirrored registries by name and the allowed hosts, and never a secret: no
 * users, no passwords, not mirror.path_prefix (itself a credential for Docker's registry-mirrors),
 * and no upstream URL (a LAN registry's address is nobody's business). With access.users set,
 * endpoints.ts serves the page to users only.
 */
import type { Config } from "../../config/types.ts";

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export function renderIndex(c: Config): string {
  const url = c.publicUrl ?? "http://crm.example.com:8080 (set public_url in the config)";
  const base = c.publicUrl ?? "http://crm.example.com:8080";
  const host = base.replace(/^https?:\/\//, "");
  const secretPath = c.mirror.pathPrefix !== "" ? "/YOUR-MIRROR-PATH" : "";
  const registries = [...c.mirror.registries.values()];
  const block = (title: string, code: string): string =>
    `<h3>${esc(title)}</h3>\n<pre>${esc(code)}</pre>`;
  const sections: string[] = [];
  if (c.mirror.enabled) {
    sections.push(
      block(
        "Docker (/etc/docker/daemon.json), then systemctl restart docker",
        JSON.stringify({ "registry-mirrors": [`${base}${secretPath}`] }, null, 2),
      ),
      block(
        "containerd (/etc/containerd/certs.d/docker.io/hosts.toml; one directory per registry)",
        `server = "https://registry-1.docker.io"\n\n[host."${base}${secretPath}"]\n  capabilities = ["pull", "resolve"]`,
      ),
      block(
        "skopeo / podman (/etc/containers/registries.conf)",
        `[[registry]]\nprefix = "docker.io"\nlocation = "registry-1.docker.io"\n\n[[registry.mirror]]\nlocation = "${host}${secretPath}"${base.startsWith("http:") ? "\ninsecure = true" : ""}`,
      ),
    );
  }
  sections.push(
    block(
      "Any client through the proxy",
      `export HTTPS_PROXY=${base}\ncurl -x ${base} https://registry-1.docker.io/v2/`,
    ),
  );
  const authNote =
    c.access.users.size > 0
      ? "<p>This instance requires a user name and password (ask its operator).</p>"
      : "";
  const prefixNote = secretPath
    ? "<p>The mirror is served under a private path: ask the operator for it.</p>"
    : "";
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>crm</title>
<style>body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;line-height:1.45}pre{background:#f4f4f4;padding:.8rem;overflow-x:auto}td,th{padding:.2rem .6rem;text-align:left}</style>
</head><body>
<h1>crm — Container Registry Mirrors</h1>
<p>Instance: <code>${esc(url)}</code></p>
${authNote}${prefixNote}
<h2>Set-up</h2>
${sections.join("\n")}
<h2>Mirrored registries</h2>
${
  c.mirror.enabled
    ? `<ul>${registries.map((r) => `<li><code>${esc(r.name)}</code></li>`).join("")}</ul>
<p>Other registries by prefix: <code>${esc(host)}${esc(secretPath)}/gcr.io/distroless/static:nonroot</code></p>`
    : "<p>The mirror is disabled on this instance.</p>"
}
<h2>Allowed hosts (proxy)</h2>
<ul>${c.allowedHosts.map((h) => `<li><code>${esc(h)}</code></li>`).join("")}</ul>
<p>Ports: ${c.allowedPorts.join(", ")}</p>
</body></html>
`;
}
