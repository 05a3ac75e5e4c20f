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
  /** Entries naming this node are skipped, so one list can serve every gateway of a federation. */
  selfNodeId?: string;
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
  private running = false;
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
    this.running = true;
    await this.refresh();
    this.timer = setInterval(() => void this.refresh(), this.options.resolveIntervalMs ?? 30_000);
  }

  async stop(): Promise<void> {
    this.running = false;
    clearInterval(this.timer);
    this.timer = undefined;
    for (const nodeId of this.known.keys()) this.emitter.emit({ type: "PeerLost", nodeId, source: "static" });
    this.known.clear();
  }

  private async refresh(): Promise<void> {
    const others = this.options.peers.filter((p) => p.name === undefined || p.name !== this.options.selfNodeId);
    await Promise.all(others.map((peer) => this.refreshOne(peer)));
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
    // A resolution that finished after stop() must not resurrect the peer.
    if (hosts.length === 0 || !this.running) return;
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
