/**
 * The sync engine between real SQLite stores over the in-process transport: push, reconcile,
 * LatestOnly last-writer-wins, tombstones, multi-hop relay, byte cost of an idle check, and
 * protocol violations. (The same engine over WebRTC between processes is tested in test/sync.)
 */
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { silentLogger } from "../log.ts";
import { Metrics } from "../metrics.ts";
import { DocumentStore, SyncModeRegistry, type Tombstone } from "../store/index.ts";
import { MemoryNetwork, MemoryTransport } from "../transport/memory.ts";
import { SyncEngine } from "./engine.ts";
import { Automerge } from "../automerge.ts";
import { type Entry, decodeMessage, encodeMessage } from "./protocol.ts";

interface TestNode {
  id: string;
  store: DocumentStore;
  transport: MemoryTransport;
  engine: SyncEngine;
  metrics: Metrics;
  dir: string;
}

const network = () => new MemoryNetwork();
let nodes: TestNode[] = [];
/** Every data dir made, removed after each test even when its node was stopped and replaced. */
const dirs = new Set<string>();

async function node(net: MemoryNetwork, id: string, dir?: string): Promise<TestNode> {
  const dataDir = dir ?? mkdtempSync(join(tmpdir(), `peat-sync-${id}-`));
  dirs.add(dataDir);
  const syncModes = new SyncModeRegistry();
  const store = new DocumentStore({ dataDir, nodeId: id, log: silentLogger(), syncModes });
  const transport = new MemoryTransport({ nodeId: id, network: net });
  const metrics = new Metrics();
  const engine = new SyncEngine({
    store,
    transport,
    syncModes,
    log: silentLogger(),
    metrics,
    intervalSecs: 3600,
    tombstoneTtlSecs: 7 * 24 * 3600,
  });
  await store.start();
  await transport.start();
  await engine.start();
  const n = { id, store, transport, engine, metrics, dir: dataDir };
  nodes.push(n);
  return n;
}

async function stopNode(n: TestNode): Promise<void> {
  await n.engine.stop();
  await n.transport.stop();
  await n.store.stop();
  nodes = nodes.filter((x) => x !== n);
}

afterEach(async () => {
  for (const n of [...nodes]) await stopNode(n);
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  dirs.clear();
});

async function until(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(2);
  }
}

const sentBytes = (n: TestNode) =>
  [...n.metrics.render().matchAll(/^peat_sync_bytes_sent_total\{type="\w+"\} (\d+)$/gm)].reduce((sum, m) => sum + Number(m[1]), 0);

