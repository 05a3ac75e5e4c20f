import { afterEach, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Automerge } from "../automerge.ts";
import { NotFoundError, StorageError } from "../errors.ts";
import { silentLogger } from "../log.ts";
import type { DocRow, StorageAdapter } from "./adapter.ts";
import { DocumentStore, type DocumentStoreOptions, sqlitePathFor } from "./document-store.ts";
import { InvalidDocumentError, InvalidKeyError, StoreClosedError } from "./errors.ts";
import { renderDoc } from "./json.ts";
import { compareCodePoints, parseHlc } from "./hlc.ts";
import { MemoryStorageAdapter } from "./memory-adapter.ts";
import { SqliteStorageAdapter } from "./sqlite-adapter.ts";
import { captureLogger, FakeClock, TestStores, waitFor } from "./testdata/helpers.ts";
import type { ChangeEvent, JsonObject } from "./types.ts";

const stores = new TestStores();
const temp = stores.temp;
afterEach(() => stores.cleanup());
const openStore = (opts: Partial<DocumentStoreOptions> = {}) => stores.start(opts);

/** The store's adapter, to look at stored chunks and rows directly. */
function adapterOf(store: DocumentStore): StorageAdapter {
  return (store as unknown as { adapter: StorageAdapter }).adapter;
}

function concat(chunks: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(chunks));
}

function rowOf(store: DocumentStore, collection: string, id: string): DocRow {
  const row = adapterOf(store).getDoc(collection, id);
  if (!row) throw new Error(`no row ${collection}/${id}`);
  return row;
}

describe("DocumentStore lifecycle", () => {
  test("start opens SQLite under $dataDir/automerge and logs the path", async () => {
    const dataDir = temp.make();
    const { log, lines } = captureLogger();
    const store = await openStore({ dataDir, log });
    expect(store.name).toBe("store");
    expect(store.path).toBe(sqlitePathFor(dataDir));
    expect(store.path).toBe(join(dataDir, "automerge", "peat.sqlite"));
    expect(store.isOpen()).toBe(true);
    expect(lines.some((l) => l.includes(`Opening SQLite document store path=${store.path}`))).toBe(true);
    expect(await Bun.file(store.path).exists()).toBe(true);
    await store.stop();
    expect(store.isOpen()).toBe(false);
  });

  test("start fails with a StorageError when the data directory cannot be created", async () => {
    const dir = temp.make();
    const file = join(dir, "plain-file");
    writeFileSync(file, "x");
    const store = new DocumentStore({ dataDir: file, nodeId: "node-a", log: silentLogger(), sweepIntervalMs: 0 });
    await expect(store.start()).rejects.toBeInstanceOf(StorageError);
    await expect(store.start()).rejects.toThrow(/cannot create the store directory/);
    expect(store.isOpen()).toBe(false);
  });

  test("operations on a closed store are StoreClosedError (503)", async () => {
    const store = new DocumentStore({ dataDir: temp.make(), nodeId: "node-a", log: silentLogger(), sweepIntervalMs: 0 });
    expect(() => store.get("c", "a")).toThrow(StoreClosedError);
    await store.start();
    store.put("c", "a", { v: 1 });
    await store.stop();
    expect(() => store.put("c", "a", { v: 2 })).toThrow(StoreClosedError);
    expect(() => store.count("c")).toThrow(expect.objectContaining({ status: 503 }));
  });

  test("everything survives stop and restart, and the clock keeps moving forward", async () => {
    const dataDir = temp.make();
    const clock = new FakeClock();
    const first = await openStore({ dataDir, now: clock.now });
    first.put("c", "a", { v: 1, nested: { s: "x" } });
    first.put("c", "b", { v: 2 });
    first.delete("c", "b");
    const lastHlc = first.getTombstone("c", "b")!.hlc;
    await first.stop();
    clock.ms -= 60_000; // the wall clock went backwards across the restart
    const second = await openStore({ dataDir, now: clock.now });
    expect(second.get("c", "a")).toEqual({ v: 1, nested: { s: "x" } });
    expect(second.get("c", "b")).toBeUndefined();
    expect(second.tombstones("c").map((t) => t.id)).toEqual(["b"]);
    second.put("c", "a", { v: 3 });
    expect(compareCodePoints(second.getVersion("c", "a")!.hlc, lastHlc)).toBeGreaterThan(0);
  });

  test("runs on the in-memory adapter too", async () => {
    const store = await openStore({ adapter: new MemoryStorageAdapter() });
    expect(store.path).toBe(":memory:");
    store.put("c", "a", { v: 1 });
    store.put("c", "a", { v: 2 });
    expect(store.get("c", "a")).toEqual({ v: 2 });
    expect(store.delete("c", "a")).toBe(true);
    expect(store.tombstones("c")).toHaveLength(1);
  });
});

