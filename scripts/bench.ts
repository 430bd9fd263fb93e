#!/usr/bin/env bun
/**
 * `npm run bench`: crm against going direct, measured in one run, printed as a Markdown table.
 *
 *   bun scripts/bench.ts [--quick] [--only NAME[,NAME...]] [--base GIT-REF]
 *
 * NAMEs (sections, run in this order): connect, forward, rate, idle, slow, binary, mitm, mirror,
 * parallel (8 concurrent transfers: forward and mirror), manifests, limits, fleet (16 clients pull
 * one blob at once through a capped uplink: mirror.fanout), cluster (replicas sharing one
 * redis-server: scripts/bench/cluster.ts).
 * --base: the previous build the limits rows compare against (default HEAD~1).
 * --quick: small sizes and short runs (a smoke test, < 90 s); the full run stays < ~10 min.
 *
 * Peers: where nginx is installed (/usr/sbin/nginx) it runs as a reverse proxy of the same origin
 * (scripts/bench/nginx.ts) in the rate, mirror and parallel sections, as rows with an "n" suffix
 * ("nt": the parallel rows again with 64 KiB proxy buffers); the issue's other peers are named in
 * a note when they are not installed, never estimated.
 *
 * Everything runs on 127.0.0.1 and every child is stopped by its pid at the end (and by a
 * deadline). crm, the origin and the load generators are separate processes, so crm does not
 * share a JS thread with its load: bulk transfers use curl, the request rate uses wrk with
 * absolute-form requests, RSS and CPU are read from /proc/PID of the crm child.
 * The machine has few cores: client, crm and origin share them, so "direct" is an upper bound
 * no proxy can reach (it has one process less on the same cores).
 */
import type { Socket } from "bun";
import { createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { cpus, release, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { initCa, LeafIssuer, loadCa } from "../src/pki/index.ts";
import { makeLeaf, makeTestCa } from "../tests/support/tls.ts";
import { buildTarget } from "./build.ts";
import type { CrmChildSpec } from "./bench/crm-child.ts";
import {
  CHILD_ENV,
  cpuSeconds,
  curl,
  fmtBytes,
  fmtRate,
  GiB,
  initClock,
  listeningPorts,
  machineBusySeconds,
  median,
  MiB,
  rssKiB,
  run,
  spawnChild,
  stopAllChildren,
  wrk,
  type Child,
  type CurlResult,
} from "./bench/lib.ts";
import { NGINX_BIN, NGINX_SETUP, startNginx, TUNED_BUFFER, type Nginx } from "./bench/nginx.ts";
import type { BodyMode, OriginPorts, OriginSpec } from "./bench/origin.ts";
import type { RefMitmSpec } from "./bench/ref-mitm.ts";
import { sectionCluster } from "./bench/cluster.ts";

const ROOT = resolve(import.meta.dir, "..");
const BUN = process.execPath;
const SECTIONS = [
  "connect",
  "forward",
  "rate",
  "idle",
  "slow",
  "binary",
  "mitm",
  "mirror",
  "parallel",
  "manifests",
  "limits",
  "fleet",
  "cluster",
] as const;
type Section = (typeof SECTIONS)[number];

// ---------------------------------------------------------------- arguments and sizes

function parseCli(argv: string[]): { quick: boolean; only: Set<Section>; base: string } {
  let quick = false;
  let base = "HEAD~1";
  const only = new Set<Section>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === "--quick") quick = true;
    else if (a === "--only" || a.startsWith("--only=")) {
      const v = a.startsWith("--only=") ? a.slice(7) : (argv[++i] ?? "");
      for (const name of v.split(",").filter(Boolean)) {
        if (!(SECTIONS as readonly string[]).includes(name))
          usage(`unknown section ${JSON.stringify(name)}`);
        only.add(name as Section);
      }
      if (only.size === 0) usage("--only needs a section name");
    } else if (a === "--base" || a.startsWith("--base=")) {
      base = a.startsWith("--base=") ? a.slice(7) : (argv[++i] ?? "");
      if (base === "") usage("--base needs a git ref");
    } else if (a === "--help" || a === "-h") usage(null);
    else usage(`unknown argument ${JSON.stringify(a)}`);
  }
  return { quick, only: only.size > 0 ? only : new Set(SECTIONS), base };
}

function usage(problem: string | null): never {
  const text = `usage: bun scripts/bench.ts [--quick] [--only ${SECTIONS.join("|")}[,...]] [--base GIT-REF]\n`;
  if (problem) {
    process.stderr.write(`bench: ${problem}\n${text}`);
    process.exit(2);
  }
  process.stdout.write(text);
  process.exit(0);
}

const { quick: QUICK, only: ONLY, base: BASE_REF } = parseCli(process.argv.slice(2));

const P = QUICK
  ? {
      bulk: 64 * MiB,
      bulkRuns: 3,
      rateSeconds: 2,
      rateRuns: 1,
      tunnels: 500,
      slowSeconds: 4,
      readyRuns: 3,
      hosts: 50,
      hostRuns: 1,
      deadlineMs: 150_000,
    }
  : {
      bulk: GiB,
      bulkRuns: 5,
      rateSeconds: 4,
      rateRuns: 3,
      tunnels: 5000,
      slowSeconds: 20,
      readyRuns: 5,
      hosts: 50,
      hostRuns: 3,
      deadlineMs: 660_000,
    };
/** Any single curl transfer gives up after this (a 1 GiB transfer at 20 MiB/s). */
const BULK_MAX_S = QUICK ? 30 : 60;

// ---------------------------------------------------------------- the table

interface Row {
  id: string;
  metric: string;
  crm: string;
  direct: string;
  ratio: string;
  target: string;
  result: string;
}
const rows: Row[] = [];
const notes: string[] = [];

function row(r: Row): void {
  rows.push(r);
  console.log(
    `  ${r.id} ${r.metric}: crm ${r.crm} | direct ${r.direct} | ${r.ratio} | target ${r.target} | ${r.result}`,
  );
}
function note(s: string): void {
  notes.push(s);
  console.log(`  note: ${s}`);
}
const atLeast = (v: number, t: number): string =>
  Number.isFinite(v) ? (v >= t ? "PASS" : "MISS") : "n/a";
const atMost = (v: number, t: number): string =>
  Number.isFinite(v) ? (v <= t ? "PASS" : "MISS") : "n/a";
const x = (v: number): string => (Number.isFinite(v) ? `${v.toFixed(2)}×` : "—");

function table(): string {
  const head =
    "| # | metric | crm | direct | ratio | target | result |\n|---|---|---|---|---|---|---|\n";
  return (
    head +
    rows
      .map(
        (r) =>
          `| ${r.id} | ${r.metric} | ${r.crm} | ${r.direct} | ${r.ratio} | ${r.target} | ${r.result} |`,
      )
      .join("\n")
  );
}

// ---------------------------------------------------------------- fixtures

const sleep = (ms: number): Promise<void> => Bun.sleep(ms);
let tmp = "";
let originPorts: OriginPorts = { http: 0, https: 0, registry: 0, tcp: 0 };
let originPid = 0;
let originCaPath = "";
/** The origin's certificate (every HOSTS name): the MITM reference serves it as its own. */
let originLeaf = { cert: "", key: "" };
let httpMode: BodyMode = "file";
let httpsMode: BodyMode = "file";
/** A well-formed digest the test registry serves; nothing in the path verifies it (no cache). */
const BLOB_DIGEST = "sha256:" + createHash("sha256").update("crm bench blob").digest("hex");
const LIFETIME_MS = P.deadlineMs + 60_000;
/** h0 warms a path up; h1..hN are the names measured; the rest warm up the MITM row's crm (below). */
const HOSTS = Array.from({ length: 2 * P.hosts + 1 }, (_, i) => `h${i}.test`);

const big = (n: number, mode: BodyMode): string =>
  `http://127.0.0.1:${originPorts.http}/big?n=${n}&mode=${mode}`;
const bigTls = (host: string, n: number, mode: BodyMode): string =>
  `https://${host}:${originPorts.https}/big?n=${n}&mode=${mode}`;
const resolveArg = (host: string): string[] => [
  "--resolve",
  `${host}:${originPorts.https}:127.0.0.1`,
];

async function startOrigin(): Promise<void> {
  const file = join(tmp, "sparse-1g.bin");
  // Sparse: no disk blocks, and after the first read the zero pages come from the page cache.
  writeFileSync(file, "");
  truncateSync(file, GiB);
  const ca = await makeTestCa("crm bench origin CA");
  // One leaf, no wildcard: every name the MITM rows use is its own DNS SAN.
  const leaf = await makeLeaf(ca, [...HOSTS, "127.0.0.1"]);
  originLeaf = leaf;
  originCaPath = join(tmp, "origin-ca.pem");
  writeFileSync(originCaPath, ca.cert);
  const spec: OriginSpec = {
    file,
    tls: leaf,
    blob: { digest: BLOB_DIGEST, size: P.bulk, mode: httpMode },
    lifetimeMs: LIFETIME_MS,
  };
  const specPath = join(tmp, "origin.json");
  writeFileSync(specPath, JSON.stringify(spec));
  const child = spawnChild([BUN, join(ROOT, "scripts/bench/origin.ts"), specPath], { cwd: ROOT });
  originPorts = JSON.parse(await child.firstLine(15_000)) as OriginPorts;
  originPid = child.pid;
}

interface Crm {
  port: number;
  pid: number;
  child: Child;
  stop(): Promise<void>;
}

let configCount = 0;
/** Limits raised so the idle-tunnel row (one client address, thousands of tunnels) is admitted. */
const BASE_CONFIG = {
  listen: "127.0.0.1:0",
  log_level: "warn",
  allow_private_networks: true,
  limits: { max_connections: 30_000, max_connections_per_client: 30_000 },
};

/**
 * `bun src/main.ts -c FILE` in its own process; its port is found through /proc (log_level warn
 * prints nothing). `main`: another build's entry point (the limits rows' previous build).
 */
async function startCrm(
  raw: Record<string, unknown>,
  main = join(ROOT, "src/main.ts"),
): Promise<Crm> {
  const file = join(tmp, `crm-${++configCount}.json`);
  writeFileSync(file, JSON.stringify({ ...BASE_CONFIG, ...raw }));
  const child = spawnChild([BUN, main, "-c", file], { cwd: ROOT });
  const end = performance.now() + 15_000;
  for (;;) {
    const ports = listeningPorts(child.pid);
    if (ports.length > 0)
      return { port: ports[0] as number, pid: child.pid, child, stop: () => child.stop() };
    if (child.proc.exitCode !== null)
      throw new Error(
        `crm exited (${child.proc.exitCode}): ${child.stderrTail().trim().slice(-600)}`,
      );
    if (performance.now() > end) {
      await child.stop();
      throw new Error(`crm did not listen within 15 s: ${child.stderrTail().slice(-600)}`);
    }
    await sleep(5);
  }
}

