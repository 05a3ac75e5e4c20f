/**
 * The soak driver, shared by `test/chaos/soak.test.ts` (bounded, in CI) and `scripts/soak.ts` (the
 * 30-minute run whose curve is in docs/reliability.md).
 *
 * Three real node processes (alpha, bravo, charlie) on loopback, a full mesh through static peers.
 * For the whole run:
 *  - a steady write load through A's and B's brokers (`writesPerSec`, split evenly), mixing PUT,
 *    PATCH and DELETE over a bounded set of documents in a LatestOnly (`tracks`) and a FullHistory
 *    (`alerts`) collection, so the data set reaches a steady state instead of growing: each writer
 *    owns its own ids, so it knows the last acknowledged state of every document (the model);
 *  - a latency probe: PUT a sequence number on A, poll B until it is readable, one probe at a time;
 *  - peers flapping: every `flapEverySecs` C is stopped, alternately gracefully (SIGTERM) and with
 *    SIGKILL, kept down for `downSecs` (the fault), and restarted on the same data directory;
 *  - a sampler every `sampleEverySecs`: VmRSS, open fds and CPU of each node process (a restarted C
 *    from its new pid), and the probe latencies since the previous sample.
 * At the end the load stops, C is brought up if it is down, and the driver waits for all three to
 * report the same `state_hash`; then every node's documents are compared with the model (a lost
 * acknowledged write is a document whose content differs from its last acknowledged write, or one
 * that exists though its last acknowledged operation deleted it, or the other way round).
 *
 * Verdicts (computed here, asserted by the test, printed by the script):
 *  - RSS growth of A and B from the end of warm-up to the end of the run is under
 *    `rssTolerancePct`: the median VmRSS over the first window after warm-up vs the median over the
 *    last window (medians, because a single sample lands anywhere on the GC sawtooth);
 *  - latency stable: p99 of the last window ≤ max(`latencyFactor` × p99 of the first window after
 *    warm-up, that p99 + `latencyFloorMs`). The floor keeps a low first p99 (a few ms) from turning
 *    scheduler noise on a shared 2-core machine into a failure; it is far below anything a leak or
 *    a backlog would produce;
 *  - no write failed, every probe became readable on B, every graceful stop exited 0, every restart
 *    of C rejoined the mesh, the three nodes converged and no acknowledged write was lost;
 *  - no sync feedback loop: A and B sent at most 10 sync batches per acknowledged write (about 1.5
 *    is normal; a loop between two nodes answering each other sends tens).
 */
import { readFileSync, readdirSync } from "node:fs";
import {
  type NodeProcess,
  freeTcpPort,
  startNode,
  tempDir,
  udpRangeStart,
  waitFor,
} from "../../harness/node-process.ts";
import { COLORS, type Marker, type Raster, encodePng, renderFigure } from "./png-plot.ts";
import { percentile } from "./common.ts";

// ---- options and results -----------------------------------------------------------------------

export interface SoakOptions {
  durationSecs: number;
  /** Total write rate over A and B together (the probe's writes come on top). */
  writesPerSec: number;
  flapEverySecs: number;
  /** How long C stays down at each flap (the fault itself, not a synchronisation). */
  downSecs: number;
  sampleEverySecs: number;
  /** Width of the verdict windows (first after warm-up, last). */
  windowSecs: number;
  warmupSecs: number;
  /** Documents per writer per collection (2 writers × 2 collections × this = the data set). */
  docsPerWriter: number;
  /** Pause between latency probes, and the interval at which B is polled during one. */
  probeGapMs: number;
  pollMs: number;
  rssTolerancePct: number;
  latencyFactor: number;
  latencyFloorMs: number;
  /** Deadline for the final convergence. */
  convergeTimeoutMs: number;
  log?: (line: string) => void;
}

/** Warm-up: the first 10 % of the run or 2 minutes, whichever is less. */
export const defaultWarmupSecs = (durationSecs: number): number => Math.min(durationSecs * 0.1, 120);

export function soakOptions(durationSecs: number, overrides: Partial<SoakOptions> = {}): SoakOptions {
  return {
    durationSecs,
    writesPerSec: 50,
    flapEverySecs: 30,
    downSecs: 3,
    sampleEverySecs: 5,
    // Verdict windows of 5 minutes (a sixth of a short run): a p99 over ~2,500 probes and a median
    // over 60 RSS samples, so one burst of another process's work on the shared machine, or one
    // GC cycle, does not decide a verdict on its own.
    windowSecs: Math.min(300, durationSecs / 6),
    warmupSecs: defaultWarmupSecs(durationSecs),
    docsPerWriter: 100,
    probeGapMs: 100,
    pollMs: 2,
    rssTolerancePct: 10,
    latencyFactor: 2,
    latencyFloorMs: 20,
    convergeTimeoutMs: 120_000,
    ...overrides,
  };
}

export interface ProcSample {
  pid: number;
  rssMb: number;
  fds: number;
  /** % of one core since the previous sample of the same pid; null on the first sample of a pid. */
  cpuPct: number | null;
}

export interface Sample {
  t: number; // seconds since the load started
  nodes: Record<NodeName, ProcSample | null>;
  probes: number;
  latP50: number | null;
  latP99: number | null;
  latMax: number | null;
  writesAcked: number;
  writeErrors: number;
  /** The machine's 1-minute load average (the machine is shared: this is the noise). */
  load1: number | null;
  events: string[];
}