describe("DocumentStore CRUD", () => {
  test("put creates then replaces; get returns exactly what was written", async () => {
    const store = await openStore();
    const doc: JsonObject = { s: "text", i: 1, f: 2.5, b: true, n: null, o: { deep: [1, "a", { z: 0 }] }, big: 1e300 };
    expect(store.put("c", "a", doc)).toEqual({ created: true, document: doc });
    expect(store.get("c", "a")).toEqual(doc);
    const replacement = { s: "other", extra: [true] };
    expect(store.put("c", "a", replacement)).toEqual({ created: false, document: replacement });
    expect(store.get("c", "a")).toEqual(replacement);
    expect(store.get("c", "missing")).toBeUndefined();
  });

  test("the root _id is not stored", async () => {
    const store = await openStore();
    expect(store.put("c", "a", { _id: "a", v: 1 }).document).toEqual({ v: 1 });
    expect(store.get("c", "a")).toEqual({ v: 1 });
  });

  test("a no-op PUT adds no change, no version and no event", async () => {
    const store = await openStore();
    store.put("c", "a", { v: 1, o: { x: [1, 2] } });
    store.put("c", "a", { v: 2, o: { x: [1, 2] } }); // now cached
    const before = rowOf(store, "c", "a");
    const events: ChangeEvent[] = [];
    store.onChange((e) => events.push(e));
    const writes = store.stats().writes;
    // Different key order: not byte-identical JSON, still no Automerge change.
    expect(store.put("c", "a", { o: { x: [1, 2] }, v: 2 })).toEqual({ created: false, document: { o: { x: [1, 2] }, v: 2 } });
    expect(store.put("c", "a", { v: 2, o: { x: [1, 2] } }).created).toBe(false);
    const after = rowOf(store, "c", "a");
    expect(after.headsHash).toBe(before.headsHash);
    expect(after.hlc).toBe(before.hlc);
    expect(after.snapshotBytes + after.incrementBytes).toBe(before.snapshotBytes + before.incrementBytes);
    expect(events).toEqual([]);
    expect(store.stats().writes).toBe(writes);
  });

  test("patch applies a JSON merge patch; absent or deleted documents are NotFoundError", async () => {
    const store = await openStore();
    store.put("c", "a", { keep: 1, drop: 2, nested: { x: 1, y: 2 } });
    expect(store.patch("c", "a", { drop: null, nested: { y: null, z: 3 }, added: "s" })).toEqual({
      keep: 1,
      nested: { x: 1, z: 3 },
      added: "s",
    });
    expect(store.get("c", "a")).toEqual({ keep: 1, nested: { x: 1, z: 3 }, added: "s" });
    expect(() => store.patch("c", "nope", { a: 1 })).toThrow(NotFoundError);
    store.delete("c", "a");
    expect(() => store.patch("c", "a", { a: 1 })).toThrow(NotFoundError);
    expect(() => store.patch("c", "x", [] as unknown as JsonObject)).toThrow(InvalidDocumentError);
  });

  test("delete leaves a tombstone and reports absence; a later put re-creates the document", async () => {
    const clock = new FakeClock();
    const store = await openStore({ now: clock.now });
    store.put("c", "a", { v: 1 });
    const versionBefore = store.getVersion("c", "a")!;
    expect(store.delete("c", "a")).toBe(true);
    expect(store.delete("c", "a")).toBe(false);
    expect(store.get("c", "a")).toBeUndefined();
    const [t] = store.tombstones("c");
    expect(t).toEqual({ collection: "c", id: "a", deletedAt: clock.ms, deletedBy: "node-a", hlc: t!.hlc });
    expect(compareCodePoints(t!.hlc, versionBefore.hlc)).toBeGreaterThan(0);
    expect(store.put("c", "a", { v: 2 })).toEqual({ created: true, document: { v: 2 } });
    expect(store.get("c", "a")).toEqual({ v: 2 });
    // FullHistory: the delete's tombstone stays beside the re-created document (it tells peers that
    // hold the old history to replace it, not merge it); a LatestOnly one is cleared.
    expect(store.tombstones("c")).toEqual([t!]);
    expect(compareCodePoints(store.getVersion("c", "a")!.hlc, t!.hlc)).toBeGreaterThan(0);
    store.put("tracks", "p", { v: 1 });
    store.delete("tracks", "p");
    store.put("tracks", "p", { v: 2 });
    expect(store.tombstones("tracks")).toEqual([]);
  });

  test("list orders by id in byte order and pages with after; count and collections come from SQL", async () => {
    const store = await openStore();
    const ids = ["b", "a", "\u{1F600}", "\uFF5E", "B", "a0", "é", "a-1"];
    for (const id of ids) store.put("c", id, { id });
    store.put("other", "x", { x: 1 });
    const expected = [...ids].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    expect(store.list("c", { limit: 100 }).map((d) => d.id)).toEqual(expected);
    const page1 = store.list("c", { limit: 3 });
    const page2 = store.list("c", { limit: 3, after: page1.at(-1)!.id });
    const page3 = store.list("c", { limit: 3, after: page2.at(-1)!.id });
    expect([...page1, ...page2, ...page3].map((d) => d.id)).toEqual(expected);
    expect(page1[0]).toEqual({ id: expected[0]!, document: { id: expected[0]! } });
    expect(store.list("c", { limit: 0 })).toEqual([]);
    expect(() => store.list("c", { limit: -1 })).toThrow(/limit/);
    expect(store.count("c")).toBe(ids.length);
    expect(store.count("empty")).toBe(0);
    expect(store.collections()).toEqual([
      { name: "c", count: ids.length },
      { name: "other", count: 1 },
    ]);
  });

  test("invalid keys and documents are rejected before anything is written", async () => {
    const store = await openStore();
    expect(() => store.put("", "a", {})).toThrow(InvalidKeyError);
    expect(() => store.put("c", "", {})).toThrow(InvalidKeyError);
    expect(() => store.put("c", "a\u0000b", {})).toThrow(InvalidKeyError);
    expect(() => store.put("c", "\ud800", {})).toThrow(InvalidKeyError);
    expect(() => store.put("c", "x".repeat(1025), {})).toThrow(InvalidKeyError);
    expect(() => store.put("c", "a", { v: Number.NaN })).toThrow(InvalidDocumentError);
    expect(() => store.put("c", "a", [] as unknown as JsonObject)).toThrow(InvalidDocumentError);
    expect(() => store.put("c", "a", { v: Number.POSITIVE_INFINITY })).toThrow(expect.objectContaining({ status: 400 }));
    expect(store.count("c")).toBe(0);
  });

  test("change events: upsert and delete with origin local; unsubscribe works; a throwing listener is contained", async () => {
    const store = await openStore();
    const events: ChangeEvent[] = [];
    store.onChange(() => {
      throw new Error("listener bug");
    });
    const off = store.onChange((e) => events.push(e));
    store.put("c", "a", { v: 1 });
    store.put("c", "a", { v: 2 });
    store.patch("c", "a", { w: 1 });
    store.delete("c", "a");
    off();
    store.put("c", "b", { v: 1 });
    expect(events).toEqual([
      { collection: "c", id: "a", action: "upsert", origin: "local" },
      { collection: "c", id: "a", action: "upsert", origin: "local" },
      { collection: "c", id: "a", action: "upsert", origin: "local" },
      { collection: "c", id: "a", action: "delete", origin: "local" },
    ]);
  });

  test("stats track documents, tombstones, bytes and writes, matching a fresh SQL count", async () => {
    const store = await openStore();
    expect(store.stats()).toEqual({ documents: 0, tombstones: 0, bytes: 0, writes: 0, cacheSize: 0, compactionRuns: 0 });
    store.put("c", "a", { v: 1 });
    store.put("c", "b", { v: 1 });
    store.put("c", "a", { v: 2 });
    store.delete("c", "b");
    store.put("c", "b", { v: 3 });
    store.delete("c", "a");
    const stats = store.stats(); // encodes pending documents first, so bytes are exact
    expect(stats.writes).toBe(6);
    const fresh = adapterOf(store).totals();
    expect({ documents: stats.documents, tombstones: stats.tombstones, bytes: stats.bytes }).toEqual(fresh);
    expect(fresh.documents).toBe(1);
    // a's, and b's first delete's, which stays beside the re-created b until b is deleted again.
    expect(fresh.tombstones).toBe(2);
    expect(fresh.bytes).toBeGreaterThan(0);
    // Deleting the re-created b replaces the tombstone beside it: still one per id, totals exact.
    store.delete("c", "b");
    const after = store.stats();
    expect({ documents: after.documents, tombstones: after.tombstones, bytes: after.bytes }).toEqual(adapterOf(store).totals());
    expect(after.tombstones).toBe(2);
  });
});

