/**
 * Baseline peer for bench/mesh-sync.ts: one automerge-repo `Repo` per process (WebSocket network
 * adapter, NodeFS storage) behind a small HTTP API of the same shape as peat-mesh's broker, so the
 * bench drives both systems with the same client code.
 *
 * Environment (the names the bench harness already sets for peat-mesh nodes, plus two of its own):
 *   HOSTNAME            peer name, used as the automerge-repo PeerId
 *   PEAT_BROKER_PORT    HTTP port of the control API (127.0.0.1)
 *   PEAT_DATA_DIR       NodeFS storage directory
 *   AMR_WS_PORT         port of this peer's WebSocket server (127.0.0.1)
 *   AMR_CONNECT         comma-separated ws://127.0.0.1:PORT URLs this peer dials as a client
 *   AMR_RETRY_MS        client reconnect interval (default 1000)
 *   AMR_FIND_TIMEOUT_MS how long a GET waits for an unknown document to be found (default 1000)
 *
 * Addressing: a (collection, id) pair maps to a deterministic automerge-repo DocumentId, the first
 * 16 bytes of SHA-256("collection/id") in automerge-repo's bs58check encoding. No shared index
 * document is needed: any peer computes the URL and `repo.find()`s it, which loads it from storage
 * or requests it from the connected peers; that lookup is part of every GET of a document this
 * peer has not got in memory yet, so the latency the bench measures includes "finding" it. (A shared
 * index document of 10,000 entries would be rewritten by every write and synced whole to every
 * peer, which would measure our choice of index more than automerge-repo.) Each document also
 * carries `_collection` and `_id` so the list endpoint can enumerate the loaded handles.
 *
 * Only for the bench: a PUT of a document that neither memory nor local storage holds creates it
 * with the deterministic id; were it concurrently created elsewhere, the two unrelated histories
 * would merge key by key rather than one replacing the other.
 */
import { Repo, parseAutomergeUrl, stringifyAutomergeUrl } from "@automerge/automerge-repo";
import type { DocHandle, DocumentId, PeerId } from "@automerge/automerge-repo";
import { WebSocketClientAdapter, WebSocketServerAdapter } from "@automerge/automerge-repo-network-websocket";
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs";
import { createHash } from "node:crypto";

// ---- byte counters (application bytes of every WebSocket message, each direction) ----------------

let bytesSent = 0;
let bytesReceived = 0;
let messagesSent = 0;
let messagesReceived = 0;
let uncaughtErrors = 0;

function byteLength(data: unknown): number {
  if (data instanceof ArrayBuffer) return data.byteLength;
  if (ArrayBuffer.isView(data)) return data.byteLength;
  if (Array.isArray(data)) return data.reduce((n: number, d: unknown) => n + byteLength(d), 0);
  if (typeof data === "string") return Buffer.byteLength(data);
  return 0;
}

interface WsServer {
  on(event: "listening", listener: () => void): void;
  on(event: "error", listener: (err: Error) => void): void;
  close(callback?: () => void): void;
}
interface WsModule {
  WebSocket: { prototype: { send: (data: unknown, ...rest: unknown[]) => void } };
  WebSocketServer: new (options: { host: string; port: number }) => WsServer;
}
// `ws` (Bun serves its built-in implementation for it) is what the adapter uses through
// isomorphic-ws; no @types/ws in the project, so it is typed here by the little that is used.
const ws = require("ws") as WsModule;
const originalSend = ws.WebSocket.prototype.send;
ws.WebSocket.prototype.send = function (this: unknown, data: unknown, ...rest: unknown[]) {
  bytesSent += byteLength(data);
  messagesSent++;
  return originalSend.call(this, data, ...rest);
};

class CountingClientAdapter extends WebSocketClientAdapter {
  override receiveMessage(messageBytes: Uint8Array): void {
    bytesReceived += byteLength(messageBytes);
    messagesReceived++;
    super.receiveMessage(messageBytes);
  }
}

class CountingServerAdapter extends WebSocketServerAdapter {
  // The stock server adapter is "ready" only once a client has connected, and the repo waits for
  // every adapter to be ready before it asks peers for a document it lacks: a peer that only dials
  // out (nobody dials it) would wait forever. A listening server has nothing more to wait for.
  override isReady(): boolean {
    return true;
  }

