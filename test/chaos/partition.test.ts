/**
 * Partitions and heals: three real node processes, each in its own network namespace, peered by
 * their namespace addresses. nftables rules inside the namespaces cut links while every node keeps
 * writing, including concurrent writes to the same documents in FullHistory (`notes`) and
 * LatestOnly (`tracks`) collections. After the heal all three must reach the same sync state within
 * 10 s, the peers must be reconnected with one connection per pair, and the merged documents must
 * be what the CRDT (FullHistory) and last-writer-wins (LatestOnly, deletes) rules predict.
 *
 * Scenarios, each cut held for PEAT_CHAOS_PARTITION_SECS (default 30):
 *   1. isolate: the node with the smallest device id (the dialer of both its links) is cut off by
 *      rules in its own namespace (input and output: its own packets are refused locally, EPERM).
 *   2. split: the node with the largest device id (dialled by both others) is split from the other
 *      two by silent input drops on both sides of the split (nobody sees an error).
 *   3. one-way: everything from the smallest to the middle node is dropped silently, the other
 *      direction and the third node's links pass.
 *   4. blip: scenario 1's cut for only PEAT_CHAOS_BLIP_SECS (default 10), about where the data
 *      channel's retransmission timer has backed off furthest while the link may still survive:
 *      delivery stalls and must resume (or the link be redialled) within 10 s of the heal.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { stopAllNodes, waitFor } from "../harness/node-process.ts";
import {
  type Json,
  type Mesh,
  type MeshMember,
  allConnected,
  assertOneLinkPerPeer,
  clockAdvance,
  connectedTo,
  destroyAllNetworks,
  envInt,
  linkEvents,
  mustWrite,
  netnsSkipReason,
  nftSkipReason,
  printFigures,
  read,
  startMesh,
  syncState,
  waitConverged,
  write,
} from "./lib/netfault.ts";

const skip = netnsSkipReason() ?? nftSkipReason();
const PARTITION_SECS = envInt("PEAT_CHAOS_PARTITION_SECS", 30);
/** A cut shorter than the liveness timeout: links are not dropped, delivery stalls and resumes. */
const BLIP_SECS = envInt("PEAT_CHAOS_BLIP_SECS", 10);
const WRITE_INTERVAL_MS = envInt("PEAT_CHAOS_WRITE_INTERVAL_MS", 100);
/** The requirement: every node holds the same state within this long after the heal. */
const HEAL_CONVERGE_MS = 10_000;

let mesh: Mesh | undefined;
const figures: { partition_secs: number; blip_secs: number; write_interval_ms: number; scenarios: Record<string, unknown>[] } = {
  partition_secs: PARTITION_SECS,
  blip_secs: BLIP_SECS,
  write_interval_ms: WRITE_INTERVAL_MS,
  scenarios: [],
};

afterAll(async () => {
  printFigures("partition", figures);
  // For investigating a failure: PEAT_CHAOS_LOG_DIR keeps every node's log.
  const logDir = process.env.PEAT_CHAOS_LOG_DIR;
  if (logDir && mesh) for (const m of mesh.members) await Bun.write(`${logDir}/partition-${m.name}.log`, m.node.lines.join("\n"));
  await mesh?.stop().catch(() => {});
  await stopAllNodes();
  await destroyAllNetworks();
});

/**
 * Every node writes in a loop during the cut: its own FullHistory documents (created, some deleted
 * again), one field of a FullHistory document all nodes patch, its own LatestOnly document, and a
 * LatestOnly document all nodes overwrite. It remembers what each write left, so the merged result
 * can be checked exactly.
 */
class Writers {
  private running = true;
  private readonly loops: Promise<void>[];
  readonly ok: Record<string, number> = {};
  readonly failures: string[] = [];
  /** Last value each node patched into its own field of `notes/<p>-shared`. */
  readonly sharedField = new Map<string, number>();
  /** Last value each node put into `tracks/<p>-pos-<node>`. */
  readonly ownTrack = new Map<string, number>();
  /** Last body each node put into `tracks/<p>-shared` (LWW: the winner is one of these). */
  readonly sharedTrack = new Map<string, Json>();
  readonly live = new Map<string, Json>();
  readonly deleted = new Set<string>();

  constructor(members: MeshMember[], private readonly p: string) {
    this.loops = members.map((m) => this.loop(m));
  }