export interface Flap {
  t: number; // when C was stopped, seconds since the load started
  kind: "SIGTERM" | "SIGKILL";
  exitCode: number | null;
  stopMs: number;
  downMs: number;
  /** Spawn to broker ready. */
  readyMs: number | null;
  /** Spawn to connected to both A and B (as C's /api/v1/peers says); null when it did not rejoin. */
  rejoinMs: number | null;
  error?: string;
}

export interface Probe {
  t: number; // completion time, seconds since the load started
  ms: number | null; // null: never became readable on B within the deadline
}

export interface RssVerdict {
  node: NodeName;
  startMb: number;
  endMb: number;
  growthPct: number;
  ok: boolean;
}

export interface Verdict {
  name: string;
  ok: boolean;
  detail: string;
}

export interface SoakResult {
  options: SoakOptions;
  startedAt: string;
  samples: Sample[];
  flaps: Flap[];
  probes: Probe[];
  writes: { attempted: number; acked: number; errors: number; errorExamples: string[]; byOp: Record<string, number>; missedSlots: number };
  rss: RssVerdict[];
  latency: { firstWindow: WindowStats; lastWindow: WindowStats; limitMs: number; ok: boolean };
  convergence: { ok: boolean; ms: number | null; stateHash: string | null; error?: string };
  /** Sync `batch` messages A and B sent over the run (from /metrics; C's restart with each flap). */
  syncBatches: { alpha: number | null; bravo: number | null; perAckedWrite: number | null };
  lostWrites: { checked: number; lost: number; examples: string[] };
  verdicts: Verdict[];
  ok: boolean;
  wallSecs: number;
}

export interface WindowStats {
  from: number;
  to: number;
  probes: number;
  p50: number | null;
  p99: number | null;
}

export type NodeName = "alpha" | "bravo" | "charlie";
const NAMES: readonly NodeName[] = ["alpha", "bravo", "charlie"];
const SHORT: Record<NodeName, string> = { alpha: "A", bravo: "B", charlie: "C" };

// ---- small helpers ------------------------------------------------------------------------------

const CLK_TCK = (() => {
  try {
    const n = Number(Bun.spawnSync(["getconf", "CLK_TCK"]).stdout.toString().trim());
    return Number.isFinite(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
})();

function readProc(pid: number): { rssKb: number; fds: number; ticks: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const rss = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    if (!rss) return null; // a zombie has no VmRSS
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the parenthesised command: state is field 3; utime 14, stime 15.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(rest[11]) + Number(rest[12]);
    const fds = readdirSync(`/proc/${pid}/fd`).length;
    return { rssKb: Number(rss[1]), fds, ticks };
  } catch {
    return null;
  }
}

function readLoad1(): number | null {
  try {
    return Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]);
  } catch {
    return null;
  }
}

function median(values: readonly number[]): number | null {
  return percentile([...values].sort((a, b) => a - b), 50);
}

const round = (v: number | null, digits = 1): number | null => (v === null ? null : Number(v.toFixed(digits)));

const rand = (n: number) => Math.floor(Math.random() * n);

function pad(n: number): string {
  // A steady payload size; content varies so every write is a real change.
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  let s = "";
  for (let i = 0; i < n; i++) s += alphabet[rand(alphabet.length)];
  return s;
}

type Json = Record<string, unknown>;

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

function canonical(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.keys(v as Json).sort().map((k) => [k, canonical((v as Json)[k])]));
  }
  return v;
}

// ---- the mesh -----------------------------------------------------------------------------------

interface Spec {
  name: NodeName;
  port: number;
  dataDir: string;
  peers: string;
}

function meshSpecs(): Spec[] {
  const ports = Object.fromEntries(NAMES.map((n) => [n, freeTcpPort()])) as Record<NodeName, number>;
  return NAMES.map((name) => ({
    name,
    port: ports[name],
    dataDir: tempDir(`peat-soak-${name}-`),
    peers: NAMES.filter((p) => p !== name).map((p) => `${p}@127.0.0.1:${ports[p]}`).join(","),
  }));
}

function launch(spec: Spec): Promise<NodeProcess> {
  return startNode({
    env: {
      HOSTNAME: spec.name,
      PEAT_BROKER_PORT: String(spec.port),
      PEAT_DATA_DIR: spec.dataDir,
      PEAT_STATIC_PEERS: spec.peers,
      PEAT_SYNC_BIND: "127.0.0.1",
      PEAT_IROH_BIND_PORT: String(udpRangeStart()),
      // INFO only: the driver keeps a bounded tail of each node's log, not a debug stream.
      RUST_LOG: "info",
    },
    readyTimeoutMs: 60_000,
  });
}

async function connectedPeers(n: NodeProcess): Promise<string[]> {
  const { body } = await n.json<{ peers: { id: string; connected: boolean }[] }>("/api/v1/peers");
  return body.peers.filter((p) => p.connected).map((p) => p.id).sort();
}

async function stateHash(n: NodeProcess): Promise<string> {
  return (await n.json<{ state_hash: string }>("/api/v1/sync/state")).body.state_hash;
}

