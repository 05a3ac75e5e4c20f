import { afterEach, describe, expect, test } from "bun:test";
import { Automerge } from "../automerge.ts";
import { silentLogger } from "../log.ts";
import { DocumentStore, type DocumentStoreOptions } from "./document-store.ts";
import { InvalidHlcError, InvalidRemoteDataError } from "./errors.ts";
import { MAX_REMOTE_AHEAD_MS, compareCodePoints, formatHlc } from "./hlc.ts";
import { FakeClock, TempDirs } from "./testdata/helpers.ts";
import type { ChangeEvent } from "./types.ts";

const temp = new TempDirs();
const stores: DocumentStore[] = [];

afterEach(async () => {
  for (const s of stores.splice(0)) await s.stop();
  temp.cleanup();
});

async function openStore(nodeId: string, opts: Partial<DocumentStoreOptions> = {}): Promise<DocumentStore> {
  const store = new DocumentStore({ dataDir: temp.make(), nodeId, log: silentLogger(), sweepIntervalMs: 0, ...opts });
  stores.push(store);
  await store.start();
  return store;
}

function recorder(store: DocumentStore): ChangeEvent[] {
  const events: ChangeEvent[] = [];
  store.onChange((e) => events.push(e));
  return events;
}

/** Sends everything `from` has for a FullHistory document to `to`, as the sync layer would. */
function pushChanges(from: DocumentStore, to: DocumentStore, collection: string, id: string) {
  const doc = from.getDoc(collection, id)!;
  const version = from.getVersion(collection, id)!;
  return to.applyRemoteChanges(collection, id, Automerge.getAllChanges(doc), version.hlc, version.writer);
}

function pushSnapshot(from: DocumentStore, to: DocumentStore, collection: string, id: string) {
  const version = from.getVersion(collection, id)!;
  return to.applyRemoteSnapshot(collection, id, from.getDocBytes(collection, id)!, version.hlc, version.writer);
}