  private async loop(m: MeshMember): Promise<void> {
    this.ok[m.name] = 0;
    for (let i = 0; this.running; i++) {
      const p = this.p;
      let path: string;
      let status: number;
      let body: Json | undefined;
      // Ten steps: own FullHistory documents created (0, 5), one deleted (4) and one patched (9)
      // again; one field of the FullHistory document all patch (1, 6); own LatestOnly document
      // (2, 7); the LatestOnly document all overwrite (3, 8).
      switch (i % 10) {
        case 0:
        case 5:
          path = `notes/${p}-bg-${m.name}-${i}`;
          body = { by: m.name, i, text: `written by ${m.name} during the cut` };
          status = await write(m.node, "PUT", path, body);
          if (status === 201) this.live.set(path, body);
          break;
        case 1:
        case 6:
          path = `notes/${p}-shared`;
          status = await write(m.node, "PATCH", path, { [m.name]: i });
          if (status === 200) this.sharedField.set(m.name, i);
          break;
        case 2:
        case 7:
          path = `tracks/${p}-pos-${m.name}`;
          status = await write(m.node, "PUT", path, { i });
          if (status === 200 || status === 201) this.ownTrack.set(m.name, i);
          break;
        case 3:
        case 8:
          path = `tracks/${p}-shared`;
          body = { by: m.name, i };
          status = await write(m.node, "PUT", path, body);
          if (status === 200 || status === 201) this.sharedTrack.set(m.name, body);
          break;
        case 4:
          path = `notes/${p}-bg-${m.name}-${i - 4}`;
          status = await write(m.node, "DELETE", path);
          if (status === 204) {
            this.live.delete(path);
            this.deleted.add(path);
          }
          break;
        default:
          path = `notes/${p}-bg-${m.name}-${i - 4}`;
          status = await write(m.node, "PATCH", path, { edited: i });
          if (status === 200) this.live.set(path, { ...(this.live.get(path) as Json), edited: i });
      }
      if (status >= 200 && status < 300) this.ok[m.name] = (this.ok[m.name] ?? 0) + 1;
      else this.failures.push(`${m.name} ${path} -> ${status}`);
      // The write rate of the workload, not a synchronisation.
      await Bun.sleep(WRITE_INTERVAL_MS);
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }
}

interface Scenario {
  name: string;
  /** Document prefix, so each scenario starts from fresh documents. */
  p: string;
  /** Writers of the designed conflicts: x on one side of the cut, y on the other. */
  x: MeshMember;
  y: MeshMember;
  /** True when x's writes cannot reach y at all during the cut (no relay through a third node). */
  isolated: boolean;
  cut(m: Mesh): void;
  /** [observer, peer]: links that must be seen down during the cut. */
  severed: [MeshMember, MeshMember][];
  /** Links that must stay up throughout. */
  intact: [MeshMember, MeshMember][];
  /** How long the cut is held (default PEAT_CHAOS_PARTITION_SECS). */
  holdSecs?: number;
}

const others = (m: Mesh, me: MeshMember) => m.members.filter((o) => o !== me).map((o) => o.host.address);

/** The designed conflicts: what each side writes, and what the merge must give. */
async function seedConflicts(s: Scenario, seeder: MeshMember): Promise<void> {
  const { p } = s;
  const n = seeder.node;
  await mustWrite(n, "PUT", `notes/${p}-shared`, { title: "patched by all" });
  await mustWrite(n, "PUT", `notes/${p}-fields`, { title: "t" });
  await mustWrite(n, "PUT", `notes/${p}-same`, { v: "orig" });
  await mustWrite(n, "PUT", `notes/${p}-put`, { p: "orig", keep: 1 });
  await mustWrite(n, "PUT", `notes/${p}-del-newer`, { v: 0 });
  await mustWrite(n, "PUT", `notes/${p}-upd-newer`, { v: 0 });
  await mustWrite(n, "PUT", `tracks/${p}-lww-a`, { v: "orig" });
  await mustWrite(n, "PUT", `tracks/${p}-lww-b`, { v: "orig" });
  await mustWrite(n, "PUT", `tracks/${p}-del-newer`, { v: 0 });
  await mustWrite(n, "PUT", `tracks/${p}-upd-newer`, { v: 0 });
}

async function writeConflicts(s: Scenario): Promise<void> {
  const { p } = s;
  const x = s.x.node;
  const y = s.y.node;
  // Earlier writes...
  await mustWrite(x, "PATCH", `notes/${p}-fields`, { x: 1 });
  await mustWrite(y, "PATCH", `notes/${p}-fields`, { y: 2 });
  await mustWrite(x, "PATCH", `notes/${p}-same`, { v: "X" });
  await mustWrite(y, "PATCH", `notes/${p}-same`, { v: "Y" });
  if (s.isolated) {
    await mustWrite(x, "PUT", `notes/${p}-put`, { p: "X", onlyX: 1 });
    await mustWrite(y, "PUT", `notes/${p}-put`, { p: "Y", onlyY: 1 });
    await mustWrite(x, "PUT", `notes/${p}-created-both`, { fromX: 1 });
    await mustWrite(y, "PUT", `notes/${p}-created-both`, { fromY: 1 });
  }
  await mustWrite(x, "PATCH", `notes/${p}-del-newer`, { v: 1 });
  await mustWrite(y, "DELETE", `notes/${p}-upd-newer`);
  await mustWrite(x, "PUT", `tracks/${p}-lww-a`, { v: "X" });
  await mustWrite(y, "PUT", `tracks/${p}-lww-b`, { v: "Y" });
  await mustWrite(x, "PUT", `tracks/${p}-del-newer`, { v: 1 });
  await mustWrite(y, "DELETE", `tracks/${p}-upd-newer`);
  // ...then, stamped strictly later on every node's clock, the writes that must win.
  await clockAdvance();
  await mustWrite(y, "DELETE", `notes/${p}-del-newer`);
  await mustWrite(x, "PUT", `notes/${p}-upd-newer`, { v: 2 });
  await mustWrite(y, "PUT", `tracks/${p}-lww-a`, { v: "Y" });
  await mustWrite(x, "PUT", `tracks/${p}-lww-b`, { v: "X" });
  await mustWrite(y, "DELETE", `tracks/${p}-del-newer`);
  await mustWrite(x, "PUT", `tracks/${p}-upd-newer`, { v: 2 });
}

async function sameEverywhere(m: Mesh, path: string): Promise<Json | undefined> {
  const copies = await Promise.all(m.members.map((x) => read(x.node, path)));
  for (const [i, c] of copies.entries()) expect({ node: m.members[i]?.name, path, doc: c }).toEqual({ node: m.members[i]?.name, path, doc: copies[0] });
  return copies[0];
}

async function checkConflicts(m: Mesh, s: Scenario, w: Writers): Promise<void> {
  const { p } = s;
  // FullHistory, different fields patched on both sides: both kept.
  expect(await sameEverywhere(m, `notes/${p}-fields`)).toEqual({ title: "t", x: 1, y: 2, _id: `${p}-fields` });
  // FullHistory, same field on both sides: one deterministic winner, the same on every node.
  expect(["X", "Y"]).toContain((await sameEverywhere(m, `notes/${p}-same`))?.v as string);
  if (s.isolated) {
    // Concurrent whole-document PUTs: each removed the old fields and added its own; both additions stay.
    const put = await sameEverywhere(m, `notes/${p}-put`);
    expect(put).toMatchObject({ onlyX: 1, onlyY: 1 });
    expect(put).not.toHaveProperty("keep");
    expect(["X", "Y"]).toContain(put?.p as string);
    // Created independently on both sides: the two histories merge.
    expect(await sameEverywhere(m, `notes/${p}-created-both`)).toEqual({ fromX: 1, fromY: 1, _id: `${p}-created-both` });
  }
  // A delete newer than the other side's update wins; an update newer than the other side's delete wins.
  expect(await sameEverywhere(m, `notes/${p}-del-newer`)).toBeUndefined();
  expect(await sameEverywhere(m, `notes/${p}-upd-newer`)).toEqual({ v: 2, _id: `${p}-upd-newer` });
  // LatestOnly: the later write wins whole, whichever side made it.
  expect(await sameEverywhere(m, `tracks/${p}-lww-a`)).toEqual({ v: "Y", _id: `${p}-lww-a` });
  expect(await sameEverywhere(m, `tracks/${p}-lww-b`)).toEqual({ v: "X", _id: `${p}-lww-b` });
  expect(await sameEverywhere(m, `tracks/${p}-del-newer`)).toBeUndefined();
  expect(await sameEverywhere(m, `tracks/${p}-upd-newer`)).toEqual({ v: 2, _id: `${p}-upd-newer` });

  // The background writers: every node's last patch of its own field of the shared document...
  const shared = await sameEverywhere(m, `notes/${p}-shared`);
  const expectedShared: Json = { title: "patched by all", _id: `${p}-shared` };
  for (const [name, i] of w.sharedField) expectedShared[name] = i;
  expect(shared).toEqual(expectedShared);
  // ...its own LatestOnly document, the last write to the LatestOnly document all overwrote...
  for (const [name, i] of w.ownTrack) expect(await sameEverywhere(m, `tracks/${p}-pos-${name}`)).toEqual({ i, _id: `${p}-pos-${name}` });
  const winner = await sameEverywhere(m, `tracks/${p}-shared`);
  expect([...w.sharedTrack.values()].map((b): Json => ({ ...b, _id: `${p}-shared` }))).toContainEqual(winner as Json);
  // ...and every document it created is there unless it deleted it.
  const sample = [...w.live.entries()].filter((_, i) => i % 4 === 0);
  for (const [path, body] of sample) expect(await sameEverywhere(m, path)).toEqual({ ...body, _id: path.split("/")[1] });
  for (const path of [...w.deleted].filter((_, i) => i % 4 === 0)) expect(await sameEverywhere(m, path)).toBeUndefined();
  const state = await syncState((m.members[0] as MeshMember).node);
  const notes = state.collections.find((c) => c.name === "notes");
  const ids = new Set(notes?.documents.map((d) => d[0]));
  const tombs = new Set(notes?.tombstones.map((t) => t[0]));
  for (const path of w.live.keys()) expect(ids.has(path.split("/")[1] as string)).toBe(true);
  for (const path of w.deleted) expect(tombs.has(path.split("/")[1] as string)).toBe(true);
}

async function runScenario(m: Mesh, s: Scenario): Promise<void> {
  await waitFor(async () => (await allConnected(m.members)) || undefined, 30_000, "a full mesh before the cut", 100);
  await seedConflicts(s, s.y);
  await waitConverged(m.members.map((x) => x.node), 30_000, "convergence before the cut");
  const logFrom = new Map(m.members.map((x) => [x.name, x.node.lines.length]));

  const cutAt = performance.now();
  s.cut(m);
  const writers = new Writers(m.members, s.p);
  await writeConflicts(s);

  // The cut is seen: every severed link reported down (the transport's ping timeout), others up.
  const detected: Record<string, number> = {};
  if (s.severed.length > 0) await waitFor(
    async () => {
      for (const [a, b] of s.severed) {
        const key = `${a.name}->${b.name}`;
        if (detected[key] === undefined && !(await connectedTo(a.node)).includes(b.name)) detected[key] = Math.round(performance.now() - cutAt);
      }
      return Object.keys(detected).length === s.severed.length;
    },
    Math.max(PARTITION_SECS * 1000, 40_000),
    `${s.name}: the severed links reported disconnected`,
    200,
  );
  const remaining = (s.holdSecs ?? PARTITION_SECS) * 1000 - (performance.now() - cutAt);
  // Holding the cut is the fault itself.
  if (remaining > 0) await Bun.sleep(remaining);
  for (const [a, b] of s.intact) expect({ link: `${a.name}->${b.name}`, up: (await connectedTo(a.node)).includes(b.name) }).toEqual({ link: `${a.name}->${b.name}`, up: true });
  await writers.stop();
  const cutMs = Math.round(performance.now() - cutAt);

  const dropped = m.faults.healAll();
  const healAt = performance.now();
  const nodes = m.members.map((x) => x.node);
  const converged = await waitConverged(nodes, 60_000, `${s.name}: convergence after the heal`);
  await waitFor(async () => (await allConnected(m.members)) || undefined, 60_000, `${s.name}: a full mesh after the heal`, 100);
  const reconnectedMs = Math.round(performance.now() - healAt);

  const disconnects: Record<string, number> = {};
  const reasons = new Set<string>();
  for (const a of m.members) {
    for (const b of m.members) {
      if (a === b) continue;
      const e = linkEvents(a.node, b.name, logFrom.get(a.name));
      if (e.disconnects > 0) disconnects[`${a.name}->${b.name}`] = e.disconnects;
      for (const r of e.reasons) reasons.add(r);
    }
  }
  figures.scenarios.push({
    scenario: s.name,
    cut_ms: cutMs,
    writes_during_cut: writers.ok,
    write_failures: writers.failures.length,
    packets_dropped: dropped,
    disconnect_seen_ms: detected,
    heal_to_converged_ms: converged.ms,
    heal_to_reconnected_ms: reconnectedMs,
    disconnects,
    disconnect_reasons: [...reasons].sort(),
    documents: converged.state.collections.reduce((n, c) => n + c.documents.length, 0),
    tombstones: converged.state.collections.reduce((n, c) => n + c.tombstones.length, 0),
  });

  expect(writers.failures).toEqual([]);
  for (const x of m.members) expect(writers.ok[x.name] ?? 0).toBeGreaterThan(0);
  expect(converged.ms).toBeLessThanOrEqual(HEAL_CONVERGE_MS);
  expect(assertOneLinkPerPeer(m.members)).toBeUndefined();
  await checkConflicts(m, s, writers);
}

describe.skipIf(skip !== undefined)(`partitions and heals in network namespaces${skip ? ` (skipped: ${skip})` : ""}`, () => {
  /** Members by device id: [smallest, middle, largest]. */
  let order: MeshMember[] = [];

  beforeAll(async () => {
    mesh = await startMesh(["alpha", "bravo", "charlie"]);
    order = [...mesh.members].sort((a, b) => (a.deviceId < b.deviceId ? -1 : 1));
  }, 90_000);

  const deadline = PARTITION_SECS * 1000 + 120_000;

  test("isolate the dialer of both its links: all sides write, heal converges within 10 s", async () => {
    const m = mesh as Mesh;
    const [lo, mid, hi] = order as [MeshMember, MeshMember, MeshMember];
    await runScenario(m, {
      name: "isolate",
      p: "s1",
      x: lo,
      y: mid,
      isolated: true,
      // In the isolated node's namespace only, both ways: its own packets are refused locally (EPERM).
      cut: (mm) => mm.faults.drop(lo.host.name, others(mm, lo), "both"),
      severed: [
        [lo, mid],
        [lo, hi],
        [mid, lo],
        [hi, lo],
      ],
      intact: [
        [mid, hi],
        [hi, mid],
      ],
    });
  }, deadline);

  test("split the most-dialled node from the other two (silent drops on both sides): heal converges within 10 s", async () => {
    const m = mesh as Mesh;
    const [lo, mid, hi] = order as [MeshMember, MeshMember, MeshMember];
    await runScenario(m, {
      name: "split",
      p: "s2",
      x: hi,
      y: lo,
      isolated: true,
      // Silent: each side drops what it receives from the other, so no sender sees an error.
      cut: (mm) => {
        mm.faults.drop(hi.host.name, others(mm, hi), "in");
        mm.faults.drop(lo.host.name, [hi.host.address], "in");
        mm.faults.drop(mid.host.name, [hi.host.address], "in");
      },
      severed: [
        [hi, lo],
        [hi, mid],
        [lo, hi],
        [mid, hi],
      ],
      intact: [
        [lo, mid],
        [mid, lo],
      ],
    });
  }, deadline);

  test("one-way loss (everything from one node to another dropped, the reverse passes): heal converges within 10 s", async () => {
    const m = mesh as Mesh;
    const [lo, mid, hi] = order as [MeshMember, MeshMember, MeshMember];
    await runScenario(m, {
      name: "one-way",
      p: "s3",
      x: lo,
      y: mid,
      // lo's writes still reach mid through hi, so only order-independent conflicts are checked.
      isolated: false,
      cut: (mm) => mm.faults.drop(mid.host.name, [lo.host.address], "in"),
      severed: [
        [mid, lo],
        [lo, mid],
      ],
      intact: [
        [lo, hi],
        [hi, lo],
        [mid, hi],
        [hi, mid],
      ],
    });
  }, deadline);

  test("a short blip: delivery stalls, then resumes or the link is redialled, converged within 10 s of the heal", async () => {
    const m = mesh as Mesh;
    const [lo, mid, hi] = order as [MeshMember, MeshMember, MeshMember];
    await runScenario(m, {
      name: "blip",
      p: "s4",
      x: lo,
      y: mid,
      isolated: true,
      holdSecs: BLIP_SECS,
      cut: (mm) => mm.faults.drop(lo.host.name, others(mm, lo), "both"),
      // Whether the links survive depends on the data channel's retransmission timers: recorded, not required.
      severed: [],
      intact: [
        [mid, hi],
        [hi, mid],
      ],
    });
  }, BLIP_SECS * 1000 + 120_000);
});