async function listAll(n: NodeProcess, collection: string): Promise<Map<string, Json>> {
  const out = new Map<string, Json>();
  let after: string | null = null;
  for (;;) {
    const q: string = after ? `&after=${encodeURIComponent(after)}` : "";
    const { status, body } = await n.json<{ documents: Json[]; next_after: string | null }>(`/api/v1/documents/${collection}?limit=1000${q}`);
    if (status !== 200) throw new Error(`listing ${collection} on ${n.env.HOSTNAME}: HTTP ${status}`);
    for (const d of body.documents) {
      const { _id, ...rest } = d;
      out.set(String(_id), rest);
    }
    if (!body.next_after) return out;
    after = body.next_after;
  }
}

/** Keeps only the tail of a node's captured log (the driver runs for half an hour). */
function trimLog(n: NodeProcess | undefined): void {
  for (const lines of [n?.lines, n?.stderrLines]) if (lines && lines.length > 4000) lines.splice(0, lines.length - 2000);
}

// ---- the run ------------------------------------------------------------------------------------

const COLLECTIONS = ["tracks", "alerts"] as const; // LatestOnly, FullHistory
const MAX_BATCHES_PER_WRITE = 10;
const PROBE_COLLECTION = "beacons"; // LatestOnly
const PROBE_SLOTS = 16;

