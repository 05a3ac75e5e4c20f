/**
 * Crash: three real node processes on loopback (alpha, bravo, charlie; full mesh through static
 * peers). Writers drive a stream of PUT, PATCH and DELETE through alpha's broker (and a few through
 * bravo's); at a random moment within that stream alpha is SIGKILLed, PEAT_CHAOS_CRASHES times
 * (default 20). After each kill:
 *  - alpha's SQLite file, opened read-only before anything touches it, passes integrity_check and
 *    holds every write the broker acknowledged (2xx) with its acknowledged value; a deleted
 *    document has no row and a tombstone. A write in flight at the kill (no response) is either
 *    its old or its new value, never anything else;
 *  - alpha restarts on the same data dir and identity, becomes ready, and serves exactly those
 *    values;
 *  - all three reach the same `state_hash` (the restart-to-converged time is recorded), and every
 *    node holds exactly the model: acknowledged values, deleted documents still deleted.
 * After the last crash alpha is stopped and its file passes integrity_check once more.
 */
import { Database } from "bun:sqlite";
import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import { type NodeProcess, stopAllNodes, waitFor } from "../harness/node-process.ts";
import {
  type Json,
  Mesh,
  envInt,
  listAll,
  mergePatch,
  msSince,
  peers,
  percentile,
  printFigures,
  sameJson,
  divergence,
  duplicateConnects,
  waitConverged,
  orderedSecret,
} from "./lib/crash.ts";

const CRASHES = envInt("PEAT_CHAOS_CRASHES", 20, 1);
const NAMES = ["alpha", "bravo", "charlie"];
const COLLECTIONS = ["notes", "tracks"]; // FullHistory and LatestOnly
const DOCS_PER_COLLECTION = { alpha: 12, bravo: 4 };
const WRITERS = { alpha: 3, bravo: 1 };
/** Writes go on for a random time in this window before the kill. */
const KILL_AFTER_MS: [number, number] = [100, 1500];
/** Generous deadlines on waiting (loaded 2-core CI); strict checks on outcomes. */
const READY_TIMEOUT_MS = 60_000;
const CONVERGE_TIMEOUT_MS = 60_000;

afterAll(stopAllNodes);

type Value = Json | null; // null: absent (never written, or deleted)

interface DocModel {
  collection: string;
  id: string;
  owner: "alpha" | "bravo";
  acked: Value;
  /** Set while a write without a response is unresolved: the old and the new value. */
  candidates: Value[] | undefined;
  busy: boolean;
  /** It had a value at some point (so a missing row must have a tombstone). */
  everLive: boolean;
}

const keyOf = (d: { collection: string; id: string }) => `${d.collection}/${d.id}`;
const show = (v: unknown) => JSON.stringify(v);

function buildModel(): DocModel[] {
  const docs: DocModel[] = [];
  for (const owner of ["alpha", "bravo"] as const) {
    for (const collection of COLLECTIONS) {
      for (let i = 0; i < DOCS_PER_COLLECTION[owner]; i++) {
        docs.push({ collection, id: `${owner[0]}${i}`, owner, acked: null, candidates: undefined, busy: false, everLive: false });
      }
    }
  }
  return docs;
}

interface Counts {
  acked: { alpha: number; bravo: number };
  inFlightAtKill: number;
  inFlightLanded: number;
  unexpected: string[];
}

let seq = 0;

