/**
 * StorageAdapter kept in process memory: for tests and for nodes run without a data directory.
 * Transactions keep an undo log, so a throwing transaction leaves the maps exactly as they were,
 * the same contract the SQLite adapter gives.
 */
import { StorageError } from "../errors.ts";
import type { ChunkWrite, DocKey, DocRow, DocSize, ListedDoc, StorageAdapter, StorageTotals } from "./adapter.ts";
import { compareCodePoints } from "./hlc.ts";
import type { DigestRow, Tombstone } from "./types.ts";

interface StoredDoc {
  row: DocRow;
  chunks: Uint8Array[];
}

const key = (collection: string, id: string): string => `${collection}\u0000${id}`;
const live = (row: DocRow, now: number): boolean => row.expiresAt === null || row.expiresAt > now;
const byId = (a: { id: string }, b: { id: string }): number => compareCodePoints(a.id, b.id);

export class MemoryStorageAdapter implements StorageAdapter {
  readonly kind = "in-memory";
  readonly path = ":memory:";
  private open_ = false;
  private readonly docs = new Map<string, StoredDoc>();
  private readonly tombs = new Map<string, Tombstone>();
  private undo: (() => void)[] | undefined;

  open(): void {
    this.open_ = true;
  }

  close(): void {
    this.open_ = false;
  }

  isOpen(): boolean {
    return this.open_;
  }

  private check(): void {
    if (!this.open_) throw new StorageError("the in-memory store is not open");
  }

  transaction<T>(fn: () => T): T {
    this.check();
    if (this.undo) return fn();
    const undo: (() => void)[] = [];
    this.undo = undo;
    try {
      return fn();
    } catch (e) {
      for (let i = undo.length - 1; i >= 0; i--) undo[i]!();
      throw e;
    } finally {
      this.undo = undefined;
    }
  }

  /** Each transaction already applies (or undoes) itself alone; there is no commit to share. */
  group<T>(fn: () => T): T {
    this.check();
    return fn();
  }

  /** Every mutation goes through these two, which record the inverse while a transaction runs. */
  private setEntry<V>(map: Map<string, V>, k: string, value: V | undefined): void {
    if (this.undo) {
      const had = map.has(k);
      const previous = map.get(k);
      this.undo.push(() => {
        if (had) map.set(k, previous as V);
        else map.delete(k);
      });
    }
    if (value === undefined) map.delete(k);
    else map.set(k, value);
  }

  getDoc(collection: string, id: string): DocRow | undefined {
    this.check();
    const d = this.docs.get(key(collection, id));
    return d ? { ...d.row } : undefined;
  }

  readChunks(collection: string, id: string): Uint8Array[] {
    this.check();
    return [...(this.docs.get(key(collection, id))?.chunks ?? [])];
  }

  writeDoc(row: DocRow, chunk: ChunkWrite): void {
    this.check();
    const k = key(row.collection, row.id);
    const existing = this.docs.get(k);
    let chunks = existing?.chunks ?? [];
    if (chunk.kind === "snapshot") chunks = [chunk.data.slice()];
    else if (chunk.kind === "increment") chunks = [...chunks, chunk.data.slice()];
    this.setEntry(this.docs, k, { row: { ...row }, chunks });
  }

  deleteDoc(collection: string, id: string): boolean {
    this.check();
    const k = key(collection, id);
    if (!this.docs.has(k)) return false;
    this.setEntry(this.docs, k, undefined);
    return true;
  }

  private rowsOf(collection: string): DocRow[] {
    const rows: DocRow[] = [];
    for (const d of this.docs.values()) if (d.row.collection === collection) rows.push(d.row);
    return rows.sort(byId);
  }

  listDocs(collection: string, opts: { after?: string; limit: number; now: number }): ListedDoc[] {
    this.check();
    const out: ListedDoc[] = [];
    for (const row of this.rowsOf(collection)) {
      if (out.length >= opts.limit) break;
      if (opts.after !== undefined && compareCodePoints(row.id, opts.after) <= 0) continue;
      if (live(row, opts.now)) out.push({ id: row.id, json: row.json });
    }
    return out;
  }

