/**
 * Helpers for the hostile-input and storage-fault chaos tests (intruders, sync fuzz, broker fuzz,
 * disk): a seeded random source, process resource readings from /proc, Prometheus and sync-state
 * readers, raw HTTP over TCP (for requests fetch cannot express), tmpfs mounts with cleanup, and
 * an in-process formation member built from the project's own transport, for fuzzing a real node.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { Database } from "bun:sqlite";
import { Broker } from "../../../src/broker/server.ts";
import { parseStaticPeer } from "../../../src/config.ts";
import { StaticDiscovery } from "../../../src/discovery/static.ts";
import { MeshEvents } from "../../../src/events.ts";
import { FormationKey, decodeStrictBase64, deriveIdentity } from "../../../src/identity/index.ts";
import { silentLogger } from "../../../src/log.ts";
import { Metrics } from "../../../src/metrics.ts";
import { PeerConnector } from "../../../src/transport/connector.ts";
import { signalRoutes } from "../../../src/transport/routes.ts";
import { WebRtcTransport } from "../../../src/transport/webrtc.ts";
import { type NodeProcess, freeTcpPort, udpRangeStart } from "../../harness/node-process.ts";
import { type SyncState, envInt, printFigures, syncState } from "./common.ts";
export { type SyncState, envInt, printFigures, syncState } from "./common.ts";

// ---- counts and figures ---------------------------------------------------------------------------

/** The seed of this run's random choices: PEAT_CHAOS_SEED reproduces a run (printed in the figures). */
export function chaosSeed(): number {
  const raw = process.env.PEAT_CHAOS_SEED;
  if (raw !== undefined && raw !== "") return envInt("PEAT_CHAOS_SEED", 1) >>> 0;
  return (Math.random() * 2 ** 32) >>> 0;
}

/** A small seeded PRNG (mulberry32): the same seed gives the same fuzz inputs. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)] as T;
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = Math.floor(this.next() * 256);
    return out;
  }
  /** Picks a key of `weights` with probability proportional to its weight. */
  weighted<K extends string>(weights: Record<K, number>): K {
    const entries = Object.entries(weights) as [K, number][];
    let r = this.next() * entries.reduce((s, [, w]) => s + w, 0);
    for (const [k, w] of entries) {
      r -= w;
      if (r < 0) return k;
    }
    return (entries.at(-1) as [K, number])[0];
  }
}

// ---- process resources ----------------------------------------------------------------------------

export interface ProcStats {
  rssBytes: number;
  fds: number;
  threads: number;
}

export function procStats(pid: number): ProcStats {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? Number.NaN);
  return { rssBytes: field("VmRSS") * 1024, fds: readdirSync(`/proc/${pid}/fd`).length, threads: field("Threads") };
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export const mib = (bytes: number) => Math.round((bytes / 1048576) * 10) / 10;

// ---- node observation -----------------------------------------------------------------------------

/** Every sample of /metrics, keyed `name{labels}` exactly as rendered. */
export async function scrape(node: NodeProcess): Promise<Map<string, number>> {
  const text = await (await node.fetch("/metrics", { signal: AbortSignal.timeout(10_000) })).text();
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

/** Sum of every sample of `name` whose labels contain all of `labels` (`k="v"` text match). */
export function metricSum(samples: Map<string, number>, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const [key, value] of samples) {
    if (key !== name && !key.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, v]) => key.includes(`${k}="${v}"`))) sum += value;
  }
  return sum;
}