describe("FullHistory: merging remote changes", () => {
  test("applying a peer's changes creates the document, records the peer's version, emits a remote upsert", async () => {
    const a = await openStore("node-a");
    const b = await openStore("node-b");
    a.put("alerts", "x", { level: "high", tags: ["t"] });
    const events = recorder(b);
    expect(pushChanges(a, b, "alerts", "x")).toBe("applied");
    expect(b.get("alerts", "x")).toEqual({ level: "high", tags: ["t"] });
    expect(b.getVersion("alerts", "x")).toEqual(a.getVersion("alerts", "x"));
    expect(b.digest("alerts")).toEqual(a.digest("alerts"));
    expect(events).toEqual([{ collection: "alerts", id: "x", action: "upsert", origin: "remote" }]);
    expect(pushChanges(a, b, "alerts", "x")).toBe("unchanged");
    expect(events).toHaveLength(1);
  });

  test("concurrent edits to different fields converge on both nodes", async () => {
    const a = await openStore("node-a");
    const b = await openStore("node-b");
    a.put("alerts", "x", { level: "low", ack: false, note: "n" });
    pushChanges(a, b, "alerts", "x");
    a.patch("alerts", "x", { level: "high" });
    b.patch("alerts", "x", { ack: true });
    expect(pushChanges(a, b, "alerts", "x")).toBe("applied");
    expect(pushChanges(b, a, "alerts", "x")).toBe("applied");
    const expected = { level: "high", ack: true, note: "n" };
    expect(a.get("alerts", "x")).toEqual(expected);
    expect(b.get("alerts", "x")).toEqual(expected);
    expect(a.digest("alerts")[0]!.headsHash).toBe(b.digest("alerts")[0]!.headsHash);
    // The merged version is the newer of the two writes on both sides.
    expect(a.getVersion("alerts", "x")).toEqual(b.getVersion("alerts", "x"));
    // A later local write continues the merged history and survives reload.
    b.patch("alerts", "x", { note: "m" });
    expect(pushChanges(b, a, "alerts", "x")).toBe("applied");
    expect(a.get("alerts", "x")).toEqual({ level: "high", ack: true, note: "m" });
  });

  test("mergeRemoteDoc merges a whole peer document", async () => {
    const a = await openStore("node-a");
    const b = await openStore("node-b");
    a.put("alerts", "x", { v: 1 });
    const v = a.getVersion("alerts", "x")!;
    expect(b.mergeRemoteDoc("alerts", "x", a.getDoc("alerts", "x")!, v.hlc, v.writer)).toBe("applied");
    expect(b.get("alerts", "x")).toEqual({ v: 1 });
  });

  test("applyRemoteWith runs an arbitrary Automerge update (e.g. a sync message) and persists it", async () => {
    const a = await openStore("node-a");
    const b = await openStore("node-b");
    a.put("alerts", "x", { v: 1, list: [1, 2] });
    const [, message] = Automerge.generateSyncMessage(a.getDoc("alerts", "x")!, Automerge.initSyncState());
    const v = a.getVersion("alerts", "x")!;
    const outcome = b.applyRemoteWith("alerts", "x", v, (doc) => Automerge.receiveSyncMessage(doc, Automerge.initSyncState(), message!)[0]);
    // The first sync message carries only heads, not changes: nothing to persist yet.
    expect(outcome).toBe("unchanged");
    const changes = Automerge.getAllChanges(a.getDoc("alerts", "x")!);
    expect(b.applyRemoteWith("alerts", "x", v, (doc) => Automerge.applyChanges(doc, changes)[0])).toBe("applied");
    expect(b.get("alerts", "x")).toEqual({ v: 1, list: [1, 2] });
  });

  test("changes whose dependencies are missing are not persisted", async () => {
    const a = await openStore("node-a");
    const b = await openStore("node-b");
    a.put("alerts", "x", { v: 1 });
    a.put("alerts", "x", { v: 2 });
    const all = Automerge.getAllChanges(a.getDoc("alerts", "x")!);
    const v = a.getVersion("alerts", "x")!;
    expect(b.applyRemoteChanges("alerts", "x", all.slice(1), v.hlc, v.writer)).toBe("missing-deps");
    expect(b.get("alerts", "x")).toBeUndefined();
    expect(b.digest("alerts")).toEqual([]);
    expect(b.applyRemoteChanges("alerts", "x", all, v.hlc, v.writer)).toBe("applied");
    expect(b.get("alerts", "x")).toEqual({ v: 2 });
  });

  test("a change waiting for a missing dependency stays queued (unpersisted) and applies when the dependency arrives", async () => {
    const a = await openStore("node-a");
    const b = await openStore("node-b");
    a.put("alerts", "x", { v: 1 });
    pushChanges(a, b, "alerts", "x");
    a.put("alerts", "x", { v: 2 });
    a.put("alerts", "x", { v: 3 });
    const [, second, third] = Automerge.getAllChanges(a.getDoc("alerts", "x")!);
    const v = a.getVersion("alerts", "x")!;
    // The Automerge exchange asks the peer only for the missing dependency, not for the queued
    // change again: dropping it would leave b at v2 for good.
    expect(b.applyRemoteChanges("alerts", "x", [third!], v.hlc, v.writer)).toBe("missing-deps");
    expect(b.get("alerts", "x")).toEqual({ v: 1 });
    expect(b.applyRemoteChanges("alerts", "x", [second!], v.hlc, v.writer)).toBe("applied");
    expect(b.get("alerts", "x")).toEqual({ v: 3 });
    expect(b.getVersion("alerts", "x")!.headsHash).toBe(v.headsHash);
  });

  test("garbage change bytes are InvalidRemoteDataError and leave the stored document intact", async () => {
    const a = await openStore("node-a");
    a.put("alerts", "x", { v: 1 });
    a.put("alerts", "x", { v: 2 });
    const hlc = formatHlc({ wallMs: Date.now() + 1000, counter: 0, nodeId: "node-z" });
    expect(() => a.applyRemoteChanges("alerts", "x", [new Uint8Array([1, 2, 3])], hlc, "node-z")).toThrow(InvalidRemoteDataError);
    expect(a.get("alerts", "x")).toEqual({ v: 2 });
    a.put("alerts", "x", { v: 3 });
    expect(a.get("alerts", "x")).toEqual({ v: 3 });
  });
});

