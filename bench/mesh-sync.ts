/**
 * Three-node mesh sync on loopback, peat-mesh vs automerge-repo, every workload driven through the
 * HTTP document API only (the same client code for both systems; automerge-repo runs behind the
 * API-compatible peer in bench/automerge-repo/peer.ts):
 *
 *  1. write-on-A to readable-on-C latency over N writes, C polled (goal p50 ≤ 5 ms, p99 ≤ 20 ms):
 *     full mesh (`alerts` FullHistory, and `tracks` LatestOnly), and the line A–B–C (`alerts`);
 *  2. 10,000 documents PUT on A by 16 concurrent writers until C lists all of them (goal ≤ 5 s);
 *  3. idle cost with them in sync: CPU-seconds per node per minute from /proc/<pid>/stat
 *     (goal ≤ 0.2) and bytes per peer pair per minute from the /metrics byte counters (goal ≤ 5 KB);
 *  4. catch-up: C stopped (SIGTERM), 1,000 of the documents rewritten on A, C restarted; time from
 *     spawn until all 1,000 changes are readable on C (goal ≤ 2 s) and the bytes C exchanged
 *     (goal ≤ 2× the changed documents' JSON size);
 *  5. RSS (VmRSS) of each node with the documents in sync.
 *
 * Usage: bun bench/mesh-sync.ts [--system ours|automerge-repo|both] [--docs 10000] [--idle-secs 60]
 *          [--latency-writes 500] [--writers 16] [--poll-ms 1] [--bulk-cap-secs 180]
 *          [--catchup-cap-secs 180] [--settle-secs 5] [--connect-timeout-secs 60]
 * Prints numbers and a table; asserts nothing; exits non-zero only when the harness fails (a node
 * does not start or connect, an HTTP call fails outright).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  DeadlineError,
  type NodeProcess,
  freeTcpPort,
  startNode,
  stopAllNodes,
  udpRangeStart,
} from "../test/harness/node-process.ts";

const { values } = parseArgs({
  options: {
    system: { type: "string", default: "both" },
    docs: { type: "string", default: "10000" },
    "idle-secs": { type: "string", default: "60" },
    "latency-writes": { type: "string", default: "500" },
    "latency-warmup": { type: "string", default: "20" },
    writers: { type: "string", default: "16" },
    "poll-ms": { type: "string", default: "1" },
    "bulk-cap-secs": { type: "string", default: "180" },
    "catchup-cap-secs": { type: "string", default: "180" },
    "settle-secs": { type: "string", default: "5" },
    "connect-timeout-secs": { type: "string", default: "60" },
  },
  allowPositionals: false,
});

type SystemName = "ours" | "automerge-repo";
const SYSTEMS: SystemName[] =
  values.system === "both" ? ["ours", "automerge-repo"] : values.system === "ours" || values.system === "automerge-repo" ? [values.system] : [];
if (SYSTEMS.length === 0) {
  console.error(`--system must be ours, automerge-repo or both (got ${values.system})`);
  process.exit(2);
}
const DOCS = Number(values.docs);
const CHANGED = Math.max(1, Math.round(DOCS / 10));
const IDLE_SECS = Number(values["idle-secs"]);
const LATENCY_WRITES = Number(values["latency-writes"]);
const LATENCY_WARMUP = Number(values["latency-warmup"]);
const WRITERS = Number(values.writers);
const POLL_MS = Number(values["poll-ms"]);
const BULK_CAP_MS = Number(values["bulk-cap-secs"]) * 1000;
const CATCHUP_CAP_MS = Number(values["catchup-cap-secs"]) * 1000;
const SETTLE_MS = Number(values["settle-secs"]) * 1000;
const CONNECT_TIMEOUT_MS = Number(values["connect-timeout-secs"]) * 1000;
const LATENCY_TIMEOUT_MS = 5000;
const COLLECTION = "alerts";
const LATEST_ONLY_COLLECTION = "tracks";
const PEER_TS = join(import.meta.dir, "automerge-repo/peer.ts");
const CLK_TCK = clockTicks();

// ---- small helpers ------------------------------------------------------------------------------

function clockTicks(): number {
  try {
    const out = Bun.spawnSync(["getconf", "CLK_TCK"]).stdout.toString().trim();
    const n = Number(out);
    return Number.isFinite(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
}

function loadAvg(): string {
  return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
}

/** utime + stime of the process (all threads), in seconds. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // After "pid (comm) ", field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

function rssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN) / 1024;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
}

function fmt(n: number | undefined | null, digits = 1): string {
  if (n === undefined || n === null || !Number.isFinite(n)) return "n/a";
  return n.toFixed(digits);
}

function secs(ms: number): number {
  return ms / 1000;
}

function now(): number {
  return performance.now();
}

function log(system: string, message: string): void {
  console.log(`[${system}] ${message}`);
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Doc = { [key: string]: Json };

function alertBody(i: number, version = 1): Doc {
  return {
    seq: i,
    version,
    severity: ["low", "medium", "high", "critical"][i % 4] ?? "low",
    source: `sensor-${i % 97}`,
    callsign: `UNIT-${i}`,
    lat: 52 + (i % 1000) / 1000,
    lon: 4.3 + (i % 500) / 1000,
    message: `alert ${i} v${version}: perimeter event detected`,
    tags: ["perimeter", `zone-${i % 12}`],
    acknowledged: version > 1,
    ts: 1767225600000 + i * 1000 + version,
  };
}

function canonical(value: Json | undefined): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.keys(value)
      .filter((k) => k !== "_id")
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(value);
}

async function runPool<T>(items: T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      for (;;) {
        const index = next++;
        if (index >= items.length) return;
        await work(items[index] as T);
      }
    }),
  );
}

// ---- HTTP client ---------------------------------------------------------------------------------

async function put(node: NodeProcess, collection: string, id: string, body: Doc): Promise<void> {
  const res = await node.fetch(`/api/v1/documents/${collection}/${id}`, {
    method: "PUT",
    body: JSON.stringify(body),
    headers: { "content-type": "application/json" },
  });
  const text = await res.text();
  if (res.status !== 200 && res.status !== 201) throw new Error(`PUT ${collection}/${id} on ${node.env.HOSTNAME}: ${res.status} ${text.slice(0, 200)}`);
}

async function get(node: NodeProcess, collection: string, id: string): Promise<Doc | undefined> {
  const res = await node.fetch(`/api/v1/documents/${collection}/${id}`);
  const text = await res.text();
  if (res.status === 404) return undefined;
  if (res.status !== 200) throw new Error(`GET ${collection}/${id} on ${node.env.HOSTNAME}: ${res.status} ${text.slice(0, 200)}`);
  return (JSON.parse(text) as { document: Doc }).document;
}

async function total(node: NodeProcess, collection: string): Promise<number> {
  const { status, body } = await node.json<{ total: number }>(`/api/v1/documents/${collection}?limit=1`);
  if (status !== 200) throw new Error(`list ${collection} on ${node.env.HOSTNAME}: ${status}`);
  return body.total;
}

interface ByteCounters {
  /** Bytes on the peer links as the system counts them (peat: transport framing included). */
  wireSent: number;
  wireReceived: number;
  /** peat only: sync-protocol payload bytes (inside the transport bytes). */
  payloadSent: number;
  payloadReceived: number;
  names: string[];
}

