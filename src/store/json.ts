/**
 * JSON ↔ Automerge mapping.
 *
 * Writing: strings become scalar `str` values (not collaborative Text), integers that are exact in
 * a double become `int`, every other number `f64`, then booleans, null, maps and lists. Writes go
 * through the document's low-level handle (`Automerge.getBackend`): the proxy and `from()` paths
 * turn integer-valued numbers beyond 2^53 into clamped i64s (1e300 reads back as
 * 9223372036854775807n) and ignore `Float64` wrappers inside lists and nested objects, and skipping
 * the proxies and the JS-view refresh makes a write 2-3x cheaper.
 *
 * Reading renders `str` and Text as strings, int/uint/f64 as numbers (bigints converted, NaN/±Inf
 * as null), timestamps as milliseconds, and Counter and Bytes as null (as the original node did).
 *
 * JSON has no -0 (it serialises as 0) and no NaN/Infinity, so -0 is stored as int 0 and non-finite
 * numbers are rejected.
 */
import { Automerge } from "../automerge.ts";
import { InvalidDocumentError } from "./errors.ts";
import { setOwn } from "./merge-patch.ts";
import type { JsonObject, JsonValue } from "./types.ts";

export type Doc = Automerge.Doc<unknown>;
type Handle = ReturnType<typeof Automerge.getBackend>;
type Prop = string | number;

const ROOT = "_root";
/** The broker adds `_id` when rendering; it is never part of stored content. */
export const ID_FIELD = "_id";

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function isSafeInt(n: number): boolean {
  return Number.isSafeInteger(n);
}

export interface NormalizedDocument {
  document: JsonObject;
  /** True when some number is integer-valued but beyond 2^53 (needs the explicit f64 path). */
  hasUnsafeIntegers: boolean;
}

/**
 * Validates and deep-copies a document: root must be a plain object; values must be JSON; the root
 * `_id` is dropped. Throws InvalidDocumentError naming the offending path.
 */
export function normalizeDocument(value: unknown): NormalizedDocument {
  if (!isPlainObject(value)) throw new InvalidDocumentError("document must be a JSON object");
  const state = { unsafe: false };
  const document: JsonObject = {};
  for (const [k, v] of Object.entries(value)) {
    if (k === ID_FIELD) continue;
    checkKey(k, "$");
    setOwn(document, k, normalizeValue(v, `$.${k}`, state));
  }
  return { document, hasUnsafeIntegers: state.unsafe };
}

function checkKey(k: string, path: string): void {
  if (!k.isWellFormed()) throw new InvalidDocumentError(`key at ${path} is not valid Unicode`);
  // Automerge's materialisation assigns keys with `obj[k] = v`, so a "__proto__" key would come
  // back as a prototype instead of data. No legitimate document needs it.
  if (k === "__proto__") throw new InvalidDocumentError(`key "__proto__" at ${path} is not allowed`);
}

function normalizeValue(v: unknown, path: string, state: { unsafe: boolean }): JsonValue {
  switch (typeof v) {
    case "string":
      if (!v.isWellFormed()) throw new InvalidDocumentError(`string at ${path} is not valid Unicode (lone surrogate)`);
      return v;
    case "boolean":
      return v;
    case "number":
      if (!Number.isFinite(v)) throw new InvalidDocumentError(`number at ${path} is not finite`);
      if (Number.isInteger(v) && !isSafeInt(v)) state.unsafe = true;
      return v === 0 ? 0 : v;
    case "object": {
      if (v === null) return null;
      if (Array.isArray(v)) return v.map((item, i) => normalizeValue(item, `${path}[${i}]`, state));
      if (!isPlainObject(v)) throw new InvalidDocumentError(`value at ${path} is not JSON`);
      const out: JsonObject = {};
      for (const [k, child] of Object.entries(v)) {
        checkKey(k, path);
        setOwn(out, k, normalizeValue(child, `${path}.${k}`, state));
      }
      return out;
    }
    default:
      throw new InvalidDocumentError(`value at ${path} is not JSON (${typeof v})`);
  }
}

/**
 * JSON rendering of an Automerge document's current state. Reads through the wasm handle
 * (`toJS`), not the document's JS view, because the store's write path commits changes on the
 * handle directly and lets the view catch up lazily.
 */
export function renderDoc(doc: Doc): JsonObject {
  return renderMap(Automerge.toJS(doc) as Record<string, unknown>);
}

/**
 * One number at the document's root (undefined if absent or not a number), read without rendering
 * the rest: what the store needs of a document it stores unrendered (its TTL field).
 */
export function rootNumber(doc: Doc, field: string): number | undefined {
  const typed = Automerge.getBackend(doc).getWithType("_root", field) as [string, unknown] | null;
  if (!typed) return undefined;
  const [datatype, value] = typed;
  if (datatype !== "int" && datatype !== "uint" && datatype !== "f64") return undefined;
  const n = Number(value);
  return Number.isFinite(n) ? n : undefined;
}

