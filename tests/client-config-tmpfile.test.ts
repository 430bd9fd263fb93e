/**
 * Issue 21, defect 7: `crm client-config --write` wrote its temporary file at a fixed name
 * (`<target>.crm-tmp-<pid>`) without O_EXCL, so a symlink planted there (in a directory another
 * user can write, or by guessing the pid) made crm write and chmod the link's target. The temp
 * file now has a random name and is created with 'wx', as tls/cert-store.ts does.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import {
  lstatSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { installFiles } from "../src/client-config/install.ts";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "crm-cc-tmp-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("--write does not follow a symlink planted at the temporary file's name", () => {
  const victim = join(dir, "victim");
  writeFileSync(victim, "precious\n", { mode: 0o600 });
  const target = join(dir, "daemon.json");
  writeFileSync(target, "{}\n", { mode: 0o644 });
  // Every name the old code could pick for this process.
  const planted = join(dir, `daemon.json.crm-tmp-${process.pid}`);
  symlinkSync(victim, planted);
  const [r] = installFiles([
    { path: target, content: '{"registry-mirrors":["http://crm:8080"]}\n' },
  ]);
  expect(r?.state).toBe("replaced");
  expect(readFileSync(target, "utf8")).toBe('{"registry-mirrors":["http://crm:8080"]}\n');
  expect(readFileSync(victim, "utf8")).toBe("precious\n");
  expect(statSync(victim).mode & 0o777).toBe(0o600);
  expect(lstatSync(planted).isSymbolicLink()).toBe(true);
  // No temporary file is left behind.
  expect(
    readdirSync(dir).filter(
      (n) => n.includes(".crm-tmp-") && n !== `daemon.json.crm-tmp-${process.pid}`,
    ),
  ).toEqual([]);
});