export async function runSoak(opts: SoakOptions): Promise<SoakResult> {
  const log = opts.log ?? (() => {});
  const wallStart = performance.now();
  const startedAt = new Date().toISOString();
  const specs = meshSpecs();
  const nodes = {} as Record<NodeName, NodeProcess | undefined>;
  const samples: Sample[] = [];
  const flaps: Flap[] = [];
  const probes: Probe[] = [];
  const writes = { attempted: 0, acked: 0, errors: 0, errorExamples: [] as string[], byOp: {} as Record<string, number>, missedSlots: 0 };
  /** key `collection/id` → last acknowledged content, null once deleted, absent when never written. */
  const model = new Map<string, Json | null>();
  /** Keys whose last write failed: their state is unknown and excluded from the content check. */
  const uncertain = new Set<string>();
  let stopping = false;
  let t0 = 0;
  const now = () => (performance.now() - t0) / 1000;
  let pendingEvents: string[] = [];
  let acksSinceSample = 0;
  let errorsSinceSample = 0;

  try {
    const started = await Promise.all(specs.map(launch));
    NAMES.forEach((n, i) => (nodes[n] = started[i]));
    await waitFor(
      async () => (await Promise.all(NAMES.map((n) => connectedPeers(nodes[n] as NodeProcess)))).every((p) => p.length === 2),
      60_000,
      "a full mesh of alpha, bravo and charlie",
      100,
    );
    log(`mesh up: ${NAMES.map((n) => `${n} pid ${nodes[n]?.pid} broker :${nodes[n]?.brokerPort}`).join(", ")}`);
    t0 = performance.now();

    // ---- the write load
    const writer = async (name: "alpha" | "bravo", rate: number) => {
      const interval = 1000 / rate;
      const keys = COLLECTIONS.flatMap((c) => Array.from({ length: opts.docsPerWriter }, (_, i) => `${c}/${name[0]}-${i}`));
      let slot = 0;
      let seq = 0;
      while (!stopping) {
        const due = t0 + slot * interval;
        const wait = due - performance.now();
        if (wait > 0) await Bun.sleep(wait); // pacing of the load, not a synchronisation
        else if (-wait > 1000) {
          // More than a second behind (a stalled event loop): skip the backlog rather than burst.
          const skip = Math.floor(-wait / interval);
          writes.missedSlots += skip;
          slot += skip;
        }
        slot++;
        if (stopping) break;
        const key = keys[rand(keys.length)] as string;
        const [collection, id] = key.split("/") as [string, string];
        const prev = model.get(key);
        const r = Math.random();
        seq++;
        let op: "PUT" | "PATCH" | "DELETE";
        let body: Json | undefined;
        let next: Json | null;
        if (!prev || uncertain.has(key)) {
          op = "PUT";
          body = { writer: name, seq, v: rand(1e6), pad: pad(96) };
          next = body;
        } else if (r < 0.55) {
          op = "PATCH";
          body = { seq, v: rand(1e6), [`f${rand(4)}`]: rand(1000) };
          next = { ...prev, ...body };
        } else if (r < 0.85) {
          op = "PUT";
          body = { writer: name, seq, v: rand(1e6), pad: pad(96) };
          next = body;
        } else {
          op = "DELETE";
          next = null;
        }
        writes.attempted++;
        writes.byOp[op] = (writes.byOp[op] ?? 0) + 1;
        try {
          const node = nodes[name] as NodeProcess;
          const res = await node.fetch(`/api/v1/documents/${collection}/${id}`, {
            method: op,
            ...(body ? { body: JSON.stringify(body), headers: { "content-type": "application/json" } } : {}),
          });
          await res.arrayBuffer();
          if (res.status >= 200 && res.status < 300) {
            model.set(key, next);
            uncertain.delete(key);
            writes.acked++;
            acksSinceSample++;
          } else {
            throw new Error(`${op} ${key} on ${name}: HTTP ${res.status}`);
          }
        } catch (err) {
          uncertain.add(key);
          writes.errors++;
          errorsSinceSample++;
          if (writes.errorExamples.length < 10) writes.errorExamples.push(err instanceof Error ? err.message : String(err));
        }
      }
    };

    // ---- the latency probe: write on A, poll B until readable
    const prober = async () => {
      let seq = 0;
      while (!stopping) {
        seq++;
        const id = `probe-${seq % PROBE_SLOTS}`;
        const a = nodes.alpha as NodeProcess;
        const b = nodes.bravo as NodeProcess;
        const start = performance.now();
        let ms: number | null = null;
        try {
          const res = await a.fetch(`/api/v1/documents/${PROBE_COLLECTION}/${id}`, { method: "PUT", body: JSON.stringify({ seq }) });
          await res.arrayBuffer();
          if (res.status >= 300) throw new Error(`probe PUT: HTTP ${res.status}`);
          await waitFor(
            async () => {
              const r = await b.fetch(`/api/v1/documents/${PROBE_COLLECTION}/${id}`);
              if (r.status !== 200) {
                await r.arrayBuffer();
                return false;
              }
              return ((await r.json()) as { document: { seq?: number } }).document.seq === seq;
            },
            15_000,
            `probe ${seq} readable on bravo`,
            opts.pollMs,
          );
          ms = performance.now() - start;
        } catch (err) {
          if (!stopping) log(`probe ${seq} failed: ${err instanceof Error ? err.message : String(err)}`);
        }
        if (stopping && ms === null) break; // cut short by the end of the run: not a lost probe
        probes.push({ t: now(), ms });
        await Bun.sleep(opts.probeGapMs); // pacing
      }
    };

    // ---- the flapping peer
    let flapBusy: Promise<void> = Promise.resolve();
    const flapOnce = async (kind: Flap["kind"]) => {
      const spec = specs[2] as Spec;
      const c = nodes.charlie as NodeProcess;
      const flap: Flap = { t: now(), kind, exitCode: null, stopMs: 0, downMs: 0, readyMs: null, rejoinMs: null };
      pendingEvents.push(`stop C (${kind})`);
      const stopStart = performance.now();
      if (kind === "SIGTERM") flap.exitCode = await c.stop(10_000);
      else {
        await c.kill();
        flap.exitCode = c.proc.exitCode;
      }
      flap.stopMs = Math.round(performance.now() - stopStart);
      nodes.charlie = undefined;
      await Bun.sleep(opts.downSecs * 1000); // the fault: C stays down
      const spawnAt = performance.now();
      flap.downMs = Math.round(spawnAt - stopStart);
      try {
        const c2 = await launch(spec);
        nodes.charlie = c2;
        flap.readyMs = Math.round(performance.now() - spawnAt);
        pendingEvents.push("C up");
        await waitFor(async () => (await connectedPeers(c2)).length === 2, 60_000, "charlie to rejoin alpha and bravo", 50);
        flap.rejoinMs = Math.round(performance.now() - spawnAt);
      } catch (err) {
        flap.error = err instanceof Error ? err.message : String(err);
        log(`flap at ${flap.t.toFixed(0)} s: ${flap.error}`);
      }
      flaps.push(flap);
      log(`flap ${flaps.length} at ${flap.t.toFixed(0)} s: ${kind}, exit ${flap.exitCode}, down ${flap.downMs} ms, ready ${flap.readyMs} ms, rejoined ${flap.rejoinMs} ms`);
    };
    const flapper = async () => {
      let k = 0;
      for (;;) {
        const due = t0 + (k + 1) * opts.flapEverySecs * 1000;
        // The last flap must leave C time to come back before the run ends.
        if (due > t0 + (opts.durationSecs - opts.downSecs - 5) * 1000) return;
        while (!stopping && performance.now() < due) await Bun.sleep(Math.min(250, due - performance.now()));
        if (stopping) return;
        flapBusy = flapOnce(k % 2 === 0 ? "SIGTERM" : "SIGKILL");
        await flapBusy;
        k++;
        if (nodes.charlie === undefined) return; // C failed to come back: recorded, stop flapping
      }
    };

    // ---- the sampler
    const lastTicks = new Map<number, { ticks: number; at: number }>();
    const sampleNow = () => {
      const t = now();
      const row = {} as Record<NodeName, ProcSample | null>;
      for (const name of NAMES) {
        const n = nodes[name];
        const p = n && n.proc.exitCode === null ? readProc(n.pid) : null;
        if (!n || !p) {
          row[name] = null;
          continue;
        }
        const prev = lastTicks.get(n.pid);
        const at = performance.now();
        const cpuPct = prev ? ((p.ticks - prev.ticks) / CLK_TCK / ((at - prev.at) / 1000)) * 100 : null;
        lastTicks.set(n.pid, { ticks: p.ticks, at });
        row[name] = { pid: n.pid, rssMb: p.rssKb / 1024, fds: p.fds, cpuPct };
        trimLog(n);
      }
      const since = samples.at(-1)?.t ?? 0;
      const window = probes.filter((p) => p.t > since && p.t <= t && p.ms !== null).map((p) => p.ms as number).sort((a, b) => a - b);
      samples.push({
        t,
        nodes: row,
        probes: window.length,
        latP50: percentile(window, 50),
        latP99: percentile(window, 99),
        latMax: window.at(-1) ?? null,
        writesAcked: acksSinceSample,
        writeErrors: errorsSinceSample,
        load1: readLoad1(),
        events: pendingEvents,
      });
      acksSinceSample = 0;
      errorsSinceSample = 0;
      pendingEvents = [];
    };
    const sampler = async () => {
      sampleNow();
      let k = 1;
      while (!stopping) {
        const due = t0 + k * opts.sampleEverySecs * 1000;
        while (!stopping && performance.now() < due) await Bun.sleep(Math.min(250, due - performance.now()));
        if (stopping) break;
        sampleNow();
        k++;
        if (k % 12 === 0) {
          const s = samples.at(-1) as Sample;
          log(
            `t=${s.t.toFixed(0)} s rss ${NAMES.map((n) => `${SHORT[n]} ${s.nodes[n]?.rssMb.toFixed(0) ?? "-"}`).join(" ")} MB, ` +
              `latency p50 ${s.latP50?.toFixed(1) ?? "-"} p99 ${s.latP99?.toFixed(1) ?? "-"} ms, writes ${writes.acked}/${writes.attempted}, errors ${writes.errors}`,
          );
        }
      }
    };

    const loops = [writer("alpha", opts.writesPerSec / 2), writer("bravo", opts.writesPerSec / 2), prober(), sampler()];
    const flapLoop = flapper();
    while (performance.now() < t0 + opts.durationSecs * 1000) await Bun.sleep(Math.min(500, t0 + opts.durationSecs * 1000 - performance.now()));
    sampleNow(); // the closing sample, at the end of the load
    stopping = true;
    await Promise.all(loops);
    await flapLoop;
    await flapBusy;
    log(`load stopped at ${now().toFixed(1)} s: ${writes.acked} acknowledged writes, ${writes.errors} errors, ${flaps.length} flaps`);

    // ---- convergence and the content check
    const convergence: SoakResult["convergence"] = { ok: false, ms: null, stateHash: null };
    const lostWrites = { checked: 0, lost: 0, examples: [] as string[] };
    try {
      if (!nodes.charlie) nodes.charlie = await launch(specs[2] as Spec);
      const convergeStart = performance.now();
      const hash = await waitFor(
        async () => {
          const hashes = await Promise.all(NAMES.map((n) => stateHash(nodes[n] as NodeProcess)));
          return hashes.every((h) => h === hashes[0]) ? hashes[0] : undefined;
        },
        opts.convergeTimeoutMs,
        "equal state_hash on alpha, bravo and charlie",
        100,
      );
      convergence.ok = true;
      convergence.ms = Math.round(performance.now() - convergeStart);
      convergence.stateHash = hash ?? null;
    } catch (err) {
      convergence.error = err instanceof Error ? err.message : String(err);
    }
    for (const name of NAMES) {
      const n = nodes[name];
      if (!n) continue;
      for (const collection of COLLECTIONS) {
        const docs = await listAll(n, collection);
        for (const [key, expected] of model) {
          if (!key.startsWith(`${collection}/`) || uncertain.has(key)) continue;
          const id = key.slice(collection.length + 1);
          lostWrites.checked++;
          const actual = docs.get(id);
          const ok = expected === null ? actual === undefined : actual !== undefined && sameJson(actual, expected);
          if (!ok) {
            lostWrites.lost++;
            if (lostWrites.examples.length < 10) {
              lostWrites.examples.push(`${name} ${key}: expected ${JSON.stringify(expected)?.slice(0, 120)}, found ${JSON.stringify(actual)?.slice(0, 120)}`);
            }
          }
        }
      }
    }

    const batchesOf = async (n: NodeProcess | undefined) => {
      try {
        const text = await (await (n as NodeProcess).fetch("/metrics")).text();
        const m = /^peat_sync_messages_sent_total\{type="batch"\} (\d+)/m.exec(text);
        return m ? Number(m[1]) : null;
      } catch {
        return null;
      }
    };
    const [ba, bb] = [await batchesOf(nodes.alpha), await batchesOf(nodes.bravo)];
    const syncBatches = {
      alpha: ba,
      bravo: bb,
      perAckedWrite: ba === null || bb === null || writes.acked === 0 ? null : round((ba + bb) / 2 / writes.acked, 2),
    };

    return evaluate(opts, startedAt, samples, flaps, probes, writes, convergence, syncBatches, lostWrites, (performance.now() - wallStart) / 1000);
  } finally {
    stopping = true;
    await Promise.all(NAMES.map((n) => nodes[n]?.stop(10_000)));
  }
}

