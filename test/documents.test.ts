/**
 * The document API of a real node process: durability across SIGKILL, WebSocket events, token
 * auth, metrics, OpenAPI, scheduled compaction.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { startNode, stopAllNodes, tempDir, waitFor } from "./harness/node-process.ts";

afterAll(stopAllNodes);

const put = (base: string, path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${base}/api/v1/documents/${path}`, { method: "PUT", body: JSON.stringify(body), headers });

describe("durability", () => {
  test("a node killed with SIGKILL during a stream of writes keeps every acknowledged one", async () => {
    const dataDir = tempDir();
    for (let round = 0; round < 3; round++) {
      const node = await startNode({ env: { PEAT_DATA_DIR: dataDir } });
      const acked = new Map<string, number>();
      let stop = false;
      const writers = Array.from({ length: 8 }, async (_, w) => {
        for (let i = 0; !stop; i++) {
          const id = `r${round}-w${w}-${i}`;
          try {
            const res = await put(node.url, `durable/${id}`, { round, w, i });
            if (res.status === 201) acked.set(id, i);
          } catch {
            return; // the node died mid-request: that write was never acknowledged
          }
        }
      });
      await waitFor(() => acked.size >= 200 + Math.floor(Math.random() * 300), 20_000, "some acknowledged writes");
      await node.kill();
      stop = true;
      await Promise.all(writers);

      const reopened = await startNode({ env: { PEAT_DATA_DIR: dataDir } });
      const missing: string[] = [];
      for (const [id, i] of acked) {
        const res = await reopened.fetch(`/api/v1/documents/durable/${id}`);
        const body = (await res.json()) as { document?: { i: number } };
        if (res.status !== 200 || body.document?.i !== i) missing.push(id);
      }
      expect(missing).toEqual([]);
      expect(acked.size).toBeGreaterThanOrEqual(200);
      await reopened.stop();
    }
  }, 90_000);
});

describe("WebSocket events", () => {
  test("SyncEvents for local writes and deletes, filtered by subscription", async () => {
    const node = await startNode();
    const ws = new WebSocket(`ws://127.0.0.1:${node.brokerPort}/api/v1/ws`);
    const events: Record<string, unknown>[] = [];
    ws.onmessage = (m) => events.push(JSON.parse(String(m.data)));
    await waitFor(() => ws.readyState === WebSocket.OPEN, 5000, "the socket to open");

    await put(node.url, "tracks/t1", { a: 1 });
    await fetch(`${node.url}/api/v1/documents/tracks/t1`, { method: "DELETE" });
    await waitFor(() => events.length >= 2, 5000, "two events");
    expect(events.slice(0, 2)).toEqual([
      { type: "SyncEvent", collection: "tracks", doc_id: "t1", action: "upsert", origin: "local" },
      { type: "SyncEvent", collection: "tracks", doc_id: "t1", action: "delete", origin: "local" },
    ]);

    ws.send(JSON.stringify({ subscribe: ["alerts"] }));
    await waitFor(() => events.find((e) => e.type === "Subscribed"), 5000, "the subscription ack");
    await put(node.url, "tracks/t2", { a: 1 });
    await put(node.url, "alerts/a1", { a: 1 });
    await waitFor(() => events.find((e) => e.doc_id === "a1"), 5000, "the alerts event");
    expect(events.some((e) => e.doc_id === "t2")).toBe(false);

    ws.send("not json");
    await waitFor(() => events.find((e) => e.type === "Error"), 5000, "an error reply");
    expect(ws.readyState).toBe(WebSocket.OPEN);
    ws.close();
    await node.stop();
  });

  test("a client that stops reading is closed instead of growing the node's memory", async () => {
    const node = await startNode({ env: { PEAT_WS_MAX_BUFFERED_BYTES: "65536" } });
    // A raw TCP client that completes the upgrade and then never reads another byte.
    let upgraded = false;
    const socket = await Bun.connect({
      hostname: "127.0.0.1",
      port: node.brokerPort,
      socket: {
        data(s, chunk) {
          if (!upgraded && chunk.toString().startsWith("HTTP/1.1 101")) {
            upgraded = true;
            s.pause();
          }
        },
      },
    });
    socket.write(
      "GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    await waitFor(() => upgraded, 5000, "the upgrade");
    // Long ids make each event ~270 bytes, so kernel socket buffers fill after a few thousand.
    const prefix = "n".repeat(110);
    let closed = 0;
    for (let i = 0; i < 60_000 && closed === 0; i += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, j) => put(node.url, `noise/${prefix}${i + j}`, { i })));
      const metrics = await (await node.fetch("/metrics")).text();
      closed = Number(/peat_ws_slow_clients_closed_total (\d+)/.exec(metrics)?.[1] ?? 0);
    }
    expect(closed).toBe(1);
    expect((await node.fetch("/api/v1/health")).status).toBe(200);
    socket.end();
    await node.stop();
  }, 60_000);
});

describe("broker token", () => {
  test("required everywhere but health and ready, including the WebSocket", async () => {
    const token = "t0ken-for-tests-0123456789";
    const node = await startNode({ env: { PEAT_BROKER_TOKEN: token } });
    expect((await node.fetch("/api/v1/health")).status).toBe(200);
    expect((await put(node.url, "c/x", { a: 1 })).status).toBe(401);
    expect((await node.fetch("/metrics")).status).toBe(401);
    expect((await node.fetch("/api/v1/ws", { headers: { upgrade: "websocket" } })).status).toBe(401);
    const ok = await put(node.url, "c/x", { a: 1 }, { authorization: `Bearer ${token}` });
    expect(ok.status).toBe(201);
    await node.stop();
  });
});

describe("metrics and OpenAPI", () => {
  test("/metrics counts documents per collection and writes", async () => {
    const node = await startNode();
    await put(node.url, "tracks/a", { a: 1 });
    await put(node.url, "tracks/b", { a: 1 });
    await put(node.url, "alerts/a", { a: 1 });
    const text = await (await node.fetch("/metrics")).text();
    expect(text).toContain('peat_documents{collection="tracks"} 2');
    expect(text).toContain('peat_documents{collection="alerts"} 1');
    expect(text).toMatch(/peat_store_writes_total 3\b/);
    expect(text).toMatch(/# TYPE peat_store_bytes gauge\npeat_store_bytes [1-9]\d*/);
    await node.stop();
  });

  test("openapi.json describes every route the broker serves", async () => {
    const node = await startNode();
    const spec = (await (await node.fetch("/api/v1/openapi.json")).json()) as { openapi: string; paths: Record<string, object> };
    expect(spec.openapi).toBe("3.1.0");
    for (const path of [
      "/api/v1/health",
      "/api/v1/ready",
      "/api/v1/node",
      "/api/v1/documents/{collection}",
      "/api/v1/documents/{collection}/{id}",
      "/api/v1/ws",
      "/api/v1/peers",
      "/api/v1/peers/{id}",
      "/api/v1/topology",
      "/api/v1/sync/state",
      "/metrics",
    ]) {
      expect(Object.keys(spec.paths)).toContain(path);
    }
    expect(Object.keys(spec.paths["/api/v1/documents/{collection}/{id}"] ?? {}).sort()).toEqual(["delete", "get", "patch", "put"]);
    await node.stop();
  });
});

