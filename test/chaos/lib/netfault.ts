/**
 * Network faults for the chaos suite: three real node processes, each in its own network namespace
 * on one bridge (test/k8s/netns.ts), peered statically by their namespace addresses, and nftables
 * rules inside those namespaces that cut or thin the links between them.
 *
 * Every rule lives in one table per namespace, `inet <NFT_TABLE>`, which this module creates and
 * deletes by that exact name; healing a fault deletes the table. The test process reaches the
 * brokers over the root namespace's link to the bridge, and no rule touches that address, so the
 * control path stays clean while the node-to-node links are cut.
 */
import { spawnSync } from "node:child_process";
import { BridgeNetwork, type NetnsHost } from "../../k8s/netns.ts";
import { type NodeProcess, startNode, tempDir, waitFor } from "../../harness/node-process.ts";
import { type SyncState, envInt, printFigures, syncState } from "./common.ts";
export { type SyncState, envInt, printFigures, syncState } from "./common.ts";

export { netnsSkipReason, destroyAllNetworks } from "../../k8s/netns.ts";

/** The one nft table name this process uses, in every namespace it touches. */
export const NFT_TABLE = `peat_chaos_${process.pid}`;

export class NftError extends Error {
  override readonly name = "NftError";
}

/** Why nftables cannot be used here (in addition to the namespace checks), or undefined. */
export function nftSkipReason(): string | undefined {
  const probe = spawnSync("nft", ["--version"], { encoding: "utf8" });
  if (probe.error || probe.status !== 0) return "nft (nftables) is not installed";
  return undefined;
}

function nft(ns: string, script: string): string {
  const result = spawnSync("ip", ["netns", "exec", ns, "nft", "-f", "-"], { input: script, encoding: "utf8" });
  if (result.status !== 0) throw new NftError(`nft in ${ns} failed: ${result.stderr.trim()}\n${script}`);
  return result.stdout;
}

/**
 * The faults of one network: rules are added per namespace under `NFT_TABLE`, with a counter on each
 * drop so the test can report how many packets it actually dropped.
 */
export class NetFaults {
  private readonly tables = new Set<string>();

  private ensureTable(ns: string): void {
    if (this.tables.has(ns)) return;
    nft(
      ns,
      `table inet ${NFT_TABLE} {
  chain input {
    type filter hook input priority 0; policy accept;
  }
  chain output {
    type filter hook output priority 0; policy accept;
  }
}
`,
    );
    this.tables.add(ns);
  }

  /**
   * Drops everything `ns` sends to (`out`), receives from (`in`), or both, for the given addresses.
   * `in` is a silent loss, as on a broken link: nobody learns of it. `out` is a local fault: the
   * node's own packets are refused (EPERM to UDP senders; TCP retransmits), as with a local firewall.
   */
  drop(ns: string, addresses: string[], direction: "in" | "out" | "both"): void {
    this.ensureTable(ns);
    const set = `{ ${addresses.join(", ")} }`;
    const rules: string[] = [];
    if (direction !== "in") rules.push(`add rule inet ${NFT_TABLE} output ip daddr ${set} counter drop`);
    if (direction !== "out") rules.push(`add rule inet ${NFT_TABLE} input ip saddr ${set} counter drop`);
    nft(ns, `${rules.join("\n")}\n`);
  }

  /**
   * Drops `percent`% of the packets `ns` receives from the given addresses, at random and silently
   * (on input, so the sender sees no error, as with loss on the wire).
   */
  loss(ns: string, addresses: string[], percent: number): void {
    if (!(percent >= 0 && percent <= 100)) throw new NftError(`loss percent ${percent} out of range`);
    this.ensureTable(ns);
    nft(ns, `add rule inet ${NFT_TABLE} input ip saddr { ${addresses.join(", ")} } numgen random mod 100 < ${percent} counter drop\n`);
  }

  /** Packets dropped so far by this module's rules in `ns` (0 when it has no table). */
  dropped(ns: string): number {
    if (!this.tables.has(ns)) return 0;
    const result = spawnSync("ip", ["netns", "exec", ns, "nft", "-j", "list", "table", "inet", NFT_TABLE], { encoding: "utf8" });
    if (result.status !== 0) throw new NftError(`nft list in ${ns} failed: ${result.stderr.trim()}`);
    let total = 0;
    for (const item of (JSON.parse(result.stdout) as { nftables: Record<string, unknown>[] }).nftables) {
      const rule = item.rule as { expr?: Record<string, unknown>[] } | undefined;
      for (const expr of rule?.expr ?? []) {
        const counter = expr.counter as { packets?: number } | undefined;
        if (counter?.packets) total += counter.packets;
      }
    }
    return total;
  }

  /** Deletes this module's table in `ns` (all its faults). */
  heal(ns: string): void {
    if (!this.tables.has(ns)) return;
    nft(ns, `delete table inet ${NFT_TABLE}\n`);
    this.tables.delete(ns);
  }

