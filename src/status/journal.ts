/**
 * The record of recent requests: every request crm answers gets an id (sent to mirror clients as
 * `X-Crm-Request-Id`) and, when it ends, a short entry here. `crm client-config --check` reads it
 * to prove that a runtime's pull really went through crm and did not silently fall back to the
 * upstream; the status page shows its tail. Memory is bounded: a ring of CAPACITY entries, each
 * with its strings cut to a fixed length. Nothing secret is kept: targets are already redacted
 * (log.ts) and no header is stored.
 */
import { randomBytes } from "node:crypto";

/** Entries kept; the status page shows the last 100, `--check` looks back further. */
export const JOURNAL_CAPACITY = 1000;
const MAX_TEXT = 300;

export interface JournalEntry {
  /** `<instance>-<seq>`, as sent in X-Crm-Request-Id. */
  id: string;
  seq: number;
  /** Unix ms when the request ended. */
  time: number;
  client: string;
  kind: string;
  method: string;
  /** Redacted target (path for mirror and local requests, URL or host:port for proxy ones). */
  target: string;
  status: number;
  bytesIn: number;
  bytesOut: number;
  ms: number;
  /** Mirror requests: which registry, repository and reference crm asked its upstream for. */
  registry?: string;
  repo?: string;
  ref?: string;
  /** Token state, redirect host, error message or other note from the log line. */
  notes: Record<string, string | number>;
}

export type JournalInput = Omit<JournalEntry, "id" | "seq" | "time" | "notes"> & {
  id: string;
  notes?: Record<string, string | number | undefined>;
};

const cut = (s: string): string => (s.length > MAX_TEXT ? s.slice(0, MAX_TEXT) + "…" : s);

export class RequestJournal {
  /** Random per process: ids from a restarted crm, or from another replica, never match. */
  readonly instance: string;
  private seq = 0;
  private readonly ring: (JournalEntry | undefined)[] = [];
  private head = 0;

  constructor(
    private readonly capacity = JOURNAL_CAPACITY,
    instance = randomBytes(4).toString("hex"),
  ) {
    this.instance = instance;
  }

  /** A new request id; its entry is written by `record` when the request ends. */
  nextId(): string {
    return `${this.instance}-${++this.seq}`;
  }

  /** The sequence number of the last id handed out. */
  get last(): number {
    return this.seq;
  }

  record(input: JournalInput): void {
    const seq = seqOf(input.id, this.instance);
    if (seq === null) return;
    const notes: Record<string, string | number> = {};
    const given = input.notes;
    if (given !== undefined)
      for (const k in given) {
        const v = given[k];
        if (v !== undefined) notes[k] = typeof v === "string" ? cut(v) : v;
      }
    const entry: JournalEntry = {
      id: input.id,
      seq,
      time: Date.now(),
      client: cut(input.client),
      kind: input.kind,
      method: input.method,
      target: cut(input.target),
      status: input.status,
      bytesIn: input.bytesIn,
      bytesOut: input.bytesOut,
      ms: input.ms,
      notes,
    };
    if (input.registry !== undefined) entry.registry = cut(input.registry);
    if (input.repo !== undefined) entry.repo = cut(input.repo);
    if (input.ref !== undefined) entry.ref = cut(input.ref);
    if (this.ring.length < this.capacity) this.ring.push(entry);
    else {
      this.ring[this.head] = entry;
      this.head = (this.head + 1) % this.capacity;
    }
  }

  /** Entries in the order they ended, oldest first. */
  entries(): JournalEntry[] {
    const out: JournalEntry[] = [];
    for (let i = 0; i < this.ring.length; i++) {
      const e = this.ring[(this.head + i) % this.ring.length];
      if (e) out.push(e);
    }
    return out;
  }

  /** The last `n` entries, newest first. */
  recent(n: number): JournalEntry[] {
    return this.entries().slice(-n).reverse();
  }

  /** Entries for requests that started after id `seq`, optionally from one client address only. */
  after(seq: number, client?: string): JournalEntry[] {
    return this.entries().filter(
      (e) => e.seq > seq && (client === undefined || e.client === client),
    );
  }
}

/** The sequence number in an id of this instance, or null. */
export function seqOf(id: string, instance: string): number | null {
  if (!id.startsWith(instance + "-")) return null;
  const n = Number(id.slice(instance.length + 1));
  return Number.isSafeInteger(n) && n > 0 ? n : null;
}