describe("push", () => {
  test("a write on A is readable on B; PATCH and DELETE follow", async () => {
    const net = network();
    const a = await node(net, "a");
    const b = await node(net, "b");
    net.connect("a", "b");
    a.store.put("alerts", "x", { level: "low", tags: ["t"] });
    await until(() => b.store.get("alerts", "x")?.level === "low", "the put on b");
    a.store.patch("alerts", "x", { level: "high" });
    await until(() => b.store.get("alerts", "x")?.level === "high", "the patch on b");
    expect(b.store.get("alerts", "x")).toEqual({ level: "high", tags: ["t"] });
    a.store.delete("alerts", "x");
    await until(() => b.store.get("alerts", "x") === undefined, "the delete on b");
    expect(b.store.getTombstone("alerts", "x")?.deletedBy).toBe("a");
  });

  test("a FullHistory document deleted and re-created under the same id reaches the peer, by either side", async () => {
    const net = network();
    const a = await node(net, "a");
    const b = await node(net, "b");
    // Stale per-peer sync state once made the two ping-pong Automerge messages forever (which, over
    // this in-process transport, starves the event loop): cap the messages so that fails instead.
    let sent = 0;
    for (const n of [a, b]) {
      const send = n.transport.send.bind(n.transport);
      n.transport.send = (peer, bytes) => ++sent < 2000 && send(peer, bytes);
    }
    net.connect("a", "b");
    for (const [writer, reader, round] of [[a, b, 1], [b, a, 2], [a, b, 3]] as const) {
      writer.store.put("notes", "x", { round, v: 1 });
      await until(() => reader.store.get("notes", "x")?.round === round, `round ${round}: the put`);
      writer.store.patch("notes", "x", { v: 2 });
      await until(() => reader.store.get("notes", "x")?.v === 2, `round ${round}: the patch`);
      writer.store.delete("notes", "x");
      await until(() => reader.store.get("notes", "x") === undefined, `round ${round}: the delete`);
    }
    a.store.put("notes", "x", { round: 4 });
    await until(() => b.store.get("notes", "x")?.round === 4, "the re-created document on b");
    expect(b.store.get("notes", "x")).toEqual({ round: 4 });
    // The delete's tombstone stays beside the re-created document, on both sides alike.
    expect(b.store.getTombstone("notes", "x")).toEqual(a.store.getTombstone("notes", "x") as Tombstone);
  });

  test("a peer that saw the delete but not the re-creation gets the re-created document when it reconnects", async () => {
    const net = network();
    const a = await node(net, "a");
    const b = await node(net, "b");
    net.connect("a", "b");
    b.store.put("notes", "x", { v: 1 });
    await until(() => a.store.get("notes", "x")?.v === 1, "the first version on a");
    b.store.delete("notes", "x");
    await until(() => a.store.getTombstone("notes", "x") !== undefined, "the delete on a");
    net.disconnect("a", "b");
    b.store.put("notes", "x", { v: 2 });
    // Both hold the same tombstone; only b holds the document beside it. a, the smaller id, drives
    // the reconciliation, so it is a's tombstone that meets b's document first.
    net.connect("a", "b");
    await until(() => a.store.get("notes", "x")?.v === 2, "the re-created document on a");
    expect(a.store.getTombstone("notes", "x")).toEqual(b.store.getTombstone("notes", "x") as Tombstone);
  });

  test("a FullHistory document re-created while a peer was away replaces the peer's old copy instead of merging with it", async () => {
    const net = network();
    const a = await node(net, "a");
    const b = await node(net, "b");
    const c = await node(net, "c");
    net.connect("a", "b");
    a.store.put("notes", "x", { v: 1, old: "field" });
    await until(() => b.store.get("notes", "x")?.v === 1, "the first version on b");
    net.disconnect("a", "b");
    a.store.delete("notes", "x");
    a.store.put("notes", "x", { v: 2 });
    // Either side may send first: b reconnects to a, and c (which never saw x) relays a's copy to b.
    net.connect("a", "c");
    await until(() => c.store.get("notes", "x")?.v === 2, "the re-created document on c");
    net.disconnect("a", "c");
    net.connect("b", "c");
    await until(() => b.store.get("notes", "x")?.v === 2, "the re-created document on b");
    net.connect("a", "b");
    await until(() => a.engine["index"].root().fp === b.engine["index"].root().fp, "a and b to agree");
    for (const n of [a, b, c]) {
      expect(n.store.get("notes", "x")).toEqual({ v: 2 });
      expect(n.store.getTombstone("notes", "x")?.hlc).toBe(a.store.getTombstone("notes", "x")?.hlc as string);
      expect(n.store.getVersion("notes", "x")?.headsHash).toBe(a.store.getVersion("notes", "x")?.headsHash as string);
    }
  });

  test("LatestOnly documents replace whole, last writer wins, in both directions", async () => {
    const net = network();
    const a = await node(net, "a");
    const b = await node(net, "b");
    net.connect("a", "b");
    a.store.put("tracks", "t1", { lat: 1, lon: 1 });
    await until(() => b.store.get("tracks", "t1")?.lat === 1, "t1 on b");
    b.store.put("tracks", "t1", { lat: 2 });
    await until(() => a.store.get("tracks", "t1")?.lat === 2, "b's newer t1 on a");
    expect(a.store.get("tracks", "t1")).toEqual({ lat: 2 });
  });

  test("concurrent FullHistory edits merge on both sides", async () => {
    const net = network();
    const a = await node(net, "a");
    const b = await node(net, "b");
    a.store.put("notes", "n", { a: 1 });
    net.connect("a", "b");
    await until(() => b.store.get("notes", "n")?.a === 1, "n on b");
    net.disconnect("a", "b");
    a.store.patch("notes", "n", { fromA: true });
    b.store.patch("notes", "n", { fromB: true });
    net.connect("a", "b");
    await until(
      () => a.store.get("notes", "n")?.fromB === true && b.store.get("notes", "n")?.fromA === true,
      "both edits on both nodes",
    );
    expect(JSON.stringify(a.store.get("notes", "n"))).toBe(JSON.stringify(b.store.get("notes", "n")));
    expect(a.store.getVersion("notes", "n")?.headsHash).toBe(b.store.getVersion("notes", "n")?.headsHash as string);
  });

  test("a line A–B–C converges: B relays what it learns", async () => {
    const net = network();
    const a = await node(net, "a");
    const b = await node(net, "b");
    const c = await node(net, "c");
    net.connect("a", "b");
    net.connect("b", "c");
    a.store.put("alerts", "from-a", { v: 1 });
    c.store.put("tracks", "from-c", { v: 2 });
    await until(() => c.store.get("alerts", "from-a")?.v === 1 && a.store.get("tracks", "from-c")?.v === 2, "relay both ways");
    a.store.delete("alerts", "from-a");
    await until(() => c.store.get("alerts", "from-a") === undefined, "the relayed delete");
  });
});

