/**
 * Fuzzing the response side: a hostile upstream answers each request with a random head and
 * framing (Content-Length and Transfer-Encoding in every combination, lawful or not, wrong
 * lengths, cut bodies, resets), with a complete forged response hidden in every body. A client
 * pipelines a second request, to another origin, behind each one, on the forward and the mirror
 * path. Properties: what crm sends parses strictly; the client never receives a response the
 * upstream did not frame as one (no forged response, the second answer is the other origin's);
 * a relayed body is the upstream's exactly, and a cut one never looks complete; an unrelayable
 * framing is a 502; crm survives with no internal error and bounded memory.
 *
 * Deterministic: case i is generated from (seed, i) alone. `CRM_FUZZ_SEED` changes the seed,
 * `CRM_RESPONSE_FUZZ_CASES` the count, `CRM_RESPONSE_FUZZ_CASE=<i>` runs (and prints) one case,
 * `CRM_RESPONSE_FUZZ_DEBUG=<outcome>` prints every case with that outcome (e.g. `crm-error`).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { heapStats } from "bun:jsc";
import { startCrm, type TestCrm } from "./support/crm.ts";
import {
  header,
  openRaw,
  parseResponses,
  startScriptedUpstream,
  waitUntil,
  type ParsedResponse,
  type ScriptedAnswer,
  type ScriptedUpstream,
} from "./support/faulty-upstreams.ts";
import { caseSeed, Rng } from "./support/rng.ts";

function envInt(name: string, dflt: number): number {
  const v = process.env[name];
  return v === undefined || v === "" ? dflt : Math.floor(Number(v));
}
const SEED = envInt("CRM_FUZZ_SEED", 0x5eedc0de) >>> 0;
const CASES = envInt("CRM_RESPONSE_FUZZ_CASES", 1000);
const ONLY =
  process.env.CRM_RESPONSE_FUZZ_CASE !== undefined ? envInt("CRM_RESPONSE_FUZZ_CASE", 0) : null;
const CONCURRENCY = 16;
/** A case with neither both answers nor a close after this long is a hang (crm's idle timeout is 1 s). */
const CASE_DEADLINE_MS = 4000;
/** A random stream id, distinct from the request fuzz's streams. */
const STREAM = 7;

console.log(
  `response fuzz: seed=${SEED} (0x${SEED.toString(16)}) cases=${CASES}; reproduce with CRM_FUZZ_SEED=${SEED} CRM_RESPONSE_FUZZ_CASE=i`,
);

// ---------------------------------------------------------------------------------------------
// Generator: one hostile answer per case.

interface HostileCase {
  i: number;
  path: "forward" | "mirror";
  method: "GET" | "HEAD";
  status: number;
  /** Framing fields as sent, in order. */
  fields: Array<[string, string]>;
  /** The body as the upstream means it (before chunked encoding). */
  payload: Buffer;
  /** The bytes after the head, as sent. */
  wire: Buffer;
  /** The wire body is a complete chunked body / was sent in full. */
  chunkedOnWire: boolean;
  cut: boolean;
  after: ScriptedAnswer["after"];
}

const forged = (i: number): string =>
  `HTTP/1.1 200 OK\r\nX-Forged: ${i}\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nforged`;
const casing = (rng: Rng, name: string): string =>
  rng.pick([name, name.toLowerCase(), name.toUpperCase()]);
const TE_ODD = [
  "Chunked",
  " chunked",
  "gzip, chunked",
  "chunked, gzip",
  "gzip",
  "identity",
  ",chunked",
  "",
  "chunked;q=1",
  "xchunked",
];
const CL_BAD = ["abc", "-1", "+5", "5 5", "0x10", "1e3", "99999999999999999999"];

