/**
 * Three real node processes on loopback, connected through static peers over authenticated WebRTC:
 * writes propagate, deletes stick, an empty node refills, a line converges, outsiders get nothing.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import {
  type NodeProcess,
  freeTcpPort,
  startNode,
  stopAllNodes,
  tempDir,
  udpRangeStart,
  waitFor,
} from "./harness/node-process.ts";

afterAll(stopAllNodes);
afterEach(stopAllNodes);

interface Spec {
  name: string;
  port: number;
  dataDir: string;
  peers: string[];
  secret?: string;
}

function specs(names: string[], links: [string, string][]): Spec[] {
  const ports = Object.fromEntries(names.map((n) => [n, freeTcpPort()]));
  return names.map((name) => ({
    name,
    port: ports[name] as number,
    dataDir: tempDir(`peat-${name}-`),
    peers: links.filter((l) => l.includes(name)).map((l) => (l[0] === name ? l[1] : l[0])).map((p) => `${p}@127.0.0.1:${ports[p]}`),
  }));
}

function launch(spec: Spec, extra: Record<string, string> = {}): Promise<NodeProcess> {
  return startNode({
    env: {
      HOSTNAME: spec.name,
      PEAT_BROKER_PORT: String(spec.port),
      PEAT_DATA_DIR: spec.dataDir,
      PEAT_STATIC_PEERS: spec.peers.join(","),
      PEAT_SYNC_BIND: "127.0.0.1",
      PEAT_IROH_BIND_PORT: String(udpRangeStart()),
      ...(spec.secret ? { PEAT_FORMATION_SECRET: spec.secret } : {}),
      ...extra,
    },
  });
}

const connectedCount = (n: NodeProcess) => new Set(n.lines.filter((l) => l.includes("Peer connected")).map((l) => /peer=(\S+)/.exec(l)?.[1])).size;

async function connectedPeers(n: NodeProcess): Promise<string[]> {
  const { body } = await n.json<{ peers: { id: string; connected: boolean }[] }>("/api/v1/peers");
  return body.peers.filter((p) => p.connected).map((p) => p.id).sort();
}

const put = (n: NodeProcess, path: string, body: unknown) =>
  n.fetch(`/api/v1/documents/${path}`, { method: "PUT", body: JSON.stringify(body) });
const patch = (n: NodeProcess, path: string, body: unknown) =>
  n.fetch(`/api/v1/documents/${path}`, { method: "PATCH", body: JSON.stringify(body) });
const del = (n: NodeProcess, path: string) => n.fetch(`/api/v1/documents/${path}`, { method: "DELETE" });

async function doc(n: NodeProcess, path: string): Promise<Record<string, unknown> | undefined> {
  const res = await n.fetch(`/api/v1/documents/${path}`);
  if (res.status === 404) return undefined;
  return ((await res.json()) as { document: Record<string, unknown> }).document;
}

function eventually<T>(read: () => Promise<T>, accept: (v: T) => boolean, what: string, timeoutMs = 10_000): Promise<T> {
  return waitFor(async () => {
    const v = await read();
    return accept(v) ? ({ v } as { v: T }) : undefined;
  }, timeoutMs, what).then((r) => r.v);
}

async function fullMesh(): Promise<[NodeProcess, NodeProcess, NodeProcess, Spec[]]> {
  const s = specs(["alpha", "bravo", "charlie"], [["alpha", "bravo"], ["bravo", "charlie"], ["alpha", "charlie"]]);
  const [a, b, c] = await Promise.all(s.map((x) => launch(x)));
  await waitFor(() => [a, b, c].every((n) => connectedCount(n as NodeProcess) === 2), 15_000, "a full mesh");
  return [a as NodeProcess, b as NodeProcess, c as NodeProcess, s];
}

describe("three nodes, full mesh", () => {
  test("each is connected to the other two, as the peers API and the log say", async () => {
    const [a, b, c] = await fullMesh();
    expect(await connectedPeers(a)).toEqual(["bravo", "charlie"]);
    expect(await connectedPeers(b)).toEqual(["alpha", "charlie"]);
    expect(await connectedPeers(c)).toEqual(["alpha", "bravo"]);
    const line = a.lines.find((l) => l.includes("Peer connected peer=bravo")) as string;
    expect(line).toMatch(/INFO peat_mesh::transport: Peer connected peer=bravo endpoint_id=[0-9a-f]{10} addresses=\[127\.0\.0\.1:\d+\]/);
    const topology = await a.json<{ peer_count: number }>("/api/v1/topology");
    expect(topology.body.peer_count).toBe(2);
    const peer = (await a.json<{ rtt_ms: number | null; bytes_sent: number; discovered_via: string[] }>("/api/v1/peers/bravo")).body;
    expect(peer.discovered_via).toEqual(["static"]);
    expect(peer.bytes_sent).toBeGreaterThan(0);
    expect((await a.fetch("/api/v1/peers/nobody")).status).toBe(404);
  });

  test("PUT, PATCH and DELETE on A reach B and C, and C's WebSocket reports them as remote", async () => {
    const [a, b, c] = await fullMesh();
    const ws = new WebSocket(`ws://127.0.0.1:${c.brokerPort}/api/v1/ws`);
    const events: Record<string, unknown>[] = [];
    ws.onmessage = (m) => events.push(JSON.parse(String(m.data)));
    await waitFor(() => ws.readyState === WebSocket.OPEN, 5000, "ws open");

    expect((await put(a, "alerts/a1", { level: "low", tags: ["x"] })).status).toBe(201);
    expect((await put(a, "tracks/t1", { lat: 52.1, lon: 4.3 })).status).toBe(201);
    for (const n of [b, c]) {
      await eventually(() => doc(n, "alerts/a1"), (d) => d?.level === "low", "alerts/a1");
      await eventually(() => doc(n, "tracks/t1"), (d) => d?.lat === 52.1, "tracks/t1");
    }
    await patch(a, "alerts/a1", { level: "high" });
    await eventually(() => doc(c, "alerts/a1"), (d) => d?.level === "high", "the patch on c");
    expect(await doc(c, "alerts/a1")).toEqual({ level: "high", tags: ["x"], _id: "a1" });
    expect((await del(a, "alerts/a1")).status).toBe(204);
    await eventually(() => doc(b, "alerts/a1"), (d) => d === undefined, "the delete on b");
    await eventually(() => doc(c, "alerts/a1"), (d) => d === undefined, "the delete on c");

    await waitFor(() => events.find((e) => e.doc_id === "a1" && e.action === "delete"), 5000, "the delete event");
    expect(events).toContainEqual({ type: "SyncEvent", collection: "alerts", doc_id: "a1", action: "upsert", origin: "remote" });
    expect(events).toContainEqual({ type: "SyncEvent", collection: "alerts", doc_id: "a1", action: "delete", origin: "remote" });
    ws.close();
  });

  test("a write on any node reaches the others, and concurrent edits to one document merge", async () => {
    const [a, b, c] = await fullMesh();
    await put(a, "notes/n", { title: "plan" });
    await eventually(() => doc(c, "notes/n"), (d) => d !== undefined, "notes/n on c");
    await Promise.all([patch(a, "notes/n", { fromA: 1 }), patch(b, "notes/n", { fromB: 2 }), patch(c, "notes/n", { fromC: 3 })]);
    for (const n of [a, b, c]) {
      await eventually(() => doc(n, "notes/n"), (d) => d?.fromA === 1 && d?.fromB === 2 && d?.fromC === 3, "the merged note");
    }
  });
});

describe("faults", () => {
  test("a stale peer reconnecting does not bring deleted documents back", async () => {
    const [a, b, c, s] = await fullMesh();
    for (let i = 0; i < 20; i++) await put(a, `alerts/d${i}`, { i });
    await put(a, "tracks/t", { v: 1 });
    await eventually(() => c.json<{ total: number }>("/api/v1/documents/alerts"), (r) => r.body.total === 20, "20 alerts on c");
    await eventually(() => doc(c, "tracks/t"), (d) => d?.v === 1, "tracks/t on c");
    const ws = new WebSocket(`ws://127.0.0.1:${a.brokerPort}/api/v1/ws`);
    const events: Record<string, unknown>[] = [];
    ws.onmessage = (m) => events.push(JSON.parse(String(m.data)));
    await waitFor(() => ws.readyState === WebSocket.OPEN, 5000, "ws open");
    expect(await c.stop()).toBe(0);
    await waitFor(() => events.find((e) => e.type === "PeerDisconnected" && e.peer_id === "charlie"), 10_000, "PeerDisconnected on a's socket");
    for (let i = 0; i < 10; i++) await del(a, `alerts/d${i}`);
    await del(b, "tracks/t");
    const c2 = await launch(s[2] as Spec);
    await waitFor(() => connectedCount(c2) === 2, 15_000, "c back in the mesh");
    await waitFor(() => events.find((e) => e.type === "PeerConnected" && e.peer_id === "charlie"), 10_000, "PeerConnected on a's socket");
    expect(events.find((e) => e.type === "TopologyChanged")).toMatchObject({ peer_count: expect.any(Number) });
    ws.close();
    await eventually(() => c2.json<{ total: number }>("/api/v1/documents/alerts"), (r) => r.body.total === 10, "deletes applied on c");
    await eventually(() => doc(c2, "tracks/t"), (d) => d === undefined, "tracks/t deleted on c");
    // And nothing came back on the others.
    expect((await a.json<{ total: number }>("/api/v1/documents/alerts")).body.total).toBe(10);
    expect(await doc(a, "tracks/t")).toBeUndefined();
    expect(await doc(b, "alerts/d3")).toBeUndefined();
    // The sync state (every document's heads and every tombstone) is identical on all three.
    type State = { state_hash: string; collections: { name: string; documents: unknown[]; tombstones: unknown[] }[] };
    const states = await waitFor(async () => {
      const all = await Promise.all([a, b, c2].map(async (n) => (await n.json<State>("/api/v1/sync/state")).body));
      return all.every((st) => st.state_hash === all[0]?.state_hash) ? all : undefined;
    }, 10_000, "equal sync state on a, b and c");
    expect(states[0]?.collections.find((col) => col.name === "alerts")).toMatchObject({ documents: expect.any(Array) });
    expect(states[0]?.collections.find((col) => col.name === "alerts")?.tombstones).toHaveLength(10);
    expect(states[0]?.collections.find((col) => col.name === "tracks")?.tombstones).toHaveLength(1);
  });

  test("a node restarted with an empty data dir gets everything back", async () => {
    const [a, , c, s] = await fullMesh();
    for (let i = 0; i < 50; i++) await put(a, `${i % 2 ? "alerts" : "tracks"}/d${i}`, { i, text: `doc ${i}` });
    await eventually(() => c.json<{ total: number }>("/api/v1/documents/alerts"), (r) => r.body.total === 25, "25 alerts on c");
    await c.stop();
    const fresh = { ...(s[2] as Spec), dataDir: tempDir("peat-charlie-empty-") };
    const c2 = await launch(fresh);
    await eventually(() => c2.json<{ total: number }>("/api/v1/documents/alerts"), (r) => r.body.total === 25, "alerts refilled");
    await eventually(() => c2.json<{ total: number }>("/api/v1/documents/tracks"), (r) => r.body.total === 25, "tracks refilled");
    expect(await doc(c2, "alerts/d7")).toEqual({ i: 7, text: "doc 7", _id: "d7" });
  });

  test("a line A–B–C converges though A and C never connect", async () => {
    const s = specs(["alpha", "bravo", "charlie"], [["alpha", "bravo"], ["bravo", "charlie"]]);
    const [a, b, c] = (await Promise.all(s.map((x) => launch(x)))) as NodeProcess[];
    await waitFor(() => connectedCount(b as NodeProcess) === 2, 15_000, "b connected to both ends");
    await put(a as NodeProcess, "alerts/from-a", { v: "a" });
    await put(c as NodeProcess, "tracks/from-c", { v: "c" });
    await eventually(() => doc(c as NodeProcess, "alerts/from-a"), (d) => d?.v === "a", "a's write on c");
    await eventually(() => doc(a as NodeProcess, "tracks/from-c"), (d) => d?.v === "c", "c's write on a");
    await del(a as NodeProcess, "alerts/from-a");
    await eventually(() => doc(c as NodeProcess, "alerts/from-a"), (d) => d === undefined, "a's delete on c");
    expect(await connectedPeers(a as NodeProcess)).toEqual(["bravo"]);
    expect(await connectedPeers(c as NodeProcess)).toEqual(["bravo"]);
  });

  test("a node with a different formation secret connects to nobody, gets nothing, and is logged", async () => {
    const s = specs(["alpha", "bravo", "intruder"], [["alpha", "bravo"], ["alpha", "intruder"], ["bravo", "intruder"]]);
    const [a, b] = (await Promise.all([launch(s[0] as Spec), launch(s[1] as Spec)])) as NodeProcess[];
    await put(a as NodeProcess, "alerts/secret", { classified: true });
    await waitFor(() => connectedCount(a as NodeProcess) === 1, 15_000, "alpha and bravo connected");
    const intruder = await launch({ ...(s[2] as Spec), secret: "b3RoZXItZm9ybWF0aW9uLXNlY3JldC0wMTIzNDU2Nzg5" });
    // Both members refuse it, each at least once, with a WARN naming where it came from.
    await waitFor(
      () => [a, b].every((n) => (n as NodeProcess).lines.some((l) => / WARN peat_mesh::transport: Signalling authentication failed addr=127\.0\.0\.1 /.test(l))),
      15_000,
      "both members to log the refusal",
    );
    expect(connectedCount(intruder)).toBe(0);
    expect(await connectedPeers(intruder)).toEqual([]);
    expect((await intruder.json<{ total: number }>("/api/v1/documents/alerts")).body.total).toBe(0);
    expect(connectedCount(a as NodeProcess)).toBe(1);
    expect(await connectedPeers(a as NodeProcess)).toEqual(["bravo"]);
  });
});
