/**
 * In-process WebRTC nodes for tests and measurements: a real transport behind a real broker on
 * 127.0.0.1, each on its own ICE port range.
 */
import { Broker } from "../../broker/server.ts";
import { MeshEvents } from "../../events.ts";
import { FormationKey, deriveIdentity } from "../../identity/index.ts";
import { type Logger, silentLogger } from "../../log.ts";
import { Metrics } from "../../metrics.ts";
import { signalRoutes } from "../routes.ts";
import { type TransportTuning, WebRtcTransport, type WebRtcTransportConfig } from "../webrtc.ts";

export const SEED = new Uint8Array(32).map((_, i) => i + 1);
let nextPort = 21000 + Math.floor(Math.random() * 400) * 16;

export interface TestNode {
  transport: WebRtcTransport;
  broker: Broker;
  events: MeshEvents;
  metrics: Metrics;
  nodeId: string;
  address: { host: string; brokerPort: number };
  stop(): Promise<void>;
}

export async function startNode(nodeId: string, options: { seed?: Uint8Array; tuning?: Partial<TransportTuning>; log?: Logger; config?: Partial<WebRtcTransportConfig>; brokerPort?: number } = {}): Promise<TestNode> {
  const seed = options.seed ?? SEED;
  const identity = deriveIdentity(seed, nodeId);
  const events = new MeshEvents();
  const metrics = new Metrics();
  let broker: Broker | undefined;
  const port = nextPort;
  nextPort += 16;
  const transport = new WebRtcTransport({
    identity,
    formationKey: new FormationKey(seed),
    seed,
    config: { port, portRangeSize: 16, iceServers: [], bindAddress: "127.0.0.1", ...options.config },
    log: options.log ?? silentLogger(),
    events,
    metrics,
    brokerPortOfSelf: () => broker?.port ?? 0,
    ...(options.tuning ? { tuning: options.tuning } : {}),
  });
  broker = new Broker({
    port: options.brokerPort ?? 0,
    bindAddress: "127.0.0.1",
    maxBodyBytes: 1024 * 1024,
    log: silentLogger(),
    node: { nodeId, deviceId: identity.deviceId, endpointId: identity.endpointId, version: "test", startedAt: () => 0 },
    readiness: () => [],
    routes: [signalRoutes(transport)],
  });
  await broker.start();
  await transport.start();
  const b = broker;
  return {
    transport,
    broker: b,
    events,
    metrics,
    nodeId,
    address: { host: "127.0.0.1", brokerPort: b.port },
    async stop() {
      await transport.stop();
      await b.stop();
    },
  };
}

/** Orders two node ids so that the first is the dialer (smaller device id). */
export function dialerFirst(x: string, y: string): [string, string] {
  return deriveIdentity(SEED, x).deviceId < deriveIdentity(SEED, y).deviceId ? [x, y] : [y, x];
}