describe("tombstones from peers", () => {
  test("a remote tombstone deletes an older copy and blocks resurrection by older changes", async () => {
    const a = await openStore("node-a");
    const b = await openStore("node-b");
    const c = await openStore("node-c");
    a.put("alerts", "x", { v: 1 });
    pushChanges(a, b, "alerts", "x");
    pushChanges(a, c, "alerts", "x");
    a.delete("alerts", "x");
    const [tombstone] = a.tombstones("alerts");
    const events = recorder(b);
    expect(b.applyRemoteTombstone(tombstone!)).toBe("applied");
    expect(b.get("alerts", "x")).toBeUndefined();
    expect(b.tombstones("alerts")).toEqual([tombstone!]);
    expect(events).toEqual([{ collection: "alerts", id: "x", action: "delete", origin: "remote" }]);
    // C still has the old copy and pushes it: refused.
    expect(pushChanges(c, b, "alerts", "x")).toBe("superseded");
    expect(pushSnapshot(c, b, "alerts", "x")).toBe("superseded");
    expect(b.get("alerts", "x")).toBeUndefined();
    // Same tombstone again: nothing new.
    expect(b.applyRemoteTombstone(tombstone!)).toBe("unchanged");
  });

  test("a copy written after the delete re-creates the document and clears the tombstone", async () => {
    const a = await openStore("node-a");
    const b = await openStore("node-b");
    a.put("alerts", "x", { v: 1 });
    pushChanges(a, b, "alerts", "x");
    a.delete("alerts", "x");
    b.applyRemoteTombstone(a.tombstones("alerts")[0]!);
    // A writes again (its clock is past its own delete), then B hears about it.
    a.put("alerts", "x", { v: 2 });
    expect(pushChanges(a, b, "alerts", "x")).toBe("applied");
    expect(b.get("alerts", "x")).toEqual({ v: 2 });
    expect(b.tombstones("alerts")).toEqual([]);
  });

  test("a document re-created after a delete carries the delete as its epoch: an older copy elsewhere is replaced, not merged", async () => {
    const a = await openStore("node-a");
    const b = await openStore("node-b");
    a.put("alerts", "x", { v: 1, old: "field" });
    pushChanges(a, b, "alerts", "x");
    a.delete("alerts", "x");
    a.put("alerts", "x", { v: 2 });
    const [epoch] = a.tombstones("alerts");
    expect(a.get("alerts", "x")).toEqual({ v: 2 });
    const doc = a.getDoc("alerts", "x")!;
    const version = a.getVersion("alerts", "x")!;
    const apply = (e?: string) =>
      b.applyRemoteWith("alerts", "x", { hlc: version.hlc, writer: version.writer, ...(e ? { epoch: e } : {}) }, (d) =>
        Automerge.applyChanges(d, Automerge.getAllChanges(doc))[0],
      );
    // An epoch not older than the version it comes with is nonsense from the peer.
    expect(() => apply(version.hlc)).toThrow(InvalidRemoteDataError);
    const events = recorder(b);
    expect(apply(epoch!.hlc)).toBe("applied");
    expect(b.get("alerts", "x")).toEqual({ v: 2 });
    expect(b.tombstones("alerts")).toEqual([{ ...epoch!, deletedAt: b.tombstones("alerts")[0]!.deletedAt }]);
    expect(b.digest("alerts")).toEqual(a.digest("alerts"));
    expect(events.map((e) => e.action)).toEqual(["delete", "upsert"]);
  });

  test("a tombstone older than the stored copy loses; an older tombstone never replaces a newer one", async () => {
    const clock = new FakeClock();
    const b = await openStore("node-b", { now: clock.now });
    b.put("alerts", "x", { v: 1 });
    const old = { collection: "alerts", id: "x", deletedAt: clock.ms - 10_000, deletedBy: "node-a", hlc: formatHlc({ wallMs: clock.ms - 10_000, counter: 0, nodeId: "node-a" }) };
    expect(b.applyRemoteTombstone(old)).toBe("superseded");
    expect(b.get("alerts", "x")).toEqual({ v: 1 });
    expect(b.tombstones("alerts")).toEqual([]);

    const newer = { ...old, id: "y", hlc: formatHlc({ wallMs: clock.ms + 5, counter: 0, nodeId: "node-a" }) };
    const older = { ...old, id: "y", deletedBy: "node-c", hlc: formatHlc({ wallMs: clock.ms + 1, counter: 0, nodeId: "node-c" }) };
    expect(b.applyRemoteTombstone(newer)).toBe("applied");
    expect(b.applyRemoteTombstone(older)).toBe("superseded");
    expect(b.getTombstone("alerts", "y")).toEqual(newer);
    expect(b.stats().tombstones).toBe(1);
  });

  test("malformed tombstones are rejected", async () => {
    const b = await openStore("node-b");
    expect(() => b.applyRemoteTombstone({ collection: "c", id: "x", deletedAt: 1, deletedBy: "n", hlc: "yesterday" })).toThrow(InvalidHlcError);
    const hlc = formatHlc({ wallMs: 1, counter: 0, nodeId: "n" });
    expect(() => b.applyRemoteTombstone({ collection: "c", id: "x", deletedAt: Number.NaN, deletedBy: "n", hlc })).toThrow(InvalidRemoteDataError);
    expect(() => b.applyRemoteTombstone({ collection: "c", id: "x", deletedAt: 1, deletedBy: "", hlc })).toThrow(InvalidRemoteDataError);
  });
});

