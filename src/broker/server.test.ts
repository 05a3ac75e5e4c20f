import { describe, expect, test } from "bun:test";
import type { Elysia } from "elysia";
import { BadRequestError, InsufficientStorageError, NotFoundError, StorageError } from "../errors.ts";
import { silentLogger } from "../log.ts";
import { type BrokerOptions, type ReadinessCheck, createBrokerApp } from "./server.ts";

const TOKEN = "s3cret-token-0123456789";

function app(overrides: Partial<BrokerOptions> = {}, checks: ReadinessCheck[] = []) {
  return createBrokerApp({
    port: 0,
    bindAddress: "127.0.0.1",
    maxBodyBytes: 1024,
    log: silentLogger(),
    node: { nodeId: "peat-mesh-0", deviceId: "d", endpointId: "e", version: "0.1.0", startedAt: () => Date.now() - 3500 },
    readiness: () => checks,
    ...overrides,
  });
}

async function call(a: Elysia, path: string, init?: RequestInit) {
  const res = await a.handle(new Request(`http://localhost${path}`, init));
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : null };
}

describe("probes and node info", () => {
  test("ready is 503 with the failing checks until every component has started", async () => {
    const checks: ReadinessCheck[] = [
      { name: "store", ready: true, message: null },
      { name: "discovery:static", ready: false, message: "not started" },
    ];
    const res = await call(app({}, checks), "/api/v1/ready");
    expect(res.status).toBe(503);
    expect(res.body).toEqual({ ready: false, node_id: "peat-mesh-0", checks: [{ name: "discovery:static", ready: false, message: "not started" }] });
    checks[1] = { name: "discovery:static", ready: true, message: null };
    expect(await call(app({}, checks), "/api/v1/ready")).toMatchObject({ status: 200, body: { ready: true, checks: [] } });
  });

  test("node reports uptime from the mesh start", async () => {
    const res = await call(app(), "/api/v1/node");
    expect(res.body).toEqual({ node_id: "peat-mesh-0", device_id: "d", endpoint_id: "e", uptime_secs: 3, version: "0.1.0" });
  });

  test("HEAD on a GET route works", async () => {
    expect((await app().handle(new Request("http://localhost/api/v1/health", { method: "HEAD" }))).status).toBe(200);
  });
});

describe("errors are mapped in one place", () => {
  const thrower = (err: unknown) => (a: Elysia) =>
    a.get("/boom", () => {
      throw err;
    }) as unknown as Elysia;

  test.each([
    ["NotFoundError", new NotFoundError("document not found: a/b"), 404],
    ["BadRequestError", new BadRequestError("bad"), 400],
    ["InsufficientStorageError", new InsufficientStorageError("disk full"), 507],
    ["StorageError", new StorageError("read-only data dir"), 500],
  ] as const)("%s → its status with a JSON body", async (_name, err, status) => {
    const res = await call(app({ routes: [thrower(err)] }), "/boom");
    expect(res.status).toBe(status);
    expect(res.body).toEqual({ error: (err as Error).message, status });
  });

  test("an unexpected error is a 500 that does not leak its message", async () => {
    const res = await call(app({ routes: [thrower(new TypeError("secret internals"))] }), "/boom");
    expect(res).toMatchObject({ status: 500, body: { error: "internal error", status: 500 } });
  });

  test("an oversized Content-Length is refused with 413 before the body is read", async () => {
    const res = await call(app(), "/api/v1/health", { method: "POST", headers: { "content-length": "999999" }, body: "x" });
    expect(res.status).toBe(413);
    expect(res.body.status).toBe(413);
  });
});

describe("bearer token", () => {
  const secured = () => app({ token: TOKEN });

  test("health and ready need no token", async () => {
    expect((await call(secured(), "/api/v1/health")).status).toBe(200);
    expect((await call(secured(), "/api/v1/ready")).status).toBe(200);
  });

  test("other routes answer 401 without the right token", async () => {
    for (const authorization of [undefined, "Bearer wrong", `Basic ${TOKEN}`, `Bearer ${TOKEN}x`]) {
      const headers: Record<string, string> = authorization ? { authorization } : {};
      const res = await call(secured(), "/api/v1/node", { headers });
      expect(res.status).toBe(401);
      expect(res.body).toEqual({ error: "missing or invalid bearer token", status: 401 });
      expect(res.headers.get("www-authenticate")).toContain("Bearer");
    }
    const ok = await call(secured(), "/api/v1/node", { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(ok.status).toBe(200);
  });

  test("unknown routes are 401 too, so a caller without a token learns nothing", async () => {
    expect((await call(secured(), "/api/v1/documents-nope")).status).toBe(401);
  });
});