  /** Heals every namespace; returns the packets dropped there since the faults were set. */
  healAll(): number {
    let dropped = 0;
    for (const ns of [...this.tables]) {
      dropped += this.dropped(ns);
      this.heal(ns);
    }
    return dropped;
  }

  /** For afterAll: deletes the tables, tolerating namespaces already gone. */
  cleanup(): void {
    for (const ns of [...this.tables]) {
      spawnSync("ip", ["netns", "exec", ns, "nft", "delete", "table", "inet", NFT_TABLE]);
      this.tables.delete(ns);
    }
  }
}

// ---- the three-node mesh ----------------------------------------------------------------------------

export interface MeshMember {
  name: string;
  host: NetnsHost;
  node: NodeProcess;
  deviceId: string;
}

export interface Mesh {
  net: BridgeNetwork;
  faults: NetFaults;
  members: MeshMember[];
  byName(name: string): MeshMember;
  stop(): Promise<void>;
}

export const SYNC_MODES = "notes=FullHistory,tracks=LatestOnly";

/** Starts one node per namespace, each listing the others as static peers, and waits for the full mesh. */
export async function startMesh(names: string[], env: Record<string, string> = {}): Promise<Mesh> {
  const net = BridgeNetwork.create({ hosts: names.length, rootLink: true });
  const faults = new NetFaults();
  const members: MeshMember[] = [];
  const mesh: Mesh = {
    net,
    faults,
    members,
    byName(name) {
      const m = members.find((x) => x.name === name);
      if (!m) throw new Error(`no member ${name}`);
      return m;
    },
    async stop() {
      faults.cleanup();
      await Promise.all(members.map((m) => m.node.stop()));
      await net.destroy();
    },
  };
  try {
    const hosts = net.hosts;
    const nodes = await Promise.all(
      names.map((name, i) => {
        const host = hosts[i] as NetnsHost;
        const peers = names.flatMap((other, j) => (j === i ? [] : [`${other}@${(hosts[j] as NetnsHost).address}:8081`]));
        return startNode({
          prefix: net.execPrefix(host.name),
          host: host.address,
          readyTimeoutMs: 30_000,
          env: {
            HOSTNAME: name,
            PEAT_DISCOVERY: "static",
            PEAT_STATIC_PEERS: peers.join(","),
            PEAT_BROKER_BIND: "0.0.0.0",
            PEAT_BROKER_PORT: "8081",
            PEAT_IROH_BIND_PORT: "11204",
            PEAT_SYNC_BIND: host.address,
            PEAT_SYNC_MODES: SYNC_MODES,
            PEAT_DATA_DIR: tempDir(`peat-chaos-${name}-`),
            ...env,
          },
        });
      }),
    );
    for (const [i, name] of names.entries()) {
      const node = nodes[i] as NodeProcess;
      const info = await node.json<{ device_id: string }>("/api/v1/node");
      members.push({ name, host: hosts[i] as NetnsHost, node, deviceId: info.body.device_id });
    }
    await waitFor(async () => (await allConnected(members)) || undefined, 30_000, "a full mesh", 100);
  } catch (err) {
    await mesh.stop().catch(() => {});
    throw err;
  }
  return mesh;
}

/**
 * Stops a member (SIGTERM), runs `whileDown`, and starts it again in its namespace with the same env
 * and data dir. The old process's log lines are returned; `m.node` is the new process.
 */
export async function restartMember(m: MeshMember, whileDown: () => Promise<void> = async () => {}): Promise<string[]> {
  const old = m.node;
  const code = await old.stop();
  if (code !== 0) throw new Error(`${m.name} exited with ${code} on SIGTERM`);
  await whileDown();
  m.node = await startNode({
    prefix: ["ip", "netns", "exec", m.host.name],
    host: m.host.address,
    readyTimeoutMs: 30_000,
    env: old.env,
  });
  return old.lines;
}

// ---- observation --------------------------------------------------------------------------------

/** Waits until every node reports the same state_hash; returns how long it took and the state. */
export async function waitConverged(nodes: NodeProcess[], timeoutMs: number, what: string): Promise<{ ms: number; state: SyncState }> {
  const start = performance.now();
  let last: SyncState[] = [];
  try {
    const state = await waitFor(
      async () => {
        const all = await Promise.all(nodes.map(syncState));
        last = all;
        return all.every((s) => s.state_hash === all[0]?.state_hash) ? all[0] : undefined;
      },
      timeoutMs,
      what,
      50,
    );
    return { ms: Math.round(performance.now() - start), state };
  } catch (err) {
    throw new Error(`${(err as Error).message}; differences: ${stateDifferences(nodes, last).slice(0, 20).join("; ")}`);
  }
}

