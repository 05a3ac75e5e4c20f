#!/usr/bin/env bun
/**
 * A test peer process: a broker (signal + peer routes), a WebRtcTransport and a PeerConnector fed
 * by StaticDiscovery. Configured by the PEER_CONFIG environment variable (JSON, see PeerConfig).
 *
 * stdout: one JSON object per line. Events carry `ev` (ready, connected, disconnected, message,
 * sent, raw, stats, bench-rtt, bench-tput, error); log records (JSON log format) carry `level`.
 * stdin: one JSON command per line, `cmd` one of send, raw, stats, bench-rtt, bench-tput, exit.
 *
 * Message payloads used here start with a kind byte: D data (reported with its SHA-256),
 * E echo request (answered with R), B bulk (counted; the first one carries the count, answered
 * with A once all arrived).
 */
import { createHash } from "node:crypto";
import { Broker } from "../../broker/server.ts";
import { parseStaticPeer } from "../../config.ts";
import { StaticDiscovery } from "../../discovery/static.ts";
import { MeshEvents } from "../../events.ts";
import { FormationKey, decodeStrictBase64, deriveIdentity } from "../../identity/index.ts";
import { Logger, parseLogFilter } from "../../log.ts";
import { Metrics } from "../../metrics.ts";
import { patternBytes } from "./pattern.ts";
import { PeerConnector } from "../connector.ts";
import { peerRoutes, signalRoutes } from "../routes.ts";
import { WebRtcTransport } from "../webrtc.ts";

export interface PeerConfig {
  name: string;
  secret: string;
  brokerPort: number;
  icePort: number;
  /** PEAT_STATIC_PEERS entries: `name@host:port` or `host:port`. */
  peers: string[];
  pingMs?: number;
  udpMux?: boolean;
  logFilter?: string;
}

const config = JSON.parse(process.env.PEER_CONFIG ?? "{}") as PeerConfig;
const started = performance.now();

function emit(event: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

const seed = decodeStrictBase64(config.secret);
const identity = deriveIdentity(seed, config.name);
const log = new Logger("peat_mesh_node", { filter: parseLogFilter(config.logFilter ?? "info"), format: "json" });
const events = new MeshEvents();
const metrics = new Metrics();
let broker: Broker | undefined;
const transport = new WebRtcTransport({
  identity,
  formationKey: new FormationKey(seed),
  seed,
  config: { port: config.icePort, portRangeSize: 16, iceServers: [], bindAddress: "127.0.0.1", udpMux: config.udpMux ?? true },
  log,
  events,
  metrics,
  brokerPortOfSelf: () => broker?.port ?? config.brokerPort,
  tuning: { pingIntervalMs: config.pingMs ?? 500 },
});
const staticPeers = config.peers.map((entry) => {
  const parsed = parseStaticPeer(entry);
  if (!parsed) throw new Error(`bad peer entry ${entry}`);
  return parsed;
});
const discovery = new StaticDiscovery({ peers: staticPeers, log: log.child("peat_mesh::discovery::static") });
const connector = new PeerConnector({
  transport,
  discovery: [discovery],
  identity,
  log,
  backoff: { initialMs: 100, maxMs: 2000 },
  dialBackWaitMs: 3000,
});
broker = new Broker({
  port: config.brokerPort,
  bindAddress: "127.0.0.1",
  maxBodyBytes: 1024 * 1024,
  log: log.child("peat_mesh::broker"),
  node: { nodeId: identity.nodeId, deviceId: identity.deviceId, endpointId: identity.endpointId, version: "test", startedAt: () => 0 },
  readiness: () => [],
  routes: [signalRoutes(transport), peerRoutes(connector)],
});

let discoveryStartedAt = 0;
const echoWaiters = new Map<number, () => void>();
let bulkExpected = 0;
let bulkReceived = 0;
let bulkDone: (() => void) | undefined;

transport.onConnected((peer) => {
  emit({ ev: "connected", peer: peer.peerId, deviceId: peer.deviceId, addresses: peer.addresses, setupMs: performance.now() - discoveryStartedAt });
});
transport.onDisconnected((peer, reason) => emit({ ev: "disconnected", peer, reason }));
transport.onMessage((peer, bytes) => {
  const kind = String.fromCharCode(bytes[0] ?? 0);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (kind) {
    case "E": {
      const reply = bytes.slice();
      reply[0] = "R".charCodeAt(0);
      transport.send(peer, reply);
      return;
    }
    case "R":
      echoWaiters.get(view.getUint32(1))?.();
      return;
    case "B":
      if (bulkReceived === 0) bulkExpected = view.getUint32(1);
      bulkReceived++;
      if (bulkReceived === bulkExpected) {
        bulkReceived = 0;
        transport.send(peer, new Uint8Array(["A".charCodeAt(0)]));
      }
      return;
    case "A":
      bulkDone?.();
      return;
    default:
      emit({ ev: "message", peer, len: bytes.length, sha256: sha256(bytes) });
  }
});

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? Number.NaN;
}

