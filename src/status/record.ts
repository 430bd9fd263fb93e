/**
 * Turns one finished exchange into its journal entry: the mirror's log fields (registry, repo,
 * ref) become fields of their own so `--check` can match a pull, the rest stay notes.
 */
import type { Exchange } from "../connection.ts";
import type { JournalEntry, RequestJournal } from "./journal.ts";

/** `mountPrefix` (mirror.path_prefix) is itself a credential for Docker's mirrors: it is never kept. */
export function recordExchange(journal: RequestJournal, ex: Exchange, kind: string, target: string, status: number, bytesIn: number, bytesOut: number, ms: number, note: string | undefined, mountPrefix = ""): void {
  if (mountPrefix !== "" && target.startsWith(mountPrefix + "/")) target = target.slice(mountPrefix.length);
  const { registry, repo, ref, ...rest } = ex.logFields;
  const named: Partial<Pick<JournalEntry, "registry" | "repo" | "ref">> = {};
  if (registry !== undefined) named.registry = String(registry);
  if (repo !== undefined) named.repo = String(repo);
  if (ref !== undefined) named.ref = String(ref);
  journal.record({
    id: ex.id,
    client: ex.client,
    kind,
    method: ex.head.method,
    target,
    status,
    bytesIn,
    bytesOut,
    ms: Math.round(ms),
    ...named,
    notes: { ...rest, note },
  });
}