describe("LatestOnly: last-writer-wins snapshots", () => {
  test("a newer snapshot replaces the local copy wholesale; older and equal ones are ignored", async () => {
    const clock = new FakeClock();
    const a = await openStore("node-a", { now: clock.now });
    const b = await openStore("node-b", { now: clock.now });
    b.put("beacons", "n1", { lat: 1, stale: true });
    clock.advance(1);
    a.put("beacons", "n1", { lat: 2 });
    const events = recorder(b);
    expect(pushSnapshot(a, b, "beacons", "n1")).toBe("applied");
    // Replaced, not merged: B's "stale" key is gone even though A never deleted it.
    expect(b.get("beacons", "n1")).toEqual({ lat: 2 });
    expect(b.getVersion("beacons", "n1")).toEqual(a.getVersion("beacons", "n1"));
    expect(events).toEqual([{ collection: "beacons", id: "n1", action: "upsert", origin: "remote" }]);
    expect(pushSnapshot(a, b, "beacons", "n1")).toBe("unchanged");

    // B writes locally: its clock has seen A's stamp, so B's write is newer and wins back.
    b.put("beacons", "n1", { lat: 3 });
    expect(compareCodePoints(b.getVersion("beacons", "n1")!.hlc, a.getVersion("beacons", "n1")!.hlc)).toBeGreaterThan(0);
    expect(pushSnapshot(a, b, "beacons", "n1")).toBe("superseded");
    expect(b.get("beacons", "n1")).toEqual({ lat: 3 });
    expect(pushSnapshot(b, a, "beacons", "n1")).toBe("applied");
    expect(a.get("beacons", "n1")).toEqual({ lat: 3 });
  });

  test("equal HLCs are broken by the higher writer id", async () => {
    const src = await openStore("node-src");
    const b = await openStore("node-b");
    src.put("beacons", "n1", { from: "x" });
    const bytes = src.getDocBytes("beacons", "n1")!;
    src.put("beacons", "n1", { from: "y" });
    const bytes2 = src.getDocBytes("beacons", "n1")!;
    const hlc = formatHlc({ wallMs: Date.now() + 60_000, counter: 0, nodeId: "node-m" });
    expect(b.applyRemoteSnapshot("beacons", "n1", bytes, hlc, "node-m")).toBe("applied");
    expect(b.applyRemoteSnapshot("beacons", "n1", bytes2, hlc, "node-a")).toBe("superseded");
    expect(b.get("beacons", "n1")).toEqual({ from: "x" });
    expect(b.applyRemoteSnapshot("beacons", "n1", bytes2, hlc, "node-z")).toBe("applied");
    expect(b.get("beacons", "n1")).toEqual({ from: "y" });
    expect(b.getVersion("beacons", "n1")).toMatchObject({ hlc, writer: "node-z" });
  });

  test("a snapshot older than a tombstone cannot resurrect; a newer one can", async () => {
    const a = await openStore("node-a");
    const b = await openStore("node-b");
    a.put("beacons", "n1", { v: 1 });
    const oldBytes = a.getDocBytes("beacons", "n1")!;
    const oldVersion = a.getVersion("beacons", "n1")!;
    a.delete("beacons", "n1");
    expect(b.applyRemoteTombstone(a.tombstones("beacons")[0]!)).toBe("applied");
    expect(b.applyRemoteSnapshot("beacons", "n1", oldBytes, oldVersion.hlc, oldVersion.writer)).toBe("superseded");
    expect(b.get("beacons", "n1")).toBeUndefined();
    a.put("beacons", "n1", { v: 2 });
    expect(pushSnapshot(a, b, "beacons", "n1")).toBe("applied");
    expect(b.get("beacons", "n1")).toEqual({ v: 2 });
    expect(b.tombstones("beacons")).toEqual([]);
  });

  test("a local write after a replacement continues on a fresh actor and round-trips", async () => {
    const a = await openStore("node-a");
    const b = await openStore("node-b");
    a.put("beacons", "n1", { v: 1 });
    pushSnapshot(a, b, "beacons", "n1");
    b.put("beacons", "n1", { v: 2 });
    b.put("beacons", "n1", { v: 3 });
    expect(pushSnapshot(b, a, "beacons", "n1")).toBe("applied");
    expect(a.get("beacons", "n1")).toEqual({ v: 3 });
    const actors = new Set(Automerge.getAllChanges(a.getDoc("beacons", "n1")!).map((c) => Automerge.decodeChange(c).actor));
    expect(actors.size).toBe(2);
  });

  test("a FullHistory snapshot is merged, not replaced", async () => {
    const a = await openStore("node-a");
    const b = await openStore("node-b");
    a.put("alerts", "x", { a: 1, b: 1 });
    pushChanges(a, b, "alerts", "x");
    b.patch("alerts", "x", { b: 2 });
    a.patch("alerts", "x", { a: 2 });
    expect(pushSnapshot(a, b, "alerts", "x")).toBe("applied");
    expect(b.get("alerts", "x")).toEqual({ a: 2, b: 2 });
  });

  test("unloadable snapshot bytes are InvalidRemoteDataError", async () => {
    const b = await openStore("node-b");
    const hlc = formatHlc({ wallMs: 1, counter: 0, nodeId: "x" });
    expect(() => b.applyRemoteSnapshot("beacons", "n1", new Uint8Array([9, 9, 9]), hlc, "x")).toThrow(InvalidRemoteDataError);
    expect(() => b.applyRemoteSnapshot("alerts", "n1", new Uint8Array([9, 9, 9]), hlc, "x")).toThrow(InvalidRemoteDataError);
    expect(b.count("beacons")).toBe(0);
  });
});