async function benchRtt(peer: string, n: number, size: number): Promise<void> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const msg = new Uint8Array(Math.max(5, size));
    msg[0] = "E".charCodeAt(0);
    new DataView(msg.buffer).setUint32(1, i);
    const t = performance.now();
    await new Promise<void>((resolve) => {
      echoWaiters.set(i, resolve);
      transport.send(peer, msg);
    });
    echoWaiters.delete(i);
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  emit({ ev: "bench-rtt", n, size, p50: percentile(times, 0.5), p99: percentile(times, 0.99), max: times.at(-1) });
}

async function benchThroughput(peer: string, n: number, size: number): Promise<void> {
  const done = new Promise<void>((resolve) => {
    bulkDone = resolve;
  });
  const t = performance.now();
  for (let i = 0; i < n; i++) {
    const msg = new Uint8Array(size);
    msg[0] = "B".charCodeAt(0);
    new DataView(msg.buffer).setUint32(1, n);
    if (!transport.send(peer, msg)) throw new Error("send refused");
  }
  await done;
  const seconds = (performance.now() - t) / 1000;
  emit({ ev: "bench-tput", n, size, ms: seconds * 1000, msgPerSec: n / seconds, mibPerSec: (n * size) / seconds / 1048576 });
}

async function command(line: string): Promise<void> {
  const c = JSON.parse(line) as Record<string, unknown>;
  const peer = String(c.peer ?? "");
  switch (c.cmd) {
    case "send": {
      const body = patternBytes(Number(c.size) - 1, Number(c.seed ?? 1));
      const msg = new Uint8Array(body.length + 1);
      msg[0] = "D".charCodeAt(0);
      msg.set(body, 1);
      emit({ ev: "sent", peer, ok: transport.send(peer, msg), sha256: sha256(msg) });
      return;
    }
    case "raw":
      emit({ ev: "raw", peer, ok: transport.sendRawFrameForTesting(peer, Buffer.from(String(c.hex), "hex")) });
      return;
    case "stats":
      emit({ ev: "stats", ...transport.stats(), connectedPeers: transport.connectedPeers() });
      return;
    case "bench-rtt":
      await benchRtt(peer, Number(c.n ?? 1000), Number(c.size ?? 64));
      return;
    case "bench-tput":
      await benchThroughput(peer, Number(c.n ?? 1000), Number(c.size ?? 1024));
      return;
    case "exit":
      await shutdown();
  }
}

async function shutdown(): Promise<never> {
  await connector.stop();
  await discovery.stop();
  await transport.stop();
  await broker?.stop();
  process.exit(0);
}

process.on("SIGTERM", () => void shutdown());

await broker.start();
await transport.start();
await connector.start();
discoveryStartedAt = performance.now();
await discovery.start();
emit({ ev: "ready", name: config.name, brokerPort: broker.port, deviceId: identity.deviceId, startMs: performance.now() - started });

for await (const line of console) {
  if (line.trim() === "") continue;
  try {
    await command(line);
  } catch (err) {
    emit({ ev: "error", error: err instanceof Error ? err.message : String(err) });
  }
}
// stdin closed: the test that started us is gone.
await shutdown();
