/**
 * The code's shape, guarded: every module of src/ sits in one layer of the table below, and an
 * import (static, dynamic, type-only or re-export) may only point to the same layer or a lower
 * one; no import cycle exists at all. A new module gets a row here (the test names any file the
 * table does not place), so the shape cannot erode unnoticed.
 */
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const SRC = resolve(import.meta.dir, "../src");

/**
 * Lowest first. A pattern ending in "/" is a folder, any other names one file; the longest
 * pattern that matches a module decides its layer, so a file can sit below the rest of its folder
 * (a section's config builder below the feature that reads it).
 */
export const LAYERS: ReadonlyArray<readonly [name: string, patterns: readonly string[]]> = [
  // Leaves: no feature of crm in them, imported from everywhere.
  [
    "leaves",
    [
      "errors.ts",
      "log.ts",
      "linked-list.ts",
      "host-policy.ts",
      "net/host-port.ts",
      "config/checker.ts",
      "config/duration.ts",
      "config/did-you-mean.ts",
      "access/cidr.ts",
      "access/proxy-protocol.ts",
      "access/peer-address.ts",
      "pki/",
      "tls/status.ts",
      "status/sources.ts",
      "status/quota.ts",
      "mirror/errors.ts",
    ],
  ],
  // Bytes on sockets: head parser, body framing, the writer, backpressure, dialing.
  ["wire", ["http/", "net/"]],
  // Each config section's type and builder, then the Config that assembles them.
  [
    "config",
    [
      "config/",
      "access/client-address.ts",
      "limits/config.ts",
      "tls/config.ts",
      "mirror/rules.ts",
      "mirror/manifests/config.ts",
      "mirror/fanout/config.ts",
      "mirror/upstream/failover-config.ts",
      "doctor/config.ts",
      "client-config/image-ref.ts",
      "status/config.ts",
      "cluster/config.ts",
    ],
  ],
  // crm's HTTP/1.1 client for every upstream request.
  ["upstream", ["upstream/"]],
  // State built from the Config that handlers read: access, limits, certificates, metrics, the Runtime.
  [
    "services",
    [
      "access/",
      "limits/",
      "tls/",
      "metrics.ts",
      "status/activity.ts",
      "status/journal.ts",
      "context.ts",
      "cluster/store.ts",
      "cluster/budget.ts",
      "cluster/probe.ts",
      "cluster/rate.ts",
      "cluster/brake.ts",
      "cluster/tokens.ts",
      "cluster/heartbeat.ts",
    ],
  ],
  // What a handler is given: the exchange types and the route it was sent by.
  ["exchange", ["proxy/exchange.ts", "proxy/router.ts"]],
  // The status record, page and endpoints (handlers of their own, below the mirror that feeds them).
  ["status", ["status/"]],
  ["mirror", ["mirror/"]],
  // What replicas share through a store (cluster:), plugged into the mirror, limits and access.
  ["cluster", ["cluster/"]],
  // Accept, read heads, route, dispatch, write answers.
  ["proxy", ["proxy/"]],
  // Commands: each is a whole program over the layers below.
  [
    "commands",
    [
      "main.ts",
      "cli.ts",
      "config/describe.ts",
      "pki/command.ts",
      "doctor/",
      "client-config/",
      "cluster/doctor.ts",
    ],
  ],
];

function modules(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir)) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) modules(p, out);
    else if (p.endsWith(".ts")) out.push(relative(SRC, p));
  }
  return out;
}

function layerOf(mod: string): number | null {
  let best: { len: number; layer: number } | null = null;
  LAYERS.forEach(([, patterns], layer) => {
    for (const p of patterns) {
      const hit = p.endsWith("/") ? mod.startsWith(p) : mod === p;
      if (hit && (best === null || p.length > best.len)) best = { len: p.length, layer };
    }
  });
  return best === null ? null : (best as { layer: number }).layer;
}

/** Every relative specifier: `from "x"` (imports, type imports, re-exports), `import("x")`, `import "x"`. */
const SPECIFIER =
  /\bfrom\s*["']([^"']+)["']|\bimport\s*\(\s*["']([^"']+)["']\s*\)|^\s*import\s*["']([^"']+)["']/gm;

function importsOf(mod: string): string[] {
  const text = readFileSync(join(SRC, mod), "utf8").replace(/\/\*[\s\S]*?\*\/|^\s*\/\/.*$/gm, "");
  const out: string[] = [];
  for (const m of text.matchAll(SPECIFIER)) {
    const spec = m[1] ?? m[2] ?? m[3] ?? "";
    if (!spec.startsWith(".")) continue;
    const target = relative(SRC, resolve(dirname(join(SRC, mod)), spec));
    if (!target.startsWith("..")) out.push(target);
  }
  return out;
}

const mods = modules(SRC).sort();
const graph = new Map(mods.map((m) => [m, importsOf(m)]));

/** Tarjan's strongly connected components: every component of more than one module is a cycle. */
function cycles(): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const on = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v) as number, low.get(w) as number));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v) as number, idx.get(w) as number));
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop() as string;
        on.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(comp.sort());
    }
  };
  for (const m of mods) if (!idx.has(m)) visit(m);
  return out;
}

describe("layers", () => {
  test("the table places every module of src/", () => {
    expect(mods.length).toBeGreaterThan(50);
    expect(mods.filter((m) => layerOf(m) === null)).toEqual([]);
  });

  test("every import resolves to a module of src/", () => {
    const missing: string[] = [];
    for (const [m, targets] of graph)
      for (const t of targets) if (!graph.has(t)) missing.push(`${m} → ${t}`);
    expect(missing).toEqual([]);
  });

  test("no import points to a higher layer", () => {
    const up: string[] = [];
    for (const [m, targets] of graph) {
      const from = layerOf(m) as number;
      for (const t of targets) {
        const to = layerOf(t);
        if (to !== null && to > from)
          up.push(`${m} (${LAYERS[from]?.[0]}) → ${t} (${LAYERS[to]?.[0]})`);
      }
    }
    expect(up).toEqual([]);
  });

  test("no import cycle", () => {
    expect(cycles()).toEqual([]);
  });

  test("the checks can fail: an upward import and a cycle are seen", () => {
    expect(layerOf("proxy/connection.ts")).toBeGreaterThan(layerOf("http/head.ts") as number);
    graph.set("http/head.ts", [...(graph.get("http/head.ts") ?? []), "proxy/connection.ts"]);
    try {
      expect(cycles().length).toBeGreaterThan(0);
    } finally {
      graph.set("http/head.ts", importsOf("http/head.ts"));
    }
    expect(cycles()).toEqual([]);
  });
});