async function byteCounters(node: NodeProcess): Promise<ByteCounters> {
  const res = await node.fetch("/metrics");
  const text = await res.text();
  if (res.status !== 200) throw new Error(`/metrics on ${node.env.HOSTNAME}: ${res.status}`);
  const sums = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || line.trim() === "") continue;
    const match = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!match?.[1] || !/bytes_(sent|received)_total$/.test(match[1])) continue;
    sums.set(match[1], (sums.get(match[1]) ?? 0) + Number(match[3]));
  }
  const pick = (...names: string[]): { value: number; name?: string } => {
    for (const name of names) if (sums.has(name)) return { value: sums.get(name) ?? 0, name };
    return { value: 0 };
  };
  const wireSent = pick("peat_transport_bytes_sent_total", "amrepo_ws_bytes_sent_total", "peat_sync_bytes_sent_total");
  const wireReceived = pick("peat_transport_bytes_received_total", "amrepo_ws_bytes_received_total", "peat_sync_bytes_received_total");
  const payloadSent = pick("peat_sync_bytes_sent_total");
  const payloadReceived = pick("peat_sync_bytes_received_total");
  return {
    wireSent: wireSent.value,
    wireReceived: wireReceived.value,
    payloadSent: payloadSent.value,
    payloadReceived: payloadReceived.value,
    names: [...new Set([wireSent.name, wireReceived.name, payloadSent.name, payloadReceived.name].filter((n): n is string => !!n))],
  };
}

function minus(a: ByteCounters, b: ByteCounters): ByteCounters {
  return {
    wireSent: a.wireSent - b.wireSent,
    wireReceived: a.wireReceived - b.wireReceived,
    payloadSent: a.payloadSent - b.payloadSent,
    payloadReceived: a.payloadReceived - b.payloadReceived,
    names: a.names,
  };
}

// ---- systems -------------------------------------------------------------------------------------

type Topology = "mesh" | "line";
const NAMES: Record<SystemName, string[]> = {
  ours: ["peat-mesh-0", "peat-mesh-1", "peat-mesh-2"],
  "automerge-repo": ["amr-0", "amr-1", "amr-2"],
};

