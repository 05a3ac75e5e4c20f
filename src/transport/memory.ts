/**
 * An in-process transport: nodes in one process, connected pairwise by a MemoryNetwork. It keeps
 * the Transport contract (whole messages, in order, copies, disconnect on both sides, nothing
 * after close) so that sync can be unit-tested without sockets; the conformance suite checks both
 * this and the WebRTC transport against the same expectations.
 */
import { DEFAULT_MAX_MESSAGE_BYTES } from "./framing.ts";
import { MessageTooLargeError } from "./errors.ts";
import { TransportListeners } from "./listeners.ts";
import { DisconnectReasons, type Transport } from "./types.ts";

interface MemoryLink {
  open: boolean;
}

export class MemoryNetwork {
  private readonly nodes = new Map<string, MemoryTransport>();

  /** @internal called by MemoryTransport.start/stop */
  register(node: MemoryTransport): void {
    if (this.nodes.has(node.nodeId)) throw new Error(`node '${node.nodeId}' is already on this network`);
    this.nodes.set(node.nodeId, node);
  }

  /** @internal */
  unregister(node: MemoryTransport): void {
    if (this.nodes.get(node.nodeId) === node) this.nodes.delete(node.nodeId);
  }

  /** Connects two started nodes; both see `onConnected` (asynchronously, like a real transport). */
  connect(a: string, b: string): void {
    const left = this.nodes.get(a);
    const right = this.nodes.get(b);
    if (!left || !right) throw new Error(`cannot connect ${a} and ${b}: both must be started on this network`);
    if (a === b) throw new Error("a node cannot connect to itself");
    if (left.hasLink(b)) return;
    const link: MemoryLink = { open: true };
    left.attach(right, link);
    right.attach(left, link);
  }

  /** Ends the connection between two nodes, as if the network dropped it. */
  disconnect(a: string, b: string, reason: string = DisconnectReasons.closedByPeer): void {
    this.nodes.get(a)?.disconnect(b, reason);
  }
}

export interface MemoryTransportOptions {
  nodeId: string;
  network: MemoryNetwork;
  deviceId?: string;
  maxMessageBytes?: number;
}

export class MemoryTransport extends TransportListeners implements Transport {
  readonly name = "transport:memory";
  readonly nodeId: string;
  readonly deviceId: string;
  readonly maxMessageBytes: number;
  private readonly network: MemoryNetwork;
  private readonly links = new Map<string, { peer: MemoryTransport; link: MemoryLink; announced: boolean }>();
  private running = false;

  constructor(options: MemoryTransportOptions) {
    super();
    this.nodeId = options.nodeId;
    this.deviceId = options.deviceId ?? options.nodeId;
    this.network = options.network;
    this.maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  }

  async start(): Promise<void> {
    if (this.running) return;
    this.network.register(this);
    this.running = true;
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    for (const peerId of [...this.links.keys()]) this.disconnect(peerId, DisconnectReasons.stopped);
    this.network.unregister(this);
    this.running = false;
  }

  /** Tests want a consumer's bug loud: rethrow it outside the delivery loop. */
  protected listenerFailed(err: unknown): void {
    queueMicrotask(() => {
      throw err;
    });
  }

  connectedPeers(): string[] {
    return [...this.links.entries()].filter(([, l]) => l.link.open).map(([id]) => id);
  }

  send(peerId: string, bytes: Uint8Array): boolean {
    const entry = this.links.get(peerId);
    if (!entry?.link.open) return false;
    if (bytes.length > this.maxMessageBytes) {
      throw new MessageTooLargeError(`message of ${bytes.length} bytes exceeds the ${this.maxMessageBytes}-byte limit`);
    }
    // A copy, so the caller may reuse its buffer as soon as send returns (as with WebRTC).
    const copy = bytes.slice();
    const { link, peer } = entry;
    queueMicrotask(() => {
      if (link.open) peer.deliver(this.nodeId, copy);
    });
    return true;
  }

  disconnect(peerId: string, reason: string = DisconnectReasons.closed): void {
    const entry = this.links.get(peerId);
    if (!entry?.link.open) return;
    entry.link.open = false;
    this.detach(peerId, reason);
    entry.peer.detach(this.nodeId, reason === DisconnectReasons.closed || reason === DisconnectReasons.stopped ? DisconnectReasons.closedByPeer : reason);
  }

  /** @internal */
  hasLink(peerId: string): boolean {
    return this.links.has(peerId);
  }

  /** @internal */
  attach(peer: MemoryTransport, link: MemoryLink): void {
    const entry = { peer, link, announced: false };
    this.links.set(peer.nodeId, entry);
    queueMicrotask(() => {
      if (!link.open) return;
      entry.announced = true;
      const info = { peerId: peer.nodeId, deviceId: peer.deviceId, addresses: [`memory:${peer.nodeId}`] };
      this.emitConnected(info);
    });
  }

  /** @internal */
  detach(peerId: string, reason: string): void {
    const entry = this.links.get(peerId);
    if (!entry) return;
    this.links.delete(peerId);
    queueMicrotask(() => {
      // A connection that closed before it was announced is never reported, as with WebRTC.
      if (!entry.announced) return;
      this.emitDisconnected(peerId, reason);
    });
  }

  /** @internal */
  deliver(from: string, bytes: Uint8Array): void {
    if (!this.links.get(from)?.link.open) return;
    this.emitMessage(from, bytes);
  }
}