describe("clock and metadata", () => {
  test("receiveHlc moves the clock past a peer's stamp (max rule)", async () => {
    const clock = new FakeClock();
    const b = await openStore("node-b", { now: clock.now });
    const future = formatHlc({ wallMs: clock.ms + 3_600_000, counter: 4, nodeId: "node-a" });
    b.receiveHlc(future);
    expect(b.currentHlc()).toBe(formatHlc({ wallMs: clock.ms + 3_600_000, counter: 4, nodeId: "node-b" }));
    b.put("c", "x", { v: 1 });
    expect(compareCodePoints(b.getVersion("c", "x")!.hlc, future)).toBeGreaterThan(0);
    expect(() => b.receiveHlc("not-an-hlc")).toThrow(InvalidHlcError);
  });

  test("a peer's stamp more than MAX_REMOTE_AHEAD_MS ahead is refused and leaves the clock alone", async () => {
    const clock = new FakeClock();
    const b = await openStore("node-b", { now: clock.now });
    const src = await openStore("node-a", { now: clock.now });
    src.put("beacons", "n1", { v: 1 });
    const before = b.currentHlc();
    const far = formatHlc({ wallMs: clock.ms + MAX_REMOTE_AHEAD_MS + 1, counter: 0, nodeId: "node-a" });
    expect(() => b.applyRemoteSnapshot("beacons", "n1", src.getDocBytes("beacons", "n1")!, far, "node-a")).toThrow(InvalidHlcError);
    expect(() => b.applyRemoteTombstone({ collection: "beacons", id: "n2", deletedAt: clock.ms, deletedBy: "node-a", hlc: far })).toThrow(InvalidHlcError);
    expect(b.currentHlc()).toBe(before);
    expect(b.count("beacons")).toBe(0);
    expect(b.tombstones()).toEqual([]);
    const near = formatHlc({ wallMs: clock.ms + MAX_REMOTE_AHEAD_MS, counter: 0, nodeId: "node-a" });
    expect(b.applyRemoteSnapshot("beacons", "n1", src.getDocBytes("beacons", "n1")!, near, "node-a")).toBe("applied");
  });

  test("remote applications also advance the clock", async () => {
    const clock = new FakeClock();
    const b = await openStore("node-b", { now: clock.now });
    const src = await openStore("node-a");
    src.put("beacons", "n1", { v: 1 });
    const hlc = formatHlc({ wallMs: clock.ms + 10_000, counter: 0, nodeId: "node-a" });
    b.applyRemoteSnapshot("beacons", "n1", src.getDocBytes("beacons", "n1")!, hlc, "node-a");
    b.put("beacons", "n2", { v: 1 });
    expect(compareCodePoints(b.getVersion("beacons", "n2")!.hlc, hlc)).toBeGreaterThan(0);
  });

  test("digest lists every document by id; tombstones per collection", async () => {
    const a = await openStore("node-a");
    for (const id of ["c", "a", "b"]) a.put("alerts", id, { id });
    a.put("other", "z", { z: 1 });
    a.delete("alerts", "b");
    const digest = a.digest("alerts");
    expect(digest.map((d) => d.id)).toEqual(["a", "c"]);
    for (const d of digest) {
      expect(d.headsHash).toMatch(/^[0-9a-f]{16}$/);
      expect(d.writer).toBe("node-a");
    }
    expect(a.tombstones("alerts").map((t) => t.id)).toEqual(["b"]);
    expect(a.tombstones("other")).toEqual([]);
    expect(a.tombstones().map((t) => `${t.collection}/${t.id}`)).toEqual(["alerts/b"]);
  });

  test("remote documents get TTLs from their own _ttl_secs, counted from receipt", async () => {
    const clock = new FakeClock();
    // One clock for both: a peer's stamps may not run more than MAX_REMOTE_AHEAD_MS ahead.
    const a = await openStore("node-a", { now: clock.now });
    const b = await openStore("node-b", { now: clock.now });
    a.put("alerts", "x", { _ttl_secs: 5 });
    pushChanges(a, b, "alerts", "x");
    clock.advance(5_000);
    expect(b.get("alerts", "x")).toBeUndefined();
    expect(b.sweep().expired).toBe(1);
  });
});