function makeCase(i: number): HostileCase {
  const rng = new Rng(caseSeed(SEED, STREAM, i));
  const path = rng.chance(0.25) ? "mirror" : "forward";
  const method = rng.chance(0.15) ? "HEAD" : "GET";
  const status =
    path === "mirror"
      ? rng.pick([200, 200, 200, 206])
      : rng.pick([200, 200, 200, 200, 201, 206, 204, 304, 404, 500, 302]);
  // The forged response sits right after the first `split` bytes: a lying Content-Length of
  // `split` is the classic response-splitting shape.
  const split = rng.int(64);
  const size = rng.chance(0.35) ? rng.range(16 * 1024, 48 * 1024) : rng.range(split, split + 2000);
  const fill = (n: number): string => (rng.chance(0.5) ? "x".repeat(n) : rng.bytes(n));
  const pre = fill(split);
  const post = fill(Math.max(0, size - split - forged(i).length));
  const payload = Buffer.from(pre + forged(i) + post, "latin1");

  const fields: Array<[string, string]> = [];
  const teRoll = rng.int(10);
  const te: string[] =
    teRoll < 4
      ? []
      : teRoll < 7
        ? ["chunked"]
        : teRoll < 8
          ? ["chunked", "chunked"]
          : [rng.pick(TE_ODD)];
  const clRoll = rng.int(20);
  const cls: string[] =
    clRoll < 8
      ? []
      : clRoll < 12
        ? [String(payload.length)]
        : clRoll < 14
          ? [String(split)]
          : clRoll < 15
            ? [String(payload.length + rng.range(1, 100))]
            : clRoll < 16
              ? [String(payload.length), String(payload.length)]
              : clRoll < 17
                ? [String(split), String(payload.length)]
                : clRoll < 18
                  ? [`${payload.length}, ${payload.length}`]
                  : [rng.pick(CL_BAD)];
  for (const v of te) fields.push([casing(rng, "Transfer-Encoding"), v]);
  for (const v of cls) fields.push([casing(rng, "Content-Length"), v]);
  if (rng.chance(0.5)) fields.reverse();
  if (path === "mirror") fields.push(["Docker-Content-Digest", digestFor(i)]);
  if (rng.chance(0.3)) fields.push(["Connection", "close"]);

  // The body goes chunked on the wire when the last coding named says so.
  const codings = te
    .join(",")
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s !== "");
  const chunkedOnWire = codings.at(-1) === "chunked";
  let wire: Buffer;
  if (chunkedOnWire) {
    const parts: string[] = [];
    const text = payload.toString("latin1");
    for (let off = 0; off < text.length;) {
      const n = Math.min(text.length - off, rng.range(1, rng.chance(0.3) ? 64 : 8192));
      const ext = rng.chance(0.1) ? `;${rng.pick(["a=b", "x", 'q="1"'])}` : "";
      parts.push(`${n.toString(16)}${ext}\r\n${text.slice(off, off + n)}\r\n`);
      off += n;
    }
    parts.push(rng.chance(0.2) ? "0\r\nX-Trailer: t\r\n\r\n" : "0\r\n\r\n");
    wire = Buffer.from(parts.join(""), "latin1");
  } else wire = payload;
  // Some upstreams stop early: a cut body must never reach the client looking complete.
  const cut = rng.chance(0.15);
  if (cut) wire = wire.subarray(0, rng.int(wire.length));
  // Only a message that ends exactly where its framing says leaves the upstream's connection
  // open. Bytes left over would be read by fetch as the answer to the next request on that pooled
  // connection: the upstream answering its own next request, not a split crm could see.
  const noBody = method === "HEAD" || status === 204 || status === 304;
  const exact =
    method === "HEAD" ||
    (!noBody &&
      !cut &&
      (codings.length === 1 && codings[0] === "chunked"
        ? te.length === 1
        : te.length === 0 && cls.length === 1 && cls[0] === String(wire.length)));
  const after: ScriptedAnswer["after"] = exact
    ? rng.pick(["keep", "end", "end", "terminate"] as const)
    : rng.pick(["end", "terminate"] as const);
  return { i, path, method, status, fields, payload, wire, chunkedOnWire, cut, after };
}

function digestFor(i: number): string {
  return `sha256:${i.toString(16).padStart(64, "0")}`;
}

