/**
 * Peers named by PEAT_STATIC_PEERS. DNS names are resolved at start and again periodically, so a
 * peer behind a name that moves (a federation gateway's Service, a DHCP lease) is followed.
 */
import { isIP } from "node:net";
import { lookup } from "node:dns/promises";
import type { StaticPeerAddress } from "../config.ts";
import type { Logger } from "../log.ts";
import { type DiscoveredPeer, DiscoveryEmitter, type DiscoveryListener, type DiscoveryStrategy } from "./types.ts";

export type Resolver = (host: string) => Promise<string[]>;

const systemResolver: Resolver = async (host) => (await lookup(host, { all: true })).map((a) => a.address);

export interface StaticDiscoveryOptions {
  peers: StaticPeerAddress[];
  log: Logger;
  resolveIntervalMs?: number;
  resolver?: Resolver;
}

export function provisionalNodeId(peer: StaticPeerAddress): string {
  return peer.name ?? `static:${peer.host}:${peer.brokerPort}`;
}

export class StaticDiscovery implements DiscoveryStrategy {
  readonly name = "discovery:static";
  readonly source = "static" as const;
  private readonly emitter = new DiscoveryEmitter();
  private readonly known = new Map<string, DiscoveredPeer>();
  private timer: ReturnType<typeof setInterval> | undefined;
  private readonly resolver: Resolver;

  constructor(private readonly options: StaticDiscoveryOptions) {
    this.resolver = options.resolver ?? systemResolver;
  }

  onEvent(listener: DiscoveryListener): () => void {
    return this.emitter.on(listener);
  }

  peers(): DiscoveredPeer[] {
    return [...this.known.values()];
  }

  async start(): Promise<void> {
    await this.refresh();
    this.timer = setInterval(() => void this.refresh(), this.options.resolveIntervalMs ?? 30_000);
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    for (const nodeId of this.known.keys()) this.emitter.emit({ type: "PeerLost", nodeId, source: "static" });
    this.known.clear();
  }

  private async refresh(): Promise<void> {
    await Promise.all(this.options.peers.map((peer) => this.refreshOne(peer)));
  }

  private async refreshOne(entry: StaticPeerAddress): Promise<void> {
    let hosts: string[];
    if (isIP(entry.host)) hosts = [entry.host];
    else {
      try {
        hosts = [...new Set(await this.resolver(entry.host))].sort();
      } catch (err) {
        this.options.log.warn("Static peer name did not resolve; will retry", {
          peer: entry.entry,
          error: err instanceof Error ? err.message : String(err),
        });
        return;
      }
    }
    if (hosts.length === 0) return;
    const nodeId = provisionalNodeId(entry);
    const peer: DiscoveredPeer = {
      nodeId,
      addresses: hosts.map((host) => ({ host, brokerPort: entry.brokerPort })),
      source: "static",
      metadata: { entry: entry.entry },
    };
    const previous = this.known.get(nodeId);
    this.known.set(nodeId, peer);
    if (!previous) this.emitter.emit({ type: "PeerFound", peer });
    else if (JSON.stringify(previous.addresses) !== JSON.stringify(peer.addresses)) {
      this.emitter.emit({ type: "PeerUpdated", peer });
    }
  }
}