/** crm with a static resolver for h0..hN.test (scripts/bench/crm-child.ts). */
async function startCrmWithNames(raw: Record<string, unknown>): Promise<Crm> {
  const file = join(tmp, `crm-child-${++configCount}.json`);
  const spec: CrmChildSpec = {
    config: { ...BASE_CONFIG, ...raw },
    names: Object.fromEntries(HOSTS.map((h) => [h, "127.0.0.1"])),
    lifetimeMs: LIFETIME_MS,
  };
  writeFileSync(file, JSON.stringify(spec));
  const child = spawnChild([BUN, join(ROOT, "scripts/bench/crm-child.ts"), file], { cwd: ROOT });
  const { port } = JSON.parse(await child.firstLine(15_000)) as { port: number };
  return { port, pid: child.pid, child, stop: () => child.stop() };
}

const proxyArg = (crm: { port: number }): string[] => ["-x", `http://127.0.0.1:${crm.port}`];

// ---------------------------------------------------------------- peers

/** Why there is no nginx in this section ("" while there is one), for its rows. */
let nginxMissing = "";
let nginxCount = 0;

/** nginx in front of the given origin ports (name → port), or null with `nginxMissing` set. */
async function startPeer(
  upstreams: Record<string, number>,
  buffer?: string,
): Promise<Nginx | null> {
  try {
    const ng = await startNginx(join(tmp, `nginx-${++nginxCount}`), upstreams, buffer);
    nginxMissing = ng ? "" : `not installed (${NGINX_BIN})`;
    return ng;
  } catch (e) {
    nginxMissing = `failed to start: ${(e as Error).message.replace(/\s+/g, " ").replace(/\|/g, "/").slice(0, 160)}`;
    return null;
  }
}

/** The row of a peer that is not there: says why, no number. */
function missingPeerRow(id: string, metric: string, why = nginxMissing): void {
  row({ id, metric, crm: `nginx ${why}`, direct: "—", ratio: "—", target: "info", result: "n/a" });
}

/** crm ÷ the best peer measured, for the rows where the issue wants crm ahead of the peers. */
function peerRow(id: string, metric: string, crm: number, peers: Map<string, number>): void {
  const best = [...peers].filter(([, v]) => Number.isFinite(v)).sort((a, b) => b[1] - a[1])[0];
  if (!best) {
    row({
      id,
      metric,
      crm: fmtRate(crm),
      direct: "no peer measured",
      ratio: "—",
      target: "≥ 1.0× the best peer measured",
      result: "n/a",
    });
    return;
  }
  row({
    id,
    metric,
    crm: fmtRate(crm),
    direct: `${fmtRate(best[1])} (${best[0]})`,
    ratio: x(crm / best[1]),
    target: "≥ 1.0× the best peer measured",
    result: atLeast(crm / best[1], 1),
  });
}

let peersNoted = false;
/** Once per run: which of the issue's peers this machine has; the missing ones get no number. */
async function notePeers(ng: Nginx | null): Promise<void> {
  if (peersNoted) return;
  peersNoted = true;
  const has = async (cmd: string): Promise<string | null> => {
    const r = await run(["sh", "-c", `command -v ${cmd}`], 5000);
    return r.code === 0 ? r.stdout.trim() : null;
  };
  const squid = await has("squid");
  const tinyproxy = await has("tinyproxy");
  const registry = await has("docker-registry");
  note(
    `peers: nginx ${ng ? `${ng.version} measured (${NGINX_SETUP}; default proxy_buffer_size, and in the parallel rows also ${TUNED_BUFFER}; the CPU shown is its worker's)` : nginxMissing}; ` +
      `squid 5.7 ${squid ? `at ${squid}, not measured` : "not installed"}; tinyproxy ${tinyproxy ? `at ${tinyproxy}, not measured` : "not installed"}; ` +
      `the Go seed program not installed; distribution (cold pull-through cache) ${registry ? `: ${registry} is installed but its proxy mode is not measured here` : "not installed"}. No number is given for a peer not measured.`,
  );
}

// ---------------------------------------------------------------- bulk transfers

interface Variant {
  name: string;
  url: string;
  args: string[];
  /** Whose CPU to account (the proxy's). */
  pid?: number;
}

interface BulkResult {
  rate: Map<string, number>;
  /** Proxy CPU use during its transfers, as a share of one core. */
  cpu: Map<string, number>;
  /** CPU seconds the whole machine (client + proxy + origin + kernel) spent per GiB moved. */
  machine: Map<string, number>;
  /**
   * CPU seconds the proxy process alone spent per GiB moved (/proc/PID/stat of `pid`), summed
   * over all runs before dividing: one run of 64 MiB is a few clock ticks (10 ms each).
   */
  cpuPerGiB: Map<string, number>;
  /** Every run's rate, in the order measured. */
  runs: Map<string, number[]>;
}

function checkTransfer(v: Variant, r: CurlResult, size: number): void {
  if (r.status !== 200 || r.bytes !== size || r.exit !== 0) {
    throw new Error(
      `${v.name}: HTTP ${r.status}, ${r.bytes} of ${size} bytes, curl exit ${r.exit}${r.stderr ? `: ${r.stderr.slice(0, 300)}` : ""}`,
    );
  }
}

/** [cpu, GiB, cpu, GiB, ...] per variant → total CPU seconds ÷ total GiB (NaN without a pid). */
function perGiB(m: Map<string, number[]>): Map<string, number> {
  return new Map(
    [...m].map(([k, xs]) => {
      let cpu = 0;
      let gib = 0;
      for (let i = 0; i + 1 < xs.length; i += 2) {
        cpu += xs[i] as number;
        gib += xs[i + 1] as number;
      }
      return [k, gib > 0 ? cpu / gib : NaN];
    }),
  );
}

/**
 * `runs` rounds; the order of the variants rotates each round so drift hits all of them alike.
 * `parallel` > 1: that many transfers of a variant at once, and the rate is the aggregate, all
 * bytes ÷ wall time from the first curl's start to the last one's end (process start-up
 * included: a few ms against transfers of seconds). Every transfer's status and size is checked.
 */
async function bulk(
  variants: Variant[],
  size: number,
  runs: number,
  parallel = 1,
): Promise<BulkResult> {
  const rates = new Map<string, number[]>(variants.map((v) => [v.name, []]));
  const cpu = new Map<string, number[]>(variants.map((v) => [v.name, []]));
  const machine = new Map<string, number[]>(variants.map((v) => [v.name, []]));
  const cpuPerGiB = new Map<string, number[]>(variants.map((v) => [v.name, []]));
  // Each of n transfers gets 1/n of the aggregate, so it may take up to n times one alone.
  const maxS = Math.max(BULK_MAX_S, Math.ceil((parallel * size) / (64 * MiB)));
  for (let r = 0; r < runs; r++) {
    for (let k = 0; k < variants.length; k++) {
      const v = variants[(k + r) % variants.length] as Variant;
      const c0 = v.pid ? cpuSeconds(v.pid) : 0;
      const m0 = machineBusySeconds();
      const t0 = performance.now();
      const all = await Promise.all(
        Array.from({ length: parallel }, () => curl(v.url, v.args, maxS)),
      );
      const wall = (performance.now() - t0) / 1000;
      const m1 = machineBusySeconds();
      for (const res of all) checkTransfer(v, res, size);
      // One transfer: curl's own time, without its process start-up.
      const seconds = parallel === 1 ? (all[0] as CurlResult).seconds : wall;
      const gib = all.reduce((sum, res) => sum + res.bytes, 0) / GiB;
      rates.get(v.name)?.push((gib * GiB) / seconds);
      machine.get(v.name)?.push((m1 - m0) / gib);
      if (v.pid) {
        const used = cpuSeconds(v.pid) - c0;
        cpu.get(v.name)?.push(used / seconds);
        cpuPerGiB.get(v.name)?.push(used, gib);
      }
    }
  }
  const med = (m: Map<string, number[]>): Map<string, number> =>
    new Map([...m].map(([k, xs]) => [k, median(xs)]));
  return {
    rate: med(rates),
    cpu: med(cpu),
    machine: med(machine),
    cpuPerGiB: perGiB(cpuPerGiB),
    runs: rates,
  };
}

function bulkRow(id: string, metric: string, res: BulkResult, name: string, target: number): void {
  const c = res.rate.get(name) ?? NaN;
  const d = res.rate.get("direct") ?? NaN;
  row({
    id,
    metric,
    crm: fmtRate(c),
    direct: fmtRate(d),
    ratio: x(c / d),
    target: `≥ ${target}×`,
    result: atLeast(c / d, target),
  });
}

const pct = (v: number | undefined): string =>
  v === undefined || !Number.isFinite(v) ? "?" : `${Math.round(v * 100)}%`;

/** "direct 0.9, crm 1.9 CPU-s/GiB": what each variant cost the whole machine. */
function machineCost(res: BulkResult): string {
  return (
    [...res.machine].map(([k, v]) => `${k} ${Number.isFinite(v) ? v.toFixed(2) : "?"}`).join(", ") +
    " CPU-s/GiB (whole machine)"
  );
}

// ---------------------------------------------------------------- sections

async function calibrateOrigin(): Promise<void> {
  // Only bodies that keep Content-Length (registries send it for blobs); Bun.serve sends stream
  // bodies chunked, which would measure crm's re-chunking instead (row 2c does that on purpose).
  const modes: BodyMode[] = ["file", "blob"];
  // Not measured: the first read of the sparse file fills the page cache, the first blob is made.
  for (const m of modes) await curl(big(P.bulk, m), [], BULK_MAX_S);
  const runs = QUICK ? 1 : 2;
  const plain = await bulk(
    modes.map((m) => ({ name: m, url: big(P.bulk, m), args: [] })),
    P.bulk,
    runs,
  );
  const tls = await bulk(
    modes.map((m) => ({
      name: m,
      url: bigTls("h0.test", P.bulk, m),
      args: ["--cacert", originCaPath, ...resolveArg("h0.test")],
    })),
    P.bulk,
    runs,
  );
  const best = (r: BulkResult): BodyMode =>
    [...r.rate].sort((a, b) => b[1] - a[1])[0]?.[0] as BodyMode;
  httpMode = best(plain);
  httpsMode = best(tls);
  const show = (r: BulkResult): string =>
    [...r.rate].map(([k, v]) => `${k} ${fmtRate(v)}`).join(", ");
  note(
    `origin body (Content-Length), direct curl, ${fmtBytes(P.bulk)}, median of ${runs}: http: ${show(plain)} → ${httpMode}; https: ${show(tls)} → ${httpsMode}`,
  );
  await fetch(`http://127.0.0.1:${originPorts.http}/set-blob-mode?mode=${httpMode}`).then((r) =>
    r.text(),
  );
}

interface Ref {
  port: number;
  pid: number;
  child: Child;
}

/** scripts/bench/ref-*.ts: reference proxies (not crm) that show what Bun itself allows. */
async function startRef(
  script: "ref-splice.ts" | "ref-fetch.ts",
  fixedTarget?: string,
): Promise<Ref> {
  const child = spawnChild(
    [
      BUN,
      join(ROOT, "scripts/bench", script),
      String(LIFETIME_MS),
      ...(fixedTarget ? [fixedTarget] : []),
    ],
    { cwd: ROOT },
  );
  const { port } = JSON.parse(await child.firstLine(15_000)) as { port: number };
  return { port, pid: child.pid, child };
}

/** scripts/bench/ref-mitm.ts: the smallest MITM on Bun, serving the origin's own certificate. */
async function startRefMitm(): Promise<Ref> {
  const file = join(tmp, "ref-mitm.json");
  const spec: RefMitmSpec = { tls: originLeaf, lifetimeMs: LIFETIME_MS };
  writeFileSync(file, JSON.stringify(spec));
  const child = spawnChild([BUN, join(ROOT, "scripts/bench/ref-mitm.ts"), file], { cwd: ROOT });
  const { port } = JSON.parse(await child.firstLine(15_000)) as { port: number };
  return { port, pid: child.pid, child };
}

function refRow(id: string, metric: string, res: BulkResult, name: string): void {
  const r = res.rate.get(name) ?? NaN;
  const d = res.rate.get("direct") ?? NaN;
  row({
    id,
    metric,
    crm: fmtRate(r),
    direct: fmtRate(d),
    ratio: x(r / d),
    target: "info",
    result: "—",
  });
}

async function sectionConnect(): Promise<void> {
  const crm = await startCrm({ allowed_hosts: ["127.0.0.1"], allowed_ports: [originPorts.http] });
  const ref = await startRef("ref-splice.ts");
  try {
    const url = big(P.bulk, httpMode);
    const res = await bulk(
      [
        { name: "direct", url, args: [] },
        { name: "crm", url, args: ["-p", ...proxyArg(crm)], pid: crm.pid },
        { name: "ref", url, args: ["-p", ...proxyArg(ref)], pid: ref.pid },
      ],
      P.bulk,
      P.bulkRuns,
    );
    bulkRow("1", `${fmtBytes(P.bulk)} via CONNECT tunnel (plain origin)`, res, "crm", 0.85);
    refRow("1r", "same, bare Bun.listen/Bun.connect splice (reference, not crm)", res, "ref");
    note(
      `CONNECT bulk: crm CPU ${pct(res.cpu.get("crm"))} of a core, bare splice CPU ${pct(res.cpu.get("ref"))}; ${machineCost(res)}`,
    );
  } finally {
    await Promise.all([crm.stop(), ref.child.stop()]);
  }
}

async function sectionForward(): Promise<void> {
  const crm = await startCrm({ allowed_hosts: ["127.0.0.1"], allowed_ports: [originPorts.http] });
  const ref = await startRef("ref-fetch.ts", `127.0.0.1:${originPorts.http}`);
  try {
    const url = big(P.bulk, httpMode);
    const chunked = big(P.bulk, "stream");
    const res = await bulk(
      [
        { name: "direct", url, args: [] },
        { name: "crm", url, args: proxyArg(crm), pid: crm.pid },
        { name: "ref", url, args: proxyArg(ref), pid: ref.pid },
        { name: "direct-chunked", url: chunked, args: [] },
        { name: "crm-chunked", url: chunked, args: proxyArg(crm), pid: crm.pid },
      ],
      P.bulk,
      P.bulkRuns,
    );
    bulkRow(
      "2",
      `${fmtBytes(P.bulk)} via HTTP forward (absolute-form, Content-Length)`,
      res,
      "crm",
      0.8,
    );
    refRow("2r", "same, bare Bun.serve + fetch() proxy (reference, not crm)", res, "ref");
    const cc = res.rate.get("crm-chunked") ?? NaN;
    const dc = res.rate.get("direct-chunked") ?? NaN;
    row({
      id: "2c",
      metric: "same, origin sends the body chunked",
      crm: fmtRate(cc),
      direct: fmtRate(dc),
      ratio: x(cc / dc),
      target: "info",
      result: "—",
    });
    note(
      `forward bulk: CPU of a core: crm ${pct(res.cpu.get("crm"))}, crm (chunked) ${pct(res.cpu.get("crm-chunked"))}, bare fetch proxy ${pct(res.cpu.get("ref"))}; ${machineCost(res)}`,
    );
  } finally {
    await Promise.all([crm.stop(), ref.child.stop()]);
  }
}

/** Checks that wrk really sends absolute-form with our script: a listener records its first request line. */
async function checkAbsoluteForm(script: string, expected: string): Promise<void> {
  let first = "";
  const l = Bun.listen<undefined>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(s, d) {
        if (first === "") first = d.toString("latin1").split("\r\n")[0] ?? "";
        s.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
      },
      error() {},
    },
  });
  try {
    await wrk(`http://127.0.0.1:${l.port}/`, { threads: 1, conns: 1, seconds: 1, script });
  } finally {
    l.stop(true);
  }
  if (first !== expected)
    throw new Error(
      `wrk did not send absolute-form: first request line ${JSON.stringify(first)}, expected ${JSON.stringify(expected)}`,
    );
}

