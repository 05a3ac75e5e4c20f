import { describe, expect, test } from "bun:test";
import { silentLogger } from "../log.ts";
import { CONFORMANCE_PEERS, CONFORMANCE_SELF_PORT, runDiscoveryConformance } from "./conformance.ts";
import { StaticDiscovery } from "./static.ts";
import type { DiscoveryEvent } from "./types.ts";

/**
 * The static list is fixed at startup, so the environment names every peer the suite will use up
 * front as a DNS name, and "announcing" a peer makes that name resolve: the strategy's real
 * re-resolution path is what the suite exercises. Static peers are never lost (no withdraw).
 */
runDiscoveryConformance("static", async () => {
  const dns = new Map<string, string>();
  const named = { ...CONFORMANCE_PEERS, self: CONFORMANCE_SELF_PORT };
  const make = () =>
    new StaticDiscovery({
      peers: Object.entries(named).map(([name, port]) => ({ name, host: `${name}.test`, brokerPort: port, entry: `${name}@${name}.test:${port}` })),
      selfNodeId: "self",
      log: silentLogger(),
      resolveIntervalMs: 20,
      resolver: async (host) => {
        const address = dns.get(host.replace(/\.test$/, ""));
        if (!address) throw new Error(`ENOTFOUND ${host}`);
        return [address];
      },
    });
  return {
    strategy: make(),
    selfId: "self",
    observer: make,
    announce: async (nodeId, host) => void dns.set(nodeId, host),
    move: async (nodeId) => void dns.set(nodeId, "127.0.0.2"),
    cleanup: async () => {},
    timeoutMs: 2000,
  };
});

describe("static discovery specifics", () => {
  test("IP entries are found at start with a provisional id; DNS names that fail are retried", async () => {
    let answer: string[] | undefined;
    const strategy = new StaticDiscovery({
      peers: [
        { host: "10.0.0.2", brokerPort: 8081, entry: "10.0.0.2:8081" },
        { name: "gw", host: "gw.example.test", brokerPort: 9081, entry: "gw@gw.example.test:9081" },
      ],
      log: silentLogger(),
      resolveIntervalMs: 10,
      resolver: async () => {
        if (!answer) throw new Error("ENOTFOUND");
        return answer;
      },
    });
    const events: DiscoveryEvent[] = [];
    strategy.onEvent((e) => events.push(e));
    await strategy.start();
    expect(events).toEqual([
      {
        type: "PeerFound",
        peer: { nodeId: "static:10.0.0.2:8081", addresses: [{ host: "10.0.0.2", brokerPort: 8081 }], source: "static", metadata: { entry: "10.0.0.2:8081" } },
      },
    ]);
    answer = ["10.1.0.9", "10.1.0.8"];
    const deadline = performance.now() + 2000;
    while (!events.some((e) => e.type === "PeerFound" && e.peer.nodeId === "gw") && performance.now() < deadline) await Bun.sleep(5);
    const gw = events.find((e) => e.type === "PeerFound" && e.peer.nodeId === "gw");
    expect(gw?.type === "PeerFound" && gw.peer.addresses).toEqual([
      { host: "10.1.0.8", brokerPort: 9081 },
      { host: "10.1.0.9", brokerPort: 9081 },
    ]);
    await strategy.stop();
  });
});