describe("compaction", () => {
  test("logs the derived set at startup and warns for a FullHistory collection", async () => {
    const node = await startNode({
      env: { PEAT_COMPACTION_ENABLED: "true", PEAT_COMPACTION_COLLECTIONS: "beacons,alerts" },
    });
    await node.waitForLine(/WARN .*Not compacting FullHistory collection.* collection=alerts/);
    await node.waitForLine(/Background compaction started \(per-collection\) interval_secs=300 threshold_bytes=65536 collections=\["beacons"\]/);
    await node.stop();
    const derived = await startNode({ env: { PEAT_COMPACTION_ENABLED: "true" } });
    await derived.waitForLine(/Auto-derived compaction collections from LatestOnly sync modes collections=\[.*"beacons".*\]/);
    await derived.stop();
  });

  test("a scheduled run shrinks a LatestOnly document with a long history and leaves FullHistory alone", async () => {
    const node = await startNode({
      env: { PEAT_COMPACTION_ENABLED: "true", PEAT_COMPACTION_INTERVAL_SECS: "10", PEAT_COMPACTION_THRESHOLD_BYTES: "1024" },
    });
    for (let i = 0; i < 300; i++) {
      await put(node.url, "beacons/b1", { seq: i, lat: 52 + i / 1000, note: `update ${i}` });
      await put(node.url, "alerts/a1", { seq: i, note: `update ${i}` });
    }
    const line = await node.waitForLine(/background compaction complete count=\d+ before=\d+ after=\d+/, 25_000);
    const [, count, before, after] = /count=(\d+) before=(\d+) after=(\d+)/.exec(line) as RegExpExecArray;
    expect(Number(count)).toBe(1);
    expect(Number(after)).toBeLessThan(Number(before) / 5);
    const doc = await (await node.fetch("/api/v1/documents/beacons/b1")).json();
    expect(doc).toMatchObject({ document: { seq: 299, note: "update 299" } });
    const alert = await (await node.fetch("/api/v1/documents/alerts/a1")).json();
    expect(alert).toMatchObject({ document: { seq: 299 } });
    await node.stop();
  }, 40_000);
});