export async function healthy(node: NodeProcess): Promise<boolean> {
  try {
    const res = await node.fetch("/api/v1/health", { signal: AbortSignal.timeout(5000) });
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

export async function connectedPeers(node: NodeProcess): Promise<string[]> {
  const res = await node.fetch("/api/v1/peers", { signal: AbortSignal.timeout(10_000) });
  const body = (await res.json()) as { peers: { id: string; connected: boolean }[] };
  return body.peers.filter((p) => p.connected).map((p) => p.id).sort();
}

/** Log lines of `node` at `level` whose text matches `pattern`, from line `from` on. */
export function logLines(node: NodeProcess, level: "WARN" | "ERROR" | "INFO", pattern: RegExp, from = 0): string[] {
  return node.lines.slice(from).filter((l) => new RegExp(`\\b${level}\\b`).test(l.slice(0, 40)) && pattern.test(l));
}

/** Sum of the `suppressed=N` fields of throttled WARN lines (each stands for N more refusals). */
export function suppressedCount(lines: string[]): number {
  return lines.reduce((s, l) => s + Number(/\bsuppressed=(\d+)/.exec(l)?.[1] ?? 0), 0);
}

// ---- raw HTTP -------------------------------------------------------------------------------------

export interface RawResponse {
  /** 0 when the server sent nothing parseable. */
  status: number;
  headers: Record<string, string>;
  body: string;
  /** The server closed the connection (with or without an answer). */
  closed: boolean;
  timedOut: boolean;
  ms: number;
}

function parseRaw(buf: Buffer): { status: number; headers: Record<string, string>; body: string; complete: boolean } | undefined {
  const end = buf.indexOf("\r\n\r\n");
  if (end < 0) return undefined;
  const head = buf.subarray(0, end).toString("latin1").split("\r\n");
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head[0] ?? "")?.[1] ?? 0);
  const headers: Record<string, string> = {};
  for (const line of head.slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const body = buf.subarray(end + 4);
  const length = headers["content-length"] === undefined ? undefined : Number(headers["content-length"]);
  return { status, headers, body: body.toString("utf8"), complete: length !== undefined && body.length >= length };
}

/**
 * Sends `data` on a fresh TCP connection and reads one response (until the connection closes, a
 * whole Content-Length response has arrived, or `timeoutMs` passes).
 */
export async function rawHttp(port: number, data: Uint8Array | string, options: { host?: string; timeoutMs?: number } = {}): Promise<RawResponse> {
  const started = performance.now();
  const chunks: Buffer[] = [];
  const bytes = typeof data === "string" ? Buffer.from(data, "latin1") : data;
  return await new Promise<RawResponse>((resolve) => {
    let settled = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let socket: { end(): void } | undefined;
    const finish = (closed: boolean, timedOut: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const parsed = parseRaw(Buffer.concat(chunks));
      resolve({
        status: parsed?.status ?? 0,
        headers: parsed?.headers ?? {},
        body: parsed?.body ?? "",
        closed,
        timedOut,
        ms: performance.now() - started,
      });
      try {
        socket?.end();
      } catch {}
    };
    timer = setTimeout(() => finish(false, true), options.timeoutMs ?? 10_000);
    Bun.connect({
      hostname: options.host ?? "127.0.0.1",
      port,
      socket: {
        open(s) {
          socket = s;
          s.write(bytes);
        },
        data(_s, d) {
          chunks.push(Buffer.from(d));
          if (parseRaw(Buffer.concat(chunks))?.complete) finish(false, false);
        },
        close() {
          finish(true, false);
        },
        error() {
          finish(true, false);
        },
      },
    }).catch(() => finish(true, false));
  });
}

/** True when `body` is the broker's error shape `{"error": string, "status": <status>}`. */
export function isErrorBody(body: string, status: number): boolean {
  try {
    const parsed = JSON.parse(body) as { error?: unknown; status?: unknown };
    return typeof parsed.error === "string" && parsed.status === status;
  } catch {
    return false;
  }
}

// ---- signalling ---------------------------------------------------------------------------------------

/**
 * POSTs a body to a node's signalling endpoint from `localAddress` (any 127.0.0.0/8 address on
 * loopback), so that floods can come from many sources, each with its own rate-limit bucket.
 */
export function postSignal(port: number, body: string, localAddress = "127.0.0.1"): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(
      {
        host: "127.0.0.1",
        port,
        method: "POST",
        path: "/api/v1/signal",
        localAddress,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
        timeout: 15_000,
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => {
          text += c;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    request.on("error", reject);
    request.on("timeout", () => request.destroy(new Error("signalling request timed out")));
    request.end(body);
  });
}

export interface CapturedSignal {
  /** The request body exactly as the member sent it. */
  body: string;
  type: string;
  from: string;
  to: string;
  /** The target's answer. */
  status: number;
  reply: string;
  at: number;
}

/**
 * An HTTP relay in front of a node's broker that records every signalling request passing through
 * (members configured with the relay's port instead of the node's): real messages between real
 * members, captured on the way, for replaying later.
 */
export class SignalRecorder {
  readonly captured: CapturedSignal[] = [];
  private readonly server: ReturnType<typeof Bun.serve>;

  constructor(targetPort: number) {
    this.server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: async (req) => {
        const url = new URL(req.url);
        const body = req.method === "GET" || req.method === "HEAD" ? undefined : await req.text();
        const res = await fetch(`http://127.0.0.1:${targetPort}${url.pathname}${url.search}`, {
          method: req.method,
          headers: { "content-type": req.headers.get("content-type") ?? "application/json" },
          ...(body === undefined ? {} : { body }),
        });
        const reply = await res.text();
        if (url.pathname === "/api/v1/signal" && body !== undefined) {
          try {
            const m = JSON.parse(body) as { type: string; from: string; to: string };
            this.captured.push({ body, type: m.type, from: m.from, to: m.to, status: res.status, reply, at: Date.now() });
          } catch {}
        }
        return new Response(reply, { status: res.status, headers: { "content-type": res.headers.get("content-type") ?? "application/json" } });
      },
    });
  }

  get port(): number {
    return this.server.port as number;
  }

  stop(): void {
    this.server.stop(true);
  }
}

