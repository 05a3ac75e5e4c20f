/**
 * The narrow persistence interface under DocumentStore (in the spirit of automerge-repo's
 * StorageAdapter, shaped for this store). Everything the store needs and nothing it doesn't:
 * per-document rows (metadata + JSON rendering) with their Automerge chunks, tombstones, and
 * transactions. All methods are synchronous: bun:sqlite is, and keeping writes synchronous lets a
 * write be acknowledged only after its transaction has committed.
 *
 * Errors: implementations throw StorageError / InsufficientStorageError (src/errors.ts) for
 * persistence failures, never driver-specific errors.
 */
import type { DigestRow, Tombstone } from "./types.ts";

export interface DocRow {
  collection: string;
  id: string;
  /** JSON rendering of the current state (without `_id`), so reads never need Automerge. */
  json: string;
  /** HLC of the last write (local or remote) and the node that made it: the LWW version. */
  hlc: string;
  writer: string;
  /** Actor id this node uses for local changes to this document's current history. */
  actor: string;
  /**
   * Short hash of the Automerge heads, or "" while the document is pending: written as JSON only,
   * its Automerge form (one change creating that JSON, by `actor`) not built yet. Pending rows
   * have no chunks and zero byte counts.
   */
  headsHash: string;
  /** Epoch ms after which the document is expired; null = never. */
  expiresAt: number | null;
  /** Size of the snapshot chunk and of all incremental chunks, in bytes. */
  snapshotBytes: number;
  incrementBytes: number;
}

/**
 * How a write changes the stored Automerge bytes:
 * - `snapshot`: replace every chunk of the document with this `Automerge.save()` output;
 * - `increment`: append these change bytes after the existing chunks;
 * - `none`: metadata only.
 */
export type ChunkWrite = { kind: "snapshot"; data: Uint8Array } | { kind: "increment"; data: Uint8Array } | { kind: "none" };

export interface ListedDoc {
  id: string;
  json: string;
}

export interface DocKey {
  collection: string;
  id: string;
}

export interface DocSize extends DocKey {
  bytes: number;
}

export interface StorageTotals {
  documents: number;
  tombstones: number;
  bytes: number;
}

export interface StorageAdapter {
  /** Human label for logs, e.g. "SQLite" or "in-memory". */
  readonly kind: string;
  /** Absolute file path, or ":memory:". */
  readonly path: string;

  open(): void;
  close(): void;
  isOpen(): boolean;

  /** Runs `fn` atomically: all its writes commit together or none do. Nested calls join the outer one. */
  transaction<T>(fn: () => T): T;

  /**
   * Group commit: the transactions `fn` runs are committed together when it returns or throws,
   * which costs one commit instead of one each. Each stays atomic on its own: a failing one is
   * undone alone and the others still commit. Throws GroupCommitError if the group as a whole
   * could not be committed (nothing of it is then stored).
   */
  group<T>(fn: () => T): T;

  getDoc(collection: string, id: string): DocRow | undefined;
  /** The document's chunks, snapshot first; their concatenation is loadable by `Automerge.load`. */
  readChunks(collection: string, id: string): Uint8Array[];
  /** Inserts or replaces the row and applies `chunk`. */
  writeDoc(row: DocRow, chunk: ChunkWrite): void;
  /** Removes the row and its chunks; false if there was none. */
  deleteDoc(collection: string, id: string): boolean;

  /** Non-expired documents (expiresAt null or > now), ordered by id in UTF-8 byte order, ids > after. */
  listDocs(collection: string, opts: { after?: string; limit: number; now: number }): ListedDoc[];
  countDocs(collection: string, now: number): number;
  /** Collections with at least one non-expired document, ordered by name, with their counts. */
  collections(now: number): { name: string; count: number }[];
  /** Documents whose expiresAt <= now, oldest expiry first. */
  expiredDocs(now: number, limit: number): DocKey[];
  /** Pending documents (headsHash ""), optionally of one collection, at most `limit`. */
  pendingDocs(limit: number, collection?: string): DocKey[];
  /** Documents of `collection` whose snapshot + increment bytes exceed `bytes`. */
  docsLargerThan(collection: string, bytes: number): DocSize[];
  /** Every stored document of `collection`, ordered by id. */
  digest(collection: string): DigestRow[];

  getTombstone(collection: string, id: string): Tombstone | undefined;
  putTombstone(t: Tombstone): void;
  deleteTombstone(collection: string, id: string): boolean;
  /** Tombstones of one collection ordered by id, or of every collection ordered by (collection, id). */
  listTombstones(collection?: string): Tombstone[];
  /** Deletes tombstones with deletedAt < `deletedBefore`; returns how many. */
  purgeTombstones(deletedBefore: number): number;

  totals(): StorageTotals;
  /** The greatest HLC stored on any document or tombstone (restores the clock on restart). */
  maxHlc(): string | undefined;
}
