import { Database } from "bun:sqlite";
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InsufficientStorageError, StorageError } from "../errors.ts";
import { runStorageAdapterConformance } from "./conformance.ts";
import { mapSqliteError, SqliteStorageAdapter } from "./sqlite-adapter.ts";

runStorageAdapterConformance("SqliteStorageAdapter", () => {
  const dir = mkdtempSync(join(tmpdir(), "peat-sqlite-conf-"));
  const file = join(dir, "nested", "peat.sqlite");
  return {
    adapter: new SqliteStorageAdapter(file),
    reopen: () => new SqliteStorageAdapter(file),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
});

describe("SqliteStorageAdapter specifics", () => {
  const dirs: string[] = [];
  const tempDir = (): string => {
    const d = mkdtempSync(join(tmpdir(), "peat-sqlite-"));
    dirs.push(d);
    return d;
  };
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  test("opens in WAL mode with the requested synchronous level, creating directories", () => {
    const file = join(tempDir(), "a", "b", "peat.sqlite");
    const normal = new SqliteStorageAdapter(file);
    normal.open();
    expect(normal.database.query<{ journal_mode: string }, []>("PRAGMA journal_mode").get()?.journal_mode).toBe("wal");
    // 1 = NORMAL, 2 = FULL
    expect(normal.database.query<{ synchronous: number }, []>("PRAGMA synchronous").get()?.synchronous).toBe(1);
    normal.close();
    const full = new SqliteStorageAdapter(file, { synchronous: "FULL" });
    full.open();
    expect(full.database.query<{ synchronous: number }, []>("PRAGMA synchronous").get()?.synchronous).toBe(2);
    full.close();
  });

  test("an uncreatable directory is a StorageError naming the path", () => {
    const dir = tempDir();
    const blocker = join(dir, "file");
    writeFileSync(blocker, "not a directory");
    const adapter = new SqliteStorageAdapter(join(blocker, "automerge", "peat.sqlite"));
    expect(() => adapter.open()).toThrow(StorageError);
    expect(() => adapter.open()).toThrow(/cannot create the store directory .*file/);
    expect(adapter.isOpen()).toBe(false);
  });

  test("a file that is not a database is a StorageError, not a driver error", () => {
    const file = join(tempDir(), "peat.sqlite");
    writeFileSync(file, "x".repeat(4096));
    const adapter = new SqliteStorageAdapter(file);
    expect(() => adapter.open()).toThrow(StorageError);
    expect(adapter.isOpen()).toBe(false);
  });

  test("a database from a newer schema is refused", () => {
    const file = join(tempDir(), "peat.sqlite");
    const db = new Database(file, { create: true });
    db.run("PRAGMA user_version = 99");
    db.close();
    expect(() => new SqliteStorageAdapter(file).open()).toThrow(/schema version 99/);
  });

  test("SQLITE_FULL maps to InsufficientStorageError (507) and the failed write leaves nothing behind", () => {
    const adapter = new SqliteStorageAdapter(join(tempDir(), "peat.sqlite"));
    adapter.open();
    const row = (id: string) => ({
      collection: "c",
      id,
      json: "{}",
      hlc: "h",
      writer: "w",
      actor: "a",
      headsHash: "x",
      expiresAt: null,
      snapshotBytes: 1,
      incrementBytes: 0,
    });
    adapter.writeDoc(row("kept"), { kind: "snapshot", data: new Uint8Array([1]) });
    const pages = adapter.database.query<{ page_count: number }, []>("PRAGMA page_count").get()!.page_count;
    adapter.database.run(`PRAGMA max_page_count = ${pages}`);
    let error: unknown;
    try {
      adapter.writeDoc(row("big"), { kind: "snapshot", data: new Uint8Array(64 * 1024) });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(InsufficientStorageError);
    expect((error as InsufficientStorageError).status).toBe(507);
    expect((error as Error).message).toContain("SQLITE_FULL");
    expect(adapter.getDoc("c", "big")).toBeUndefined();
    expect(adapter.getDoc("c", "kept")?.id).toBe("kept");
    adapter.close();
  });

  test("read-only database maps to StorageError (500) and reads keep working", () => {
    const adapter = new SqliteStorageAdapter(join(tempDir(), "peat.sqlite"));
    adapter.open();
    adapter.putTombstone({ collection: "c", id: "a", deletedAt: 1, deletedBy: "n", hlc: "h" });
    adapter.database.run("PRAGMA query_only = ON");
    let error: unknown;
    try {
      adapter.putTombstone({ collection: "c", id: "b", deletedAt: 1, deletedBy: "n", hlc: "h" });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(StorageError);
    expect(error).not.toBeInstanceOf(InsufficientStorageError);
    expect((error as StorageError).status).toBe(500);
    expect(adapter.listTombstones("c").map((t) => t.id)).toEqual(["a"]);
    adapter.close();
  });

  test("mapSqliteError passes domain errors through and wraps unknown values", () => {
    const domain = new StorageError("already mapped");
    expect(mapSqliteError(domain, "x")).toBe(domain);
    const mapped = mapSqliteError("weird", "writing");
    expect(mapped).toBeInstanceOf(StorageError);
    expect(mapped.message).toContain("writing failed");
    const plain = new TypeError("bad binding");
    expect(mapSqliteError(plain, "x")).toBe(plain);
  });
});
