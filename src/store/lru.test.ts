import { describe, expect, test } from "bun:test";
import { LruCache } from "./lru.ts";

describe("LruCache", () => {
  test("evicts the least recently used entry past capacity, reporting it", () => {
    const evicted: [string, number][] = [];
    const lru = new LruCache<string, number>(2, (k, v) => evicted.push([k, v]));
    lru.set("a", 1);
    lru.set("b", 2);
    expect(lru.get("a")).toBe(1); // a is now most recent
    lru.set("c", 3);
    expect(evicted).toEqual([["b", 2]]);
    expect(lru.keys()).toEqual(["a", "c"]);
    expect(lru.size).toBe(2);
  });

  test("replacing or deleting does not call onEvict; clear calls it for each entry", () => {
    const evicted: string[] = [];
    const lru = new LruCache<string, number>(3, (k) => evicted.push(k));
    lru.set("a", 1);
    lru.set("a", 2);
    expect(lru.get("a")).toBe(2);
    expect(lru.delete("a")).toBe(2);
    expect(lru.delete("a")).toBeUndefined();
    expect(evicted).toEqual([]);
    lru.set("x", 1);
    lru.set("y", 2);
    lru.clear();
    expect(evicted).toEqual(["x", "y"]);
    expect(lru.size).toBe(0);
  });

  test("has() does not refresh recency", () => {
    const lru = new LruCache<string, number>(2);
    lru.set("a", 1);
    lru.set("b", 2);
    expect(lru.has("a")).toBe(true);
    lru.set("c", 3);
    expect(lru.has("a")).toBe(false);
  });

  test("capacity must be a positive integer", () => {
    expect(() => new LruCache(0)).toThrow(RangeError);
    expect(() => new LruCache(1.5)).toThrow(RangeError);
  });
});