async function sectionRate(): Promise<void> {
  const crm = await startCrm({ allowed_hosts: ["127.0.0.1"], allowed_ports: [originPorts.http] });
  const origin = `127.0.0.1:${originPorts.http}`;
  const relay = await startRef("ref-splice.ts", origin);
  const fetchRef = await startRef("ref-fetch.ts", origin);
  const ng = await startPeer({ http: originPorts.http });
  try {
    await notePeers(ng);
    const target = `http://${origin}/small`;
    const script = join(tmp, "absolute-form.lua");
    writeFileSync(
      script,
      `-- absolute-form request target, sent to the proxy\nwrk.path = ${JSON.stringify(target)}\n`,
    );
    await checkAbsoluteForm(script, `GET ${target} HTTP/1.1`);
    const opts = { threads: 2, conns: 32, seconds: P.rateSeconds };
    const variants = [
      { name: "direct", url: target, script: undefined, pid: 0 },
      { name: "crm", url: `http://127.0.0.1:${crm.port}/`, script, pid: crm.pid },
      { name: "relay", url: `http://127.0.0.1:${relay.port}/`, script, pid: relay.pid },
      { name: "fetch", url: `http://127.0.0.1:${fetchRef.port}/`, script, pid: fetchRef.pid },
      // The reverse proxy is asked in origin-form: it knows its one upstream.
      ...(ng
        ? [
            {
              name: "nginx",
              url: `http://127.0.0.1:${ng.ports.http}/small`,
              script: undefined,
              pid: ng.workerPid,
            },
          ]
        : []),
    ];
    for (const v of variants.slice(1)) await wrk(v.url, { ...opts, seconds: 1, script: v.script }); // warm-up
    const got = new Map<string, Array<{ rps: number; p50: number; cpu: number }>>(
      variants.map((v) => [v.name, []]),
    );
    for (let r = 0; r < P.rateRuns; r++) {
      for (let k = 0; k < variants.length; k++) {
        const v = variants[(k + r) % variants.length] as (typeof variants)[number];
        const c0 = v.pid ? cpuSeconds(v.pid) : 0;
        const t0 = performance.now();
        const w = await wrk(v.url, { ...opts, script: v.script });
        const cpu = v.pid ? (cpuSeconds(v.pid) - c0) / ((performance.now() - t0) / 1000) : NaN;
        if (w.errors) throw new Error(`wrk ${v.name}: ${w.errors}`);
        got.get(v.name)?.push({ rps: w.rps, p50: w.p50ms, cpu });
      }
    }
    const med = (name: string, k: "rps" | "p50" | "cpu"): number =>
      median((got.get(name) ?? []).map((v) => v[k]));
    const n = (v: number): string => Math.round(v).toLocaleString("en-US");
    const dr = med("direct", "rps");
    const cr = med("crm", "rps");
    row({
      id: "3",
      metric: `small requests/s (wrk ${opts.threads}t ${opts.conns}c ${opts.seconds}s keep-alive, absolute-form)`,
      crm: `${n(cr)} req/s`,
      direct: `${n(dr)} req/s`,
      ratio: x(cr / dr),
      target: "≥ 0.45×",
      result: atLeast(cr / dr, 0.45),
    });
    const nginxMetric =
      "same through nginx, reverse proxy of the origin, 1 worker process (peer, not crm)";
    if (ng)
      row({
        id: "3n",
        metric: nginxMetric,
        crm: `${n(med("nginx", "rps"))} req/s`,
        direct: `${n(dr)} req/s`,
        ratio: x(med("nginx", "rps") / dr),
        target: "info",
        result: "—",
      });
    else missingPeerRow("3n", nginxMetric);
    row({
      id: "3b",
      metric: "p50 latency of the same runs",
      crm: `${med("crm", "p50").toFixed(2)} ms`,
      direct: `${med("direct", "p50").toFixed(2)} ms`,
      ratio: x(med("crm", "p50") / med("direct", "p50")),
      target: "info",
      result: "—",
    });
    row({
      id: "3r",
      metric: "same, bare Bun.serve + fetch() proxy (reference, not crm)",
      crm: `${n(med("fetch", "rps"))} req/s`,
      direct: `${n(dr)} req/s`,
      ratio: x(med("fetch", "rps") / dr),
      target: "info",
      result: "—",
    });
    row({
      id: "3s",
      metric: "same, plain TCP relay on Bun sockets (reference, not crm)",
      crm: `${n(med("relay", "rps"))} req/s`,
      direct: `${n(dr)} req/s`,
      ratio: x(med("relay", "rps") / dr),
      target: "info",
      result: "—",
    });
    const runs = (name: string): string => (got.get(name) ?? []).map((v) => n(v.rps)).join(", ");
    const perReq = (name: string): string =>
      ((med(name, "cpu") / med(name, "rps")) * 1e6).toFixed(0);
    note(
      `request rate: CPU of a core: crm ${pct(med("crm", "cpu"))}, fetch proxy ${pct(med("fetch", "cpu"))}, relay ${pct(med("relay", "cpu"))}; proxy CPU per request: crm ${perReq("crm")} µs, fetch proxy ${perReq("fetch")} µs, relay ${perReq("relay")} µs; runs: crm ${runs("crm")}; direct ${runs("direct")}; fetch proxy ${runs("fetch")}; relay ${runs("relay")}`,
    );
    if (ng)
      note(
        `request rate, nginx: worker CPU ${pct(med("nginx", "cpu"))} of a core, ${perReq("nginx")} µs per request; runs ${runs("nginx")}`,
      );
  } finally {
    await Promise.all([crm.stop(), relay.child.stop(), fetchRef.child.stop(), ng?.stop()]);
  }
}

interface TunnelData {
  ok: boolean;
  buf: string;
  done: ((ok: boolean, why: string) => void) | null;
}