/** Which peers each of A, B, C (indices 0, 1, 2) is connected to. */
function links(topology: Topology): number[][] {
  return topology === "mesh"
    ? [
        [1, 2],
        [0, 2],
        [0, 1],
      ]
    : [[1], [0, 2], [1]];
}

async function startTrio(system: SystemName, topology: Topology): Promise<NodeProcess[]> {
  const names = NAMES[system];
  const brokerPorts = names.map(() => freeTcpPort());
  const adjacency = links(topology);
  const envs = names.map((name, i): Record<string, string> => {
    const peers = adjacency[i] ?? [];
    if (system === "ours") {
      const udpBase = udpRangeStart();
      return {
        HOSTNAME: name,
        PEAT_DISCOVERY: "static",
        PEAT_STATIC_PEERS: peers.map((j) => `${names[j]}@127.0.0.1:${brokerPorts[j]}`).join(","),
        PEAT_BROKER_PORT: String(brokerPorts[i]),
        PEAT_SYNC_BIND: "127.0.0.1",
        PEAT_IROH_BIND_PORT: String(udpBase + i * 16),
        RUST_LOG: "info",
      };
    }
    return {
      HOSTNAME: name,
      PEAT_BROKER_PORT: String(brokerPorts[i]),
      AMR_WS_PORT: String(freeTcpPort()),
      // With cbor-x's native extractor (cbor-extract, an N-API addon) loaded, a peer died of a Bun
      // segfault ("panic(main thread)") in early runs; with the pure-JS path, none has since.
      CBOR_NATIVE_ACCELERATION_DISABLED: "true",
    };
  });
  if (system === "automerge-repo") {
    // Each peer runs a WebSocket server and dials the linked peers of lower index.
    envs.forEach((env, i) => {
      env.AMR_CONNECT = (adjacency[i] ?? [])
        .filter((j) => j < i)
        .map((j) => `ws://127.0.0.1:${envs[j]?.AMR_WS_PORT}`)
        .join(",");
    });
  }
  const command = system === "ours" ? undefined : [process.execPath, PEER_TS];
  const nodes = await Promise.all(envs.map((env) => startNode({ env, ...(command ? { command } : {}), readyTimeoutMs: 30_000 })));
  await waitConnected(system, nodes, adjacency);
  return nodes;
}

async function restart(system: SystemName, node: NodeProcess): Promise<NodeProcess> {
  const command = system === "ours" ? undefined : [process.execPath, PEER_TS];
  return startNode({ env: node.env, ...(command ? { command } : {}), readyTimeoutMs: 30_000 });
}

function connectedTo(node: NodeProcess, peer: string): boolean {
  const pattern = new RegExp(`Peer connected.*\\bpeer=${peer.replace(/[.-]/g, "\\$&")}(\\s|$)`);
  return node.lines.some((l) => pattern.test(l));
}

function dumpLogs(nodes: NodeProcess[]): void {
  for (const node of nodes) {
    console.error(`--- last log lines of ${node.env.HOSTNAME} (pid ${node.pid}, exit ${node.proc.exitCode ?? "running"}) ---`);
    for (const l of node.lines.slice(-15)) console.error(`  ${l}`);
    for (const l of node.stderrLines.slice(-60)) console.error(`  (stderr) ${l}`);
  }
}

async function waitConnected(system: SystemName, nodes: NodeProcess[], adjacency: number[][]): Promise<void> {
  const t0 = now();
  const names = NAMES[system];
  try {
    await Promise.all(
      nodes.map((node, i) =>
        Promise.all(
          (adjacency[i] ?? []).map((j) =>
            Promise.race([
              node.exited.then((code) => {
                throw new Error(`${node.env.HOSTNAME} exited with ${code}: ${node.stderrLines.slice(-5).join(" | ")}`);
              }),
              (async () => {
                const peer = names[j] ?? "";
                const deadline = now() + CONNECT_TIMEOUT_MS;
                while (!connectedTo(node, peer)) {
                  if (now() > deadline) throw new DeadlineError(`${node.env.HOSTNAME} did not log "Peer connected peer=${peer}" within ${CONNECT_TIMEOUT_MS} ms`);
                  await Bun.sleep(20);
                }
              })(),
            ]),
          ),
        ),
      ),
    );
  } catch (err) {
    dumpLogs(nodes);
    throw err;
  }
  log(system, `connected (${adjacency.map((a, i) => `${names[i]}→${a.map((j) => names[j]).join("+")}`).join(", ")}) in ${fmt(now() - t0, 0)} ms`);
}

// ---- workloads -----------------------------------------------------------------------------------

interface LatencyResult {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
  timeouts: number;
  load: string;
}

