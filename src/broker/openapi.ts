/**
 * `GET /api/v1/openapi.json` and `GET /metrics`. The OpenAPI document is written by hand next to
 * the routes it describes; a test checks that every route the app serves appears in it.
 */
import type { Elysia } from "elysia";
import type { Metrics } from "../metrics.ts";
import type { RouteGroup } from "./server.ts";

const error = { $ref: "#/components/schemas/Error" };
const json = (schema: object) => ({ content: { "application/json": { schema } } });
const errors = (...codes: number[]) =>
  Object.fromEntries(codes.map((c) => [String(c), { description: "error", ...json(error) }]));
const collection = { name: "collection", in: "path", required: true, schema: { type: "string", pattern: "^[A-Za-z0-9_.-]{1,128}$" } };
const id = { name: "id", in: "path", required: true, schema: { type: "string", pattern: "^[A-Za-z0-9_.-]{1,128}$" } };
const document = { type: "object", additionalProperties: true, properties: { _id: { type: "string" } } };
const documentEnvelope = {
  type: "object",
  required: ["collection", "id", "document"],
  properties: { collection: { type: "string" }, id: { type: "string" }, document },
};
const writeBody = { required: true, ...json({ type: "object", additionalProperties: true }) };

export function openApiDocument(version: string): object {
  return {
    openapi: "3.1.0",
    info: {
      title: "peat-mesh broker",
      version,
      description:
        "Local API of a peat-mesh node. When PEAT_BROKER_TOKEN is set, every route except health and ready requires `Authorization: Bearer <token>`.",
    },
    components: {
      securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
      schemas: {
        Error: {
          type: "object",
          required: ["error", "status"],
          properties: { error: { type: "string" }, status: { type: "integer" } },
        },
      },
    },
    security: [{ bearer: [] }],
    paths: {
      "/api/v1/health": {
        get: { summary: "Liveness", security: [], responses: { "200": { description: "alive", ...json({ type: "object" }) } } },
      },
      "/api/v1/ready": {
        get: {
          summary: "Readiness: 503 with the failing checks until store, discovery and transport have started",
          security: [],
          responses: { "200": { description: "ready" }, "503": { description: "not ready" } },
        },
      },
      "/api/v1/node": {
        get: { summary: "Identity and uptime of this node", responses: { "200": { description: "node" }, ...errors(401) } },
      },
      "/api/v1/documents/{collection}": {
        get: {
          summary: "List a collection, ordered by id",
          parameters: [
            collection,
            { name: "limit", in: "query", schema: { type: "integer", minimum: 1, maximum: 1000, default: 100 } },
            { name: "after", in: "query", schema: { type: "string" }, description: "return ids after this one" },
          ],
          responses: { "200": { description: "page" }, ...errors(400, 401) },
        },
        post: {
          summary: "Create a document with a server-chosen id",
          parameters: [collection],
          requestBody: writeBody,
          responses: { "201": { description: "created", ...json(documentEnvelope) }, ...errors(400, 401, 413, 507) },
        },
      },
      "/api/v1/documents/{collection}/{id}": {
        get: {
          summary: "Read a document",
          parameters: [collection, id],
          responses: { "200": { description: "document", ...json(documentEnvelope) }, ...errors(400, 401, 404) },
        },
        put: {
          summary: "Create or replace a document",
          parameters: [collection, id],
          requestBody: writeBody,
          responses: {
            "200": { description: "replaced", ...json(documentEnvelope) },
            "201": { description: "created", ...json(documentEnvelope) },
            ...errors(400, 401, 413, 507),
          },
        },
        patch: {
          summary: "Apply a JSON Merge Patch (RFC 7396)",
          parameters: [collection, id],
          requestBody: writeBody,
          responses: { "200": { description: "patched", ...json(documentEnvelope) }, ...errors(400, 401, 404, 413, 507) },
        },
        delete: {
          summary: "Delete a document, leaving a tombstone that syncs to peers",
          parameters: [collection, id],
          responses: { "204": { description: "deleted" }, ...errors(400, 401, 404, 507) },
        },
      },
      "/api/v1/ws": {
        get: {
          summary:
            'WebSocket of JSON events: SyncEvent {collection, doc_id, action, origin}, PeerConnected, PeerDisconnected, TopologyChanged. Send {"subscribe":["collection"]} to filter SyncEvents.',
          responses: { "101": { description: "switching protocols" }, ...errors(401) },
        },
      },
      "/api/v1/peers": {
        get: { summary: "Every known peer: id, device_id, connected, state, rtt_ms, addresses, discovered_via, bytes", responses: { "200": { description: "peers" }, ...errors(401) } },
      },
      "/api/v1/peers/{id}": {
        get: {
          summary: "One peer, by node id or device id",
          parameters: [{ name: "id", in: "path", required: true, schema: { type: "string" } }],
          responses: { "200": { description: "peer" }, ...errors(401, 404) },
        },
      },
      "/api/v1/topology": { get: { summary: "This node and its connected peers", responses: { "200": { description: "topology" }, ...errors(401) } } },
      "/api/v1/sync/state": {
        get: {
          summary: "What sync compares: each document's heads hash and each tombstone's clock, and one state_hash over them; converged nodes have equal state_hash",
          parameters: [{ name: "collection", in: "query", schema: { type: "string" }, description: "only this collection" }],
          responses: { "200": { description: "state" }, ...errors(400, 401) },
        },
      },
      "/api/v1/openapi.json": { get: { summary: "This document", responses: { "200": { description: "OpenAPI 3.1" } } } },
      "/metrics": { get: { summary: "Prometheus metrics", responses: { "200": { description: "text exposition" } } } },
    },
  };
}

export function metaRoutes(options: { metrics: Metrics; version: string }): RouteGroup {
  const spec = JSON.stringify(openApiDocument(options.version));
  return (app: Elysia) =>
    app
      .get("/api/v1/openapi.json", () => new Response(spec, { headers: { "content-type": "application/json" } }))
      .get(
        "/metrics",
        () => new Response(options.metrics.render(), { headers: { "content-type": "text/plain; version=0.0.4" } }),
      ) as unknown as Elysia;
}
