/**
 * A count-bounded LRU over a Map (Maps iterate in insertion order, so the first key is the least
 * recently used). Eviction calls `onEvict` so the owner can release wasm memory.
 */
export class LruCache<K, V> {
  private readonly map = new Map<K, V>();

  constructor(
    readonly capacity: number,
    private readonly onEvict: (key: K, value: V) => void = () => {},
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`LRU capacity must be a positive integer, got ${capacity}`);
  }

  get size(): number {
    return this.map.size;
  }

  /** Returns the value and marks it most recently used. */
  get(key: K): V | undefined {
    const value = this.map.get(key);
    if (value === undefined) return undefined;
    this.map.delete(key);
    this.map.set(key, value);
    return value;
  }

  has(key: K): boolean {
    return this.map.has(key);
  }

  /**
   * Inserts as most recently used. A replaced value is not passed to `onEvict`: Automerge's
   * `change` returns a new object over the same wasm handle, so freeing the old one would free
   * the new one too. The owner disposes replaced values itself.
   */
  set(key: K, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    while (this.map.size > this.capacity) {
      const oldest = this.map.keys().next();
      if (oldest.done) break;
      const evicted = this.map.get(oldest.value) as V;
      this.map.delete(oldest.value);
      this.onEvict(oldest.value, evicted);
    }
  }

  /** Removes without calling `onEvict`; returns what was there. */
  delete(key: K): V | undefined {
    const value = this.map.get(key);
    this.map.delete(key);
    return value;
  }

  /** Removes everything, passing each value to `onEvict`. */
  clear(): void {
    const entries = [...this.map];
    this.map.clear();
    for (const [k, v] of entries) this.onEvict(k, v);
  }

  keys(): K[] {
    return [...this.map.keys()];
  }
}