describe("DocumentStore persistence layout", () => {
  test("updates append increments; the snapshot is re-folded once increments outweigh it", async () => {
    const store = await openStore();
    store.put("c", "a", { name: "node", lat: 1.5, lon: 2.5, tags: ["a", "b", "c"], meta: { up: true, note: "x".repeat(200) } });
    store.flushPending();
    const created = rowOf(store, "c", "a");
    expect(created.incrementBytes).toBe(0);
    expect(adapterOf(store).readChunks("c", "a")).toHaveLength(1);

    store.put("c", "a", { name: "node", lat: 1.6, lon: 2.5, tags: ["a", "b", "c"], meta: { up: true, note: "x".repeat(200) } });
    const updated = rowOf(store, "c", "a");
    const chunks = adapterOf(store).readChunks("c", "a");
    expect(chunks).toHaveLength(2);
    // The write stored only the new change, far smaller than the document.
    expect(updated.snapshotBytes).toBe(created.snapshotBytes);
    expect(updated.incrementBytes).toBe(chunks[1]!.length);
    expect(updated.incrementBytes).toBeLessThan(created.snapshotBytes / 2);

    let folded = false;
    for (let i = 0; i < 50 && !folded; i++) {
      const before = rowOf(store, "c", "a");
      store.put("c", "a", { name: "node", lat: 2 + i, lon: 2.5, tags: ["a", "b", "c"], meta: { up: true, note: "x".repeat(200) } });
      const after = rowOf(store, "c", "a");
      if (after.incrementBytes === 0) {
        folded = true;
        // Folding happened exactly when the increments would have outgrown the snapshot.
        expect(before.incrementBytes).toBeLessThanOrEqual(before.snapshotBytes);
        expect(adapterOf(store).readChunks("c", "a")).toHaveLength(1);
      } else {
        expect(after.incrementBytes).toBeLessThanOrEqual(after.snapshotBytes);
      }
    }
    expect(folded).toBe(true);
    // Whatever the chunk layout, the stored bytes load to the current state.
    const loaded = Automerge.load<unknown>(store.getDocBytes("c", "a")!);
    expect(Automerge.toJS(loaded)).toMatchObject({ lon: 2.5 });
    expect(store.get("c", "a")?.lat).toBe(Automerge.toJS(loaded as { lat: number }).lat);
  });

  test("history survives a restart: the reloaded document continues with the same actor", async () => {
    const dataDir = temp.make();
    const first = await openStore({ dataDir });
    first.put("c", "a", { v: 1 });
    first.put("c", "a", { v: 2 });
    const actor = Automerge.getActorId(first.getDoc("c", "a")!);
    const changes = Automerge.getAllChanges(first.getDoc("c", "a")!).length;
    await first.stop();
    const second = await openStore({ dataDir });
    second.put("c", "a", { v: 3 });
    const doc = second.getDoc("c", "a")!;
    expect(Automerge.getActorId(doc)).toBe(actor);
    expect(Automerge.getAllChanges(doc).length).toBe(changes + 1);
    expect(Automerge.toJS(doc)).toEqual({ v: 3 });
  });

  test("a re-created document gets a fresh actor, so its new history never reuses sequence numbers", async () => {
    const store = await openStore();
    store.put("c", "a", { v: 1 });
    const first = rowOf(store, "c", "a").actor;
    store.delete("c", "a");
    store.put("c", "a", { v: 2 });
    expect(rowOf(store, "c", "a").actor).not.toBe(first);
  });

  test("every row records its HLC, writer and a heads hash matching the document", async () => {
    const store = await openStore();
    store.put("c", "a", { v: 1 });
    const heads = Automerge.getHeads(store.getDoc("c", "a")!);
    const row = rowOf(store, "c", "a");
    expect(parseHlc(row.hlc).nodeId).toBe("node-a");
    expect(row.writer).toBe("node-a");
    const expected = new Bun.CryptoHasher("sha256").update([...heads].sort().join(",")).digest("hex").slice(0, 16);
    expect(row.headsHash).toBe(expected);
    expect(store.digest("c")).toEqual([{ id: "a", headsHash: expected, hlc: row.hlc, writer: "node-a" }]);
  });
});

