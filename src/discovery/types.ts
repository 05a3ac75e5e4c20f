/**
 * Discovery only produces peer addresses. The connector turns them into authenticated
 * connections; sync never learns how a peer was found.
 */
import type { Component } from "../lifecycle.ts";

export type DiscoverySource = "kubernetes" | "mdns" | "static";

export interface PeerAddress {
  host: string;
  /** TCP port of the peer's broker, where signalling goes. */
  brokerPort: number;
  /** First UDP port of the peer's ICE range, when the source knows it. */
  syncPort?: number;
}

export interface DiscoveredPeer {
  /**
   * The peer's node id (its HOSTNAME) when the source knows it. Static entries written without a
   * name carry a provisional id (`static:<host>:<port>`) until the connector learns the real one.
   */
  nodeId: string;
  addresses: PeerAddress[];
  source: DiscoverySource;
  /** Source-specific facts: Kubernetes `peat.*` annotations, mDNS TXT keys. */
  metadata: Record<string, string>;
}

export type DiscoveryEvent =
  | { type: "PeerFound"; peer: DiscoveredPeer }
  | { type: "PeerUpdated"; peer: DiscoveredPeer }
  | { type: "PeerLost"; nodeId: string; source: DiscoverySource };

export type DiscoveryListener = (event: DiscoveryEvent) => void;

export interface DiscoveryStrategy extends Component {
  readonly source: DiscoverySource;
  /** Registers a listener; returns a function that removes it. */
  onEvent(listener: DiscoveryListener): () => void;
  /** The peers currently known to this strategy. */
  peers(): DiscoveredPeer[];
}

/** Fan-out of events to listeners, shared by every strategy. */
export class DiscoveryEmitter {
  private readonly listeners = new Set<DiscoveryListener>();

  on(listener: DiscoveryListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(event: DiscoveryEvent): void {
    for (const listener of this.listeners) listener(event);
  }
}
