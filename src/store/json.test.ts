import { describe, expect, test } from "bun:test";
import { Automerge } from "../automerge.ts";
import { InvalidDocumentError } from "./errors.ts";
import { actorFor, applyJsonDiff, createDoc, headsHash, jsonEquals, normalizeDocument, rebuildDoc, renderDoc } from "./json.ts";
import type { JsonObject } from "./types.ts";

const ACTOR = actorFor("node-a", "gen-1");

function create(json: JsonObject) {
  const n = normalizeDocument(json);
  return createDoc(n.document, ACTOR, n.hasUnsafeIntegers, 0);
}

/** Saves and reloads, so assertions see what storage would give back. */
function reload(doc: Automerge.Doc<unknown>) {
  return Automerge.load<unknown>(Automerge.save(doc));
}

const SAMPLE: JsonObject = {
  s: "text",
  empty: "",
  unicode: "héllo \u{1F600} \u0000 end",
  i: 42,
  neg: -7,
  f: 1.5,
  tiny: 5e-324,
  maxSafe: Number.MAX_SAFE_INTEGER,
  beyondSafe: 2 ** 60,
  huge: 1e300,
  negHuge: -1.7976931348623157e308,
  t: true,
  no: false,
  n: null,
  nested: { a: { b: [1, "two", { three: 3 }, [], {}] } },
  list: [null, true, 0.25, "x"],
  "": "empty key",
  "with.dot": 1,
};

describe("JSON → Automerge → JSON", () => {
  test("round-trips every JSON type exactly, through save/load", () => {
    const doc = create(SAMPLE);
    expect(renderDoc(reload(doc))).toEqual(SAMPLE);
    expect(JSON.stringify(renderDoc(reload(doc)))).toBe(JSON.stringify(structuredClone(renderDoc(doc))));
  });

  test("strings are scalar str values, not collaborative Text", () => {
    const doc = reload(create({ s: "abc", deep: { t: ["x"] } })) as { s: unknown; deep: { t: unknown[] } };
    expect(Automerge.isImmutableString(doc.s)).toBe(true);
    expect(Automerge.isImmutableString(doc.deep.t[0])).toBe(true);
  });

  test("integers are int and fractions f64; integers beyond 2^53 keep their value as f64", () => {
    const doc = reload(create({ i: 3, f: 3.5, big: 1e300, b53: 2 ** 53 + 2, inList: [1e300, -(2 ** 70)], inMap: { x: 1e21 } }));
    const h = Automerge.getBackend(doc);
    expect(h.getWithType("_root", "i")?.[0]).toBe("int");
    expect(h.getWithType("_root", "f")?.[0]).toBe("f64");
    expect(h.getWithType("_root", "big")?.[0]).toBe("f64");
    expect(renderDoc(doc)).toEqual({ i: 3, f: 3.5, big: 1e300, b53: 2 ** 53 + 2, inList: [1e300, -(2 ** 70)], inMap: { x: 1e21 } });
  });

  test("-0 is stored as 0, matching what JSON serialisation gives", () => {
    const n = normalizeDocument({ z: -0, l: [-0] });
    expect(Object.is(n.document.z, 0)).toBe(true);
    expect(renderDoc(reload(createDoc(n.document, ACTOR, false, 0)))).toEqual({ z: 0, l: [0] });
    expect(JSON.stringify(-0)).toBe("0");
  });

  test("a __proto__ key is refused (materialisation would turn it into a prototype)", () => {
    const input = JSON.parse('{"a": {"__proto__": {"x": 1}}}') as JsonObject;
    expect(() => normalizeDocument(input)).toThrow(/"__proto__" at \$\.a is not allowed/);
    expect(({} as Record<string, unknown>).x).toBeUndefined();
  });

  test("the document's actor is the one given", () => {
    expect(Automerge.getActorId(create({ a: 1 }))).toBe(ACTOR);
    expect(ACTOR).toMatch(/^[0-9a-f]{32}$/);
    expect(actorFor("node-a", "gen-1")).toBe(ACTOR);
    expect(actorFor("node-a", "gen-2")).not.toBe(ACTOR);
  });
});