function renderMap(obj: Record<string, unknown>): JsonObject {
  const out: JsonObject = {};
  for (const k of Object.keys(obj)) setOwn(out, k, renderValue(obj[k]));
  return out;
}

function renderValue(v: unknown): JsonValue {
  switch (typeof v) {
    case "string":
    case "boolean":
      return v;
    case "number":
      return Number.isFinite(v) ? v : null;
    case "bigint":
      return Number(v);
    case "object":
      if (v === null) return null;
      if (Automerge.isImmutableString(v)) return v.val;
      if (Array.isArray(v)) return v.map(renderValue);
      if (v instanceof Date) return v.getTime();
      if (Automerge.isCounter(v) || v instanceof Uint8Array) return null;
      return renderMap(v as Record<string, unknown>);
    default:
      return null;
  }
}

/**
 * Writes `value` at obj[prop] through the low-level handle. `textStrings` keeps plain JS strings
 * as Text (used when rebuilding a doc whose strings already were Text); JSON input uses `str`.
 */
function putValue(h: Handle, obj: string, prop: Prop, value: unknown, textStrings: boolean): void {
  const scalar = scalarOf(value, textStrings);
  if (scalar) {
    h.put(obj, prop, scalar[0] as never, scalar[1]);
    return;
  }
  if (typeof value === "string") {
    h.putObject(obj, prop, value);
  } else if (Array.isArray(value)) {
    fillList(h, h.putObject(obj, prop, []), value, textStrings);
  } else {
    fillMap(h, h.putObject(obj, prop, {}), value as Record<string, unknown>, textStrings);
  }
}

function insertValue(h: Handle, list: string, index: number, value: unknown, textStrings: boolean): void {
  const scalar = scalarOf(value, textStrings);
  if (scalar) {
    h.insert(list, index, scalar[0] as never, scalar[1]);
    return;
  }
  if (typeof value === "string") {
    h.insertObject(list, index, value);
  } else if (Array.isArray(value)) {
    fillList(h, h.insertObject(list, index, []), value, textStrings);
  } else {
    fillMap(h, h.insertObject(list, index, {}), value as Record<string, unknown>, textStrings);
  }
}

function fillList(h: Handle, list: string, items: unknown[], textStrings: boolean): void {
  for (let i = 0; i < items.length; i++) insertValue(h, list, i, items[i], textStrings);
}

function fillMap(h: Handle, map: string, obj: Record<string, unknown>, textStrings: boolean): void {
  for (const k of Object.keys(obj)) putValue(h, map, k, obj[k], textStrings);
}

type Datatype = "str" | "int" | "uint" | "f64" | "boolean" | "null" | "counter" | "timestamp" | "bytes";

/** [value, datatype] for scalars; undefined for maps, lists and Text. */
function scalarOf(v: unknown, textStrings: boolean): [unknown, Datatype] | undefined {
  switch (typeof v) {
    case "string":
      return textStrings ? undefined : [v, "str"];
    case "number":
      return isSafeInt(v) ? [v === 0 ? 0 : v, "int"] : [v, "f64"];
    case "boolean":
      return [v, "boolean"];
    case "bigint":
      return v > 0x7fffffffffffffffn ? [v, "uint"] : [v, "int"];
    case "object":
      if (v === null) return [null, "null"];
      if (Automerge.isImmutableString(v)) return [v.val, "str"];
      if (Automerge.isCounter(v)) return [v.value, "counter"];
      if (v instanceof Date) return [v.getTime(), "timestamp"];
      if (v instanceof Uint8Array) return [v, "bytes"];
      return undefined;
    default:
      throw new InvalidDocumentError(`cannot store a ${typeof v} in a document`);
  }
}

/** JSON with strings as ImmutableString: the input `initRootFromHydrate` maps to scalar `str`. */
function toHydrateTree(value: JsonValue): unknown {
  if (typeof value === "string") return new Automerge.ImmutableString(value);
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map(toHydrateTree);
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(value)) {
    const converted = toHydrateTree(value[k] as JsonValue);
    if (k === "__proto__") Object.defineProperty(out, k, { value: converted, writable: true, enumerable: true, configurable: true });
    else out[k] = converted;
  }
  return out;
}

/**
 * Runs `write` against the document's handle and commits it as one change. The document's JS view
 * is not refreshed here (that materialisation is a large share of a write's cost and the store
 * never reads the view); Automerge brings it up to date on the next high-level call (merge,
 * applyChanges, loadIncremental), which diffs from its own cursor. Returns whether a change was made.
 */
function commitRaw(doc: Doc, timeSecs: number, write: (h: Handle) => void): boolean {
  const h = Automerge.getBackend(doc);
  try {
    write(h);
  } catch (e) {
    h.rollback();
    throw e;
  }
  if (h.pendingOps() === 0) return false;
  h.commit(null, timeSecs);
  return true;
}