/** Write-on-A to readable-on-C: the clock starts before the PUT is sent; C is polled after it returns. */
async function latency(system: SystemName, a: NodeProcess, c: NodeProcess, collection: string, label: string): Promise<LatencyResult> {
  const samples: number[] = [];
  let timeouts = 0;
  const run = `${label}-${Date.now().toString(36)}`;
  for (let i = 0; i < LATENCY_WARMUP + LATENCY_WRITES; i++) {
    const id = `${run}-${i}`;
    const body = alertBody(i);
    const t0 = now();
    await put(a, collection, id, body);
    let found = false;
    while (now() - t0 < LATENCY_TIMEOUT_MS) {
      const doc = await get(c, collection, id);
      if (doc && doc.seq === i) {
        found = true;
        break;
      }
      if (POLL_MS > 0) await Bun.sleep(POLL_MS);
    }
    const elapsed = now() - t0;
    if (i < LATENCY_WARMUP) continue;
    if (found) samples.push(elapsed);
    else timeouts++;
  }
  samples.sort((x, y) => x - y);
  const result: LatencyResult = {
    n: samples.length,
    p50: percentile(samples, 50),
    p90: percentile(samples, 90),
    p99: percentile(samples, 99),
    max: samples.at(-1) ?? Number.NaN,
    mean: samples.reduce((s, x) => s + x, 0) / Math.max(1, samples.length),
    timeouts,
    load: loadAvg(),
  };
  log(
    system,
    `latency ${label}: n=${result.n} p50 ${fmt(result.p50, 2)} ms p90 ${fmt(result.p90, 2)} ms p99 ${fmt(result.p99, 2)} ms max ${fmt(result.max, 2)} ms` +
      ` mean ${fmt(result.mean, 2)} ms timeouts(>${LATENCY_TIMEOUT_MS} ms) ${timeouts}; load ${result.load}`,
  );
  return result;
}

interface BulkResult {
  writeSecs: number;
  /** Until C's total reached the target; null: the cap passed first. */
  syncSecs: number | null;
  cReached: number;
  bSyncSecs: number | null;
  spot: string;
  load: string;
}

async function waitTotal(node: NodeProcess, target: number, t0: number, capMs: number, pollMs: number): Promise<{ ms: number | null; reached: number }> {
  let reached = 0;
  for (;;) {
    reached = await total(node, COLLECTION);
    if (reached >= target) return { ms: now() - t0, reached };
    if (now() - t0 > capMs) return { ms: null, reached };
    await Bun.sleep(pollMs);
  }
}

async function bulk(system: SystemName, [a, b, c]: NodeProcess[], written: Map<string, Doc>): Promise<BulkResult> {
  if (!a || !b || !c) throw new Error("three nodes needed");
  const before = await total(c, COLLECTION);
  const target = before + DOCS;
  const ids = Array.from({ length: DOCS }, (_, i) => i);
  const t0 = now();
  let writeSecs = Number.NaN;
  const writes = runPool(ids, WRITERS, async (i) => {
    const id = `bulk-${String(i).padStart(6, "0")}`;
    const body = alertBody(i);
    await put(a, COLLECTION, id, body);
    written.set(id, body);
  }).then(() => {
    writeSecs = secs(now() - t0);
  });
  const onC = waitTotal(c, target, t0, BULK_CAP_MS, 100);
  const [, cResult] = await Promise.all([writes, onC]);
  log(system, `bulk: ${DOCS} PUTs on A by ${WRITERS} writers in ${fmt(writeSecs, 2)} s; C listed ${cResult.reached - before}/${DOCS} after ${cResult.ms === null ? `> cap ${secs(BULK_CAP_MS)} s` : `${fmt(secs(cResult.ms), 2)} s`}`);
  const bResult = await waitTotal(b, target, t0, Math.max(BULK_CAP_MS, now() - t0 + 5000), 200);
  log(system, `bulk: B listed ${bResult.reached - before}/${DOCS} after ${bResult.ms === null ? "> cap" : `${fmt(secs(bResult.ms), 2)} s`}`);
  // Spot-check contents on C: 50 documents spread over the range, compared field by field.
  let ok = 0;
  let checked = 0;
  const bad: string[] = [];
  for (let k = 0; k < 50; k++) {
    const i = Math.floor((k * DOCS) / 50 + ((k * 7919) % Math.max(1, Math.floor(DOCS / 50))));
    const id = `bulk-${String(Math.min(i, DOCS - 1)).padStart(6, "0")}`;
    const expected = written.get(id);
    if (!expected) continue;
    checked++;
    const doc = await get(c, COLLECTION, id);
    if (doc && canonical(doc) === canonical(expected) && doc._id === id) ok++;
    else if (bad.length < 3) bad.push(`${id}: ${doc ? canonical(doc).slice(0, 120) : "missing"}`);
  }
  const spot = `${ok}/${checked} equal`;
  log(system, `bulk: spot-check on C ${spot}${bad.length ? ` (e.g. ${bad.join("; ")})` : ""}`);
  return {
    writeSecs,
    syncSecs: cResult.ms === null ? null : secs(cResult.ms),
    cReached: cResult.reached - before,
    bSyncSecs: bResult.ms === null ? null : secs(bResult.ms),
    spot,
    load: loadAvg(),
  };
}