describe("Automerge values the JSON API cannot write", () => {
  test("Text renders as its string, Counter and Bytes as null, timestamps as ms, bigints as numbers", () => {
    let doc = Automerge.from<Record<string, unknown>>({ text: "collab", c: new Automerge.Counter(5), b: new Uint8Array([1]), d: new Date(1234), k: 1 });
    doc = Automerge.change(doc, (d) => {
      Automerge.getBackend(doc).put("_root", "big", 2n ** 62n as never, "int");
      d.k = 2;
    });
    expect(renderDoc(doc)).toEqual({ text: "collab", c: null, b: null, d: 1234, k: 2, big: 2 ** 62 });
  });
});

describe("applyJsonDiff", () => {
  test("a replacement sets changed keys and deletes absent root keys in one change", () => {
    const doc = create({ keep: 1, change: "a", drop: true, nested: { x: 1, y: 2 } });
    const before = Automerge.getHeads(doc);
    const next = { keep: 1, change: "b", nested: { x: 1, z: 3 }, added: [1] };
    expect(applyJsonDiff(doc, renderDoc(doc), next, 0)).toBe(true);
    expect(renderDoc(doc)).toEqual(next);
    expect(Automerge.getChanges(Automerge.view(doc, before), doc).length).toBe(1);
    expect(renderDoc(reload(doc))).toEqual(next);
  });

  test("writing identical content records no change", () => {
    const doc = create(SAMPLE);
    const heads = Automerge.getHeads(doc);
    expect(applyJsonDiff(doc, renderDoc(doc), structuredClone(SAMPLE), 0)).toBe(false);
    expect(Automerge.getHeads(doc)).toEqual(heads);
  });

  test("only changed leaves are written: nested containers keep their identity", () => {
    const doc = create({ a: { b: { c: 1, d: 2 } }, l: [{ v: 1 }, { v: 2 }] });
    const h = Automerge.getBackend(doc);
    const mapId = h.getWithType("_root", "a")?.[1];
    const listId = h.getWithType("_root", "l")?.[1];
    applyJsonDiff(doc, renderDoc(doc), { a: { b: { c: 1, d: 3 } }, l: [{ v: 1 }, { v: 5 }, { v: 6 }] }, 0);
    expect(h.getWithType("_root", "a")?.[1]).toBe(mapId);
    expect(h.getWithType("_root", "l")?.[1]).toBe(listId);
    expect(renderDoc(doc)).toEqual({ a: { b: { c: 1, d: 3 } }, l: [{ v: 1 }, { v: 5 }, { v: 6 }] });
  });

  test("lists shrink and grow; type changes replace the value", () => {
    const doc = create({ l: [1, 2, 3, 4], m: { x: 1 }, s: "str", arr: [1] });
    applyJsonDiff(doc, renderDoc(doc), { l: [1, 9], m: [1, 2], s: { now: "object" }, arr: "flat" }, 0);
    expect(renderDoc(reload(doc))).toEqual({ l: [1, 9], m: [1, 2], s: { now: "object" }, arr: "flat" });
    applyJsonDiff(doc, renderDoc(doc), { l: [1, 9, 10, 1e300], m: [1, 2], s: null, arr: "flat" }, 0);
    expect(renderDoc(reload(doc))).toEqual({ l: [1, 9, 10, 1e300], m: [1, 2], s: null, arr: "flat" });
  });

  test("concurrent edits to different nested keys both survive a merge", () => {
    const base = create({ pos: { lat: 1, lon: 2 }, name: "n" });
    const other = Automerge.clone(base, { actor: actorFor("node-b", "g") });
    applyJsonDiff(base, renderDoc(base), { pos: { lat: 10, lon: 2 }, name: "n" }, 0);
    applyJsonDiff(other, renderDoc(other), { pos: { lat: 1, lon: 20 }, name: "n" }, 0);
    const merged = Automerge.merge(reload(base), other);
    expect(renderDoc(merged)).toEqual({ pos: { lat: 10, lon: 20 }, name: "n" });
  });
});

