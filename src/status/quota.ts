/**
 * An upstream pull quota as the status page, /metrics readers and `crm doctor` show it. Status
 * defines the shape it reads; the mirror's quota tracker (mirror/upstream/quota.ts) fills it.
 */
export interface RateLimit {
  limit: number;
  remaining: number;
  /** The `w=` window in seconds, when given. */
  windowS: number | null;
  /** `docker-ratelimit-source`: the address (or account) the upstream counts against. */
  source: string | null;
  /** When crm saw it (ms since the epoch). */
  at: number;
}

export interface QuotaView extends RateLimit {
  registry: string;
}

/** "76 of 100 per 6 h": how the status page and crm doctor say a quota. */
export function describeQuota(q: RateLimit): string {
  const w = q.windowS;
  const window = w === null ? "" : ` per ${w >= 3600 ? `${+(w / 3600).toFixed(1)} h` : `${w} s`}`;
  return `${q.remaining} of ${q.limit}${window}`;
}
