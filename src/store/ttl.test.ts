import { afterEach, describe, expect, test } from "bun:test";
import { silentLogger } from "../log.ts";
import { DocumentStore, type DocumentStoreOptions } from "./document-store.ts";
import { InvalidDocumentError } from "./errors.ts";
import { captureLogger, FakeClock, TestStores, waitFor } from "./testdata/helpers.ts";
import type { ChangeEvent } from "./types.ts";

const stores = new TestStores();
const temp = stores.temp;
afterEach(() => stores.cleanup());
const openStore = (opts: Partial<DocumentStoreOptions> = {}) => stores.start(opts);

describe("document TTL", () => {
  test("_ttl_secs expires the document: hidden at once, removed with a tombstone by the sweep", async () => {
    const clock = new FakeClock();
    const store = await openStore({ now: clock.now });
    store.put("c", "short", { _ttl_secs: 10, v: 1 });
    store.put("c", "forever", { v: 1 });
    const events: ChangeEvent[] = [];
    store.onChange((e) => events.push(e));
    clock.advance(9_999);
    expect(store.get("c", "short")).toEqual({ _ttl_secs: 10, v: 1 });
    clock.advance(1);
    // Expired: invisible to reads even before the sweep runs.
    expect(store.get("c", "short")).toBeUndefined();
    expect(store.list("c", { limit: 10 }).map((d) => d.id)).toEqual(["forever"]);
    expect(store.count("c")).toBe(1);
    expect(store.sweep()).toEqual({ expired: 1, purgedTombstones: 0 });
    expect(events).toEqual([{ collection: "c", id: "short", action: "delete", origin: "local" }]);
    const [t] = store.tombstones("c");
    expect(t).toMatchObject({ collection: "c", id: "short", deletedAt: clock.ms, deletedBy: "node-a" });
    expect(store.get("c", "forever")).toEqual({ v: 1 });
    expect(store.sweep()).toEqual({ expired: 0, purgedTombstones: 0 });
  });

  test("each write restarts the TTL; removing _ttl_secs removes the expiry", async () => {
    const clock = new FakeClock();
    const store = await openStore({ now: clock.now });
    store.put("c", "a", { _ttl_secs: 10, v: 1 });
    clock.advance(8_000);
    store.put("c", "a", { _ttl_secs: 10, v: 2 });
    clock.advance(8_000);
    expect(store.get("c", "a")).toEqual({ _ttl_secs: 10, v: 2 });
    // Re-sending identical content still refreshes the TTL (a keep-alive), without a new version.
    const version = store.getVersion("c", "a");
    store.put("c", "a", { _ttl_secs: 10, v: 2 });
    expect(store.getVersion("c", "a")).toEqual(version);
    clock.advance(8_000);
    expect(store.get("c", "a")).toBeDefined();
    store.patch("c", "a", { _ttl_secs: null });
    clock.advance(1_000_000);
    expect(store.sweep().expired).toBe(0);
    expect(store.get("c", "a")).toEqual({ v: 2 });
  });

  test("a per-collection default TTL applies to documents without their own", async () => {
    const clock = new FakeClock();
    const store = await openStore({ now: clock.now, collectionTtlSecs: { beacons: 60 } });
    store.put("beacons", "b1", { v: 1 });
    store.put("beacons", "b2", { v: 1, _ttl_secs: 600 });
    store.put("other", "o1", { v: 1 });
    clock.advance(61_000);
    expect(store.sweep().expired).toBe(1);
    expect(store.get("beacons", "b1")).toBeUndefined();
    expect(store.get("beacons", "b2")).toBeDefined();
    expect(store.get("other", "o1")).toBeDefined();
  });

  test("expiry survives a restart", async () => {
    const dataDir = temp.make();
    const clock = new FakeClock();
    const first = await openStore({ dataDir, now: clock.now });
    first.put("c", "a", { _ttl_secs: 30 });
    first.put("c", "b", { v: 1 });
    await first.stop();
    clock.advance(31_000);
    const second = await openStore({ dataDir, now: clock.now });
    expect(second.get("c", "a")).toBeUndefined();
    expect(second.sweep().expired).toBe(1);
    expect(second.tombstones("c").map((t) => t.id)).toEqual(["a"]);
    expect(second.get("c", "b")).toEqual({ v: 1 });
  });

  test("an expired document written again is created afresh", async () => {
    const clock = new FakeClock();
    const store = await openStore({ now: clock.now });
    store.put("c", "a", { _ttl_secs: 1, v: 1 });
    clock.advance(2_000);
    expect(store.put("c", "a", { _ttl_secs: 1, v: 1 })).toEqual({ created: true, document: { _ttl_secs: 1, v: 1 } });
    expect(store.get("c", "a")).toEqual({ _ttl_secs: 1, v: 1 });
    expect(store.sweep().expired).toBe(0);
  });

  test("invalid _ttl_secs is rejected", async () => {
    const store = await openStore();
    for (const ttl of [0, -5, "10", true, [1], { s: 1 }]) {
      expect(() => store.put("c", "a", { _ttl_secs: ttl })).toThrow(InvalidDocumentError);
    }
    expect(store.count("c")).toBe(0);
  });
});

describe("tombstone TTL", () => {
  test("tombstones older than the TTL are purged by the sweep", async () => {
    const clock = new FakeClock();
    const { log, lines } = captureLogger();
    const store = await openStore({ now: clock.now, tombstoneTtlSecs: 3600, log });
    store.put("c", "a", { v: 1 });
    store.put("c", "b", { v: 1 });
    store.delete("c", "a");
    clock.advance(1_800_000);
    store.delete("c", "b");
    clock.advance(1_800_001);
    expect(store.sweep()).toEqual({ expired: 0, purgedTombstones: 1 });
    expect(store.tombstones("c").map((t) => t.id)).toEqual(["b"]);
    expect(store.stats().tombstones).toBe(1);
    expect(lines.some((l) => l.includes("TTL sweep complete expired=0 tombstones_purged=1"))).toBe(true);
  });

  test("the default tombstone TTL is 7 days", async () => {
    const clock = new FakeClock();
    const store = await openStore({ now: clock.now });
    store.put("c", "a", { v: 1 });
    store.delete("c", "a");
    clock.advance(7 * 24 * 3600 * 1000 - 1);
    expect(store.sweep().purgedTombstones).toBe(0);
    clock.advance(2);
    expect(store.sweep().purgedTombstones).toBe(1);
  });
});

describe("sweep timer", () => {
  test("runs on its own at sweepIntervalMs", async () => {
    const clock = new FakeClock();
    const store = await openStore({ now: clock.now, sweepIntervalMs: 20 });
    store.put("c", "a", { _ttl_secs: 1 });
    clock.advance(1_000);
    await waitFor(() => store.tombstones("c").length === 1, "the timer sweep to tombstone the expired document");
    expect(store.stats().documents).toBe(0);
  }, 20_000);
});
