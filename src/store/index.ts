export type { ChunkWrite, DocKey, DocRow, DocSize, ListedDoc, StorageAdapter, StorageTotals } from "./adapter.ts";
export {
  type CompactionSchedule,
  Compactor,
  type CompactorOptions,
  compactionSchedule,
  DEFAULT_COMPACTION_INTERVAL_SECS,
  DEFAULT_COMPACTION_THRESHOLD_BYTES,
} from "./compactor.ts";
export {
  DEFAULT_CACHE_SIZE,
  DEFAULT_SWEEP_INTERVAL_MS,
  DEFAULT_TOMBSTONE_TTL_SECS,
  DocumentStore,
  type DocumentStoreOptions,
  sqlitePathFor,
  TTL_FIELD,
} from "./document-store.ts";
export {
  FullHistoryCompactionError,
  InvalidDocumentError,
  InvalidHlcError,
  InvalidKeyError,
  InvalidRemoteDataError,
  InvalidSyncModeError,
  StoreClosedError,
} from "./errors.ts";
export { compareCodePoints, compareVersions, formatHlc, type HlcParts, HybridLogicalClock, isHlc, parseHlc } from "./hlc.ts";
export {
  actorFor,
  applyJsonDiff,
  createDoc,
  type Doc,
  docHeadsHash,
  headsHash,
  jsonEquals,
  ID_FIELD,
  type NormalizedDocument,
  normalizeDocument,
  rebuildDoc,
  renderDoc,
} from "./json.ts";
export { LruCache } from "./lru.ts";
export { MemoryStorageAdapter } from "./memory-adapter.ts";
export { applyMergePatch } from "./merge-patch.ts";
export { mapSqliteError, SQLITE_FILE_NAME, SqliteStorageAdapter, type SqliteStorageAdapterOptions } from "./sqlite-adapter.ts";
export { DEFAULT_LATEST_ONLY, isSyncMode, LATEST_ONLY_SUFFIX, SYNC_MODES, SyncModeRegistry } from "./sync-mode.ts";
export type {
  ApplyOutcome,
  ChangeEvent,
  ChangeOrigin,
  CompactionResult,
  DigestRow,
  DocVersion,
  JsonObject,
  JsonValue,
  StoreStats,
  SyncMode,
  Tombstone,
} from "./types.ts";
