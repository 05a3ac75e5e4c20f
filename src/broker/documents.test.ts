/**
 * The document API against a real SQLite store, in-process (app.handle): every route, every error
 * case, and the round trip of every JSON type.
 */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Elysia } from "elysia";
import { silentLogger } from "../log.ts";
import { DocumentStore } from "../store/index.ts";
import { documentRoutes } from "./documents.ts";
import { createBrokerApp } from "./server.ts";

const MAX_BODY = 4096;
let dir: string;
let store: DocumentStore;
let app: Elysia;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "peat-docs-"));
  store = new DocumentStore({ dataDir: dir, nodeId: "peat-mesh-0", log: silentLogger() });
  await store.start();
  app = createBrokerApp({
    port: 0,
    bindAddress: "127.0.0.1",
    maxBodyBytes: MAX_BODY,
    log: silentLogger(),
    node: { nodeId: "peat-mesh-0", deviceId: "d", endpointId: "e", version: "0", startedAt: () => Date.now() },
    readiness: () => [],
    routes: [documentRoutes({ store, maxBodyBytes: MAX_BODY })],
  });
});

afterEach(async () => {
  await store.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function call(method: string, path: string, body?: string | Uint8Array | ReadableStream, headers: Record<string, string> = {}) {
  const res = await app.handle(new Request(`http://localhost/api/v1${path}`, { method, body, headers }));
  const text = await res.text();
  let json: any = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = text;
  }
  return { status: res.status, body: json, headers: res.headers };
}

describe("write and read", () => {
  test("PUT creates (201) then replaces (200); the response carries the stored document", async () => {
    const created = await call("PUT", "/documents/tracks/t1", JSON.stringify({ lat: 52.1, lon: 4.3, callsign: "ALPHA" }));
    expect(created).toMatchObject({
      status: 201,
      body: { collection: "tracks", id: "t1", document: { lat: 52.1, lon: 4.3, callsign: "ALPHA", _id: "t1" } },
    });
    const replaced = await call("PUT", "/documents/tracks/t1", JSON.stringify({ lat: 53 }));
    expect(replaced.status).toBe(200);
    expect(replaced.body.document).toEqual({ lat: 53, _id: "t1" });
    expect((await call("GET", "/documents/tracks/t1")).body).toEqual({
      collection: "tracks",
      id: "t1",
      document: { lat: 53, _id: "t1" },
    });
  });

  test("every JSON type round-trips exactly", async () => {
    const value = {
      string: "plain text, not Automerge Text",
      empty: "",
      unicode: "ünïcødé ✓ 🚁",
      int: 42,
      negative: -7,
      zero: 0,
      float: 3.14159,
      big: 9007199254740991,
      tiny: 1e-300,
      huge: 1.5e300,
      yes: true,
      no: false,
      nothing: null,
      nested: { a: { b: { c: [1, "two", null, false, { d: [] }] } } },
      emptyObject: {},
      array: [[1, 2], [], ["x"]],
    };
    const put = await call("PUT", "/documents/mixed/all", JSON.stringify(value));
    expect(put.status).toBe(201);
    expect(put.body.document).toEqual({ ...value, _id: "all" });
    const got = await call("GET", "/documents/mixed/all");
    expect(got.body.document).toEqual({ ...value, _id: "all" });
    expect(typeof got.body.document.string).toBe("string");
  });

  test("PATCH applies a JSON Merge Patch and 404s on an absent document", async () => {
    await call("PUT", "/documents/alerts/a1", JSON.stringify({ level: "low", tags: ["x"], meta: { by: "a", at: 1 } }));
    const patched = await call("PATCH", "/documents/alerts/a1", JSON.stringify({ level: "high", meta: { at: null, seen: true }, tags: ["y"] }));
    expect(patched.status).toBe(200);
    expect(patched.body.document).toEqual({ level: "high", tags: ["y"], meta: { by: "a", seen: true }, _id: "a1" });
    expect(await call("PATCH", "/documents/alerts/nope", JSON.stringify({ a: 1 }))).toMatchObject({
      status: 404,
      body: { error: "document not found: alerts/nope", status: 404 },
    });
  });

  test("POST creates with a server-chosen id and a Location header", async () => {
    const first = await call("POST", "/documents/reports", JSON.stringify({ n: 1 }));
    const second = await call("POST", "/documents/reports", JSON.stringify({ n: 2 }));
    expect(first.status).toBe(201);
    expect(first.body.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(first.headers.get("location")).toBe(`/api/v1/documents/reports/${first.body.id}`);
    expect(first.body.document).toEqual({ n: 1, _id: first.body.id });
    // Time-ordered ids list in creation order.
    const list = await call("GET", "/documents/reports");
    expect(list.body.documents.map((d: { n: number }) => d.n)).toEqual([1, 2]);
    expect(second.body.id > first.body.id).toBe(true);
  });

  test("DELETE answers 204, then the document is 404 and absent from the list; a second DELETE is 404", async () => {
    await call("PUT", "/documents/tracks/t1", JSON.stringify({ a: 1 }));
    const deleted = await call("DELETE", "/documents/tracks/t1");
    expect(deleted.status).toBe(204);
    expect(deleted.body).toBeNull();
    expect((await call("GET", "/documents/tracks/t1")).status).toBe(404);
    expect((await call("GET", "/documents/tracks")).body.count).toBe(0);
    expect((await call("DELETE", "/documents/tracks/t1")).status).toBe(404);
    expect(store.getTombstone("tracks", "t1")).toMatchObject({ collection: "tracks", id: "t1", deletedBy: "peat-mesh-0" });
  });

  test("a body _id equal to the path id is accepted and not stored twice; a different one is refused", async () => {
    expect((await call("PUT", "/documents/c/x", JSON.stringify({ _id: "x", a: 1 }))).body.document).toEqual({ a: 1, _id: "x" });
    expect(await call("PUT", "/documents/c/x", JSON.stringify({ _id: "y", a: 1 }))).toMatchObject({ status: 400 });
  });
});

describe("listing", () => {
  test("an empty collection is count 0, not 404", async () => {
    expect(await call("GET", "/documents/empty")).toEqual({
      status: 200,
      headers: expect.anything(),
      body: { collection: "empty", count: 0, total: 0, documents: [], next_after: null },
    });
  });

  test("ordered by id with limit and after paging", async () => {
    for (const id of ["b", "a", "d", "c", "e"]) await call("PUT", `/documents/p/${id}`, JSON.stringify({ id }));
    const page1 = await call("GET", "/documents/p?limit=2");
    expect(page1.body.documents.map((d: { _id: string }) => d._id)).toEqual(["a", "b"]);
    expect(page1.body).toMatchObject({ count: 2, total: 5, next_after: "b" });
    const page2 = await call("GET", `/documents/p?limit=2&after=${page1.body.next_after}`);
    expect(page2.body.documents.map((d: { _id: string }) => d._id)).toEqual(["c", "d"]);
    const page3 = await call("GET", "/documents/p?limit=2&after=d");
    expect(page3.body).toMatchObject({ count: 1, next_after: null });
    expect((await call("GET", "/documents/p")).body.count).toBe(5);
  });

  test.each([["0"], ["1001"], ["-1"], ["ten"], ["1.5"]])("limit=%s is a 400", async (limit) => {
    const res = await call("GET", `/documents/p?limit=${limit}`);
    expect(res.status).toBe(400);
    expect(res.body.status).toBe(400);
    expect(res.body.error).toContain("limit");
  });

  test("limit=1000 is accepted", async () => {
    expect((await call("GET", "/documents/p?limit=1000")).status).toBe(200);
  });
});

describe("bad input gets a 4xx JSON error and changes nothing", () => {
  test.each([
    ["malformed JSON", "PUT", "/documents/c/x", "{not json", 400, /malformed JSON/],
    ["an array body", "PUT", "/documents/c/x", "[1,2]", 400, /must be a JSON object/],
    ["a string body", "PUT", "/documents/c/x", '"hi"', 400, /must be a JSON object/],
    ["null body", "PUT", "/documents/c/x", "null", 400, /must be a JSON object/],
    ["an empty body", "PUT", "/documents/c/x", "", 400, /body required/],
    ["a bad collection name", "PUT", "/documents/bad%20name/x", "{}", 400, /invalid collection/],
    ["a bad id", "PUT", "/documents/c/a%2Fb", "{}", 400, /invalid id/],
    ["a 129-character id", "GET", `/documents/c/${"x".repeat(129)}`, undefined, 400, /invalid id/],
    ["a path traversal id", "GET", "/documents/c/..%2F..%2Fetc", undefined, 400, /invalid id/],
    ["a bad after", "GET", "/documents/c?after=a%20b", undefined, 400, /invalid id/],
    ["POST with a bad body", "POST", "/documents/c", "{", 400, /malformed JSON/],
    ["PATCH with a non-object", "PATCH", "/documents/c/x", "3", 400, /must be a JSON object/],
  ] as const)("%s", async (_label, method, path, body, status, message) => {
    const res = await call(method, path, body);
    expect(res.status).toBe(status);
    expect(res.body.status).toBe(status);
    expect(res.body.error).toMatch(message);
    expect(store.count("c")).toBe(0);
  });

  test("a body over the limit gets 413, with or without Content-Length", async () => {
    const big = JSON.stringify({ s: "x".repeat(MAX_BODY) });
    expect((await call("PUT", "/documents/c/x", big)).status).toBe(413);
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(big));
        controller.close();
      },
    });
    const chunked = await call("PUT", "/documents/c/x", stream);
    expect(chunked).toMatchObject({ status: 413, body: { status: 413 } });
    expect(store.count("c")).toBe(0);
  });

  test("invalid UTF-8 is a 400", async () => {
    const bytes = new Uint8Array([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]);
    expect(await call("PUT", "/documents/c/x", bytes)).toMatchObject({ status: 400, body: { error: "request body is not valid UTF-8" } });
  });

  test("nesting deeper than 64 levels is a 400, and so is a hostile 100k-deep array", async () => {
    let deep = "1";
    for (let i = 0; i < 65; i++) deep = `{"a":${deep}}`;
    expect((await call("PUT", "/documents/c/x", deep)).status).toBe(400);
    const hostile = `{"a":${"[".repeat(1000)}${"]".repeat(1000)}}`;
    expect((await call("PUT", "/documents/c/x", hostile)).status).toBe(400);
    expect(store.count("c")).toBe(0);
  });

  test("wrong methods are 405 with Allow", async () => {
    const res = await call("POST", "/documents/c/x", "{}");
    expect(res.status).toBe(405);
    expect(res.headers.get("allow")).toContain("PUT");
    expect((await call("PUT", "/documents/c", "{}")).status).toBe(405);
  });

  test("a bad _ttl_secs is refused", async () => {
    const res = await call("PUT", "/documents/c/x", JSON.stringify({ _ttl_secs: "soon" }));
    expect(res.status).toBe(400);
    expect(res.body.error).toContain("_ttl_secs");
  });
});