function answerBytes(c: HostileCase): Buffer {
  let head = `HTTP/1.1 ${c.status} Whatever\r\nX-Case: ${c.i}\r\n`;
  for (const [k, v] of c.fields) head += `${k}: ${v}\r\n`;
  return Buffer.concat([
    Buffer.from(head + "\r\n", "latin1"),
    c.method === "HEAD" ? Buffer.alloc(0) : c.wire,
  ]);
}

/** The case a request is for: `/case/<i>` on the forward path, the blob digest on the mirror. */
function caseOf(head: string): HostileCase | null {
  const target = head.split(" ")[1] ?? "";
  const m = /\/case\/(\d+)$/.exec(target) ?? /\/blobs\/sha256:([0-9a-f]{64})$/.exec(target);
  if (!m) return null;
  return makeCase(target.includes("/case/") ? Number(m[1]) : parseInt(m[1] as string, 16));
}

// ---------------------------------------------------------------------------------------------
// Oracle: what relaying the answer faithfully means (RFC 9112 §6.3), written independently of crm.

type Expect =
  | { relayable: false }
  | { relayable: true; body: Buffer | null; complete: boolean; contentLength: number | null };

function expected(c: HostileCase): Expect {
  const te = c.fields.filter(([k]) => k.toLowerCase() === "transfer-encoding").map(([, v]) => v);
  const cl = c.fields.filter(([k]) => k.toLowerCase() === "content-length").map(([, v]) => v);
  const noBody = c.method === "HEAD" || c.status === 204 || c.status === 304;
  if (te.length > 0) {
    const codings = te
      .join(",")
      .split(",")
      .map((s) => s.replace(/^[ \t]+|[ \t]+$/g, "").toLowerCase())
      .filter((s) => s !== "");
    if (codings.length !== 1 || codings[0] !== "chunked") return { relayable: false };
    return {
      relayable: true,
      body: noBody ? null : c.payload,
      complete: noBody || !c.cut,
      contentLength: null,
    };
  }
  if (cl.length > 0) {
    const values = cl
      .join(",")
      .split(",")
      .map((s) => s.trim());
    if (!values.every((v) => /^\d{1,15}$/.test(v)) || new Set(values.map(Number)).size !== 1)
      return { relayable: false };
    const n = Number(values[0]);
    if (noBody) return { relayable: true, body: null, complete: true, contentLength: n };
    return {
      relayable: true,
      body: c.wire.subarray(0, n),
      complete: c.wire.length >= n,
      contentLength: n,
    };
  }
  // Delimited by the close: whatever arrived before it is the body. A reset would say "cut", but
  // Bun's fetch reads it as a clean end (measured), so crm cannot tell and neither can the oracle.
  return { relayable: true, body: noBody ? null : c.wire, complete: true, contentLength: null };
}

// ---------------------------------------------------------------------------------------------
// One case over a socket.

type Outcome = "relayed" | "relayed-cut" | "refused-502" | "crm-error" | "violation";

interface Result {
  outcome: Outcome;
  detail: string;
}

async function runCase(
  crmPort: number,
  hostilePort: number,
  goodPort: number,
  c: HostileCase,
): Promise<Result> {
  const first =
    c.path === "forward"
      ? `${c.method} http://127.0.0.1:${hostilePort}/case/${c.i} HTTP/1.1\r\nHost: 127.0.0.1:${hostilePort}\r\n\r\n`
      : `${c.method} /v2/library/fuzz/blobs/${digestFor(c.i)} HTTP/1.1\r\nHost: crm\r\n\r\n`;
  const second = `GET http://127.0.0.1:${goodPort}/second HTTP/1.1\r\nHost: 127.0.0.1:${goodPort}\r\n\r\n`;
  const methods = [c.method, "GET"];
  const conn = await openRaw(crmPort);
  try {
    await conn.send(first + second);
    const settled = (): boolean => {
      if (conn.closed) return true;
      const p = parseResponses(conn.received(), methods, false);
      return (
        p.error !== null || p.responses.filter((r) => r.status >= 200 && r.complete).length >= 2
      );
    };
    await waitUntil(conn, settled, CASE_DEADLINE_MS);
    // A few more milliseconds would show bytes sent after the second answer.
    await Bun.sleep(20);
  } finally {
    conn.socket.terminate();
  }
  return judge(c, conn.received(), methods, conn.closed);
}