/** Opens `n` CONNECT tunnels through crm to `target`, `conc` at a time; keeps them open. */
async function openTunnels(
  crmPort: number,
  target: string,
  n: number,
  conc: number,
): Promise<{ sockets: Socket<TunnelData>[]; failed: number; why: string }> {
  const sockets: Socket<TunnelData>[] = [];
  let failed = 0;
  let why = "";
  let next = 0;
  const request = `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`;
  const one = (): Promise<void> =>
    new Promise<void>((resolveOne) => {
      let settled = false;
      const finish = (s: Socket<TunnelData> | null, ok: boolean, reason: string): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (ok && s) sockets.push(s);
        else {
          failed++;
          why ||= reason;
          s?.terminate();
        }
        resolveOne();
      };
      const timer = setTimeout(() => finish(null, false, "timeout"), 15_000);
      Bun.connect<TunnelData>({
        hostname: "127.0.0.1",
        port: crmPort,
        data: { ok: false, buf: "", done: null },
        socket: {
          open(s) {
            s.data = { ok: false, buf: "", done: (ok, reason) => finish(s, ok, reason) };
            s.write(request);
          },
          data(s, d) {
            if (s.data.ok) return;
            s.data.buf += d.toString("latin1");
            if (!s.data.buf.includes("\r\n\r\n")) return;
            s.data.ok = s.data.buf.startsWith("HTTP/1.1 200");
            s.data.done?.(s.data.ok, s.data.buf.split("\r\n")[0] ?? "");
          },
          close(s) {
            s.data.done?.(false, "closed");
          },
          error() {},
        },
      }).catch((e: unknown) => finish(null, false, (e as Error).message));
    });
  const worker = async (): Promise<void> => {
    while (next < n) {
      next++;
      await one();
    }
  };
  await Promise.all(Array.from({ length: conc }, worker));
  return { sockets, failed, why };
}

/** Median of a few RSS samples, so one sample taken mid-GC does not decide. */
async function steadyRss(pid: number): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < 5; i++) {
    xs.push(rssKiB(pid));
    await sleep(100);
  }
  return median(xs);
}

let tunnelCount = P.tunnels;

async function sectionIdle(): Promise<void> {
  const crm = await startCrm({ allowed_hosts: ["127.0.0.1"], allowed_ports: [originPorts.tcp] });
  const target = `127.0.0.1:${originPorts.tcp}`;
  try {
    // Warm-up: the code paths of a tunnel run once before the baseline.
    const warm = await openTunnels(crm.port, target, 100, 50);
    for (const s of warm.sockets) s.end();
    if (warm.failed > 0) throw new Error(`warm-up tunnels failed (${warm.failed}): ${warm.why}`);
    await sleep(1500);
    const before = await steadyRss(crm.pid);
    const t0 = performance.now();
    const { sockets, failed, why } = await openTunnels(crm.port, target, tunnelCount, 200);
    const openMs = performance.now() - t0;
    await sleep(2000);
    const after = await steadyRss(crm.pid);
    const held = Number(
      await fetch(`http://127.0.0.1:${originPorts.http}/tcp-count`).then((r) => r.text()),
    );
    const per = (after - before) / sockets.length;
    for (const s of sockets) s.terminate();
    if (failed > 0) note(`idle tunnels: ${failed} of ${tunnelCount} failed to open (${why})`);
    row({
      id: "4",
      metric: `RSS per idle CONNECT tunnel (${sockets.length} open)`,
      crm: `${per.toFixed(2)} KiB/tunnel`,
      direct: "—",
      ratio: "—",
      target: "≤ 8 KiB",
      result: sockets.length === tunnelCount ? atMost(per, 8) : "n/a",
    });
    note(
      `idle tunnels: crm RSS ${(before / 1024).toFixed(1)} → ${(after / 1024).toFixed(1)} MiB; ${sockets.length} opened in ${(openMs / 1000).toFixed(1)} s; origin holds ${held} upstream sockets`,
    );
  } finally {
    await crm.stop();
  }
}

async function sectionSlow(): Promise<void> {
  const crm = await startCrm({ allowed_hosts: ["127.0.0.1"], allowed_ports: [originPorts.http] });
  try {
    const url = big(GiB, httpMode);
    const paths: Array<{ id: string; name: string; args: string[] }> = [
      { id: "5a", name: "HTTP forward", args: proxyArg(crm) },
      { id: "5b", name: "CONNECT", args: ["-p", ...proxyArg(crm)] },
    ];
    // Warm-up: each path once, quickly.
    for (const p of paths)
      checkTransfer(
        { name: `warm-up ${p.name}`, url: "", args: [] },
        await curl(big(16 * MiB, httpMode), p.args, 30),
        16 * MiB,
      );
    for (const p of paths) {
      await sleep(1000);
      const base = await steadyRss(crm.pid);
      let peak = base;
      let samples = 0;
      /** RSS above the baseline at each quarter of the run: flat means bounded, rising means a leak. */
      const quarters: number[] = [];
      const t0 = performance.now();
      const transfer = curl(url, ["--limit-rate", "1M", ...p.args], P.slowSeconds);
      let finished = false;
      void transfer.finally(() => (finished = true));
      const end = performance.now() + (P.slowSeconds + 10) * 1000;
      while (!finished && performance.now() < end) {
        const now = rssKiB(crm.pid);
        peak = Math.max(peak, now);
        samples++;
        if (performance.now() - t0 >= ((quarters.length + 1) * P.slowSeconds * 1000) / 4)
          quarters.push(now - base);
        await sleep(200);
      }
      const r = await transfer;
      const growthMiB = (peak - base) / 1024;
      row({
        id: p.id,
        metric: `RSS growth, slow reader (1 MiB/s, ${P.slowSeconds} s of a 1 GiB body), ${p.name}`,
        crm: `+${growthMiB.toFixed(1)} MiB`,
        direct: "—",
        ratio: "—",
        target: "≤ 16 MiB",
        result: r.status === 200 ? atMost(growthMiB, 16) : "n/a",
      });
      note(
        `slow reader ${p.name}: base ${(base / 1024).toFixed(1)} MiB, peak ${(peak / 1024).toFixed(1)} MiB over ${samples} samples, ${quarters.map((q) => `${q >= 0 ? "+" : ""}${(q / 1024).toFixed(1)}`).join(" / ")} MiB vs base at each quarter; client read ${(r.bytes / MiB).toFixed(1)} MiB (HTTP ${r.status}, curl exit ${r.exit})`,
      );
    }
  } finally {
    await crm.stop();
  }
}

function newestMtime(paths: string[]): number {
  let newest = 0;
  const walk = (p: string): void => {
    const st = statSync(p);
    if (st.isDirectory()) for (const e of readdirSync(p)) walk(join(p, e));
    else newest = Math.max(newest, st.mtimeMs);
  };
  for (const p of paths) if (existsSync(p)) walk(p);
  return newest;
}

/** A binary built from the current src: dist/'s if it is newer, else our cache in $TMPDIR, built if stale. */
async function binaryPath(): Promise<{ path: string; how: string }> {
  const sources = newestMtime([join(ROOT, "src"), join(ROOT, "package.json")]);
  const dist = join(ROOT, "dist/crm-linux-x64");
  if (existsSync(dist) && statSync(dist).mtimeMs > sources)
    return { path: dist, how: "dist/crm-linux-x64 (newer than src)" };
  const dir = join(tmpdir(), "crm-bench-bin");
  const cached = join(dir, "crm-linux-x64");
  if (existsSync(cached) && statSync(cached).mtimeMs > sources)
    return { path: cached, how: `${cached} (cached, newer than src)` };
  mkdirSync(dir, { recursive: true });
  const t0 = performance.now();
  await buildTarget("bun-linux-x64", cached);
  return {
    path: cached,
    how: `${cached} (built now in ${((performance.now() - t0) / 1000).toFixed(1)} s; dist/ is older than src and is left alone)`,
  };
}

/** Spawn → `listening` on stderr → GET /healthz 200, in ms. */
async function readyTime(cmd: string[]): Promise<number> {
  const file = join(tmp, `ready-${++configCount}.json`);
  writeFileSync(
    file,
    JSON.stringify({ listen: "127.0.0.1:0", log_level: "info", allowed_hosts: ["127.0.0.1"] }),
  );
  const t0 = performance.now();
  const child = spawnChild([...cmd, "-c", file], { cwd: tmp });
  try {
    const m = await child.waitStderr(/listening address=(\S+)/, 10_000);
    for (let i = 0; i < 500; i++) {
      const ok = await fetch(`http://${m[1]}/healthz`)
        .then(async (r) => (await r.text(), r.status === 200))
        .catch(() => false);
      if (ok) return performance.now() - t0;
      await sleep(2);
    }
    throw new Error("/healthz never answered 200");
  } finally {
    await child.stop();
  }
}

async function sectionBinary(): Promise<void> {
  const bin = await binaryPath();
  note(`binary: ${bin.how}`);
  await fetch(`http://127.0.0.1:${originPorts.http}/small`).then((r) => r.text()); // fetch's own first-use cost, not crm's
  await readyTime([bin.path]); // page cache
  const times: number[] = [];
  for (let i = 0; i < P.readyRuns; i++) times.push(await readyTime([bin.path]));
  const t = median(times);
  row({
    id: "6",
    metric: `compiled binary: spawn → /healthz 200 (median of ${P.readyRuns})`,
    crm: `${t.toFixed(0)} ms`,
    direct: "—",
    ratio: "—",
    target: "≤ 100 ms",
    result: atMost(t, 100),
  });
  const src: number[] = [];
  for (let i = 0; i < Math.min(3, P.readyRuns); i++)
    src.push(await readyTime([BUN, join(ROOT, "src/main.ts")]));
  row({
    id: "6r",
    metric: "same, `bun src/main.ts` (reference)",
    crm: `${median(src).toFixed(0)} ms`,
    direct: "—",
    ratio: "—",
    target: "info",
    result: "—",
  });
  note(
    `ready times (ms): binary ${times.map((v) => v.toFixed(0)).join(", ")}; bun src/main.ts ${src.map((v) => v.toFixed(0)).join(", ")}`,
  );
}

