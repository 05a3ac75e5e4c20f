/**
 * The transport contract the sync layer sees: peers come and go, messages are opaque bytes. Shaped
 * like automerge-repo's NetworkAdapter so that the sync layer never learns about WebRTC.
 */
import type { Component } from "../lifecycle.ts";

export interface TransportPeer {
  /** The peer's node id (its HOSTNAME). */
  peerId: string;
  deviceId: string;
  /** Where the peer is reached, `ip:port` (IPv6 as `[addr]:port`). */
  addresses: string[];
  /**
   * The peer's broker as this connection's signalling used it: the address we reached it at, or
   * the source address of its offer with the broker port it signed. How a peer that moved (new
   * address or port) is found again, once authenticated.
   */
  brokerAddress?: { host: string; brokerPort: number };
}

export type ConnectedListener = (peer: TransportPeer) => void;
export type MessageListener = (peerId: string, bytes: Uint8Array) => void;
export type DisconnectedListener = (peerId: string, reason: string) => void;

/**
 * Why a connection ended. Strings, not an enum, because they travel in events and logs; these are
 * the ones this module produces.
 */
export const DisconnectReasons = {
  /** `disconnect()` was called locally. */
  closed: "closed",
  stopped: "stopped",
  closedByPeer: "closed_by_peer",
  /** No frame from the peer for three ping intervals. */
  timeout: "timeout",
  authFailed: "auth_failed",
  authTimeout: "auth_timeout",
  connectTimeout: "connect_timeout",
  protocolError: "protocol_error",
  backpressure: "backpressure",
  /** A newer connection to the same peer took this one's place. */
  replaced: "replaced",
  /** Discovery no longer sees the peer. */
  lost: "lost",
  iceFailed: "ice_failed",
} as const;

export interface Transport extends Component {
  /** The largest message `send` accepts. */
  readonly maxMessageBytes: number;
  /** Each registration returns a function that removes it. */
  onConnected(listener: ConnectedListener): () => void;
  onMessage(listener: MessageListener): () => void;
  /** Fires once for every peer that `onConnected` reported, when that connection ends. */
  onDisconnected(listener: DisconnectedListener): () => void;
  /**
   * Queues `bytes` for the peer; messages arrive whole and in order. False when the peer is not
   * connected (or was just dropped because it could not keep up). Throws MessageTooLargeError over
   * `maxMessageBytes`. The caller may reuse `bytes` once this returns.
   */
  send(peerId: string, bytes: Uint8Array): boolean;
  /** Closes the connection to the peer, if any; both sides see a disconnect. */
  disconnect(peerId: string, reason?: string): void;
  /** Ids of the peers that are connected and authenticated. */
  connectedPeers(): string[];
}