describe("reconcile", () => {
  test("a node connecting late gets everything, and deleted documents do not come back", async () => {
    const net = network();
    const a = await node(net, "a");
    for (let i = 0; i < 300; i++) a.store.put(i % 2 ? "alerts" : "tracks", `d${i}`, { i });
    const b = await node(net, "b");
    // b had a copy of d0 that a deleted meanwhile: b must not resurrect it.
    b.store.put("tracks", "stale", { old: true });
    net.connect("a", "b");
    await until(() => a.store.get("tracks", "stale")?.old === true, "stale reaches a");
    a.store.delete("tracks", "stale");
    await until(() => b.store.count("tracks") === 150 && b.store.count("alerts") === 150, "all 300 on b");
    expect(b.store.get("tracks", "stale")).toBeUndefined();
  });

  test("a stale copy reconnecting after a delete is overruled by the tombstone", async () => {
    const net = network();
    const a = await node(net, "a");
    const b = await node(net, "b");
    net.connect("a", "b");
    a.store.put("alerts", "x", { v: 1 });
    a.store.put("tracks", "y", { v: 1 });
    await until(() => b.store.get("alerts", "x") !== undefined && b.store.get("tracks", "y") !== undefined, "copies on b");
    net.disconnect("a", "b");
    a.store.delete("alerts", "x");
    a.store.delete("tracks", "y");
    net.connect("a", "b");
    await until(() => b.store.get("alerts", "x") === undefined && b.store.get("tracks", "y") === undefined, "deletes on b");
    expect(a.store.get("alerts", "x")).toBeUndefined();
    expect(a.store.get("tracks", "y")).toBeUndefined();
  });

  test("pushes lost with a silently dead connection are not taken as delivered: an update newer than the peer's delete wins", async () => {
    const net = network();
    const a = await node(net, "a");
    const b = await node(net, "b");
    net.connect("a", "b");
    a.store.put("notes", "n", { v: 0 });
    // More than one range's worth of items, so that b (not a) ends the narrowing and sends its tombstone.
    for (let i = 0; i < 200; i++) a.store.put("notes", `filler-${i}`, { i });
    await until(() => b.store.count("notes") === 201, "201 notes on b");
    // The link dies without either side noticing yet: sends are accepted and lost, as over WebRTC.
    for (const n of [a, b]) n.transport.send = (peer) => n.transport.connectedPeers().includes(peer);
    b.store.delete("notes", "n");
    await until(() => b.store.getTombstone("notes", "n") !== undefined, "the delete on b");
    const stamp = b.store.getTombstone("notes", "n")?.hlc as string;
    await until(() => Date.now() > Number(stamp.slice(0, 15)) + 1, "the clock to move on");
    a.store.put("notes", "n", { v: 2 });
    await Bun.sleep(0);
    net.disconnect("a", "b");
    for (const n of [a, b]) n.transport.send = MemoryTransport.prototype.send.bind(n.transport);
    net.connect("a", "b");
    await until(() => b.store.get("notes", "n")?.v === 2, "a's newer update on b", 4000);
    expect(b.store.getTombstone("notes", "n")).toBeUndefined();
    expect(b.store.getVersion("notes", "n")?.headsHash).toBe(a.store.getVersion("notes", "n")?.headsHash as string);
  });

  test("two nodes with 2,000 identical documents exchange only root messages when they connect", async () => {
    const net = network();
    const a = await node(net, "a");
    const b = await node(net, "b");
    net.connect("a", "b");
    for (let i = 0; i < 2000; i++) a.store.put(i % 2 ? "alerts" : "tracks", `d${i}`, { i, s: "some text" });
    await until(() => b.store.count("alerts") + b.store.count("tracks") === 2000, "2000 docs on b", 20_000);
    net.disconnect("a", "b");
    const before = sentBytes(a) + sentBytes(b);
    net.connect("a", "b");
    await until(() => a.transport.connectedPeers().length === 1, "reconnect");
    // Both sides have sent hello + root. A differing root is answered synchronously, inside the
    // receive handler, so once both roots have been received every answer is already counted.
    const rootsIn = (n: TestNode) => Number(/peat_sync_messages_received_total\{type="root"\} (\d+)/.exec(n.metrics.render())?.[1] ?? 0);
    const [aRoots, bRoots] = [rootsIn(a), rootsIn(b)];
    await until(() => rootsIn(a) > aRoots && rootsIn(b) > bRoots, "both roots received");
    const cost = sentBytes(a) + sentBytes(b) - before;
    expect(cost).toBeLessThan(200);
    expect(a.metrics.render()).not.toContain('peat_sync_messages_sent_total{type="batch"} 0');
  });

  test("reconciling 5,000 documents where 100 changed costs a small fraction of a full sync", async () => {
    const net = network();
    const a = await node(net, "a");
    const b = await node(net, "b");
    net.connect("a", "b");
    for (let i = 0; i < 5000; i++) a.store.put("alerts", `d${String(i).padStart(5, "0")}`, { i, text: "payload payload payload" });
    await until(() => b.store.count("alerts") === 5000, "5000 docs on b", 30_000);
    const fullSync = sentBytes(a) + sentBytes(b);
    net.disconnect("a", "b");
    for (let i = 0; i < 100; i++) a.store.patch("alerts", `d${String(i * 50).padStart(5, "0")}`, { changed: i });
    const before = sentBytes(a) + sentBytes(b);
    net.connect("a", "b");
    await until(() => b.store.get("alerts", "d04950")?.changed === 99, "the 100 changes on b", 20_000);
    const cost = sentBytes(a) + sentBytes(b) - before;
    expect(cost).toBeLessThan(fullSync / 10);
    expect(b.store.get("alerts", "d00050")).toMatchObject({ changed: 1, i: 50 });
    expect(b.store.get("alerts", "d00051")).toEqual({ i: 51, text: "payload payload payload" });
  }, 60_000);

  test("a peer that lost its data (same id, empty store) is refilled, though we believed it up to date", async () => {
    const net = network();
    const a = await node(net, "a");
    let b = await node(net, "b");
    net.connect("a", "b");
    for (let i = 0; i < 30; i++) a.store.put("alerts", `d${i}`, { i });
    await until(() => b.store.count("alerts") === 30, "30 docs on b");
    await stopNode(b);
    for (let i = 0; i < 5; i++) a.store.patch("alerts", `d${i}`, { changed: true });
    b = await node(net, "b");
    net.connect("a", "b");
    await until(() => b.store.count("alerts") === 30 && b.store.get("alerts", "d4")?.changed === true, "b refilled");
    expect(b.store.get("alerts", "d0")).toEqual({ i: 0, changed: true });
    expect(a.metrics.render()).not.toMatch(/peat_sync_protocol_errors_total [1-9]/);
  });

  test("a node restarted with an empty data dir gets everything back", async () => {
    const net = network();
    const a = await node(net, "a");
    for (let i = 0; i < 200; i++) a.store.put(i % 2 ? "alerts" : "tracks", `d${i}`, { i });
    a.store.delete("alerts", "d1");
    const b = await node(net, "b");
    net.connect("a", "b");
    await until(() => b.store.count("alerts") + b.store.count("tracks") === 199, "199 docs on b");
    expect(b.store.getTombstone("alerts", "d1")).toBeDefined();
  });
});