async function sectionMitm(): Promise<void> {
  const caDir = join(tmp, "mitm-ca");
  const { certPath, keyPath } = await initCa({ outDir: caDir });
  const raw = {
    allowed_hosts: ["127.0.0.1", String.raw`h\d+\.test`],
    allowed_ports: [originPorts.https],
    insecure_tls: true,
    mitm: { enabled: true, ca_cert_path: certPath, ca_key_path: keyPath },
  };
  const direct = (host: string): string[] => ["--cacert", originCaPath, ...resolveArg(host)];
  const viaCrm = (crm: Crm): string[] => ["--cacert", certPath, ...proxyArg(crm)];

  // 7a: bulk over MITM.
  const crm = await startCrmWithNames(raw);
  try {
    const url = bigTls("h0.test", P.bulk, httpsMode);
    const res = await bulk(
      [
        { name: "direct", url, args: direct("h0.test") },
        { name: "crm", url, args: viaCrm(crm), pid: crm.pid },
      ],
      P.bulk,
      P.bulkRuns,
    );
    bulkRow("7a", `${fmtBytes(P.bulk)} via MITM (HTTPS origin)`, res, "crm", 0.5);
    note(`MITM bulk: crm CPU ${pct(res.cpu.get("crm"))} of a core; ${machineCost(res)}`);
  } finally {
    await crm.stop();
  }

  // 7b: first request to each of N new host names: a fresh crm per round (cold certificate
  // cache), warmed with N other new names first so process start-up and the JIT's first-use
  // costs are not counted: a proxy that has run for a minute meeting a name it has not seen.
  const names = HOSTS.slice(1, P.hosts + 1);
  const warmNames = HOSTS.slice(P.hosts + 1);
  interface Phases {
    total: number;
    /** Until TLS is up with whoever answers the client (crm, or the origin). */
    tls: number;
    /** From TLS up to the first response byte (for crm: its own upstream dial, TLS and request). */
    ttfb: number;
  }
  const oneCurl = async (args: (h: string) => string[], over = names): Promise<Phases> => {
    const cmd = [
      "curl",
      "-sS",
      "--max-time",
      "60",
      "-w",
      "%{http_code} %{time_appconnect} %{time_starttransfer} %{time_total}\\n",
    ];
    for (const h of over)
      cmd.push(...args(h), "-o", "/dev/null", `https://${h}:${originPorts.https}/small`);
    const r = await run(cmd, 90_000);
    const lines = r.stdout.trim().split("\n");
    const bad = lines.filter((l) => !l.startsWith("200 "));
    if (r.code !== 0 || lines.length !== over.length || bad.length > 0)
      throw new Error(
        `curl over ${over.length} hosts: exit ${r.code}, ${bad.length} not 200 (${bad[0] ?? ""}) ${r.stderr.slice(0, 300)}`,
      );
    const f = lines.map((l) => l.split(" ").map(Number));
    const sum = (i: number): number => f.reduce((s, v) => s + (v[i] ?? 0), 0);
    return { total: sum(3), tls: sum(1), ttfb: sum(2) - sum(1) };
  };
  const d: Phases[] = [];
  const c: Phases[] = [];
  const f: Phases[] = [];
  // The bare-Bun MITM (ref-mitm.ts) on the same names: what two TLS handshakes on Bun cost.
  const ref = await startRefMitm();
  const viaRef = ["--cacert", originCaPath, ...proxyArg(ref)];
  try {
    await oneCurl(() => viaRef, warmNames);
    for (let r = 0; r < P.hostRuns; r++) {
      const fresh = await startCrmWithNames(raw);
      try {
        await oneCurl(() => viaCrm(fresh), warmNames);
        const order = ["direct", "crm", "ref"];
        for (let i = 0; i < order.length; i++) {
          const which = order[(i + r) % order.length];
          if (which === "direct") d.push(await oneCurl((h) => direct(h)));
          else if (which === "crm") c.push(await oneCurl(() => viaCrm(fresh)));
          else f.push(await oneCurl(() => viaRef));
        }
      } finally {
        await fresh.stop();
      }
    }
  } finally {
    await ref.child.stop();
  }
  const med = (xs: Phases[], k: keyof Phases): number => median(xs.map((v) => v[k]));
  const cm = med(c, "total");
  const dm = med(d, "total");
  row({
    id: "7b",
    metric: `MITM: first request to ${names.length} new host names (cold cert cache), sequential`,
    crm: `${(cm * 1000).toFixed(0)} ms`,
    direct: `${(dm * 1000).toFixed(0)} ms`,
    ratio: x(cm / dm),
    target: "≤ 1.15×",
    result: atMost(cm / dm, 1.15),
  });
  const fm = med(f, "total");
  row({
    id: "7r",
    metric:
      "same, bare-Bun MITM reference (ref-mitm.ts: one certificate made beforehand, bytes relayed, no HTTP)",
    crm: `${(fm * 1000).toFixed(0)} ms`,
    direct: `${(dm * 1000).toFixed(0)} ms`,
    ratio: x(fm / dm),
    target: "info",
    result: "—",
  });
  const per = (v: number): string => `${((v / names.length) * 1000).toFixed(2)}`;
  note(
    `MITM ${names.length} hosts, per request (ms): crm ${per(cm)} = TCP+CONNECT+TLS with crm ${per(med(c, "tls"))} + first byte ${per(med(c, "ttfb"))}; ` +
      `direct ${per(dm)} = TCP+TLS ${per(med(d, "tls"))} + first byte ${per(med(d, "ttfb"))}; ` +
      `reference ${per(fm)} = ${per(med(f, "tls"))} + ${per(med(f, "ttfb"))} (sums of curl's time_* over the names; runs crm ${c.map((v) => (v.total * 1000).toFixed(0)).join(", ")}, direct ${d.map((v) => (v.total * 1000).toFixed(0)).join(", ")}, reference ${f.map((v) => (v.total * 1000).toFixed(0)).join(", ")})`,
  );
  // The certificate part of a cold name, measured alone (same CA, same issuer code, this process).
  const issuer = new LeafIssuer(await loadCa(certPath, keyPath));
  const t0 = performance.now();
  for (const h of names) issuer.issue(h);
  note(
    `MITM leaf issuing alone: ${((performance.now() - t0) / names.length).toFixed(2)} ms per name`,
  );
  const which = await run(["sh", "-c", "command -v mitmdump"], 5000);
  const mitmdump = which.code === 0 ? which.stdout.trim() : null;
  row({
    id: "7c",
    metric: "mitmdump comparison",
    crm: "—",
    direct: "—",
    ratio: "—",
    target: "info",
    result: mitmdump
      ? `mitmdump at ${mitmdump}: comparison not implemented`
      : "mitmdump not installed",
  });
}

async function sectionMirror(): Promise<void> {
  const notReady = (why: string): void => {
    row({
      id: "8",
      metric: `${fmtBytes(P.bulk)} blob pulled through the mirror`,
      crm: `n/a (mirror not ready: ${why.replace(/\s+/g, " ").replace(/\|/g, "/").slice(0, 160)})`,
      direct: "—",
      ratio: "—",
      target: "≥ 0.75×",
      result: "n/a",
    });
  };
  let crm: Crm;
  try {
    crm = await startCrm({
      allowed_hosts: ["127.0.0.1"],
      allowed_ports: [originPorts.registry],
      mirror: {
        registries: { "reg.test": `http://127.0.0.1:${originPorts.registry}` },
        default_registry: "reg.test",
      },
    });
  } catch (e) {
    return notReady(`crm did not start: ${(e as Error).message}`);
  }
  let ng: Nginx | null = null;
  try {
    const path = `/v2/library/big/blobs/${BLOB_DIGEST}`;
    const viaCrm = `http://127.0.0.1:${crm.port}/v2/reg.test/library/big/blobs/${BLOB_DIGEST}`;
    // A probe first: a mirror that is not there yet answers something else than the blob.
    const probe = await run(["curl", "-sS", "-I", "--max-time", "15", viaCrm], 20_000);
    const status = Number(/^HTTP\/[\d.]+ (\d+)/.exec(probe.stdout)?.[1] ?? "0");
    const length = /^content-length:\s*(\d+)/im.exec(probe.stdout)?.[1] ?? null;
    if (status !== 200)
      return notReady(`HEAD answered ${status || `nothing (${probe.stderr.trim()})`}`);
    if (length !== String(P.bulk))
      note(`mirror: HEAD of the blob answered content-length ${length} (expected ${P.bulk})`);
    ng = await startPeer({ registry: originPorts.registry });
    await notePeers(ng);
    let res: BulkResult;
    try {
      res = await bulk(
        [
          { name: "direct", url: `http://127.0.0.1:${originPorts.registry}${path}`, args: [] },
          { name: "crm", url: viaCrm, args: [], pid: crm.pid },
          ...(ng
            ? [
                {
                  name: "nginx",
                  url: `http://127.0.0.1:${ng.ports.registry}${path}`,
                  args: [],
                  pid: ng.workerPid,
                },
              ]
            : []),
        ],
        P.bulk,
        P.bulkRuns,
      );
    } catch (e) {
      return notReady((e as Error).message);
    }
    bulkRow("8", `${fmtBytes(P.bulk)} blob pulled through the mirror`, res, "crm", 0.75);
    const nginxMetric =
      "same blob through nginx, reverse proxy of the registry, 1 worker process (peer, not crm)";
    if (ng) refRow("8n", nginxMetric, res, "nginx");
    else missingPeerRow("8n", nginxMetric);
    const perGiB = res.cpuPerGiB.get("crm") ?? NaN;
    const ngPerGiB = res.cpuPerGiB.get("nginx");
    row({
      id: "8c",
      metric: `mirror CPU-seconds per GiB, crm process (its /proc CPU time ÷ GiB moved, over the ${P.bulkRuns} runs of row 8)`,
      crm: Number.isFinite(perGiB) ? `${perGiB.toFixed(2)} CPU-s/GiB` : "?",
      direct:
        ngPerGiB !== undefined && Number.isFinite(ngPerGiB)
          ? `nginx worker ${ngPerGiB.toFixed(2)} CPU-s/GiB`
          : "—",
      ratio: "—",
      target: "≤ 0.6",
      result: atMost(perGiB, 0.6),
    });
    note(
      `mirror bulk: crm CPU ${pct(res.cpu.get("crm"))} of a core${ng ? `, nginx worker ${pct(res.cpu.get("nginx"))}` : ""}; ${machineCost(res)}`,
    );
  } finally {
    await Promise.all([crm.stop(), ng?.stop()]);
  }
}

/**
 * The manifest cache: requests/s for a manifest by tag through crm (HEAD upstream, body from
 * memory) against the fake hub directly, and the upstream GETs (the requests Docker Hub counts)
 * for 50 parallel containerd-style pulls of one image: HEAD by tag, GET index, GET amd64 manifest.
 */
