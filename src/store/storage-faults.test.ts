/**
 * Storage failures seen through the store: the right error class and status, reads unaffected,
 * and no trace of the failed write, neither on disk nor in the in-memory cache.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { Automerge } from "../automerge.ts";
import { InsufficientStorageError, StorageError } from "../errors.ts";
import { silentLogger } from "../log.ts";
import { DocumentStore } from "./document-store.ts";
import { renderDoc } from "./json.ts";
import { SqliteStorageAdapter } from "./sqlite-adapter.ts";
import { TempDirs } from "./testdata/helpers.ts";
import type { ChangeEvent } from "./types.ts";

const temp = new TempDirs();
const stores: DocumentStore[] = [];

afterEach(async () => {
  for (const s of stores.splice(0)) await s.stop();
  temp.cleanup();
});

async function openWithAdapter(): Promise<{ store: DocumentStore; adapter: SqliteStorageAdapter; dataDir: string }> {
  const dataDir = temp.make();
  const adapter = new SqliteStorageAdapter(`${dataDir}/automerge/peat.sqlite`);
  const store = new DocumentStore({ dataDir, nodeId: "node-a", log: silentLogger(), sweepIntervalMs: 0, adapter });
  stores.push(store);
  await store.start();
  return { store, adapter, dataDir };
}

/** Caps the file at its current size, so the next write that needs a new page fails SQLITE_FULL. */
function fillDisk(adapter: SqliteStorageAdapter): void {
  const pages = adapter.database.query<{ page_count: number }, []>("PRAGMA page_count").get()!.page_count;
  adapter.database.run(`PRAGMA max_page_count = ${pages}`);
}

function freeDisk(adapter: SqliteStorageAdapter): void {
  adapter.database.run("PRAGMA max_page_count = 1073741823");
}

const bulky = (tag: string) => ({ tag, payload: Array.from({ length: 400 }, (_, i) => `${tag}-${i}-${"x".repeat(40)}`) });

describe("disk full", () => {
  test("a write is InsufficientStorageError (507); the store is unchanged and still readable", async () => {
    const { store, adapter } = await openWithAdapter();
    store.put("c", "a", { v: 1 });
    store.put("c", "a", { v: 2 }); // now cached, with history
    const versionBefore = store.getVersion("c", "a");
    const statsBefore = store.stats();
    const events: ChangeEvent[] = [];
    store.onChange((e) => events.push(e));
    fillDisk(adapter);

    let error: unknown;
    try {
      store.put("c", "a", bulky("failed"));
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(InsufficientStorageError);
    expect((error as InsufficientStorageError).status).toBe(507);
    expect(() => store.put("c", "new", bulky("new"))).toThrow(InsufficientStorageError);

    // Reads work and show the last committed state.
    expect(store.get("c", "a")).toEqual({ v: 2 });
    expect(store.get("c", "new")).toBeUndefined();
    expect(store.list("c", { limit: 10 }).map((d) => d.id)).toEqual(["a"]);
    expect(store.getVersion("c", "a")).toEqual(versionBefore);
    expect(events).toEqual([]);
    // Same totals; the only difference is that the cache dropped the document it could not trust.
    expect({ ...store.stats(), cacheSize: statsBefore.cacheSize }).toEqual(statsBefore);
    expect(store.stats().cacheSize).toBe(0);

    // The cached Automerge document did not keep the failed change.
    const doc = store.getDoc("c", "a")!;
    expect(Automerge.toJS(doc)).toEqual({ v: 2 });
    expect(Automerge.getHeads(doc).length).toBe(1);

    // Space comes back: writes resume from the committed state.
    freeDisk(adapter);
    store.patch("c", "a", { w: 1 });
    expect(store.get("c", "a")).toEqual({ v: 2, w: 1 });
    expect(Automerge.toJS(store.getDoc("c", "a")!)).toEqual({ v: 2, w: 1 });
  });
});

describe("pending documents when storage fails", () => {
  test("stats still answers when pending documents cannot be encoded; encoding resumes later", async () => {
    const { store, adapter } = await openWithAdapter();
    for (let i = 0; i < 20; i++) store.put("c", `d${i}`, bulky(`d${i}`));
    expect(adapter.pendingDocs(100)).toHaveLength(20);
    fillDisk(adapter);
    const stats = store.stats();
    expect(stats.documents).toBe(20);
    expect(adapter.pendingDocs(100).length).toBeGreaterThan(0);
    expect(() => store.getDoc("c", "d19")).toThrow(InsufficientStorageError);
    expect(store.get("c", "d19")).toEqual(bulky("d19"));
    freeDisk(adapter);
    expect(store.stats().bytes).toBeGreaterThan(stats.bytes);
    expect(adapter.pendingDocs(100)).toEqual([]);
    expect(renderDoc(store.getDoc("c", "d19")!)).toEqual(bulky("d19"));
  });
});

describe("read-only storage", () => {
  test("writes fail with StorageError (500) naming the cause; reads keep working", async () => {
    const { store, adapter } = await openWithAdapter();
    store.put("c", "a", { v: 1 });
    adapter.database.run("PRAGMA query_only = ON");
    let error: unknown;
    try {
      store.put("c", "a", { v: 2 });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(StorageError);
    expect(error).not.toBeInstanceOf(InsufficientStorageError);
    expect((error as StorageError).status).toBe(500);
    expect((error as Error).message).toMatch(/read-only|readonly/i);
    expect(() => store.delete("c", "a")).toThrow(StorageError);
    expect(store.get("c", "a")).toEqual({ v: 1 });
    expect(store.tombstones("c")).toEqual([]);
    expect(store.count("c")).toBe(1);
    adapter.database.run("PRAGMA query_only = OFF");
    store.put("c", "a", { v: 3 });
    expect(store.get("c", "a")).toEqual({ v: 3 });
  });

  test("a failed remote application leaves the cached document without the remote change", async () => {
    const { store, adapter } = await openWithAdapter();
    const peer = await openWithAdapter();
    store.put("alerts", "x", { v: 1 });
    store.put("alerts", "x", { v: 2 });
    const changes = Automerge.getAllChanges(store.getDoc("alerts", "x")!);
    peer.store.applyRemoteChanges("alerts", "x", changes, store.getVersion("alerts", "x")!.hlc, "node-a");
    peer.store.patch("alerts", "x", { remote: true });
    const v = peer.store.getVersion("alerts", "x")!;
    const remoteChanges = Automerge.getAllChanges(peer.store.getDoc("alerts", "x")!);
    adapter.database.run("PRAGMA query_only = ON");
    expect(() => store.applyRemoteChanges("alerts", "x", remoteChanges, v.hlc, v.writer)).toThrow(StorageError);
    expect(Automerge.toJS(store.getDoc("alerts", "x")!)).toEqual({ v: 2 });
    adapter.database.run("PRAGMA query_only = OFF");
    expect(store.applyRemoteChanges("alerts", "x", remoteChanges, v.hlc, v.writer)).toBe("applied");
    expect(store.get("alerts", "x")).toEqual({ v: 2, remote: true });
  });
});