describe("DocumentStore write-behind encoding of new documents", () => {
  test("a create commits JSON only; the background encoder builds the Automerge form soon after", async () => {
    const store = await openStore();
    store.put("c", "a", { v: 1, s: "x" });
    const pending = rowOf(store, "c", "a");
    expect(pending.headsHash).toBe("");
    expect(pending.snapshotBytes).toBe(0);
    expect(adapterOf(store).readChunks("c", "a")).toEqual([]);
    expect(store.get("c", "a")).toEqual({ v: 1, s: "x" });
    await waitFor(() => rowOf(store, "c", "a").headsHash !== "", "the encoder to build c/a");
    const built = rowOf(store, "c", "a");
    expect(built.snapshotBytes).toBeGreaterThan(0);
    expect(built.hlc).toBe(pending.hlc);
    const doc = Automerge.load<unknown>(concat(adapterOf(store).readChunks("c", "a")));
    expect(renderDoc(doc)).toEqual({ v: 1, s: "x" });
    expect(Automerge.getActorId(doc)).not.toBe("");
    expect(Automerge.decodeChange(Automerge.getAllChanges(doc)[0]!).actor).toBe(pending.actor);
  }, 20_000);

  test("the Automerge form depends only on the row: building it twice gives the same bytes", async () => {
    const a = await openStore({ adapter: new MemoryStorageAdapter() });
    a.put("c", "x", { v: 1, nested: { l: [1, 2e300, "s"] } });
    const row = rowOf(a, "c", "x");
    const b = await openStore({ adapter: new MemoryStorageAdapter() });
    adapterOf(b).writeDoc(row, { kind: "none" });
    expect(a.getDocBytes("c", "x")).toEqual(b.getDocBytes("c", "x")!);
    expect(a.getVersion("c", "x")).toEqual(b.getVersion("c", "x")!);
  });

  test("anything that needs Automerge builds the pending form first: getDoc, bytes, version, digest, update", async () => {
    const store = await openStore();
    for (const id of ["a", "b", "c", "d", "e"]) store.put("col", id, { id });
    expect(renderDoc(store.getDoc("col", "a")!)).toEqual({ id: "a" });
    expect(renderDoc(Automerge.load(store.getDocBytes("col", "b")!))).toEqual({ id: "b" });
    expect(store.getVersion("col", "c")!.headsHash).toMatch(/^[0-9a-f]{16}$/);
    store.put("col", "d", { id: "d", updated: true });
    expect(Automerge.getAllChanges(store.getDoc("col", "d")!)).toHaveLength(2);
    expect(store.digest("col").map((r) => r.headsHash.length)).toEqual([16, 16, 16, 16, 16]);
    expect(adapterOf(store).pendingDocs(10)).toEqual([]);
  });

  test("the backlog stays bounded when creates outpace the encoder (writers encode inline)", async () => {
    const store = await openStore();
    // One synchronous burst: the background encoder never gets the thread.
    for (let i = 0; i < 6_000; i++) store.put("burst", `d${i}`, { i });
    const pending = adapterOf(store).pendingDocs(10_000).length;
    expect(pending).toBeLessThanOrEqual(5_001);
    expect(pending).toBeGreaterThan(4_000);
    expect(store.count("burst")).toBe(6_000);
  }, 30_000);

  test("rows still pending when the process stopped are encoded after the next start", async () => {
    const dataDir = temp.make();
    const first = await openStore({ dataDir });
    for (let i = 0; i < 10; i++) first.put("c", `d${i}`, { i });
    expect(adapterOf(first).pendingDocs(100)).toHaveLength(10);
    await first.stop(); // before the encoder's first slice
    const second = await openStore({ dataDir });
    await waitFor(() => adapterOf(second).pendingDocs(100).length === 0, "the encoder to catch up after restart");
    for (let i = 0; i < 10; i++) expect(renderDoc(second.getDoc("c", `d${i}`)!)).toEqual({ i });
    expect(second.stats().bytes).toBeGreaterThan(0);
  }, 20_000);
});