describe("traffic", () => {
  const counter = (n: TestNode, name: string, type: string) =>
    Number(new RegExp(`^${name}\\{type="${type}"\\} (\\d+)$`, "m").exec(n.metrics.render())?.[1] ?? 0);

  test("in a full mesh a push is not relayed to peers the writer already sent it to", async () => {
    const net = network();
    const [a, b, c] = [await node(net, "a"), await node(net, "b"), await node(net, "c")];
    net.connect("a", "b");
    net.connect("a", "c");
    net.connect("b", "c");
    // Reconciliation of the (empty) stores first, so that what follows is pure push.
    await until(() => [a, b, c].every((n) => counter(n, "peat_sync_messages_received_total", "root") === 2), "the roots exchanged");
    const relayed = (n: TestNode) => counter(n, "peat_sync_messages_sent_total", "batch");
    const [bBefore, cBefore] = [relayed(b), relayed(c)];
    for (let i = 0; i < 50; i++) a.store.put("alerts", `d${i}`, { i });
    await until(() => b.store.count("alerts") === 50 && c.store.count("alerts") === 50, "50 docs on b and c");
    // A new FullHistory document goes whole, in one message: no Automerge exchange answers it.
    expect(counter(b, "peat_sync_messages_sent_total", "batch") - bBefore).toBe(0);
    expect(counter(c, "peat_sync_messages_sent_total", "batch") - cBefore).toBe(0);
    expect(relayed(b) - bBefore + relayed(c) - cBefore).toBe(0);
  });

  test("a node that was away catches up from one peer, in one round, not from every peer", async () => {
    const net = network();
    const [a, b, c] = [await node(net, "a"), await node(net, "b"), await node(net, "c")];
    net.connect("a", "b");
    net.connect("a", "c");
    net.connect("b", "c");
    await until(() => [a, b, c].every((n) => counter(n, "peat_sync_messages_received_total", "root") === 2), "the roots exchanged");
    for (let i = 0; i < 500; i++) a.store.put("alerts", `d${String(i).padStart(4, "0")}`, { i, text: "payload payload" });
    await until(() => c.store.count("alerts") === 500 && b.store.count("alerts") === 500, "500 docs everywhere", 20_000);
    net.disconnect("a", "c");
    net.disconnect("b", "c");
    for (let i = 0; i < 500; i += 10) a.store.patch("alerts", `d${String(i).padStart(4, "0")}`, { changed: true });
    await until(() => b.store.get("alerts", "d0490")?.changed === true, "the changes on b");
    const sent = (n: TestNode, type: string) => counter(n, "peat_sync_messages_sent_total", type);
    const before = { aItems: sent(a, "items"), bItems: sent(b, "items"), cItems: sent(c, "items"), bBatch: sent(b, "batch"), aBatch: sent(a, "batch") };
    net.connect("a", "c");
    net.connect("b", "c");
    await until(() => c.store.get("alerts", "d0490")?.changed === true && c.store.get("alerts", "d0000")?.changed === true, "the 50 changes on c");
    const state = (n: TestNode) => n.store.digest("alerts").map((r) => r.headsHash).join();
    await until(() => state(c) === state(a), "c equal to a");
    // Both a and b knew what c held: the first to connect sent the 50 deltas outright, with no
    // listing of ids, and the other had nothing left to send.
    expect(sent(a, "items") - before.aItems + sent(b, "items") - before.bItems + sent(c, "items") - before.cItems).toBe(0);
    expect(sent(a, "batch") - before.aBatch + sent(b, "batch") - before.bBatch).toBe(1);
  });
});

