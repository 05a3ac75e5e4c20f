/**
 * The listener half of the Transport contract, shared by every transport: registration returns an
 * unsubscribe function, and a consumer that throws cannot break delivery to the others or tear
 * down the connection that delivered to it.
 */
import type { ConnectedListener, DisconnectedListener, MessageListener, TransportPeer } from "./types.ts";

export abstract class TransportListeners {
  private readonly connected = new Set<ConnectedListener>();
  private readonly message = new Set<MessageListener>();
  private readonly disconnected = new Set<DisconnectedListener>();

  onConnected(listener: ConnectedListener): () => void {
    this.connected.add(listener);
    return () => this.connected.delete(listener);
  }

  onMessage(listener: MessageListener): () => void {
    this.message.add(listener);
    return () => this.message.delete(listener);
  }

  onDisconnected(listener: DisconnectedListener): () => void {
    this.disconnected.add(listener);
    return () => this.disconnected.delete(listener);
  }

  /** Called with what a listener threw; the transport decides how to report it. */
  protected abstract listenerFailed(err: unknown): void;

  protected emitConnected(peer: TransportPeer): void {
    for (const listener of this.connected) this.call(() => listener(peer));
  }

  protected emitMessage(peerId: string, bytes: Uint8Array): void {
    for (const listener of this.message) this.call(() => listener(peerId, bytes));
  }

  protected emitDisconnected(peerId: string, reason: string): void {
    for (const listener of this.disconnected) this.call(() => listener(peerId, reason));
  }

  private call(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.listenerFailed(err);
    }
  }
}
