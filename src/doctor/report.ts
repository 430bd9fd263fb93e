/**
 * The doctor's answer: one row per check (what was checked, what came out, what to do), printed
 * as a table for people or as JSON for scripts. A check that could not run because an earlier one
 * failed is "skip", and says which. "warn" is something to look at that does not break pulls (a
 * probe image the upstream does not hold): the run still succeeds. Only "fail" makes it fail.
 */
export type Result = "pass" | "warn" | "fail" | "skip";

export interface CheckRow {
  check: string;
  result: Result;
  detail: string;
  /** Empty when there is nothing to do. */
  fix: string;
}

export class Report {
  readonly rows: CheckRow[] = [];

  pass(check: string, detail: string): void {
    this.rows.push({ check, result: "pass", detail, fix: "" });
  }

  warn(check: string, detail: string, fix: string): void {
    this.rows.push({ check, result: "warn", detail, fix });
  }

  fail(check: string, detail: string, fix: string): void {
    this.rows.push({ check, result: "fail", detail, fix });
  }

  skip(check: string, detail: string): void {
    this.rows.push({ check, result: "skip", detail, fix: "" });
  }

  /** No check failed (a skipped check follows a failure, or a warning, or a missing probe image). */
  get ok(): boolean {
    return rowsOk(this.rows);
  }
}

function rowsOk(rows: readonly CheckRow[]): boolean {
  return rows.every((r) => r.result !== "fail");
}

const LABEL: Record<Result, string> = { pass: "ok", warn: "WARN", fail: "FAIL", skip: "skip" };

/**
 * Details carry upstream-controlled text (error messages, header values): a terminal escape in a
 * cell could rewrite the screen or the title, and a bidi override (U+202A-202E, U+2066-2069)
 * could make a row read as something else. Line breaks and tabs become spaces, every other
 * control character (C0, DEL, C1) and every bidi embedding, override or isolate is dropped. The
 * JSON output gets the same: JSON.stringify escapes C0 but passes C1 and bidi controls as they are.
 */
export function printable(s: string): string {
  return s
    .replace(/[\t\n\r]/g, " ")
    .replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, "");
}

/** Fixed-width columns; a long detail or fix wraps onto lines of its own under its column. */
export function renderTable(rows: readonly CheckRow[], width = 120): string {
  const checkW = Math.min(36, Math.max(5, ...rows.map((r) => r.check.length)));
  const resultW = Math.max(28, Math.floor((width - checkW - 4) * 0.55));
  const fixW = Math.max(20, width - checkW - resultW - 4);
  const wrap = (s: string, w: number): string[] => {
    const out: string[] = [];
    let line = "";
    for (const word of s.split(/\s+/).filter((x) => x !== "")) {
      if (line !== "" && line.length + 1 + word.length > w) {
        out.push(line);
        line = "";
      }
      line = line === "" ? word : `${line} ${word}`;
    }
    if (line !== "" || out.length === 0) out.push(line);
    return out;
  };
  const lines = [
    `${"CHECK".padEnd(checkW)}  ${"RESULT".padEnd(resultW)}  FIX`,
    `${"-".repeat(checkW)}  ${"-".repeat(resultW)}  ${"-".repeat(3)}`,
  ];
  for (const r of rows) {
    const left = wrap(printable(r.check), checkW);
    const mid = wrap(printable(`${LABEL[r.result]}: ${r.detail}`), resultW);
    const right = r.fix === "" ? [""] : wrap(printable(r.fix), fixW);
    const n = Math.max(left.length, mid.length, right.length);
    for (let i = 0; i < n; i++)
      lines.push(
        `${(left[i] ?? "").padEnd(checkW)}  ${(mid[i] ?? "").padEnd(resultW)}  ${right[i] ?? ""}`.trimEnd(),
      );
  }
  const failed = rows.filter((r) => r.result === "fail").length;
  const other = rows.filter((r) => r.result === "warn" || r.result === "skip").length;
  lines.push(
    "",
    failed > 0
      ? `${failed + other} of ${rows.length} checks did not pass (${failed} failed)`
      : other > 0
        ? `no check failed; ${other} of ${rows.length} warned or were skipped`
        : `all ${rows.length} checks passed`,
  );
  return lines.join("\n") + "\n";
}

export function renderJson(rows: readonly CheckRow[]): string {
  const checks = rows.map((r) => ({
    check: printable(r.check),
    result: r.result,
    detail: printable(r.detail),
    fix: printable(r.fix),
  }));
  return JSON.stringify({ ok: rowsOk(rows), checks }, null, 2) + "\n";
}
