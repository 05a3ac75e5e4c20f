/**
 * Behaviour every StorageAdapter must have, as a bun:test suite. Each adapter's test file calls
 * `runStorageAdapterConformance(name, factory)`; the factory returns a fresh, unopened adapter and
 * optionally a way to reopen the same storage (for persistence checks) and to clean up.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { DocRow, StorageAdapter } from "./adapter.ts";
import type { Tombstone } from "./types.ts";

export interface ConformanceFixture {
  adapter: StorageAdapter;
  /** A new adapter over the same storage, unopened; omit for storage that does not outlive close. */
  reopen?: () => StorageAdapter;
  cleanup?: () => void;
}

function row(collection: string, id: string, overrides: Partial<DocRow> = {}): DocRow {
  return {
    collection,
    id,
    json: JSON.stringify({ id }),
    hlc: "001700000000000.000000@n1",
    writer: "n1",
    actor: "0123456789abcdef0123456789abcdef",
    headsHash: "0011223344556677",
    expiresAt: null,
    snapshotBytes: 3,
    incrementBytes: 0,
    ...overrides,
  };
}

const bytes = (...values: number[]): Uint8Array => new Uint8Array(values);

function tombstone(collection: string, id: string, overrides: Partial<Tombstone> = {}): Tombstone {
  return { collection, id, deletedAt: 1_000, deletedBy: "n1", hlc: "001700000000001.000000@n1", ...overrides };
}

