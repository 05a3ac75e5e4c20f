/**
 * Helpers for the crash and churn chaos tests (`test/chaos/crash.test.ts`, `churn.test.ts`): a
 * three-node mesh on loopback whose members can be killed and restarted on the same data dir and
 * identity, sometimes on new ports; a model of acknowledged writes; the node's own view of the
 * mesh (`/api/v1/peers`, `/api/v1/sync/state`, `/metrics`) and of its process (`/proc/<pid>/fd`).
 */
import { readdirSync } from "node:fs";
import { createSocket } from "node:dgram";
import { deriveIdentity, decodeStrictBase64 } from "../../../src/identity/index.ts";
import { type NodeProcess, startNode, tempDir, waitFor } from "../../harness/node-process.ts";
import { type SyncState, envInt, percentile, printFigures, syncState } from "./common.ts";
export { type SyncState, envInt, percentile, printFigures, syncState } from "./common.ts";

export type Json = Record<string, unknown>;

export const msSince = (t0: number): number => Math.round(performance.now() - t0);

// ---- formation and ports ------------------------------------------------------------------------

/**
 * A formation secret of this run only, so a stale address that another test's node has since
 * taken over refuses us (different formation) instead of being mistaken for our peer. Chosen so
 * that the device ids order the names as given (the first dials the others): which side dials
 * decides how a peer's address change is learned, so the tests fix it.
 */
export function orderedSecret(names: readonly string[]): string {
  for (;;) {
    const bytes = crypto.getRandomValues(new Uint8Array(32));
    const secret = Buffer.from(bytes).toString("base64");
    const ids = names.map((n) => deriveIdentity(decodeStrictBase64(secret), n).deviceId);
    if (ids.every((id, i) => i === 0 || (ids[i - 1] as string) < id)) return secret;
  }
}

const reserved = new Set<number>();

/**
 * A port below the kernel's ephemeral range (32768+) that was free a moment ago, for both TCP and
 * UDP. A node restarted on its old port must find it free: ephemeral ports are handed out to every
 * outgoing connection on the machine (and by `freeTcpPort`), ports here are not.
 */
export async function stablePort(): Promise<number> {
  for (;;) {
    const port = 12_000 + Math.floor(Math.random() * 8000);
    if (reserved.has(port)) continue;
    try {
      Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } }).stop(true);
    } catch {
      continue;
    }
    const udpFree = await new Promise<boolean>((resolve) => {
      const s = createSocket("udp4");
      s.once("error", () => {
        s.close();
        resolve(false);
      });
      s.bind(port, "127.0.0.1", () => s.close(() => resolve(true)));
    });
    if (!udpFree) continue;
    reserved.add(port);
    return port;
  }
}

// ---- the mesh -----------------------------------------------------------------------------------

export interface Member {
  name: string;
  dataDir: string;
  brokerPort: number;
  udpPort: number;
  /** Static peers as `name@127.0.0.1:port` (fixed at first start, as a config file would be). */
  peers: string[];
  node: NodeProcess;
  /** Every process this member ran, oldest first (their logs are checked too). */
  incarnations: NodeProcess[];
}

export interface MeshSpec {
  names: string[];
  secret: string;
  env?: Record<string, string>;
}

export class Mesh {
  readonly members = new Map<string, Member>();
  constructor(readonly spec: MeshSpec) {}

  static async start(spec: MeshSpec): Promise<Mesh> {
    const mesh = new Mesh(spec);
    const ports = new Map<string, number>();
    for (const name of spec.names) ports.set(name, await stablePort());
    const launches = spec.names.map(async (name) => {
      const member = {
        name,
        dataDir: tempDir(`peat-chaos-${name}-`),
        brokerPort: ports.get(name) as number,
        udpPort: await stablePort(),
        peers: spec.names.filter((p) => p !== name).map((p) => `${p}@127.0.0.1:${ports.get(p)}`),
        incarnations: [],
      } as unknown as Member;
      mesh.members.set(name, member);
      await mesh.launch(member);
    });
    await Promise.all(launches);
    return mesh;
  }

  get(name: string): Member {
    const m = this.members.get(name);
    if (!m) throw new Error(`no member ${name}`);
    return m;
  }

  node(name: string): NodeProcess {
    return this.get(name).node;
  }

  nodes(): NodeProcess[] {
    return [...this.members.values()].map((m) => m.node);
  }

  /** Starts (or restarts) a member on its data dir, ports and static peers; resolves once ready. */
  async launch(member: Member, waitReady = true): Promise<NodeProcess> {
    const node = await startNode({
      env: {
        PEAT_FORMATION_SECRET: this.spec.secret,
        HOSTNAME: member.name,
        PEAT_DISCOVERY: "static",
        PEAT_STATIC_PEERS: member.peers.join(","),
        PEAT_BROKER_PORT: String(member.brokerPort),
        PEAT_DATA_DIR: member.dataDir,
        PEAT_SYNC_BIND: "127.0.0.1",
        PEAT_IROH_BIND_PORT: String(member.udpPort),
        PEAT_SYNC_MODES: SYNC_MODES,
        ...this.spec.env,
      },
      waitReady: false,
    });
    member.node = node;
    member.incarnations.push(node);
    if (waitReady) await node.waitReady(60_000);
    return node;
  }
}

export const SYNC_MODES = "notes=FullHistory,tracks=LatestOnly";