interface IdleResult {
  windowSecs: number;
  cpuPerMin: number[];
  bytesPerPairPerMin: number;
  payloadPerPairPerMin: number;
  sentTotal: number;
  receivedTotal: number;
  names: string[];
  rssBefore: number[];
  rssAfter: number[];
  load: string;
}

async function idle(system: SystemName, nodes: NodeProcess[], pairs: number): Promise<IdleResult> {
  await Bun.sleep(SETTLE_MS);
  const rssBefore = nodes.map((n) => rssMb(n.pid));
  const cpu0 = nodes.map((n) => cpuSeconds(n.pid));
  const bytes0 = await Promise.all(nodes.map(byteCounters));
  const t0 = now();
  await Bun.sleep(IDLE_SECS * 1000);
  const cpu1 = nodes.map((n) => cpuSeconds(n.pid));
  const bytes1 = await Promise.all(nodes.map(byteCounters));
  const minutes = (now() - t0) / 60_000;
  const deltas = bytes1.map((b, i) => minus(b, bytes0[i] as ByteCounters));
  const sentTotal = deltas.reduce((s, d) => s + d.wireSent, 0);
  const receivedTotal = deltas.reduce((s, d) => s + d.wireReceived, 0);
  const payloadSent = deltas.reduce((s, d) => s + d.payloadSent, 0);
  const result: IdleResult = {
    windowSecs: minutes * 60,
    cpuPerMin: cpu1.map((c, i) => (c - (cpu0[i] ?? 0)) / minutes),
    // Every byte on a link is sent by one end: the sum of the sent counters is the traffic.
    bytesPerPairPerMin: sentTotal / pairs / minutes,
    payloadPerPairPerMin: payloadSent / pairs / minutes,
    sentTotal,
    receivedTotal,
    names: bytes1[0]?.names ?? [],
    rssBefore,
    rssAfter: nodes.map((n) => rssMb(n.pid)),
    load: loadAvg(),
  };
  log(
    system,
    `idle ${fmt(result.windowSecs, 0)} s: CPU-s/min per node ${result.cpuPerMin.map((x) => fmt(x, 3)).join(", ")}; ` +
      `bytes sent ${sentTotal} (received ${receivedTotal}) = ${fmt(result.bytesPerPairPerMin / 1024, 2)} KB/pair/min over ${pairs} pairs ` +
      `[${result.names.join(", ")}]; RSS MB ${result.rssAfter.map((x) => fmt(x, 0)).join(", ")}; load ${result.load}`,
  );
  return result;
}

interface CatchupResult {
  changed: number;
  changedBytes: number;
  bPropagateSecs: number | null;
  readySecs: number;
  connectedSecs: number | null;
  catchupSecs: number | null;
  remaining: number;
  cBytes: number;
  cBytesSettled: number;
  peersDelta: number;
  ratio: number;
  ratioSettled: number;
  load: string;
}

async function pollUntilAll(node: NodeProcess, expected: Map<string, Doc>, t0: number, capMs: number): Promise<{ ms: number | null; remaining: number }> {
  const pending = new Set(expected.keys());
  for (;;) {
    const round = [...pending];
    await runPool(round, 8, async (id) => {
      try {
        const doc = await get(node, COLLECTION, id);
        const want = expected.get(id);
        if (doc && want && doc.version === want.version && doc.seq === want.seq) pending.delete(id);
      } catch {
        // a node still starting up or reconnecting: poll again
      }
    });
    if (pending.size === 0) return { ms: now() - t0, remaining: 0 };
    if (now() - t0 > capMs) return { ms: null, remaining: pending.size };
    await Bun.sleep(20);
  }
}

