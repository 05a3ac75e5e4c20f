/**
 * The node's document store: Automerge documents keyed by (collection, id), persisted through a
 * StorageAdapter (SQLite by default), with a bounded LRU of live Automerge documents, a JSON
 * rendering per row so reads never touch Automerge, tombstones, TTL expiry, and the version
 * metadata (HLC, writer, heads hash) the sync layer reconciles with.
 *
 * Every method is synchronous and a write returns only after its transaction has committed, so an
 * acknowledged write survives the process being killed (see sqlite-adapter.ts for the durability
 * argument). If persisting fails, the in-memory copy that already carries the change is dropped, so
 * the next access reloads the last committed state from storage.
 *
 * New documents are written behind: the create commits the JSON (the durable content) and the
 * Automerge form, which is a pure function of the row, is built shortly after by a background
 * encoder in batches, or earlier by whatever first needs it (see `materialize`). Updates, deletes
 * and remote changes go through Automerge immediately.
 */
import { resolve } from "node:path";
import { Automerge } from "../automerge.ts";
import { BadRequestError, GroupCommitError, NotFoundError, StorageError } from "../errors.ts";
import type { Component } from "../lifecycle.ts";
import type { Logger } from "../log.ts";
import type { ChunkWrite, DocRow, StorageAdapter, StorageTotals } from "./adapter.ts";
import {
  FullHistoryCompactionError,
  InvalidDocumentError,
  InvalidKeyError,
  InvalidRemoteDataError,
  StoreClosedError,
} from "./errors.ts";
import { compareVersions, HybridLogicalClock, isHlc, parseHlc } from "./hlc.ts";
import {
  actorFor,
  applyJsonDiff,
  createDoc,
  type Doc,
  docHeadsHash,
  isPlainObject,
  type NormalizedDocument,
  normalizeDocument,
  rebuildDoc,
  renderDoc,
  rootNumber,
} from "./json.ts";
import { LruCache } from "./lru.ts";
import { applyMergePatch } from "./merge-patch.ts";
import { SQLITE_FILE_NAME, SqliteStorageAdapter } from "./sqlite-adapter.ts";
import { SyncModeRegistry } from "./sync-mode.ts";
import type {
  ApplyOutcome,
  ChangeEvent,
  ChangeOrigin,
  CompactionResult,
  DigestRow,
  DocVersion,
  JsonObject,
  StoreStats,
  SyncMode,
  Tombstone,
} from "./types.ts";

export const DEFAULT_CACHE_SIZE = 1000;
/**
 * Documents the background encoder built, kept for their first use instead of freed at once: sync
 * pushes a new document to peers moments after it is built, and would otherwise load it straight
 * back from its bytes (a sixth of a writing node's CPU in the bulk benchmark). A first use promotes
 * it to the cache; an unused one (no peers) is freed when pushed out, so write-once documents still
 * stay out of the cache.
 */
const RECENTLY_BUILT = 256;

/**
 * A document that arrives from a peer is stored with its Automerge form only and this in place of
 * its JSON: rendering it (a fifth of a receiving node's CPU in the bulk benchmark) waits until
 * writes from peers pause for RENDER_QUIET_MS, or until something reads it. Reads render on demand,
 * so nothing ever sees the placeholder; past MAX_UNRENDERED, each arrival renders a few inline.
 * After a restart the unrendered rows are found by reads only (a read renders and stores them).
 */
const UNRENDERED = "";
/** Then it works in the background encoder's slices (ENCODE_SLICE_MS, ENCODE_GAP_MS, ENCODE_BATCH). */
const RENDER_QUIET_MS = 250;
const MAX_UNRENDERED = 50_000;
const RENDER_INLINE = 2;
export const DEFAULT_TOMBSTONE_TTL_SECS = 7 * 24 * 3600;
export const DEFAULT_SWEEP_INTERVAL_MS = 10_000;
/** Top-level document field giving the document's own time to live, in seconds. */
export const TTL_FIELD = "_ttl_secs";
const MAX_KEY_LENGTH = 1024;
/** headsHash of a pending row: JSON committed, Automerge form not built yet. */
const PENDING = "";
/**
 * Background encoder pacing. It starts ENCODE_DELAY_MS after the first pending write (so a burst
 * is encoded in batches, with wasm and SQLite hot, one transaction per batch), then works in
 * ENCODE_SLICE_MS slices separated by ENCODE_GAP_MS, i.e. at most about half the thread while
 * requests keep arriving. Past MAX_PENDING rows, each create also encodes ENCODE_INLINE rows
 * itself, so under sustained overload the backlog stays bounded and writers feel the backpressure.
 */
const ENCODE_BATCH = 64;
const ENCODE_DELAY_MS = 20;
const ENCODE_SLICE_MS = 5;
const ENCODE_GAP_MS = 5;
const MAX_PENDING = 5_000;
const ENCODE_INLINE = 2;
const ENCODE_RETRY_MS = 1_000;
const ENCODE_MAX_RETRY_MS = 60_000;
const SWEEP_BATCH = 256;

export interface DocumentStoreOptions {
  dataDir: string;
  nodeId: string;
  log: Logger;
  syncModes?: SyncModeRegistry;
  /** Live Automerge documents kept in memory (LRU). Default 1000. */
  cacheSize?: number;
  /** How long tombstones keep blocking resurrection. Default 7 days. */
  tombstoneTtlSecs?: number;
  /** Default TTL per collection for documents without their own `_ttl_secs`. */
  collectionTtlSecs?: Record<string, number>;
  /** Period of the expiry / tombstone sweep. Default 10 s; 0 disables the timer (call `sweep()`). */
  sweepIntervalMs?: number;
  now?: () => number;
  /** Persistence; default SQLite at `$dataDir/automerge/peat.sqlite`. */
  adapter?: StorageAdapter;
}

/** Where the default adapter keeps the database for a data directory. */
export function sqlitePathFor(dataDir: string): string {
  return resolve(dataDir, "automerge", SQLITE_FILE_NAME);
}

function checkKey(what: string, value: unknown): asserts value is string {
  if (typeof value !== "string" || value.length === 0) throw new InvalidKeyError(`${what} must be a non-empty string`);
  if (value.length > MAX_KEY_LENGTH) throw new InvalidKeyError(`${what} is longer than ${MAX_KEY_LENGTH} characters`);
  if (value.includes("\u0000")) throw new InvalidKeyError(`${what} must not contain NUL`);
  if (!value.isWellFormed()) throw new InvalidKeyError(`${what} is not valid Unicode`);
}

function checkVersion(version: DocVersion): void {
  parseHlc(version.hlc);
  if (typeof version.writer !== "string" || version.writer.length === 0) {
    throw new InvalidRemoteDataError("remote writer node id must be a non-empty string");
  }
}

