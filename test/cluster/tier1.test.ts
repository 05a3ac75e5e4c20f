/**
 * Tier 1 (real control plane, ~15 s warm): the chart installed with `helm install` on a real
 * kube-apiserver v1.20.2 (test/k8s/apiserver.ts, mode v1-crd: discovery.k8s.io/v1 served through
 * the CRD shim). Three peat-mesh-node processes run in network namespaces with the environment the
 * chart's StatefulSet gives its pods, the chart's ServiceAccount token (TokenRequest) and its Role.
 * The test writes the EndpointSlice the EndpointSlice controller would write for the chart's
 * headless Service (its labels, its named ports, one endpoint per pod, published while not ready);
 * the nodes discover each other through it, connect, and sync a document.
 * Run alone: `bun run test:tier1`.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ApiServer, type K8sObject, k8sSkipReason, stopAllApiServers } from "../k8s/apiserver.ts";
import { BridgeNetwork, destroyAllNetworks, netnsSkipReason } from "../k8s/netns.ts";
import { MAIN, type NodeProcess, removeTempDirs, startNode, stopAllNodes, tempDir, waitFor } from "../harness/node-process.ts";
import { CHART_DIR, TEST_SECRET, helm, helmSkipReason, parseManifests, valueArgs } from "./chart.ts";

const RELEASE = "t1";
const NS = "mesh";
const FULLNAME = `${RELEASE}-peat-mesh`;
const PODS = [0, 1, 2].map((i) => `${FULLNAME}-${i}`);
const SETUP_TIMEOUT_MS = 15 * 60_000; // a cold machine builds kube-apiserver first (~3.5 min)

const skip = netnsSkipReason() ?? k8sSkipReason() ?? helmSkipReason() ?? (Bun.which("kubectl") ? undefined : "kubectl is not installed");

type Container = {
  env: Array<{ name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string }; fieldRef?: { fieldPath: string } } }>;
  ports: Array<{ name: string; containerPort: number; protocol: string }>;
};
type StatefulSet = K8sObject & { spec: { template: { spec: { serviceAccountName: string; containers: Container[] } } } };
type Service = K8sObject & {
  metadata: { labels: Record<string, string>; uid: string };
  spec: { publishNotReadyAddresses?: boolean; ports: Array<{ name: string; port: number; protocol: string; targetPort: string | number }> };
};

/** What kube-controller-manager's EndpointSlice controller writes for `svc` with these pods (not ready yet). */
function controllerSlice(svc: Service, sts: StatefulSet, pods: Array<{ name: string; ip: string }>): K8sObject {
  const containerPorts = sts.spec.template.spec.containers[0]!.ports;
  return {
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: {
      name: `${svc.metadata.name}-x7k2p`,
      namespace: NS,
      labels: {
        ...svc.metadata.labels,
        "kubernetes.io/service-name": svc.metadata.name,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
      },
      ownerReferences: [{ apiVersion: "v1", kind: "Service", name: svc.metadata.name, uid: svc.metadata.uid, controller: true, blockOwnerDeletion: true }],
    },
    addressType: "IPv4",
    // Named target ports resolve against the pod's container ports, as the controller does.
    ports: svc.spec.ports.map((p) => ({
      name: p.name,
      protocol: p.protocol,
      port: typeof p.targetPort === "number" ? p.targetPort : containerPorts.find((c) => c.name === p.targetPort)!.containerPort,
    })),
    // publishNotReadyAddresses: the pods are listed before they are ready.
    endpoints: pods.map((p) => ({
      addresses: [p.ip],
      conditions: { ready: svc.spec.publishNotReadyAddresses === true },
      hostname: p.name,
      targetRef: { kind: "Pod", namespace: NS, name: p.name },
    })),
  };
}