describe("rebuildDoc", () => {
  test("keeps the rendering and value types but drops history", () => {
    let doc = Automerge.from<Record<string, unknown>>({ text: "t", c: new Automerge.Counter(3), d: new Date(5), big: 0 });
    for (let i = 0; i < 50; i++) doc = Automerge.change(doc, (d) => void (d.n = i));
    applyJsonDiff(doc, renderDoc(doc), { ...renderDoc(doc), big: 1e300, s: "str" }, 0);
    const fresh = reload(rebuildDoc(doc, ACTOR, 0));
    expect(renderDoc(fresh)).toEqual(renderDoc(doc));
    expect(Automerge.getAllChanges(fresh).length).toBe(1);
    const h = Automerge.getBackend(fresh);
    expect(h.getWithType("_root", "c")?.[0]).toBe("counter");
    expect(h.getWithType("_root", "d")?.[0]).toBe("timestamp");
    expect(h.getWithType("_root", "text")?.[0]).toBe("text");
    expect(h.getWithType("_root", "s")?.[0]).toBe("str");
    expect(h.getWithType("_root", "big")?.[0]).toBe("f64");
    expect(Automerge.save(fresh).length).toBeLessThan(Automerge.save(doc).length);
  });
});

describe("normalizeDocument", () => {
  test("drops the root _id and deep-copies", () => {
    const input = { _id: "x", a: { _id: "kept" }, l: [1] };
    const n = normalizeDocument(input);
    expect(n.document).toEqual({ a: { _id: "kept" }, l: [1] });
    input.l.push(2);
    expect(n.document.l).toEqual([1]);
    expect(n.hasUnsafeIntegers).toBe(false);
    expect(normalizeDocument({ a: [2 ** 60] }).hasUnsafeIntegers).toBe(true);
  });

  test("rejects what JSON cannot hold, naming the path", () => {
    const bad: [unknown, RegExp][] = [
      [[1], /must be a JSON object/],
      [null, /must be a JSON object/],
      ["s", /must be a JSON object/],
      [new Date(), /must be a JSON object/],
      [{ a: Number.NaN }, /\$\.a is not finite/],
      [{ a: [Infinity] }, /\$\.a\[0\] is not finite/],
      [{ a: { b: undefined } }, /\$\.a\.b is not JSON/],
      [{ a: () => 1 }, /not JSON/],
      [{ a: new Map() }, /\$\.a is not JSON/],
      [{ a: 1n }, /not JSON/],
      [{ a: "\ud800" }, /lone surrogate/],
      [{ ["\udc00"]: 1 }, /not valid Unicode/],
    ];
    for (const [value, message] of bad) {
      expect(() => normalizeDocument(value)).toThrow(InvalidDocumentError);
      expect(() => normalizeDocument(value)).toThrow(message);
    }
  });
});

describe("helpers", () => {
  test("headsHash is order-independent, 16 hex chars", () => {
    const h = headsHash(["bb", "aa"]);
    expect(h).toBe(headsHash(["aa", "bb"]));
    expect(h).toMatch(/^[0-9a-f]{16}$/);
    expect(h).not.toBe(headsHash(["aa"]));
    const expected = new Bun.CryptoHasher("sha256").update("aa,bb").digest("hex").slice(0, 16);
    expect(h).toBe(expected);
  });

  test("jsonEquals ignores key order but not values or array order", () => {
    expect(jsonEquals({ a: 1, b: [1, { c: null }] }, { b: [1, { c: null }], a: 1 })).toBe(true);
    expect(jsonEquals({ a: 1 }, { a: 1, b: 2 })).toBe(false);
    expect(jsonEquals([1, 2], [2, 1])).toBe(false);
    expect(jsonEquals({ a: [] }, { a: {} })).toBe(false);
    expect(jsonEquals(null, {})).toBe(false);
  });
});