  override whenReady(): Promise<void> {
    return Promise.resolve();
  }

  override receiveMessage(messageBytes: Uint8Array, socket: Parameters<WebSocketServerAdapter["receiveMessage"]>[1]): void {
    bytesReceived += byteLength(messageBytes);
    messagesReceived++;
    super.receiveMessage(messageBytes, socket);
  }
}

// ---- configuration ------------------------------------------------------------------------------

const env = process.env;
const NAME = env.HOSTNAME ?? "peer";
const HTTP_PORT = Number(env.PEAT_BROKER_PORT ?? 0);
const DATA_DIR = env.PEAT_DATA_DIR ?? "./automerge-repo-data";
const WS_PORT = Number(env.AMR_WS_PORT ?? 0);
const CONNECT = (env.AMR_CONNECT ?? "").split(",").map((s) => s.trim()).filter(Boolean);
const RETRY_MS = Number(env.AMR_RETRY_MS ?? 1000);
const FIND_TIMEOUT_MS = Number(env.AMR_FIND_TIMEOUT_MS ?? 1000);
const NAME_PATTERN = /^[A-Za-z0-9_.-]{1,128}$/;

function log(message: string): void {
  console.log(`${new Date().toISOString()} INFO ${message}`);
}

// ---- repo ---------------------------------------------------------------------------------------

const wss = new ws.WebSocketServer({ host: "127.0.0.1", port: WS_PORT });
await new Promise<void>((resolve, reject) => {
  wss.on("listening", () => resolve());
  wss.on("error", reject);
});

// create2() asks the idFactory for the new document's id; the id wanted is set just before the
// (synchronous) call into it.
let nextDocumentId: Uint8Array | undefined;
const repo = new Repo({
  peerId: NAME as PeerId,
  storage: new NodeFSStorageAdapter(DATA_DIR),
  network: [
    new CountingServerAdapter(wss as unknown as ConstructorParameters<typeof WebSocketServerAdapter>[0]),
    ...CONNECT.map((url) => new CountingClientAdapter(url, RETRY_MS)),
  ],
  sharePolicy: async () => true,
  idFactory: async () => {
    const id = nextDocumentId;
    nextDocumentId = undefined;
    if (!id) throw new Error("create2 called without a document id");
    return id;
  },
});
repo.networkSubsystem.on("peer", ({ peerId }) => log(`Peer connected peer=${peerId}`));
repo.networkSubsystem.on("peer-disconnected", ({ peerId }) => log(`Peer disconnected peer=${peerId}`));

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Body = { [key: string]: Json };
type StoredDoc = Body & { _collection?: string; _id?: string; _deleted?: boolean };

function binaryId(collection: string, id: string): Uint8Array {
  return new Uint8Array(createHash("sha256").update(`${collection}/${id}`).digest().subarray(0, 16));
}

function documentIdOf(collection: string, id: string): DocumentId {
  return parseAutomergeUrl(stringifyAutomergeUrl(binaryId(collection, id) as Parameters<typeof stringifyAutomergeUrl>[0])).documentId;
}

/** The ready handle of (collection, id), loading it from storage or peers; undefined if not found in time. */
async function findHandle(collection: string, id: string): Promise<DocHandle<StoredDoc> | undefined> {
  const documentId = documentIdOf(collection, id);
  const cached = repo.handles[documentId] as DocHandle<StoredDoc> | undefined;
  if (cached?.isReady()) return cached;
  // The wait is bounded by a timer, not by find()'s abort signal: the signal only reaches a load
  // that call starts (a find joining one under way, say started by an incoming sync message, would
  // wait unbounded), and the library leaves its internal abort promise unhandled when the signal
  // fires during a slow storage load. An abandoned find goes on in the background, as any does.
  const found = repo.find<StoredDoc>(documentId);
  found.catch(() => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      found,
      new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), FIND_TIMEOUT_MS);
      }),
    ]);
  } catch {
    return undefined;
  } finally {
    clearTimeout(timer);
  }
}

function visible(doc: StoredDoc | undefined, collection: string): doc is StoredDoc {
  return doc !== undefined && doc._collection === collection && doc._deleted !== true;
}

