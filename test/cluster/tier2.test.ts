/**
 * Tier 2 (real single-node cluster, ~2.5 min warm): etcd, kube-apiserver, controller-manager,
 * scheduler, kubelet (Debian docker.io) and kube-proxy in a network namespace with no uplink
 * (scripts/cluster/cluster.sh); the project image built from Dockerfile.distroless on locally made
 * base images (scripts/cluster/images.sh); the chart installed with 3 replicas (EndpointSlices
 * discovery.k8s.io/v1beta1: Kubernetes 1.20); then the seed's functional checks and a two-release
 * federation through gateway pods joined by static peers.
 * Run alone: `bun run test:tier2`. Opt out with PEAT_SKIP_TIER2=1.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureK8sBinaries, k8sSkipReason } from "../k8s/apiserver.ts";
import { netnsSkipReason } from "../k8s/netns.ts";
import { forEachLine, waitFor } from "../harness/node-process.ts";
import { CHART_DIR, PROJECT_ROOT, TEST_SECRET, ensureHelm, helmSkipReason } from "./chart.ts";

const SCRIPTS = join(PROJECT_ROOT, "scripts/cluster");
const NS = "mesh";
const IMAGE_TAG = "tier2";
const SETUP_TIMEOUT_MS = 20 * 60_000;

const skip =
  (process.env.PEAT_SKIP_TIER2 === "1" ? "PEAT_SKIP_TIER2=1" : undefined) ??
  netnsSkipReason() ??
  k8sSkipReason() ??
  helmSkipReason() ??
  (Bun.which("apt-get") || Bun.which("dockerd") ? undefined : "needs Debian's docker.io (apt-get)");

function run(argv: string[], opts: { env?: Record<string, string>; allowFail?: boolean } = {}): string {
  const r = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...opts.env } });
  if (r.exitCode !== 0 && !opts.allowFail) throw new Error(`${argv.join(" ")} exited ${r.exitCode}: ${r.stderr.toString().slice(-2000)}`);
  return r.stdout.toString();
}

if (skip) {
  test.skip(`Tier 2: single-node cluster, image from Dockerfile.distroless, chart, functional checks (skipped: ${skip})`, () => {});
} else {
  describe("Tier 2: a real single-node cluster running the project's image through the chart", () => {
    const work = mkdtempSync(join(tmpdir(), "peat-t2-"));
    const state = join(work, "cluster");
    const netns = `pmt2-${process.pid}`;
    let helmBin = "";
    let imageBytes = 0;
    let imageUser = "";
    let buildDaemon: ReturnType<typeof Bun.spawn> | undefined;
    const timings: Record<string, number> = {};

    const inNs = (argv: string[], allowFail = false): string =>
      run(["nsenter", `--net=/run/netns/${netns}`, ...argv], { env: { KUBECONFIG: join(state, "admin.kubeconfig") }, allowFail });
    const kubectl = (...args: string[]): string => inNs(["kubectl", "-n", NS, ...args]);
    const helmIn = (...args: string[]): string => inNs([helmBin, ...args]);
    const curlJson = <T>(url: string, method = "GET", body?: unknown): T | undefined => {
      const out = inNs(["curl", "-sf", "-m", "5", "-X", method, ...(body !== undefined ? ["-d", JSON.stringify(body)] : []), url], true);
      return out ? (JSON.parse(out) as T) : undefined;
    };
    const podIp = (pod: string): string => kubectl("get", "pod", pod, "-o", "jsonpath={.status.podIP}").trim();
    const broker = (pod: string): string => `http://${podIp(pod)}:8081`;
    type Peers = { peers: Array<{ id: string; connected: boolean }>; count: number };
    const connectedPeers = (pod: string): string[] =>
      (curlJson<Peers>(`${broker(pod)}/api/v1/peers`)?.peers ?? []).filter((p) => p.connected).map((p) => p.id).sort();
    const waitPeers = (pod: string, expected: string[], timeoutMs = 60_000): Promise<string[]> =>
      waitFor(() => {
        const got = connectedPeers(pod);
        return JSON.stringify(got) === JSON.stringify([...expected].sort()) ? got : undefined;
      }, timeoutMs, `${pod} connected to exactly [${expected.join(", ")}]`, 500);
    const release = (name: string, replicas: number, extra: string[] = []): void => {
      helmIn(
        "upgrade", "--install", name, CHART_DIR, "-n", NS, "--wait", "--timeout", "180s",
        "--set-string", `formationSecret=${TEST_SECRET}`, "--set", `replicaCount=${replicas}`,
        "--set", `image.tag=${IMAGE_TAG}`, "--set", "image.pullPolicy=Never",
        "--set", "kubernetes.apiVersion=discovery.k8s.io/v1beta1", ...extra,
      );
    };
    const pods = (rel: string, n: number): string[] => Array.from({ length: n }, (_, i) => `${rel}-peat-mesh-${i}`);

    beforeAll(async () => {
      let t = performance.now();
      run(["bash", join(SCRIPTS, "build-node.sh")]);
      await ensureK8sBinaries();
      helmBin = ensureHelm();
      timings.binaries = performance.now() - t;

      // Build daemon in the root namespace (the registry is reachable for RUN bun install).
      t = performance.now();
      const bd = join(work, "build-docker");
      const sock = `unix://${bd}/docker.sock`;
      buildDaemon = Bun.spawn(
        ["dockerd", "--data-root", join(bd, "data"), "--exec-root", join(bd, "exec"), "--pidfile", join(bd, "pid"), "--host", sock,
          "--bridge=none", "--iptables=false", "--ip6tables=false", "--containerd-namespace", `peat-build-${process.pid}`, "--containerd-plugins-namespace", `peat-build-${process.pid}-p`],
        { stdout: "ignore", stderr: "ignore" },
      );
      await waitFor(() => Bun.spawnSync(["/usr/bin/docker", "-H", sock, "version"], { stdout: "ignore", stderr: "ignore" }).exitCode === 0, 30_000, "build dockerd", 200);
      run(["bash", join(SCRIPTS, "images.sh")], { env: { DOCKER_HOST: sock, IMAGE: `peat-mesh-node:${IMAGE_TAG}` } });
      const inspect = run(["/usr/bin/docker", "-H", sock, "image", "inspect", "-f", "{{.Size}} {{.Config.User}}", `peat-mesh-node:${IMAGE_TAG}`]).trim().split(" ");
      imageBytes = Number(inspect[0]);
      imageUser = inspect[1] ?? "";
      const tar = join(work, "images.tar");
      run(["/usr/bin/docker", "-H", sock, "save", "-o", tar, `peat-mesh-node:${IMAGE_TAG}`, "k8s.gcr.io/pause:3.2"]);
      buildDaemon.kill("SIGTERM");
      await buildDaemon.exited;
      buildDaemon = undefined;
      run(["sh", "-c", `grep " ${bd}/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r umount -l`], { allowFail: true });
      timings.images = performance.now() - t;

      t = performance.now();
      run(["bash", join(SCRIPTS, "cluster.sh"), "up", state, netns, tar]);
      timings.cluster = performance.now() - t;
      t = performance.now();
      inNs(["kubectl", "create", "namespace", NS]);
      release("alpha", 3);
      timings.install = performance.now() - t;
      console.log(`tier2 setup: ${Object.entries(timings).map(([k, v]) => `${k} ${(v / 1000).toFixed(1)} s`).join(", ")}; image ${(imageBytes / 1e6).toFixed(1)} MB`);
    }, SETUP_TIMEOUT_MS);

    afterAll(async () => {
      if (buildDaemon && buildDaemon.exitCode === null) {
        buildDaemon.kill("SIGKILL");
        await buildDaemon.exited;
      }
      run(["bash", join(SCRIPTS, "cluster.sh"), "down", state], { allowFail: true });
      run(["sh", "-c", `grep " ${work}/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r umount -l`], { allowFail: true });
      rmSync(work, { recursive: true, force: true });
    }, 120_000);

    test("the image is distroless, non-root and small", () => {
      expect(imageUser).toBe("65532:65532");
      expect(imageBytes).toBeGreaterThan(100e6); // the Bun executable is ~125 MB
      expect(imageBytes).toBeLessThan(200e6);
    });

    test("all pods are Ready and their brokers healthy", () => {
      const ready = kubectl("get", "pods", "-l", "app.kubernetes.io/instance=alpha", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[0].ready} {end}").trim().split(" ").sort();
      expect(ready).toEqual(pods("alpha", 3).map((p) => `${p}=true`));
      for (const pod of pods("alpha", 3)) {
        expect(curlJson<{ status: string }>(`${broker(pod)}/api/v1/health`)?.status).toBe("healthy");
        expect(curlJson<{ ready: boolean }>(`${broker(pod)}/api/v1/ready`)?.ready).toBe(true);
      }
    });

    test("each pod is connected to the other 2", async () => {
      const all = pods("alpha", 3);
      for (const pod of all) await waitPeers(pod, all.filter((p) => p !== pod));
    }, 120_000);

    test("a document written through one pod's broker is readable through the others", async () => {
      const [p0, p1, p2] = pods("alpha", 3) as [string, string, string];
      expect(curlJson(`${broker(p0)}/api/v1/documents/tier2/doc-1`, "PUT", { written_by: p0, n: 7 })).toBeDefined();
      for (const pod of [p1, p2]) {
        const doc = await waitFor(() => curlJson<{ document: { n: number } }>(`${broker(pod)}/api/v1/documents/tier2/doc-1`)?.document, 30_000, `doc-1 on ${pod}`, 250);
        expect(doc).toMatchObject({ written_by: p0, n: 7 });
      }
    }, 90_000);

    test("device_id is unchanged after deleting a pod, which stops promptly on SIGTERM", async () => {
      const pod = "alpha-peat-mesh-0";
      const before = curlJson<{ device_id: string }>(`${broker(pod)}/api/v1/node`)!.device_id;
      expect(kubectl("logs", pod)).toContain(`device_id=${before}`);
      const uid = kubectl("get", "pod", pod, "-o", "jsonpath={.metadata.uid}");
      // The container's own log stream ends when its process exits: that, not the kubelet's later
      // bookkeeping (which a loaded 2-core machine can stretch past a minute), is the stop time.
      const follow = Bun.spawn(["nsenter", `--net=/run/netns/${netns}`, "kubectl", "-n", NS, "logs", "-f", "--tail=1", pod], {
        stdout: "pipe", stderr: "ignore", env: { ...process.env, KUBECONFIG: join(state, "admin.kubeconfig") },
      });
      const lines: string[] = [];
      const streamed = forEachLine(follow.stdout, (line) => lines.push(line));
      try {
        await waitFor(() => lines.length > 0, 30_000, `kubectl logs -f ${pod} attached`, 100);
        const t = performance.now();
        kubectl("delete", "pod", pod, "--wait=false");
        const exited = await Promise.race([follow.exited.then(() => true), Bun.sleep(30_000).then(() => false)]);
        const stopMs = performance.now() - t;
        expect({ exited, stoppedWithinGracePeriod: stopMs < 9_000 }).toEqual({ exited: true, stoppedWithinGracePeriod: true }); // grace period is 10 s
        await streamed;
        expect(lines.join("\n")).toContain("Received SIGTERM");
        expect(lines.join("\n")).toContain("peat-mesh-node stopped");
      } finally {
        if (follow.exitCode === null) follow.kill("SIGKILL");
      }
      try {
        await waitFor(() => {
          const now = kubectl("get", "pod", pod, "-o", "jsonpath={.metadata.uid} {.status.containerStatuses[0].ready}", "--ignore-not-found");
          return now && !now.startsWith(uid) && now.endsWith(" true");
        }, 150_000, `${pod} to come back Ready`, 500);
      } catch (err) {
        console.error(`kubelet log tail:\n${run(["tail", "-n", "40", join(state, "kubelet.log")], { allowFail: true })}`);
        throw err;
      }
      const after = curlJson<{ device_id: string }>(`${broker(pod)}/api/v1/node`)!.device_id;
      expect(after).toBe(before);
      expect(kubectl("logs", pod)).toMatch(new RegExp(`Mesh started node_id=${pod} device_id=${before}`));
      await waitPeers(pod, ["alpha-peat-mesh-1", "alpha-peat-mesh-2"]);
    }, 300_000);

    test("scale 3 -> 5 -> 3: peers join and leave", async () => {
      release("alpha", 5);
      const five = pods("alpha", 5);
      for (const pod of five) await waitPeers(pod, five.filter((p) => p !== pod), 90_000);
      release("alpha", 3);
      const three = pods("alpha", 3);
      for (const pod of three) await waitPeers(pod, three.filter((p) => p !== pod), 90_000);
    }, 400_000);

    test("no ERROR lines in any pod's log, and the SCTP timer hook installed in the distroless image", () => {
      for (const pod of pods("alpha", 3)) {
        const log = kubectl("logs", pod);
        expect(log).toContain("Mesh started");
        expect(log).not.toContain("SCTP timer pacing unavailable");
        expect({ pod, errors: log.split("\n").filter((l) => / ERROR /.test(l)) }).toEqual({ pod, errors: [] });
      }
    });

    test("federation: two releases joined by gateway pods and static peers carry a document across", async () => {
      // bravo: its own mesh (release-unique selector) with a gateway.
      release("bravo", 2, ["--set", "gateway.enabled=true"]);
      const bravoGw = "bravo-peat-mesh-gateway-0";
      // alpha's gateway dials bravo's gateway (pod address: this cluster has no DNS).
      release("alpha", 3, ["--set", "gateway.enabled=true", "--set-string", `gateway.staticPeers[0]=${bravoGw}@${podIp(bravoGw)}:8081`]);
      const alphaGw = "alpha-peat-mesh-gateway-0";
      await waitPeers(alphaGw, [...pods("alpha", 3), bravoGw], 90_000);
      await waitPeers(bravoGw, [...pods("bravo", 2), alphaGw], 90_000);
      // The two meshes stay apart except through the gateways.
      await waitPeers("alpha-peat-mesh-0", ["alpha-peat-mesh-1", "alpha-peat-mesh-2", alphaGw]);
      await waitPeers("bravo-peat-mesh-0", ["bravo-peat-mesh-1", bravoGw]);
      expect(kubectl("get", "pod", alphaGw, "-o", "jsonpath={.metadata.labels.peat\\.role}")).toBe("federation-gateway");

      expect(curlJson(`${broker("alpha-peat-mesh-1")}/api/v1/documents/fed/doc-1`, "PUT", { from: "alpha", hops: "alpha-1 -> gw -> gw -> bravo" })).toBeDefined();
      const doc = await waitFor(() => curlJson<{ document: { from: string } }>(`${broker("bravo-peat-mesh-1")}/api/v1/documents/fed/doc-1`)?.document, 60_000, "fed/doc-1 on bravo-peat-mesh-1", 500);
      expect(doc.from).toBe("alpha");
      for (const pod of [alphaGw, bravoGw]) expect(kubectl("logs", pod).split("\n").filter((l) => / ERROR /.test(l))).toEqual([]);
    }, 400_000);
  });
}