// ---- tmpfs ------------------------------------------------------------------------------------------

const mounts = new Set<string>();

export function tmpfsSkipReason(): string | undefined {
  if (process.platform !== "linux") return "tmpfs mounts need Linux";
  if (process.getuid?.() !== 0) return "mounting a tmpfs needs root";
  return undefined;
}

/** Mounts a tmpfs of `sizeBytes` at `dir` (created); unmounted by `unmountAll`. */
export function mountTmpfs(dir: string, sizeBytes: number): void {
  mkdirSync(dir, { recursive: true });
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeBytes},mode=0755`, "tmpfs", dir]);
  mounts.add(dir);
}

export function loopSkipReason(): string | undefined {
  if (tmpfsSkipReason()) return tmpfsSkipReason();
  if (!existsSync("/dev/loop-control")) return "no loop devices (/dev/loop-control missing)";
  try {
    execFileSync("sh", ["-c", "command -v mkfs.ext4 && command -v e2fsck && command -v losetup"], { stdio: "ignore" });
  } catch {
    return "mkfs.ext4, e2fsck or losetup missing (e2fsprogs, mount)";
  }
  return undefined;
}

const images = new Set<string>();

/**
 * A real ext4 filesystem of `sizeBytes` in an image file, loop-mounted at `dir` with
 * `errors=remount-ro` (what a node's volume usually has). Unmounted and deleted by `unmountAll`.
 */
export function mountExt4(dir: string, image: string, sizeBytes: number): void {
  mkdirSync(dir, { recursive: true });
  execFileSync("truncate", ["-s", String(sizeBytes), image]);
  images.add(image);
  execFileSync("mkfs.ext4", ["-q", "-F", image]);
  execFileSync("mount", ["-o", "loop,errors=remount-ro", image, dir]);
  mounts.add(dir);
}

/** Mounts an image again after `unmount` (and a check). */
export function remountExt4(dir: string, image: string): void {
  execFileSync("mount", ["-o", "loop,errors=remount-ro", image, dir]);
  mounts.add(dir);
}

/** Unmounts one mount made here (the loop device of an image is released with it). */
export function unmount(dir: string): void {
  execFileSync("umount", [dir]);
  mounts.delete(dir);
}

export function chattrSkipReason(): string | undefined {
  try {
    execFileSync("sh", ["-c", "command -v chattr"], { stdio: "ignore" });
    return undefined;
  } catch {
    return "chattr missing (e2fsprogs)";
  }
}

const immutable = new Set<string>();

/**
 * Sets or clears the immutable attribute (`chattr +i`): on ext4 it refuses writes even through
 * descriptors opened before, and even to root. Cleared again by `unmountAll`.
 */
export function setImmutable(paths: string[], on: boolean): void {
  execFileSync("chattr", [on ? "+i" : "-i", ...paths]);
  for (const p of paths) {
    if (on) immutable.add(p);
    else immutable.delete(p);
  }
}

/** `e2fsck -fy` of an unmounted image; returns its exit code (0: clean, 1: errors corrected). */
export function fsck(image: string): { code: number; output: string } {
  try {
    return { code: 0, output: execFileSync("e2fsck", ["-fy", image], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }) };
  } catch (err) {
    const e = err as { status?: number; stdout?: string };
    return { code: e.status ?? -1, output: e.stdout ?? "" };
  }
}

/** `mount -o remount,<options>` of a filesystem this module mounted. */
export function remount(dir: string, options: string): void {
  if (!mounts.has(dir)) throw new Error(`${dir} was not mounted here`);
  execFileSync("mount", ["-o", `remount,${options}`, dir]);
}

export function unmountAll(): void {
  if (immutable.size > 0) {
    try {
      execFileSync("chattr", ["-i", ...immutable]);
    } catch {}
    immutable.clear();
  }
  for (const dir of mounts) {
    try {
      execFileSync("umount", [dir]);
    } catch {
      // Busy (a node still running): lazily detach so nothing stays mounted after the run.
      try {
        execFileSync("umount", ["-l", dir]);
      } catch {}
    }
    mounts.delete(dir);
    if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  }
  for (const image of images) rmSync(image, { force: true });
  images.clear();
}

/** `PRAGMA integrity_check` of a stopped node's database. */
export function integrityCheck(dataDir: string): string {
  const db = new Database(`${dataDir}/automerge/peat.sqlite`, { readonly: true });
  try {
    return (db.query("PRAGMA integrity_check").get() as { integrity_check: string }).integrity_check;
  } finally {
    db.close();
  }
}

// ---- an in-process formation member -----------------------------------------------------------------

export interface MemberOptions {
  name: string;
  /** Base64 formation secret. */
  secret: string;
  /** Static peers `name@host:port`. */
  peers: string[];
  pingMs?: number;
}

/**
 * A formation member in the test process, built from the project's own WebRtcTransport,
 * PeerConnector, StaticDiscovery and signalling routes: it passes signalling and the formation
 * handshake exactly as a node does, and then lets the test put any bytes on the channel.
 */
export class Member {
  readonly transport: WebRtcTransport;
  readonly broker: Broker;
  readonly connector: PeerConnector;
  readonly discovery: StaticDiscovery;
  readonly deviceId: string;
  private started = false;

  constructor(readonly options: MemberOptions) {
    const seed = decodeStrictBase64(options.secret);
    const identity = deriveIdentity(seed, options.name);
    this.deviceId = identity.deviceId;
    const log = silentLogger();
    const brokerPort = freeTcpPort();
    this.transport = new WebRtcTransport({
      identity,
      formationKey: new FormationKey(seed),
      seed,
      config: { port: udpRangeStart(), portRangeSize: 16, iceServers: [], bindAddress: "127.0.0.1", udpMux: true },
      log,
      events: new MeshEvents(),
      metrics: new Metrics(),
      brokerPortOfSelf: () => this.broker.port,
      // The node's default: a peer silent for three intervals is dropped, and on a loaded machine a
      // node busy with a large message can be silent for seconds.
      tuning: { pingIntervalMs: options.pingMs ?? 5000 },
    });
    this.discovery = new StaticDiscovery({
      peers: options.peers.map((entry) => {
        const parsed = parseStaticPeer(entry);
        if (!parsed) throw new Error(`bad peer entry ${entry}`);
        return parsed;
      }),
      log,
    });
    this.connector = new PeerConnector({
      transport: this.transport,
      discovery: [this.discovery],
      identity,
      log,
      backoff: { initialMs: 20, maxMs: 200 },
      dialBackWaitMs: 3000,
    });
    this.broker = new Broker({
      port: brokerPort,
      bindAddress: "127.0.0.1",
      maxBodyBytes: 1024 * 1024,
      log,
      node: { nodeId: identity.nodeId, deviceId: identity.deviceId, endpointId: identity.endpointId, version: "test", startedAt: () => 0 },
      readiness: () => [],
      routes: [signalRoutes(this.transport)],
    });
  }

  async start(): Promise<void> {
    await this.broker.start();
    await this.transport.start();
    await this.connector.start();
    await this.discovery.start();
    this.started = true;
  }

  async stop(): Promise<void> {
    if (!this.started) return;
    this.started = false;
    await this.discovery.stop().catch(() => {});
    await this.connector.stop().catch(() => {});
    await this.transport.stop().catch(() => {});
    await this.broker.stop().catch(() => {});
  }
}