describe("the Automerge exchange", () => {
  test("a peer that asks again for changes it was sent (it lost them: a restart, an evicted queue) gets them again", async () => {
    const net = network();
    const a = await node(net, "a");
    // A bare transport stands in for the peer, so the test decides what it keeps.
    const peer = new MemoryTransport({ nodeId: "z", network: net });
    await peer.start();
    const replies: Extract<Entry, { t: "am" }>[] = [];
    peer.onMessage((_from, bytes) => {
      const message = decodeMessage(bytes);
      if (message.t === "batch") for (const e of message.entries) if (e.t === "am" && e.id === "n") replies.push(e);
    });
    a.store.put("notes", "n", { v: 1 });
    const held = Automerge.clone(a.store.getDoc("notes", "n")!);
    const { hlc, writer } = a.store.getVersion("notes", "n")!;
    a.store.put("notes", "n", { v: 2 });
    net.connect("a", "z");
    await until(() => a.transport.connectedPeers().includes("z"), "a connected to the peer");
    const send = (m: Uint8Array) => peer.send("a", encodeMessage({ t: "batch", entries: [{ t: "am", c: "notes", id: "n", m, hlc, w: writer }] }));

    let state = Automerge.initSyncState();
    let message: Uint8Array | null;
    [state, message] = Automerge.generateSyncMessage(held, state);
    send(message!);
    await until(() => replies.length === 1, "a's answer with the change the peer lacks");
    expect(Automerge.decodeSyncMessage(replies[0]!.m).changes.length).toBe(1);

    // The peer takes in a's answer but loses the change, so it names it in `need`.
    [, state] = Automerge.receiveSyncMessage(Automerge.clone(held), state, replies[0]!.m);
    [state, message] = Automerge.generateSyncMessage(held, state);
    expect(Automerge.decodeSyncMessage(message!).need.length).toBe(1);
    send(message!);
    await until(() => replies.length === 2, "a's second answer");
    expect(Automerge.decodeSyncMessage(replies[1]!.m).changes.length).toBe(1);
    const [doc] = Automerge.receiveSyncMessage(held, state, replies[1]!.m);
    expect(doc).toEqual({ v: 2 });
  });
});