// ---- verdicts -----------------------------------------------------------------------------------

function windowStats(probes: readonly Probe[], from: number, to: number): WindowStats {
  const ms = probes.filter((p) => p.t > from && p.t <= to && p.ms !== null).map((p) => p.ms as number).sort((a, b) => a - b);
  return { from, to, probes: ms.length, p50: round(percentile(ms, 50), 2), p99: round(percentile(ms, 99), 2) };
}

function evaluate(
  opts: SoakOptions,
  startedAt: string,
  samples: Sample[],
  flaps: Flap[],
  probes: Probe[],
  writes: SoakResult["writes"],
  convergence: SoakResult["convergence"],
  syncBatches: SoakResult["syncBatches"],
  lostWrites: SoakResult["lostWrites"],
  wallSecs: number,
): SoakResult {
  const end = samples.at(-1)?.t ?? opts.durationSecs;
  const w = Math.min(opts.windowSecs, (end - opts.warmupSecs) / 2);
  const firstFrom = opts.warmupSecs;
  const lastFrom = end - w;

  const rss: RssVerdict[] = (["alpha", "bravo"] as const).map((node) => {
    const inWindow = (from: number, to: number) =>
      samples.filter((s) => s.t >= from && s.t <= to && s.nodes[node]).map((s) => (s.nodes[node] as ProcSample).rssMb);
    const startMb = median(inWindow(firstFrom, firstFrom + w)) ?? Number.NaN;
    const endMb = median(inWindow(lastFrom, end)) ?? Number.NaN;
    const growthPct = ((endMb - startMb) / startMb) * 100;
    return { node, startMb: round(startMb, 1) as number, endMb: round(endMb, 1) as number, growthPct: round(growthPct, 2) as number, ok: growthPct < opts.rssTolerancePct };
  });

  const firstWindow = windowStats(probes, firstFrom, firstFrom + w);
  const lastWindow = windowStats(probes, lastFrom, end);
  const limitMs = firstWindow.p99 === null ? Number.NaN : Math.max(opts.latencyFactor * firstWindow.p99, firstWindow.p99 + opts.latencyFloorMs);
  const latencyOk = firstWindow.p99 !== null && lastWindow.p99 !== null && lastWindow.p99 <= limitMs;

  const lostProbes = probes.filter((p) => p.ms === null).length;
  const gracefulBad = flaps.filter((f) => f.kind === "SIGTERM" && f.exitCode !== 0);
  const notRejoined = flaps.filter((f) => f.rejoinMs === null);
  const verdicts: Verdict[] = [
    ...rss.map((r) => ({
      name: `rss ${r.node}`,
      ok: r.ok,
      detail: `${r.startMb} MB → ${r.endMb} MB (${r.growthPct >= 0 ? "+" : ""}${r.growthPct} %), limit < ${opts.rssTolerancePct} %`,
    })),
    {
      name: "latency stable",
      ok: latencyOk,
      detail: `p99 first window ${firstWindow.p99} ms, last window ${lastWindow.p99} ms, limit ${round(limitMs, 2)} ms`,
    },
    { name: "no write failed", ok: writes.errors === 0, detail: `${writes.errors} of ${writes.attempted} failed ${writes.errorExamples.slice(0, 3).join("; ")}` },
    { name: "every probe readable on B", ok: lostProbes === 0 && probes.length > 0, detail: `${lostProbes} of ${probes.length} probes never readable` },
    { name: "C flapped", ok: flaps.length > 0, detail: `${flaps.length} flaps` },
    { name: "graceful stops exit 0", ok: gracefulBad.length === 0, detail: gracefulBad.map((f) => `at ${f.t.toFixed(0)} s: exit ${f.exitCode}`).join(", ") || "all 0" },
    { name: "every restart of C rejoined", ok: notRejoined.length === 0, detail: notRejoined.map((f) => `at ${f.t.toFixed(0)} s: ${f.error}`).join(", ") || "all rejoined" },
    {
      // A healthy node sends about one or two batches per write (the push, an answer, a forward);
      // the feedback loop this soak once caught sent about seventy.
      name: "no sync feedback loop",
      ok: syncBatches.perAckedWrite !== null && syncBatches.perAckedWrite <= MAX_BATCHES_PER_WRITE,
      detail: `${syncBatches.perAckedWrite} sync batches sent per node per acknowledged write (A ${syncBatches.alpha}, B ${syncBatches.bravo}), limit ${MAX_BATCHES_PER_WRITE}`,
    },
    { name: "converged", ok: convergence.ok, detail: convergence.ok ? `equal state_hash after ${convergence.ms} ms` : (convergence.error ?? "") },
    {
      name: "no lost acknowledged writes",
      ok: lostWrites.lost === 0 && lostWrites.checked > 0,
      detail: `${lostWrites.lost} of ${lostWrites.checked} document checks differ ${lostWrites.examples.slice(0, 3).join("; ")}`,
    },
  ];
  return {
    options: opts,
    startedAt,
    samples,
    flaps,
    probes,
    writes,
    rss,
    latency: { firstWindow, lastWindow, limitMs: round(limitMs, 2) as number, ok: latencyOk },
    convergence,
    syncBatches,
    lostWrites,
    verdicts,
    ok: verdicts.every((v) => v.ok),
    wallSecs: round(wallSecs, 1) as number,
  };
}

