import { describe, expect, test } from "bun:test";
import { applyMergePatch } from "./merge-patch.ts";
import type { JsonValue } from "./types.ts";

// RFC 7396, Appendix A: ORIGINAL, PATCH, RESULT.
const RFC_EXAMPLES: [JsonValue, JsonValue, JsonValue][] = [
  [{ a: "b" }, { a: "c" }, { a: "c" }],
  [{ a: "b" }, { b: "c" }, { a: "b", b: "c" }],
  [{ a: "b" }, { a: null }, {}],
  [{ a: "b", b: "c" }, { a: null }, { b: "c" }],
  [{ a: ["b"] }, { a: "c" }, { a: "c" }],
  [{ a: "c" }, { a: ["b"] }, { a: ["b"] }],
  [{ a: { b: "c" } }, { a: { b: "d", c: null } }, { a: { b: "d" } }],
  [{ a: [{ b: "c" }] }, { a: [1] }, { a: [1] }],
  [["a", "b"], ["c", "d"], ["c", "d"]],
  [{ a: "b" }, ["c"], ["c"]],
  [{ a: "foo" }, null, null],
  [{ a: "foo" }, "bar", "bar"],
  [{ e: null }, { a: 1 }, { e: null, a: 1 }],
  [[1, 2], { a: "b", c: null }, { a: "b" }],
  [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
];

describe("applyMergePatch (RFC 7396)", () => {
  for (const [i, [original, patch, result]] of RFC_EXAMPLES.entries()) {
    test(`appendix A example ${i + 1}: ${JSON.stringify(original)} + ${JSON.stringify(patch)}`, () => {
      expect(applyMergePatch(original, patch)).toEqual(result);
    });
  }

  test("the section 3 example: nested change, removal and addition", () => {
    const target = { title: "Goodbye!", author: { givenName: "John", familyName: "Doe" }, tags: ["example", "sample"], content: "This will be unchanged" };
    const patch = { title: "Hello!", phoneNumber: "+01-123-456-7890", author: { familyName: null }, tags: ["example"] };
    expect(applyMergePatch(target, patch)).toEqual({
      title: "Hello!",
      author: { givenName: "John" },
      tags: ["example"],
      content: "This will be unchanged",
      phoneNumber: "+01-123-456-7890",
    });
  });

  test("is pure: neither input is modified", () => {
    const target = { a: { b: 1, c: [1, 2] }, d: 1 };
    const patch = { a: { b: null, e: { f: 1 } }, d: null };
    const targetCopy = structuredClone(target);
    const patchCopy = structuredClone(patch);
    const result = applyMergePatch(target, patch);
    expect(result).toEqual({ a: { c: [1, 2], e: { f: 1 } } });
    expect(target).toEqual(targetCopy);
    expect(patch).toEqual(patchCopy);
  });

  test("an undefined target (absent member) is treated as missing", () => {
    expect(applyMergePatch(undefined, { a: { b: null, c: 1 } })).toEqual({ a: { c: 1 } });
  });

  test("a __proto__ member is an ordinary own key, never a prototype change", () => {
    const patch = JSON.parse('{"__proto__": {"polluted": true}}') as JsonValue;
    const result = applyMergePatch({}, patch) as Record<string, JsonValue>;
    expect(Object.getPrototypeOf(result)).toBe(Object.prototype);
    expect(Object.hasOwn(result, "__proto__")).toBe(true);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(JSON.stringify(result)).toBe('{"__proto__":{"polluted":true}}');
  });
});
