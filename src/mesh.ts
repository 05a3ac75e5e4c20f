/**
 * The composition root: builds every component from the config, wires them together, starts them
 * in order and stops them in reverse. Nothing else constructs components.
 *
 * Start order: broker (so probes answer, 503 until the rest is up) → store → compactor → transport
 * → sync → connector → discovery.
 */
import { Broker, type ReadinessCheck } from "./broker/server.ts";
import type { Config } from "./config.ts";
import { createDiscovery } from "./discovery/index.ts";
import type { DiscoveryStrategy } from "./discovery/types.ts";
import { FormationKey, type NodeIdentity, deriveIdentity } from "./identity/index.ts";
import { type Component, withTimeout } from "./lifecycle.ts";
import type { Logger } from "./log.ts";
import { Compactor, DocumentStore, SyncModeRegistry } from "./store/index.ts";
import { documentRoutes } from "./broker/documents.ts";
import { metaRoutes } from "./broker/openapi.ts";
import { wsRoutes } from "./broker/ws.ts";
import { MeshEvents } from "./events.ts";
import { Metrics } from "./metrics.ts";
import { SyncEngine } from "./sync/engine.ts";
import { PeerConnector, WebRtcTransport, peerRoutes, signalRoutes } from "./transport/index.ts";
import { syncRoutes } from "./sync/routes.ts";

export interface MeshOptions {
  config: Config;
  log: Logger;
  version: string;
}

/** Per-component stop budget: the whole node must exit within 5 s of SIGTERM. */
const STOP_TIMEOUT_MS = 1500;

export class PeatMesh {
  readonly identity: NodeIdentity;
  readonly formationKey: FormationKey;
  readonly store: DocumentStore;
  readonly discovery: DiscoveryStrategy[];
  readonly broker: Broker;
  readonly transport: WebRtcTransport;
  readonly connector: PeerConnector;
  readonly sync: SyncEngine;
  readonly events = new MeshEvents();
  readonly metrics = new Metrics();
  private readonly components: Component[];
  private readonly started: Component[] = [];
  private startedAt = Date.now();
  private readonly log: Logger;

  constructor(private readonly options: MeshOptions) {
    const { config } = options;
    this.log = options.log;
    this.log.info("Starting peat-mesh-node", {
      hostname: config.hostname,
      discovery: config.discovery,
      broker_port: config.broker.port,
      iroh_bind_port: config.sync.port,
      version: options.version,
    });
    this.identity = deriveIdentity(config.formationSecret, config.hostname);
    this.formationKey = new FormationKey(config.formationSecret);
    const syncModes = new SyncModeRegistry(config.store.syncModes);

    this.store = new DocumentStore({
      dataDir: config.dataDir,
      nodeId: this.identity.nodeId,
      log: this.log.child("peat_mesh::store"),
      syncModes,
      cacheSize: config.store.cacheDocs,
      tombstoneTtlSecs: config.store.tombstoneTtlSecs,
      collectionTtlSecs: config.store.collectionTtlSecs,
    });
    const compactor = new Compactor({
      store: this.store,
      syncModes,
      log: this.log.child("peat_mesh::store::compaction"),
      ...config.compaction,
    });
    this.discovery = createDiscovery({
      config,
      log: this.log,
      identity: this.identity,
      formationKey: this.formationKey,
      brokerPort: () => this.broker.port,
    });
    this.store.onChange((e) =>
      this.events.emit({ type: "SyncEvent", collection: e.collection, doc_id: e.id, action: e.action, origin: e.origin }),
    );
    this.registerStoreMetrics();

    this.transport = new WebRtcTransport({
      identity: this.identity,
      formationKey: this.formationKey,
      seed: config.formationSecret,
      config: {
        port: config.sync.port,
        portRangeSize: config.sync.portRangeSize,
        iceServers: config.sync.iceServers,
        udpMux: config.sync.udpMux,
        sctpIdlePaceMs: config.sync.sctpIdlePaceMs,
        ...(config.sync.bindAddress ? { bindAddress: config.sync.bindAddress } : {}),
      },
      log: this.log,
      events: this.events,
      metrics: this.metrics,
      brokerPortOfSelf: () => this.broker.port,
    });
    this.connector = new PeerConnector({
      transport: this.transport,
      discovery: this.discovery,
      identity: this.identity,
      log: this.log,
    });
    this.sync = new SyncEngine({
      store: this.store,
      transport: this.transport,
      syncModes,
      log: this.log.child("peat_mesh::sync"),
      metrics: this.metrics,
      intervalSecs: config.sync.intervalSecs,
      tombstoneTtlSecs: config.store.tombstoneTtlSecs,
    });
    this.metrics.gauge("peat_timers", "Timers pending in the transport, the peer connector and the sync engine (label component)", () => [
      { labels: { component: "transport" }, value: this.transport.timers.size },
      { labels: { component: "connector" }, value: this.connector.timers.size },
      { labels: { component: "sync" }, value: this.sync.timers.size },
    ]);

    this.broker = new Broker({
      port: config.broker.port,
      bindAddress: config.broker.bindAddress,
      ...(config.broker.token ? { token: config.broker.token } : {}),
      maxBodyBytes: config.broker.maxBodyBytes,
      log: this.log.child("peat_mesh::broker"),
      node: {
        nodeId: this.identity.nodeId,
        deviceId: this.identity.deviceId,
        endpointId: this.identity.endpointId,
        version: options.version,
        startedAt: () => this.startedAt,
      },
      readiness: () => this.readiness(),
      routes: [
        documentRoutes({ store: this.store, maxBodyBytes: config.broker.maxBodyBytes }),
        wsRoutes({
          events: this.events,
          metrics: this.metrics,
          log: this.log.child("peat_mesh::broker::ws"),
          maxBufferedBytes: config.broker.wsMaxBufferedBytes,
        }),
        metaRoutes({ metrics: this.metrics, version: options.version }),
        signalRoutes(this.transport),
        peerRoutes(this.connector),
        syncRoutes(this.store),
      ],
    });

    // Discovery last: peers it finds are dialled by a started transport and synced by a started engine.
    this.components = [this.broker, this.store, compactor, this.transport, this.sync, this.connector, ...this.discovery];
  }

