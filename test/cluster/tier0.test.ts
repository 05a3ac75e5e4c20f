/**
 * Tier 0 (static, seconds): helm lint --strict, helm template for several value sets, schema
 * validation of every rendered object (kubernetes-models), the chart's own values.schema.json, the
 * "no secret, no deploy" rule, and Dockerfile.distroless lint + structure.
 * Run alone: `bun run test:tier0`.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  CHART_DIR,
  DOCKERFILE,
  PROJECT_ROOT,
  TEST_SECRET,
  containerEnv,
  find,
  helm,
  helmSkipReason,
  type K8sManifest,
  render,
  validateManifests,
  valueArgs,
} from "./chart.ts";

const skip = helmSkipReason();
const t = skip ? test.skip : test;
const label = (name: string): string => (skip ? `${name} (skipped: ${skip})` : name);

type PodSpec = {
  serviceAccountName: string;
  securityContext: Record<string, unknown>;
  containers: Array<{
    ports: Array<{ name: string; containerPort: number; protocol: string }>;
    livenessProbe: { httpGet: { path: string; port: string } };
    readinessProbe: { httpGet: { path: string; port: string } };
    securityContext: { allowPrivilegeEscalation: boolean; readOnlyRootFilesystem: boolean; runAsNonRoot: boolean; capabilities: { drop: string[] } };
    volumeMounts: Array<{ name: string; mountPath: string }>;
    env: Array<{ name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }>;
  }>;
  volumes: Array<{ name: string; emptyDir?: Record<string, unknown> }>;
};
type StsSpec = {
  replicas: number;
  serviceName: string;
  selector: { matchLabels: Record<string, string> };
  template: { metadata: { labels: Record<string, string> }; spec: PodSpec };
  volumeClaimTemplates?: Array<{ metadata: { name: string }; spec: { resources: { requests: { storage: string } } } }>;
};
const sts = (o: K8sManifest): StsSpec => o.spec as StsSpec;

/** Value sets every one of which must render and validate. */
const VALUE_SETS: Record<string, Record<string, string | number | boolean>> = {
  defaults: { formationSecret: TEST_SECRET },
  "seed table (5 replicas, relays, compaction)": {
    formationSecret: TEST_SECRET,
    replicaCount: 5,
    irohRelayUrls: "stun:stun.example.org:3478",
    "compaction.enabled": true,
    "compaction.intervalSecs": 60,
    "compaction.thresholdBytes": 16384,
    "compaction.collections": "beacons,platforms",
    rustLog: "debug",
  },
  "existingSecret + persistence": { existingSecret: "my-formation", "persistence.enabled": true, "persistence.size": "2Gi" },
  "gateway + static peers": {
    formationSecret: TEST_SECRET,
    "gateway.enabled": true,
    "gateway.staticPeers[0]": "bravo-peat-mesh-gateway-0@10.0.0.77:8081",
    "gateway.service.type": "NodePort",
    "gateway.service.nodePorts.broker": 30081,
  },
  "v1beta1 (k8s 1.20), mdns, fullnameOverride": {
    formationSecret: TEST_SECRET,
    "kubernetes.apiVersion": "discovery.k8s.io/v1beta1",
    discoveryMode: "mdns",
    fullnameOverride: "mesh",
    "serviceAccount.create": false,
    "rbac.create": false,
  },
};

