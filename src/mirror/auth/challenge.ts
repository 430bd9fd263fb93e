/**
 * Reads `WWW-Authenticate` (RFC 9110 §11.6.1): one or more challenges, each a scheme and
 * comma-separated auth-params whose values may be quoted strings with commas inside
 * (`scope="repository:a:pull,push"`). fetch() joins repeated header lines with ", ", which this
 * grammar also covers.
 */

export interface Challenge {
  /** Lower case: "bearer", "basic". */
  scheme: string;
  /** Parameter names in lower case. */
  params: Record<string, string>;
}

const TOKEN_CHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;

class Scanner {
  i = 0;
  constructor(readonly s: string) {}
  get done(): boolean {
    return this.i >= this.s.length;
  }
  peek(): string {
    return this.s[this.i] ?? "";
  }
  skipSpace(): void {
    while (this.peek() === " " || this.peek() === "\t") this.i++;
  }
  token(): string {
    const start = this.i;
    while (TOKEN_CHAR.test(this.peek())) this.i++;
    return this.s.slice(start, this.i);
  }
  /** An unquoted value. RFC 9110 wants a token, but realms are sent unquoted as URLs too; accept up to the next comma or space. */
  bare(): string {
    const start = this.i;
    while (!this.done && this.peek() !== "," && this.peek() !== " " && this.peek() !== "\t")
      this.i++;
    return this.s.slice(start, this.i);
  }
  quoted(): string {
    this.i++; // opening quote
    let out = "";
    while (!this.done && this.peek() !== '"') {
      if (this.peek() === "\\") this.i++;
      out += this.peek();
      this.i++;
    }
    this.i++; // closing quote
    return out;
  }
  /** Whether `name =` follows (an auth-param rather than the next challenge's scheme). */
  paramAhead(): boolean {
    const save = this.i;
    this.skipSpace();
    const name = this.token();
    this.skipSpace();
    const isParam = name !== "" && this.peek() === "=";
    this.i = save;
    return isParam;
  }
}

export function parseChallenges(header: string): Challenge[] {
  const sc = new Scanner(header);
  const out: Challenge[] = [];
  while (!sc.done) {
    while (sc.peek() === "," || sc.peek() === " " || sc.peek() === "\t") sc.i++;
    const scheme = sc.token();
    if (scheme === "") {
      if (!sc.done) sc.i++; // a stray character: skip it rather than loop
      continue;
    }
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    out.push(challenge);
    let nextChallenge = false;
    while (!nextChallenge && sc.paramAhead()) {
      sc.skipSpace();
      const name = sc.token().toLowerCase();
      sc.skipSpace();
      sc.i++; // "="
      sc.skipSpace();
      challenge.params[name] = sc.peek() === '"' ? sc.quoted() : sc.bare();
      sc.skipSpace();
      if (sc.peek() !== ",") break;
      // A comma either separates this challenge's params or starts the next challenge.
      sc.i++;
      nextChallenge = !sc.paramAhead();
    }
    // token68 (`Negotiate abc==`) or junk: skip to the next challenge.
    if (!nextChallenge) while (!sc.done && sc.peek() !== ",") sc.i++;
  }
  return out;
}

export function findChallenge(header: string | null, scheme: "bearer" | "basic"): Challenge | null {
  if (header === null) return null;
  return parseChallenges(header).find((c) => c.scheme === scheme) ?? null;
}