/** The figures for the CHAOS-FIGURES line and docs/reliability.md. */
export function soakFigures(r: SoakResult): Record<string, unknown> {
  const rssOf = (node: NodeName) => {
    const values = r.samples.map((s) => s.nodes[node]?.rssMb).filter((v): v is number => v !== undefined);
    return { min_mb: round(Math.min(...values), 1), max_mb: round(Math.max(...values), 1) };
  };
  /** Least-squares slope of RSS after warm-up, MB per minute: the leak signal as a rate. */
  const slopeOf = (node: NodeName) => {
    const pts = r.samples.filter((s) => s.t >= r.options.warmupSecs && s.nodes[node]).map((s) => [s.t / 60, (s.nodes[node] as ProcSample).rssMb] as const);
    if (pts.length < 3) return null;
    const mx = pts.reduce((a, p) => a + p[0], 0) / pts.length;
    const my = pts.reduce((a, p) => a + p[1], 0) / pts.length;
    const sxx = pts.reduce((a, p) => a + (p[0] - mx) ** 2, 0);
    return sxx > 0 ? round(pts.reduce((a, p) => a + (p[0] - mx) * (p[1] - my), 0) / sxx, 3) : null;
  };
  const all = r.probes.filter((p) => p.ms !== null).map((p) => p.ms as number).sort((a, b) => a - b);
  const rejoin = r.flaps.map((f) => f.rejoinMs).filter((v): v is number => v !== null).sort((a, b) => a - b);
  const loadSecs = r.samples.at(-1)?.t ?? r.options.durationSecs;
  return {
    duration_s: round(loadSecs, 1),
    wall_s: r.wallSecs,
    warmup_s: r.options.warmupSecs,
    window_s: round(r.latency.firstWindow.to - r.latency.firstWindow.from, 1),
    writes_per_s_target: r.options.writesPerSec,
    writes_per_s_achieved: round(r.writes.acked / loadSecs, 1),
    writes_attempted: r.writes.attempted,
    writes_acked: r.writes.acked,
    write_errors: r.writes.errors,
    writes_by_op: r.writes.byOp,
    missed_slots: r.writes.missedSlots,
    data_set_docs: 2 * COLLECTIONS.length * r.options.docsPerWriter,
    flaps: r.flaps.length,
    flaps_sigterm: r.flaps.filter((f) => f.kind === "SIGTERM").length,
    flaps_sigkill: r.flaps.filter((f) => f.kind === "SIGKILL").length,
    flap_every_s: r.options.flapEverySecs,
    down_s: r.options.downSecs,
    c_rejoin_ms_p50: round(percentile(rejoin, 50), 0),
    c_rejoin_ms_max: rejoin.at(-1) ?? null,
    rss: Object.fromEntries(r.rss.map((x) => [x.node, { start_mb: x.startMb, end_mb: x.endMb, growth_pct: x.growthPct }])),
    rss_range: { alpha: rssOf("alpha"), bravo: rssOf("bravo"), charlie: rssOf("charlie") },
    rss_slope_mb_per_min_after_warmup: { alpha: slopeOf("alpha"), bravo: slopeOf("bravo") },
    rss_tolerance_pct: r.options.rssTolerancePct,
    probes: r.probes.length,
    probes_lost: r.probes.filter((p) => p.ms === null).length,
    machine_load1_mean: round(r.samples.reduce((a, s) => a + (s.load1 ?? 0), 0) / Math.max(1, r.samples.length), 2),
    latency_ms_all: { p50: round(percentile(all, 50), 2), p99: round(percentile(all, 99), 2), max: round(all.at(-1) ?? null, 2) },
    latency_ms_first_window: { p50: r.latency.firstWindow.p50, p99: r.latency.firstWindow.p99, n: r.latency.firstWindow.probes },
    latency_ms_last_window: { p50: r.latency.lastWindow.p50, p99: r.latency.lastWindow.p99, n: r.latency.lastWindow.probes },
    latency_p99_limit_ms: r.latency.limitMs,
    sync_batches_sent: { alpha: r.syncBatches.alpha, bravo: r.syncBatches.bravo },
    sync_batches_per_node_per_write: r.syncBatches.perAckedWrite,
    converged: r.convergence.ok,
    converge_ms: r.convergence.ms,
    lost_writes: r.lostWrites.lost,
    doc_checks: r.lostWrites.checked,
    verdicts_failed: r.verdicts.filter((v) => !v.ok).map((v) => v.name),
  };
}