// ---- what the nodes say ---------------------------------------------------------------------------

export interface PeerView {
  id: string;
  connected: boolean;
  state: string;
  addresses: string[];
}

export async function peers(node: NodeProcess): Promise<PeerView[]> {
  const { status, body } = await node.json<{ peers: PeerView[] }>("/api/v1/peers");
  if (status !== 200) throw new Error(`/api/v1/peers answered ${status}`);
  return body.peers;
}

/** Waits until every node reports the same `state_hash`; returns that state. */
export async function waitConverged(nodes: NodeProcess[], timeoutMs: number, what: string): Promise<SyncState> {
  return waitFor(
    async () => {
      const states = await Promise.all(nodes.map(syncState));
      return states.every((s) => s.state_hash === states[0]?.state_hash) ? states[0] : undefined;
    },
    timeoutMs,
    what,
    50,
  );
}

/** Every sample of a metric family from `/metrics`, keyed by its label text (`""` without labels). */
export async function metricSamples(node: NodeProcess, name: string): Promise<Map<string, number>> {
  const text = await (await node.fetch("/metrics")).text();
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (m && m[1] === name) out.set(m[2] ?? "", Number(m[3]));
  }
  if (out.size === 0) throw new Error(`metric ${name} not exported`);
  return out;
}

export async function metric(node: NodeProcess, name: string, labels = ""): Promise<number> {
  const v = (await metricSamples(node, name)).get(labels);
  if (v === undefined) throw new Error(`metric ${name}${labels} not exported`);
  return v;
}

/** Open file descriptors of a process. */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/**
 * Log-order check of one process's log: for each peer, "Peer connected" and "Peer disconnected"
 * alternate. Two connects without a disconnect between is a duplicate connection.
 */
export function duplicateConnects(node: NodeProcess): { peer: string; line: number }[] {
  const up = new Map<string, boolean>();
  const dups: { peer: string; line: number }[] = [];
  node.lines.forEach((line, i) => {
    const c = /INFO peat_mesh::transport: Peer connected peer=(\S+)/.exec(line);
    if (c) {
      const peer = c[1] as string;
      if (up.get(peer)) dups.push({ peer, line: i });
      up.set(peer, true);
      return;
    }
    const d = /INFO peat_mesh::transport: Peer disconnected peer=(\S+)/.exec(line);
    if (d) up.set(d[1] as string, false);
  });
  return dups;
}

// ---- documents ----------------------------------------------------------------------------------

/** RFC 7396 JSON Merge Patch, as the broker applies it. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const out: Json = target !== null && typeof target === "object" && !Array.isArray(target) ? { ...(target as Json) } : {};
  for (const [k, v] of Object.entries(patch as Json)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/** Structural equality with object keys in any order. */
export function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    return a.length === bb.length && a.every((v, i) => sameJson(v, bb[i]));
  }
  const ka = Object.keys(a as Json);
  const kb = Object.keys(b as Json);
  return ka.length === kb.length && ka.every((k) => k in (b as Json) && sameJson((a as Json)[k], (b as Json)[k]));
}

/** Every document of a collection through the broker, paging; without `_id`. */
export async function listAll(node: NodeProcess, collection: string): Promise<Map<string, Json>> {
  const out = new Map<string, Json>();
  let after: string | null = null;
  for (;;) {
    const q: string = `/api/v1/documents/${collection}?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ""}`;
    const { status, body } = await node.json<{ documents: Json[]; next_after: string | null }>(q);
    if (status !== 200) throw new Error(`GET ${q} answered ${status}`);
    for (const d of body.documents) {
      const { _id, ...rest } = d;
      out.set(String(_id), rest);
    }
    if (!body.next_after || body.documents.length === 0) return out;
    after = body.next_after;
  }
}

/** What differs between the nodes' sync states, and who is connected to whom: for failure messages. */
export async function divergence(nodes: NodeProcess[]): Promise<string> {
  const out: string[] = [];
  const states = await Promise.all(nodes.map((n) => syncState(n).catch(() => undefined)));
  const flat = states.map((s) => {
    const m = new Map<string, string>();
    for (const c of s?.collections ?? []) {
      for (const [id, h] of c.documents) m.set(`${c.name}/${id}`, `doc:${h}`);
      for (const [id, h] of c.tombstones) m.set(`${c.name}/${id}`, `${m.has(`${c.name}/${id}`) ? `${m.get(`${c.name}/${id}`)}+` : ""}tomb:${h}`);
    }
    return m;
  });
  const keys = new Set(flat.flatMap((m) => [...m.keys()]));
  for (const k of [...keys].sort()) {
    const vals = flat.map((m) => m.get(k) ?? "-");
    if (new Set(vals).size > 1) out.push(`  ${k}: ${nodes.map((n, i) => `${n.env.HOSTNAME}=${vals[i]}`).join(" ")}`);
  }
  for (const n of nodes) {
    const ps = await peers(n).catch(() => []);
    out.push(`  ${n.env.HOSTNAME} (pid ${n.pid}) peers: ${ps.map((p) => `${p.id}:${p.state}`).join(", ")}`);
    const sync = await metricSamples(n, "peat_sync_messages_received_total").catch(() => new Map());
    out.push(`    sync messages received: ${[...sync].map(([k, v]) => `${k}=${v}`).join(" ")}`);
  }
  return out.join("\n");
}