  countDocs(collection: string, now: number): number {
    this.check();
    let n = 0;
    for (const d of this.docs.values()) if (d.row.collection === collection && live(d.row, now)) n++;
    return n;
  }

  collections(now: number): { name: string; count: number }[] {
    this.check();
    const counts = new Map<string, number>();
    for (const d of this.docs.values()) {
      if (live(d.row, now)) counts.set(d.row.collection, (counts.get(d.row.collection) ?? 0) + 1);
    }
    return [...counts].map(([name, count]) => ({ name, count })).sort((a, b) => compareCodePoints(a.name, b.name));
  }

  expiredDocs(now: number, limit: number): DocKey[] {
    this.check();
    return [...this.docs.values()]
      .filter((d) => d.row.expiresAt !== null && d.row.expiresAt <= now)
      .sort((a, b) => (a.row.expiresAt as number) - (b.row.expiresAt as number))
      .slice(0, limit)
      .map((d) => ({ collection: d.row.collection, id: d.row.id }));
  }

  pendingDocs(limit: number, collection?: string): DocKey[] {
    this.check();
    const out: DocKey[] = [];
    for (const d of this.docs.values()) {
      if (out.length >= limit) break;
      if (d.row.headsHash === "" && (collection === undefined || d.row.collection === collection)) {
        out.push({ collection: d.row.collection, id: d.row.id });
      }
    }
    return out;
  }

  docsLargerThan(collection: string, bytes: number): DocSize[] {
    this.check();
    return this.rowsOf(collection)
      .filter((r) => r.snapshotBytes + r.incrementBytes > bytes)
      .map((r) => ({ collection: r.collection, id: r.id, bytes: r.snapshotBytes + r.incrementBytes }));
  }

  digest(collection: string): DigestRow[] {
    this.check();
    return this.rowsOf(collection).map((r) => ({ id: r.id, headsHash: r.headsHash, hlc: r.hlc, writer: r.writer }));
  }

  getTombstone(collection: string, id: string): Tombstone | undefined {
    this.check();
    const t = this.tombs.get(key(collection, id));
    return t ? { ...t } : undefined;
  }

  putTombstone(t: Tombstone): void {
    this.check();
    this.setEntry(this.tombs, key(t.collection, t.id), { ...t });
  }

  deleteTombstone(collection: string, id: string): boolean {
    this.check();
    const k = key(collection, id);
    if (!this.tombs.has(k)) return false;
    this.setEntry(this.tombs, k, undefined);
    return true;
  }

  listTombstones(collection?: string): Tombstone[] {
    this.check();
    return [...this.tombs.values()]
      .filter((t) => collection === undefined || t.collection === collection)
      .sort((a, b) => compareCodePoints(a.collection, b.collection) || byId(a, b))
      .map((t) => ({ ...t }));
  }

  purgeTombstones(deletedBefore: number): number {
    this.check();
    return this.transaction(() => {
      let n = 0;
      for (const [k, t] of [...this.tombs]) {
        if (t.deletedAt < deletedBefore) {
          this.setEntry(this.tombs, k, undefined);
          n++;
        }
      }
      return n;
    });
  }

  totals(): StorageTotals {
    this.check();
    let bytes = 0;
    for (const d of this.docs.values()) bytes += d.row.snapshotBytes + d.row.incrementBytes;
    return { documents: this.docs.size, tombstones: this.tombs.size, bytes };
  }

  maxHlc(): string | undefined {
    this.check();
    let max: string | undefined;
    for (const d of this.docs.values()) if (max === undefined || compareCodePoints(d.row.hlc, max) > 0) max = d.row.hlc;
    for (const t of this.tombs.values()) if (max === undefined || compareCodePoints(t.hlc, max) > 0) max = t.hlc;
    return max;
  }
}