function judge(c: HostileCase, bytes: Buffer, methods: string[], closed: boolean): Result {
  const bad = (detail: string): Result => ({ outcome: "violation", detail });
  const p = parseResponses(bytes, methods, closed);
  if (p.error !== null) return bad(`unparseable: ${p.error}`);
  const finals = p.responses.filter((r) => r.status >= 200);
  for (const r of p.responses)
    if (header(r, "x-forged") !== null)
      return bad(
        `a forged response reached the client: ${r.status} x-forged=${header(r, "x-forged")}`,
      );
  if (finals.length > 2) return bad(`${finals.length} answers to 2 requests`);
  const [r1, r2] = finals as [ParsedResponse | undefined, ParsedResponse | undefined];
  if (
    r2 !== undefined &&
    header(r2, "x-origin") !== "good" &&
    !(r2.status >= 400 && header(r2, "x-case") === null)
  ) {
    return bad(
      `the second answer is not the other origin's: ${r2.status} ${JSON.stringify(r2.headers)}`,
    );
  }
  if (r1 === undefined)
    return closed
      ? { outcome: "crm-error", detail: "closed without an answer" }
      : bad("no answer and no close");
  const exp = expected(c);
  const fromUpstream =
    header(r1, "x-case") === String(c.i) ||
    (c.path === "mirror" &&
      r1.status === c.status &&
      header(r1, "docker-content-digest") === digestFor(c.i));
  if (!fromUpstream) {
    if (!exp.relayable && r1.status !== 502)
      return bad(`unrelayable framing answered ${r1.status}, not 502`);
    if (r1.status === 502)
      return {
        outcome: exp.relayable ? "crm-error" : "refused-502",
        detail: r1.body.toString().slice(0, 200),
      };
    if (r1.status >= 500) return { outcome: "crm-error", detail: `${r1.status}` };
    return bad(`answer ${r1.status} is neither the upstream's nor crm's error`);
  }
  if (!exp.relayable)
    return bad(
      `unrelayable framing relayed as ${r1.status} (${r1.framing}, declared ${r1.declared})`,
    );
  if (r1.status !== c.status) return bad(`status ${r1.status}, upstream said ${c.status}`);
  if (exp.body === null) {
    if (r1.body.length > 0) return bad("a body where none may be");
    if (
      c.method === "HEAD" &&
      c.status !== 204 &&
      c.status !== 304 &&
      r1.declared !== exp.contentLength
    )
      return bad(`HEAD answer declares ${r1.declared}, upstream ${exp.contentLength}`);
    return { outcome: "relayed", detail: "" };
  }
  if (r1.complete) {
    if (!exp.complete)
      return bad(
        `a cut upstream body (${c.wire.length} of its bytes) reached the client looking complete (${r1.framing}, ${r1.body.length} bytes)`,
      );
    if (!r1.body.equals(exp.body))
      return bad(`relayed body differs: ${r1.body.length} bytes, expected ${exp.body.length}`);
    return { outcome: "relayed", detail: "" };
  }
  if (!closed) return bad("a cut answer on a connection left open");
  if (!exp.body.subarray(0, r1.body.length).equals(r1.body))
    return bad("the relayed part of a cut body differs");
  return { outcome: "relayed-cut", detail: "" };
}

// ---------------------------------------------------------------------------------------------

