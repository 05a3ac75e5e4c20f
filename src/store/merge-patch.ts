/**
 * JSON Merge Patch (RFC 7396, section 2). Pure: neither argument is modified; unchanged subtrees of
 * the target are shared with the result, which is fine because callers treat JSON as immutable.
 */
import type { JsonValue } from "./types.ts";

function isObject(value: JsonValue | undefined): value is { [k: string]: JsonValue } {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** `obj[key] = v` that stays an own data property even for the key "__proto__". */
export function setOwn(obj: { [k: string]: JsonValue }, key: string, value: JsonValue): void {
  if (key === "__proto__") Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true });
  else obj[key] = value;
}

export function applyMergePatch(target: JsonValue | undefined, patch: JsonValue): JsonValue {
  if (!isObject(patch)) return patch;
  const result: { [k: string]: JsonValue } = isObject(target) ? { ...target } : {};
  for (const [name, value] of Object.entries(patch)) {
    if (value === null) delete result[name];
    else setOwn(result, name, applyMergePatch(Object.hasOwn(result, name) ? result[name] : undefined, value));
  }
  return result;
}
