/**
 * The broker: the HTTP/WebSocket API local apps use. Route groups come from the modules that own
 * the data (node info here, documents from the store, peers from the transport) and are mounted
 * under one error mapping, one auth check and one body limit.
 */
import { Elysia } from "elysia";
import { MethodNotAllowedError, PayloadTooLargeError, UnauthorizedError } from "../errors.ts";
import { constantTimeEqual } from "../identity/index.ts";
import type { Component } from "../lifecycle.ts";
import type { Logger } from "../log.ts";
import { errorResponse, jsonResponse, responseForError } from "./errors.ts";

export interface NodeInfo {
  nodeId: string;
  deviceId: string;
  endpointId: string;
  version: string;
  /** When the mesh started (ms since epoch): the base of `uptime_secs`. */
  startedAt: () => number;
}

export interface ReadinessCheck {
  name: string;
  ready: boolean;
  message: string | null;
}

/** A group of routes contributed by a module; it receives the app and returns it with its routes. */
export type RouteGroup = (app: Elysia) => Elysia;

export interface BrokerOptions {
  port: number;
  bindAddress: string;
  token?: string;
  maxBodyBytes: number;
  node: NodeInfo;
  readiness: () => ReadinessCheck[];
  log: Logger;
  routes?: RouteGroup[];
}

/** Routes any caller may use without a token: probes must work before anyone holds one. */
const PUBLIC_PATHS = new Set(["/api/v1/health", "/api/v1/ready"]);
/** Paths with their own authentication (signed signalling): exempt from the bearer token. */
const SELF_AUTHENTICATED_PREFIXES = ["/api/v1/signal"];

const encoder = new TextEncoder();
/** How far above the configured body limit Bun's own (bodiless) 413 starts. */
const NATIVE_BODY_BACKSTOP_BYTES = 64 * 1024 * 1024;

function tokenMatches(header: string | null, token: string): boolean {
  if (!header?.startsWith("Bearer ")) return false;
  return constantTimeEqual(encoder.encode(header.slice(7)), encoder.encode(token));
}

/**
 * The path of a request URL, or undefined when it does not parse. `new URL` throws on URLs Bun
 * builds from a hostile Host header or an authority-form target (`Host: [bad`,
 * `CONNECT 127.0.0.1:1`); a throw inside the error handler became Bun's HTML 500 page.
 */
export function pathOf(url: string): string | undefined {
  try {
    return new URL(url).pathname;
  } catch {
    return undefined;
  }
}

function compilePattern(path: string): RegExp {
  const escaped = path
    .split("/")
    .map((segment) => (segment.startsWith(":") ? "[^/]+" : segment.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")))
    .join("/");
  return new RegExp(`^${escaped}$`);
}

export function createBrokerApp(options: BrokerOptions): Elysia {
  const { node, log } = options;
  const app = new Elysia()
    .onRequest(({ request }) => {
      const length = request.headers.get("content-length");
      if (length !== null && Number(length) > options.maxBodyBytes) {
        throw new PayloadTooLargeError(`request body exceeds ${options.maxBodyBytes} bytes`);
      }
      if (!options.token) return;
      // An unparsable URL is never a public path: it needs the token like any other request.
      const path = pathOf(request.url) ?? "";
      if (PUBLIC_PATHS.has(path) || SELF_AUTHENTICATED_PREFIXES.some((p) => path.startsWith(p))) return;
      if (!tokenMatches(request.headers.get("authorization"), options.token)) {
        throw new UnauthorizedError("missing or invalid bearer token");
      }
    })
    .onError(({ code, error, request }) => {
      if (code === "NOT_FOUND") {
        const path = pathOf(request.url);
        if (path === undefined) return errorResponse(400, "malformed request URL");
        const allowed = app.routes
          .filter((r) => r.method !== request.method && compilePattern(r.path).test(path))
          // A WebSocket route is a GET with an upgrade; "WS" is Elysia's name for it, not a method.
          .map((r) => (r.method === "WS" ? "GET" : r.method));
        if (allowed.includes("GET") && request.method === "GET") {
          return errorResponse(426, `${path} is a WebSocket endpoint: upgrade required`, { upgrade: "websocket" });
        }
        if (allowed.length > 0) {
          const err = new MethodNotAllowedError(`method ${request.method} not allowed on ${path}`);
          return errorResponse(err.status, err.message, { allow: [...new Set(allowed)].join(", ") });
        }
        return errorResponse(404, `no route for ${request.method} ${path}`);
      }
      if (error instanceof UnauthorizedError) {
        return errorResponse(401, error.message, { "www-authenticate": 'Bearer realm="peat-mesh"' });
      }
      return responseForError(error, code, log);
    })
    .get("/api/v1/health", () => ({ status: "healthy", node_id: node.nodeId }))
    .get("/api/v1/ready", () => {
      const failing = options.readiness().filter((c) => !c.ready);
      const body = { ready: failing.length === 0, node_id: node.nodeId, checks: failing };
      return jsonResponse(body, failing.length === 0 ? 200 : 503);
    })
    .get("/api/v1/node", () => ({
      node_id: node.nodeId,
      device_id: node.deviceId,
      endpoint_id: node.endpointId,
      uptime_secs: Math.max(0, Math.floor((Date.now() - node.startedAt()) / 1000)),
      version: node.version,
    }));
  for (const group of options.routes ?? []) group(app as unknown as Elysia);
  return app as unknown as Elysia;
}

export class Broker implements Component {
  readonly name = "broker";
  private readonly app: Elysia;

  constructor(private readonly options: BrokerOptions) {
    this.app = createBrokerApp(options);
  }

  /** The bound port (differs from the configured one when that was 0). */
  get port(): number {
    return this.app.server?.port ?? this.options.port;
  }

  async start(): Promise<void> {
    this.app.listen({
      port: this.options.port,
      hostname: this.options.bindAddress,
      // Only a backstop, well above the limit: the onRequest hook answers a Content-Length over the
      // limit and readCapped a longer chunked body, both with our JSON 413. At the limit itself,
      // Bun refused oversize Content-Lengths before any hook ran, with a bodiless 413.
      maxRequestBodySize: this.options.maxBodyBytes + NATIVE_BODY_BACKSTOP_BYTES,
    });
    this.options.log.info("Broker listening", { addr: `${this.options.bindAddress}:${this.port}` });
  }

  async stop(): Promise<void> {
    if (this.app.server) await this.app.stop(true);
  }
}
