/**
 * Bounded bookkeeping for the signalling endpoint, which anyone who can reach the broker port may
 * call: every structure here has a fixed maximum size, so no caller can grow memory without bound.
 */

/** Remembers authenticated message nonces until they could no longer pass the freshness check. */
export class ReplayCache {
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly maxEntries: number,
    /** How long an entry is kept: the full width of the accepted timestamp window. */
    private readonly ttlMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.seen.size;
  }

  /**
   * Records `key`; false if it was already there (a replay) or if the cache is full of live entries.
   * Failing closed when full is safe because only authenticated messages are recorded: only a
   * formation member could fill it.
   */
  add(key: string): "ok" | "replayed" | "full" {
    const now = this.now();
    const expiry = this.seen.get(key);
    if (expiry !== undefined && expiry > now) return "replayed";
    if (this.seen.size >= this.maxEntries) this.sweep(now);
    if (this.seen.size >= this.maxEntries) return "full";
    this.seen.delete(key);
    this.seen.set(key, now + this.ttlMs);
    return "ok";
  }

  private sweep(now: number): void {
    // Insertion order is expiry order (the TTL is fixed), so expired entries are at the front.
    for (const [key, expiry] of this.seen) {
      if (expiry > now) break;
      this.seen.delete(key);
    }
  }
}

interface Bucket {
  tokens: number;
  at: number;
}

/** Token buckets keyed by source address, plus one shared bucket that caps the total rate. */
export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly global: Bucket;

  constructor(
    private readonly options: { burst: number; perSecond: number; globalBurst: number; globalPerSecond: number; maxKeys: number },
    private readonly now: () => number = Date.now,
  ) {
    this.global = { tokens: options.globalBurst, at: now() };
  }

  /** Takes one token for `key`; false when either its bucket or the global one is empty. */
  take(key: string): boolean {
    const now = this.now();
    let bucket = this.buckets.get(key);
    if (bucket) this.buckets.delete(key);
    else {
      bucket = { tokens: this.options.burst, at: now };
      // Least recently used first: dropping it forgets a bucket that has had time to refill anyway.
      if (this.buckets.size >= this.options.maxKeys) {
        const oldest = this.buckets.keys().next().value;
        if (oldest !== undefined) this.buckets.delete(oldest);
      }
    }
    this.buckets.set(key, bucket);
    refill(bucket, now, this.options.burst, this.options.perSecond);
    refill(this.global, now, this.options.globalBurst, this.options.globalPerSecond);
    if (bucket.tokens < 1 || this.global.tokens < 1) return false;
    bucket.tokens -= 1;
    this.global.tokens -= 1;
    return true;
  }
}

function refill(bucket: Bucket, now: number, burst: number, perSecond: number): void {
  bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * perSecond);
  bucket.at = now;
}

/** A map that forgets its least recently used entry beyond `max`; for derived-key caches. */
export class LruMap<K, V> {
  private readonly map = new Map<K, V>();
  constructor(private readonly max: number) {}

  get(key: K): V | undefined {
    const value = this.map.get(key);
    if (value !== undefined) {
      this.map.delete(key);
      this.map.set(key, value);
    }
    return value;
  }

  set(key: K, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    if (this.map.size > this.max) {
      const oldest = this.map.keys().next().value;
      if (oldest !== undefined) this.map.delete(oldest);
    }
  }
}