/** Stops C, rewrites documents on A, restarts C (in `nodes[2]`) and times its catch-up. */
async function catchup(system: SystemName, nodes: NodeProcess[], written: Map<string, Doc>): Promise<CatchupResult> {
  const [a, b, c] = nodes;
  if (!a || !b || !c) throw new Error("three nodes needed");
  const code = await c.stop();
  log(system, `catch-up: C stopped with SIGTERM (exit ${code})`);
  const changed = new Map<string, Doc>();
  const ids = [...written.keys()].sort().filter((_, k) => k % 10 === 0).slice(0, CHANGED);
  let changedBytes = 0;
  for (const id of ids) {
    const prior = written.get(id);
    const body = alertBody(Number(prior?.seq ?? 0), 2);
    changed.set(id, body);
    changedBytes += Buffer.byteLength(JSON.stringify(body));
  }
  const tWrite = now();
  await runPool([...changed.entries()], WRITERS, async ([id, body]) => put(a, COLLECTION, id, body));
  log(system, `catch-up: ${changed.size} documents rewritten on A (PUT) in ${fmt(secs(now() - tWrite), 2)} s, ${changedBytes} bytes of JSON`);
  const onB = await pollUntilAll(b, changed, tWrite, CATCHUP_CAP_MS);
  log(system, `catch-up: B has the changes after ${onB.ms === null ? `> cap (${onB.remaining} missing)` : `${fmt(secs(onB.ms), 2)} s`}`);
  await Bun.sleep(2000);
  const peers0 = await Promise.all([a, b].map(byteCounters));
  const t0 = now();
  const c2 = await restart(system, c);
  nodes[2] = c2;
  const readySecs = secs(now() - t0);
  const connected = (async () => {
    const names = NAMES[system];
    while (now() - t0 < CATCHUP_CAP_MS) {
      if (connectedTo(c2, names[0] ?? "") && connectedTo(c2, names[1] ?? "")) return secs(now() - t0);
      await Bun.sleep(10);
    }
    return null;
  })();
  const done = await pollUntilAll(c2, changed, t0, CATCHUP_CAP_MS);
  const disconnects = c2.lines.filter((l) => /Peer disconnected/.test(l)).length;
  const cBytesAt = await byteCounters(c2);
  const connectedSecs = await connected;
  await Bun.sleep(SETTLE_MS);
  const cBytesSettled = await byteCounters(c2);
  // After the settle time, so that what C sent has been read (and counted) by busy peers too.
  const peersAt = await Promise.all([a, b].map(byteCounters));
  const peerDeltas = peersAt.map((p, i) => minus(p, peers0[i] as ByteCounters));
  const peersSent = peerDeltas.reduce((s, d) => s + d.wireSent, 0);
  const peersReceived = peerDeltas.reduce((s, d) => s + d.wireReceived, 0);
  const peersDelta = peersSent + peersReceived;
  const cBytes = cBytesAt.wireSent + cBytesAt.wireReceived;
  const settled = cBytesSettled.wireSent + cBytesSettled.wireReceived;
  const result: CatchupResult = {
    changed: changed.size,
    changedBytes,
    bPropagateSecs: onB.ms === null ? null : secs(onB.ms),
    readySecs,
    connectedSecs,
    catchupSecs: done.ms === null ? null : secs(done.ms),
    remaining: done.remaining,
    cBytes,
    cBytesSettled: settled,
    peersDelta,
    ratio: cBytes / changedBytes,
    ratioSettled: settled / changedBytes,
    load: loadAvg(),
  };
  log(
    system,
    `catch-up: C ready ${fmt(readySecs, 2)} s, connected ${fmt(connectedSecs, 2)} s, all ${changed.size} changes readable ` +
      `${done.ms === null ? `> cap ${secs(CATCHUP_CAP_MS)} s (${done.remaining} missing)` : `after ${fmt(result.catchupSecs, 2)} s`} from spawn; ` +
      `C logged ${disconnects} peer disconnect(s) meanwhile; C exchanged ${cBytes} bytes (sent ${cBytesAt.wireSent} + received ${cBytesAt.wireReceived}) = ${fmt(result.ratio, 2)}× the changed JSON, ` +
      `${settled} bytes ${secs(SETTLE_MS)} s later (${fmt(result.ratioSettled, 2)}×); A+B deltas by then: sent ${peersSent} + received ${peersReceived} = ${peersDelta}; load ${result.load}`,
  );
  return result;
}

// ---- one system ----------------------------------------------------------------------------------

interface SystemResults {
  latency: Record<string, LatencyResult>;
  bulk?: BulkResult;
  idle?: IdleResult;
  catchup?: CatchupResult;
  escapedErrors?: number;
  error?: string;
}