const EMPTY = new Uint8Array(0);
const cacheKey = (collection: string, id: string): string => `${collection}\u0000${id}`;
const splitCacheKey = (key: string): { collection: string; id: string } => {
  const at = key.indexOf("\u0000");
  return { collection: key.slice(0, at), id: key.slice(at + 1) };
};
const isLive = (row: DocRow, now: number): boolean => row.expiresAt === null || row.expiresAt > now;
const tombstoneVersion = (t: Tombstone): DocVersion => ({ hlc: t.hlc, writer: t.deletedBy });

/** A remote document version, with the epoch of its history if it was re-created after a delete. */
export interface RemoteVersion extends DocVersion {
  /**
   * The HLC of the delete (its tombstone) after which the sender's history of this document was
   * started afresh. Set when the sender holds that tombstone beside the document.
   */
  epoch?: string;
}

/** The tombstone an epoch stands for: the stamp names the deleting node and the time of the delete. */
function epochTombstone(collection: string, id: string, epoch: string): Tombstone {
  const { wallMs, nodeId } = parseHlc(epoch);
  return { collection, id, deletedAt: wallMs, deletedBy: nodeId, hlc: epoch };
}

function sameHeads(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(a);
  return b.every((h) => set.has(h));
}

function concatChunks(chunks: Uint8Array[]): Uint8Array {
  if (chunks.length === 1) return chunks[0] as Uint8Array;
  let size = 0;
  for (const c of chunks) size += c.length;
  const out = new Uint8Array(size);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.length;
  }
  return out;
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class DocumentStore implements Component {
  readonly name = "store";
  readonly path: string;
  readonly nodeId: string;
  readonly syncModes: SyncModeRegistry;

  private readonly adapter: StorageAdapter;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly clock: HybridLogicalClock;
  private readonly cache: LruCache<string, Doc>;
  private readonly recentlyBuilt: LruCache<string, Doc>;
  /** Keys stored UNRENDERED since start, for the background renderer. */
  private readonly unrendered = new Set<string>();
  private renderTimer: ReturnType<typeof setTimeout> | undefined;
  /** When the last document from a peer was stored (performance.now()), for the quiet period. */
  private lastArrivalAt = 0;
  /** wasm handles handed out by getDoc(): never freed by us, the GC finalizer reclaims them. */
  private readonly lent = new WeakSet<object>();
  private readonly listeners = new Set<(e: ChangeEvent) => void>();
  private readonly tombstoneTtlMs: number;
  private readonly collectionTtlSecs: Record<string, number>;
  private readonly sweepIntervalMs: number;
  private sweepTimer: ReturnType<typeof setInterval> | undefined;
  private encodeTimer: ReturnType<typeof setTimeout> | undefined;
  private encodeRetryMs = ENCODE_RETRY_MS;
  /** Pending rows, approximately (exact after a full drain); drives the backpressure. */
  private pendingCount = 0;
  /** Keys written pending by this process and not built yet (rows left pending by an earlier run are not here). */
  private readonly pendingKeys = new Set<string>();
  private started = false;
  private writes = 0;
  private compactionRuns = 0;
  /** Loaded on first stats() and then kept current by the hot write paths (no scan per call). */
  private totalsCache: StorageTotals | undefined;

  constructor(opts: DocumentStoreOptions) {
    checkKey("node id", opts.nodeId);
    this.nodeId = opts.nodeId;
    this.log = opts.log;
    this.now = opts.now ?? Date.now;
    this.syncModes = opts.syncModes ?? new SyncModeRegistry();
    this.adapter = opts.adapter ?? new SqliteStorageAdapter(sqlitePathFor(opts.dataDir));
    this.path = this.adapter.path;
    this.clock = new HybridLogicalClock(opts.nodeId, this.now);
    this.cache = new LruCache<string, Doc>(opts.cacheSize ?? DEFAULT_CACHE_SIZE, (_k, doc) => this.dispose(doc));
    this.recentlyBuilt = new LruCache<string, Doc>(RECENTLY_BUILT, (_k, doc) => this.dispose(doc));
    this.tombstoneTtlMs = (opts.tombstoneTtlSecs ?? DEFAULT_TOMBSTONE_TTL_SECS) * 1000;
    this.collectionTtlSecs = { ...(opts.collectionTtlSecs ?? {}) };
    this.sweepIntervalMs = opts.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS;
  }

  // ---------------------------------------------------------------- lifecycle

  isOpen(): boolean {
    return this.started && this.adapter.isOpen();
  }

  async start(): Promise<void> {
    if (this.started) return;
    this.log.info(`Opening ${this.adapter.kind} document store`, { path: this.path });
    this.adapter.open();
    const maxHlc = this.adapter.maxHlc();
    if (maxHlc !== undefined && isHlc(maxHlc)) this.clock.receive(maxHlc);
    this.started = true;
    const collections = this.adapter.collections(this.now());
    this.log.info("Document store ready", {
      documents: collections.reduce((n, c) => n + c.count, 0),
      collections: collections.length,
      cache_size: this.cache.capacity,
    });
    // Rows left pending by a previous run (stopped or killed before encoding them).
    this.pendingCount = this.adapter.pendingDocs(MAX_PENDING + 1).length;
    if (this.pendingCount > 0) this.scheduleEncoder();
    if (this.sweepIntervalMs > 0) {
      this.sweepTimer = setInterval(() => this.sweepSafely(), this.sweepIntervalMs);
      this.sweepTimer.unref?.();
    }
  }

  async stop(): Promise<void> {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    if (this.encodeTimer) clearTimeout(this.encodeTimer);
    this.encodeTimer = undefined;
    if (this.renderTimer) clearTimeout(this.renderTimer);
    this.renderTimer = undefined;
    if (!this.started) return;
    this.started = false;
    this.clearCaches();
    this.totalsCache = undefined;
    this.adapter.close();
  }

  /**
   * Runs `fn` with its writes committed together at the end: one commit for many remote updates.
   * If the group as a whole could not be committed, cached documents may carry changes that are
   * not stored, so all are dropped and the next access reloads what is.
   */
  group<T>(fn: () => T): T {
    this.requireOpen();
    try {
      return this.adapter.group(fn);
    } catch (e) {
      if (e instanceof GroupCommitError) {
        this.clearCaches();
        this.totalsCache = undefined;
      }
      throw e;
    }
  }

  private requireOpen(): void {
    if (!this.started) throw new StoreClosedError("the document store is not open");
  }

  // ---------------------------------------------------------------- events

  onChange(listener: (e: ChangeEvent) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  private emit(collection: string, id: string, action: ChangeEvent["action"], origin: ChangeOrigin): void {
    const event: ChangeEvent = { collection, id, action, origin };
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch (e) {
        this.log.warn("change listener failed", { collection, id, error: errorMessage(e) });
      }
    }
  }

  // ---------------------------------------------------------------- reads (SQLite only, no Automerge)

  get(collection: string, id: string): JsonObject | undefined {
    this.requireOpen();
    checkKey("collection", collection);
    checkKey("id", id);
    const row = this.adapter.getDoc(collection, id);
    if (!row || !isLive(row, this.now())) return undefined;
    return JSON.parse(this.rendered(row).json) as JsonObject;
  }

  list(collection: string, opts: { limit: number; after?: string }): { id: string; document: JsonObject }[] {
    this.requireOpen();
    checkKey("collection", collection);
    if (!Number.isInteger(opts.limit) || opts.limit < 0) throw new BadRequestError(`limit must be a non-negative integer, got ${opts.limit}`);
    if (opts.limit === 0) return [];
    const rows = this.adapter.listDocs(collection, { after: opts.after, limit: opts.limit, now: this.now() });
    return rows.map((r) => ({ id: r.id, document: JSON.parse(r.json === UNRENDERED ? this.renderedJson(collection, r.id) : r.json) as JsonObject }));
  }

  count(collection: string): number {
    this.requireOpen();
    checkKey("collection", collection);
    return this.adapter.countDocs(collection, this.now());
  }

  collections(): { name: string; count: number }[] {
    this.requireOpen();
    return this.adapter.collections(this.now());
  }

  stats(): StoreStats {
    this.requireOpen();
    // `bytes` counts Automerge data, which pending documents do not have yet; encode them first
    // (the backlog is normally a few milliseconds of writes) so the figure is exact. Failing to
    // (disk full) must not fail a metrics scrape: report what is stored.
    try {
      this.flushPending();
    } catch (e) {
      this.log.debug("could not encode pending documents for stats", { error: errorMessage(e) });
    }
    this.totalsCache ??= this.adapter.totals();
    return {
      ...this.totalsCache,
      writes: this.writes,
      cacheSize: this.cache.size,
      compactionRuns: this.compactionRuns,
    };
  }

  syncMode(collection: string): SyncMode {
    return this.syncModes.modeFor(collection);
  }

  // ---------------------------------------------------------------- local writes

  put(collection: string, id: string, value: JsonObject): { created: boolean; document: JsonObject } {
    this.requireOpen();
    checkKey("collection", collection);
    checkKey("id", id);
    const normalized = normalizeDocument(value);
    this.checkTtlField(normalized.document);
    return this.writeLocal(collection, id, normalized);
  }

  patch(collection: string, id: string, patch: JsonObject): JsonObject {
    this.requireOpen();
    checkKey("collection", collection);
    checkKey("id", id);
    if (!isPlainObject(patch)) throw new InvalidDocumentError("a merge patch for a document must be a JSON object");
    const row = this.adapter.getDoc(collection, id);
    if (!row || !isLive(row, this.now())) throw new NotFoundError(`document not found: ${collection}/${id}`);
    const validPatch = normalizeDocument(patch).document;
    const merged = applyMergePatch(JSON.parse(this.rendered(row).json) as JsonObject, validPatch);
    const normalized = normalizeDocument(merged);
    this.checkTtlField(normalized.document);
    return this.writeLocal(collection, id, normalized).document;
  }

  delete(collection: string, id: string): boolean {
    this.requireOpen();
    checkKey("collection", collection);
    checkKey("id", id);
    const row = this.adapter.getDoc(collection, id);
    if (!row) return false;
    const now = this.now();
    // Deleting an expired-but-unswept row is what the sweep would do; the caller still sees "absent".
    const wasLive = isLive(row, now);
    this.removeDoc(row, { collection, id, deletedAt: now, deletedBy: this.nodeId, hlc: this.clock.now() }, "local");
    return wasLive;
  }

  private checkTtlField(document: JsonObject): void {
    const ttl = document[TTL_FIELD];
    if (ttl === undefined || ttl === null) return;
    if (typeof ttl !== "number" || !(ttl > 0)) {
      throw new InvalidDocumentError(`${TTL_FIELD} must be a positive number of seconds, got ${JSON.stringify(ttl)}`);
    }
  }

  private expiryFor(collection: string, document: JsonObject, now: number): number | null {
    const own = document[TTL_FIELD];
    if (typeof own === "number" && own > 0 && Number.isFinite(own)) return now + Math.round(own * 1000);
    const byCollection = this.collectionTtlSecs[collection];
    if (byCollection !== undefined && byCollection > 0) return now + Math.round(byCollection * 1000);
    return null;
  }

  private writeLocal(collection: string, id: string, normalized: NormalizedDocument): { created: boolean; document: JsonObject } {
    const { document } = normalized;
    const json = JSON.stringify(document);
    const now = this.now();
    const expiresAt = this.expiryFor(collection, document, now);
    let prev = this.adapter.getDoc(collection, id);

    if (!prev) {
      // A local write after a delete is newer than the tombstone (the clock has seen its stamp), so
      // it re-creates the document with a fresh history. A LatestOnly tombstone is cleared. A
      // FullHistory one stays beside the new document until it expires: peers learn from it that the
      // new history replaces any copy older than the delete instead of merging with it (see
      // applyRemoteWith's `epoch`).
      const tombstone = this.adapter.getTombstone(collection, id);
      const hlc = this.clock.now();
      // Written pending: the JSON is committed now; the Automerge form (one change by `actor`) is
      // built by the background encoder in batches, or on first use. See `materialize`.
      const row: DocRow = {
        collection,
        id,
        json,
        hlc,
        writer: this.nodeId,
        actor: actorFor(this.nodeId, hlc),
        headsHash: PENDING,
        expiresAt,
        snapshotBytes: 0,
        incrementBytes: 0,
      };
      this.commitDoc(undefined, row, { kind: "none" }, undefined, tombstone !== undefined && this.syncModes.isLatestOnly(collection), "local");
      this.pendingCount++;
      this.pendingKeys.add(cacheKey(collection, id));
      if (this.pendingCount > MAX_PENDING) this.encodeInline();
      this.scheduleEncoder();
      return { created: true, document };
    }

    prev = this.rendered(prev);
    const wasLive = isLive(prev, now);
    if (wasLive && prev.json === json) {
      // Same content: no Automerge change, no new version, no event. Only a TTL is refreshed.
      if (prev.expiresAt !== expiresAt) this.commitMetadata({ ...prev, expiresAt });
      return { created: false, document };
    }

    prev = this.materialize(prev);
    const doc = this.loadDoc(prev);
    const headsBefore = Automerge.getHeads(doc);
    let changed: boolean;
    try {
      changed = applyJsonDiff(doc, JSON.parse(prev.json) as JsonObject, document, Math.floor(now / 1000));
    } catch (e) {
      this.forget(collection, id);
      throw new InvalidDocumentError(`cannot apply the document to ${collection}/${id}: ${errorMessage(e)}`);
    }
    if (!changed && wasLive) {
      if (prev.expiresAt !== expiresAt) this.commitMetadata({ ...prev, expiresAt });
      return { created: false, document };
    }
    const stored = changed
      ? this.chunkFor(prev, headsBefore, doc)
      : { chunk: { kind: "none" } as const, snapshotBytes: prev.snapshotBytes, incrementBytes: prev.incrementBytes };
    const row: DocRow = {
      ...prev,
      json,
      hlc: this.clock.now(),
      writer: this.nodeId,
      headsHash: changed ? docHeadsHash(doc) : prev.headsHash,
      expiresAt,
      snapshotBytes: stored.snapshotBytes,
      incrementBytes: stored.incrementBytes,
    };
    this.commitDoc(prev, row, stored.chunk, doc, false, "local");
    return { created: !wasLive, document };
  }

  // ---------------------------------------------------------------- persistence primitives

  /**
   * Appends the new changes, or folds everything into a fresh snapshot once the increments would
   * outweigh the snapshot (as automerge-repo does), so a write never rewrites the whole document
   * yet loading never replays an unbounded tail of increments.
   */
  private chunkFor(prev: DocRow, headsBefore: string[], after: Doc): { chunk: ChunkWrite; snapshotBytes: number; incrementBytes: number } {
    const increment = Automerge.saveSince(after, headsBefore);
    if (prev.incrementBytes + increment.length > prev.snapshotBytes) {
      const snapshot = Automerge.save(after);
      return { chunk: { kind: "snapshot", data: snapshot }, snapshotBytes: snapshot.length, incrementBytes: 0 };
    }
    return {
      chunk: { kind: "increment", data: increment },
      snapshotBytes: prev.snapshotBytes,
      incrementBytes: prev.incrementBytes + increment.length,
    };
  }

  private commitDoc(
    prev: DocRow | undefined,
    row: DocRow,
    chunk: ChunkWrite,
    doc: Doc | undefined,
    clearTombstone: boolean,
    origin: ChangeOrigin,
  ): void {
    try {
      this.adapter.transaction(() => {
        if (clearTombstone) this.adapter.deleteTombstone(row.collection, row.id);
        this.adapter.writeDoc(row, chunk);
      });
    } catch (e) {
      // The in-memory document already carries the change that did not persist: drop it so the
      // next access reloads the committed state.
      this.forget(row.collection, row.id, doc);
      throw e;
    }
    if (doc) {
      // Admission on second use: a document enters the cache when it is loaded again (to be
      // updated or synced), not when it is created. Write-once documents (unique-id telemetry)
      // would otherwise fill the cache and its wasm memory with documents nobody touches again.
      if (prev || this.cache.has(cacheKey(row.collection, row.id))) this.cacheReplace(row.collection, row.id, doc);
      else this.forget(row.collection, row.id, doc);
    }
    this.writes++;
    this.adjustTotals(prev ? 0 : 1, clearTombstone ? -1 : 0, row.snapshotBytes + row.incrementBytes - (prev ? prev.snapshotBytes + prev.incrementBytes : 0));
    this.emit(row.collection, row.id, "upsert", origin);
  }

  private commitMetadata(row: DocRow): void {
    this.adapter.writeDoc(row, { kind: "none" });
  }

  private removeDoc(row: DocRow, tombstone: Tombstone, origin: ChangeOrigin): void {
    // A re-created FullHistory document may have its earlier delete's tombstone beside it: replaced.
    const hadTombstone = this.adapter.getTombstone(row.collection, row.id) !== undefined;
    this.pendingKeys.delete(cacheKey(row.collection, row.id));
    this.adapter.transaction(() => {
      this.adapter.deleteDoc(row.collection, row.id);
      this.adapter.putTombstone(tombstone);
    });
    this.forget(row.collection, row.id);
    this.writes++;
    this.adjustTotals(-1, hadTombstone ? 0 : 1, -(row.snapshotBytes + row.incrementBytes));
    this.emit(row.collection, row.id, "delete", origin);
  }

  private adjustTotals(documents: number, tombstones: number, bytes: number): void {
    const t = this.totalsCache;
    if (!t) return;
    t.documents += documents;
    t.tombstones += tombstones;
    t.bytes += bytes;
  }

  // ---------------------------------------------------------------- pending documents (write-behind encoding)

  /**
   * Builds and persists the Automerge form of a pending row: one change that creates its JSON,
   * made by the row's actor and timestamped with its HLC's wall time, so the result depends only
   * on the row. A new document's PUT therefore commits JSON alone and the Automerge work happens
   * here, in batches. Measured behind HTTP, encoding inside each request cost ~250 us per create
   * (the wasm and SQLite paths run cold between requests) against ~70 us per document in a batch
   * (hot code, one transaction per batch) plus ~50 us for the JSON-only request. Anything that
   * needs Automerge (an update, sync, digest, getDoc) materializes first, so the built form is
   * persisted before anyone sees it.
   * Returns the row as now stored; non-pending rows are returned unchanged.
   */
  private materialize(row: DocRow, opts: { cache: boolean } = { cache: true }): DocRow {
    if (row.headsHash !== PENDING) return row;
    const [next] = this.materializeRows([row], opts);
    return next as DocRow;
  }

  private materializeRows(rows: DocRow[], opts: { cache: boolean }): DocRow[] {
    const built: { row: DocRow; doc: Doc; snapshot: Uint8Array }[] = [];
    try {
      for (const row of rows) {
        const normalized = normalizeDocument(JSON.parse(row.json));
        const doc = createDoc(normalized.document, row.actor, normalized.hasUnsafeIntegers, Math.floor(parseHlc(row.hlc).wallMs / 1000));
        const snapshot = Automerge.save(doc);
        built.push({ row: { ...row, headsHash: docHeadsHash(doc), snapshotBytes: snapshot.length, incrementBytes: 0 }, doc, snapshot });
      }
      this.adapter.transaction(() => {
        for (const b of built) this.adapter.writeDoc(b.row, { kind: "snapshot", data: b.snapshot });
      });
    } catch (e) {
      for (const b of built) Automerge.free(b.doc);
      throw e;
    }
    this.pendingCount = Math.max(0, this.pendingCount - built.length);
    for (const b of built) this.pendingKeys.delete(cacheKey(b.row.collection, b.row.id));
    for (const b of built) {
      this.adjustTotals(0, 0, b.row.snapshotBytes);
      if (opts.cache) this.cacheReplace(b.row.collection, b.row.id, b.doc);
      else this.keepRecentlyBuilt(b.row.collection, b.row.id, b.doc);
    }
    return built.map((b) => b.row);
  }

  /**
   * Materializes pending documents (of one collection, or all) until none are left or the time
   * budget is spent. Returns how many were built. The sync layer calls this through `digest`.
   */
  flushPending(opts: { collection?: string; budgetMs?: number; limit?: number } = {}): number {
    this.requireOpen();
    const deadline = performance.now() + (opts.budgetMs ?? Number.POSITIVE_INFINITY);
    const limit = opts.limit ?? Number.POSITIVE_INFINITY;
    let count = 0;
    while (count < limit && performance.now() < deadline) {
      const batch = Math.min(ENCODE_BATCH, limit - count);
      const keys = this.adapter.pendingDocs(batch, opts.collection);
      const rows: DocRow[] = [];
      for (const k of keys) {
        const row = this.adapter.getDoc(k.collection, k.id);
        if (row && row.headsHash === PENDING) rows.push(row);
      }
      if (rows.length > 0) this.materializeRows(rows, { cache: false });
      count += rows.length;
      if (keys.length < batch) {
        if (opts.collection === undefined) {
          this.pendingCount = 0;
          this.pendingKeys.clear();
        }
        break;
      }
    }
    return count;
  }

  /** Backpressure: the backlog is over its bound, so this create pays for encoding a few rows. */
  private encodeInline(): void {
    try {
      this.flushPending({ limit: ENCODE_INLINE });
    } catch (e) {
      // The create itself is committed; the background encoder retries with backoff.
      this.log.debug("inline Automerge encoding failed", { error: errorMessage(e) });
    }
  }

  /** Runs the background encoder soon, in slices that leave the event loop free for requests. */
  private scheduleEncoder(delayMs = ENCODE_DELAY_MS): void {
    if (this.encodeTimer || !this.started) return;
    this.encodeTimer = setTimeout(() => {
      this.encodeTimer = undefined;
      if (!this.started) return;
      try {
        const built = this.flushPending({ budgetMs: ENCODE_SLICE_MS });
        this.encodeRetryMs = ENCODE_RETRY_MS;
        if (built > 0) this.scheduleEncoder(ENCODE_GAP_MS);
      } catch (e) {
        // Typically a full or read-only disk: the JSON is safe, so back off instead of spinning.
        this.log.warn("background Automerge encoding failed; will retry", { error: errorMessage(e), retry_ms: this.encodeRetryMs });
        this.scheduleEncoder(this.encodeRetryMs);
        this.encodeRetryMs = Math.min(this.encodeRetryMs * 2, ENCODE_MAX_RETRY_MS);
      }
    }, delayMs);
    this.encodeTimer.unref?.();
  }

  // ---------------------------------------------------------------- Automerge cache

  private loadDoc(row: DocRow, opts: { cache: boolean } = { cache: true }): Doc {
    const key = cacheKey(row.collection, row.id);
    const cached = this.cache.get(key);
    if (cached) return cached;
    const built = this.recentlyBuilt.delete(key);
    if (built) {
      if (opts.cache) this.cache.set(key, built);
      return built;
    }
    if (row.headsHash === PENDING) throw new Error(`internal: ${row.collection}/${row.id} must be materialized before loading`);
    const chunks = this.adapter.readChunks(row.collection, row.id);
    if (chunks.length === 0) throw new StorageError(`stored document ${row.collection}/${row.id} has no Automerge data`);
    // Loading into an empty document through the handle skips materialising the JS view (the
    // write path never reads it; see json.ts), which is about a third of a load's cost and memory.
    const doc = Automerge.init<unknown>({ actor: row.actor });
    try {
      Automerge.getBackend(doc).loadIncremental(concatChunks(chunks));
    } catch (e) {
      Automerge.free(doc);
      throw new StorageError(`stored document ${row.collection}/${row.id} cannot be loaded: ${errorMessage(e)}`);
    }
    if (opts.cache) this.cache.set(key, doc);
    return doc;
  }

  private dispose(doc: Doc): void {
    const handle = Automerge.getBackend(doc);
    if (!this.lent.has(handle)) Automerge.free(doc);
  }

  private cacheReplace(collection: string, id: string, doc: Doc): void {
    this.holdIn(this.cache, collection, id, doc);
  }

  private keepRecentlyBuilt(collection: string, id: string, doc: Doc): void {
    this.holdIn(this.recentlyBuilt, collection, id, doc);
  }

  /** Puts `doc` in one of the caches, freeing whatever other handle either held for the key. */
  private holdIn(cache: LruCache<string, Doc>, collection: string, id: string, doc: Doc): void {
    const key = cacheKey(collection, id);
    for (const old of this.uncache(key)) if (Automerge.getBackend(old) !== Automerge.getBackend(doc)) this.dispose(old);
    cache.set(key, doc);
  }

  /** Drops the cached document (and `extra`, if it is a different handle) and frees them. */
  private forget(collection: string, id: string, extra?: Doc): void {
    const old = this.uncache(cacheKey(collection, id));
    for (const doc of old) this.dispose(doc);
    if (extra && !old.some((doc) => Automerge.getBackend(doc) === Automerge.getBackend(extra))) this.dispose(extra);
  }

  /** Removes the key from both caches without freeing; returns what they held. */
  private uncache(key: string): Doc[] {
    const held: Doc[] = [];
    const cached = this.cache.delete(key);
    if (cached) held.push(cached);
    const built = this.recentlyBuilt.delete(key);
    if (built) held.push(built);
    return held;
  }

  private clearCaches(): void {
    this.cache.clear();
    this.recentlyBuilt.clear();
  }

  // ---------------------------------------------------------------- TTL and tombstone sweep

  /**
   * Deletes expired documents (leaving tombstones so peers do not resurrect them) and purges
   * tombstones older than the tombstone TTL. Runs on a timer; callable directly.
   */
  sweep(): { expired: number; purgedTombstones: number } {
    this.requireOpen();
    const now = this.now();
    let expired = 0;
    for (;;) {
      const keys = this.adapter.expiredDocs(now, SWEEP_BATCH);
      if (keys.length === 0) break;
      const removed: DocRow[] = [];
      let replacedTombstones = 0;
      this.adapter.transaction(() => {
        for (const k of keys) {
          const row = this.adapter.getDoc(k.collection, k.id);
          if (!row) continue;
          if (this.adapter.getTombstone(k.collection, k.id)) replacedTombstones++;
          this.adapter.deleteDoc(k.collection, k.id);
          this.adapter.putTombstone({ collection: k.collection, id: k.id, deletedAt: now, deletedBy: this.nodeId, hlc: this.clock.now() });
          removed.push(row);
        }
      });
      for (const row of removed) {
        this.forget(row.collection, row.id);
        this.writes++;
        this.adjustTotals(-1, 1, -(row.snapshotBytes + row.incrementBytes));
        this.emit(row.collection, row.id, "delete", "local");
      }
      this.adjustTotals(0, -replacedTombstones, 0);
      expired += removed.length;
      if (keys.length < SWEEP_BATCH) break;
    }
    const purgedTombstones = this.adapter.purgeTombstones(now - this.tombstoneTtlMs);
    this.adjustTotals(0, -purgedTombstones, 0);
    if (expired > 0 || purgedTombstones > 0) {
      this.log.info("TTL sweep complete", { expired, tombstones_purged: purgedTombstones });
    }
    return { expired, purgedTombstones };
  }

  private sweepSafely(): void {
    if (!this.started) return;
    try {
      this.sweep();
    } catch (e) {
      this.log.warn("TTL sweep failed", { error: errorMessage(e) });
    }
  }

  // ---------------------------------------------------------------- compaction

  /**
   * Rewrites one LatestOnly document without history (current state only, new actor), if that
   * makes it smaller. Content, HLC and writer are unchanged, so no change event is emitted; peers
   * treat LatestOnly documents as wholesale LWW replacements, never merging histories, which is
   * what makes dropping history safe. Returns sizes, or undefined if the document is absent.
   */
  compactDocument(collection: string, id: string): { before: number; after: number } | undefined {
    this.requireOpen();
    checkKey("collection", collection);
    checkKey("id", id);
    if (!this.syncModes.isLatestOnly(collection)) {
      throw new FullHistoryCompactionError(`collection '${collection}' is FullHistory; compacting it would fork its history`);
    }
    const stored = this.adapter.getDoc(collection, id);
    if (!stored) return undefined;
    const row = this.materialize(stored, { cache: false });
    const before = row.snapshotBytes + row.incrementBytes;
    const wasCached = this.cache.has(cacheKey(collection, id));
    const current = this.loadDoc(row, { cache: false });
    const fresh = rebuildDoc(current, actorFor(this.nodeId, `compact:${this.clock.now()}`), Math.floor(this.now() / 1000));
    if (!wasCached) this.dispose(current);
    const snapshot = Automerge.save(fresh);
    if (snapshot.length >= before) {
      Automerge.free(fresh);
      return { before, after: before };
    }
    const next: DocRow = {
      ...row,
      actor: Automerge.getActorId(fresh),
      headsHash: docHeadsHash(fresh),
      snapshotBytes: snapshot.length,
      incrementBytes: 0,
    };
    try {
      this.adapter.writeDoc(next, { kind: "snapshot", data: snapshot });
    } catch (e) {
      Automerge.free(fresh);
      throw e;
    }
    if (wasCached) this.cacheReplace(collection, id, fresh);
    else Automerge.free(fresh);
    this.adjustTotals(0, 0, snapshot.length - before);
    return { before, after: snapshot.length };
  }

  /** Compacts every document above `thresholdBytes` in the LatestOnly collections `include` accepts. */
  compact(opts: { include: (collection: string) => boolean; thresholdBytes: number }): CompactionResult {
    this.requireOpen();
    const result: CompactionResult = { count: 0, before: 0, after: 0 };
    for (const { name } of this.adapter.collections(this.now())) {
      if (!this.syncModes.isLatestOnly(name) || !opts.include(name)) continue;
      for (const candidate of this.adapter.docsLargerThan(name, opts.thresholdBytes)) {
        const r = this.compactDocument(candidate.collection, candidate.id);
        if (r && r.after < r.before) {
          result.count++;
          result.before += r.before;
          result.after += r.after;
        }
      }
    }
    // Counts runs that compacted something, as the peat_compaction_runs_total metric documents.
    if (result.count > 0) this.compactionRuns++;
    return result;
  }

  // ---------------------------------------------------------------- sync-facing API

  /** Observe a peer's HLC (max rule), so later local writes order after it. */
  receiveHlc(hlc: string): void {
    this.clock.receive(hlc);
  }

  /** The latest HLC issued or observed, without advancing the clock. */
  currentHlc(): string {
    return this.clock.peek();
  }

  /**
   * The live Automerge document, for read-only use (generateSyncMessage, getHeads, save...).
   * Fetch it per use: a later write through the store makes this object outdated. The store never
   * frees a document it handed out, so holding it is memory-safe.
   */
  getDoc(collection: string, id: string): Doc | undefined {
    this.requireOpen();
    checkKey("collection", collection);
    checkKey("id", id);
    const stored = this.adapter.getDoc(collection, id);
    if (!stored) return undefined;
    const row = this.materialize(stored);
    // Local writes commit on the handle without refreshing the JS view; bring it up to date so a
    // caller reading fields sees the current state. The refreshed object replaces the cached one.
    const doc = Automerge.loadIncremental(this.loadDoc(row), EMPTY);
    this.cache.set(cacheKey(collection, id), doc);
    this.lent.add(Automerge.getBackend(doc));
    return doc;
  }

  /**
   * The document for sync to read (heads, `saveSince`, sync messages) without refreshing its JS
   * view, which sync never reads. Valid until the next store call that loads another document.
   */
  syncDoc(collection: string, id: string): Doc | undefined {
    this.requireOpen();
    checkKey("collection", collection);
    checkKey("id", id);
    // Cached documents are current (every commit replaces or drops them): no need to read the row.
    const cached = this.cache.get(cacheKey(collection, id));
    if (cached) return cached;
    const stored = this.adapter.getDoc(collection, id);
    if (!stored) return undefined;
    return this.loadDoc(this.materialize(stored));
  }

  /**
   * Builds the Automerge form of whichever of `keys` are still pending, in one transaction, and
   * keeps them cached: sync is about to read each of them. Cheaper than building them one by one.
   */
  prepareForSync(keys: readonly { collection: string; id: string }[]): void {
    this.requireOpen();
    const rows: DocRow[] = [];
    for (const k of keys) {
      if (!this.pendingKeys.has(cacheKey(k.collection, k.id))) continue;
      const row = this.adapter.getDoc(k.collection, k.id);
      if (row && row.headsHash === PENDING) rows.push(row);
    }
    for (let i = 0; i < rows.length; i += ENCODE_BATCH) this.materializeRows(rows.slice(i, i + ENCODE_BATCH), { cache: true });
  }

  /** Stored bytes (snapshot + increments), loadable with `Automerge.load`, without loading here. */
  getDocBytes(collection: string, id: string): Uint8Array | undefined {
    this.requireOpen();
    checkKey("collection", collection);
    checkKey("id", id);
    // Stored chunks mean a built document: one read instead of two (this is on the push path).
    const chunks = this.adapter.readChunks(collection, id);
    if (chunks.length > 0) return concatChunks(chunks);
    const row = this.adapter.getDoc(collection, id);
    if (!row) return undefined;
    this.materialize(row, { cache: false });
    return concatChunks(this.adapter.readChunks(collection, id));
  }

  getVersion(collection: string, id: string): (DocVersion & { headsHash: string }) | undefined {
    this.requireOpen();
    checkKey("collection", collection);
    checkKey("id", id);
    const stored = this.adapter.getDoc(collection, id);
    if (!stored) return undefined;
    const row = this.materialize(stored, { cache: false });
    return { hlc: row.hlc, writer: row.writer, headsHash: row.headsHash };
  }

  /** One row per stored document of `collection`, by id (pending documents are encoded first). */
  digest(collection: string): DigestRow[] {
    this.requireOpen();
    checkKey("collection", collection);
    this.flushPending({ collection });
    return this.adapter.digest(collection);
  }

  tombstones(collection?: string): Tombstone[] {
    this.requireOpen();
    if (collection !== undefined) checkKey("collection", collection);
    return this.adapter.listTombstones(collection);
  }

  getTombstone(collection: string, id: string): Tombstone | undefined {
    this.requireOpen();
    return this.adapter.getTombstone(collection, id);
  }

  /**
   * Applies Automerge changes from a peer (FullHistory sync). Rejected when a tombstone at least as
   * new as `hlc` exists. If the changes need history this node lacks, nothing is persisted and the
   * outcome is `missing-deps` (ask the peer for the whole document).
   */
  applyRemoteChanges(collection: string, id: string, changes: Uint8Array[], hlc: string, writer: string): ApplyOutcome {
    return this.applyRemoteWith(collection, id, { hlc, writer }, (doc) => Automerge.applyChanges(doc, changes)[0]);
  }

  /** Merges a peer's whole document (FullHistory). The caller keeps ownership of `remote`. */
  mergeRemoteDoc(collection: string, id: string, remote: Doc, hlc: string, writer: string): ApplyOutcome {
    return this.applyRemoteWith(collection, id, { hlc, writer }, (doc) => Automerge.merge(doc, remote));
  }

  /**
   * The general remote-merge primitive: `mutate` receives the current document (or an empty one)
   * and returns it after applying remote data (applyChanges, merge, receiveSyncMessage, ...).
   * The store persists whatever `mutate` added and records version max(stored, `version`).
   */
  applyRemoteWith(
    collection: string,
    id: string,
    version: RemoteVersion,
    mutate: (doc: Doc) => Doc,
    /** Bytes that `mutate` loads whole into an empty document: stored as they are for a new one. */
    loaded?: Uint8Array,
  ): ApplyOutcome {
    this.requireOpen();
    checkKey("collection", collection);
    checkKey("id", id);
    checkVersion(version);
    this.clock.receiveRemote(version.hlc);
    let tombstone = this.adapter.getTombstone(collection, id);
    if (tombstone) this.dropStaleCopy(collection, id, tombstone);
    if (tombstone && compareVersions(version, tombstoneVersion(tombstone)) <= 0) return "superseded";
    const epoch = version.epoch === undefined ? undefined : epochTombstone(collection, id, version.epoch);
    if (epoch && compareVersions(tombstoneVersion(epoch), version) >= 0) {
      throw new InvalidRemoteDataError(`epoch ${epoch.hlc} of ${collection}/${id} is not older than its version ${version.hlc}`);
    }
    if (epoch && tombstone?.hlc !== epoch.hlc) {
      // The sender's history was started afresh after a delete (the epoch). A copy of ours older
      // than that delete is the deleted history: it is deleted now, so that the new history replaces
      // it instead of merging with it (which would resurrect deleted content). Without a copy, the
      // epoch becomes the tombstone beside the document we are about to receive, as on the sender.
      const copy = this.adapter.getDoc(collection, id);
      if (!copy) {
        this.adapter.putTombstone(epoch);
        if (!tombstone) this.adjustTotals(0, 1, 0);
        tombstone = epoch;
      } else if (compareVersions(copy, tombstoneVersion(epoch)) < 0) {
        this.removeDoc(copy, epoch, "remote");
        tombstone = epoch;
      }
    }

    const existing = this.adapter.getDoc(collection, id);
    const prev = existing ? this.materialize(existing) : undefined;
    const base = prev ? this.loadDoc(prev) : Automerge.init<unknown>({ actor: actorFor(this.nodeId, `remote:${this.clock.now()}`) });
    const headsBefore = Automerge.getHeads(base);
    let after: Doc;
    try {
      after = mutate(base);
    } catch (e) {
      if (prev) this.forget(collection, id);
      else this.dispose(base);
      throw new InvalidRemoteDataError(`cannot apply remote data to ${collection}/${id}: ${errorMessage(e)}`);
    }
    const headsAfter = Automerge.getHeads(after);
    if (sameHeads(headsBefore, headsAfter)) {
      const missing = Automerge.getMissingDeps(after, headsAfter).length > 0;
      if (!prev) this.dispose(after);
      // `mutate` made the cached view outdated even though nothing changed: cache its successor.
      // Changes queued for missing dependencies stay queued in it, unpersisted, as the Automerge
      // exchange expects: the peer is asked only for the missing dependencies and does not send the
      // queued changes again (dropping them here stalled the exchange for good). If the handle is
      // evicted or the node restarts, they are lost, and the peer sends them again when asked (see
      // SyncEngine.applySyncMessage).
      else this.cacheReplace(collection, id, after);
      return missing ? "missing-deps" : "unchanged";
    }
    const winner = prev && compareVersions(prev, version) > 0 ? { hlc: prev.hlc, writer: prev.writer } : version;
    const stored = prev
      ? this.chunkFor(prev, headsBefore, after)
      : (() => {
          const snapshot = loaded ? loaded.slice() : Automerge.save(after);
          return { chunk: { kind: "snapshot", data: snapshot } as ChunkWrite, snapshotBytes: snapshot.length, incrementBytes: 0 };
        })();
    const row: DocRow = {
      collection,
      id,
      json: UNRENDERED,
      hlc: winner.hlc,
      writer: winner.writer,
      actor: prev?.actor ?? Automerge.getActorId(after),
      headsHash: docHeadsHash(after),
      expiresAt: this.expiryFor(collection, { [TTL_FIELD]: rootNumber(after, TTL_FIELD) ?? null }, this.now()),
      snapshotBytes: stored.snapshotBytes,
      incrementBytes: stored.incrementBytes,
    };
    // A tombstone stays beside the document when the sender's history was started after it (the
    // epoch), or beside a copy we already hold (it is that copy's epoch); otherwise this newer
    // write re-creates the document and the tombstone goes.
    const clearTombstone = tombstone !== undefined && !prev && tombstone.hlc !== version.epoch;
    this.commitDoc(prev, row, stored.chunk, after, clearTombstone, "remote");
    this.unrendered.add(cacheKey(collection, id));
    if (this.unrendered.size > MAX_UNRENDERED) this.renderSome(RENDER_INLINE);
    this.scheduleRenderer();
    return "applied";
  }

  // ---------------------------------------------------------------- deferred JSON of remote documents

  /** The row with its JSON, rendered (and stored, where the disk allows) if it arrived UNRENDERED. */
  private rendered(row: DocRow, opts: { mustStore: boolean } = { mustStore: false }): DocRow {
    if (row.json !== UNRENDERED) return row;
    const key = cacheKey(row.collection, row.id);
    // A cached document stays cached (one just built is promoted: this is its first use); one
    // loaded only to be rendered is freed.
    const cached = this.cache.has(key) || this.recentlyBuilt.has(key);
    const doc = this.loadDoc(row, { cache: cached });
    let json: string;
    try {
      json = JSON.stringify(renderDoc(doc));
    } finally {
      if (!cached) this.dispose(doc);
    }
    const next = { ...row, json };
    try {
      this.commitMetadata(next);
    } catch (e) {
      if (opts.mustStore) throw e;
      // A full or read-only disk: the read still gets its document; a later read renders again.
      this.log.debug("could not store a rendered document", { collection: row.collection, id: row.id, error: errorMessage(e) });
      return next;
    }
    this.unrendered.delete(key);
    return next;
  }

  private renderedJson(collection: string, id: string): string {
    const row = this.adapter.getDoc(collection, id);
    if (!row) throw new StorageError(`internal: ${collection}/${id} vanished while being listed`);
    return this.rendered(row).json;
  }

  /** Renders up to `limit` of the documents stored UNRENDERED, in one transaction. */
  private renderSome(limit: number): void {
    const keys: string[] = [];
    for (const key of this.unrendered) {
      if (keys.length >= limit) break;
      keys.push(key);
    }
    this.adapter.transaction(() => {
      for (const key of keys) {
        const { collection, id } = splitCacheKey(key);
        const row = this.adapter.getDoc(collection, id);
        if (row && row.json === UNRENDERED) this.rendered(row, { mustStore: true });
        else this.unrendered.delete(key);
      }
    });
  }

  /**
   * Restarts the quiet period; once it passes, renders in slices that leave the loop free. Called
   * for every document that arrives, so it only notes the time: the one timer checks it when it
   * fires, instead of being replaced on each arrival.
   */
  private scheduleRenderer(): void {
    this.lastArrivalAt = performance.now();
    this.armRenderer(RENDER_QUIET_MS);
  }

  private armRenderer(delayMs: number): void {
    if (!this.started || this.renderTimer) return;
    this.renderTimer = setTimeout(() => {
      this.renderTimer = undefined;
      if (!this.started) return;
      const quietFor = performance.now() - this.lastArrivalAt;
      if (quietFor < RENDER_QUIET_MS) return this.armRenderer(RENDER_QUIET_MS - quietFor);
      const deadline = performance.now() + ENCODE_SLICE_MS;
      try {
        while (this.unrendered.size > 0 && performance.now() < deadline) this.renderSome(ENCODE_BATCH);
      } catch (e) {
        this.log.warn("background rendering of documents from peers failed; reads render them", { error: errorMessage(e) });
        return;
      }
      if (this.unrendered.size > 0) this.armRenderer(ENCODE_GAP_MS);
    }, delayMs);
    this.renderTimer.unref?.();
  }

  /**
   * Applies a peer's `Automerge.save()` bytes. LatestOnly: last-writer-wins replacement by
   * (hlc, writer), never a merge, because compaction gives each node's copy an unrelated history.
   * FullHistory: merged like any other remote data. Both honour tombstones.
   */
  applyRemoteSnapshot(collection: string, id: string, snapshot: Uint8Array, hlc: string, writer: string): ApplyOutcome {
    this.requireOpen();
    checkKey("collection", collection);
    checkKey("id", id);
    const version = { hlc, writer };
    checkVersion(version);
    if (!this.syncModes.isLatestOnly(collection)) {
      let remote: Doc;
      try {
        remote = Automerge.load<unknown>(snapshot);
      } catch (e) {
        throw new InvalidRemoteDataError(`remote snapshot for ${collection}/${id} cannot be loaded: ${errorMessage(e)}`);
      }
      try {
        return this.applyRemoteWith(collection, id, version, (doc) => Automerge.merge(doc, remote));
      } finally {
        Automerge.free(remote);
      }
    }

    this.clock.receiveRemote(hlc);
    const tombstone = this.adapter.getTombstone(collection, id);
    if (tombstone && compareVersions(version, tombstoneVersion(tombstone)) <= 0) return "superseded";
    const prev = this.adapter.getDoc(collection, id);
    if (prev) {
      const order = compareVersions(version, prev);
      if (order < 0) return "superseded";
      if (order === 0) return "unchanged";
    }
    let doc: Doc;
    try {
      doc = Automerge.load<unknown>(snapshot, { actor: actorFor(this.nodeId, `snapshot:${hlc}:${writer}`) });
    } catch (e) {
      throw new InvalidRemoteDataError(`remote snapshot for ${collection}/${id} cannot be loaded: ${errorMessage(e)}`);
    }
    const document = renderDoc(doc);
    const bytes = snapshot.slice();
    const row: DocRow = {
      collection,
      id,
      json: JSON.stringify(document),
      hlc,
      writer,
      actor: Automerge.getActorId(doc),
      headsHash: docHeadsHash(doc),
      expiresAt: this.expiryFor(collection, document, this.now()),
      snapshotBytes: bytes.length,
      incrementBytes: 0,
    };
    this.commitDoc(prev, row, { kind: "snapshot", data: bytes }, doc, tombstone !== undefined, "remote");
    return "applied";
  }

  /**
   * A document beside a tombstone must have been written after that delete (a re-creation). One
   * older than it is the deleted history that survived (a crash between the two writes, say):
   * kept, it would be offered to peers that refuse it for ever. It is deleted now.
   */
  private dropStaleCopy(collection: string, id: string, tombstone: Tombstone): boolean {
    const copy = this.adapter.getDoc(collection, id);
    if (!copy || compareVersions(copy, tombstoneVersion(tombstone)) >= 0) return false;
    this.log.warn("Deleting a document older than the tombstone beside it", { collection, id, version: copy.hlc, tombstone: tombstone.hlc });
    this.removeDoc(copy, tombstone, "remote");
    return true;
  }

  /**
   * A peer's delete. It wins over a stored copy with an older version (the copy is removed) and
   * replaces an older tombstone; a copy newer than the tombstone survives and the tombstone is
   * dropped (that write re-created the document after the delete).
   */
  applyRemoteTombstone(t: Tombstone): ApplyOutcome {
    this.requireOpen();
    checkKey("collection", t.collection);
    checkKey("id", t.id);
    checkVersion(tombstoneVersion(t));
    if (typeof t.deletedAt !== "number" || !Number.isFinite(t.deletedAt)) {
      throw new InvalidRemoteDataError("tombstone deletedAt must be a finite number of milliseconds");
    }
    this.clock.receiveRemote(t.hlc);
    const tombstone: Tombstone = { collection: t.collection, id: t.id, deletedAt: t.deletedAt, deletedBy: t.deletedBy, hlc: t.hlc };
    const existing = this.adapter.getTombstone(t.collection, t.id);
    if (existing) {
      const order = compareVersions(tombstoneVersion(tombstone), tombstoneVersion(existing));
      // Our tombstone, beside a document re-created after it: the sender lacks that document.
      if (order === 0) {
        if (this.dropStaleCopy(t.collection, t.id, existing)) return "applied";
        return this.adapter.getDoc(t.collection, t.id) ? "superseded" : "unchanged";
      }
      if (order < 0) return "superseded";
    }
    const row = this.adapter.getDoc(t.collection, t.id);
    if (row && compareVersions(row, tombstoneVersion(tombstone)) > 0) return "superseded";
    if (row) {
      this.removeDoc(row, tombstone, "remote");
    } else {
      this.adapter.putTombstone(tombstone);
      this.writes++;
      if (!existing) this.adjustTotals(0, 1, 0);
    }
    return "applied";
  }
}
