/** Shapes shared by the store, its storage adapters and (later) the sync layer. */

export type JsonValue = null | boolean | number | string | JsonValue[] | { [k: string]: JsonValue };
export type JsonObject = { [k: string]: JsonValue };

export type SyncMode = "LatestOnly" | "FullHistory";

export type ChangeOrigin = "local" | "remote";

export interface ChangeEvent {
  collection: string;
  id: string;
  action: "upsert" | "delete";
  origin: ChangeOrigin;
}

/**
 * A deletion marker. It syncs to peers and, while it lives, beats every copy of the document whose
 * version (hlc, writer) is older, so a peer that missed the delete cannot resurrect the document.
 */
export interface Tombstone {
  collection: string;
  id: string;
  /** Wall-clock milliseconds when the delete happened (drives tombstone expiry). */
  deletedAt: number;
  /** Node id of the deleter; the LWW tie-break for equal HLCs. */
  deletedBy: string;
  /** HLC of the delete; compared with document versions. */
  hlc: string;
}

/** The version a sync peer compares: last-write HLC, then writer node id on a tie. */
export interface DocVersion {
  hlc: string;
  writer: string;
}

/** One digest row per stored document, for cheap set reconciliation between peers. */
export interface DigestRow {
  id: string;
  headsHash: string;
  hlc: string;
  writer: string;
}

/**
 * Result of applying something received from a peer:
 * - `applied`: state changed and was persisted;
 * - `unchanged`: nothing new (same version or already-known changes);
 * - `superseded`: a newer local version or tombstone won, the input was dropped;
 * - `missing-deps`: changes depend on history this node lacks; nothing was persisted.
 */
export type ApplyOutcome = "applied" | "unchanged" | "superseded" | "missing-deps";

export interface StoreStats {
  documents: number;
  tombstones: number;
  bytes: number;
  writes: number;
  cacheSize: number;
  compactionRuns: number;
}

export interface CompactionResult {
  count: number;
  before: number;
  after: number;
}