describe("Tier 0: Helm chart", () => {
  t(label("helm lint --strict is clean for every value set"), () => {
    for (const [name, values] of Object.entries(VALUE_SETS)) {
      const r = helm(["lint", "--strict", CHART_DIR, ...valueArgs(values)]);
      expect({ name, exitCode: r.exitCode, out: r.stdout + r.stderr }).toMatchObject({ name, exitCode: 0 });
      expect(r.stdout).toContain("1 chart(s) linted, 0 chart(s) failed");
      expect(r.stdout).not.toContain("[WARNING]");
    }
  });

  t(label("every value set renders and every object passes the Kubernetes schemas"), async () => {
    for (const [name, values] of Object.entries(VALUE_SETS)) {
      const objs = render(values);
      expect(objs.length).toBeGreaterThanOrEqual(3);
      expect({ name, problems: await validateManifests(objs) }).toEqual({ name, problems: [] });
    }
  });

  t(label("the schema validator is not vacuous: a wrong type and a missing field are reported"), async () => {
    const objs = render({ formationSecret: TEST_SECRET });
    const bad = structuredClone(find(objs, "StatefulSet"));
    (bad.spec as Record<string, unknown>).replicas = "three";
    const noPorts = structuredClone(find(objs, "Service"));
    delete ((noPorts.spec as { ports: Array<Record<string, unknown>> }).ports[0] as Record<string, unknown>).port;
    const problems = await validateManifests([bad, noPorts]);
    expect(problems.length).toBe(2);
    expect(problems[0]).toContain("replicas");
    expect(problems[1]).toContain("port");
  });

  t(label("rendering without a formation secret fails with a clear message"), () => {
    const noSecret: Array<Record<string, string>> = [{}, { formationSecret: "" }, { formationSecret: "   " }, { existingSecret: "" }];
    for (const values of noSecret) {
      const r = helm(["template", "pm", CHART_DIR, ...valueArgs(values)]);
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toContain("peat-mesh: no formation secret");
      expect(r.stderr).toContain("an empty secret must never deploy");
      expect(r.stdout).not.toContain("kind: StatefulSet");
    }
    // (helm lint runs templates in lint mode, where `fail` is not fatal; install and template are.)
    const both = helm(["template", "pm", CHART_DIR, ...valueArgs({ formationSecret: TEST_SECRET, existingSecret: "x" })]);
    expect(both.exitCode).not.toBe(0);
    expect(both.stderr).toContain("not both");
  });

  t(label("values.schema.json rejects wrong types, bad ports, bad secrets and unknown keys"), () => {
    const cases: Array<[Record<string, string | number | boolean>, string]> = [
      [{ replicaCount: "three" }, "replicaCount"],
      [{ brokerPort: 70000 }, "brokerPort"],
      [{ "kubernetes.apiVersion": "discovery.k8s.io/v2" }, "apiVersion"],
      [{ formationSecret: "not base64!" }, "formationSecret"],
      [{ formationSecret: "c2hvcnQ=" }, "formationSecret"],
      [{ replicaCout: 3 }, "replicaCout"],
      [{ "gateway.staticPeers[0]": "no-port" }, "staticPeers"],
      [{ "compaction.intervalSecs": 5 }, "intervalSecs"],
    ];
    for (const [values, key] of cases) {
      const r = helm(["template", "pm", CHART_DIR, ...valueArgs({ formationSecret: TEST_SECRET, ...values })]);
      expect({ values, exitCode: r.exitCode }).toMatchObject({ exitCode: 1 });
      expect(r.stderr).toContain(key);
    }
  });

  t(label("the default render has the seed's resources, wired together"), () => {
    const objs = render({ formationSecret: TEST_SECRET }, { release: "alpha", namespace: "mesh" });
    expect(objs.map((o) => o.kind).sort()).toEqual(["Role", "RoleBinding", "Secret", "Service", "ServiceAccount", "StatefulSet"]);
    const set = find(objs, "StatefulSet", "alpha-peat-mesh");
    const svc = find(objs, "Service", "alpha-peat-mesh");
    const s = sts(set);
    expect(s.replicas).toBe(3);
    expect(s.serviceName).toBe("alpha-peat-mesh");
    // Headless, publishes not-ready pods, named ports.
    const svcSpec = svc.spec as { clusterIP: string; publishNotReadyAddresses: boolean; selector: Record<string, string>; ports: Array<{ name: string; port: number; protocol: string; targetPort: string }> };
    expect(svcSpec.clusterIP).toBe("None");
    expect(svcSpec.publishNotReadyAddresses).toBe(true);
    expect(svcSpec.ports).toEqual([
      { name: "broker", port: 8081, targetPort: "broker", protocol: "TCP" },
      { name: "sync", port: 11204, targetPort: "sync", protocol: "UDP" },
    ]);
    // The Service selects the pods.
    for (const [k, v] of Object.entries(svcSpec.selector)) expect(s.template.metadata.labels[k]).toBe(v);
    // The nodes' label selector is unique to the release and matched by the Service's labels,
    // which the EndpointSlice controller copies onto the slices.
    const env = containerEnv(set);
    expect(env.PEAT_K8S_LABEL_SELECTOR).toBe("app=peat-mesh,app.kubernetes.io/instance=alpha");
    for (const term of env.PEAT_K8S_LABEL_SELECTOR!.split(",")) {
      const [k, v] = term.split("=") as [string, string];
      expect(svc.metadata.labels?.[k]).toBe(v);
    }
    expect(env.PEAT_K8S_API_VERSION).toBe("discovery.k8s.io/v1");
    expect(env).toMatchObject({
      PEAT_DISCOVERY: "kubernetes",
      PEAT_BROKER_PORT: "8081",
      PEAT_IROH_BIND_PORT: "11204",
      PEAT_DATA_DIR: "/data",
      TMPDIR: "/tmp",
      RUST_LOG: "info,peat_mesh=debug",
      PEAT_COMPACTION_ENABLED: "false",
      PEAT_COMPACTION_INTERVAL_SECS: "300",
      PEAT_COMPACTION_THRESHOLD_BYTES: "65536",
      HOSTNAME: "<from>",
      PEAT_FORMATION_SECRET: "<from>",
    });
    expect(env.PEAT_IROH_RELAY_URLS).toBeUndefined();
    expect(env.PEAT_STATIC_PEERS).toBeUndefined();
    // Secret: the pod receives the base64 text itself.
    const secret = find(objs, "Secret");
    expect(Buffer.from((secret.data as Record<string, string>)["formation-secret"]!, "base64").toString()).toBe(TEST_SECRET);
    const c = s.template.spec.containers[0]!;
    expect(c.env.find((e) => e.name === "PEAT_FORMATION_SECRET")?.valueFrom?.secretKeyRef).toEqual({ name: "alpha-peat-mesh", key: "formation-secret" });
    // Ports, probes, security.
    expect(c.ports.map((p) => [p.name, p.containerPort, p.protocol])).toEqual([["broker", 8081, "TCP"], ["sync", 11204, "UDP"]]);
    expect(c.livenessProbe.httpGet).toEqual({ path: "/api/v1/health", port: "broker" });
    expect(c.readinessProbe.httpGet).toEqual({ path: "/api/v1/ready", port: "broker" });
    expect(c.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: { drop: ["ALL"] } });
    expect(s.template.spec.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 65532 });
    expect(c.volumeMounts).toEqual([{ name: "data", mountPath: "/data" }, { name: "tmp", mountPath: "/tmp" }]);
    expect(s.template.spec.volumes.find((v) => v.name === "tmp")?.emptyDir).toBeDefined();
    expect(s.template.spec.volumes.find((v) => v.name === "data")?.emptyDir).toBeDefined();
    expect(s.volumeClaimTemplates).toBeUndefined();
    // RBAC: list + watch on endpointslices only, bound to the pods' ServiceAccount.
    const role = find(objs, "Role");
    expect(role.rules).toEqual([{ apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: ["list", "watch"] }]);
    const rb = find(objs, "RoleBinding") as K8sManifest & { subjects: Array<{ name: string; namespace: string }> };
    expect(rb.subjects[0]).toMatchObject({ name: s.template.spec.serviceAccountName, namespace: "mesh" });
    expect(find(objs, "ServiceAccount").metadata.name).toBe(s.template.spec.serviceAccountName);
  });

  t(label("seed values, existingSecret, persistence, gateway and apiVersion reach the manifests"), () => {
    const seed = containerEnv(find(render(VALUE_SETS["seed table (5 replicas, relays, compaction)"]!), "StatefulSet"));
    expect(seed).toMatchObject({
      PEAT_IROH_RELAY_URLS: "stun:stun.example.org:3478",
      PEAT_COMPACTION_ENABLED: "true",
      PEAT_COMPACTION_INTERVAL_SECS: "60",
      PEAT_COMPACTION_THRESHOLD_BYTES: "16384",
      PEAT_COMPACTION_COLLECTIONS: "beacons,platforms",
      RUST_LOG: "debug",
    });

    const ex = render(VALUE_SETS["existingSecret + persistence"]!);
    expect(ex.some((o) => o.kind === "Secret")).toBe(false);
    const exSts = sts(find(ex, "StatefulSet"));
    expect(exSts.template.spec.containers[0]!.env.find((e) => e.name === "PEAT_FORMATION_SECRET")?.valueFrom?.secretKeyRef).toEqual({ name: "my-formation", key: "formation-secret" });
    expect(exSts.volumeClaimTemplates?.[0]).toMatchObject({ metadata: { name: "data" }, spec: { resources: { requests: { storage: "2Gi" } } } });
    expect(exSts.template.spec.volumes.some((v) => v.name === "data")).toBe(false);

    const gw = render(VALUE_SETS["gateway + static peers"]!);
    const gwSet = find(gw, "StatefulSet", "pm-peat-mesh-gateway");
    const mesh = find(gw, "StatefulSet", "pm-peat-mesh");
    expect(sts(gwSet).template.metadata.labels["peat.role"]).toBe("federation-gateway");
    expect(containerEnv(gwSet).PEAT_STATIC_PEERS).toBe("bravo-peat-mesh-gateway-0@10.0.0.77:8081");
    expect(containerEnv(mesh).PEAT_STATIC_PEERS).toBeUndefined();
    // Both StatefulSets are behind the headless Service, but their own selectors do not overlap.
    const headless = find(gw, "Service", "pm-peat-mesh").spec as { selector: Record<string, string> };
    for (const set of [gwSet, mesh]) for (const [k, v] of Object.entries(headless.selector)) expect(sts(set).template.metadata.labels[k]).toBe(v);
    expect(sts(gwSet).selector.matchLabels["app.kubernetes.io/component"]).toBe("gateway");
    expect(sts(mesh).selector.matchLabels["app.kubernetes.io/component"]).toBe("mesh");
    const gwSvc = find(gw, "Service", "pm-peat-mesh-gateway");
    expect(gwSvc.metadata.labels?.app).toBeUndefined(); // its slices must not be read as mesh peers
    expect((gwSvc.spec as { type: string; ports: Array<{ nodePort?: number }> }).type).toBe("NodePort");
    expect((gwSvc.spec as { ports: Array<{ nodePort?: number }> }).ports[0]!.nodePort).toBe(30081);

    const beta = render(VALUE_SETS["v1beta1 (k8s 1.20), mdns, fullnameOverride"]!);
    expect(containerEnv(find(beta, "StatefulSet", "mesh"))).toMatchObject({ PEAT_K8S_API_VERSION: "discovery.k8s.io/v1beta1", PEAT_DISCOVERY: "mdns" });
    expect(beta.some((o) => o.kind === "Role" || o.kind === "ServiceAccount")).toBe(false);

    // "auto" follows what the cluster serves.
    const auto = (extra: string[]): string | undefined =>
      containerEnv(find(render({ formationSecret: TEST_SECRET, "kubernetes.apiVersion": "auto" }, { extra }), "StatefulSet")).PEAT_K8S_API_VERSION;
    expect(auto(["--kube-version", "1.20.2", "--api-versions", "discovery.k8s.io/v1beta1/EndpointSlice"])).toBe("discovery.k8s.io/v1beta1");
    expect(auto(["--api-versions", "discovery.k8s.io/v1/EndpointSlice"])).toBe("discovery.k8s.io/v1");
});
  });