async function sectionManifests(): Promise<void> {
  const hubChild = spawnChild([BUN, join(ROOT, "scripts/bench/hub.ts"), String(LIFETIME_MS)], {
    cwd: ROOT,
  });
  const hub = JSON.parse(await hubChild.firstLine(15_000)) as {
    port: number;
    control: number;
    index: string;
    amd64: string;
  };
  const crm = await startCrm({
    mirror: {
      registries: { "hub.test": `http://127.0.0.1:${hub.port}` },
      default_registry: "hub.test",
    },
  });
  const counts = async (
    path: "counts" | "reset",
  ): Promise<{ gets: number; heads: number; byPath: string[] }> =>
    (await fetch(`http://127.0.0.1:${hub.control}/${path}`)).json() as Promise<{
      gets: number;
      heads: number;
      byPath: string[];
    }>;
  const accept =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";
  try {
    const pull = async (base: string): Promise<void> => {
      const h = { accept };
      const head = await fetch(`${base}/v2/library/multi/manifests/latest`, {
        method: "HEAD",
        headers: h,
      });
      const digest = head.headers.get("docker-content-digest");
      if (head.status !== 200 || digest !== hub.index)
        throw new Error(`HEAD by tag answered ${head.status} ${digest}`);
      for (const d of [hub.index, hub.amd64]) {
        const r = await fetch(`${base}/v2/library/multi/manifests/${d}`, { headers: h });
        const body = new Uint8Array(await r.arrayBuffer());
        if (r.status !== 200 || "sha256:" + createHash("sha256").update(body).digest("hex") !== d)
          throw new Error(`GET ${d} answered ${r.status} with other bytes`);
      }
    };
    const viaCrm = `http://127.0.0.1:${crm.port}`;
    const direct = `http://127.0.0.1:${hub.port}`;
    const N = 50;
    const gets: Record<string, number> = {};
    for (const [name, base] of [
      ["direct", direct],
      ["crm", viaCrm],
    ] as const) {
      await counts("reset");
      await Promise.all(Array.from({ length: N }, () => pull(base)));
      gets[name] = (await counts("counts")).gets;
    }
    const perManifest = (gets.crm ?? NaN) / 2;
    row({
      id: "9",
      metric: `upstream manifest GETs for ${N} parallel pulls of one image (index + 1 platform manifest)`,
      crm: `${gets.crm} (${perManifest} per manifest)`,
      direct: `${gets.direct}`,
      ratio: x((gets.crm ?? NaN) / (gets.direct ?? NaN)),
      target: "1 per manifest",
      result: atMost(perManifest, 1),
    });

    const script = join(tmp, "manifest-accept.lua");
    writeFileSync(script, `wrk.headers["Accept"] = ${JSON.stringify(accept)}\n`);
    const opts = { threads: 2, conns: 32, seconds: P.rateSeconds, script };
    const variants = [
      { name: "direct", url: `${direct}/v2/library/multi/manifests/latest` },
      { name: "crm", url: `${viaCrm}/v2/library/multi/manifests/latest` },
    ];
    await wrk(variants[1]!.url, { ...opts, seconds: 1 }); // warm-up: the cache holds the index now
    const rps = new Map<string, number[]>(variants.map((v) => [v.name, []]));
    for (let r = 0; r < P.rateRuns; r++) {
      for (let k = 0; k < variants.length; k++) {
        const v = variants[(k + r) % variants.length]!;
        const w = await wrk(v.url, opts);
        if (w.errors) throw new Error(`wrk ${v.name}: ${w.errors}`);
        rps.get(v.name)?.push(w.rps);
      }
    }
    await counts("reset");
    await wrk(variants[1]!.url, { ...opts, seconds: 1 });
    const warmGets = (await counts("counts")).gets;
    const c = median(rps.get("crm") ?? []);
    const d = median(rps.get("direct") ?? []);
    const n = (v: number): string => Math.round(v).toLocaleString("en-US");
    row({
      id: "9b",
      metric: `manifest GET by tag, warm cache (wrk ${opts.threads}t ${opts.conns}c ${opts.seconds}s; crm: HEAD upstream + body from memory)`,
      crm: `${n(c)} req/s`,
      direct: `${n(d)} req/s`,
      ratio: x(c / d),
      target: "info",
      result: "—",
    });
    note(
      `manifests: during a 1 s warm-cache wrk run through crm the hub saw ${warmGets} manifest GETs (all else HEADs)`,
    );
  } finally {
    await Promise.all([crm.stop(), hubChild.stop()]);
  }
}

// ---------------------------------------------------------------- parallel transfers

const PARALLEL = 8;

/**
 * Eight transfers at once, where a proxy's one JS thread has to share itself out: HTTP forward
 * (absolute-form, 8 × 256 MiB; 8 × 32 MiB with --quick) and 8 pulls of the mirror's blob, each
 * against the same 8 direct and, where installed, through nginx as a reverse proxy of the same
 * origin, once with its default buffers and once with 64 KiB ones (scripts/bench/nginx.ts says
 * why). The issue wants crm ahead of the peers here, so each gets a crm ÷ best-peer row.
 */
async function sectionParallel(): Promise<void> {
  const crm = await startCrm({
    allowed_hosts: ["127.0.0.1"],
    allowed_ports: [originPorts.http, originPorts.registry],
    // Eight independent transfers, as through the peers: with fan-out on, the 8 pulls of one blob
    // would share one download (row 11 measures that) and be checked against BLOB_DIGEST, which
    // is not the digest of the origin's bytes.
    mirror: {
      registries: { "reg.test": `http://127.0.0.1:${originPorts.registry}` },
      default_registry: "reg.test",
      fanout: { enabled: false },
    },
  });
  const upstreams = { http: originPorts.http, registry: originPorts.registry };
  /** Row id suffix, variant name, how the row says it, the running nginx (or null). */
  const peers: Array<{
    suffix: string;
    name: string;
    label: string;
    ng: Nginx | null;
    why: string;
  }> = [];
  for (const [suffix, buffer] of [
    ["n", undefined],
    ["nt", TUNED_BUFFER],
  ] as const) {
    const ng = await startPeer(upstreams, buffer);
    const label = buffer ? `nginx, proxy_buffer_size ${buffer}` : "nginx, default buffers";
    peers.push({
      suffix,
      name: buffer ? `nginx-${buffer}` : "nginx",
      label,
      ng,
      why: nginxMissing,
    });
  }
  try {
    await notePeers(peers[0]?.ng ?? null);
    const runs = QUICK ? 1 : 3;
    const show = (res: BulkResult): string =>
      [...res.runs]
        .map(([k, v]) => `${k} ${v.map((r) => (r / MiB).toFixed(0)).join(", ")}`)
        .join("; ");
    const cpuNote = (res: BulkResult): string =>
      [...res.cpuPerGiB]
        .filter(([, v]) => Number.isFinite(v))
        .map(
          ([k, v]) =>
            `${k.startsWith("nginx") ? `${k} worker` : k} ${pct(res.cpu.get(k))} of a core, ${v.toFixed(2)} CPU-s/GiB`,
        )
        .join("; ");
    /** The crm row, one row per peer, and crm ÷ the best peer. */
    const rowsFor = (id: string, metric: string, what: string, res: BulkResult): void => {
      refRow(id, metric, res, "crm");
      for (const p of peers) {
        const m = `same ${what} through ${p.label}, reverse proxy of the same origin, 1 worker process (peer, not crm)`;
        if (p.ng) refRow(`${id}${p.suffix}`, m, res, p.name);
        else missingPeerRow(`${id}${p.suffix}`, m, p.why);
      }
      const measured = new Map(
        peers.filter((p) => p.ng).map((p) => [p.label, res.rate.get(p.name) ?? NaN]),
      );
      peerRow(
        `${id}v`,
        `${metric.split(",")[0]}, ${what}: crm ÷ best peer`,
        res.rate.get("crm") ?? NaN,
        measured,
      );
    };
    const peerVariants = (path: (ng: Nginx) => string): Variant[] =>
      peers.flatMap((p) =>
        p.ng
          ? [{ name: p.name, url: `http://127.0.0.1:${path(p.ng)}`, args: [], pid: p.ng.workerPid }]
          : [],
      );

    // HTTP forward, 8 × 256 MiB.
    const fwdSize = (QUICK ? 32 : 256) * MiB;
    const path = `/big?n=${fwdSize}&mode=${httpMode}`;
    const url = `http://127.0.0.1:${originPorts.http}${path}`;
    const fwd: Variant[] = [
      { name: "direct", url, args: [] },
      { name: "crm", url, args: proxyArg(crm), pid: crm.pid },
      ...peerVariants((ng) => `${ng.ports.http}${path}`),
    ];
    // Not measured: the origin makes its in-memory body of this size, the proxies open their first upstream.
    for (const v of fwd) checkTransfer(v, await curl(v.url, v.args, BULK_MAX_S), fwdSize);
    const f = await bulk(fwd, fwdSize, runs, PARALLEL);
    rowsFor(
      "2p",
      `HTTP forward, ${PARALLEL} × ${fmtBytes(fwdSize)} in parallel, aggregate MiB/s (absolute-form)`,
      `${PARALLEL} × ${fmtBytes(fwdSize)}`,
      f,
    );
    note(`parallel forward, aggregate MiB/s per run: ${show(f)}; ${cpuNote(f)}; ${machineCost(f)}`);

    // 8 parallel pulls of the mirror's blob.
    const blobPath = `/v2/library/big/blobs/${BLOB_DIGEST}`;
    const viaCrm = `http://127.0.0.1:${crm.port}/v2/reg.test/library/big/blobs/${BLOB_DIGEST}`;
    const probe = await curl(viaCrm, ["-I"], 15);
    if (probe.status !== 200)
      throw new Error(`mirror HEAD of the blob answered HTTP ${probe.status} ${probe.stderr}`);
    const mir: Variant[] = [
      { name: "direct", url: `http://127.0.0.1:${originPorts.registry}${blobPath}`, args: [] },
      { name: "crm", url: viaCrm, args: [], pid: crm.pid },
      ...peerVariants((ng) => `${ng.ports.registry}${blobPath}`),
    ];
    const m = await bulk(mir, P.bulk, runs, PARALLEL);
    rowsFor(
      "8p",
      `mirror, ${PARALLEL} parallel pulls of the ${fmtBytes(P.bulk)} blob, aggregate MiB/s`,
      `${PARALLEL} pulls`,
      m,
    );
    note(
      `parallel mirror pulls, aggregate MiB/s per run: ${show(m)}; ${cpuNote(m)}; ${machineCost(m)}`,
    );
  } finally {
    await Promise.all([crm.stop(), ...peers.map((p) => p.ng?.stop())]);
  }
}

// ---------------------------------------------------------------- limits (fair shares)

/** The previous build's sources (`git archive BASE_REF src`), runnable with this checkout's node_modules. */
let previousBuilt: Promise<{ main: string; commit: string }> | null = null;

/** Extracted once per run (the limits and fleet sections both compare against it). */
function previousBuild(): Promise<{ main: string; commit: string }> {
  previousBuilt ??= extractPreviousBuild();
  return previousBuilt;
}

async function extractPreviousBuild(): Promise<{ main: string; commit: string }> {
  const rev = await run(["git", "-C", ROOT, "rev-parse", "--short", BASE_REF], 5000);
  if (rev.code !== 0) throw new Error(`git rev-parse ${BASE_REF}: ${rev.stderr.trim()}`);
  const dir = join(tmp, "previous");
  mkdirSync(dir, { recursive: true });
  const r = await run(
    [
      "sh",
      "-c",
      `git -C "$1" archive "$2" src package.json | tar -x -C "$3"`,
      "sh",
      ROOT,
      BASE_REF,
      dir,
    ],
    30_000,
  );
  if (r.code !== 0) throw new Error(`git archive ${BASE_REF}: ${r.stderr.trim()}`);
  symlinkSync(join(ROOT, "node_modules"), join(dir, "node_modules"));
  return { main: join(dir, "src/main.ts"), commit: rev.stdout.trim() };
}

