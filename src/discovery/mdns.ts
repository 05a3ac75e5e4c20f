/**
 * mDNS LAN discovery: each node publishes `_peat._udp` with its ids, ports and a formation
 * fingerprint, and browses for the others. Nodes of another formation on the same LAN are ignored.
 *
 * bonjour-service only reports a peer lost when it says goodbye, so a node that lost power would
 * stay "found" forever. We re-query periodically and expire services not heard from for a while.
 */
import { readFileSync } from "node:fs";
import { Bonjour, type Service } from "bonjour-service";
import type { Logger } from "../log.ts";
import { type DiscoveredPeer, DiscoveryEmitter, type DiscoveryListener, type DiscoveryStrategy } from "./types.ts";

export const SERVICE_TYPE = "peat";
export const SERVICE_PROTOCOL = "udp";
const MDNS_GROUP = 0xe00000fb; // 224.0.0.251

export interface MdnsDiscoveryOptions {
  nodeId: string;
  deviceId: string;
  /** Read at start: the broker may have been given port 0 and bound a free one. */
  brokerPort: () => number;
  syncPort: number;
  formationFingerprint: string;
  log: Logger;
  queryIntervalMs?: number;
  expireAfterMs?: number;
  /** Contents of /proc/net/route; injectable for tests of the route check. */
  readRouteTable?: () => string;
}

/** Parses /proc/net/route (hex, little-endian) and reports whether any route covers 224.0.0.251. */
export function hasMulticastRoute(routeTable: string): boolean {
  const swap = (hex: string) => {
    const n = Number.parseInt(hex, 16);
    return (((n & 0xff) << 24) | ((n & 0xff00) << 8) | ((n >>> 8) & 0xff00) | ((n >>> 24) & 0xff)) >>> 0;
  };
  for (const line of routeTable.split("\n").slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 8) continue;
    const destination = swap(cols[1] as string);
    const mask = swap(cols[7] as string);
    if (((MDNS_GROUP & mask) >>> 0) === ((destination & mask) >>> 0)) return true;
  }
  return false;
}

/** mDNS host labels allow letters, digits and '-'; anything else becomes '-'. */
export function mdnsHostName(nodeId: string): string {
  return `${nodeId.replace(/[^A-Za-z0-9-]/g, "-")}.local`;
}

interface Tracked {
  peer: DiscoveredPeer;
  fqdn: string;
  lastSeen: number;
}

export class MdnsDiscovery implements DiscoveryStrategy {
  readonly name = "discovery:mdns";
  readonly source = "mdns" as const;
  private readonly emitter = new DiscoveryEmitter();
  private readonly tracked = new Map<string, Tracked>();
  private bonjour: Bonjour | undefined;
  private browser: ReturnType<Bonjour["find"]> | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(private readonly options: MdnsDiscoveryOptions) {}

  onEvent(listener: DiscoveryListener): () => void {
    return this.emitter.on(listener);
  }

  peers(): DiscoveredPeer[] {
    return [...this.tracked.values()].map((t) => t.peer);
  }

