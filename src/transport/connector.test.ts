/**
 * PeerConnector with real transports in one process: merging a provisional static entry into the
 * named one, dropping a peer discovery loses, and retrying a peer that is not up yet.
 */
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import type { StaticPeerAddress } from "../config.ts";
import { StaticDiscovery } from "../discovery/static.ts";
import { deriveIdentity } from "../identity/index.ts";
import { silentLogger } from "../log.ts";
import { waitUntil } from "./conformance.ts";
import { PeerConnector, isProvisionalId } from "./connector.ts";
import { SEED, type TestNode, dialerFirst, startNode } from "./testdata/harness.ts";

setDefaultTimeout(20_000);

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

async function nodeWithConnector(name: string, peers: StaticPeerAddress[], brokerPort?: number) {
  const node = await startNode(name, brokerPort !== undefined ? { brokerPort } : {});
  const discovery = new StaticDiscovery({ peers, log: silentLogger() });
  const connector = new PeerConnector({
    transport: node.transport,
    discovery: [discovery],
    identity: deriveIdentity(SEED, name),
    log: silentLogger(),
    backoff: { initialMs: 50, maxMs: 200 },
    dialBackWaitMs: 2000,
  });
  await connector.start();
  await discovery.start();
  cleanup.push(async () => {
    await connector.stop();
    await discovery.stop();
    await node.stop();
  });
  return { node, discovery, connector };
}

function entry(target: TestNode, name?: string): StaticPeerAddress {
  const e = `${name ? `${name}@` : ""}127.0.0.1:${target.address.brokerPort}`;
  return { ...(name ? { name } : {}), host: "127.0.0.1", brokerPort: target.address.brokerPort, entry: e };
}

describe("PeerConnector", () => {
  test("provisional ids are the ones that cannot be node ids", () => {
    expect(isProvisionalId("static:10.0.0.1:8081")).toBe(true);
    expect(isProvisionalId("peat-mesh-0")).toBe(false);
  });

  test("default retry delays: capped at 5 s, so a healed partition reconnects promptly; 30 s after an authentication failure", async () => {
    const node = await startNode("backoff-defaults");
    cleanup.push(() => node.stop());
    const connector = new PeerConnector({ transport: node.transport, discovery: [], identity: deriveIdentity(SEED, "backoff-defaults"), log: silentLogger() });
    const delay = (failures: number, auth?: boolean) => (connector as unknown as { delay(f: number, a?: boolean): number }).delay(failures, auth);
    for (let i = 0; i < 50; i++) {
      expect(delay(1)).toBeGreaterThanOrEqual(250);
      expect(delay(1)).toBeLessThanOrEqual(500);
      const capped = delay(40);
      expect(capped).toBeGreaterThanOrEqual(2500);
      expect(capped).toBeLessThanOrEqual(5000);
      const auth = delay(40, true);
      expect(auth).toBeGreaterThanOrEqual(15_000);
      expect(auth).toBeLessThanOrEqual(30_000);
    }
  });

  test("the same node listed by name and by bare address is one peer with one connection", async () => {
    const { node: target } = await nodeWithConnector("merge-target", []);
    const { node, connector } = await nodeWithConnector("merge-source", [entry(target, "merge-target"), entry(target)]);
    await waitUntil(() => node.transport.connectedPeers().includes("merge-target"), 3000, "connection");
    await waitUntil(() => connector.peers().length === 1, 3000, "provisional entry merged");
    const [view] = connector.peers();
    expect(view).toMatchObject({ id: "merge-target", connected: true, state: "connected", discovered_via: ["static"] });
    expect(node.transport.stats().peerConnections).toBe(1);
    expect(connector.peer("static:127.0.0.1:" + target.address.brokerPort)?.id).toBe("merge-target");
  });

  test("a peer that discovery loses is disconnected and not redialled", async () => {
    const { node: target } = await nodeWithConnector("lost-target", []);
    const { node, discovery, connector } = await nodeWithConnector("lost-source", [entry(target, "lost-target")]);
    const reasons: string[] = [];
    node.transport.onDisconnected((_, r) => reasons.push(r));
    await waitUntil(() => node.transport.connectedPeers().length === 1, 3000, "connection");
    await discovery.stop();
    await waitUntil(() => reasons.length === 1, 3000, "disconnect");
    expect(reasons).toEqual(["lost"]);
    expect(connector.peers()).toEqual([]);
    await Bun.sleep(500);
    expect(node.transport.connectedPeers()).toEqual([]);
    expect(target.transport.connectedPeers()).toEqual([]);
  });

  test("a peer that comes back at another address and dials us is known at that address, once authenticated", async () => {
    const [mover, stayer] = dialerFirst("move-dialer", "move-answerer");
    const probe = await startNode(mover);
    const oldPort = probe.address.brokerPort;
    await probe.stop();
    const { node: there, connector } = await nodeWithConnector(stayer, [
      { name: mover, host: "127.0.0.1", brokerPort: oldPort, entry: `${mover}@127.0.0.1:${oldPort}` },
    ]);
    const { node: moved } = await nodeWithConnector(mover, [entry(there, stayer)]);
    await waitUntil(() => connector.peer(mover)?.connected === true, 5000, "the mover's connection");
    expect(connector.peer(mover)?.addresses).toEqual([`127.0.0.1:${oldPort}`, `127.0.0.1:${moved.address.brokerPort}`]);
  });

  test("a peer that is not up yet is retried with backoff until it is", async () => {
    // Reserve the target's broker address by starting and stopping it, then bring it back later.
    const probe = await startNode("late-target");
    const port = probe.address.brokerPort;
    await probe.stop();
    const { node, connector } = await nodeWithConnector("late-source", [
      { name: "late-target", host: "127.0.0.1", brokerPort: port, entry: `late-target@127.0.0.1:${port}` },
    ]);
    await waitUntil(() => ["backoff", "failed"].includes(connector.peer("late-target")?.state ?? ""), 3000, "backoff");
    expect(connector.peer("late-target")?.last_error).toBeString();
    await nodeWithConnector("late-target", [], port);
    await waitUntil(() => node.transport.connectedPeers().includes("late-target"), 3000, "connection after retries");
    expect(connector.peer("late-target")).toMatchObject({ state: "connected", last_error: null });
  });
});