async function sectionLimits(): Promise<void> {
  const mirror = {
    mirror: {
      registries: { "reg.test": `http://127.0.0.1:${originPorts.registry}` },
      default_registry: "reg.test",
    },
  };
  const blob = (crm: Crm): string =>
    `http://127.0.0.1:${crm.port}/v2/reg.test/library/big/blobs/${BLOB_DIGEST}`;
  const manifest = (crm: Crm): string =>
    `http://127.0.0.1:${crm.port}/v2/reg.test/library/big/manifests/latest`;

  // 9a, 9b: the limits code, configured off, against the build before it, same run, alternating.
  const prev = await previousBuild();
  const [cur, old] = [await startCrm(mirror), await startCrm(mirror, prev.main)];
  try {
    for (const c of [cur, old]) {
      const probe = await curl(manifest(c), [], 15);
      if (probe.status !== 200)
        throw new Error(`manifest probe answered ${probe.status} ${probe.stderr}`);
    }
    const res = await bulk(
      [
        { name: "previous", url: blob(old), args: [], pid: old.pid },
        { name: "crm", url: blob(cur), args: [], pid: cur.pid },
      ],
      P.bulk,
      P.bulkRuns,
    );
    const c = res.rate.get("crm") ?? NaN;
    const p = res.rate.get("previous") ?? NaN;
    row({
      id: "10a",
      metric: `${fmtBytes(P.bulk)} mirror blob, limits not configured, vs previous build ${prev.commit}`,
      crm: fmtRate(c),
      direct: `${fmtRate(p)} (previous)`,
      ratio: x(c / p),
      target: "≥ 0.95×",
      result: atLeast(c / p, 0.95),
    });
    // Short runs in tight alternating pairs, judged by the median of the pair ratios: on a shared
    // machine the load drifts more between two long runs than the code under test differs.
    const opts = { threads: 2, conns: 32, seconds: QUICK ? 1 : 2 };
    for (const v of [cur, old]) await wrk(manifest(v), { ...opts, seconds: 1 }); // warm-up
    const rps: Record<"crm" | "previous", number[]> = { crm: [], previous: [] };
    const ratios: number[] = [];
    for (let r = 0; r < (QUICK ? 4 : 10); r++) {
      const order: Array<["crm" | "previous", Crm]> =
        r % 2 === 0
          ? [
              ["crm", cur],
              ["previous", old],
            ]
          : [
              ["previous", old],
              ["crm", cur],
            ];
      for (const [name, v] of order) {
        const w = await wrk(manifest(v), opts);
        if (w.errors) throw new Error(`wrk ${name}: ${w.errors}`);
        rps[name].push(w.rps);
      }
      ratios.push((rps.crm.at(-1) as number) / (rps.previous.at(-1) as number));
    }
    const cm = median(rps.crm);
    const pm = median(rps.previous);
    const pr = median(ratios);
    const n = (v: number): string => Math.round(v).toLocaleString("en-US");
    row({
      id: "10b",
      metric: `mirror manifest GETs/s (wrk ${opts.threads}t ${opts.conns}c, ${ratios.length} pairs of ${opts.seconds} s), limits not configured, vs previous build`,
      crm: `${n(cm)} req/s`,
      direct: `${n(pm)} req/s (previous)`,
      ratio: `${x(pr)} (median pair)`,
      target: "≥ 0.95×",
      result: atLeast(pr, 0.95),
    });
    note(
      `limits off vs previous build ${prev.commit}: manifest runs crm ${rps.crm.map(n).join(", ")}; previous ${rps.previous.map(n).join(", ")}; pair ratios ${ratios.map((v) => v.toFixed(2)).join(", ")}`,
    );
  } finally {
    await Promise.all([cur.stop(), old.stop()]);
  }

  // 9c-9e: fair shares under a total cap: a greedy client (8 parallel pulls, from 127.0.0.2)
  // and a modest one (1 pull, from 127.0.0.3), both for the same window.
  const cap = (QUICK ? 16 : 64) * MiB;
  const windowS = QUICK ? 4 : 8;
  const capped = await startCrm({
    ...mirror,
    limits: { ...BASE_CONFIG.limits, total_bandwidth: cap },
  });
  try {
    const pull = (from: string) => curl(blob(capped), ["--interface", from], windowS);
    const [greedy, modest] = await Promise.all([
      Promise.all(Array.from({ length: 8 }, () => pull("127.0.0.2"))),
      pull("127.0.0.3"),
    ]);
    const greedyRate = greedy.reduce((s, r) => s + r.bytes, 0) / windowS;
    const modestRate = modest.bytes / windowS;
    const share = (v: number): string => `${((v / cap) * 100).toFixed(0)} % of the cap`;
    row({
      id: "10c",
      metric: `total_bandwidth ${fmtRate(cap)}: greedy client, 8 parallel pulls, ${windowS} s`,
      crm: fmtRate(greedyRate),
      direct: "—",
      ratio: share(greedyRate),
      target: "≈ 50 %",
      result: "info",
    });
    row({
      id: "10d",
      metric: `same run: modest client, 1 pull`,
      crm: fmtRate(modestRate),
      direct: "—",
      ratio: share(modestRate),
      target: "≥ 33 %",
      result: atLeast(modestRate / cap, 1 / 3),
    });
    row({
      id: "10e",
      metric: "same run: both together (the cap held)",
      crm: fmtRate(greedyRate + modestRate),
      direct: "—",
      ratio: share(greedyRate + modestRate),
      target: "≤ ~100 %",
      result: atMost((greedyRate + modestRate) / cap, 1.1),
    });
    note(
      `fair shares: greedy streams ${greedy.map((r) => fmtBytes(r.bytes)).join(", ")}; modest ${fmtBytes(modest.bytes)}; window ${windowS} s (curl --max-time), RSS of crm ${(rssKiB(capped.pid) / 1024).toFixed(0)} MiB at the end`,
    );
  } finally {
    await capped.stop();
  }
}

// ---------------------------------------------------------------- fleet (fan-out)

/**
 * Issue 19's fleet row: 16 clients pull one blob at the same moment from an origin behind a relay
 * that caps what the origin sends, over all its connections, at FLEET_RATE (an uplink;
 * scripts/bench/fleet-relay.ts). Wall time until all 16 are done and the bytes the origin sent,
 * for the clients going direct (each its own download), through crm (mirror.fanout: one shared
 * download) and through nginx as a reverse proxy; and one client alone, the yardstick for crm's
 * wall time. The blob is zeros with its real digest: a shared download is hashed. Then the
 * single-pull cost of the fan-out code: the 1 GiB mirror blob through crm and through the build
 * before it (--base), alternating, rate and crm CPU-s/GiB.
 */
const FLEET_CLIENTS = 16;
const FLEET_RATE = 200 * MiB;