  async start(): Promise<void> {
    const { log } = this.options;
    const routes = (this.options.readRouteTable ?? (() => readFileSync("/proc/net/route", "utf8")))();
    if (!hasMulticastRoute(routes)) {
      log.warn(
        "No route covers the mDNS group 224.0.0.251: this node can neither announce itself nor find peers. Add one, e.g. `ip route add 224.0.0.0/4 dev eth0`, or a default route",
      );
    }
    log.info(`Starting mDNS discovery for _${SERVICE_TYPE}._${SERVICE_PROTOCOL}.local.`);
    this.bonjour = new Bonjour({}, (err: Error) => log.warn("mDNS socket error", { error: err.message }));
    const txt = {
      node_id: this.options.nodeId,
      device_id: this.options.deviceId,
      broker_port: String(this.options.brokerPort()),
      sync_port: String(this.options.syncPort),
      fp: this.options.formationFingerprint,
    };
    this.bonjour.publish({
      name: `peat-${this.options.nodeId}`,
      type: SERVICE_TYPE,
      protocol: SERVICE_PROTOCOL,
      port: this.options.syncPort,
      host: mdnsHostName(this.options.nodeId),
      txt,
      disableIPv6: true,
      // Instance names carry the node id, unique in a formation. Probing would also mistake our own
      // goodbye from a quick restart for a rival and never publish, and it delays start by ~1 s.
      probe: false,
    });
    log.info(`Advertising node ${this.options.nodeId} on port ${this.options.syncPort} via mDNS`);

    this.browser = this.bonjour.find({ type: SERVICE_TYPE, protocol: SERVICE_PROTOCOL }, (s) => this.seen(s));
    this.browser.on("srv-update", (s: Service) => this.seen(s));
    this.browser.on("txt-update", (s: Service) => this.seen(s));
    this.browser.on("down", (s: Service) => this.lost(s.fqdn, "goodbye"));
    // Refresh lastSeen from every response, so that live peers are not expired.
    const mdns = (this.bonjour as unknown as { server: { mdns: NodeJS.EventEmitter } }).server.mdns;
    mdns.on("response", (packet: { answers: { type: string; name: string }[]; additionals: { type: string; name: string }[] }) => {
      const now = Date.now();
      for (const record of [...packet.answers, ...packet.additionals]) {
        if (record.type !== "SRV") continue;
        for (const t of this.tracked.values()) if (t.fqdn === record.name) t.lastSeen = now;
      }
    });
    const interval = this.options.queryIntervalMs ?? 5000;
    const expireAfter = this.options.expireAfterMs ?? interval * 4;
    this.timer = setInterval(() => {
      this.browser?.update();
      const cutoff = Date.now() - expireAfter;
      for (const t of [...this.tracked.values()]) if (t.lastSeen < cutoff) this.lost(t.fqdn, "expired");
    }, interval);
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    this.browser?.stop();
    const bonjour = this.bonjour;
    this.bonjour = undefined;
    if (bonjour) {
      // Goodbye packets tell the LAN at once that we left, instead of peers waiting for expiry.
      await new Promise<void>((resolve) => bonjour.unpublishAll(() => resolve()));
      await new Promise<void>((resolve) => bonjour.destroy(() => resolve()));
    }
    this.tracked.clear();
  }

  private seen(service: Service): void {
    const txt = (service.txt ?? {}) as Record<string, string>;
    const nodeId = txt.node_id;
    if (!nodeId || nodeId === this.options.nodeId) return;
    if (txt.fp !== this.options.formationFingerprint) {
      this.options.log.debug("Ignoring mDNS node of another formation", { peer: nodeId });
      return;
    }
    const brokerPort = Number(txt.broker_port);
    const syncPort = Number(txt.sync_port);
    if (!Number.isInteger(brokerPort) || brokerPort < 1 || brokerPort > 65535) return;
    const hosts = (service.addresses ?? []).filter((a) => !a.includes(":"));
    if (hosts.length === 0 && service.referer?.address) hosts.push(service.referer.address);
    if (hosts.length === 0) return;
    const peer: DiscoveredPeer = {
      nodeId,
      addresses: hosts.sort().map((host) => ({ host, brokerPort, ...(Number.isInteger(syncPort) ? { syncPort } : {}) })),
      source: "mdns",
      metadata: Object.fromEntries(Object.entries(txt).filter(([k]) => !["node_id", "fp"].includes(k))),
    };
    const previous = this.tracked.get(nodeId);
    this.tracked.set(nodeId, { peer, fqdn: service.fqdn, lastSeen: Date.now() });
    if (!previous) {
      this.options.log.info(`Discovered new peer: ${nodeId}`);
      this.emitter.emit({ type: "PeerFound", peer });
    } else if (JSON.stringify(previous.peer) !== JSON.stringify(peer)) {
      this.emitter.emit({ type: "PeerUpdated", peer });
    }
  }

  private lost(fqdn: string, why: string): void {
    for (const [nodeId, t] of this.tracked) {
      if (t.fqdn !== fqdn) continue;
      this.tracked.delete(nodeId);
      this.options.log.info(`Lost peer: ${nodeId}`, { reason: why });
      this.emitter.emit({ type: "PeerLost", nodeId, source: "mdns" });
    }
  }
}
