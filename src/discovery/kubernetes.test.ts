/**
 * Kubernetes discovery against a real kube-apiserver v1.20.2 + etcd (test/k8s/apiserver.ts): TLS,
 * ServiceAccount tokens from TokenRequest, RBAC from the chart-equivalent fixture, and
 * discovery.k8s.io/v1 EndpointSlices served through a CRD (mode B); one suite runs against the
 * built-in discovery.k8s.io/v1beta1 (mode A). The binaries are built on first use (~3.5 min) and
 * cached; where they cannot be (not root, no apt), the suite skips and says why.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ApiServer, type K8sObject, k8sSkipReason, stopAllApiServers } from "../../test/k8s/apiserver.ts";
import { BridgeNetwork, destroyAllNetworks, netnsSkipReason } from "../../test/k8s/netns.ts";
import { TcpProxy } from "../../test/k8s/tcp-proxy.ts";
import { MAIN, type NodeProcess, PROJECT_ROOT, startNode, stopAllNodes, waitFor } from "../../test/harness/node-process.ts";
import { Logger, parseLogFilter } from "../log.ts";
import { CONFORMANCE_PEERS, CONFORMANCE_SELF_PORT, runDiscoveryConformance } from "./conformance.ts";
import {
  KubernetesConfigError,
  type KubernetesDiscoveryOptions,
  KubernetesDiscovery,
  resolveKubernetesConnection,
} from "./kubernetes.ts";
import type { DiscoveredPeer, DiscoveryEvent } from "./types.ts";

const SETUP_TIMEOUT_MS = 15 * 60_000;
const T = 20_000;

// ---------------------------------------------------------------------------------------------
// Helpers shared by every suite.

function capturingLog(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const log = new Logger("peat_mesh::discovery::kubernetes", { filter: parseLogFilter("debug"), sink: { write: (l) => lines.push(l) } });
  return { log, lines };
}

interface Pod {
  name?: string;
  ip: string;
  hostname?: string;
  terminating?: boolean;
}

interface SlicePort {
  name?: string;
  port: number;
  protocol?: "TCP" | "UDP";
}

const CHART_PORTS: SlicePort[] = [
  // Sync first: a client that takes the first port (the original) would pick the wrong one.
  { name: "sync", port: 11204, protocol: "UDP" },
  { name: "broker", port: 8081, protocol: "TCP" },
];

function endpointSlice(
  namespace: string,
  name: string,
  pods: Pod[] | null,
  options: { ports?: SlicePort[] | null; annotations?: Record<string, string>; labels?: Record<string, string>; apiVersion?: string } = {},
): K8sObject {
  const v1beta1 = options.apiVersion === "discovery.k8s.io/v1beta1";
  return {
    apiVersion: options.apiVersion ?? "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: {
      name,
      namespace,
      labels: options.labels ?? { app: "peat-mesh", "kubernetes.io/service-name": "peat-mesh" },
      ...(options.annotations ? { annotations: options.annotations } : {}),
    },
    addressType: "IPv4",
    endpoints:
      pods === null
        ? null
        : pods.map((pod) => ({
            addresses: [pod.ip],
            conditions: { ready: !pod.terminating, ...(pod.terminating ? { terminating: true, serving: true } : {}) },
            ...(pod.hostname ? { hostname: pod.hostname } : {}),
            ...(pod.name ? { targetRef: { kind: "Pod", name: pod.name, namespace } } : {}),
            ...(v1beta1 ? { topology: { "kubernetes.io/hostname": "node-1" } } : { nodeName: "node-1" }),
          })),
    ports: options.ports === undefined ? CHART_PORTS : options.ports,
  };
}

function recorder(strategy: KubernetesDiscovery): DiscoveryEvent[] {
  const events: DiscoveryEvent[] = [];
  strategy.onEvent((e) => events.push(e));
  return events;
}

const isFound = (nodeId: string) => (e: DiscoveryEvent) => e.type === "PeerFound" && e.peer.nodeId === nodeId;
const isUpdated = (nodeId: string) => (e: DiscoveryEvent) => e.type === "PeerUpdated" && e.peer.nodeId === nodeId;
const isLost = (nodeId: string) => (e: DiscoveryEvent) => e.type === "PeerLost" && e.nodeId === nodeId;
const peerOf = (e: DiscoveryEvent | undefined): DiscoveredPeer | undefined => (e && e.type !== "PeerLost" ? e.peer : undefined);

async function until<T>(read: () => T | undefined | false, what: string, timeoutMs = 8000): Promise<T> {
  return waitFor(() => read() || undefined, timeoutMs, what);
}

// ---------------------------------------------------------------------------------------------
// Configuration, without a cluster.

describe("kubernetes discovery configuration", () => {
  test("with neither in-cluster credentials nor a kubeconfig, start fails with KubernetesConfigError suggesting mdns or static", async () => {
    const home = mkdtempSync(join(tmpdir(), "peat-k8s-home-"));
    try {
      const options = { env: { HOME: home }, serviceAccountDir: join(home, "no-such-dir") };
      expect(() => resolveKubernetesConnection(options)).toThrow(KubernetesConfigError);
      const strategy = new KubernetesDiscovery({ ...options, selfNodeId: "self", defaultBrokerPort: 8081, log: capturingLog().log });
      const error = await strategy.start().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error).toBeInstanceOf(KubernetesConfigError);
      const message = (error as Error).message;
      expect(message).toContain("PEAT_DISCOVERY=mdns");
      expect(message).toContain("PEAT_DISCOVERY=static");
      expect(message).toContain("KUBERNETES_SERVICE_HOST");
      await strategy.stop();
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  test(
    "a node started with PEAT_DISCOVERY=kubernetes outside any cluster exits 1 with that message",
    async () => {
      const home = mkdtempSync(join(tmpdir(), "peat-k8s-home-"));
      try {
        const node = await startNode({
          waitReady: false,
          env: { PEAT_DISCOVERY: "kubernetes", HOME: home, PEAT_K8S_SERVICE_ACCOUNT_DIR: join(home, "no-such-dir") },
        });
        expect(await node.exited).toBe(1);
        await waitFor(() => node.stderrLines.length > 0, 2000, "stderr to be read");
        const stderr = node.stderrLines.join("\n");
        expect(stderr).toContain("Kubernetes discovery has no API access");
        expect(stderr).toContain("PEAT_DISCOVERY=mdns");
        expect(node.lines.some((l) => l.includes("Using Kubernetes EndpointSlice discovery"))).toBe(true);
      } finally {
        await stopAllNodes();
        rmSync(home, { recursive: true, force: true });
      }
    },
    20_000,
  );

  test("a kubeconfig that uses an exec plugin is refused with a message naming the user", () => {
    const dir = mkdtempSync(join(tmpdir(), "peat-k8s-kc-"));
    try {
      const path = join(dir, "config");
      writeFileSync(
        path,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nclusters:\n- name: k\n  cluster: {server: 'https://10.9.9.9:6443'}\nusers:\n- name: u\n  user:\n    exec: {command: aws, apiVersion: client.authentication.k8s.io/v1beta1}\n",
      );
      expect(() => resolveKubernetesConnection({ env: { KUBECONFIG: path } })).toThrow(/user 'u' authenticates with an exec plugin/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Against the real apiserver.

const skipReason = k8sSkipReason();

if (skipReason) {
  test.skip(`kubernetes discovery against a real kube-apiserver: SKIPPED, ${skipReason}`, () => {});
} else {
  let server: ApiServer;
  let nsCounter = 0;

  beforeAll(async () => {
    server = await ApiServer.start({ mode: "v1-crd" });
  }, SETUP_TIMEOUT_MS);

  afterAll(async () => {
    await stopAllNodes();
    await stopAllApiServers();
    await destroyAllNetworks();
  }, 60_000);

  /** A fresh namespace with the chart's ServiceAccount/Role/RoleBinding, and a pod-like token dir for it. */
  async function meshNamespace(prefix = "mesh", api: ApiServer = server): Promise<{ ns: string; saDir: string }> {
    const ns = `${prefix}-${++nsCounter}`;
    await api.createNamespace(ns);
    await api.applyRbacFixture(ns);
    return { ns, saDir: await api.serviceAccountDir(ns, "peat-mesh") };
  }

  /** A strategy using the in-cluster path: token dir + KUBERNETES_SERVICE_HOST/PORT. */
  function inCluster(
    saDir: string,
    selfNodeId: string,
    extra: Partial<KubernetesDiscoveryOptions> & { via?: { host: string; port: number }; api?: ApiServer } = {},
  ): KubernetesDiscovery {
    const { via, api = server, ...rest } = extra;
    const target = via ?? { host: api.host, port: api.port };
    return new KubernetesDiscovery({
      selfNodeId,
      serviceAccountDir: saDir,
      env: { KUBERNETES_SERVICE_HOST: target.host, KUBERNETES_SERVICE_PORT: String(target.port) },
      defaultBrokerPort: 8081,
      defaultSyncPort: 11204,
      log: capturingLog().log,
      backoffInitialMs: 100,
      backoffMaxMs: 1000,
      ...rest,
    });
  }

  // -- the shared suite ---------------------------------------------------------------------

  runDiscoveryConformance("kubernetes", async () => {
    const { ns, saDir } = await meshNamespace("conf");
    const ports: Record<string, number> = { ...CONFORMANCE_PEERS, "self-pod": CONFORMANCE_SELF_PORT };
    const announced = new Set<string>();
    const publish = async (nodeId: string, host: string, brokerPort: number) => {
      ports[nodeId] = brokerPort;
      announced.add(nodeId);
      await server.apply(endpointSlice(ns, `pm-${nodeId}`, [{ name: nodeId, ip: host }], { ports: [{ name: "sync", port: 11204, protocol: "UDP" }, { name: "broker", port: brokerPort }] }));
    };
    return {
      strategy: inCluster(saDir, "self-pod"),
      selfId: "self-pod",
      observer: () => inCluster(saDir, "observer-pod"),
      announce: publish,
      move: async (nodeId) => publish(nodeId, "127.0.0.2", ports[nodeId] ?? 8081),
      withdraw: async (nodeId) => {
        announced.delete(nodeId);
        await server.delete({ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", namespace: ns, name: `pm-${nodeId}` });
      },
      cleanup: async () => {
        for (const nodeId of announced) await server.delete({ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", namespace: ns, name: `pm-${nodeId}` });
      },
      timeoutMs: 3000,
    };
  });

  // -- EndpointSlice semantics ----------------------------------------------------------------

  describe("kubernetes discovery (v1 EndpointSlices, real apiserver)", () => {
    let strategy: KubernetesDiscovery | undefined;
    afterEach(async () => {
      await strategy?.stop();
      strategy = undefined;
    });

    test(
      "slices added, changed and deleted are followed through the watch",
      async () => {
        const { ns, saDir } = await meshNamespace();
        const { log, lines } = capturingLog();
        strategy = inCluster(saDir, "pm-0", { log });
        const events = recorder(strategy);
        await strategy.start();
        expect(lines.some((l) => l.includes(`Starting Kubernetes discovery in namespace '${ns}' with selector 'app=peat-mesh'`))).toBe(true);

        await server.apply(endpointSlice(ns, "peat-mesh-abc", [{ name: "pm-0", ip: "10.1.0.10" }, { name: "pm-1", ip: "10.1.0.11" }]));
        const found = peerOf(await until(() => events.find(isFound("pm-1")), "PeerFound pm-1"));
        expect(found).toEqual({ nodeId: "pm-1", addresses: [{ host: "10.1.0.11", brokerPort: 8081, syncPort: 11204 }], source: "kubernetes", metadata: {} });

        // Added: a second slice (the controller splits large services).
        await server.apply(endpointSlice(ns, "peat-mesh-def", [{ name: "pm-2", ip: "10.1.0.12" }]));
        await until(() => events.find(isFound("pm-2")), "PeerFound pm-2");

        // Changed: pm-1 rescheduled with a new IP.
        await server.apply(endpointSlice(ns, "peat-mesh-abc", [{ name: "pm-0", ip: "10.1.0.10" }, { name: "pm-1", ip: "10.1.0.21" }]));
        const updated = peerOf(await until(() => events.find(isUpdated("pm-1")), "PeerUpdated pm-1"));
        expect(updated?.addresses).toEqual([{ host: "10.1.0.21", brokerPort: 8081, syncPort: 11204 }]);

        // Deleted: the whole second slice goes.
        await server.delete({ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", namespace: ns, name: "peat-mesh-def" });
        await until(() => events.find(isLost("pm-2")), "PeerLost pm-2");

        // A slice losing the selector's label leaves the watch as a deletion would.
        await server.patch({ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", namespace: ns, name: "peat-mesh-abc" }, { metadata: { labels: { app: "something-else" } } });
        await until(() => events.find(isLost("pm-1")), "PeerLost pm-1");

        expect(strategy.peers()).toEqual([]);
        expect(events.map((e) => `${e.type}:${e.type === "PeerLost" ? e.nodeId : e.peer.nodeId}`)).toEqual([
          "PeerFound:pm-1",
          "PeerFound:pm-2",
          "PeerUpdated:pm-1",
          "PeerLost:pm-2",
          "PeerLost:pm-1",
        ]);
        // The node never reports itself, though it is in the slice.
        expect(events.some((e) => e.type !== "PeerLost" && e.peer.nodeId === "pm-0")).toBe(false);
        expect(lines.filter((l) => l.includes("ERROR") || l.includes(" WARN "))).toEqual([]);
      },
      T,
    );

    test(
      "a pod moving between slices is neither lost nor found again; it is lost when it leaves every slice",
      async () => {
        const { ns, saDir } = await meshNamespace();
        strategy = inCluster(saDir, "pm-0");
        const events = recorder(strategy);
        await strategy.start();
        await server.apply(endpointSlice(ns, "slice-a", [{ name: "pm-5", ip: "10.1.0.15" }]));
        await until(() => events.find(isFound("pm-5")), "PeerFound pm-5");
        await server.apply(endpointSlice(ns, "slice-b", [{ name: "pm-5", ip: "10.1.0.15" }, { name: "pm-6", ip: "10.1.0.16" }]));
        await until(() => events.find(isFound("pm-6")), "PeerFound pm-6");
        await server.apply(endpointSlice(ns, "slice-a", []));
        // A marker after the move: once it is seen, the move's own events have been processed.
        await server.apply(endpointSlice(ns, "slice-c", [{ name: "pm-7", ip: "10.1.0.17" }]));
        await until(() => events.find(isFound("pm-7")), "PeerFound pm-7");
        expect(events.filter((e) => isLost("pm-5")(e) || isFound("pm-5")(e) || isUpdated("pm-5")(e)).map((e) => e.type)).toEqual(["PeerFound"]);
        await server.delete({ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", namespace: ns, name: "slice-b" });
        await until(() => events.find(isLost("pm-5")), "PeerLost pm-5");
        expect(strategy.peers().map((p) => p.nodeId)).toEqual(["pm-7"]);
      },
      T,
    );

    test(
      "ports are taken by name (broker, sync or iroh-quic) whatever their order; unnamed ports fall back to the node's own",
      async () => {
        const { ns, saDir } = await meshNamespace();
        strategy = inCluster(saDir, "pm-0", { defaultBrokerPort: 9081, defaultSyncPort: 12000 });
        const events = recorder(strategy);
        await strategy.start();
        await server.apply(
          endpointSlice(ns, "named", [{ name: "pm-1", ip: "10.2.0.1" }], {
            ports: [
              { name: "metrics", port: 9090, protocol: "TCP" },
              { name: "iroh-quic", port: 11300, protocol: "UDP" },
              { name: "broker", port: 8181, protocol: "TCP" },
            ],
          }),
        );
        await server.apply(endpointSlice(ns, "unnamed", [{ name: "pm-2", ip: "10.2.0.2" }], { ports: [{ port: 7000, protocol: "TCP" }] }));
        await server.apply(endpointSlice(ns, "no-ports", [{ name: "pm-3", ip: "10.2.0.3" }], { ports: null }));
        const p1 = peerOf(await until(() => events.find(isFound("pm-1")), "PeerFound pm-1"));
        const p2 = peerOf(await until(() => events.find(isFound("pm-2")), "PeerFound pm-2"));
        const p3 = peerOf(await until(() => events.find(isFound("pm-3")), "PeerFound pm-3"));
        expect(p1?.addresses).toEqual([{ host: "10.2.0.1", brokerPort: 8181, syncPort: 11300 }]);
        expect(p2?.addresses).toEqual([{ host: "10.2.0.2", brokerPort: 9081, syncPort: 12000 }]);
        expect(p3?.addresses).toEqual([{ host: "10.2.0.3", brokerPort: 9081, syncPort: 12000 }]);
        // `sync` is preferred to `iroh-quic` when a slice names both.
        await server.apply(
          endpointSlice(ns, "named", [{ name: "pm-1", ip: "10.2.0.1" }], {
            ports: [
              { name: "iroh-quic", port: 11300, protocol: "UDP" },
              { name: "sync", port: 11400, protocol: "UDP" },
              { name: "broker", port: 8181, protocol: "TCP" },
            ],
          }),
        );
        const p1b = peerOf(await until(() => events.find(isUpdated("pm-1")), "PeerUpdated pm-1"));
        expect(p1b?.addresses).toEqual([{ host: "10.2.0.1", brokerPort: 8181, syncPort: 11400 }]);
      },
      T,
    );

    test(
      "slices with endpoints: null are tolerated",
      async () => {
        const { ns, saDir } = await meshNamespace();
        const { log, lines } = capturingLog();
        strategy = inCluster(saDir, "pm-0", { log });
        const events = recorder(strategy);
        // As the 1.20 controller writes for a headless Service's empty IPv6 family.
        await server.apply(endpointSlice(ns, "empty-before", null));
        await strategy.start();
        await server.apply(endpointSlice(ns, "empty-after", null));
        await server.apply(endpointSlice(ns, "real", [{ name: "pm-1", ip: "10.3.0.1" }]));
        await until(() => events.find(isFound("pm-1")), "PeerFound pm-1");
        const stored = await server.get({ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", namespace: ns, name: "empty-after" });
        expect(stored?.endpoints).toBeNull();
        // An existing slice emptied to null loses its peers.
        await server.apply(endpointSlice(ns, "real", null));
        await until(() => events.find(isLost("pm-1")), "PeerLost pm-1");
        expect(events.map((e) => e.type)).toEqual(["PeerFound", "PeerLost"]);
        expect(lines.filter((l) => l.includes("ERROR") || l.includes(" WARN "))).toEqual([]);
      },
      T,
    );

    test(
      "node ids come from targetRef.name, else hostname; self, nameless and terminating endpoints are skipped",
      async () => {
        const { ns, saDir } = await meshNamespace();
        strategy = inCluster(saDir, "pm-0");
        const events = recorder(strategy);
        await strategy.start();
        await server.apply(
          endpointSlice(ns, "mixed", [
            { name: "pm-0", ip: "10.4.0.10" },
            { hostname: "edge-7", ip: "10.4.0.7" },
            { ip: "10.4.0.99" },
            { name: "pm-1", ip: "10.4.0.11" },
            { name: "pm-2", ip: "10.4.0.12", terminating: true },
          ]),
        );
        await until(() => events.find(isFound("pm-1")), "PeerFound pm-1");
        expect(strategy.peers().map((p) => p.nodeId).sort()).toEqual(["edge-7", "pm-1"]);
        // A pod that starts terminating is lost before its endpoint goes.
        await server.apply(
          endpointSlice(ns, "mixed", [
            { name: "pm-0", ip: "10.4.0.10" },
            { hostname: "edge-7", ip: "10.4.0.7" },
            { name: "pm-1", ip: "10.4.0.11", terminating: true },
          ]),
        );
        await until(() => events.find(isLost("pm-1")), "PeerLost pm-1");
        expect(events.some((e) => e.type !== "PeerLost" && ["pm-0", "pm-2", "10.4.0.99"].includes(e.peer.nodeId))).toBe(false);
      },
      T,
    );

    test(
      "peat.* annotations of the slice become metadata (prefix stripped); changing one is an update",
      async () => {
        const { ns, saDir } = await meshNamespace();
        strategy = inCluster(saDir, "pm-0");
        const events = recorder(strategy);
        await strategy.start();
        const annotations = { "peat.relay_url": "turn:relay.example:3478", "peat.zone": "a", "other.io/x": "ignored" };
        await server.apply(endpointSlice(ns, "annotated", [{ name: "pm-1", ip: "10.5.0.1" }], { annotations }));
        const found = peerOf(await until(() => events.find(isFound("pm-1")), "PeerFound pm-1"));
        expect(found?.metadata).toEqual({ relay_url: "turn:relay.example:3478", zone: "a" });
        await server.patch({ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", namespace: ns, name: "annotated" }, { metadata: { annotations: { "peat.zone": "b" } } });
        const updated = peerOf(await until(() => events.find(isUpdated("pm-1")), "PeerUpdated pm-1"));
        expect(updated?.metadata).toEqual({ relay_url: "turn:relay.example:3478", zone: "b" });
        // A change to a non-peat annotation changes no peer: no second update.
        await server.patch({ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", namespace: ns, name: "annotated" }, { metadata: { annotations: { "other.io/x": "changed" } } });
        await server.apply(endpointSlice(ns, "marker", [{ name: "pm-9", ip: "10.5.0.9" }]));
        await until(() => events.find(isFound("pm-9")), "PeerFound pm-9");
        expect(events.filter(isUpdated("pm-1"))).toHaveLength(1);
      },
      T,
    );

    test(
      "RBAC refusal (a service account without the Role) logs a clear ERROR and retries until access is granted",
      async () => {
        const ns = `rbac-${++nsCounter}`;
        await server.createNamespace(ns);
        await server.apply({ apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "no-role", namespace: ns } });
        const saDir = await server.serviceAccountDir(ns, "no-role");
        await server.apply(endpointSlice(ns, "peers", [{ name: "pm-1", ip: "10.6.0.1" }]));
        const { log, lines } = capturingLog();
        strategy = inCluster(saDir, "pm-0", { log, backoffInitialMs: 100, backoffMaxMs: 300 });
        const events = recorder(strategy);
        await strategy.start();
        const refusal = await until(() => lines.find((l) => l.includes("ERROR") && l.includes("refused")), "the RBAC ERROR line");
        expect(refusal).toContain(`namespace '${ns}'`);
        expect(refusal).toContain("refused to list endpointslices");
        expect(refusal).toContain("discovery.k8s.io");
        expect(refusal).toContain(`service account 'system:serviceaccount:${ns}:no-role'`);
        expect(refusal).toContain("verb=list");
        // Still running, still retrying: grant access the way the chart does and it recovers.
        await until(() => lines.filter((l) => l.includes("refused")).length >= 2, "a second attempt");
        await server.apply([
          {
            apiVersion: "rbac.authorization.k8s.io/v1",
            kind: "Role",
            metadata: { name: "peat-mesh", namespace: ns },
            rules: [{ apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: ["list", "watch"] }],
          },
          {
            apiVersion: "rbac.authorization.k8s.io/v1",
            kind: "RoleBinding",
            metadata: { name: "peat-mesh", namespace: ns },
            roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: "peat-mesh" },
            subjects: [{ kind: "ServiceAccount", name: "no-role", namespace: ns }],
          },
        ]);
        await until(() => events.find(isFound("pm-1")), "PeerFound pm-1 once granted");
      },
      T,
    );

    test(
      "list without watch in the Role: the refused watch is named in the ERROR line",
      async () => {
        const ns = `rbac-${++nsCounter}`;
        await server.createNamespace(ns);
        await server.apply(
          readFileSync(join(PROJECT_ROOT, "test/k8s/fixtures/rbac.yaml"), "utf8").replaceAll("__NAMESPACE__", ns).replace('verbs: ["list", "watch"]', 'verbs: ["list"]'),
        );
        const saDir = await server.serviceAccountDir(ns, "peat-mesh");
        await server.apply(endpointSlice(ns, "peers", [{ name: "pm-1", ip: "10.6.1.1" }]));
        const { log, lines } = capturingLog();
        strategy = inCluster(saDir, "pm-0", { log });
        const events = recorder(strategy);
        await strategy.start();
        // The list works, so the peer is known; the watch is refused and named as such.
        await until(() => events.find(isFound("pm-1")), "PeerFound pm-1 from the list");
        const refusal = await until(() => lines.find((l) => l.includes("ERROR") && l.includes("refused")), "the watch refusal");
        expect(refusal).toContain("refused to watch endpointslices");
        expect(refusal).toContain("verb=watch");
      },
      T,
    );

    test(
      "a rotated token file is read again without a restart",
      async () => {
        const { ns } = await meshNamespace();
        await server.apply({ apiVersion: "v1", kind: "ServiceAccount", metadata: { name: "no-role", namespace: ns } });
        // Starts with a token the server refuses (a service account without the Role)…
        const saDir = await server.serviceAccountDir(ns, "no-role");
        await server.apply(endpointSlice(ns, "peers", [{ name: "pm-1", ip: "10.6.2.1" }]));
        const { log, lines } = capturingLog();
        strategy = inCluster(saDir, "pm-0", { log, tokenRefreshMs: 200, backoffInitialMs: 100, backoffMaxMs: 300 });
        const events = recorder(strategy);
        await strategy.start();
        await until(() => lines.find((l) => l.includes("refused")), "the refusal");
        // …then the kubelet rotates the file to a token that is allowed.
        writeFileSync(join(saDir, "token"), await server.createServiceAccountToken(ns, "peat-mesh"));
        await until(() => events.find(isFound("pm-1")), "PeerFound pm-1 with the rotated token");
      },
      T,
    );

    test(
      "kubeconfig outside a cluster: token with certificate-authority-data, client certificates, namespace override",
      async () => {
        const { ns } = await meshNamespace();
        await server.apply(endpointSlice(ns, "peers", [{ name: "pm-1", ip: "10.7.0.1" }]));
        const dir = mkdtempSync(join(tmpdir(), "peat-k8s-kc-"));
        try {
          const caData = Buffer.from(readFileSync(server.caPath)).toString("base64");
          const token = await server.createServiceAccountToken(ns, "peat-mesh");
          const client = server.clientCertificate("peat-operator", ["system:masters"]);
          const write = (name: string, user: string, namespace = "default") => {
            const path = join(dir, name);
            writeFileSync(
              path,
              `apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: ${server.url}\n    certificate-authority-data: ${caData}\nusers:\n- name: u\n  user:\n${user}\ncontexts:\n- name: test\n  context: {cluster: test, user: u, namespace: ${namespace}}\n`,
            );
            return path;
          };
          const tokenConfig = write("token.yaml", `    token: ${token}`, ns);
          const certConfig = write(
            "cert.yaml",
            `    client-certificate-data: ${Buffer.from(client.cert).toString("base64")}\n    client-key-data: ${Buffer.from(client.key).toString("base64")}`,
          );
          for (const [config, namespace] of [
            [tokenConfig, undefined],
            [certConfig, ns],
          ] as const) {
            const { log, lines } = capturingLog();
            strategy = new KubernetesDiscovery({
              selfNodeId: "pm-0",
              env: { KUBECONFIG: config },
              ...(namespace ? { namespace } : {}),
              defaultBrokerPort: 8081,
              log,
            });
            const events = recorder(strategy);
            await strategy.start();
            await until(() => events.find(isFound("pm-1")), `PeerFound pm-1 via ${config}`);
            expect(strategy.namespace).toBe(ns);
            expect(lines.some((l) => l.includes(`credentials="kubeconfig ${config}"`))).toBe(true);
            await strategy.stop();
            strategy = undefined;
          }
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      },
      T,
    );

    test(
      "a broken connection resumes the watch from its resourceVersion without a re-list",
      async () => {
        const { ns, saDir } = await meshNamespace();
        const proxy = new TcpProxy({ host: server.host, port: server.port });
        try {
          const { log, lines } = capturingLog();
          strategy = inCluster(saDir, "pm-0", { log, via: proxy, relistIntervalMs: 10 * 60_000 });
          const events = recorder(strategy);
          await strategy.start();
          await server.apply(endpointSlice(ns, "a", [{ name: "pm-1", ip: "10.8.0.1" }]));
          await until(() => events.find(isFound("pm-1")), "PeerFound pm-1");
          const lists = () => lines.filter((l) => l.includes("Listed EndpointSlices")).length;
          expect(lists()).toBe(1);
          proxy.cut();
          await server.apply(endpointSlice(ns, "b", [{ name: "pm-2", ip: "10.8.0.2" }]));
          await until(() => lines.find((l) => l.includes("watch failed") || l.includes("watch ended")), "the watch to notice the cut");
          proxy.resume();
          await until(() => events.find(isFound("pm-2")), "PeerFound pm-2 after the path heals");
          // The change made while cut off arrived through the resumed watch, not a new list.
          expect(lists()).toBe(1);
          expect(lines.some((l) => l.includes("410 Gone"))).toBe(false); // the message, not any "410" (a timestamp has them)
        } finally {
          proxy.stop();
        }
      },
      T,
    );

    test(
      "a silently dead watch is repaired by the periodic re-list",
      async () => {
        const { ns, saDir } = await meshNamespace();
        const proxy = new TcpProxy({ host: server.host, port: server.port });
        try {
          const { log, lines } = capturingLog();
          strategy = inCluster(saDir, "pm-0", { log, via: proxy, relistIntervalMs: 1500 });
          const events = recorder(strategy);
          await strategy.start();
          await server.apply(endpointSlice(ns, "a", [{ name: "pm-1", ip: "10.9.0.1" }]));
          await until(() => events.find(isFound("pm-1")), "PeerFound pm-1");
          // The open watch now carries nothing, and nothing tells the client so.
          proxy.freeze();
          await server.delete({ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", namespace: ns, name: "a" });
          await until(() => events.find(isLost("pm-1")), "PeerLost pm-1 from the re-list");
          expect(lines.some((l) => l.includes("Periodic EndpointSlice re-list"))).toBe(true);
        } finally {
          proxy.stop();
        }
      },
      T,
    );

    test(
      "bookmarks move the resourceVersion on, so a resumed watch starts after changes it was not shown",
      async () => {
        const { ns, saDir } = await meshNamespace();
        const { log, lines } = capturingLog();
        // The server ends each watch after 4 s and sends a bookmark about 2 s before that.
        strategy = inCluster(saDir, "pm-0", { log, watchTimeoutSeconds: 4, relistIntervalMs: 10 * 60_000 });
        const events = recorder(strategy);
        await strategy.start();
        const [mine] = await server.apply(endpointSlice(ns, "mine", [{ name: "pm-1", ip: "10.9.2.1" }]));
        await until(() => events.find(isFound("pm-1")), "PeerFound pm-1");
        // A slice the selector does not match: the watch never shows it, but it moves the version on.
        const [other] = await server.apply(endpointSlice(ns, "other", [{ name: "x-1", ip: "10.9.2.2" }], { labels: { app: "other" } }));
        const seen = Number(mine?.metadata.resourceVersion);
        const later = Number(other?.metadata.resourceVersion);
        expect(later).toBeGreaterThan(seen);
        const resumed = await until(
          () =>
            lines
              .map((l) => /EndpointSlice watch ended; resuming resource_version=(\d+)/.exec(l)?.[1])
              .filter((v) => v !== undefined)
              .map(Number)
              .find((rv) => rv >= later),
          "a watch resumed from the bookmark's resourceVersion",
          12_000,
        );
        expect(resumed).toBeGreaterThanOrEqual(later);
        expect(lines.filter((l) => l.includes("Listed EndpointSlices"))).toHaveLength(1);
      },
      T,
    );

    test(
      "stop() mid-watch returns promptly and closes the connection",
      async () => {
        const { ns, saDir } = await meshNamespace();
        const proxy = new TcpProxy({ host: server.host, port: server.port });
        try {
          strategy = inCluster(saDir, "pm-0", { via: proxy });
          const events = recorder(strategy);
          await strategy.start();
          await server.apply(endpointSlice(ns, "a", [{ name: "pm-1", ip: "10.9.1.1" }]));
          await until(() => events.find(isFound("pm-1")), "PeerFound pm-1");
          expect(proxy.openConnections).toBeGreaterThan(0);
          const started = performance.now();
          await strategy.stop();
          expect(performance.now() - started).toBeLessThan(1000);
          await until(() => proxy.openConnections === 0, "the watch connection to close", 3000);
          expect(strategy.peers()).toEqual([]);
          strategy = undefined;
        } finally {
          proxy.stop();
        }
      },
      T,
    );

    // Restarts the shared apiserver: kept last in this block so nothing else is watching then.
    test(
      "a watch resumed from an expired resourceVersion gets 410 Gone, re-lists and converges",
      async () => {
        const { ns, saDir } = await meshNamespace();
        const proxy = new TcpProxy({ host: server.host, port: server.port });
        try {
          const { log, lines } = capturingLog();
          strategy = inCluster(saDir, "pm-0", { log, via: proxy, relistIntervalMs: 10 * 60_000, backoffInitialMs: 100, backoffMaxMs: 500 });
          const events = recorder(strategy);
          await strategy.start();
          await server.apply(endpointSlice(ns, "keep", [{ name: "pm-1", ip: "10.10.0.1" }]));
          await server.apply(endpointSlice(ns, "gone", [{ name: "pm-2", ip: "10.10.0.2" }]));
          await until(() => events.find(isFound("pm-2")), "PeerFound pm-2");

          // Cut the client off; while it cannot see anything, change the world and restart the
          // apiserver. The restarted watch cache starts at the current revision, so the client's
          // resourceVersion is no longer in any history the server keeps.
          proxy.cut();
          await server.delete({ apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", namespace: ns, name: "gone" });
          await server.apply(endpointSlice(ns, "new", [{ name: "pm-3", ip: "10.10.0.3" }]));
          await server.restart();
          const listsBefore = lines.filter((l) => l.includes("Listed EndpointSlices")).length;
          proxy.resume();

          await until(() => lines.find((l) => l.includes("EndpointSlice watch expired (410 Gone); re-listing")), "the 410 re-list", 15_000);
          await until(() => events.find(isLost("pm-2")), "PeerLost pm-2 (deleted while cut off)");
          await until(() => events.find(isFound("pm-3")), "PeerFound pm-3 (created while cut off)");
          expect(lines.filter((l) => l.includes("Listed EndpointSlices")).length).toBe(listsBefore + 1);
          expect(events.filter(isLost("pm-1"))).toEqual([]);
          expect(strategy.peers().map((p) => p.nodeId).sort()).toEqual(["pm-1", "pm-3"]);
          // And the watch after the re-list works.
          await server.apply(endpointSlice(ns, "after", [{ name: "pm-4", ip: "10.10.0.4" }]));
          await until(() => events.find(isFound("pm-4")), "PeerFound pm-4 through the new watch");
        } finally {
          proxy.stop();
        }
      },
      60_000,
    );
  });

  // -- mode A: the built-in v1beta1 group ------------------------------------------------------

  describe("kubernetes discovery (built-in discovery.k8s.io/v1beta1, real apiserver)", () => {
    let beta: ApiServer;
    beforeAll(async () => {
      beta = await ApiServer.start({ mode: "v1beta1" });
    }, SETUP_TIMEOUT_MS);
    afterAll(async () => {
      await beta?.stop();
    });

    test(
      "with apiVersion v1beta1 the strategy lists and watches the built-in group",
      async () => {
        const { ns, saDir } = await meshNamespace("beta", beta);
        const strategy = inCluster(saDir, "pm-0", { api: beta, apiVersion: "discovery.k8s.io/v1beta1" });
        const events = recorder(strategy);
        try {
          const v1 = await beta.request("GET", "/apis/discovery.k8s.io/v1", undefined, { accept: [200, 404] });
          expect(v1.status).toBe(404);
          // Two slices as the 1.20 controller writes them for a headless Service: IPv4 with the pods, IPv6 with none.
          await beta.apply(endpointSlice(ns, "peat-mesh-v4", [{ name: "pm-1", ip: "10.11.0.1" }], { apiVersion: "discovery.k8s.io/v1beta1" }));
          await beta.apply({ ...endpointSlice(ns, "peat-mesh-v6", null, { apiVersion: "discovery.k8s.io/v1beta1" }), addressType: "IPv6" });
          await strategy.start();
          const found = peerOf(await until(() => events.find(isFound("pm-1")), "PeerFound pm-1"));
          expect(found?.addresses).toEqual([{ host: "10.11.0.1", brokerPort: 8081, syncPort: 11204 }]);
          await beta.apply(endpointSlice(ns, "peat-mesh-v4", [{ name: "pm-1", ip: "10.11.0.1" }, { name: "pm-2", ip: "10.11.0.2" }], { apiVersion: "discovery.k8s.io/v1beta1" }));
          await until(() => events.find(isFound("pm-2")), "PeerFound pm-2 through the watch");
          await beta.delete({ apiVersion: "discovery.k8s.io/v1beta1", kind: "EndpointSlice", namespace: ns, name: "peat-mesh-v4" });
          await until(() => events.find(isLost("pm-1")) && events.find(isLost("pm-2")), "PeerLost pm-1 and pm-2");
        } finally {
          await strategy.stop();
        }
      },
      T,
    );
  });

  // -- whole nodes -----------------------------------------------------------------------------

  const netnsSkip = netnsSkipReason();
  // The transport (src/transport, which logs "Peer connected") exists before the composition root
  // uses it; the connection test turns itself on once src/mesh.ts imports it.
  const transportWired = /from "\.\/transport\//.test(readFileSync(join(PROJECT_ROOT, "src/mesh.ts"), "utf8"));

  if (netnsSkip) {
    test.skip(`peat-mesh-node processes in network namespaces: SKIPPED, ${netnsSkip}`, () => {});
  } else {
    describe("peat-mesh-node processes in network namespaces, discovering each other through the apiserver", () => {
      const PODS = ["peat-mesh-0", "peat-mesh-1", "peat-mesh-2"];
      let net: BridgeNetwork;
      let api: ApiServer;
      const nodes: NodeProcess[] = [];

      beforeAll(async () => {
        net = BridgeNetwork.create({ hosts: PODS.length, rootLink: true });
        // The apiserver listens on the root namespace's bridge address: reachable from every host.
        api = await ApiServer.start({ mode: "v1-crd", bindAddress: net.rootAddress as string });
        const ns = "mesh";
        await api.createNamespace(ns);
        await api.applyRbacFixture(ns);
        // What the EndpointSlice controller would write for the chart's headless Service.
        await api.apply(
          endpointSlice(
            ns,
            "peat-mesh-x7k2p",
            PODS.map((name, i) => ({ name, ip: net.hosts[i]?.address as string })),
            { ports: [{ name: "broker", port: 8081, protocol: "TCP" }, { name: "sync", port: 11204, protocol: "UDP" }] },
          ),
        );
        for (const [i, pod] of PODS.entries()) {
          const host = net.hosts[i];
          if (!host) throw new Error("missing host");
          const saDir = await api.serviceAccountDir(ns, "peat-mesh");
          nodes.push(
            await startNode({
              command: [...net.execPrefix(host.name), process.execPath, MAIN],
              waitReady: false,
              env: {
                HOSTNAME: pod,
                PEAT_DISCOVERY: "kubernetes",
                KUBERNETES_SERVICE_HOST: api.host,
                KUBERNETES_SERVICE_PORT: String(api.port),
                PEAT_K8S_SERVICE_ACCOUNT_DIR: saDir,
                PEAT_BROKER_BIND: "0.0.0.0",
                PEAT_BROKER_PORT: "8081",
                PEAT_IROH_BIND_PORT: "11204",
                RUST_LOG: "info,peat_mesh=debug",
              },
            }),
          );
        }
      }, SETUP_TIMEOUT_MS);

      afterAll(async () => {
        for (const node of nodes) await node.stop();
        await api?.stop();
        await net?.destroy();
      }, 60_000);

      test(
        "each node finds the other two (by pod name, at its namespace address) and never itself",
        async () => {
          for (const [i, node] of nodes.entries()) {
            await node.waitForLine(/Starting Kubernetes discovery in namespace 'mesh' with selector 'app=peat-mesh'/, 15_000);
            for (const [j, other] of PODS.entries()) {
              if (i === j) continue;
              const line = await node.waitForLine(new RegExp(`Discovered new Kubernetes peer: ${other}\\b`), 15_000);
              expect(line).toContain(`${net.hosts[j]?.address}:8081/11204`);
            }
            expect(node.lines.some((l) => l.includes(`Discovered new Kubernetes peer: ${PODS[i]} `) || l.endsWith(`Discovered new Kubernetes peer: ${PODS[i]}`))).toBe(false);
            expect(node.lines.filter((l) => / ERROR /.test(l))).toEqual([]);
            // Its broker answers on its namespace address, through the bridge.
            const ready = await waitFor(
              async () => (await fetch(`http://${net.hosts[i]?.address}:8081/api/v1/health`)).status === 200,
              15_000,
              `${PODS[i]} health`,
            );
            expect(ready).toBe(true);
          }
        },
        60_000,
      );

      if (transportWired) {
        test(
          "each node connects to the other two (Peer connected)",
          async () => {
            for (const [i, node] of nodes.entries()) {
              for (const [j, other] of PODS.entries()) {
                if (i !== j) await node.waitForLine(new RegExp(`Peer connected.*peer=${other}\\b`), 30_000);
              }
            }
          },
          90_000,
        );
      } else {
        test.todo("each node connects to the other two (Peer connected): src/mesh.ts does not wire the transport in yet; this test turns itself on when it imports ./transport/");
      }
    });
  }
}
