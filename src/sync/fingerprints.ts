/**
 * What this node holds, summarised for set reconciliation: a 64-bit fingerprint per document or
 * tombstone, XOR-combined per id range, per collection and for the whole store.
 *
 * The per-item fingerprints are kept in memory and updated as documents change, so the idle
 * check ("are we still in sync?") costs a few XORs, not a scan of the store.
 */
import type { DocumentStore, SyncModeRegistry } from "../store/index.ts";
import type { RangeSummary } from "./protocol.ts";

type Version = ReturnType<DocumentStore["getVersion"]>;

export interface Item {
  fp: bigint;
  /** The version to compare when fingerprints differ: the newer side sends. */
  hlc: string;
  writer: string;
}

interface CollectionIndex {
  items: Map<string, Item>;
  xor: bigint;
  /** Ids in byte order; rebuilt lazily after changes (only reconciliation needs it). */
  sorted: string[] | undefined;
}

const MASK = (1n << 64n) - 1n;

export function hex64(value: bigint): string {
  return value.toString(16).padStart(16, "0");
}

function hash64(text: string): bigint {
  return BigInt.asUintN(64, BigInt(Bun.hash.wyhash(text)));
}

/** Code-point order, which is the store's (SQLite BINARY) order for the ASCII names we allow. */
function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Index of the first element of sorted `ids` that is ≥ `bound` ("" bounds nothing below). */
function lowerBound(ids: string[], bound: string): number {
  let lo = 0;
  let hi = ids.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compare(ids[mid] as string, bound) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export class FingerprintIndex {
  private readonly collections = new Map<string, CollectionIndex>();
  private built = false;

  constructor(
    private readonly store: DocumentStore,
    private readonly syncModes: SyncModeRegistry,
  ) {}

  /** Forget everything; the next use rebuilds from the store (catches tombstone purges). */
  invalidate(): void {
    this.collections.clear();
    this.built = false;
  }

  private fingerprintOf(collection: string, id: string, known?: Version): Item | undefined {
    const version = known ?? this.store.getVersion(collection, id);
    if (version) return this.docItem(collection, id, version.headsHash, version.hlc, version.writer);
    const tombstone = this.store.getTombstone(collection, id);
    if (tombstone) return this.tombItem(collection, id, tombstone.hlc, tombstone.deletedBy);
    return undefined;
  }

  private docItem(collection: string, id: string, headsHash: string, hlc: string, writer: string): Item {
    // LatestOnly copies of the same version may differ in history (compaction), so their identity
    // is the version; FullHistory copies are the same exactly when their heads are.
    const identity = this.syncModes.isLatestOnly(collection) ? `v\0${hlc}\0${writer}` : `h\0${headsHash}`;
    return { fp: hash64(`d\0${collection}\0${id}\0${identity}`), hlc, writer };
  }

  private tombItem(collection: string, id: string, hlc: string, by: string): Item {
    return { fp: hash64(`t\0${collection}\0${id}\0${hlc}\0${by}`), hlc, writer: by };
  }

  private build(): void {
    if (this.built) return;
    for (const { name } of this.store.collections()) this.buildCollection(name);
    for (const t of this.store.tombstones()) {
      const index = this.collection(t.collection);
      if (!index.items.has(t.id)) this.set(index, t.id, this.tombItem(t.collection, t.id, t.hlc, t.deletedBy));
    }
    this.built = true;
  }

  private buildCollection(name: string): void {
    const index = this.collection(name);
    for (const row of this.store.digest(name)) {
      this.set(index, row.id, this.docItem(name, row.id, row.headsHash, row.hlc, row.writer));
    }
  }

  private collection(name: string): CollectionIndex {
    let index = this.collections.get(name);
    if (!index) {
      index = { items: new Map(), xor: 0n, sorted: undefined };
      this.collections.set(name, index);
    }
    return index;
  }

  private set(index: CollectionIndex, id: string, item: Item | undefined): void {
    const old = index.items.get(id);
    if (old) index.xor ^= old.fp;
    if (item) {
      index.items.set(id, item);
      index.xor ^= item.fp;
    } else index.items.delete(id);
    if (!old !== !item) index.sorted = undefined;
  }

  /** Re-reads one document's state after it changed (`version`: already read, undefined for none). */
  update(collection: string, id: string, version?: Version): void {
    if (!this.built) return;
    this.set(this.collection(collection), id, this.fingerprintOf(collection, id, version));
  }

  /** Whether the document's current state is the FullHistory state with these heads. */
  holdsHeads(collection: string, id: string, headsHash: string): boolean {
    return this.item(collection, id)?.fp === this.docItem(collection, id, headsHash, "", "").fp;
  }

  item(collection: string, id: string): Item | undefined {
    this.build();
    return this.collections.get(collection)?.items.get(id);
  }

  root(): { fp: string; n: number } {
    this.build();
    let fp = 0n;
    let n = 0;
    for (const [name, index] of this.collections) {
      if (index.items.size === 0) continue;
      // Mixing in the collection name keeps equal item sets in different collections distinct.
      fp ^= (index.xor * 0x9e3779b97f4a7c15n + hash64(name)) & MASK;
      n += index.items.size;
    }
    return { fp: hex64(fp), n };
  }

  cols(): { c: string; fp: string; n: number }[] {
    this.build();
    return [...this.collections]
      .filter(([, index]) => index.items.size > 0)
      .map(([c, index]) => ({ c, fp: hex64(index.xor), n: index.items.size }));
  }

  private sortedIds(collection: string): string[] {
    this.build();
    const index = this.collections.get(collection);
    if (!index) return [];
    index.sorted ??= [...index.items.keys()].sort(compare);
    return index.sorted;
  }

  /** The ids of [lo, hi) in order; `hi` "" means no upper bound. */
  idsIn(collection: string, lo: string, hi: string): string[] {
    const ids = this.sortedIds(collection);
    const start = lo === "" ? 0 : lowerBound(ids, lo);
    const end = hi === "" ? ids.length : lowerBound(ids, hi);
    return ids.slice(start, end);
  }

  summarise(collection: string, lo: string, hi: string): RangeSummary {
    const items = this.collections.get(collection)?.items;
    let fp = 0n;
    const ids = this.idsIn(collection, lo, hi);
    for (const id of ids) fp ^= (items?.get(id) as Item).fp;
    return { lo, hi, fp: hex64(fp), n: ids.length };
  }

  /** Splits [lo, hi) into up to `parts` ranges holding about equal numbers of this node's ids. */
  split(collection: string, lo: string, hi: string, parts: number): RangeSummary[] {
    const ids = this.idsIn(collection, lo, hi);
    const bounds = [lo];
    for (let k = 1; k < parts; k++) {
      const bound = ids[Math.floor((k * ids.length) / parts)];
      // Bounds must strictly increase: skip repeats and a first id equal to `lo` itself.
      if (bound !== undefined && bound > (bounds.at(-1) as string)) bounds.push(bound);
    }
    bounds.push(hi);
    const ranges: RangeSummary[] = [];
    for (let k = 0; k + 1 < bounds.length; k++) ranges.push(this.summarise(collection, bounds[k] as string, bounds[k + 1] as string));
    return ranges;
  }
}
