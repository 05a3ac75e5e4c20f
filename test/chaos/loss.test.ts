/**
 * Lossy links: three real node processes in network namespaces, with nftables dropping, silently on
 * input, a random PEAT_CHAOS_LOSS_PERCENT (default 20) of the packets every node receives from every
 * other node (so each direction of each link loses that share). All three write a few hundred documents at once, some
 * larger than the transport's 64 KiB chunk, in a FullHistory and a LatestOnly collection, then
 * patch and delete some. Sync must still complete (equal state everywhere, within a deadline that
 * is recorded), and no peer may be dropped for good: at the end every pair is connected, over one
 * connection. Disconnects seen on the way are counted and reported. Then one node restarts while
 * the others write, so connections are also set up (signalling, ICE, DTLS, SCTP) under loss, and it
 * must rejoin and catch up.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { stopAllNodes, waitFor } from "../harness/node-process.ts";
import {
  type Json,
  type Mesh,
  type MeshMember,
  allConnected,
  assertOneLinkPerPeer,
  destroyAllNetworks,
  envInt,
  linkEvents,
  mustWrite,
  netnsSkipReason,
  nftSkipReason,
  printFigures,
  read,
  restartMember,
  startMesh,
  syncState,
  waitConverged,
} from "./lib/netfault.ts";

const skip = netnsSkipReason() ?? nftSkipReason();
const LOSS_PERCENT = envInt("PEAT_CHAOS_LOSS_PERCENT", 20);
/** Documents written in all, spread over the three nodes. */
const DOCS = envInt("PEAT_CHAOS_LOSS_DOCS", 300);
/** Every this-many-th document is large. */
const LARGE_EVERY = envInt("PEAT_CHAOS_LOSS_LARGE_EVERY", 10);
const LARGE_KIB = envInt("PEAT_CHAOS_LOSS_LARGE_KIB", 96);
/** Generous: the outcome (complete sync) is strict, the time it takes is recorded. */
const CONVERGE_DEADLINE_MS = envInt("PEAT_CHAOS_LOSS_DEADLINE_SECS", 150) * 1000;

let mesh: Mesh | undefined;
const figures: Record<string, unknown> = { loss_percent: LOSS_PERCENT, docs: DOCS, large_kib: LARGE_KIB };

afterAll(async () => {
  printFigures("loss", figures);
  const logDir = process.env.PEAT_CHAOS_LOG_DIR;
  if (logDir && mesh) for (const m of mesh.members) await Bun.write(`${logDir}/loss-${m.name}.log`, m.node.lines.join("\n"));
  await mesh?.stop().catch(() => {});
  await stopAllNodes();
  await destroyAllNetworks();
});

/** Incompressible text of about `kib` KiB, so the document really is that large on the wire. */
function bulk(kib: number): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(Math.ceil((kib * 1024 * 3) / 4)))).toString("base64");
}

/** Runs `work` over `items` with at most `limit` in flight. */
async function pool<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) await work(items[next++] as T);
    }),
  );
}