function shown(doc: StoredDoc, id: string): Body {
  const out: Body = {};
  for (const [k, v] of Object.entries(doc)) if (k !== "_collection" && k !== "_deleted" && k !== "_id") out[k] = v;
  out._id = id;
  return out;
}

function isObject(v: unknown): v is Body {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Replaces the document's user fields with `body` (fields equal to the current value are left alone). */
function replaceFields(d: StoredDoc, body: Body): void {
  for (const key of Object.keys(d)) if (!key.startsWith("_") && !(key in body)) delete d[key];
  for (const [key, value] of Object.entries(body)) {
    if (key.startsWith("_")) continue;
    if (!sameJson(d[key], value)) d[key] = value;
  }
  if (d._deleted) delete d._deleted;
}

/** RFC 7386 JSON merge patch. */
function mergePatch(target: Body, patch: Body): void {
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith("_")) continue;
    if (value === null) delete target[key];
    else if (isObject(value)) {
      const current = target[key];
      if (!isObject(current)) target[key] = {};
      mergePatch(target[key] as Body, value);
    } else if (!sameJson(target[key], value)) target[key] = value;
  }
}

async function writeDocument(collection: string, id: string, body: Body): Promise<{ created: boolean; doc: StoredDoc }> {
  const documentId = documentIdOf(collection, id);
  let handle = repo.handles[documentId] as DocHandle<StoredDoc> | undefined;
  if (!handle?.isReady()) {
    const stored = repo.storageSubsystem ? await repo.storageSubsystem.loadDoc(documentId) : null;
    if (stored || handle) handle = await findHandle(collection, id);
  }
  if (handle?.isReady()) {
    const existed = visible(handle.doc(), collection);
    handle.change((d) => {
      d._collection = collection;
      d._id = id;
      replaceFields(d, body);
    });
    return { created: !existed, doc: handle.doc() };
  }
  nextDocumentId = binaryId(collection, id);
  const initial: StoredDoc = { ...Object.fromEntries(Object.entries(body).filter(([k]) => !k.startsWith("_"))), _collection: collection, _id: id };
  const created = await repo.create2<StoredDoc>(initial);
  return { created: true, doc: created.doc() };
}

// ---- HTTP API -----------------------------------------------------------------------------------

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

function error(status: number, message: string): Response {
  return json({ error: message }, status);
}

async function readBody(request: Request): Promise<Body | Response> {
  let parsed: unknown;
  try {
    parsed = await request.json();
  } catch {
    return error(400, "body must be JSON");
  }
  return isObject(parsed) ? parsed : error(400, "body must be a JSON object");
}

function list(collection: string, limit: number, after: string | undefined): Response {
  const docs: { id: string; doc: StoredDoc }[] = [];
  for (const handle of Object.values(repo.handles) as DocHandle<StoredDoc>[]) {
    if (!handle.isReady()) continue;
    const doc = handle.doc();
    if (visible(doc, collection) && typeof doc._id === "string") docs.push({ id: doc._id, doc });
  }
  docs.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const start = after === undefined ? 0 : docs.findIndex((d) => d.id > after);
  const page = start < 0 ? [] : docs.slice(start, start + limit);
  return json({
    collection,
    count: page.length,
    total: docs.length,
    documents: page.map((d) => shown(d.doc, d.id)),
    next_after: page.length === limit ? (page.at(-1)?.id ?? null) : null,
  });
}

function metrics(): Response {
  let ready = 0;
  for (const handle of Object.values(repo.handles)) if (handle.isReady()) ready++;
  const lines = [
    "# TYPE amrepo_ws_bytes_sent_total counter",
    `amrepo_ws_bytes_sent_total ${bytesSent}`,
    "# TYPE amrepo_ws_bytes_received_total counter",
    `amrepo_ws_bytes_received_total ${bytesReceived}`,
    "# TYPE amrepo_ws_messages_sent_total counter",
    `amrepo_ws_messages_sent_total ${messagesSent}`,
    "# TYPE amrepo_ws_messages_received_total counter",
    `amrepo_ws_messages_received_total ${messagesReceived}`,
    "# TYPE amrepo_uncaught_errors_total counter",
    `amrepo_uncaught_errors_total ${uncaughtErrors}`,
    "# TYPE amrepo_handles_ready gauge",
    `amrepo_handles_ready ${ready}`,
    "# TYPE amrepo_peers gauge",
    `amrepo_peers ${repo.peers.length}`,
  ];
  return new Response(`${lines.join("\n")}\n`, { headers: { "content-type": "text/plain; version=0.0.4" } });
}