describe("a document older than the tombstone beside it (the deleted history survived)", () => {
  /** Puts a tombstone newer than the stored copy straight into storage, as a crash could leave it. */
  async function staleBesideTombstone(): Promise<{ store: DocumentStore; tombstone: { hlc: string; by: string; at: number } }> {
    const store = await openStore("node-a");
    store.put("notes", "n", { old: true });
    store.flushPending();
    const copy = store.getVersion("notes", "n")!;
    const later = formatHlc({ wallMs: Date.now() + 1000, counter: 0, nodeId: "node-b" });
    expect(compareCodePoints(later, copy.hlc)).toBeGreaterThan(0);
    const adapter = (store as unknown as { adapter: { putTombstone(t: object): void } }).adapter;
    adapter.putTombstone({ collection: "notes", id: "n", deletedAt: Date.now(), deletedBy: "node-b", hlc: later });
    return { store, tombstone: { hlc: later, by: "node-b", at: Date.now() } };
  }

  test("is deleted when the same tombstone arrives again, instead of being offered back", async () => {
    const { store, tombstone } = await staleBesideTombstone();
    const outcome = store.applyRemoteTombstone({ collection: "notes", id: "n", deletedAt: tombstone.at, deletedBy: tombstone.by, hlc: tombstone.hlc });
    expect(outcome).toBe("applied");
    expect(store.get("notes", "n")).toBeUndefined();
    expect(store.getTombstone("notes", "n")?.hlc).toBe(tombstone.hlc);
  });

  test("is deleted when remote changes arrive, so they do not merge into it", async () => {
    const { store, tombstone } = await staleBesideTombstone();
    const older = formatHlc({ wallMs: Date.now() - 60_000, counter: 0, nodeId: "node-c" });
    expect(store.applyRemoteChanges("notes", "n", [], older, "node-c")).toBe("superseded");
    expect(store.get("notes", "n")).toBeUndefined();
    expect(store.getTombstone("notes", "n")?.hlc).toBe(tombstone.hlc);
  });
});