/** Which documents and tombstones differ between the nodes' states, for failure messages. */
export function stateDifferences(nodes: NodeProcess[], states: SyncState[]): string[] {
  const seen = new Map<string, string[]>();
  states.forEach((s, i) => {
    for (const c of s.collections) {
      for (const [id, h] of c.documents) (seen.get(`${c.name}/${id}`) ?? seen.set(`${c.name}/${id}`, Array(states.length).fill("-")).get(`${c.name}/${id}`) as string[])[i] = `doc:${h.slice(0, 8)}`;
      for (const [id, hlc] of c.tombstones) (seen.get(`${c.name}/${id}`) ?? seen.set(`${c.name}/${id}`, Array(states.length).fill("-")).get(`${c.name}/${id}`) as string[])[i] = `tomb:${hlc}`;
    }
  });
  const out: string[] = [];
  for (const [key, values] of seen) {
    if (values.some((v) => v !== values[0])) out.push(`${key} ${values.map((v, i) => `${nodes[i]?.env.HOSTNAME}=${v}`).join(" ")}`);
  }
  return out;
}

export interface PeerView {
  id: string;
  connected: boolean;
  state: string;
}

export async function peers(node: NodeProcess): Promise<PeerView[]> {
  const res = await node.fetch("/api/v1/peers", { signal: AbortSignal.timeout(10_000) });
  return ((await res.json()) as { peers: PeerView[] }).peers;
}

export async function connectedTo(node: NodeProcess): Promise<string[]> {
  return (await peers(node)).filter((p) => p.connected).map((p) => p.id).sort();
}

/** One gauge or counter value from /metrics (the unlabelled sample). */
export async function metric(node: NodeProcess, name: string): Promise<number> {
  const text = await (await node.fetch("/metrics", { signal: AbortSignal.timeout(10_000) })).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`metric ${name} not found on ${node.env.HOSTNAME}`);
  return Number(line.slice(name.length + 1));
}

/** True when every member is connected to every other one, each over exactly one live PeerConnection. */
export async function allConnected(members: MeshMember[]): Promise<boolean> {
  for (const m of members) {
    const expected = members.filter((o) => o !== m).map((o) => o.name).sort();
    if (JSON.stringify(await connectedTo(m.node)) !== JSON.stringify(expected)) return false;
    if ((await metric(m.node, "peat_transport_peer_connections")) !== expected.length) return false;
    if ((await metric(m.node, "peat_peers_connected")) !== expected.length) return false;
  }
  return true;
}

/** "Peer connected" and "Peer disconnected" log lines of `node` about `peer`, from line `from` on. */
export function linkEvents(node: NodeProcess, peer: string, from = 0): { connects: number; disconnects: number; reasons: string[] } {
  let connects = 0;
  let disconnects = 0;
  const reasons: string[] = [];
  for (const line of node.lines.slice(from)) {
    if (line.includes(`Peer connected peer=${peer} `)) connects++;
    const d = /Peer disconnected peer=(\S+) reason=(\S+)/.exec(line);
    if (d && d[1] === peer) {
      disconnects++;
      reasons.push(d[2] as string);
    }
  }
  return { connects, disconnects, reasons };
}

/**
 * Every node's log agrees that each of its peers is up exactly once: all connects but one were
 * matched by a disconnect. Two live connections to one peer would show as one connect too many.
 */
export function assertOneLinkPerPeer(members: MeshMember[]): string | undefined {
  for (const m of members) {
    for (const o of members) {
      if (o === m) continue;
      const e = linkEvents(m.node, o.name);
      if (e.connects - e.disconnects !== 1) return `${m.name} logged ${e.connects} connects and ${e.disconnects} disconnects of ${o.name}`;
    }
  }
  return undefined;
}

// ---- documents ----------------------------------------------------------------------------------

export type Json = Record<string, unknown>;

export async function write(node: NodeProcess, method: "PUT" | "PATCH" | "DELETE" | "POST", path: string, body?: Json): Promise<number> {
  const res = await node.fetch(`/api/v1/documents/${path}`, {
    method,
    signal: AbortSignal.timeout(15_000),
    ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { "content-type": "application/json" } }),
  });
  await res.arrayBuffer();
  return res.status;
}

/** PUT/PATCH/DELETE that must succeed (2xx), for the writes the test's expectations rest on. */
export async function mustWrite(node: NodeProcess, method: "PUT" | "PATCH" | "DELETE", path: string, body?: Json): Promise<void> {
  const status = await write(node, method, path, body);
  if (status < 200 || status > 299) throw new Error(`${method} ${path} on ${node.env.HOSTNAME} returned ${status}`);
}

export async function read(node: NodeProcess, path: string): Promise<Json | undefined> {
  const res = await node.fetch(`/api/v1/documents/${path}`, { signal: AbortSignal.timeout(10_000) });
  if (res.status === 404) {
    await res.arrayBuffer();
    return undefined;
  }
  if (res.status !== 200) throw new Error(`GET ${path} on ${node.env.HOSTNAME}: ${res.status}`);
  return ((await res.json()) as { document: Json }).document;
}

/**
 * Waits until the wall clock has moved on by at least `ms`, so that a write made after this is
 * stamped strictly later (by HLC) than every write made before it on any node of this machine.
 */
export async function clockAdvance(ms = 3): Promise<void> {
  const start = Date.now();
  await waitFor(() => Date.now() >= start + ms, 1000, "the clock to advance", 1);
}
