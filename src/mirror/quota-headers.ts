/**
 * The upstream's pull-quota fields (Docker Hub: `ratelimit-limit`, `ratelimit-remaining`,
 * `docker-ratelimit-source`; others `x-ratelimit-*`) on answers crm builds itself. Docker's
 * documented quota check is a manifest HEAD reading them, so every mirror answer that caused an
 * upstream exchange carries the fields of that exchange; an answer from memory caused none, and
 * carries none (it would report a count the client did not spend and that may be stale).
 */
export type QuotaFields = ReadonlyArray<readonly [string, string]>;

export function isQuotaField(name: string): boolean {
  return (
    name === "docker-ratelimit-source" ||
    name.startsWith("ratelimit-") ||
    name.startsWith("x-ratelimit-")
  );
}

/** The quota fields of an upstream answer (names lower-case, as Headers iterates them). */
export function quotaFields(h: Headers): QuotaFields {
  const out: Array<readonly [string, string]> = [];
  for (const [k, v] of h) if (isQuotaField(k)) out.push([k, v]);
  return out;
}

export function setQuotaFields(h: Headers, fields: QuotaFields): void {
  for (const [k, v] of fields) h.append(k, v);
}