/**
 * A new document holding `json` as one change by `actor`. The hydrate call is one wasm crossing;
 * documents with integers beyond 2^53 take the per-value path, which sets their f64 type.
 */
export function createDoc(json: JsonObject, actor: string, hasUnsafeIntegers: boolean, timeSecs: number): Doc {
  const doc = Automerge.init<unknown>({ actor });
  commitRaw(doc, timeSecs, (h) => {
    if (hasUnsafeIntegers) fillMap(h, ROOT, json, false);
    else h.initRootFromHydrate(toHydrateTree(json));
  });
  return doc;
}

/**
 * Makes the document equal `next`, given `prev`, the JSON rendering of its current state: deletes
 * absent keys, sets changed values, and recurses into maps and lists present on both sides so
 * untouched subtrees keep their identity (concurrent edits to different nested keys merge). All in
 * one change; returns false and records nothing when nothing differed, so a no-op PUT adds no
 * history.
 */
export function applyJsonDiff(doc: Doc, prev: JsonObject, next: JsonObject, timeSecs: number): boolean {
  return commitRaw(doc, timeSecs, (h) => diffMap(h, ROOT, prev, next));
}

function isJsonObject(v: JsonValue | undefined): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export function jsonEquals(a: JsonValue | undefined, b: JsonValue | undefined): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!jsonEquals(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  const ak = Object.keys(a);
  if (ak.length !== Object.keys(b).length) return false;
  for (const k of ak) if (!Object.hasOwn(b, k) || !jsonEquals(a[k], b[k])) return false;
  return true;
}

/** Object id of the map/list at obj[prop], if that is what the document holds there. */
function childObject(h: Handle, obj: string, prop: Prop, type: "map" | "list"): string | undefined {
  const found = h.getWithType(obj, prop) as [string, unknown] | null;
  return found && found[0] === type ? (found[1] as string) : undefined;
}

function diffMap(h: Handle, obj: string, prev: JsonObject, next: JsonObject): void {
  for (const k of Object.keys(prev)) if (!Object.hasOwn(next, k)) h.delete(obj, k);
  for (const k of Object.keys(next)) diffSlot(h, obj, k, Object.hasOwn(prev, k) ? prev[k] : undefined, next[k] as JsonValue);
}

function diffList(h: Handle, list: string, prev: JsonValue[], next: JsonValue[]): void {
  const common = Math.min(prev.length, next.length);
  for (let i = 0; i < common; i++) diffSlot(h, list, i, prev[i], next[i] as JsonValue);
  if (prev.length > next.length) h.splice(list, next.length, prev.length - next.length);
  for (let i = common; i < next.length; i++) insertValue(h, list, i, next[i], false);
}

function diffSlot(h: Handle, obj: string, prop: Prop, prev: JsonValue | undefined, next: JsonValue): void {
  if (prev !== undefined && jsonEquals(prev, next)) return;
  if (Array.isArray(next) && Array.isArray(prev)) {
    const id = childObject(h, obj, prop, "list");
    if (id) return diffList(h, id, prev, next);
  } else if (isJsonObject(next) && isJsonObject(prev)) {
    const id = childObject(h, obj, prop, "map");
    if (id) return diffMap(h, id, prev, next);
  }
  putValue(h, obj, prop, next, false);
}

/**
 * A new, history-free document with `doc`'s current state, keeping value types (Text, str,
 * Counter, Bytes, timestamps) so the JSON rendering is unchanged. Used by compaction.
 */
export function rebuildDoc(doc: Doc, actor: string, timeSecs: number): Doc {
  const state = Automerge.toJS(doc) as Record<string, unknown>;
  const fresh = Automerge.init<unknown>({ actor });
  commitRaw(fresh, timeSecs, (h) => fillMap(h, ROOT, state, true));
  return fresh;
}

const encoder = new TextEncoder();

function sha256Hex(input: string): string {
  return new Bun.CryptoHasher("sha256").update(encoder.encode(input)).digest("hex");
}

/**
 * Actor id for one document "generation" on this node: stable for the life of that history
 * (stored with the row and reused on every load), but different for each fresh history (create
 * after delete, compaction, LatestOnly replacement). Reusing one actor across unrelated
 * histories of the same document makes Automerge reject the merge ("duplicate seq 1 found for
 * actor"), which a per-node-only actor would hit the first time a deleted document is re-created.
 */
export function actorFor(nodeId: string, generation: string): string {
  return sha256Hex(`${nodeId}\u0000${generation}`).slice(0, 32);
}

/** Short fingerprint of a document's heads: equal iff (with overwhelming odds) same history tips. */
export function headsHash(heads: readonly string[]): string {
  return sha256Hex([...heads].sort().join(",")).slice(0, 16);
}

export function docHeadsHash(doc: Doc): string {
  return headsHash(Automerge.getHeads(doc));
}