export function runStorageAdapterConformance(name: string, factory: () => ConformanceFixture): void {
  describe(`StorageAdapter conformance: ${name}`, () => {
    let fixture: ConformanceFixture | undefined;
    const open = (): StorageAdapter => {
      fixture = factory();
      fixture.adapter.open();
      return fixture.adapter;
    };

    afterEach(() => {
      if (fixture?.adapter.isOpen()) fixture.adapter.close();
      fixture?.cleanup?.();
      fixture = undefined;
    });

    test("open/close report their state", () => {
      const f = factory();
      fixture = f;
      expect(f.adapter.isOpen()).toBe(false);
      f.adapter.open();
      expect(f.adapter.isOpen()).toBe(true);
      f.adapter.close();
      expect(f.adapter.isOpen()).toBe(false);
    });

    test("writes a row with a snapshot and reads both back", () => {
      const a = open();
      const r = row("c", "a", { expiresAt: 5_000, snapshotBytes: 3 });
      a.writeDoc(r, { kind: "snapshot", data: bytes(1, 2, 3) });
      expect(a.getDoc("c", "a")).toEqual(r);
      expect(a.readChunks("c", "a")).toEqual([bytes(1, 2, 3)]);
      expect(a.getDoc("c", "b")).toBeUndefined();
      expect(a.readChunks("c", "b")).toEqual([]);
    });

    test("increments append in order after the snapshot; a new snapshot replaces them all", () => {
      const a = open();
      a.writeDoc(row("c", "a"), { kind: "snapshot", data: bytes(1) });
      a.writeDoc(row("c", "a", { incrementBytes: 1 }), { kind: "increment", data: bytes(2) });
      a.writeDoc(row("c", "a", { incrementBytes: 2 }), { kind: "increment", data: bytes(3) });
      expect(a.readChunks("c", "a")).toEqual([bytes(1), bytes(2), bytes(3)]);
      a.writeDoc(row("c", "a", { snapshotBytes: 2, incrementBytes: 0 }), { kind: "snapshot", data: bytes(9, 9) });
      expect(a.readChunks("c", "a")).toEqual([bytes(9, 9)]);
      a.writeDoc(row("c", "a", { incrementBytes: 1 }), { kind: "increment", data: bytes(4) });
      expect(a.readChunks("c", "a")).toEqual([bytes(9, 9), bytes(4)]);
    });

    test("a metadata-only write keeps the chunks", () => {
      const a = open();
      a.writeDoc(row("c", "a"), { kind: "snapshot", data: bytes(1) });
      a.writeDoc(row("c", "a", { expiresAt: 42, json: '{"x":1}' }), { kind: "none" });
      expect(a.getDoc("c", "a")?.expiresAt).toBe(42);
      expect(a.getDoc("c", "a")?.json).toBe('{"x":1}');
      expect(a.readChunks("c", "a")).toEqual([bytes(1)]);
    });

    test("written bytes are copied: mutating the caller's buffer afterwards changes nothing", () => {
      const a = open();
      const data = bytes(1, 2);
      a.writeDoc(row("c", "a"), { kind: "snapshot", data });
      data[0] = 99;
      expect(a.readChunks("c", "a")).toEqual([bytes(1, 2)]);
    });

    test("deleteDoc removes row and chunks and reports whether there was one", () => {
      const a = open();
      a.writeDoc(row("c", "a"), { kind: "snapshot", data: bytes(1) });
      expect(a.deleteDoc("c", "a")).toBe(true);
      expect(a.deleteDoc("c", "a")).toBe(false);
      expect(a.getDoc("c", "a")).toBeUndefined();
      expect(a.readChunks("c", "a")).toEqual([]);
      // A re-created document starts with only its own chunks.
      a.writeDoc(row("c", "a"), { kind: "snapshot", data: bytes(7) });
      expect(a.readChunks("c", "a")).toEqual([bytes(7)]);
    });

    test("lists by id in UTF-8 byte order, with after-cursor and limit, per collection", () => {
      const a = open();
      // U+FF5E is EF BD 9E in UTF-8 and U+1F600 is F0 9F 98 80, so byte order puts U+FF5E first;
      // JS `<` compares UTF-16 code units (0xFF5E vs the surrogate 0xD83D) and gets it backwards.
      const ids = ["b", "a", "\u{1F600}", "\uFF5E", "B", "a0", "é"];
      for (const id of ids) a.writeDoc(row("c", id), { kind: "snapshot", data: bytes(1) });
      a.writeDoc(row("other", "0"), { kind: "snapshot", data: bytes(1) });
      const expected = [...ids].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
      expect(expected.indexOf("\uFF5E")).toBeLessThan(expected.indexOf("\u{1F600}"));
      const listed = a.listDocs("c", { limit: 100, now: 0 }).map((d) => d.id);
      expect(listed).toEqual(expected);
      expect(a.listDocs("c", { limit: 2, now: 0 }).map((d) => d.id)).toEqual(expected.slice(0, 2));
      expect(a.listDocs("c", { limit: 3, after: expected[2], now: 0 }).map((d) => d.id)).toEqual(expected.slice(3, 6));
      expect(a.listDocs("c", { limit: 10, after: "\u{10FFFF}", now: 0 })).toEqual([]);
      expect(a.listDocs("c", { limit: 1, now: 0 })[0]?.json).toBe(JSON.stringify({ id: expected[0] }));
    });

    test("list, count and collections hide expired documents; expiredDocs finds them oldest first", () => {
      const a = open();
      a.writeDoc(row("c", "live"), { kind: "snapshot", data: bytes(1) });
      a.writeDoc(row("c", "later", { expiresAt: 2_000 }), { kind: "snapshot", data: bytes(1) });
      a.writeDoc(row("c", "old", { expiresAt: 1_000 }), { kind: "snapshot", data: bytes(1) });
      a.writeDoc(row("d", "gone", { expiresAt: 500 }), { kind: "snapshot", data: bytes(1) });
      expect(a.countDocs("c", 0)).toBe(3);
      expect(a.countDocs("c", 1_000)).toBe(2);
      expect(a.countDocs("c", 2_000)).toBe(1);
      expect(a.listDocs("c", { limit: 10, now: 1_500 }).map((d) => d.id)).toEqual(["later", "live"]);
      expect(a.collections(0)).toEqual([
        { name: "c", count: 3 },
        { name: "d", count: 1 },
      ]);
      expect(a.collections(1_000)).toEqual([{ name: "c", count: 2 }]);
      expect(a.expiredDocs(1_500, 10)).toEqual([
        { collection: "d", id: "gone" },
        { collection: "c", id: "old" },
      ]);
      expect(a.expiredDocs(5_000, 1)).toEqual([{ collection: "d", id: "gone" }]);
      expect(a.expiredDocs(100, 10)).toEqual([]);
    });

    test("pendingDocs finds rows whose Automerge form is not built yet", () => {
      const a = open();
      a.writeDoc(row("c", "p1", { headsHash: "", snapshotBytes: 0 }), { kind: "none" });
      a.writeDoc(row("c", "p2", { headsHash: "", snapshotBytes: 0 }), { kind: "none" });
      a.writeDoc(row("d", "p3", { headsHash: "", snapshotBytes: 0 }), { kind: "none" });
      a.writeDoc(row("c", "built"), { kind: "snapshot", data: bytes(1) });
      expect(a.pendingDocs(10).map((k) => `${k.collection}/${k.id}`).sort()).toEqual(["c/p1", "c/p2", "d/p3"]);
      expect(a.pendingDocs(10, "c").map((k) => k.id).sort()).toEqual(["p1", "p2"]);
      expect(a.pendingDocs(1)).toHaveLength(1);
      a.writeDoc(row("c", "p1", { snapshotBytes: 1 }), { kind: "snapshot", data: bytes(5) });
      expect(a.pendingDocs(10, "c").map((k) => k.id)).toEqual(["p2"]);
      expect(a.readChunks("c", "p2")).toEqual([]);
    });

    test("docsLargerThan and digest", () => {
      const a = open();
      a.writeDoc(row("c", "small", { snapshotBytes: 10, incrementBytes: 5 }), { kind: "snapshot", data: bytes(1) });
      a.writeDoc(row("c", "big", { snapshotBytes: 90, incrementBytes: 20, headsHash: "ffff", hlc: "h2", writer: "n2" }), {
        kind: "snapshot",
        data: bytes(1),
      });
      a.writeDoc(row("d", "huge", { snapshotBytes: 1_000 }), { kind: "snapshot", data: bytes(1) });
      expect(a.docsLargerThan("c", 15)).toEqual([{ collection: "c", id: "big", bytes: 110 }]);
      expect(a.docsLargerThan("c", 14).map((d) => d.id)).toEqual(["big", "small"]);
      expect(a.digest("c")).toEqual([
        { id: "big", headsHash: "ffff", hlc: "h2", writer: "n2" },
        { id: "small", headsHash: "0011223344556677", hlc: "001700000000000.000000@n1", writer: "n1" },
      ]);
      expect(a.digest("none")).toEqual([]);
    });

    test("tombstones: put replaces, get, delete, list sorted, purge by age", () => {
      const a = open();
      a.putTombstone(tombstone("c", "b", { deletedAt: 100 }));
      a.putTombstone(tombstone("c", "a", { deletedAt: 300 }));
      a.putTombstone(tombstone("d", "a", { deletedAt: 200 }));
      a.putTombstone(tombstone("c", "b", { deletedAt: 150, deletedBy: "n2", hlc: "x" }));
      expect(a.getTombstone("c", "b")).toEqual(tombstone("c", "b", { deletedAt: 150, deletedBy: "n2", hlc: "x" }));
      expect(a.listTombstones("c").map((t) => t.id)).toEqual(["a", "b"]);
      expect(a.listTombstones().map((t) => `${t.collection}/${t.id}`)).toEqual(["c/a", "c/b", "d/a"]);
      expect(a.purgeTombstones(200)).toBe(1);
      expect(a.getTombstone("c", "b")).toBeUndefined();
      expect(a.deleteTombstone("d", "a")).toBe(true);
      expect(a.deleteTombstone("d", "a")).toBe(false);
      expect(a.listTombstones().map((t) => `${t.collection}/${t.id}`)).toEqual(["c/a"]);
    });

    test("totals and maxHlc cover documents and tombstones", () => {
      const a = open();
      expect(a.totals()).toEqual({ documents: 0, tombstones: 0, bytes: 0 });
      expect(a.maxHlc()).toBeUndefined();
      a.writeDoc(row("c", "a", { snapshotBytes: 10, incrementBytes: 4, hlc: "001700000000005.000000@n1" }), { kind: "snapshot", data: bytes(1) });
      a.writeDoc(row("c", "b", { snapshotBytes: 6, hlc: "001700000000002.000000@n1" }), { kind: "snapshot", data: bytes(1) });
      expect(a.maxHlc()).toBe("001700000000005.000000@n1");
      a.putTombstone(tombstone("c", "z", { hlc: "001700000000009.000000@n2" }));
      expect(a.totals()).toEqual({ documents: 2, tombstones: 1, bytes: 20 });
      expect(a.maxHlc()).toBe("001700000000009.000000@n2");
    });

    test("a throwing transaction leaves everything as it was", () => {
      const a = open();
      a.writeDoc(row("c", "a"), { kind: "snapshot", data: bytes(1) });
      a.putTombstone(tombstone("c", "t"));
      const boom = new Error("boom");
      expect(() =>
        a.transaction(() => {
          a.writeDoc(row("c", "a", { json: '{"changed":true}', incrementBytes: 1 }), { kind: "increment", data: bytes(2) });
          a.writeDoc(row("c", "new"), { kind: "snapshot", data: bytes(3) });
          a.deleteTombstone("c", "t");
          a.putTombstone(tombstone("c", "u"));
          a.deleteDoc("c", "a");
          throw boom;
        }),
      ).toThrow(boom);
      expect(a.getDoc("c", "a")).toEqual(row("c", "a"));
      expect(a.readChunks("c", "a")).toEqual([bytes(1)]);
      expect(a.getDoc("c", "new")).toBeUndefined();
      expect(a.getTombstone("c", "t")).toBeDefined();
      expect(a.getTombstone("c", "u")).toBeUndefined();
      expect(a.totals()).toEqual({ documents: 1, tombstones: 1, bytes: 3 });
    });

    test("nested transactions join the outer one and commit with it", () => {
      const a = open();
      const result = a.transaction(() => {
        a.transaction(() => a.writeDoc(row("c", "a"), { kind: "snapshot", data: bytes(1) }));
        a.putTombstone(tombstone("c", "t"));
        return 7;
      });
      expect(result).toBe(7);
      expect(a.getDoc("c", "a")).toBeDefined();
      expect(a.getTombstone("c", "t")).toBeDefined();
    });

    test("group: its transactions commit together, and a failing one is undone alone", () => {
      const a = open();
      const boom = new Error("boom");
      const result = a.group(() => {
        a.transaction(() => a.writeDoc(row("c", "a"), { kind: "snapshot", data: bytes(1) }));
        expect(() =>
          a.transaction(() => {
            a.writeDoc(row("c", "b"), { kind: "snapshot", data: bytes(2) });
            a.putTombstone(tombstone("c", "t"));
            throw boom;
          }),
        ).toThrow(boom);
        a.transaction(() => a.putTombstone(tombstone("c", "u")));
        return 7;
      });
      expect(result).toBe(7);
      expect(a.getDoc("c", "a")).toBeDefined();
      expect(a.getDoc("c", "b")).toBeUndefined();
      expect(a.getTombstone("c", "t")).toBeUndefined();
      expect(a.getTombstone("c", "u")).toBeDefined();
      expect(a.totals()).toEqual({ documents: 1, tombstones: 1, bytes: 3 });
    });

    test("group: what succeeded is committed even when the group's function throws", () => {
      const a = open();
      const boom = new Error("boom");
      expect(() =>
        a.group(() => {
          a.transaction(() => a.writeDoc(row("c", "a"), { kind: "snapshot", data: bytes(1) }));
          throw boom;
        }),
      ).toThrow(boom);
      expect(a.getDoc("c", "a")).toBeDefined();
      // And a later plain transaction works as usual (the group left no transaction open).
      a.transaction(() => a.putTombstone(tombstone("c", "t")));
      expect(a.getTombstone("c", "t")).toBeDefined();
    });

    test("data survives close and reopen (when the storage is persistent)", () => {
      const f = factory();
      fixture = f;
      if (!f.reopen) {
        expect(f.adapter.path).toBe(":memory:");
        return;
      }
      f.adapter.open();
      f.adapter.writeDoc(row("c", "a", { expiresAt: 77 }), { kind: "snapshot", data: bytes(1, 2) });
      f.adapter.writeDoc(row("c", "a", { incrementBytes: 1 }), { kind: "increment", data: bytes(3) });
      f.adapter.putTombstone(tombstone("c", "t"));
      f.adapter.close();
      const again = f.reopen();
      fixture = { ...f, adapter: again };
      again.open();
      expect(again.getDoc("c", "a")).toEqual(row("c", "a", { incrementBytes: 1 }));
      expect(again.readChunks("c", "a")).toEqual([bytes(1, 2), bytes(3)]);
      expect(again.getTombstone("c", "t")).toEqual(tombstone("c", "t"));
    });
  });
}
