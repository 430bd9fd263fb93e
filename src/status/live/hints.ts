/**
 * A hint for a failed request: what the operator most likely has to change. The message names
 * the cause; the hint names the key or the command.
 */
export function hintFor(kind: string, status: number, message: string): string {
  if (/is not mirrored here/.test(message))
    return "add the registry to mirror.registries (crm doctor checks it end to end)";
  if (/(redirect to|token realm host) \S+ refused/.test(message))
    return "if that host is genuine, add it to the registry's redirect_hosts";
  if (status === 429 || /TOOMANYREQUESTS|rate limit/i.test(message))
    return "the upstream's pull quota is used up: wait for its window, or give the registry a username and password_file";
  if (/refused .* (anonymously|with)/.test(message) || /DENIED/.test(message))
    return "the repository does not exist upstream, or needs credentials (username, password_file)";
  if (status === 403 && (kind === "connect" || kind === "forward"))
    return "the target is not in allowed_hosts / allowed_ports";
  if (status === 401 || status === 407)
    return "the client sent no or wrong credentials (access.users)";
  if (status === 502 || status === 504 || status === 0)
    return "crm could not reach the upstream: run crm doctor on this host";
  if (status === 404) return "the image, tag or blob does not exist upstream (check the name)";
  return "run crm doctor on this host";
}