/** One write on a document that is not busy; updates the model from the response. */
async function writeOnce(node: NodeProcess, doc: DocModel, counts: Counts): Promise<void> {
  seq++;
  const live = doc.acked !== null;
  const r = Math.random();
  let method: "PUT" | "PATCH" | "DELETE";
  let body: Json | undefined;
  let next: Value;
  if (!live || r < 0.35) {
    method = "PUT";
    body = { seq, by: doc.owner, text: `v${seq}`, nested: { n: seq, list: [seq, "x", true, null] } };
    next = body;
  } else if (r < 0.8) {
    method = "PATCH";
    body = seq % 3 === 0 ? { text: null, patched: seq } : { patched: seq, nested: { n: -seq } };
    next = mergePatch(doc.acked, body) as Json;
  } else {
    method = "DELETE";
    next = null;
  }
  doc.busy = true;
  const old = doc.acked;
  let res: Response;
  try {
    res = await node.fetch(`/api/v1/documents/${keyOf(doc)}`, {
      method,
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    await res.arrayBuffer();
  } catch {
    // No response: the write may or may not have happened.
    doc.candidates = [old, next];
    counts.inFlightAtKill++;
    return;
  } finally {
    doc.busy = false;
  }
  if (res.status >= 200 && res.status < 300) {
    doc.acked = next;
    if (next !== null) doc.everLive = true;
    counts.acked[doc.owner]++;
  } else {
    counts.unexpected.push(`${method} ${keyOf(doc)} on ${doc.owner}: ${res.status}`);
  }
}

/** Writers on `owner`'s broker until `stop()` is true; each doc has at most one write in flight. */
function writers(node: NodeProcess, owner: "alpha" | "bravo", docs: DocModel[], n: number, stop: () => boolean, counts: Counts): Promise<void>[] {
  const mine = docs.filter((d) => d.owner === owner);
  return Array.from({ length: n }, async () => {
    while (!stop()) {
      const free = mine.filter((d) => !d.busy && d.candidates === undefined);
      const doc = free[Math.floor(Math.random() * free.length)];
      if (!doc) {
        await Bun.sleep(1);
        continue;
      }
      await writeOnce(node, doc, counts);
    }
  });
}

interface FileCheck {
  integrity: string;
  lost: string[];
  landed: number;
}

/** Reads alpha's store file directly (read-only) and checks it against the model; resolves candidates. */
function checkFile(dataDir: string, docs: DocModel[]): FileCheck {
  const db = new Database(join(dataDir, "automerge", "peat.sqlite"), { readonly: true });
  try {
    const integrity = (db.query("PRAGMA integrity_check").all() as { integrity_check: string }[]).map((r) => r.integrity_check).join("; ");
    const getDoc = db.query("SELECT json FROM docs WHERE collection = ? AND id = ?");
    const getTomb = db.query("SELECT hlc FROM tombstones WHERE collection = ? AND id = ?");
    const lost: string[] = [];
    let landed = 0;
    for (const doc of docs.filter((d) => d.owner === "alpha")) {
      const row = getDoc.get(doc.collection, doc.id) as { json: string } | null;
      const actual: Value = row ? (JSON.parse(row.json) as Json) : null;
      const allowed = doc.candidates ?? [doc.acked];
      const match = allowed.findIndex((v) => sameJson(v, actual));
      if (match < 0) {
        lost.push(`${keyOf(doc)}: file has ${show(actual)}, acknowledged ${show(doc.acked)}${doc.candidates ? ` or in flight ${show(doc.candidates[1])}` : ""}`);
        continue;
      }
      if (doc.candidates && match === 1 && !sameJson(doc.candidates[0], doc.candidates[1])) landed++;
      // A document that was live once and has no row now was deleted: its delete marker must be there.
      if (actual === null && doc.everLive && !getTomb.get(doc.collection, doc.id)) lost.push(`${keyOf(doc)}: deleted but no tombstone`);
      doc.acked = actual;
      doc.candidates = undefined;
      if (actual !== null) doc.everLive = true;
    }
    return { integrity, lost, landed };
  } finally {
    db.close();
  }
}

/** Every node holds exactly the model (B's documents included); returns the differences. */
async function compareWithModel(node: NodeProcess, docs: DocModel[], only?: "alpha"): Promise<string[]> {
  const diffs: string[] = [];
  for (const collection of COLLECTIONS) {
    const held = await listAll(node, collection);
    for (const doc of docs.filter((d) => d.collection === collection && (only === undefined || d.owner === only))) {
      const actual = held.get(doc.id) ?? null;
      if (!sameJson(actual, doc.acked)) diffs.push(`${node.env.HOSTNAME} ${keyOf(doc)}: has ${show(actual)}, expected ${show(doc.acked)}`);
    }
  }
  return diffs;
}

/**
 * A write to bravo that got no response (bravo is never killed, so this is rare: a timeout under
 * load) is resolved from what bravo holds: its old or its new value, nothing else.
 */
async function resolveUnanswered(bravo: NodeProcess, docs: DocModel[]): Promise<string[]> {
  const wrong: string[] = [];
  for (const doc of docs.filter((d) => d.owner === "bravo" && d.candidates)) {
    const res = await bravo.fetch(`/api/v1/documents/${keyOf(doc)}`);
    let actual: Value = null;
    if (res.status === 200) {
      const { _id, ...rest } = ((await res.json()) as { document: Json }).document;
      actual = rest;
    } else await res.arrayBuffer();
    if (!(doc.candidates as Value[]).some((v) => sameJson(v, actual))) wrong.push(`${keyOf(doc)} on bravo: ${show(actual)}, expected one of ${show(doc.candidates)}`);
    doc.acked = actual;
    doc.candidates = undefined;
    if (actual !== null) doc.everLive = true;
  }
  return wrong;
}

async function fullMesh(mesh: Mesh, timeoutMs: number): Promise<void> {
  await waitFor(
    async () => {
      for (const name of NAMES) {
        const ps = await peers(mesh.node(name));
        const connected = ps.filter((p) => p.connected).map((p) => p.id).sort();
        if (connected.join() !== NAMES.filter((n) => n !== name).join()) return false;
      }
      return true;
    },
    timeoutMs,
    "a full mesh",
    50,
  );
}

test(
  `SIGKILL of a node in the middle of a write stream, ${CRASHES} times: no acknowledged write is lost, nothing is corrupted, the mesh re-converges`,
  async () => {
    const t0 = performance.now();
    const mesh = await Mesh.start({ names: NAMES, secret: orderedSecret(NAMES) });
    await fullMesh(mesh, READY_TIMEOUT_MS);
    const docs = buildModel();
    const counts: Counts = { acked: { alpha: 0, bravo: 0 }, inFlightAtKill: 0, inFlightLanded: 0, unexpected: [] };
    const readyMs: number[] = [];
    const convergedMs: number[] = [];
    const lost: string[] = [];
    const integrity: string[] = [];
    let writesWhileDown = 0;
    const alpha = mesh.get("alpha");

    for (let crash = 1; crash <= CRASHES; crash++) {
      // A stream of writes, killed at a random moment within it.
      let stopped = false;
      const running = [
        ...writers(alpha.node, "alpha", docs, WRITERS.alpha, () => stopped, counts),
        ...writers(mesh.node("bravo"), "bravo", docs, WRITERS.bravo, () => stopped, counts),
      ];
      const [lo, hi] = KILL_AFTER_MS;
      await Bun.sleep(lo + Math.random() * (hi - lo)); // the fault's timing, not a synchronisation
      const victim = alpha.node;
      stopped = true; // no new write starts; those under way are cut by the kill
      await victim.kill(); // SIGKILL to its pid
      expect(victim.proc.signalCode).toBe("SIGKILL");
      await Promise.all(running);
      expect(counts.unexpected).toEqual([]);

      // Alpha's file as the kill left it.
      const file = checkFile(alpha.dataDir, docs);
      integrity.push(file.integrity);
      counts.inFlightLanded += file.landed;
      lost.push(...file.lost.map((l) => `crash ${crash}: ${l}`));
      expect(file.integrity).toBe("ok");
      expect(file.lost).toEqual([]);

      // While alpha is down, bravo takes a few writes alpha must catch up on.
      for (const doc of docs.filter((d) => d.owner === "bravo" && !d.candidates).slice(0, 3)) {
        await writeOnce(mesh.node("bravo"), doc, counts);
        writesWhileDown++;
      }
      expect(counts.unexpected).toEqual([]);

      // Restart on the same data dir, identity and ports.
      const restartedAt = performance.now();
      const node = await mesh.launch(alpha, false);
      await node.waitReady(READY_TIMEOUT_MS);
      readyMs.push(msSince(restartedAt));
      const served = await compareWithModel(node, docs, "alpha");
      lost.push(...served.map((l) => `crash ${crash}, after restart: ${l}`));
      expect(served).toEqual([]);

      await waitConverged(mesh.nodes(), CONVERGE_TIMEOUT_MS, `alpha to re-converge with bravo and charlie after crash ${crash}`).catch(
        async (err) => {
          throw new Error(`${(err as Error).message}\n${await divergence(mesh.nodes())}`);
        },
      );
      convergedMs.push(msSince(restartedAt));
      lost.push(...(await resolveUnanswered(mesh.node("bravo"), docs)).map((l) => `crash ${crash}: ${l}`));
      for (const n of mesh.nodes()) expect(await compareWithModel(n, docs)).toEqual([]);
    }

    // Every restart reconnected each pair once: no log shows a peer connected twice without a
    // disconnect between.
    const duplicates = [...mesh.members.values()].flatMap((m) =>
      m.incarnations.flatMap((n) => duplicateConnects(n).map((d) => `${m.name} (pid ${n.pid}): ${d.peer} at line ${d.line}`)),
    );
    expect(duplicates).toEqual([]);

    // The file once more, after a clean stop.
    expect(await alpha.node.stop()).toBe(0);
    const last = checkFile(alpha.dataDir, docs);
    expect(last.integrity).toBe("ok");
    expect(last.lost).toEqual([]);

    const figures = {
      crashes: CRASHES,
      acknowledged_writes: counts.acked.alpha + counts.acked.bravo,
      acknowledged_on_alpha: counts.acked.alpha,
      acknowledged_on_bravo: counts.acked.bravo,
      acknowledged_on_bravo_while_alpha_down: writesWhileDown,
      in_flight_at_kill: counts.inFlightAtKill,
      in_flight_that_landed: counts.inFlightLanded,
      lost_acknowledged_writes: lost.length,
      integrity_check_failures: integrity.filter((r) => r !== "ok").length,
      final_integrity_check: last.integrity,
      restart_to_ready_ms: { p50: percentile(readyMs, 50), max: Math.max(...readyMs) },
      restart_to_converged_ms: { p50: percentile(convergedMs, 50), max: Math.max(...convergedMs) },
      wall_ms: msSince(t0),
    };
    printFigures("crash", figures);
    expect(lost).toEqual([]);
    expect(counts.acked.alpha).toBeGreaterThan(CRASHES);
  },
  120_000 + CRASHES * 30_000,
);
