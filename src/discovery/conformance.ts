/**
 * The behaviour every discovery strategy shares, as a suite each strategy's tests run against its
 * own real environment (a resolver it controls, a LAN, an API server).
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { DiscoveryEvent, DiscoveryStrategy } from "./types.ts";

/** The peers the suite announces, with their broker ports, for environments that must know them up front. */
export const CONFORMANCE_PEERS = {
  "peer-a": 18081,
  "peer-b": 18082,
  "peer-c": 18084,
  "peer-d": 18086,
  "peer-e": 18087,
} as const;
export const CONFORMANCE_SELF_PORT = 18085;

export interface DiscoveryEnvironment {
  /** The strategy under test, not yet started; `selfId` is its own node id. */
  strategy: DiscoveryStrategy;
  selfId: string;
  /** A second strategy watching the same world, to prove a change was visible. */
  observer(): DiscoveryStrategy;
  /** Makes a peer visible to the strategy. */
  announce(nodeId: string, host: string, brokerPort: number): Promise<void>;
  /** Changes a visible peer's address (its host, or its port where the host cannot change). */
  move(nodeId: string): Promise<void>;
  /** The host the strategy will report for a peer announced at `host` (mDNS reports real interface addresses). */
  reportedHost?: (host: string) => string;
  /** Makes a peer disappear; undefined when the source cannot lose peers (a static list). */
  withdraw?: (nodeId: string) => Promise<void>;
  cleanup(): Promise<void>;
  /** How long a change may take to be seen. */
  timeoutMs: number;
}

async function eventually<T>(read: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = read();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(10);
  }
}

export function runDiscoveryConformance(name: string, makeEnvironment: () => Promise<DiscoveryEnvironment>): void {
  describe(`${name} (discovery conformance)`, () => {
    let env: DiscoveryEnvironment | undefined;
    afterEach(async () => {
      await env?.strategy.stop();
      await env?.cleanup();
      env = undefined;
    });

    async function started() {
      env = await makeEnvironment();
      const events: DiscoveryEvent[] = [];
      env.strategy.onEvent((e) => events.push(e));
      await env.strategy.start();
      return { env, events };
    }

    const found = (events: DiscoveryEvent[], nodeId: string) =>
      events.find((e) => e.type === "PeerFound" && e.peer.nodeId === nodeId) as Extract<DiscoveryEvent, { type: "PeerFound" }> | undefined;

    test("a visible peer is reported found with its address and broker port", async () => {
      const { env, events } = await started();
      await env.announce("peer-a", "127.0.0.1", 18081);
      const event = await eventually(() => found(events, "peer-a"), env.timeoutMs, "PeerFound peer-a");
      const host = env.reportedHost?.("127.0.0.1") ?? "127.0.0.1";
      expect(event.peer.addresses).toContainEqual(expect.objectContaining({ host, brokerPort: 18081 }));
      expect(event.peer.source).toBe(env.strategy.source);
      expect(env.strategy.peers().map((p) => p.nodeId)).toContain("peer-a");
    });

    test("a moved peer is reported updated, once per change", async () => {
      const { env, events } = await started();
      await env.announce("peer-b", "127.0.0.1", 18082);
      const first = await eventually(() => found(events, "peer-b"), env.timeoutMs, "PeerFound peer-b");
      await env.move("peer-b");
      const updated = await eventually(
        () => events.find((e) => e.type === "PeerUpdated" && e.peer.nodeId === "peer-b"),
        env.timeoutMs,
        "PeerUpdated peer-b",
      );
      expect(updated.type === "PeerUpdated" && updated.peer.addresses).not.toEqual(first.peer.addresses);
      expect(events.filter((e) => e.type === "PeerFound" && e.peer.nodeId === "peer-b")).toHaveLength(1);
    });

    test("a withdrawn peer is reported lost (where the source can lose peers)", async () => {
      const { env, events } = await started();
      if (!env.withdraw) {
        expect(env.strategy.source).toBe("static");
        return;
      }
      await env.announce("peer-c", "127.0.0.1", 18084);
      await eventually(() => found(events, "peer-c"), env.timeoutMs, "PeerFound peer-c");
      await env.withdraw("peer-c");
      await eventually(
        () => events.find((e) => e.type === "PeerLost" && e.nodeId === "peer-c"),
        env.timeoutMs,
        "PeerLost peer-c",
      );
      expect(env.strategy.peers().map((p) => p.nodeId)).not.toContain("peer-c");
    });

    test("the node itself is never reported", async () => {
      const { env, events } = await started();
      await env.announce(env.selfId, "127.0.0.1", 18085);
      await env.announce("peer-d", "127.0.0.1", 18086);
      await eventually(() => found(events, "peer-d"), env.timeoutMs, "PeerFound peer-d");
      expect(events.some((e) => e.type !== "PeerLost" && e.peer.nodeId === env.selfId)).toBe(false);
    });

    test("no event after stop", async () => {
      const { env, events } = await started();
      await env.strategy.stop();
      const count = events.length;
      const observer = env.observer();
      const seen: DiscoveryEvent[] = [];
      observer.onEvent((e) => seen.push(e));
      await observer.start();
      try {
        await env.announce("peer-e", "127.0.0.1", 18087);
        // Once a live strategy has seen the peer, the stopped one would have too.
        await eventually(() => found(seen, "peer-e"), env.timeoutMs, "the observer to see peer-e");
        expect(events.slice(count).filter((e) => e.type !== "PeerLost")).toEqual([]);
      } finally {
        await observer.stop();
      }
    });
  });
}
