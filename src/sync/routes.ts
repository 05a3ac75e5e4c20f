/**
 * `GET /api/v1/sync/state`: what this node holds, in the terms sync compares (each document's heads
 * hash, each tombstone's clock), plus one hash over all of it. Two nodes are converged exactly when
 * their `state_hash` values are equal; operators and the chaos suite use it to check that.
 */
import type { Elysia } from "elysia";
import { validateName } from "../broker/documents.ts";
import type { RouteGroup } from "../broker/server.ts";
import type { DocumentStore } from "../store/index.ts";

export interface CollectionState {
  name: string;
  /** [id, heads hash], by id. */
  documents: [string, string][];
  /** [id, hlc], by id. */
  tombstones: [string, string][];
}

export function syncState(store: DocumentStore, only?: string): { state_hash: string; collections: CollectionState[] } {
  const names = new Set(store.collections().map((c) => c.name));
  for (const t of store.tombstones()) names.add(t.collection);
  const collections = [...names]
    .filter((name) => only === undefined || name === only)
    .sort()
    .map((name) => ({
      name,
      documents: store.digest(name).map((row): [string, string] => [row.id, row.headsHash]),
      tombstones: store.tombstones(name).map((t): [string, string] => [t.id, t.hlc]),
    }));
  const hasher = new Bun.CryptoHasher("sha256");
  for (const c of collections) hasher.update(JSON.stringify(c));
  return { state_hash: hasher.digest("hex"), collections };
}

export function syncRoutes(store: DocumentStore): RouteGroup {
  return (app: Elysia) =>
    app.get("/api/v1/sync/state", ({ query }) =>
      syncState(store, query.collection === undefined ? undefined : validateName("collection", query.collection)),
    ) as unknown as Elysia;
}