describe("response fuzz: a hostile upstream, pipelining clients, forward and mirror paths", () => {
  let hostile: ScriptedUpstream;
  let good: ReturnType<typeof Bun.serve>;
  let crm: TestCrm;
  const violations: string[] = [];
  const outcomes = new Map<Outcome, number>();
  let heldBefore = 0;

  const held = (): number => {
    Bun.gc(true);
    const h = heapStats();
    return h.heapSize + h.extraMemorySize;
  };

  beforeAll(async () => {
    hostile = startScriptedUpstream((head) => {
      const c = caseOf(head);
      return c
        ? { bytes: answerBytes(c), after: c.after }
        : {
            bytes: Buffer.from("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            after: "keep",
          };
    });
    good = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: () => new Response("good", { headers: { "x-origin": "good", "content-length": "4" } }),
    });
    crm = await startCrm(
      {
        allowed_hosts: ["127.0.0.1"],
        allowed_ports: [hostile.port, good.port],
        mirror: {
          default_registry: "reg.test",
          registries: { "reg.test": `http://127.0.0.1:${hostile.port}` },
        },
        timeouts: { upstream_header: "1s", idle: "1s" },
      },
      "info",
    );
    heldBefore = held();
  });

  afterAll(async () => {
    await crm?.stop();
    hostile?.stop();
    good?.stop(true);
  });

  test(`${ONLY === null ? CASES : 1} cases, ${CONCURRENCY} at a time`, async () => {
    const indexes = ONLY === null ? Array.from({ length: CASES }, (_, i) => i) : [ONLY];
    let next = 0;
    const t0 = performance.now();
    const worker = async (): Promise<void> => {
      while (next < indexes.length) {
        const c = makeCase(indexes[next++] as number);
        if (ONLY !== null)
          console.log(
            `case ${c.i}: ${c.path} ${c.method} ${c.status} ${JSON.stringify(c.fields)} wire=${c.wire.length} cut=${c.cut} after=${c.after}`,
          );
        const r = await runCase(crm.port, hostile.port, good.port as number, c);
        outcomes.set(r.outcome, (outcomes.get(r.outcome) ?? 0) + 1);
        if (ONLY !== null || process.env.CRM_RESPONSE_FUZZ_DEBUG === r.outcome)
          console.log(
            `  case ${c.i} ${JSON.stringify(c.fields)} cut=${c.cut} after=${c.after} → ${r.outcome} ${r.detail}`,
          );
        if (r.outcome === "violation" && violations.length < 10) {
          violations.push(
            `case ${c.i} (${c.path} ${c.method} ${c.status} ${JSON.stringify(c.fields)}, ${c.wire.length} wire bytes, cut=${c.cut}, after=${c.after}): ${r.detail}`,
          );
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    console.log(
      `response fuzz: ${indexes.length} cases in ${Math.round(performance.now() - t0)} ms; outcomes ${JSON.stringify(Object.fromEntries(outcomes))}; seed=${SEED}`,
    );
    if (violations.length > 0) console.log(`violations:\n  - ${violations.join("\n  - ")}`);
    expect(violations).toEqual([]);
    if (ONLY === null) {
      // Not vacuous: most answers were relayed, and unrelayable framings were met and refused.
      expect(outcomes.get("relayed") ?? 0).toBeGreaterThan(CASES / 3);
      expect(outcomes.get("refused-502") ?? 0).toBeGreaterThan(CASES / 20);
      expect(outcomes.get("relayed-cut") ?? 0).toBeGreaterThan(0);
    }
  }, 120_000);

  test("crm survived: /healthz answers, every connection is gone, no internal error, memory back near its start", async () => {
    const res = await fetch(`${crm.url}/healthz`, { proxy: false } as RequestInit);
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    const end = Date.now() + 5000;
    while (crm.server.connectionCount > 0 && Date.now() < end) await Bun.sleep(50);
    expect(crm.server.connectionCount).toBe(0);
    expect(
      crm.logs.filter((l) => / ERROR /.test(l) || /handler failed/.test(l)).slice(0, 10),
    ).toEqual([]);
    const grown = held() - heldBefore;
    console.log(
      `response fuzz: held memory ${grown >= 0 ? "+" : ""}${(grown / 1024 / 1024).toFixed(2)} MiB after the run (full GC)`,
    );
    expect(grown).toBeLessThan(16 * 1024 * 1024);
  });
});
