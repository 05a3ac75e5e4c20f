import { describe, expect, test } from "bun:test";
import { runTransportConformance, waitUntil } from "./conformance.ts";
import { MemoryNetwork, MemoryTransport } from "./memory.ts";

runTransportConformance("MemoryTransport", async () => {
  const network = new MemoryNetwork();
  const a = new MemoryTransport({ nodeId: "node-a", network });
  const b = new MemoryTransport({ nodeId: "node-b", network });
  return {
    a,
    b,
    aId: "node-a",
    bId: "node-b",
    async connect() {
      await a.start();
      await b.start();
      network.connect("node-a", "node-b");
    },
    async dispose() {
      await a.stop();
      await b.stop();
    },
  };
});

describe("MemoryNetwork", () => {
  test("connecting nodes that are not started is an error", () => {
    expect(() => new MemoryNetwork().connect("x", "y")).toThrow();
  });

  test("a network-side drop reaches both ends with the given reason", async () => {
    const network = new MemoryNetwork();
    const a = new MemoryTransport({ nodeId: "a", network });
    const b = new MemoryTransport({ nodeId: "b", network });
    await a.start();
    await b.start();
    const seen: string[] = [];
    a.onDisconnected((p, r) => seen.push(`a:${p}:${r}`));
    b.onDisconnected((p, r) => seen.push(`b:${p}:${r}`));
    network.connect("a", "b");
    await waitUntil(() => a.connectedPeers().length === 1 && b.connectedPeers().length === 1, 1000, "the connection");
    network.disconnect("a", "b", "timeout");
    await waitUntil(() => seen.length === 2, 1000, "both disconnects");
    expect(seen.sort()).toEqual(["a:b:timeout", "b:a:timeout"]);
  });
});