describe("DocumentStore cache", () => {
  test("the cache is bounded; listing and reading never load documents into it", async () => {
    const store = await openStore({ cacheSize: 5 });
    for (let i = 0; i < 20; i++) store.put("c", `d${i}`, { i });
    expect(store.stats().cacheSize).toBe(0); // created documents are not admitted
    expect(store.list("c", { limit: 100 })).toHaveLength(20);
    for (let i = 0; i < 20; i++) expect(store.get("c", `d${i}`)).toEqual({ i });
    expect(store.stats().cacheSize).toBe(0);
    for (let i = 0; i < 20; i++) store.put("c", `d${i}`, { i, updated: true });
    expect(store.stats().cacheSize).toBe(5);
    for (let i = 0; i < 20; i++) expect(store.get("c", `d${i}`)).toEqual({ i, updated: true });
  });

  test("evicted documents are reloaded from storage with their full state", async () => {
    const store = await openStore({ cacheSize: 2 });
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 6; i++) store.put("c", `d${i}`, { i, round, list: Array.from({ length: round + 1 }, (_, k) => k) });
    }
    for (let i = 0; i < 6; i++) {
      expect(store.get("c", `d${i}`)).toEqual({ i, round: 2, list: [0, 1, 2] });
      expect(Automerge.getAllChanges(store.getDoc("c", `d${i}`)!).length).toBe(3);
    }
    expect(store.stats().cacheSize).toBe(2);
  });

  test("a document handed out by getDoc stays usable after eviction", async () => {
    const store = await openStore({ cacheSize: 1 });
    store.put("c", "a", { v: 1 });
    const doc = store.getDoc("c", "a")!;
    store.put("c", "b", { v: 1 });
    store.put("c", "b", { v: 2 }); // evicts a
    expect(Automerge.toJS(doc)).toEqual({ v: 1 });
    expect(Automerge.save(doc).length).toBeGreaterThan(0);
  });

  test("getDoc returns a document whose fields reflect writes made without refreshing its view", async () => {
    const store = await openStore();
    store.put("c", "a", { v: 1 });
    store.put("c", "a", { v: 2, o: { x: "y" } });
    const doc = store.getDoc("c", "a") as Automerge.Doc<{ v: number; o: { x: unknown } }>;
    expect(doc.v).toBe(2);
    expect(String(doc.o.x)).toBe("y");
    store.put("c", "a", { v: 3, o: { x: "z" } });
    const again = store.getDoc("c", "a") as Automerge.Doc<{ v: number }>;
    expect(again.v).toBe(3);
  });
});