async function sectionFleet(): Promise<void> {
  const size = (QUICK ? 64 : 256) * MiB;
  const zeros = new Uint8Array(MiB);
  const hasher = new Bun.CryptoHasher("sha256");
  for (let left = size; left > 0; left -= MiB)
    hasher.update(left >= MiB ? zeros : zeros.subarray(0, left));
  const digest = "sha256:" + hasher.digest("hex");
  const specPath = join(tmp, "fleet-origin.json");
  const spec: OriginSpec = {
    file: join(tmp, "sparse-1g.bin"),
    tls: originLeaf,
    blob: { digest, size, mode: "file" },
    lifetimeMs: LIFETIME_MS,
  };
  writeFileSync(specPath, JSON.stringify(spec));
  const originChild = spawnChild([BUN, join(ROOT, "scripts/bench/origin.ts"), specPath], {
    cwd: ROOT,
  });
  const fleetOrigin = JSON.parse(await originChild.firstLine(15_000)) as OriginPorts;
  const relayChild = spawnChild(
    [
      BUN,
      join(ROOT, "scripts/bench/fleet-relay.ts"),
      String(fleetOrigin.registry),
      String(FLEET_RATE),
      String(LIFETIME_MS),
    ],
    { cwd: ROOT },
  );
  const relay = JSON.parse(await relayChild.firstLine(15_000)) as { port: number; control: number };
  const sent = async (): Promise<number> =>
    ((await (await fetch(`http://127.0.0.1:${relay.control}/bytes`)).json()) as { bytes: number })
      .bytes;
  const crm = await startCrm({
    allowed_hosts: ["127.0.0.1"],
    allowed_ports: [relay.port],
    mirror: {
      registries: { "reg.test": `http://127.0.0.1:${relay.port}` },
      default_registry: "reg.test",
    },
  });
  const ng = await startPeer({ registry: relay.port });
  const path = `/v2/library/big/blobs/${digest}`;
  const maxS = Math.ceil((FLEET_CLIENTS * size) / FLEET_RATE) * 4 + 30;
  try {
    const pullAll = async (url: string, n: number): Promise<{ wall: number; bytes: number }> => {
      const b0 = await sent();
      const t0 = performance.now();
      const all = await Promise.all(Array.from({ length: n }, () => curl(url, [], maxS)));
      const wall = (performance.now() - t0) / 1000;
      for (const r of all) checkTransfer({ name: url, url, args: [] }, r, size);
      // The relay may still be passing the last bytes it read; they were sent by the origin all the same.
      return { wall, bytes: (await sent()) - b0 };
    };
    const direct = `http://127.0.0.1:${relay.port}${path}`;
    const viaCrm = `http://127.0.0.1:${crm.port}/v2/reg.test/library/big/blobs/${digest}`;
    // Not measured: the origin reads its file into the page cache, crm learns the registry.
    checkTransfer({ name: "warm-up", url: viaCrm, args: [] }, await curl(viaCrm, [], maxS), size);
    const runs = QUICK ? 1 : 3;
    const results = new Map<string, Array<{ wall: number; bytes: number }>>();
    // Name, URL, clients, rounds: the slow peers (16× the bytes through the cap, ~20 s) once, the short ones every round.
    const variants: Array<[string, string, number, number]> = [
      ["alone", direct, 1, runs],
      ["direct", direct, FLEET_CLIENTS, 1],
      ["crm", viaCrm, FLEET_CLIENTS, runs],
      ...(ng
        ? [
            ["nginx", `http://127.0.0.1:${ng.ports.registry}${path}`, FLEET_CLIENTS, 1] as [
              string,
              string,
              number,
              number,
            ],
          ]
        : []),
    ];
    for (let r = 0; r < runs; r++) {
      for (const [name, url, n, rounds] of variants) {
        if (r >= rounds) continue;
        const got = await pullAll(url, n);
        results.set(name, [...(results.get(name) ?? []), got]);
      }
    }
    const wall = (name: string): number => median((results.get(name) ?? []).map((v) => v.wall));
    const bytes = (name: string): number => median((results.get(name) ?? []).map((v) => v.bytes));
    const alone = wall("alone");
    const shown = (name: string): string =>
      `${wall(name).toFixed(2)} s, origin sent ${fmtBytes(bytes(name))} (${(bytes(name) / size).toFixed(2)}× the blob)`;
    const what = `${FLEET_CLIENTS} clients pull one ${fmtBytes(size)} blob at once, origin capped at ${fmtRate(FLEET_RATE)}`;
    row({
      id: "11",
      metric: `fleet: ${what}: wall until all are done (ratio: ÷ one client alone, ${alone.toFixed(2)} s)`,
      crm: `${wall("crm").toFixed(2)} s`,
      direct: `${wall("direct").toFixed(2)} s`,
      ratio: x(wall("crm") / alone),
      target: "≤ 1.5× one alone",
      result: atMost(wall("crm") / alone, 1.5),
    });
    row({
      id: "11b",
      metric: "fleet: bytes the origin sent (ratio: ÷ the blob)",
      crm: fmtBytes(bytes("crm")),
      direct: fmtBytes(bytes("direct")),
      ratio: x(bytes("crm") / size),
      target: "≤ 1.1× the blob",
      result: atMost(bytes("crm") / size, 1.1),
    });
    if (ng)
      row({
        id: "11n",
        metric: `fleet through nginx, reverse proxy of the origin, 1 worker (peer, not crm)`,
        crm: shown("nginx"),
        direct: shown("direct"),
        ratio: x(wall("nginx") / alone),
        target: "info",
        result: "—",
      });
    else missingPeerRow("11n", "fleet through nginx");
    const fan = await (await fetch(`http://127.0.0.1:${crm.port}/metrics`)).text();
    const m = (name: string): string =>
      fan
        .split("\n")
        .filter((l) => l.startsWith(name))
        .map((l) => l.replace(/^crm_mirror_fanout_/, ""))
        .join(", ") || `${name.replace(/^crm_mirror_fanout_/, "")} none`;
    note(
      `fleet: walls per run ${[...results].map(([k, v]) => `${k} ${v.map((e) => e.wall.toFixed(2)).join("/")} s`).join("; ")}; crm fan-out counters ${m("crm_mirror_fanout_downloads_total")}, ${m("crm_mirror_fanout_joins_total")}, ${m("crm_mirror_fanout_detached_total")}, ${m("crm_mirror_fanout_lag_waits_total")}, ${m("crm_mirror_fanout_lag_wait_seconds_total")}, ${m("crm_mirror_fanout_not_shared_total")}; crm RSS ${(rssKiB(crm.pid) / 1024).toFixed(0)} MiB after the runs`,
    );
  } finally {
    await Promise.all([crm.stop(), ng?.stop(), relayChild.stop(), originChild.stop()]);
  }

  // The single pull: fan-out's bookkeeping on the path of every blob GET, against the build before it.
  const mirror = {
    mirror: {
      registries: { "reg.test": `http://127.0.0.1:${originPorts.registry}` },
      default_registry: "reg.test",
    },
  };
  const prev = await previousBuild();
  const [cur, old] = [await startCrm(mirror), await startCrm(mirror, prev.main)];
  try {
    const blob = (c: Crm): string =>
      `http://127.0.0.1:${c.port}/v2/reg.test/library/big/blobs/${BLOB_DIGEST}`;
    for (const c of [cur, old])
      checkTransfer(
        { name: "warm-up", url: blob(c), args: [] },
        await curl(blob(c), [], BULK_MAX_S),
        P.bulk,
      );
    const res = await bulk(
      [
        { name: "previous", url: blob(old), args: [], pid: old.pid },
        { name: "crm", url: blob(cur), args: [], pid: cur.pid },
      ],
      P.bulk,
      P.bulkRuns,
    );
    const c = res.rate.get("crm") ?? NaN;
    const p = res.rate.get("previous") ?? NaN;
    row({
      id: "11s",
      metric: `${fmtBytes(P.bulk)} mirror blob, one pull (fan-out on, nothing to share), vs previous build ${prev.commit}`,
      crm: fmtRate(c),
      direct: `${fmtRate(p)} (previous)`,
      ratio: x(c / p),
      target: "≥ 0.95×",
      result: atLeast(c / p, 0.95),
    });
    const cc = res.cpuPerGiB.get("crm") ?? NaN;
    const pc = res.cpuPerGiB.get("previous") ?? NaN;
    row({
      id: "11c",
      metric: "same runs: crm CPU-seconds per GiB vs previous build",
      crm: `${cc.toFixed(2)} CPU-s/GiB`,
      direct: `${pc.toFixed(2)} CPU-s/GiB (previous)`,
      ratio: x(cc / pc),
      target: "≤ 1.05×",
      result: atMost(cc / pc, 1.05),
    });
    note(
      `fleet single pull, MiB/s per run: ${[...res.runs].map(([k, v]) => `${k} ${v.map((r) => (r / MiB).toFixed(0)).join(", ")}`).join("; ")}`,
    );
  } finally {
    await Promise.all([cur.stop(), old.stop()]);
  }
}

// ---------------------------------------------------------------- main

/**
 * The idle-tunnel row needs ~2 fds per tunnel in crm. Bun raises its own soft RLIMIT_NOFILE to
 * the hard limit at start-up (and children inherit it), so this rarely does anything; if the
 * soft limit is still short, re-run under `ulimit -n HARD`, and if the hard limit is short too,
 * open fewer tunnels and say so.
 */
async function ensureFdLimit(): Promise<void> {
  if (!ONLY.has("idle")) return;
  const r = await run(["sh", "-c", "ulimit -n; ulimit -Hn"], 5000);
  const [soft = 0, hard = 0] = r.stdout
    .trim()
    .split("\n")
    .map((v) => (v.trim() === "unlimited" ? Infinity : Number(v)));
  const need = 2 * P.tunnels + 1024;
  if (soft >= need) return;
  if (hard >= need && !process.env.CRM_BENCH_REEXEC) {
    const limit = Number.isFinite(hard) ? String(hard) : "65536";
    console.log(`ulimit -n is ${soft}; re-running under ulimit -n ${limit}`);
    const p = Bun.spawn(
      ["sh", "-c", `ulimit -n ${limit} && exec "$@"`, "sh", BUN, ...process.argv.slice(1)],
      {
        env: { ...CHILD_ENV, CRM_BENCH_REEXEC: "1" },
        stdio: ["inherit", "inherit", "inherit"],
      },
    );
    process.exit(await p.exited);
  }
  tunnelCount = Math.max(100, Math.floor((soft - 1024) / 2));
  note(
    `ulimit -n is ${soft} (hard ${hard}): idle-tunnel row uses ${tunnelCount} tunnels instead of ${P.tunnels}`,
  );
}

async function machine(): Promise<string> {
  const first = async (cmd: string[]): Promise<string> =>
    ((await run(cmd, 5000).catch(() => null))?.stdout ?? "").split("\n")[0]?.trim() ?? "";
  const wrkV =
    ((await run(["wrk", "-v"], 5000).catch(() => null))?.stdout ?? "").split("\n")[0]?.trim() ?? "";
  return [
    `nproc: ${await first(["nproc"])} (${cpus()[0]?.model ?? "?"})`,
    `kernel: ${release()}`,
    `bun: ${Bun.version} (${Bun.revision.slice(0, 9)})`,
    `curl: ${(await first(["curl", "--version"])).split(" ").slice(0, 2).join(" ")}`,
    `wrk: ${wrkV.split(" ").slice(0, 2).join(" ")}`,
    `mode: ${QUICK ? "--quick" : "full"}; sections: ${[...ONLY].join(", ")}`,
  ].join("\n");
}

const SECTION_FNS: Record<Section, () => Promise<void>> = {
  connect: sectionConnect,
  forward: sectionForward,
  rate: sectionRate,
  idle: sectionIdle,
  slow: sectionSlow,
  binary: sectionBinary,
  mitm: sectionMitm,
  mirror: sectionMirror,
  parallel: sectionParallel,
  manifests: sectionManifests,
  limits: sectionLimits,
  fleet: sectionFleet,
  cluster: () =>
    sectionCluster({
      root: ROOT,
      bun: BUN,
      tmp,
      lifetimeMs: LIFETIME_MS,
      rateSeconds: P.rateSeconds,
      rateRuns: P.rateRuns,
      startCrm,
      row,
      note,
    }),
};

function report(started: number, machineText: string): void {
  const secs = (performance.now() - started) / 1000;
  console.log(
    `\n## crm benchmark (${new Date().toISOString().slice(0, 16)}Z, ${secs.toFixed(0)} s)\n`,
  );
  console.log("```\n" + machineText + "\n```\n");
  console.log(table());
  if (notes.length > 0) console.log("\nNotes:\n" + notes.map((n) => `- ${n}`).join("\n"));
  console.log(
    "\nratio = crm ÷ direct (for the 50-host row, lower is better); rows ending in n (nt: nginx with 64 KiB buffers): nginx ÷ direct; rows ending in v: crm ÷ the best peer. " +
      "Direct runs have one process fewer on the same cores, " +
      "so they are an upper bound. Bulk rows: median of " +
      `${P.bulkRuns} alternating runs with curl to /dev/null; parallel rows: ${QUICK ? "1 round" : "median of 3 rounds"} of ${PARALLEL} curls at once.`,
  );
}

async function main(): Promise<void> {
  await ensureFdLimit();
  const started = performance.now();
  tmp = mkdtempSync(join(tmpdir(), "crm-bench-"));
  let machineText = "";
  let exiting = false;
  const cleanup = async (): Promise<void> => {
    await stopAllChildren();
    rmSync(tmp, { recursive: true, force: true });
  };
  const deadline = setTimeout(() => {
    exiting = true;
    console.error(`bench: deadline of ${P.deadlineMs / 1000} s reached; stopping`);
    row({
      id: "!",
      metric: "deadline reached, remaining sections skipped",
      crm: "—",
      direct: "—",
      ratio: "—",
      target: "—",
      result: "n/a",
    });
    report(started, machineText);
    void cleanup().finally(() => process.exit(3));
  }, P.deadlineMs);
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.on(sig, () => {
      exiting = true;
      void cleanup().finally(() => process.exit(130));
    });
  }
  try {
    await initClock();
    machineText = await machine();
    console.log(machineText);
    await startOrigin();
    console.log(`origin: ${JSON.stringify(originPorts)} (pid ${originPid})`);
    if (
      ONLY.has("connect") ||
      ONLY.has("forward") ||
      ONLY.has("mitm") ||
      ONLY.has("mirror") ||
      ONLY.has("parallel") ||
      ONLY.has("slow") ||
      ONLY.has("limits") ||
      ONLY.has("fleet")
    )
      await calibrateOrigin();
    for (const s of SECTIONS) {
      if (!ONLY.has(s) || exiting) continue;
      const t0 = performance.now();
      console.log(`\n[${s}]`);
      try {
        await SECTION_FNS[s]();
      } catch (e) {
        if (exiting) break;
        const msg = (e as Error).message.replace(/\s+/g, " ").replace(/\|/g, "/").slice(0, 200);
        row({
          id: s,
          metric: `${s}: failed`,
          crm: `error: ${msg}`,
          direct: "—",
          ratio: "—",
          target: "—",
          result: "n/a",
        });
      }
      console.log(`  (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    }
  } finally {
    clearTimeout(deadline);
    if (!exiting) await cleanup();
  }
  if (!exiting) report(started, machineText);
}

await main();
