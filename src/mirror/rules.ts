/**
 * Which images the mirror serves: `mirror.rules` (the default) or a registry's own `rules`, each
 * `{ allow, deny, deny_message }` with glob patterns on repository names as the upstream knows
 * them (`library/nginx` on docker.io). `*` is one path segment's worth of characters, `**` any
 * number of segments. Deny wins; a non-empty allow list admits only what it names. A refusal is
 * OCI `DENIED` naming the rule, so `docker pull` and skopeo print why.
 */
import type { Checker } from "../config/checker.ts";
import { MirrorError } from "./errors.ts";

export interface ImageRules {
  allow: readonly string[];
  deny: readonly string[];
  denyMessage: string | null;
}

export const RULE_KEYS = ["allow", "deny", "deny_message"] as const;

const PATTERN = /^[a-z0-9._\-/*]+$/;

/** Parses a `rules` mapping at `path`; null when absent. */
export function buildRules(c: Checker, path: string, raw: unknown): ImageRules | null {
  const o = c.object(path, raw, RULE_KEYS);
  if (o === null) return null;
  const list = (key: "allow" | "deny"): string[] => {
    const l = c.stringList(`${path}.${key}`, o[key]) ?? [];
    l.forEach((p, i) => {
      if (!PATTERN.test(p) || p.includes("***") || p.startsWith("/") || p.endsWith("/")) {
        c.fail(
          `${path}.${key}[${i}]`,
          p,
          'must be a repository pattern such as "library/*", "bitnami/**" or "*/redis" (lower-case name characters, / and *)',
        );
      }
    });
    return l;
  };
  return {
    allow: list("allow"),
    deny: list("deny"),
    denyMessage: c.string(`${path}.deny_message`, o.deny_message),
  };
}

/** A glob as a regular expression over the whole name. */
export function globToRegExp(pattern: string): RegExp {
  let re = "";
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i] as string;
    if (ch === "*" && pattern[i + 1] === "*") {
      i++;
      // `a/**` also matches `a` itself is not wanted: `bitnami/**` means "under bitnami/".
      if (pattern[i + 1] === "/") {
        i++;
        re += "(?:[^/]+/)*";
      } else re += ".+";
    } else if (ch === "*") re += "[^/]*";
    else re += ch.replace(/[.\\+?^${}()|[\]-]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

/** The decision for one repository: null to serve it, else the refusal. */
export interface RuleVerdict {
  rule: string;
  message: string;
}

export class RuleSet {
  private readonly allow: Array<[string, RegExp]>;
  private readonly deny: Array<[string, RegExp]>;

  constructor(
    private readonly rules: ImageRules,
    /** Where the rules come from, for the message: `mirror.rules` or `mirror.registries.X.rules`. */
    private readonly origin: string,
  ) {
    this.allow = rules.allow.map((p) => [p, globToRegExp(p)]);
    this.deny = rules.deny.map((p) => [p, globToRegExp(p)]);
  }

  check(name: string): RuleVerdict | null {
    const denied = this.deny.findIndex(([, re]) => re.test(name));
    if (denied >= 0) {
      const rule = `${this.origin}.deny[${denied}] "${this.deny[denied]?.[0]}"`;
      return { rule, message: this.message(name, `matches ${rule}`) };
    }
    if (this.allow.length > 0 && !this.allow.some(([, re]) => re.test(name))) {
      const rule = `${this.origin}.allow`;
      return {
        rule,
        message: this.message(name, `is not in ${rule} (${this.rules.allow.join(", ")})`),
      };
    }
    return null;
  }

  private message(name: string, why: string): string {
    const base = `crm: ${name} is not served by this mirror: it ${why}`;
    return this.rules.denyMessage === null ? base : `${this.rules.denyMessage} (${base})`;
  }
}

/** Throws OCI DENIED when `name` (as the upstream knows it) is refused by the rules that apply. */
export function enforceRules(rules: RuleSet | null, registry: string, name: string): void {
  if (rules === null) return;
  const v = rules.check(name);
  if (v !== null)
    throw new MirrorError(403, "DENIED", v.message, {
      detail: { registry, repository: name, rule: v.rule },
    });
}

/** The rule set each registry answers to: its own rules, else mirror.rules; none when neither is set. */
export function rulesFor(mirror: {
  rules: ImageRules | null;
  registries: ReadonlyMap<string, { name: string; rules?: ImageRules | null }>;
}): ReadonlyMap<string, RuleSet> {
  const out = new Map<string, RuleSet>();
  const global = mirror.rules === null ? null : new RuleSet(mirror.rules, "mirror.rules");
  for (const reg of mirror.registries.values()) {
    const own = reg.rules ?? null;
    const set = own !== null ? new RuleSet(own, `mirror.registries.${reg.name}.rules`) : global;
    if (set !== null) out.set(reg.name, set);
  }
  return out;
}
