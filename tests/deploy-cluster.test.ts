/**
 * The deploy kit's optional Redis (deploy/kubernetes/redis, a kustomize Component): its files
 * parse and name what the README says, the ConfigMap's commented `cluster:` block passes crm's
 * validator once uncommented, and (when kubectl is installed) kustomize builds the kit with the
 * component: a Redis without persistence, its Service, a NetworkPolicy, and the password mounted
 * into crm's pods where the config reads it.
 */
import { describe, expect, test } from "bun:test";
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import YAML from "yaml";
import { buildConfig } from "../src/config/load.ts";

const root = join(import.meta.dir, "..");
const dir = join(root, "deploy/kubernetes/redis");
type Doc = Record<string, any>;
const load = (f: string): Doc => YAML.parse(readFileSync(join(dir, f), "utf8")) as Doc;

describe("Kubernetes: the optional Redis component", () => {
  test("a Component that lists its files; Redis without persistence, password from the Secret", () => {
    const k = load("kustomization.yaml");
    expect(`${k.apiVersion} ${k.kind}`).toBe("kustomize.config.k8s.io/v1alpha1 Component");
    const listed = [...k.resources, ...k.patches.map((p: { path: string }) => p.path)].sort();
    expect(listed).toEqual(
      readdirSync(dir)
        .filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml")
        .sort(),
    );
    const d = load("redis-deployment.yaml");
    const c = d.spec.template.spec.containers[0];
    const args: string[] = c.args;
    expect(args.slice(args.indexOf("--save"), args.indexOf("--save") + 2)).toEqual(["--save", ""]);
    expect(args[args.indexOf("--appendonly") + 1]).toBe("no");
    expect(args[args.indexOf("--requirepass") + 1]).toBe("$(REDIS_PASSWORD)");
    expect(c.env[0].valueFrom.secretKeyRef).toEqual({ name: "crm-redis", key: "password" });
    expect(c.securityContext.readOnlyRootFilesystem).toBe(true);
    expect(d.spec.template.spec.securityContext.runAsNonRoot).toBe(true);
    const np = load("redis-networkpolicy.yaml");
    expect(np.spec.ingress[0].from[0].podSelector.matchLabels).toEqual({
      "app.kubernetes.io/name": "crm",
    });
    const patch = load("crm-password-mount.yaml");
    expect(patch.spec.template.spec.volumes[0].secret.secretName).toBe("crm-redis");
  });

  test("the ConfigMap's cluster block, uncommented, passes crm's validator", () => {
    const cm = YAML.parse(
      readFileSync(join(root, "deploy/kubernetes/configmap.yaml"), "utf8"),
    ) as Doc;
    const text: string = cm.data["config.yaml"];
    const block = /^# cluster:\n(#   .*\n)+/m.exec(text);
    expect(block).not.toBeNull();
    const work = mkdtempSync(join(tmpdir(), "crm-deploy-cluster-"));
    try {
      // The mount path from crm-password-mount.yaml, made here.
      const mount = load("crm-password-mount.yaml").spec.template.spec.containers[0].volumeMounts[0]
        .mountPath as string;
      writeFileSync(join(work, "password"), "s3cret\n");
      const enabled = text
        .replace(block![0], block![0].replace(/^# ?/gm, ""))
        .replace(`${mount}/password`, join(work, "password"));
      const { config } = buildConfig(YAML.parse(enabled), join(work, "config.yaml"));
      expect(config.cluster?.url.href).toBe("redis://crm-redis:6379/0");
      expect(config.cluster?.password).toBe("s3cret");
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });

  const kubectl = Bun.which("kubectl");
  test("kustomize builds the kit with the component (when kubectl is installed)", async () => {
    if (kubectl === null) {
      console.warn(
        "[note] kubectl not installed: the kustomize build of the redis component is not run",
      );
      return;
    }
    const work = mkdtempSync(join(tmpdir(), "crm-kustomize-"));
    try {
      cpSync(join(root, "deploy/kubernetes"), join(work, "k"), { recursive: true });
      const kf = join(work, "k", "kustomization.yaml");
      writeFileSync(
        kf,
        readFileSync(kf, "utf8").replace(
          "# components:\n#   - redis\n",
          "components:\n  - redis\n",
        ),
      );
      const p = Bun.spawn([kubectl, "kustomize", join(work, "k")], {
        stdout: "pipe",
        stderr: "pipe",
        env: { ...process.env, KUBECONFIG: "/dev/null" },
      });
      const [out, err, code] = await Promise.all([
        new Response(p.stdout).text(),
        new Response(p.stderr).text(),
        p.exited,
      ]);
      expect({ code, err }).toEqual({ code: 0, err: "" });
      const docs = YAML.parseAllDocuments(out).map((d) => d.toJS() as Doc);
      const names = docs.map((d) => `${d.kind}/${d.metadata.name}`).sort();
      for (const want of [
        "Deployment/crm",
        "Deployment/crm-redis",
        "Service/crm-redis",
        "NetworkPolicy/crm-redis",
        "Service/crm",
        "ConfigMap/crm-config",
      ])
        expect(names).toContain(want);
      const crm = docs.find((d) => d.kind === "Deployment" && d.metadata.name === "crm")!;
      const mounts = crm.spec.template.spec.containers[0].volumeMounts.map(
        (m: { mountPath: string }) => m.mountPath,
      );
      expect(mounts).toEqual(expect.arrayContaining(["/etc/crm", "/etc/crm-redis", "/tmp"]));
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }, 60_000);
});