describe.skipIf(skip !== undefined)(`lossy links in network namespaces${skip ? ` (skipped: ${skip})` : ""}`, () => {
  test(`${LOSS_PERCENT}% random loss on every link: ${DOCS} documents written on all nodes sync completely, no peer lost for good`, async () => {
    mesh = await startMesh(["alpha", "bravo", "charlie"]);
    const m = mesh;
    const nodes = m.members.map((x) => x.node);
    const logFrom = new Map(m.members.map((x) => [x.name, x.node.lines.length]));
    for (const x of m.members) m.faults.loss(x.host.name, m.members.filter((o) => o !== x).map((o) => o.host.address), LOSS_PERCENT);

    // The workload: each node writes its share, a tenth of it large, then patches and deletes some.
    const expected = new Map<string, Json | undefined>();
    const plan = new Map<MeshMember, { path: string; body: Json }[]>(m.members.map((x) => [x, []]));
    let bytes = 0;
    let large = 0;
    for (let i = 0; i < DOCS; i++) {
      const owner = m.members[i % m.members.length] as MeshMember;
      const collection = i % 3 === 0 ? "tracks" : "notes";
      const body: Json = { by: owner.name, i };
      if (i % LARGE_EVERY === 0) {
        body.payload = bulk(LARGE_KIB);
        large++;
      }
      bytes += JSON.stringify(body).length;
      const path = `${collection}/loss-${i}`;
      plan.get(owner)?.push({ path, body });
      expected.set(path, body);
    }
    const writeStart = performance.now();
    await Promise.all(
      m.members.map(async (x) => {
        const mine = plan.get(x) as { path: string; body: Json }[];
        await pool(mine, 4, ({ path, body }) => mustWrite(x.node, "PUT", path, body));
        // A tenth patched by another node than the writer (so the patch meets the synced copy)...
        for (const [k, { path }] of mine.entries()) {
          if (k % 10 !== 1) continue;
          const other = m.members[(m.members.indexOf(x) + 1) % m.members.length] as MeshMember;
          // The patching node may not hold the document yet: that wait is part of the workload.
          await waitFor(async () => (await read(other.node, path)) !== undefined, CONVERGE_DEADLINE_MS, `${path} on ${other.name}`, 100);
          await mustWrite(other.node, "PATCH", path, { patched_by: other.name });
          expected.set(path, { ...(expected.get(path) as Json), patched_by: other.name });
        }
        // ...and a twentieth deleted by its writer.
        for (const [k, { path }] of mine.entries()) {
          if (k % 20 !== 3) continue;
          await mustWrite(x.node, "DELETE", path);
          expected.set(path, undefined);
        }
      }),
    );
    const writeMs = Math.round(performance.now() - writeStart);

    const converged = await waitConverged(nodes, CONVERGE_DEADLINE_MS, `convergence under ${LOSS_PERCENT}% loss`);
    // No peer is dropped for good: whatever broke on the way, every pair is connected again, still under loss.
    const reconnect = await waitFor(
      async () => ((await allConnected(m.members)) ? { at: performance.now() } : undefined),
      60_000,
      "every pair connected under loss",
      200,
    );
    // Links that broke during the workload (each counted on both ends).
    const disconnects: Record<string, number> = {};
    const reasons = new Set<string>();
    let total = 0;
    for (const a of m.members) {
      for (const b of m.members) {
        if (a === b) continue;
        const e = linkEvents(a.node, b.name, logFrom.get(a.name));
        total += e.disconnects;
        if (e.disconnects > 0) disconnects[`${a.name}->${b.name}`] = e.disconnects;
        for (const r of e.reasons) reasons.add(r);
      }
    }

    // Connections are set up under loss too: one node restarts (SIGTERM) while the others write,
    // and it must reconnect (signalling, ICE, DTLS and SCTP all through the lossy links) and catch up.
    const bounced = m.members[2] as MeshMember;
    const stayed = m.members.filter((x) => x !== bounced);
    const stayedFrom = new Map(stayed.map((x) => [x.name, x.node.lines.length]));
    await restartMember(bounced, async () => {
      for (let i = 0; i < 30; i++) {
        const path = `notes/loss-down-${i}`;
        const body: Json = { i, while_down: true };
        await mustWrite((stayed[i % stayed.length] as MeshMember).node, "PUT", path, body);
        expected.set(path, body);
      }
    });
    const restartedAt = performance.now();
    await waitFor(async () => (await allConnected(m.members)) || undefined, 60_000, "the restarted node reconnected under loss", 100);
    const rejoinMs = Math.round(performance.now() - restartedAt);
    const caughtUp = await waitConverged(
      m.members.map((x) => x.node),
      CONVERGE_DEADLINE_MS,
      "the restarted node caught up under loss",
    );
    // Each node that stayed saw the restarted one go; anything else that dropped meanwhile is reported.
    const restartDisconnects: Record<string, number> = {};
    for (const a of m.members) {
      for (const b of m.members) {
        if (a === b) continue;
        const e = linkEvents(a.node, b.name, a === bounced ? 0 : stayedFrom.get(a.name));
        if (e.disconnects > 0) restartDisconnects[`${a.name}->${b.name}`] = e.disconnects;
      }
    }
    const dropped = m.faults.healAll();

    const liveDocs = [...expected.values()].filter((v) => v !== undefined).length;
    Object.assign(figures, {
      large_docs: large,
      bytes_written: bytes,
      documents_synced: liveDocs,
      deleted: expected.size - liveDocs,
      write_ms: writeMs,
      converge_after_writes_ms: converged.ms,
      total_ms: writeMs + converged.ms,
      all_connected_after_ms: Math.round(reconnect.at - writeStart),
      disconnects_total: total,
      disconnects,
      disconnect_reasons: [...reasons].sort(),
      restart_rejoin_ms: rejoinMs,
      restart_catch_up_ms: rejoinMs + caughtUp.ms,
      restart_disconnects: restartDisconnects,
      packets_dropped: dropped,
    });

    for (const x of stayed) expect(restartDisconnects[`${x.name}->${bounced.name}`] ?? 0).toBeGreaterThanOrEqual(1);
    expect(assertOneLinkPerPeer(m.members)).toBeUndefined();
    expect(dropped).toBeGreaterThan(0);
    // The state everyone agrees on is the complete one: every live document and every delete.
    const state = await syncState(m.members[0]?.node as (typeof nodes)[number]);
    const held = new Set(state.collections.flatMap((c) => c.documents.map((d) => `${c.name}/${d[0]}`)));
    const tombs = new Set(state.collections.flatMap((c) => c.tombstones.map((t) => `${c.name}/${t[0]}`)));
    for (const [path, body] of expected) {
      if (body === undefined) expect({ path, deleted: tombs.has(path) && !held.has(path) }).toEqual({ path, deleted: true });
      else expect({ path, held: held.has(path) }).toEqual({ path, held: true });
    }
    // And the content arrived whole, large documents included, on every node.
    for (const [k, [path, body]] of [...expected.entries()].entries()) {
      if (body === undefined || (k % 7 !== 0 && body.payload === undefined)) continue;
      for (const x of m.members) expect({ node: x.name, path, doc: await read(x.node, path) }).toEqual({ node: x.name, path, doc: { ...body, _id: path.split("/")[1] } });
    }
  }, CONVERGE_DEADLINE_MS + 120_000);
});