// ---- outputs ------------------------------------------------------------------------------------

export function soakCsv(r: SoakResult): string {
  const cols = [
    "t_s",
    ...NAMES.flatMap((n) => [`${SHORT[n].toLowerCase()}_pid`, `${SHORT[n].toLowerCase()}_rss_mb`, `${SHORT[n].toLowerCase()}_fds`, `${SHORT[n].toLowerCase()}_cpu_pct`]),
    "probes",
    "lat_p50_ms",
    "lat_p99_ms",
    "lat_max_ms",
    "writes_acked",
    "write_errors",
    "load1",
    "events",
  ];
  const cell = (v: number | string | null | undefined) => (v === null || v === undefined ? "" : String(v));
  const rows = r.samples.map((s) =>
    [
      s.t.toFixed(2),
      ...NAMES.flatMap((n) => {
        const p = s.nodes[n];
        return [cell(p?.pid), cell(p ? p.rssMb.toFixed(2) : null), cell(p?.fds), cell(p?.cpuPct === null || !p ? null : p.cpuPct.toFixed(1))];
      }),
      String(s.probes),
      cell(s.latP50 === null ? null : s.latP50.toFixed(2)),
      cell(s.latP99 === null ? null : s.latP99.toFixed(2)),
      cell(s.latMax === null ? null : s.latMax.toFixed(2)),
      String(s.writesAcked),
      String(s.writeErrors),
      cell(s.load1),
      s.events.length ? `"${s.events.join("; ")}"` : "",
    ].join(","),
  );
  return `${cols.join(",")}\n${rows.join("\n")}\n`;
}

/** The soak curve as a PNG file. */
export function soakPng(r: SoakPlotInput): Uint8Array {
  return encodePng(soakFigure(r));
}

/** What the plot needs: enough to re-draw it from soak.csv and soak.json alone. */
export type SoakPlotInput = Pick<SoakResult, "samples" | "options"> & { flaps: Pick<Flap, "t" | "kind">[] };