async function runSystem(system: SystemName): Promise<SystemResults> {
  const results: SystemResults = { latency: {} };
  log(system, `load average at start ${loadAvg()}`);
  let nodes: NodeProcess[] = [];
  const seen = new Set<NodeProcess>();
  try {
    // Line A–B–C: A and C are linked through B only.
    nodes = await startTrio(system, "line");
    for (const n of nodes) seen.add(n);
    const [la, , lc] = nodes;
    if (!la || !lc) throw new Error("line trio did not start");
    const names = NAMES[system];
    if (connectedTo(la, names[2] ?? "") || connectedTo(lc, names[0] ?? "")) log(system, "WARNING: A and C connected directly in the line topology");
    results.latency["line alerts"] = await latency(system, la, lc, COLLECTION, "line");
    if (connectedTo(la, names[2] ?? "") || connectedTo(lc, names[0] ?? "")) log(system, "WARNING: A and C connected directly in the line topology");
    await Promise.all(nodes.map((n) => n.stop()));
    await stopAllNodes();

    nodes = await startTrio(system, "mesh");
    for (const n of nodes) seen.add(n);
    const [a, , c] = nodes;
    if (!a || !c) throw new Error("mesh trio did not start");
    results.latency["mesh alerts"] = await latency(system, a, c, COLLECTION, "mesh");
    results.latency["mesh tracks"] = await latency(system, a, c, LATEST_ONLY_COLLECTION, "mesh-tracks");
    const written = new Map<string, Doc>();
    results.bulk = await bulk(system, nodes, written);
    results.idle = await idle(system, nodes, 3);
    try {
      results.catchup = await catchup(system, nodes, written);
    } finally {
      for (const n of nodes) seen.add(n);
    }
    await Promise.all(nodes.map((n) => n.stop()));
  } catch (err) {
    results.error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    log(system, `FAILED: ${results.error}`);
    dumpLogs(nodes);
  } finally {
    for (const n of nodes) seen.add(n);
    await stopAllNodes();
    // The automerge-repo peer logs exceptions that escaped its event handlers and carries on.
    const escaped = [...seen].flatMap((n) => n.stderrLines.filter((l) => /^(uncaught exception|unhandled rejection) #/.test(l)).map((l) => `${n.env.HOSTNAME}: ${l}`));
    results.escapedErrors = escaped.length;
    if (escaped.length) log(system, `${escaped.length} exception(s) escaped to the process handler, e.g. ${escaped.slice(0, 2).join(" || ").slice(0, 600)}`);
  }
  return results;
}

// ---- report --------------------------------------------------------------------------------------

function ratio(ours: number | null | undefined, theirs: number | null | undefined): string {
  if (ours === null || ours === undefined || theirs === null || theirs === undefined || !Number.isFinite(ours) || !Number.isFinite(theirs) || theirs === 0) return "n/a";
  return `${(ours / theirs).toFixed(3)}`;
}

function report(all: Partial<Record<SystemName, SystemResults>>): void {
  const ours = all.ours;
  const amr = all["automerge-repo"];
  type Row = [string, string, (r: SystemResults) => number | null | undefined, (r: SystemResults) => string];
  const lat = (key: string, field: keyof LatencyResult) => (r: SystemResults) => r.latency[key]?.[field] as number | undefined;
  const ms = (get: (r: SystemResults) => number | null | undefined) => (r: SystemResults) => fmt(get(r), 2);
  const rows: Row[] = [];
  for (const key of ["mesh alerts", "mesh tracks", "line alerts"]) {
    rows.push([`1. latency ${key} p50 (ms)`, key === "line alerts" ? "-" : "≤ 5", lat(key, "p50"), ms(lat(key, "p50"))]);
    rows.push([`1. latency ${key} p99 (ms)`, key === "line alerts" ? "-" : "≤ 20", lat(key, "p99"), ms(lat(key, "p99"))]);
  }
  const bulkSync = (r: SystemResults) => r.bulk?.syncSecs;
  rows.push([`2. ${DOCS} docs A→C (s)`, "≤ 5", bulkSync, (r) => (r.bulk ? (r.bulk.syncSecs === null ? `> ${secs(BULK_CAP_MS)} (${r.bulk.cReached} on C)` : fmt(r.bulk.syncSecs, 2)) : "n/a")]);
  rows.push([`2. ... PUTs on A alone (s)`, "-", (r) => r.bulk?.writeSecs, (r) => fmt(r.bulk?.writeSecs, 2)]);
  rows.push([`2. ... until B too (s)`, "-", (r) => r.bulk?.bSyncSecs, (r) => (r.bulk ? (r.bulk.bSyncSecs === null ? "> cap" : fmt(r.bulk.bSyncSecs, 2)) : "n/a")]);
  for (let i = 0; i < 3; i++) {
    rows.push([`3. idle CPU-s/min node ${"ABC"[i]}`, "≤ 0.2", (r) => r.idle?.cpuPerMin[i], (r) => fmt(r.idle?.cpuPerMin[i], 3)]);
  }
  rows.push([`3. idle KB/pair/min`, "≤ 5", (r) => (r.idle ? r.idle.bytesPerPairPerMin / 1024 : undefined), (r) => fmt(r.idle ? r.idle.bytesPerPairPerMin / 1024 : undefined, 2)]);
  rows.push([`4. catch-up ${CHANGED} changes (s)`, "≤ 2", (r) => r.catchup?.catchupSecs, (r) => (r.catchup ? (r.catchup.catchupSecs === null ? `> ${secs(CATCHUP_CAP_MS)} (${r.catchup.remaining} left)` : fmt(r.catchup.catchupSecs, 2)) : "n/a")]);
  rows.push([`4. ... C bytes / changed JSON`, "≤ 2", (r) => r.catchup?.ratio, (r) => fmt(r.catchup?.ratio, 2)]);
  rows.push([`4. ... same, +${secs(SETTLE_MS)} s settled`, "-", (r) => r.catchup?.ratioSettled, (r) => fmt(r.catchup?.ratioSettled, 2)]);
  for (let i = 0; i < 3; i++) {
    rows.push([`5. RSS node ${"ABC"[i]} in sync (MB)`, "-", (r) => r.idle?.rssBefore[i], (r) => fmt(r.idle?.rssBefore[i], 0)]);
  }
  const w = [38, 7, 22, 22, 8];
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(w[i] ?? 10)).join(" | ");
  console.log("");
  console.log(line(["workload", "goal", "ours (peat-mesh)", "automerge-repo", "ratio"]));
  console.log(w.map((n) => "-".repeat(n)).join("-|-"));
  for (const [name, goal, value, shown] of rows) {
    console.log(
      line([name, goal, ours ? (ours.error && value(ours) === undefined ? "failed" : shown(ours)) : "-", amr ? (amr.error && value(amr) === undefined ? "failed" : shown(amr)) : "-", ours && amr ? ratio(value(ours), value(amr)) : "-"]),
    );
  }
  console.log("ratio = ours ÷ automerge-repo (below 1: ours is faster / smaller)");
  for (const [system, r] of Object.entries(all)) {
    if (!r) continue;
    const names = r.idle?.names.join(", ") ?? "n/a";
    console.log(`${system}: byte counters used: ${names}`);
    if (r.idle) console.log(`${system}: idle window ${fmt(r.idle.windowSecs, 0)} s, bytes sent ${r.idle.sentTotal} / received ${r.idle.receivedTotal}; payload ${fmt(r.idle.payloadPerPairPerMin / 1024, 2)} KB/pair/min; RSS after idle ${r.idle.rssAfter.map((x) => fmt(x, 0)).join("/")} MB`);
    if (r.bulk) console.log(`${system}: bulk spot-check ${r.bulk.spot}; load ${r.bulk.load}`);
    if (r.catchup) {
      console.log(
        `${system}: catch-up changed JSON ${r.catchup.changedBytes} bytes (sum of the ${r.catchup.changed} PUT bodies' JSON sizes); C exchanged ${r.catchup.cBytes} ` +
          `(+settle ${r.catchup.cBytesSettled}); A+B sent+received deltas (settled) ${r.catchup.peersDelta}; C ready ${fmt(r.catchup.readySecs, 2)} s, connected ${fmt(r.catchup.connectedSecs, 2)} s`,
      );
    }
    if (r.escapedErrors) console.log(`${system}: ${r.escapedErrors} exception(s) escaped to a peer's process handler (logged, peer kept running)`);
    if (r.error) console.log(`${system}: FAILED: ${r.error}`);
  }
  console.log(
    "notes: latency = PUT sent on A → first GET on C returning it (C polled every " + POLL_MS + " ms once the PUT returned); " +
      "automerge-repo has no sync modes, so its 'tracks' run is the same as 'alerts'; " +
      "catch-up bytes = what the restarted C sent + received (each byte on a link counted once; the peers' deltas are the cross-check).",
  );
  console.log(`load average at end ${loadAvg()} (2 cores; other work may be running)`);
}

// ---- main ----------------------------------------------------------------------------------------

let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    if (interrupted) return;
    interrupted = true;
    console.error(`${signal}: stopping every node`);
    void stopAllNodes().finally(() => process.exit(130));
  });
}

const all: Partial<Record<SystemName, SystemResults>> = {};
try {
  console.log(
    `mesh-sync: systems ${SYSTEMS.join(", ")}; docs ${DOCS}, changed ${CHANGED}, latency writes ${LATENCY_WRITES} (+${LATENCY_WARMUP} warm-up), ` +
      `writers ${WRITERS}, poll ${POLL_MS} ms, idle ${IDLE_SECS} s; bun ${Bun.version}; load ${loadAvg()}`,
  );
  for (const system of SYSTEMS) all[system] = await runSystem(system);
  report(all);
} finally {
  await stopAllNodes();
}
if (Object.values(all).some((r) => r?.error)) process.exitCode = 1;
