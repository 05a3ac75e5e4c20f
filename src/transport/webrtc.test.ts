/**
 * The WebRTC transport in one process: two real transports, each behind its own broker on
 * 127.0.0.1, signalling over HTTP and connecting over real UDP.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { type ConformancePair, runTransportConformance, waitUntil } from "./conformance.ts";
import { type TestNode, dialerFirst, startNode } from "./testdata/harness.ts";

setDefaultTimeout(60_000);

runTransportConformance("WebRtcTransport", async () => {
  const [dialerId, answererId] = dialerFirst("conf-a", "conf-b");
  let dialer: TestNode | undefined;
  let answerer: TestNode | undefined;
  const a = await startNode(dialerId);
  const b = await startNode(answererId);
  dialer = a;
  answerer = b;
  const pair: ConformancePair = {
    a: a.transport,
    b: b.transport,
    aId: dialerId,
    bId: answererId,
    async connect() {
      await (dialer as TestNode).transport.dial(answererId, [(answerer as TestNode).address]);
    },
    async dispose() {
      await a.stop();
      await b.stop();
    },
  };
  return pair;
});

describe("WebRtcTransport specifics", () => {
  const nodes: TestNode[] = [];
  afterAll(async () => {
    for (const n of nodes) await n.stop();
  });

  test("emits PeerConnected, TopologyChanged and PeerDisconnected mesh events", async () => {
    const [x, y] = dialerFirst("ev-a", "ev-b");
    const a = await startNode(x);
    const b = await startNode(y);
    nodes.push(a, b);
    const seen: string[] = [];
    b.events.on((e) => seen.push(e.type === "TopologyChanged" ? `${e.type}:${e.new_role}:${e.peer_count}` : e.type));
    await a.transport.dial(y, [b.address]);
    await waitUntil(() => seen.includes("PeerConnected"), 5000, "PeerConnected");
    a.transport.disconnect(y);
    await waitUntil(() => seen.includes("PeerDisconnected"), 5000, "PeerDisconnected");
    expect(seen).toEqual(["PeerConnected", "TopologyChanged:peer:1", "PeerDisconnected", "TopologyChanged:standalone:0"]);
    expect(b.metrics.render()).toContain("peat_peers_connected 0");
  });

  test("PeerConnections, data channels and timers are counted while live and released after a disconnect", async () => {
    const [x, y] = dialerFirst("count-a", "count-b");
    const a = await startNode(x);
    const b = await startNode(y);
    nodes.push(a, b);
    const idle = { a: a.transport.stats().timers, b: b.transport.stats().timers };
    await a.transport.dial(y, [b.address]);
    await waitUntil(() => b.transport.connectedPeers().length === 1, 5000, "b connected");
    expect(a.transport.stats()).toMatchObject({ peerConnections: 1, dataChannels: 1, timers: idle.a });
    await waitUntil(() => b.transport.stats().timers === idle.b, 5000, "b's candidate timer to fire");
    expect(b.transport.stats()).toMatchObject({ peerConnections: 1, dataChannels: 1 });
    expect(a.metrics.render()).toContain("peat_transport_data_channels 1");
    a.transport.disconnect(y);
    await waitUntil(() => b.transport.connectedPeers().length === 0, 5000, "b to see the disconnect");
    for (const n of [a, b]) expect(n.transport.stats()).toMatchObject({ peerConnections: 0, dataChannels: 0 });
    // Each closed connection's native objects are held 10 s by one timer, then released.
    expect(a.transport.stats().timers).toBe(idle.a + 1);
  });

  test("the node with the larger device id cannot dial", async () => {
    const [x, y] = dialerFirst("role-a", "role-b");
    const a = await startNode(x);
    const b = await startNode(y);
    nodes.push(a, b);
    await expect(b.transport.dial(x, [a.address])).rejects.toThrow("not the dialer");
  });

  test("ping measures rtt, and a silent peer is dropped with reason timeout", async () => {
    const [x, y] = dialerFirst("ping-a", "ping-b");
    const a = await startNode(x, { tuning: { pingIntervalMs: 100 } });
    const b = await startNode(y, { tuning: { pingIntervalMs: 100 } });
    nodes.push(a, b);
    const reasons: string[] = [];
    a.transport.onDisconnected((_, r) => reasons.push(r));
    await a.transport.dial(y, [b.address]);
    await waitUntil(() => (a.transport.linkInfo(y)?.rttMs ?? null) !== null, 5000, "rtt");
    expect(a.transport.linkInfo(y)?.rttMs).toBeGreaterThanOrEqual(0);
    // b stops answering without closing anything: its ticker and channel go quiet.
    (b.transport as unknown as { onFrame: () => void }).onFrame = () => {};
    (b.transport as unknown as { tick: () => void }).tick = () => {};
    await waitUntil(() => reasons.length > 0, 3000, "timeout disconnect");
    expect(reasons).toEqual(["timeout"]);
  });
});

describe("WebRtcTransport backpressure", () => {
  test("a peer whose queue exceeds the bound is dropped, and send returns false", async () => {
    const [x, y] = dialerFirst("bp-a", "bp-b");
    const tuning = { maxQueuedBytes: 2 * 1024 * 1024, highWaterBytes: 256 * 1024 };
    const a = await startNode(x, { tuning });
    const b = await startNode(y, { tuning });
    try {
      const reasons: string[] = [];
      a.transport.onDisconnected((_, r) => reasons.push(r));
      await a.transport.dial(y, [b.address]);
      const mib = new Uint8Array(1024 * 1024);
      // Sent synchronously, faster than any channel drains: SCTP's own buffer takes some, then our
      // queue grows past its bound.
      let accepted = 0;
      while (accepted < 256 && a.transport.send(y, mib)) accepted++;
      expect(accepted).toBeGreaterThan(1);
      expect(accepted).toBeLessThan(256);
      expect(reasons).toEqual(["backpressure"]);
      expect(a.transport.send(y, mib)).toBe(false);
      await waitUntil(() => b.transport.connectedPeers().length === 0, 5000, "the peer to see the drop");
    } finally {
      await a.stop();
      await b.stop();
    }
  });
});