describe("Tier 0: Dockerfile.distroless", () => {
  const text = readFileSync(DOCKERFILE, "utf8");
  const lines = text.split("\n").filter((l) => l.trim() && !l.trimStart().startsWith("#"));

  test("dockerfilelint reports nothing (bar its known --platform parsing gap, checked by hand)", () => {
    const bin = join(PROJECT_ROOT, "node_modules/.bin/dockerfilelint");
    const r = Bun.spawnSync([bin, "-j", DOCKERFILE], { stdout: "pipe", stderr: "pipe" });
    const report = JSON.parse(r.stdout.toString()) as { files: Array<{ issues: Array<{ line: string; content: string; title: string }> }> };
    const issues = report.files[0]!.issues.filter((i) => {
      // dockerfilelint 1.8 takes "--platform=..." for the image name; check the real image has a tag.
      const m = /^FROM\s+--platform=\S+\s+(\S+)/.exec(i.content);
      return !(i.title === "Base Image Missing Tag" && m && /:[^/]+$/.test(m[1]!));
    });
    expect(issues).toEqual([]);
  });

  test("two stages: a Bun build stage that installs frozen and runs the build script, a distroless runtime", () => {
    const froms = lines.filter((l) => /^FROM\s/.test(l));
    expect(froms.length).toBe(2);
    expect(froms[0]).toMatch(/oven\/bun:1\b.* AS build$/);
    expect(froms[1]).toBe("FROM gcr.io/distroless/cc-debian12:nonroot");
    expect(text).toContain("bun install --frozen-lockfile");
    expect(text).toMatch(/bun scripts\/build\.ts --target "\$target"/);
    expect(text).toMatch(/amd64\|x86_64\|x64\) target=x64/);
    expect(text).toMatch(/arm64\|aarch64\) target=arm64/);
    const runtime = lines.slice(lines.indexOf(froms[1]!));
    expect(runtime.some((l) => l.startsWith("RUN"))).toBe(false); // nothing runs in distroless
    expect(runtime).toContain("USER 65532:65532");
    expect(runtime).toContain("EXPOSE 8081/tcp 11204/udp");
    expect(runtime).toContain('ENTRYPOINT ["/usr/local/bin/peat-mesh-node"]');
    expect(text).toMatch(/ENV TMPDIR=\/tmp/);
  });

  test(".dockerignore keeps node_modules, dist and tests out of the context", () => {
    const ignore = readFileSync(join(PROJECT_ROOT, ".dockerignore"), "utf8").split("\n").map((l) => l.trim());
    expect(ignore[ignore.findIndex((l) => l && !l.startsWith("#"))]).toBe("*");
    expect(ignore).toContain("!src/");
    expect(ignore).toContain("!bun.lock");
    expect(ignore.some((l) => l.startsWith("!node_modules") || l.startsWith("!dist"))).toBe(false);
  });

  t(label("the chart's default ports match the image's"), () => {
    const env = containerEnv(find(render({ formationSecret: TEST_SECRET }), "StatefulSet"));
    expect(text).toContain(`PEAT_BROKER_PORT=${env.PEAT_BROKER_PORT}`);
    expect(text).toContain(`PEAT_IROH_BIND_PORT=${env.PEAT_IROH_BIND_PORT}`);
    expect(readFileSync(join(CHART_DIR, "values.yaml"), "utf8")).toContain("repository: peat-mesh-node");
  });
});