if (skip) {
  test.skip(`Tier 1: chart on a real kube-apiserver, nodes in network namespaces (skipped: ${skip})`, () => {});
} else {
  describe("Tier 1: the chart on a real kube-apiserver; nodes in network namespaces discover each other and sync", () => {
    let net: BridgeNetwork;
    let api: ApiServer;
    let installOutput = "";
    let sts: StatefulSet;
    let svc: Service;
    const nodes: NodeProcess[] = [];
    const url = (i: number): string => `http://${net.hosts[i]!.address}:8081`;

    beforeAll(async () => {
      net = BridgeNetwork.create({ hosts: PODS.length, rootLink: true });
      api = await ApiServer.start({ mode: "v1-crd", bindAddress: net.rootAddress! });
      await api.createNamespace(NS);
      const r = helm(
        ["install", RELEASE, CHART_DIR, "--namespace", NS, "--kubeconfig", api.kubeconfig, "--timeout", "60s", ...valueArgs({ formationSecret: TEST_SECRET, replicaCount: 3 })],
      );
      if (r.exitCode !== 0) throw new Error(`helm install failed: ${r.stderr}`);
      installOutput = r.stdout;
      sts = (await api.get({ apiVersion: "apps/v1", kind: "StatefulSet", namespace: NS, name: FULLNAME })) as StatefulSet;
      svc = (await api.get({ apiVersion: "v1", kind: "Service", namespace: NS, name: FULLNAME })) as Service;
      await api.apply(controllerSlice(svc, sts, PODS.map((name, i) => ({ name, ip: net.hosts[i]!.address }))));

      // Each node gets exactly the env the chart gives its pod, resolved as the kubelet would.
      const secret = (await api.get({ apiVersion: "v1", kind: "Secret", namespace: NS, name: FULLNAME })) as K8sObject & { data: Record<string, string> };
      const saName = sts.spec.template.spec.serviceAccountName;
      for (const [i, pod] of PODS.entries()) {
        const env: Record<string, string> = {};
        for (const e of sts.spec.template.spec.containers[0]!.env) {
          if (e.value !== undefined) env[e.name] = e.value;
          else if (e.valueFrom?.secretKeyRef) env[e.name] = Buffer.from(secret.data[e.valueFrom.secretKeyRef.key]!, "base64").toString();
          else if (e.valueFrom?.fieldRef?.fieldPath === "metadata.name") env[e.name] = pod;
          else throw new Error(`unhandled env ${e.name}`);
        }
        Object.assign(env, {
          // The pod's mounts, as directories of the test: /data, /tmp, the projected SA token.
          PEAT_DATA_DIR: tempDir("peat-t1-data-"),
          TMPDIR: tempDir("peat-t1-tmp-"),
          PEAT_K8S_SERVICE_ACCOUNT_DIR: await api.serviceAccountDir(NS, saName),
          KUBERNETES_SERVICE_HOST: api.host,
          KUBERNETES_SERVICE_PORT: String(api.port),
          // The node's default, which the chart leaves in place (the harness defaults to loopback).
          PEAT_BROKER_BIND: "0.0.0.0",
        });
        nodes.push(
          await startNode({ command: [...net.execPrefix(net.hosts[i]!.name), process.execPath, MAIN], env, host: net.hosts[i]!.address, waitReady: false }),
        );
      }
      for (const n of nodes) {
        await n.waitReady(30_000).catch((err: unknown) => {
          throw new Error(`${(err as Error).message}\nstdout: ${n.lines.slice(-15).join("\n")}\nstderr: ${n.stderrLines.slice(-15).join("\n")}`);
        });
      }
    }, SETUP_TIMEOUT_MS);

    afterAll(async () => {
      await stopAllNodes();
      if (api) helm(["uninstall", RELEASE, "--namespace", NS, "--kubeconfig", api.kubeconfig]);
      await stopAllApiServers();
      await net?.destroy();
      await destroyAllNetworks();
      removeTempDirs();
    }, 120_000);

    test("helm install deployed every chart resource and printed the NOTES", async () => {
      const status = helm(["status", RELEASE, "--namespace", NS, "--kubeconfig", api.kubeconfig, "-o", "json"]);
      expect((JSON.parse(status.stdout) as { info: { status: string } }).info.status).toBe("deployed");
      for (const [apiVersion, kind] of [["v1", "ServiceAccount"], ["v1", "Secret"], ["rbac.authorization.k8s.io/v1", "Role"], ["rbac.authorization.k8s.io/v1", "RoleBinding"]] as const) {
        expect(((await api.get({ apiVersion, kind, namespace: NS, name: FULLNAME })) as K8sObject).metadata.name).toBe(FULLNAME);
      }
      expect(installOutput).toContain(`kubectl -n ${NS} rollout status statefulset/${FULLNAME}`);
      expect(installOutput).toContain("/api/v1/peers");
      expect(installOutput).toContain("count should be 2");
      expect(svc.spec.publishNotReadyAddresses).toBe(true);
    });

    test("kubectl validates the rendered chart against the 1.20 server (client and server dry-run)", () => {
      const dir = tempDir("peat-t1-render-");
      const sets: Record<string, Record<string, string | number | boolean>> = {
        defaults: { formationSecret: TEST_SECRET },
        gateway: { formationSecret: TEST_SECRET, "gateway.enabled": true, "gateway.staticPeers[0]": "x@10.1.2.3:8081", "persistence.enabled": true },
      };
      for (const [name, values] of Object.entries(sets)) {
        const r = helm(["template", "dry", CHART_DIR, "--namespace", NS, "--kube-version", "1.20.2", ...valueArgs(values)]);
        expect(r.exitCode).toBe(0);
        const file = join(dir, `${name}.yaml`);
        writeFileSync(file, r.stdout);
        expect(parseManifests(r.stdout).length).toBeGreaterThan(5);
        for (const mode of ["client", "server"]) {
          const k = Bun.spawnSync(["kubectl", "--kubeconfig", api.kubeconfig, "apply", `--dry-run=${mode}`, "--validate=true", "-n", NS, "-f", file], { stdout: "pipe", stderr: "pipe" });
          expect({ name, mode, rc: k.exitCode, err: k.stderr.toString().replace(/.*version skew.*\n?/gi, "") }).toEqual({ name, mode, rc: 0, err: "" });
        }
      }
    });

    test("the chart's ServiceAccount token may list and watch endpointslices in its namespace, nothing more", async () => {
      const token = await api.createServiceAccountToken(NS, sts.spec.template.spec.serviceAccountName);
      const status = async (method: string, path: string, body?: unknown): Promise<number> =>
        (await api.request(method, path, body, { token, accept: [200, 201, 403, 404] })).status;
      expect(await status("GET", `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices`)).toBe(200);
      expect(await status("GET", `/apis/discovery.k8s.io/v1/namespaces/default/endpointslices`)).toBe(403);
      expect(await status("GET", `/api/v1/namespaces/${NS}/pods`)).toBe(403);
      expect(await status("GET", `/api/v1/namespaces/${NS}/secrets`)).toBe(403);
      expect(
        await status("POST", `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices`, { apiVersion: "discovery.k8s.io/v1", kind: "EndpointSlice", metadata: { name: "x" }, addressType: "IPv4", endpoints: [] }),
      ).toBe(403);
    });

    test(
      "each node discovers the other two through the slice and connects to them",
      async () => {
        for (const [i, node] of nodes.entries()) {
          await node.waitForLine(new RegExp(`Starting Kubernetes discovery in namespace '${NS}' with selector 'app=peat-mesh,app.kubernetes.io/instance=${RELEASE}'`), 15_000);
          for (const [j, other] of PODS.entries()) {
            if (i === j) continue;
            expect(await node.waitForLine(new RegExp(`Discovered new Kubernetes peer: ${other}\\b`), 15_000)).toContain(`${net.hosts[j]!.address}:8081/11204`);
            await node.waitForLine(new RegExp(`Peer connected.*peer=${other}\\b`), 45_000);
          }
          const peers = await waitFor(
            async () => {
              const body = (await (await fetch(`${url(i)}/api/v1/peers`)).json()) as { peers: Array<{ id: string; connected: boolean }>; count: number };
              return body.peers.filter((p) => p.connected).length === 2 ? body : undefined;
            },
            30_000,
            `${PODS[i]} to report 2 connected peers`,
          );
          expect(peers.peers.filter((p) => p.connected).map((p) => p.id).sort()).toEqual(PODS.filter((_, j) => j !== i));
        }
      },
      150_000,
    );

    test(
      "a document PUT on one node is readable on the other two",
      async () => {
        const doc = { name: "tier1", value: 42, nested: { ok: true } };
        const put = await fetch(`${url(0)}/api/v1/documents/tier1/doc-1`, { method: "PUT", body: JSON.stringify(doc) });
        expect(put.status).toBeLessThan(300);
        for (const i of [1, 2]) {
          const got = await waitFor(
            async () => {
              const res = await fetch(`${url(i)}/api/v1/documents/tier1/doc-1`);
              return res.status === 200 ? ((await res.json()) as { document: Record<string, unknown> }).document : undefined;
            },
            30_000,
            `doc-1 on ${PODS[i]}`,
          );
          expect(got).toMatchObject(doc);
        }
      },
      90_000,
    );

    test("device_id is derived from the pod name and no node logged an ERROR", async () => {
      const ids = new Set<string>();
      for (const [i, node] of nodes.entries()) {
        const line = await node.waitForLine(/Mesh started/);
        expect(line).toContain(`node_id=${PODS[i]}`);
        const body = (await (await fetch(`${url(i)}/api/v1/node`)).json()) as { device_id: string };
        expect(line).toContain(`device_id=${body.device_id}`);
        ids.add(body.device_id);
        expect(node.lines.filter((l) => / ERROR /.test(l))).toEqual([]);
      }
      expect(ids.size).toBe(3);
    });
  });
}
