/**
 * StorageAdapter over one bun:sqlite database file.
 *
 * Durability: WAL mode with `synchronous=NORMAL` by default. A commit is a write() of the WAL
 * frames into the OS page cache before `COMMIT` returns, so a process killed (even with SIGKILL)
 * right after a write was acknowledged loses nothing; only a kernel crash or power loss can drop the
 * last few commits (the database stays consistent either way). Pass `synchronous: "FULL"` to fsync
 * the WAL on every commit when power-loss durability matters more than write throughput.
 *
 * Layout: `docs` holds one row per document (metadata + JSON rendering, small enough that listing
 * and counting never touch Automerge bytes); `chunks` holds each document's snapshot and
 * incremental changes, ordered by `seq` (an ever-growing rowid, so the snapshot, which is written
 * after its predecessors are deleted, still sorts before later increments); `tombstones` holds
 * deletion markers. Text columns use SQLite's BINARY collation, i.e. UTF-8 byte order.
 */
import { Database, SQLiteError, type Statement } from "bun:sqlite";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { GroupCommitError, InsufficientStorageError, PeatError, StorageError } from "../errors.ts";
import type { ChunkWrite, DocKey, DocRow, DocSize, ListedDoc, StorageAdapter, StorageTotals } from "./adapter.ts";
import { compareCodePoints } from "./hlc.ts";
import type { DigestRow, Tombstone } from "./types.ts";