describe("a malformed message drops the peer, never the node", () => {
  test.each([
    ["garbage bytes", new Uint8Array([0xc1, 0xff, 0x00])],
    ["an unknown type", encodeMessage({ t: "nope" } as never)],
    ["a bad collection name", encodeMessage({ t: "batch", entries: [{ t: "tomb", c: "../x", id: "a", hlc: "1", by: "b", at: 1 }] })],
    ["a wrong protocol version", encodeMessage({ t: "hello", v: 99 })],
    ["a malformed HLC", encodeMessage({ t: "batch", entries: [{ t: "tomb", c: "alerts", id: "a", hlc: "yesterday", by: "b", at: 1 }] })],
    ["an item outside its range", encodeMessage({ t: "items", c: "alerts", lo: "m", hi: "n", items: [["a", "0000000000000000"]] })],
    ["an undecodable Automerge message", encodeMessage({ t: "batch", entries: [{ t: "am", c: "notes", id: "n", m: new Uint8Array([1, 2, 3]), hlc: "001000000000000.000000@x", w: "x" }] })],
    ["an undecodable snapshot", encodeMessage({ t: "batch", entries: [{ t: "snap", c: "tracks", id: "n", data: new Uint8Array([9, 9, 9]), hlc: "001000000000000.000000@x", w: "x" }] })],
  ])("%s", async (_label, bytes) => {
    const net = network();
    const a = await node(net, "a");
    const b = await node(net, "b");
    a.store.put("alerts", "keep", { v: 1 });
    net.connect("a", "b");
    await until(() => b.store.get("alerts", "keep") !== undefined, "initial sync");
    b.transport.send("a", bytes);
    await until(() => a.transport.connectedPeers().length === 0, "a drops b");
    expect(a.store.get("alerts", "keep")).toEqual({ v: 1 });
    expect(a.store.count("alerts")).toBe(1);
    expect(a.metrics.render()).toMatch(/peat_sync_protocol_errors_total 1/);
    // a is still fine: it syncs with another peer.
    const c = await node(net, "c");
    net.connect("a", "c");
    await until(() => c.store.get("alerts", "keep") !== undefined, "a still syncs with c");
  });
});