async function route(request: Request): Promise<Response> {
  const url = new URL(request.url);
  const parts = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  if (url.pathname === "/api/v1/ready" || url.pathname === "/api/v1/health") return json({ status: "ready", node_id: NAME });
  if (url.pathname === "/metrics") return metrics();
  if (url.pathname === "/api/v1/peers") return json({ peers: repo.peers });
  if (parts[0] !== "api" || parts[1] !== "v1" || parts[2] !== "documents") return error(404, `no route for ${request.method} ${url.pathname}`);
  const collection = parts[3];
  const id = parts[4];
  if (collection === undefined || !NAME_PATTERN.test(collection) || parts.length > 5) return error(400, "bad collection");
  if (id === undefined) {
    if (request.method !== "GET") return error(405, "method not allowed");
    const limit = Math.min(1000, Math.max(1, Number(url.searchParams.get("limit") ?? 100) || 100));
    return list(collection, limit, url.searchParams.get("after") ?? undefined);
  }
  if (!NAME_PATTERN.test(id)) return error(400, "bad id");
  switch (request.method) {
    case "GET": {
      const handle = await findHandle(collection, id);
      const doc = handle?.doc();
      if (!visible(doc, collection)) return error(404, `document not found: ${collection}/${id}`);
      return json({ collection, id, document: shown(doc, id) });
    }
    case "PUT": {
      const body = await readBody(request);
      if (body instanceof Response) return body;
      const { created, doc } = await writeDocument(collection, id, body);
      return json({ collection, id, document: shown(doc, id) }, created ? 201 : 200);
    }
    case "PATCH": {
      const patch = await readBody(request);
      if (patch instanceof Response) return patch;
      const handle = await findHandle(collection, id);
      if (!handle || !visible(handle.doc(), collection)) return error(404, `document not found: ${collection}/${id}`);
      handle.change((d) => mergePatch(d, patch));
      return json({ collection, id, document: shown(handle.doc(), id) });
    }
    case "DELETE": {
      const handle = await findHandle(collection, id);
      if (!handle || !visible(handle.doc(), collection)) return error(404, `document not found: ${collection}/${id}`);
      handle.change((d) => {
        for (const key of Object.keys(d)) if (!key.startsWith("_")) delete d[key];
        d._deleted = true;
      });
      return new Response(null, { status: 204 });
    }
    default:
      return error(405, "method not allowed");
  }
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: HTTP_PORT,
  async fetch(request) {
    try {
      return await route(request);
    } catch (err) {
      return error(500, err instanceof Error ? err.message : String(err));
    }
  },
});
log(`automerge-repo peer ${NAME} http=${server.port} ws=${WS_PORT} connect=${CONNECT.join(",") || "-"} data=${DATA_DIR}`);

// An exception escaping an event handler (say, a WebSocket error the client adapter rethrows) would
// end the process and with it the run; it is logged and counted instead (amrepo_uncaught_errors_total;
// the bench reports these log lines), and the peer goes on, the adapter reconnecting.
process.on("uncaughtException", (err) => {
  uncaughtErrors++;
  console.error(`uncaught exception #${uncaughtErrors}: ${Bun.inspect(err).slice(0, 4000)}`);
  if (err instanceof Error && err.stack) console.error(err.stack);
});
process.on("unhandledRejection", (err) => {
  uncaughtErrors++;
  console.error(`unhandled rejection #${uncaughtErrors}: ${Bun.inspect(err).slice(0, 4000)}`);
});

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log(`${signal}: shutting down`);
  const timer = setTimeout(() => process.exit(0), 5000);
  try {
    await server.stop(true);
    await repo.shutdown();
    await new Promise<void>((resolve) => wss.close(() => resolve()));
  } finally {
    clearTimeout(timer);
    process.exit(0);
  }
}
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));