export const SQLITE_FILE_NAME = "peat.sqlite";
const SCHEMA_VERSION = 1;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS docs (
  rid INTEGER PRIMARY KEY,
  collection TEXT NOT NULL,
  id TEXT NOT NULL,
  hlc TEXT NOT NULL,
  writer TEXT NOT NULL,
  actor TEXT NOT NULL,
  heads_hash TEXT NOT NULL,
  expires_at INTEGER,
  snapshot_bytes INTEGER NOT NULL,
  increment_bytes INTEGER NOT NULL,
  json TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS docs_key ON docs (collection, id);
-- Counting a collection while excluding expired documents stays an index-only scan.
CREATE INDEX IF NOT EXISTS docs_collection_expiry ON docs (collection, expires_at);
-- The expiry sweep reads only documents that have a TTL.
CREATE INDEX IF NOT EXISTS docs_expiry ON docs (expires_at) WHERE expires_at IS NOT NULL;
-- Pending documents (JSON written, Automerge form not built yet) for the background encoder.
CREATE INDEX IF NOT EXISTS docs_pending ON docs (collection, id) WHERE heads_hash = '';
-- max(hlc) restores the clock at startup without a scan; sync can ask for "changed since".
CREATE INDEX IF NOT EXISTS docs_hlc ON docs (hlc);
CREATE TABLE IF NOT EXISTS chunks (
  seq INTEGER PRIMARY KEY,
  doc INTEGER NOT NULL,
  data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (doc);
CREATE TABLE IF NOT EXISTS tombstones (
  collection TEXT NOT NULL,
  id TEXT NOT NULL,
  deleted_at INTEGER NOT NULL,
  deleted_by TEXT NOT NULL,
  hlc TEXT NOT NULL,
  PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tombstones_deleted_at ON tombstones (deleted_at);
CREATE INDEX IF NOT EXISTS tombstones_hlc ON tombstones (hlc);
`;

const DOC_COLUMNS = `collection, id, json, hlc, writer, actor, heads_hash AS headsHash, expires_at AS expiresAt,
  snapshot_bytes AS snapshotBytes, increment_bytes AS incrementBytes`;
const TOMBSTONE_COLUMNS = `collection, id, deleted_at AS deletedAt, deleted_by AS deletedBy, hlc`;
// Written as one expression (not "IS NULL OR >") so the planner walks the index we name instead of
// OR-expanding into two range scans and sorting the whole collection.
const LIVE = `ifnull(expires_at, 9223372036854775807) > ?`;

/** Translates driver errors into the domain errors the broker maps to HTTP statuses. */
export function mapSqliteError(error: unknown, action: string): Error {
  if (error instanceof PeatError) return error;
  if (error instanceof SQLiteError) {
    const code = error.code ?? `errno ${error.errno}`;
    if (code.startsWith("SQLITE_FULL")) {
      return new InsufficientStorageError(`${action} failed: storage is full (${code}: ${error.message})`);
    }
    if (code.startsWith("SQLITE_READONLY")) {
      return new StorageError(`${action} failed: the database is read-only (${code}: ${error.message})`);
    }
    if (code.startsWith("SQLITE_IOERR")) {
      return new StorageError(`${action} failed: I/O error (${code}: ${error.message})`);
    }
    if (code.startsWith("SQLITE_CANTOPEN")) {
      return new StorageError(`${action} failed: cannot open the database file (${code}: ${error.message})`);
    }
    return new StorageError(`${action} failed (${code}: ${error.message})`);
  }
  return error instanceof Error ? error : new StorageError(`${action} failed: ${String(error)}`);
}

type Stmt = Statement<any, any[]>;

interface Statements {
  begin: Stmt;
  commit: Stmt;
  rollback: Stmt;
  savepoint: Stmt;
  release: Stmt;
  rollbackToSavepoint: Stmt;
  getDoc: Stmt;
  readChunks: Stmt;
  upsertDoc: Stmt;
  insertChunk: Stmt;
  deleteChunks: Stmt;
  deleteDoc: Stmt;
  listFirst: Stmt;
  listAfter: Stmt;
  count: Stmt;
  collections: Stmt;
  expired: Stmt;
  larger: Stmt;
  pending: Stmt;
  pendingIn: Stmt;
  digest: Stmt;
  getTombstone: Stmt;
  putTombstone: Stmt;
  deleteTombstone: Stmt;
  listTombstones: Stmt;
  listAllTombstones: Stmt;
  purgeTombstones: Stmt;
  docTotals: Stmt;
  tombstoneCount: Stmt;
  maxDocHlc: Stmt;
  maxTombstoneHlc: Stmt;
}

export interface SqliteStorageAdapterOptions {
  /** `NORMAL` (default): durable against process crashes. `FULL`: also against power loss. */
  synchronous?: "NORMAL" | "FULL";
}

export class SqliteStorageAdapter implements StorageAdapter {
  readonly kind = "SQLite";
  readonly path: string;
  private db: Database | undefined;
  /** Inside group(): each transaction is a savepoint. */
  private grouping = false;
  private s: Statements | undefined;
  private readonly synchronous: "NORMAL" | "FULL";

  /** `path` is the database file; its directory is created on open. */
  constructor(path: string, options: SqliteStorageAdapterOptions = {}) {
    this.path = resolve(path);
    this.synchronous = options.synchronous ?? "NORMAL";
  }

  /** The underlying connection, for diagnostics and fault-injection tests. */
  get database(): Database {
    return this.requireDb();
  }

  isOpen(): boolean {
    return this.db !== undefined;
  }

  open(): void {
    if (this.db) return;
    const dir = dirname(this.path);
    try {
      mkdirSync(dir, { recursive: true });
    } catch (e) {
      throw new StorageError(`cannot create the store directory ${dir}: ${(e as Error).message}`);
    }
    let db: Database | undefined;
    try {
      db = new Database(this.path, { create: true, strict: true });
      db.run("PRAGMA busy_timeout = 5000");
      const mode = db.query<{ journal_mode: string }, []>("PRAGMA journal_mode = WAL").get();
      if (mode?.journal_mode.toLowerCase() !== "wal") {
        throw new StorageError(`cannot enable WAL mode on ${this.path} (journal_mode=${mode?.journal_mode})`);
      }
      db.run(`PRAGMA synchronous = ${this.synchronous}`);
      db.run("PRAGMA cache_size = -8000");
      db.run("PRAGMA temp_store = MEMORY");
      const version = db.query<{ user_version: number }, []>("PRAGMA user_version").get()?.user_version ?? 0;
      if (version > SCHEMA_VERSION) {
        throw new StorageError(`${this.path} has schema version ${version}; this build understands up to ${SCHEMA_VERSION}`);
      }
      // Only a new or older database is written to here: a node whose disk is full (or read-only)
      // must still start and serve reads, and even a no-op write transaction needs WAL space.
      if (version < SCHEMA_VERSION) {
        db.transaction(() => {
          db!.run(SCHEMA);
          db!.run(`PRAGMA user_version = ${SCHEMA_VERSION}`);
        })();
      }
      this.s = this.prepare(db);
      this.db = db;
    } catch (e) {
      try {
        db?.close();
      } catch {
        // Already failing; the open error is the one worth reporting.
      }
      const mapped = mapSqliteError(e, `opening the SQLite store at ${this.path}`);
      throw mapped instanceof StorageError ? mapped : new StorageError(`cannot open the SQLite store at ${this.path}: ${mapped.message}`);
    }
  }

  close(): void {
    const db = this.db;
    if (!db) return;
    this.db = undefined;
    if (this.s) for (const stmt of Object.values(this.s)) stmt.finalize();
    this.s = undefined;
    try {
      // Fold the WAL back so the next open does not replay it (faster cold start).
      db.run("PRAGMA wal_checkpoint(TRUNCATE)");
      db.run("PRAGMA optimize");
    } catch {
      // A failed checkpoint is harmless: SQLite replays the WAL on the next open.
    }
    db.close();
  }

  private prepare(db: Database): Statements {
    const p = (sql: string): Stmt => db.prepare(sql);
    return {
      begin: p("BEGIN"),
      commit: p("COMMIT"),
      rollback: p("ROLLBACK"),
      savepoint: p("SAVEPOINT one"),
      release: p("RELEASE one"),
      rollbackToSavepoint: p("ROLLBACK TO one"),
      getDoc: p(`SELECT ${DOC_COLUMNS} FROM docs WHERE collection = ? AND id = ?`),
      readChunks: p(`SELECT data FROM chunks WHERE doc = (SELECT rid FROM docs WHERE collection = ? AND id = ?) ORDER BY seq`),
      upsertDoc: p(`INSERT INTO docs (collection, id, hlc, writer, actor, heads_hash, expires_at, snapshot_bytes, increment_bytes, json)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (collection, id) DO UPDATE SET hlc = excluded.hlc, writer = excluded.writer, actor = excluded.actor,
          heads_hash = excluded.heads_hash, expires_at = excluded.expires_at, snapshot_bytes = excluded.snapshot_bytes,
          increment_bytes = excluded.increment_bytes, json = excluded.json
        RETURNING rid`),
      insertChunk: p(`INSERT INTO chunks (doc, data) VALUES (?, ?)`),
      deleteChunks: p(`DELETE FROM chunks WHERE doc = ?`),
      deleteDoc: p(`DELETE FROM docs WHERE collection = ? AND id = ? RETURNING rid`),
      listFirst: p(`SELECT id, json FROM docs INDEXED BY docs_key
        WHERE collection = ? AND ${LIVE} ORDER BY id LIMIT ?`),
      listAfter: p(`SELECT id, json FROM docs INDEXED BY docs_key
        WHERE collection = ? AND id > ? AND ${LIVE} ORDER BY id LIMIT ?`),
      count: p(`SELECT count(*) AS n FROM docs INDEXED BY docs_collection_expiry WHERE collection = ? AND ${LIVE}`),
      collections: p(`SELECT collection AS name, count(*) AS count FROM docs INDEXED BY docs_collection_expiry
        WHERE ${LIVE} GROUP BY collection ORDER BY collection`),
      expired: p(`SELECT collection, id FROM docs WHERE expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at LIMIT ?`),
      pending: p(`SELECT collection, id FROM docs INDEXED BY docs_pending WHERE heads_hash = '' LIMIT ?`),
      pendingIn: p(`SELECT collection, id FROM docs INDEXED BY docs_pending WHERE heads_hash = '' AND collection = ? LIMIT ?`),
      larger: p(`SELECT collection, id, snapshot_bytes + increment_bytes AS bytes FROM docs
        WHERE collection = ? AND snapshot_bytes + increment_bytes > ? ORDER BY id`),
      digest: p(`SELECT id, heads_hash AS headsHash, hlc, writer FROM docs WHERE collection = ? ORDER BY id`),
      getTombstone: p(`SELECT ${TOMBSTONE_COLUMNS} FROM tombstones WHERE collection = ? AND id = ?`),
      putTombstone: p(`INSERT INTO tombstones (collection, id, deleted_at, deleted_by, hlc) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (collection, id) DO UPDATE SET deleted_at = excluded.deleted_at, deleted_by = excluded.deleted_by, hlc = excluded.hlc`),
      deleteTombstone: p(`DELETE FROM tombstones WHERE collection = ? AND id = ?`),
      listTombstones: p(`SELECT ${TOMBSTONE_COLUMNS} FROM tombstones WHERE collection = ? ORDER BY id`),
      listAllTombstones: p(`SELECT ${TOMBSTONE_COLUMNS} FROM tombstones ORDER BY collection, id`),
      purgeTombstones: p(`DELETE FROM tombstones WHERE deleted_at < ?`),
      docTotals: p(`SELECT count(*) AS n, coalesce(sum(snapshot_bytes + increment_bytes), 0) AS bytes FROM docs`),
      tombstoneCount: p(`SELECT count(*) AS n FROM tombstones`),
      maxDocHlc: p(`SELECT max(hlc) AS hlc FROM docs`),
      maxTombstoneHlc: p(`SELECT max(hlc) AS hlc FROM tombstones`),
    };
  }

  private requireDb(): Database {
    if (!this.db) throw new StorageError(`the SQLite store at ${this.path} is not open`);
    return this.db;
  }

  private get st(): Statements {
    if (!this.s) throw new StorageError(`the SQLite store at ${this.path} is not open`);
    return this.s;
  }

  private read<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      throw mapSqliteError(e, "reading the document store");
    }
  }

  transaction<T>(fn: () => T): T {
    const db = this.requireDb();
    if (db.inTransaction) return this.grouping ? this.savepoint(fn) : fn();
    const st = this.st;
    try {
      st.begin.run();
    } catch (e) {
      throw mapSqliteError(e, "starting a write transaction");
    }
    try {
      const result = fn();
      st.commit.run();
      return result;
    } catch (e) {
      if (db.inTransaction) {
        try {
          st.rollback.run();
        } catch {
          // SQLite rolls back on its own after some errors (e.g. SQLITE_FULL); nothing left to undo.
        }
      }
      throw this.explainWriteError(mapSqliteError(e, "writing to the document store"));
    }
  }

  /**
   * SQLite reports a write refused by a read-only filesystem (EROFS, e.g. a volume the kernel
   * remounted read-only after an I/O error) or a read-only data directory (EPERM, EACCES) only as
   * SQLITE_IOERR_WRITE; say what it is.
   */
  private explainWriteError(error: Error): Error {
    if (!(error instanceof StorageError) || error instanceof InsufficientStorageError || !/SQLITE_IOERR/.test(error.message)) return error;
    // access(W_OK) is no test: an ext4 in emergency read-only still reports itself writable.
    const probe = `${this.path}-write-probe`;
    try {
      writeFileSync(probe, "");
      rmSync(probe, { force: true });
      return error;
    } catch (e) {
      const errno = (e as NodeJS.ErrnoException).code;
      const code = /SQLITE_IOERR\w*/.exec(error.message)?.[0];
      if (errno === "EROFS") return new StorageError(`writing to the document store failed: the data directory's filesystem is read-only (EROFS, ${code})`);
      if (errno === "EPERM" || errno === "EACCES") return new StorageError(`writing to the document store failed: the data directory is read-only (${errno}, ${code})`);
      return error;
    }
  }

  group<T>(fn: () => T): T {
    const db = this.requireDb();
    if (db.inTransaction) return fn();
    const st = this.st;
    try {
      st.begin.run();
    } catch (e) {
      throw mapSqliteError(e, "starting a write transaction");
    }
    this.grouping = true;
    try {
      return fn();
    } finally {
      this.grouping = false;
      // SQLite rolls a transaction back by itself after some errors (SQLITE_FULL, SQLITE_IOERR):
      // then the group's earlier transactions are gone too, and the caller must know.
      if (!db.inTransaction) throw new GroupCommitError("the write group was rolled back after a storage error");
      try {
        st.commit.run();
      } catch (e) {
        try {
          st.rollback.run();
        } catch {
          // Already rolled back.
        }
        throw new GroupCommitError(`committing the write group failed: ${mapSqliteError(e, "committing").message}`);
      }
    }
  }

  /** A transaction inside a group: a savepoint, so that undoing it leaves the rest of the group. */
  private savepoint<T>(fn: () => T): T {
    const db = this.requireDb();
    const st = this.st;
    st.savepoint.run();
    try {
      const result = fn();
      st.release.run();
      return result;
    } catch (e) {
      if (db.inTransaction) {
        try {
          st.rollbackToSavepoint.run();
          st.release.run();
        } catch {
          // The whole transaction was rolled back by SQLite; group() reports it.
        }
      }
      throw mapSqliteError(e, "writing to the document store");
    }
  }

  getDoc(collection: string, id: string): DocRow | undefined {
    return this.read(() => (this.st.getDoc.get(collection, id) as DocRow | null) ?? undefined);
  }

  readChunks(collection: string, id: string): Uint8Array[] {
    return this.read(() => (this.st.readChunks.all(collection, id) as { data: Uint8Array }[]).map((r) => r.data));
  }

  writeDoc(row: DocRow, chunk: ChunkWrite): void {
    const st = this.st;
    this.transaction(() => {
      const { rid } = st.upsertDoc.get(
        row.collection,
        row.id,
        row.hlc,
        row.writer,
        row.actor,
        row.headsHash,
        row.expiresAt,
        row.snapshotBytes,
        row.incrementBytes,
        row.json,
      ) as { rid: number };
      if (chunk.kind === "snapshot") {
        st.deleteChunks.run(rid);
        st.insertChunk.run(rid, chunk.data);
      } else if (chunk.kind === "increment") {
        st.insertChunk.run(rid, chunk.data);
      }
    });
  }

  deleteDoc(collection: string, id: string): boolean {
    const st = this.st;
    return this.transaction(() => {
      const row = st.deleteDoc.get(collection, id) as { rid: number } | null;
      if (!row) return false;
      st.deleteChunks.run(row.rid);
      return true;
    });
  }

  listDocs(collection: string, opts: { after?: string; limit: number; now: number }): ListedDoc[] {
    return this.read(() =>
      opts.after === undefined
        ? (this.st.listFirst.all(collection, opts.now, opts.limit) as ListedDoc[])
        : (this.st.listAfter.all(collection, opts.after, opts.now, opts.limit) as ListedDoc[]),
    );
  }

  countDocs(collection: string, now: number): number {
    return this.read(() => (this.st.count.get(collection, now) as { n: number }).n);
  }

  collections(now: number): { name: string; count: number }[] {
    return this.read(() => this.st.collections.all(now) as { name: string; count: number }[]);
  }

  expiredDocs(now: number, limit: number): DocKey[] {
    return this.read(() => this.st.expired.all(now, limit) as DocKey[]);
  }

  pendingDocs(limit: number, collection?: string): DocKey[] {
    return this.read(() =>
      collection === undefined ? (this.st.pending.all(limit) as DocKey[]) : (this.st.pendingIn.all(collection, limit) as DocKey[]),
    );
  }

  docsLargerThan(collection: string, bytes: number): DocSize[] {
    return this.read(() => this.st.larger.all(collection, bytes) as DocSize[]);
  }

  digest(collection: string): DigestRow[] {
    return this.read(() => this.st.digest.all(collection) as DigestRow[]);
  }

  getTombstone(collection: string, id: string): Tombstone | undefined {
    return this.read(() => (this.st.getTombstone.get(collection, id) as Tombstone | null) ?? undefined);
  }

  putTombstone(t: Tombstone): void {
    this.transaction(() => {
      this.st.putTombstone.run(t.collection, t.id, t.deletedAt, t.deletedBy, t.hlc);
    });
  }

  deleteTombstone(collection: string, id: string): boolean {
    return this.transaction(() => this.st.deleteTombstone.run(collection, id).changes > 0);
  }

  listTombstones(collection?: string): Tombstone[] {
    return this.read(() =>
      collection === undefined ? (this.st.listAllTombstones.all() as Tombstone[]) : (this.st.listTombstones.all(collection) as Tombstone[]),
    );
  }

  purgeTombstones(deletedBefore: number): number {
    return this.transaction(() => this.st.purgeTombstones.run(deletedBefore).changes);
  }

  totals(): StorageTotals {
    return this.read(() => {
      const docs = this.st.docTotals.get() as { n: number; bytes: number };
      const tombs = this.st.tombstoneCount.get() as { n: number };
      return { documents: docs.n, tombstones: tombs.n, bytes: docs.bytes };
    });
  }

  maxHlc(): string | undefined {
    return this.read(() => {
      const a = (this.st.maxDocHlc.get() as { hlc: string | null }).hlc;
      const b = (this.st.maxTombstoneHlc.get() as { hlc: string | null }).hlc;
      if (a === null) return b ?? undefined;
      if (b === null) return a;
      return compareCodePoints(a, b) >= 0 ? a : b;
    });
  }
}
