/**
 * `GET /api/v1/ws`: a stream of MeshEvents as JSON text frames. A client may narrow SyncEvents to
 * some collections with `{"subscribe":["tracks", ...]}`. A client that reads slower than events
 * arrive is closed (1008) instead of letting its send buffer grow without bound.
 */
import type { Elysia } from "elysia";
import type { MeshEvent, MeshEvents } from "../events.ts";
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import { NAME_PATTERN } from "./documents.ts";
import { PeatError } from "../errors.ts";
import type { RouteGroup } from "./server.ts";

export const SLOW_CLIENT_CLOSE_CODE = 1008;
export const DEFAULT_MAX_BUFFERED_BYTES = 1024 * 1024;

export interface WsRoutesOptions {
  events: MeshEvents;
  log: Logger;
  metrics: Metrics;
  maxBufferedBytes?: number;
}

interface RawSocket {
  send(data: string): number;
  close(code?: number, reason?: string): void;
  getBufferedAmount(): number;
}

interface Session {
  unsubscribe: () => void;
  collections: Set<string> | null;
}

function parseSubscribe(message: unknown): Set<string> | null | "invalid" {
  let value = message;
  if (typeof value === "string") {
    try {
      value = JSON.parse(value);
    } catch {
      return "invalid";
    }
  }
  if (value === null || typeof value !== "object" || !("subscribe" in value)) return "invalid";
  const list = (value as { subscribe: unknown }).subscribe;
  if (list === null) return null;
  if (!Array.isArray(list) || list.length > 1000 || !list.every((c) => typeof c === "string" && NAME_PATTERN.test(c))) {
    return "invalid";
  }
  return list.length === 0 ? null : new Set(list as string[]);
}

/**
 * What is wrong with a WebSocket upgrade request, checked before Bun attempts the upgrade: a
 * failed `server.upgrade` made Elysia answer with a text/plain 400, not the broker's JSON error.
 */
export function upgradeProblem(headers: Headers): { status: number; message: string } | undefined {
  const tokens = (name: string) => (headers.get(name) ?? "").toLowerCase().split(",").map((t) => t.trim());
  if (!tokens("upgrade").includes("websocket")) return { status: 426, message: "WebSocket upgrade required" };
  if (!tokens("connection").includes("upgrade")) return { status: 400, message: "Connection header must include Upgrade" };
  if (headers.get("sec-websocket-version") !== "13") return { status: 426, message: "unsupported WebSocket version; 13 is supported" };
  if (!/^[A-Za-z0-9+/]{22}==$/.test(headers.get("sec-websocket-key") ?? "")) return { status: 400, message: "invalid Sec-WebSocket-Key" };
  return undefined;
}

/** A refused upgrade, answered with the broker's JSON error. */
class UpgradeError extends PeatError {
  override readonly name = "UpgradeError";
  constructor(
    override readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export function wsRoutes(options: WsRoutesOptions): RouteGroup {
  const maxBuffered = options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES;
  const sessions = new WeakMap<object, Session>();
  let clients = 0;
  options.metrics.gauge("peat_ws_clients", "Connected WebSocket clients", () => clients);
  const slowClosed = options.metrics.counter("peat_ws_slow_clients_closed_total", "WebSocket clients closed for reading too slowly");

  return (app: Elysia) =>
    app.ws("/api/v1/ws", {
      upgrade({ request }) {
        const problem = upgradeProblem(request.headers);
        if (problem) throw new UpgradeError(problem.status, problem.message);
      },
      open(ws) {
        const raw = ws.raw as unknown as RawSocket;
        clients++;
        const session: Session = { collections: null, unsubscribe: () => {} };
        session.unsubscribe = options.events.on((event: MeshEvent) => {
          if (event.type === "SyncEvent" && session.collections && !session.collections.has(event.collection)) return;
          if (raw.getBufferedAmount() > maxBuffered) {
            session.unsubscribe();
            slowClosed.inc();
            options.log.warn("Closing slow WebSocket client", { buffered_bytes: raw.getBufferedAmount() });
            raw.close(SLOW_CLIENT_CLOSE_CODE, "slow consumer: send buffer limit exceeded");
            return;
          }
          raw.send(JSON.stringify(event));
        });
        sessions.set(ws.raw as object, session);
      },
      message(ws, message) {
        const session = sessions.get(ws.raw as object);
        if (!session) return;
        const parsed = parseSubscribe(message);
        if (parsed === "invalid") {
          ws.send(JSON.stringify({ type: "Error", error: 'expected {"subscribe":["collection", ...]}' }));
          return;
        }
        session.collections = parsed;
        ws.send(JSON.stringify({ type: "Subscribed", collections: parsed ? [...parsed] : null }));
      },
      close(ws) {
        sessions.get(ws.raw as object)?.unsubscribe();
        sessions.delete(ws.raw as object);
        clients--;
      },
    }) as unknown as Elysia;
}