  private registerStoreMetrics(): void {
    const store = this.store;
    const stats = () => (store.isOpen() ? store.stats() : undefined);
    this.metrics.gauge("peat_documents", "Documents stored, per collection", () =>
      store.isOpen() ? store.collections().map((c) => ({ labels: { collection: c.name }, value: c.count })) : [],
    );
    this.metrics.gauge("peat_tombstones", "Tombstones held", () => stats()?.tombstones ?? 0);
    this.metrics.gauge("peat_store_writes_total", "Document writes committed since start", () => stats()?.writes ?? 0);
    this.metrics.gauge("peat_store_bytes", "Bytes of Automerge data stored", () => stats()?.bytes ?? 0);
    this.metrics.gauge("peat_store_cached_documents", "Documents held in the in-memory cache", () => stats()?.cacheSize ?? 0);
    this.metrics.gauge("peat_compaction_runs_total", "Compaction runs that compacted at least one document", () => stats()?.compactionRuns ?? 0);
    this.metrics.gauge("peat_uptime_seconds", "Seconds since the mesh started", () => Math.floor((Date.now() - this.startedAt) / 1000));
  }

  /** Every component but the broker must be started for the node to be ready. */
  readiness(): ReadinessCheck[] {
    return this.components
      .filter((c) => c !== this.broker)
      .map((c) => {
        const ready = this.started.includes(c);
        return { name: c.name, ready, message: ready ? null : "not started" };
      });
  }

  async start(): Promise<void> {
    try {
      for (const component of this.components) {
        await component.start();
        this.started.push(component);
        if (component === this.discovery.at(-1)) this.log.info("Discovery started");
      }
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.startedAt = Date.now();
    this.log.info("Mesh started", {
      node_id: this.identity.nodeId,
      device_id: this.identity.deviceId,
      endpoint_id: this.identity.endpointIdShort,
    });
  }

  async stop(): Promise<void> {
    while (this.started.length > 0) {
      const component = this.started.pop() as Component;
      try {
        await withTimeout(component.stop(), STOP_TIMEOUT_MS, `${component.name} did not stop within ${STOP_TIMEOUT_MS} ms`);
      } catch (err) {
        this.log.warn("Component stop failed", {
          component: component.name,
          error: err instanceof Error ? err.message : String(err),
        });
      }
    }
  }
}