describe("documents from peers are rendered to JSON when read, or once peers pause", () => {
  const rawJson = (store: DocumentStore, id: string) =>
    (store as unknown as { adapter: { getDoc(c: string, id: string): { json: string } | undefined } }).adapter.getDoc("alerts", id)?.json;

  async function received(opts: Partial<DocumentStoreOptions> = {}): Promise<{ a: DocumentStore; b: DocumentStore }> {
    const a = await openStore("node-a");
    const b = await openStore("node-b", opts);
    for (const id of ["x", "y"]) {
      a.put("alerts", id, { id, level: 3, tags: ["t"], _ttl_secs: 600 });
      expect(pushChanges(a, b, "alerts", id)).toBe("applied");
    }
    return { a, b };
  }

  test("the row holds no JSON until read; get renders it, stores it and keeps the TTL from the document", async () => {
    const { b } = await received();
    expect(rawJson(b, "x")).toBe("");
    expect(b.get("alerts", "x")).toEqual({ id: "x", level: 3, tags: ["t"], _ttl_secs: 600 });
    expect(JSON.parse(rawJson(b, "x") as string)).toEqual({ id: "x", level: 3, tags: ["t"], _ttl_secs: 600 });
    expect(rawJson(b, "y")).toBe("");
    // The TTL was taken from the unrendered document: expired 600 s after receipt, not before.
    expect(b.count("alerts")).toBe(2);
  });

  test("list, patch and put see the document, not the placeholder", async () => {
    const { b } = await received();
    expect(b.list("alerts", { limit: 10 }).map((d) => d.document.id)).toEqual(["x", "y"]);
    const events = recorder(b);
    // The same content again is no change (compared with the rendered JSON).
    b.put("alerts", "y", { id: "y", level: 3, tags: ["t"], _ttl_secs: 600 });
    expect(events).toEqual([]);
    expect(b.patch("alerts", "y", { level: 4 })).toEqual({ id: "y", level: 4, tags: ["t"], _ttl_secs: 600 });
    expect(events.map((e) => e.action)).toEqual(["upsert"]);
  });

  test("the background renderer stores the JSON of every received document once writes pause", async () => {
    const { b } = await received();
    const deadline = performance.now() + 5000;
    while ((rawJson(b, "x") === "" || rawJson(b, "y") === "") && performance.now() < deadline) await Bun.sleep(20);
    expect(JSON.parse(rawJson(b, "x") as string).id).toBe("x");
    expect(JSON.parse(rawJson(b, "y") as string).id).toBe("y");
  });

  test("an unrendered row left by a stop is rendered by the first read after the restart", async () => {
    const dataDir = temp.make();
    const { b } = await received({ dataDir });
    await b.stop();
    stores.splice(stores.indexOf(b), 1);
    const reopened = await openStore("node-b", { dataDir });
    expect(rawJson(reopened, "x")).toBe("");
    expect(reopened.get("alerts", "x")?.level).toBe(3);
    expect(rawJson(reopened, "x")).not.toBe("");
  });
});
