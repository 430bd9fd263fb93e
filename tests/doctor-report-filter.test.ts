/**
 * `crm doctor` prints upstream-controlled text (error messages, header values, realms): in the
 * table and in --json alike, no C1 control (U+0080-U+009F: a terminal may take 0x9B as CSI) and
 * no bidi embedding, override or isolate may reach the output.
 */
import { expect, test } from "bun:test";
import { renderJson, renderTable, type CheckRow } from "../src/doctor/report.ts";

const HOSTILE = "realm \u009b2J\u009d0;pwned\u009c \u202eevil\u202c \u2066x\u2069 \u0007\u001b[31m";
const rows: CheckRow[] = [
  {
    check: `docker.io token\u009b`,
    result: "fail",
    detail: HOSTILE,
    fix: `ask \u202dthe\u202a admin\u2067`,
  },
];
const forbidden = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;

test("--json carries no C1 or bidi control from upstream strings", () => {
  const out = renderJson(rows);
  expect(out).not.toMatch(forbidden);
  const parsed = JSON.parse(out) as { checks: CheckRow[] };
  expect(parsed.checks[0]?.detail).not.toMatch(forbidden);
  expect(parsed.checks[0]?.detail).toContain("pwned");
  expect(parsed.checks[0]?.result).toBe("fail");
});

test("table cells carry no C1 or bidi control either", () => {
  const out = renderTable(rows);
  expect(out).not.toMatch(forbidden);
  expect(out).toContain("evil");
});
