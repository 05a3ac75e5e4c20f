/**
 * mDNS discovery on a real LAN: node processes in network namespaces joined by a bridge (made and
 * removed here). They find each other with no configuration but the secret, connect, and sync; a
 * node of another formation on the same LAN is ignored; a node that stops is reported lost.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { BridgeNetwork, destroyAllNetworks, netnsSkipReason } from "./k8s/netns.ts";
import { type NodeProcess, startNode, stopAllNodes, tempDir, waitFor } from "./harness/node-process.ts";

const skip = netnsSkipReason();
const OTHER_SECRET = "b3RoZXItZm9ybWF0aW9uLXNlY3JldC0wMTIzNDU2Nzg5";

afterAll(async () => {
  await stopAllNodes();
  await destroyAllNetworks();
});

const connectedTo = (n: NodeProcess) =>
  new Set(n.lines.filter((l) => l.includes("Peer connected")).map((l) => /peer=(\S+)/.exec(l)?.[1]));

describe.skipIf(skip !== undefined)(`mDNS LAN of network namespaces${skip ? ` (skipped: ${skip})` : ""}`, () => {
  test("three nodes find each other, connect and sync; another formation is ignored; a stopped node is lost", async () => {
    const net = BridgeNetwork.create({ hosts: 4, rootLink: true });
    try {
      const launch = (i: number, name: string, env: Record<string, string> = {}) => {
        const host = net.hosts[i] as { name: string; address: string };
        return startNode({
          prefix: net.execPrefix(host.name),
          host: host.address,
          env: {
            HOSTNAME: name,
            PEAT_DISCOVERY: "mdns",
            PEAT_BROKER_BIND: "0.0.0.0",
            PEAT_BROKER_PORT: "8081",
            PEAT_IROH_BIND_PORT: "11204",
            PEAT_DATA_DIR: tempDir(`peat-${name}-`),
            ...env,
          },
        });
      };
      const [alpha, bravo, charlie, outsider] = await Promise.all([
        launch(0, "alpha"),
        launch(1, "bravo"),
        launch(2, "charlie"),
        launch(3, "outsider", { PEAT_FORMATION_SECRET: OTHER_SECRET }),
      ]);
      const members = [alpha, bravo, charlie] as NodeProcess[];

      await waitFor(() => members.every((n) => connectedTo(n).size === 2), 20_000, "every member connected to the other two");
      expect([...connectedTo(alpha as NodeProcess)].sort()).toEqual(["bravo", "charlie"]);
      for (const n of members) await n.waitForLine(/Discovered new peer: /);
      const addressLine = (alpha as NodeProcess).lines.find((l) => l.includes("Peer connected peer=bravo")) as string;
      expect(addressLine).toContain(`addresses=[${net.hosts[1]?.address}:`);

      const put = await (alpha as NodeProcess).fetch("/api/v1/documents/alerts/lan", { method: "PUT", body: JSON.stringify({ via: "mdns" }) });
      expect(put.status).toBe(201);
      await waitFor(
        async () => (await (charlie as NodeProcess).fetch("/api/v1/documents/alerts/lan")).status === 200,
        10_000,
        "the document on charlie",
      );

      // The outsider heard the same announcements but matched no fingerprint: it never even tried.
      const outsiderPeers = await (outsider as NodeProcess).json<{ count: number }>("/api/v1/peers");
      expect(outsiderPeers.body.count).toBe(0);
      expect(connectedTo(outsider as NodeProcess).size).toBe(0);
      expect((await (outsider as NodeProcess).fetch("/api/v1/documents/alerts/lan")).status).toBe(404);
      for (const n of members) expect(n.lines.some((l) => l.includes("outsider") && /Discovered|Peer connected/.test(l))).toBe(false);

      expect(await (charlie as NodeProcess).stop()).toBe(0);
      for (const n of [alpha, bravo] as NodeProcess[]) {
        await n.waitForLine(/Lost peer: charlie/, 10_000);
        await n.waitForLine(/Peer disconnected peer=charlie/, 10_000);
      }
    } finally {
      await stopAllNodes();
      await net.destroy();
    }
  }, 60_000);

  test("hybrid: a peer found by mDNS and by an unnamed static entry is one peer with one connection", async () => {
    const net = BridgeNetwork.create({ hosts: 2, rootLink: true });
    try {
      const [h1, h2] = net.hosts as { name: string; address: string }[];
      const common = { PEAT_DISCOVERY: "mdns", PEAT_BROKER_BIND: "0.0.0.0", PEAT_BROKER_PORT: "8081", PEAT_IROH_BIND_PORT: "11204" };
      const alpha = await startNode({
        prefix: net.execPrefix((h1 as { name: string }).name),
        host: h1?.address,
        env: { ...common, HOSTNAME: "alpha", PEAT_DATA_DIR: tempDir(), PEAT_STATIC_PEERS: `${h2?.address}:8081` },
      });
      const bravo = await startNode({
        prefix: net.execPrefix((h2 as { name: string }).name),
        host: h2?.address,
        env: { ...common, HOSTNAME: "bravo", PEAT_DATA_DIR: tempDir() },
      });
      await waitFor(() => connectedTo(alpha).has("bravo") && connectedTo(bravo).has("alpha"), 20_000, "alpha and bravo connected");
      const peers = await waitFor(async () => {
        const { body } = await alpha.json<{ peers: { id: string; connected: boolean; discovered_via: string[] }[] }>("/api/v1/peers");
        const bravoView = body.peers.find((p) => p.id === "bravo");
        return bravoView && bravoView.discovered_via.length === 2 ? body.peers : undefined;
      }, 20_000, "bravo seen through both mDNS and the static entry");
      expect(peers.map((p) => p.id)).toEqual(["bravo"]);
      expect(peers[0]?.discovered_via.sort()).toEqual(["mdns", "static"]);
      expect(alpha.lines.filter((l) => l.includes("Peer connected peer=bravo"))).toHaveLength(1);
    } finally {
      await stopAllNodes();
      await net.destroy();
    }
  }, 60_000);
});
