/**
 * Peer transport: authenticated WebRTC data channels between formation members, the connector
 * that dials what discovery finds, and an in-process transport for tests.
 */
import { WebRtcTransport, type WebRtcTransportOptions } from "./webrtc.ts";

export type { ConnectedListener, DisconnectedListener, MessageListener, Transport, TransportPeer } from "./types.ts";
export { DisconnectReasons } from "./types.ts";
export {
  ConnectionLimitError,
  DialError,
  FrameError,
  HandshakeFailedError,
  HandshakeTimeoutError,
  MessageTooLargeError,
  SignallingAuthError,
  SignallingConflictError,
  SignallingFormatError,
  SignallingRateLimitError,
  SignallingTooLargeError,
} from "./errors.ts";
export {
  DEFAULT_TUNING,
  type DialAck,
  type DialRequest,
  type LinkInfo,
  type LinkState,
  type TransportTuning,
  WebRtcTransport,
  type WebRtcTransportConfig,
  type WebRtcTransportOptions,
} from "./webrtc.ts";
export { type PeerConnectorOptions, PeerConnector, type PeerState, type PeerView } from "./connector.ts";
export { SIGNAL_PATH, peerRoutes, signalRoutes } from "./routes.ts";
export { MemoryNetwork, MemoryTransport, type MemoryTransportOptions } from "./memory.ts";

/** The WebRTC transport with explicit dependencies; not started. */
export function createTransport(options: WebRtcTransportOptions): WebRtcTransport {
  return new WebRtcTransport(options);
}