/**
 * Three panels sharing the time axis: RSS per node; write-on-A → readable-on-B latency p50 and p99
 * per sample interval (log scale, so p50 stays readable next to p99 spikes); the machine's 1-minute
 * load average (the machine is shared, so this is the noise). Flaps and the warm-up are marked.
 * Drawn only from what soak.csv holds, so `scripts/soak.ts --replot` re-draws the same picture.
 */
export function soakFigure(r: SoakPlotInput): Raster {
  const end = r.samples.at(-1)?.t ?? r.options.durationSecs;
  const minutes = end >= 300;
  const unit = minutes ? 60 : 1;
  const x = (t: number) => t / unit;
  const markers: Marker[] = r.flaps.map((f) =>
    f.kind === "SIGTERM" ? { x: x(f.t), color: COLORS.red, dash: [5, 4] } : { x: x(f.t), color: COLORS.purple, dash: [2, 3] },
  );
  const rssSeries = (node: NodeName, color: readonly [number, number, number]) => ({
    label: SHORT[node] + (node === "charlie" ? " (flapping)" : ""),
    color,
    points: r.samples.map((s) => [x(s.t), s.nodes[node]?.rssMb ?? null] as const),
  });
  const o = r.options;
  const latencies = r.samples.flatMap((s) => [s.latP50, s.latP99]).filter((v): v is number => v !== null && v > 0);
  const maxLatency = latencies.length > 0 ? Math.max(...latencies) : 10;
  return renderFigure({
    title: `SOAK: 3 NODES, ${o.writesPerSec} WRITES/S, C RESTARTED EVERY ${o.flapEverySecs} S (${r.flaps.length} FLAPS)`,
    xLabel: minutes ? "minutes since the load started" : "seconds since the load started",
    xMin: 0,
    xMax: x(end),
    bands: [{ x0: 0, x1: x(o.warmupSecs), color: COLORS.shade }],
    markers,
    legend: [
      { label: "warm-up", color: COLORS.shade, box: true },
      { label: "C stopped, SIGTERM", color: COLORS.red, dash: [5, 4] },
      { label: "C killed, SIGKILL", color: COLORS.purple, dash: [2, 3] },
    ],
    panels: [
      {
        title: `RSS (VmRSS, MB) per node, sampled every ${o.sampleEverySecs} s`,
        yLabel: "RSS MB",
        series: [rssSeries("alpha", COLORS.blue), rssSeries("bravo", COLORS.orange), rssSeries("charlie", COLORS.green)],
      },
      {
        title: `write on A -> readable on B, ms, log scale (p50 and p99 per ${o.sampleEverySecs} s)`,
        yLabel: "latency ms",
        yLog: true,
        yMin: 1,
        yMax: 10 ** Math.max(2, Math.ceil(Math.log10(maxLatency))),
        series: [
          { label: "p50", color: COLORS.blue, points: r.samples.map((s) => [x(s.t), s.latP50] as const) },
          { label: "p99", color: COLORS.red, points: r.samples.map((s) => [x(s.t), s.latP99] as const), thickness: 1 },
        ],
      },
      {
        title: "machine load (1-minute load average; the machine has 2 cores and is shared)",
        yLabel: "load",
        height: 150,
        series: [{ label: "load1", color: COLORS.grey, points: r.samples.map((s) => [x(s.t), s.load1] as const) }],
      },
    ],
  });
}

/** Reads back what `soakCsv` wrote (for --replot). */
export function parseSoakCsv(text: string): Sample[] {
  const [header, ...rows] = text.trim().split("\n");
  const cols = (header ?? "").split(",");
  const at = (name: string) => {
    const i = cols.indexOf(name);
    if (i < 0) throw new Error(`soak.csv has no column ${name}`);
    return i;
  };
  const num = (cells: string[], name: string): number | null => {
    const v = cells[at(name)];
    return v === undefined || v === "" ? null : Number(v);
  };
  return rows.map((row) => {
    const quoted = /"([^"]*)"\s*$/.exec(row);
    const cells = (quoted ? row.slice(0, quoted.index) : row).split(",");
    const nodes = {} as Record<NodeName, ProcSample | null>;
    for (const n of NAMES) {
      const p = SHORT[n].toLowerCase();
      const pid = num(cells, `${p}_pid`);
      const rss = num(cells, `${p}_rss_mb`);
      nodes[n] = pid === null || rss === null ? null : { pid, rssMb: rss, fds: num(cells, `${p}_fds`) ?? 0, cpuPct: num(cells, `${p}_cpu_pct`) };
    }
    return {
      t: num(cells, "t_s") ?? 0,
      nodes,
      probes: num(cells, "probes") ?? 0,
      latP50: num(cells, "lat_p50_ms"),
      latP99: num(cells, "lat_p99_ms"),
      latMax: num(cells, "lat_max_ms"),
      writesAcked: num(cells, "writes_acked") ?? 0,
      writeErrors: num(cells, "write_errors") ?? 0,
      load1: num(cells, "load1"),
      events: quoted ? (quoted[1] as string).split("; ") : [],
    };
  });
}

/** One line per verdict, for logs. */
export function formatVerdicts(r: SoakResult): string {
  return r.verdicts.map((v) => `${v.ok ? "PASS" : "FAIL"} ${v.name}: ${v.detail}`).join("\n");
}
