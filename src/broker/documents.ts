/**
 * The document API: read, write, patch, delete. Writes are acknowledged only after the store has
 * committed them, so a 2xx means the document survives a crash.
 */
import type { Elysia } from "elysia";
import { BadRequestError, NotFoundError, PayloadTooLargeError } from "../errors.ts";
import { decodeUtf8, readCapped } from "../read-capped.ts";
import type { DocumentStore, JsonObject, JsonValue } from "../store/index.ts";
import { jsonResponse } from "./errors.ts";
import type { RouteGroup } from "./server.ts";

export const NAME_PATTERN = /^[A-Za-z0-9_.-]{1,128}$/;
export const DEFAULT_PAGE_SIZE = 100;
export const MAX_PAGE_SIZE = 1000;
/** Deeper JSON is refused: it has no use in a document and recursion over it could exhaust the stack. */
export const MAX_NESTING_DEPTH = 64;

export interface DocumentRoutesOptions {
  store: DocumentStore;
  maxBodyBytes: number;
}

export function validateName(kind: "collection" | "id", value: string): string {
  if (!NAME_PATTERN.test(value)) {
    throw new BadRequestError(`invalid ${kind} '${value.slice(0, 140)}': must match [A-Za-z0-9_.-]{1,128}`);
  }
  return value;
}

function depthWithin(value: JsonValue, limit: number): boolean {
  // Iterative, so that hostile nesting cannot overflow the stack while being measured.
  const stack: [JsonValue, number][] = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop() as [JsonValue, number];
    if (v === null || typeof v !== "object") continue;
    if (depth > limit) return false;
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, depth + 1]);
  }
  return true;
}

async function readDeclared(request: Request): Promise<Uint8Array> {
  try {
    return new Uint8Array(await request.arrayBuffer());
  } catch (err) {
    // The client hung up mid-body: its request, not a fault of the node.
    throw new BadRequestError(`body could not be read: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** Reads and checks a JSON-object body under the size cap. */
async function readBody(request: Request, maxBytes: number): Promise<JsonObject> {
  // A declared length is checked against the cap before routing, and HTTP framing holds the body
  // to it: Bun's whole-body read is then much cheaper than pulling the stream chunk by chunk.
  const declared = request.headers.get("content-length");
  const bytes =
    declared !== null && /^[0-9]{1,12}$/.test(declared) && Number(declared) <= maxBytes
      ? await readDeclared(request)
      : await readCapped(request.body, maxBytes, () => new PayloadTooLargeError(`request body exceeds ${maxBytes} bytes`));
  if (bytes.byteLength === 0) throw new BadRequestError("request body required: a JSON object");
  const text = decodeUtf8(bytes);
  if (text === undefined) throw new BadRequestError("request body is not valid UTF-8");
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new BadRequestError(`malformed JSON: ${err instanceof Error ? err.message : "parse error"}`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new BadRequestError("request body must be a JSON object");
  }
  if (!depthWithin(parsed as JsonValue, MAX_NESTING_DEPTH)) {
    throw new BadRequestError(`JSON nested deeper than ${MAX_NESTING_DEPTH} levels`);
  }
  return parsed as JsonObject;
}

/** `_id` is the document's key, shown on read; a body may repeat it but not contradict the path. */
function withoutId(body: JsonObject, id: string | undefined): JsonObject {
  if (!("_id" in body)) return body;
  if (id !== undefined && body._id !== id) {
    throw new BadRequestError(`body _id '${String(body._id)}' does not match the path id '${id}'`);
  }
  const { _id, ...rest } = body;
  return rest;
}

function shown(document: JsonObject, id: string): JsonObject {
  return { ...document, _id: id };
}

function parseLimit(raw: string | undefined): number {
  if (raw === undefined) return DEFAULT_PAGE_SIZE;
  if (!/^[0-9]{1,7}$/.test(raw)) throw new BadRequestError(`invalid limit '${raw.slice(0, 20)}': an integer from 1 to ${MAX_PAGE_SIZE}`);
  const limit = Number(raw);
  if (limit < 1 || limit > MAX_PAGE_SIZE) throw new BadRequestError(`invalid limit ${limit}: an integer from 1 to ${MAX_PAGE_SIZE}`);
  return limit;
}

/** A server-chosen id: time-ordered (so POSTed documents list in creation order) and unique. */
export function newDocumentId(): string {
  return Bun.randomUUIDv7();
}

export function documentRoutes(options: DocumentRoutesOptions): RouteGroup {
  const { store, maxBodyBytes } = options;
  return (app: Elysia) =>
    app
      .get("/api/v1/documents/:collection", ({ params, query }) => {
        const collection = validateName("collection", params.collection);
        const limit = parseLimit(query.limit);
        const after = query.after === undefined ? undefined : validateName("id", query.after);
        const page = store.list(collection, { limit, ...(after !== undefined ? { after } : {}) });
        return {
          collection,
          count: page.length,
          total: store.count(collection),
          documents: page.map((d) => shown(d.document, d.id)),
          next_after: page.length === limit ? (page.at(-1)?.id ?? null) : null,
        };
      })
      .get("/api/v1/documents/:collection/:id", ({ params }) => {
        const collection = validateName("collection", params.collection);
        const id = validateName("id", params.id);
        const document = store.get(collection, id);
        if (!document) throw new NotFoundError(`document not found: ${collection}/${id}`);
        return { collection, id, document: shown(document, id) };
      })
      .put(
        "/api/v1/documents/:collection/:id",
        async ({ params, request }) => {
          const collection = validateName("collection", params.collection);
          const id = validateName("id", params.id);
          const body = withoutId(await readBody(request, maxBodyBytes), id);
          const { created, document } = store.put(collection, id, body);
          return jsonResponse({ collection, id, document: shown(document, id) }, created ? 201 : 200);
        },
        { parse: "none" },
      )
      .patch(
        "/api/v1/documents/:collection/:id",
        async ({ params, request }) => {
          const collection = validateName("collection", params.collection);
          const id = validateName("id", params.id);
          const patch = withoutId(await readBody(request, maxBodyBytes), id);
          const document = store.patch(collection, id, patch);
          return { collection, id, document: shown(document, id) };
        },
        { parse: "none" },
      )
      .post(
        "/api/v1/documents/:collection",
        async ({ params, request }) => {
          const collection = validateName("collection", params.collection);
          const body = withoutId(await readBody(request, maxBodyBytes), undefined);
          const id = newDocumentId();
          const { document } = store.put(collection, id, body);
          return jsonResponse({ collection, id, document: shown(document, id) }, 201, {
            location: `/api/v1/documents/${collection}/${id}`,
          });
        },
        { parse: "none" },
      )
      .delete("/api/v1/documents/:collection/:id", ({ params }) => {
        const collection = validateName("collection", params.collection);
        const id = validateName("id", params.id);
        if (!store.delete(collection, id)) throw new NotFoundError(`document not found: ${collection}/${id}`);
        return new Response(null, { status: 204 });
      }) as unknown as Elysia;
}
