/**
 * The WebRTC transport: one node-datachannel PeerConnection with one reliable, ordered data
 * channel per peer pair, ICE over UDP on a fixed port range, signalling over the peers' broker
 * ports (signal.ts), the formation challenge-response as the first exchange on every channel
 * (handshake.ts), and chunked messages (framing.ts).
 *
 * Who dials: of any pair, the node with the smaller device id sends the offer. The other one asks
 * it to, with a signed dial-request. Offers from the wrong side are refused, so two nodes can never
 * build two connections to each other, whichever of them discovered the other first.
 */
import { readCapped } from "../read-capped.ts";
import { TransportListeners } from "./listeners.ts";
import nodeDataChannel, { type DataChannel, type PeerConnection, type RtcConfig } from "node-datachannel";
import type { PeerAddress } from "../discovery/types.ts";
import type { MeshEvents } from "../events.ts";
import type { FormationKey, NodeIdentity } from "../identity/index.ts";
import { Display, type Logger } from "../log.ts";
import type { Counter, Metrics } from "../metrics.ts";
import { TrackedTimers } from "../timers.ts";
import {
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
} from "./errors.ts";
import {
  DEFAULT_CHUNK_BYTES,
  DEFAULT_MAX_MESSAGE_BYTES,
  FrameType,
  Reassembler,
  encodeMessage,
  encodedLength,
  goodbyeFrame,
  pingFrame,
  readPing,
  readReason,
  readSeq,
  seqFrame,
} from "./framing.ts";
import { AuthHandshake, type Role } from "./handshake.ts";
import { RateLimiter } from "./limits.ts";
import { SCTP_TICK_MS, enableSctpIdlePacing, sctpPacer, setSctpBusy } from "./sctp-timer.ts";
import { type PeerKeys, SignalCodec, type SignalMessage, parseSignal } from "./signal.ts";
import {
  type ConnectedListener,
  type DisconnectedListener,
  DisconnectReasons,
  type MessageListener,
  type Transport,
  type TransportPeer,
} from "./types.ts";

export interface WebRtcTransportConfig {
  /** First UDP port of the ICE range (config `sync.port`). */
  port: number;
  /** Ports in the range (config `sync.portRangeSize`). Each live connection holds one. */
  portRangeSize: number;
  /** STUN/TURN URLs (`stun:host:port`, `turn:user:pass@host:port?transport=udp`). Empty: host candidates only. */
  iceServers: string[];
  /** Local address to gather candidates on; unset: every interface. */
  bindAddress?: string;
  /**
   * Default true: every connection shares the one UDP port `port` (ICE UDP mux), so the firewall
   * needs one port and the number of peers is not capped by the range. False: each connection
   * binds its own port from `port`..`port + portRangeSize - 1` (at most that many connections).
   * Measurements behind the choice: docs/transport.md.
   */
  udpMux?: boolean;
  /**
   * Pace of usrsctp's timer thread while no data moves and no connection is being set up, in ms
   * (default 10: usrsctp's own, the hook is not installed). See sctp-timer.ts.
   */
  sctpIdlePaceMs?: number;
}

export interface TransportTuning {
  /** Payload bytes per data-channel message; small keeps a big message from delaying others long. */
  chunkBytes: number;
  maxMessageBytes: number;
  /** SCTP message size limit, announced in the SDP. libdatachannel's default. */
  channelMaxMessageBytes: number;
  /** Stop handing frames to the channel above this many buffered bytes... */
  highWaterBytes: number;
  /** ...and resume when it drains below this. */
  lowWaterBytes: number;
  /** Queued-but-unsent bytes per peer beyond which the peer is dropped as too slow. */
  maxQueuedBytes: number;
  pingIntervalMs: number;
  /** A peer silent for this many ping intervals is disconnected. */
  silentIntervals: number;
  handshakeTimeoutMs: number;
  /** From PeerConnection creation to an open data channel. */
  connectTimeoutMs: number;
  /** Longest wait for ICE gathering before the description is sent with what was gathered. */
  gatherTimeoutMs: number;
  /** Delay before the answerer adds the dialer's candidates (splitCandidates). */
  candidateDelayMs: number;
  signalTimeoutMs: number;
  /** Connections created but not yet authenticated, in both directions together. */
  maxPending: number;
  maxSignalBodyBytes: number;
  signalBurst: number;
  signalPerSecond: number;
  signalGlobalBurst: number;
  signalGlobalPerSecond: number;
  clockSkewMs: number;
  replayCacheSize: number;
}

/**
 * Data per ping interval (both directions, all peers) below which the transport counts as idle for
 * the SCTP timer's pace: the periodic reconciliation (a `root` each way, ~40 bytes, every 5 s) and
 * pings move far less. Small as lone messages are, they need no SCTP timer to be delivered; the
 * timers (acknowledgement, retransmission) matter once data flows, and then it runs at full pace.
 */
const QUIET_BYTES_PER_INTERVAL = 4096;

export const DEFAULT_TUNING: TransportTuning = {
  chunkBytes: DEFAULT_CHUNK_BYTES,
  maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
  channelMaxMessageBytes: 256 * 1024,
  highWaterBytes: 1024 * 1024,
  lowWaterBytes: 256 * 1024,
  maxQueuedBytes: 64 * 1024 * 1024,
  // A link silent for 6–8 s is dropped and redialled. After a network outage of ~10 s, SCTP's
  // retransmission timer has backed off so far (libdatachannel caps it at 10 s) that a link that
  // survived the outage stayed stalled for up to 18 s after it ended (measured, chaos partition
  // "blip"); a fresh connection resyncs at once. With 5 s × 3 such links sat just under the limit.
  pingIntervalMs: 2000,
  silentIntervals: 3,
  handshakeTimeoutMs: 10_000,
  connectTimeoutMs: 15_000,
  gatherTimeoutMs: 5000,
  candidateDelayMs: 250,
  signalTimeoutMs: 10_000,
  maxPending: 16,
  maxSignalBodyBytes: 64 * 1024,
  signalBurst: 20,
  signalPerSecond: 10,
  signalGlobalBurst: 200,
  signalGlobalPerSecond: 100,
  clockSkewMs: 60_000,
  replayCacheSize: 10_000,
};

export interface WebRtcTransportOptions {
  identity: NodeIdentity;
  formationKey: FormationKey;
  /** The formation secret's bytes: peers' endpoint and device ids are derived from it. */
  seed: Uint8Array;
  config: WebRtcTransportConfig;
  log: Logger;
  events: MeshEvents;
  metrics: Metrics;
  /** This node's broker port, sent in signalling so peers can reach us back (a function when bound to port 0). */
  brokerPortOfSelf: number | (() => number);
  tuning?: Partial<TransportTuning>;
}

export type LinkState = "connecting" | "authenticating" | "connected";

export interface LinkInfo {
  nodeId: string;
  deviceId: string;
  endpointId: string;
  role: Role;
  state: LinkState;
  /** The offer's nonce: both ends know a connection by it. */
  linkId: string;
  rttMs: number | null;
  bytesSent: number;
  bytesReceived: number;
  /** The peer's ICE address once the connection is up (`ip:port`). */
  remoteAddress: string | null;
  connectedAt: number | null;
}

export interface DialRequest {
  nodeId: string;
  deviceId: string;
  /** Where to reach the requester: the request's source address and the broker port it named. */
  address: PeerAddress;
  /** A link id the requester says it does not hold; the link may be dropped if it is ours. */
  staleLink: string;
}

export interface DialAck {
  nodeId: string;
  deviceId: string;
  /** The responder's current link id with us ("" if none). */
  link: string;
  address: PeerAddress;
}

export type DialRequestListener = (request: DialRequest) => void;

/** What a pending connection settles to: resolved on authentication, rejected on close before. */
interface Settle {
  resolve: () => void;
  reject: (err: Error) => void;
}

class Link {
  id = "";
  state: LinkState = "connecting";
  closed = false;
  dc: DataChannel | undefined;
  handshake: AuthHandshake | undefined;
  deadline: ReturnType<typeof setTimeout> | undefined;
  candidateTimer: ReturnType<typeof setTimeout> | undefined;
  lastRx = Date.now();
  pingSeq = 0;
  pingSentAt = 0;
  /** The ping before the last one: the peer's ping may echo either. */
  previousPingSeq = 0;
  previousPingSentAt = 0;
  /** The peer's last ping, echoed in ours. */
  peerPingSeq = 0;
  peerPingAt = 0;
  rttMs: number | null = null;
  bytesSent = 0;
  bytesReceived = 0;
  connectedAt: number | null = null;
  remoteAddress: string | null = null;
  /** Where signalling reached the peer (or came from): logged when something goes wrong before ICE is up. */
  signalAddress = "";
  /** The peer's broker address as signalling used it (reported on connect, see TransportPeer). */
  brokerAddress: PeerAddress | undefined;
  queue: Uint8Array[] = [];
  queueHead = 0;
  queuedBytes = 0;
  readonly reassembler: Reassembler;
  readonly authenticated: Promise<void>;
  settle!: Settle;

  constructor(
    readonly nodeId: string,
    readonly keys: PeerKeys,
    readonly role: Role,
    readonly pc: PeerConnection,
    tuning: TransportTuning,
  ) {
    this.reassembler = new Reassembler(tuning.maxMessageBytes, tuning.channelMaxMessageBytes);
    this.authenticated = new Promise<void>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    // A dial's caller may give up waiting; an unobserved rejection must not surface as unhandled.
    this.authenticated.catch(() => {});
  }

  get address(): string {
    return this.remoteAddress ?? this.signalAddress;
  }
}

let rtcLoggerInstalled = false;

export function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

function normaliseIp(ip: string): string {
  return ip.startsWith("::ffff:") && ip.includes(".") ? ip.slice(7) : ip;
}


/** Lets a WARN through at most `perWindow` times per window, counting the rest, so a flood cannot flood the log. */
class WarnThrottle {
  private windowStart = 0;
  private used = 0;
  private suppressed = 0;
  constructor(
    private readonly perWindow = 20,
    private readonly windowMs = 10_000,
  ) {}

  allow(): { ok: boolean; suppressed: number } {
    const now = Date.now();
    if (now - this.windowStart > this.windowMs) {
      this.windowStart = now;
      this.used = 0;
    }
    if (this.used >= this.perWindow) {
      this.suppressed++;
      return { ok: false, suppressed: 0 };
    }
    this.used++;
    const suppressed = this.suppressed;
    this.suppressed = 0;
    return { ok: true, suppressed };
  }
}

export class WebRtcTransport extends TransportListeners implements Transport {
  readonly name = "transport";
  readonly maxMessageBytes: number;
  private readonly tuning: TransportTuning;
  private readonly log: Logger;
  private readonly codec: SignalCodec;
  private readonly limiter: RateLimiter;
  private readonly links = new Map<string, Link>();
  private readonly dialRequestListeners = new Set<DialRequestListener>();
  /** Closed connections' native objects, held a while so their last callbacks find them alive. */
  private readonly graveyard = new Set<{ pc: PeerConnection; dc: DataChannel | undefined }>();
  private running = false;
  private ticker: ReturnType<typeof setInterval> | undefined;
  /** Whether this transport holds the SCTP timer at full pace (noteActivity, checkIdle). */
  private busy = false;
  private bytesSinceTick = 0;
  private livePeerConnections = 0;
  private createdPeerConnections = 0;
  /** Data channels wired to a live connection (closed with it). */
  private liveDataChannels = 0;
  /** Every timer the transport holds, per-connection ones included: `peat_timers{component="transport"}`. */
  readonly timers = new TrackedTimers();
  private lastConnectedCount = 0;
  private readonly warnThrottle = new WarnThrottle();
  private readonly counters: {
    bytesSent: Counter;
    bytesReceived: Counter;
    authFailures: Counter;
    dials: Counter;
    signalRejected: Counter;
  };

  constructor(private readonly options: WebRtcTransportOptions) {
    super();
    this.tuning = { ...DEFAULT_TUNING, ...options.tuning };
    this.maxMessageBytes = this.tuning.maxMessageBytes;
    this.log = options.log.child("peat_mesh::transport");
    const brokerPort = options.brokerPortOfSelf;
    this.codec = new SignalCodec({
      identity: options.identity,
      formationKey: options.formationKey,
      seed: options.seed,
      brokerPort: typeof brokerPort === "number" ? () => brokerPort : brokerPort,
      clockSkewMs: this.tuning.clockSkewMs,
      replayCacheSize: this.tuning.replayCacheSize,
    });
    this.limiter = new RateLimiter({
      burst: this.tuning.signalBurst,
      perSecond: this.tuning.signalPerSecond,
      globalBurst: this.tuning.signalGlobalBurst,
      globalPerSecond: this.tuning.signalGlobalPerSecond,
      maxKeys: 4096,
    });
    const { metrics } = options;
    this.counters = {
      bytesSent: metrics.counter("peat_transport_bytes_sent_total", "Bytes sent to peers over data channels, framing included"),
      bytesReceived: metrics.counter("peat_transport_bytes_received_total", "Bytes received from peers over data channels, framing included"),
      authFailures: metrics.counter(
        "peat_transport_auth_failures_total",
        "Peers refused: failed signalling authentication or the formation handshake (label stage)",
      ),
      dials: metrics.counter("peat_transport_dials_total", "Outbound connection attempts (label kind: offer or dial_request)"),
      signalRejected: metrics.counter("peat_transport_signal_rejected_total", "Signalling requests refused, by reason"),
    };
    metrics.gauge("peat_peers_connected", "Peers connected and authenticated", () => this.connectedCount());
    metrics.gauge("peat_transport_peer_connections", "Live WebRTC PeerConnections, pending ones included", () => this.livePeerConnections);
    metrics.gauge("peat_transport_data_channels", "Live WebRTC data channels, pending ones included", () => this.liveDataChannels);
    metrics.gauge("peat_transport_busy", "1 while data moves (over 4 KiB per ping interval) or a connection is being set up, 0 when idle", () => (this.busy ? 1 : 0));
    metrics.gauge("peat_transport_sctp_timer_pace_ms", "How often usrsctp's timer thread ticks now: 10 while busy, PEAT_SCTP_IDLE_PACE_MS while idle", () => sctpPacer()?.paceMs ?? SCTP_TICK_MS);
  }

  // ---- lifecycle --------------------------------------------------------------------------------

  async start(): Promise<void> {
    if (this.running) return;
    if (!rtcLoggerInstalled) {
      rtcLoggerInstalled = true;
      const rtcLog = this.log.child("peat_mesh::transport::rtc");
      // initLogger throws without a callback under Bun; libdatachannel warnings are diagnostic only.
      nodeDataChannel.initLogger("Warning", (level, message) => rtcLog.debug(message, { level }));
    }
    const idlePaceMs = this.options.config.sctpIdlePaceMs ?? SCTP_TICK_MS;
    if (idlePaceMs > SCTP_TICK_MS) {
      // The hook goes into the loaded addon, whose SCTP thread preload() starts.
      nodeDataChannel.preload();
      const unavailable = enableSctpIdlePacing(idlePaceMs);
      if (unavailable) this.log.warn("SCTP timer pacing unavailable; usrsctp wakes every 10 ms", { reason: unavailable });
    }
    this.running = true;
    // Busy until a ping interval passes quietly.
    this.noteActivity();
    this.ticker = this.timers.interval(() => this.tick(), this.tuning.pingIntervalMs);
    this.ticker.unref?.();
    const { config } = this.options;
    this.log.info("WebRTC transport started", {
      ice_port: config.port,
      ice_port_range: this.mux ? 1 : config.portRangeSize,
      udp_mux: this.mux,
      bind: config.bindAddress ?? "any",
      ice_servers: config.iceServers.length,
    });
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.busy = false;
    setSctpBusy(this, false);
    this.timers.clear(this.ticker);
    this.ticker = undefined;
    for (const link of [...this.links.values()]) this.closeLink(link, DisconnectReasons.stopped);
  }

  // ---- Transport --------------------------------------------------------------------------------

  connectedPeers(): string[] {
    return [...this.links.values()].filter((l) => l.state === "connected").map((l) => l.nodeId);
  }

  send(peerId: string, bytes: Uint8Array): boolean {
    const link = this.links.get(peerId);
    if (!link || link.closed || link.state !== "connected" || !link.dc) return false;
    if (bytes.length > this.tuning.maxMessageBytes) {
      throw new MessageTooLargeError(`message of ${bytes.length} bytes exceeds the ${this.tuning.maxMessageBytes}-byte limit`);
    }
    const size = encodedLength(bytes.length, this.tuning.chunkBytes);
    if (link.queuedBytes + size > this.tuning.maxQueuedBytes) {
      this.log.warn("Dropping peer that does not keep up", {
        peer: link.nodeId,
        addresses: new Display(`[${link.address}]`),
        queued_bytes: link.queuedBytes,
      });
      this.closeLink(link, DisconnectReasons.backpressure);
      return false;
    }
    this.noteActivity(bytes.length);
    for (const frame of encodeMessage(bytes, this.tuning.chunkBytes)) {
      link.queue.push(frame);
      link.queuedBytes += frame.length;
    }
    this.flush(link);
    return true;
  }

  disconnect(peerId: string, reason: string = DisconnectReasons.closed): void {
    const link = this.links.get(peerId);
    if (link) this.closeLink(link, reason);
  }

  // ---- for the connector and the broker ----------------------------------------------------------

  /** Fires when an authenticated peer asks us (the smaller device id) to dial it. */
  onDialRequest(listener: DialRequestListener): () => void {
    this.dialRequestListeners.add(listener);
    return () => this.dialRequestListeners.delete(listener);
  }

  /** Keys of a formation member, derived from its node id. */
  peerKeys(nodeId: string): PeerKeys {
    return this.codec.peerKeys(nodeId);
  }

  /** True when this node sends the offer to `nodeId` (it has the smaller device id). */
  isDialerFor(nodeId: string): boolean {
    return this.options.identity.deviceId < this.codec.peerKeys(nodeId).deviceId;
  }

  linkInfo(nodeId: string): LinkInfo | undefined {
    const link = this.links.get(nodeId);
    if (!link || link.closed) return undefined;
    return {
      nodeId: link.nodeId,
      deviceId: link.keys.deviceId,
      endpointId: link.keys.endpointId,
      role: link.role,
      state: link.state,
      linkId: link.id,
      rttMs: link.rttMs,
      bytesSent: link.bytesSent,
      bytesReceived: link.bytesReceived,
      remoteAddress: link.remoteAddress,
      connectedAt: link.connectedAt,
    };
  }

  /** Every connection, pending ones included. */
  allLinks(): LinkInfo[] {
    return [...this.links.keys()].map((id) => this.linkInfo(id)).filter((l): l is LinkInfo => l !== undefined);
  }

  /** Counts for tests and diagnostics: live and ever-created PeerConnections, pending and connected peers. */
  stats(): {
    peerConnections: number;
    dataChannels: number;
    timers: number;
    created: number;
    pending: number;
    connected: number;
    replayCache: number;
  } {
    return {
      peerConnections: this.livePeerConnections,
      dataChannels: this.liveDataChannels,
      timers: this.timers.size,
      created: this.createdPeerConnections,
      pending: this.pendingCount(),
      connected: this.connectedCount(),
      replayCache: this.codec.replay.size,
    };
  }

  /**
   * Sends one raw frame on an authenticated channel, bypassing framing. Exists so that tests can
   * check that a peer sending malformed frames is dropped; never used by the node itself.
   */
  sendRawFrameForTesting(peerId: string, frame: Uint8Array): boolean {
    const link = this.links.get(peerId);
    if (!link || link.state !== "connected") return false;
    this.sendFrame(link, frame);
    return true;
  }

  // ---- dialling ---------------------------------------------------------------------------------

  /**
   * Offers a connection to `nodeId` (we must be its dialer) at the first address whose broker
   * answers, and resolves once the connection is authenticated. Rejects with DialError or
   * ConnectionLimitError; any connection it started is closed by then.
   */
  async dial(nodeId: string, addresses: PeerAddress[]): Promise<void> {
    if (!this.running) throw new ConnectionLimitError("transport is not running");
    if (nodeId === this.options.identity.nodeId) throw new DialError("cannot dial self");
    const keys = this.codec.peerKeys(nodeId);
    if (!(this.options.identity.deviceId < keys.deviceId)) {
      throw new DialError(`not the dialer for ${nodeId}: the smaller device id dials`);
    }
    const existing = this.links.get(nodeId);
    if (existing) this.closeLink(existing, DisconnectReasons.replaced);
    this.ensurePendingCapacity();
    const link = this.createLink(nodeId, keys, "dialer");
    this.counters.dials.inc(1, { kind: "offer" });
    try {
      const local = await this.localDescription(link);
      const offer = this.codec.create({ type: "offer", to: nodeId, sdp: local });
      link.id = offer.nonce;
      const { reply, address } = await this.post(addresses, offer);
      link.signalAddress = address;
      link.brokerAddress = addresses.find((a) => formatAddress(a.host, a.brokerPort) === address);
      this.verifyReply(reply, { types: ["answer"], from: nodeId, re: offer.nonce }, address);
      if (link.closed) throw new DialError(`connection to ${nodeId} closed while signalling`);
      link.pc.setRemoteDescription(reply.sdp, "answer");
    } catch (err) {
      this.closeLink(link, DisconnectReasons.closed, false);
      throw err instanceof DialError || err instanceof ConnectionLimitError ? err : new DialError(errorText(err));
    }
    return link.authenticated;
  }

  /**
   * Asks the node at `addresses` to dial us. `target` is its node id if known; without it, the
   * signed acknowledgement tells us who answered. `staleLink` names a connection the peer reported
   * that we do not hold, so the peer drops it and dials afresh.
   */
  async requestDial(target: string | undefined, addresses: PeerAddress[], staleLink = ""): Promise<DialAck> {
    if (!this.running) throw new ConnectionLimitError("transport is not running");
    const request = this.codec.create({ type: "dial-request", to: target ?? "", link: staleLink });
    this.counters.dials.inc(1, { kind: "dial_request" });
    const { reply, address } = await this.post(addresses, request);
    const keys = this.verifyReply(
      reply,
      { types: ["dial-ack"], re: request.nonce, ...(target !== undefined ? { from: target } : {}) },
      address,
    );
    const used = addresses.find((a) => formatAddress(a.host, a.brokerPort) === address) ?? (addresses[0] as PeerAddress);
    return { nodeId: reply.from, deviceId: keys.deviceId, link: reply.link, address: used };
  }

  private verifyReply(reply: SignalMessage, expect: Parameters<SignalCodec["verify"]>[1], address: string): PeerKeys {
    try {
      return this.codec.verify(reply, expect);
    } catch (err) {
      if (err instanceof SignallingAuthError) {
        this.counters.authFailures.inc(1, { stage: "signalling" });
        this.warnAuth("Peer failed signalling authentication", { addr: address, peer: reply.from, reason: err.reason });
        throw new DialError(`reply from ${address} failed authentication: ${err.message}`, true);
      }
      throw new DialError(`bad reply from ${address}: ${errorText(err)}`);
    }
  }

  private async post(addresses: PeerAddress[], message: SignalMessage): Promise<{ reply: SignalMessage; address: string }> {
    const body = JSON.stringify(message);
    let lastError: Error = new DialError("no address to signal");
    for (const a of addresses) {
      const address = formatAddress(a.host, a.brokerPort);
      let response: Response;
      try {
        response = await fetch(`http://${address}/api/v1/signal`, {
          method: "POST",
          body,
          headers: { "content-type": "application/json" },
          signal: AbortSignal.timeout(this.tuning.signalTimeoutMs),
        });
      } catch (err) {
        lastError = new DialError(`signalling to ${address} failed: ${errorText(err)}`);
        continue;
      }
      const max = this.tuning.maxSignalBodyBytes;
      const text = Buffer.from(
        await readCapped(response.body, max, () => new DialError(`signalling response exceeds ${max} bytes`)),
      ).toString("utf8");
      if (!response.ok) {
        let detail = text.slice(0, 200);
        try {
          detail = String((JSON.parse(text) as { error?: unknown }).error ?? detail);
        } catch {}
        const auth = response.status === 401 || response.status === 403;
        if (auth) {
          this.counters.authFailures.inc(1, { stage: "signalling" });
          this.warnAuth("Peer refused our signalling", { addr: address, status: response.status, error: detail });
        }
        // The broker answered, so the peer is there: other addresses would say the same.
        throw new DialError(`${address} refused signalling: ${response.status} ${detail}`, auth);
      }
      try {
        return { reply: parseSignal(text), address };
      } catch (err) {
        throw new DialError(`bad reply from ${address}: ${errorText(err)}`);
      }
    }
    throw lastError;
  }

  // ---- signalling endpoint ----------------------------------------------------------------------

  /** Throws SignallingRateLimitError (429) when `sourceIp` or everyone together sends too fast. */
  admitSignal(sourceIp: string): void {
    if (!this.limiter.take(sourceIp)) {
      this.counters.signalRejected.inc(1, { reason: "rate_limited" });
      throw new SignallingRateLimitError("too many signalling requests; slow down");
    }
  }

  get maxSignalBodyBytes(): number {
    return this.tuning.maxSignalBodyBytes;
  }

  /**
   * Handles one signalling request body and returns the signed reply. Nothing is allocated for a
   * request until it has passed every authentication check.
   */
  async handleSignal(text: string, sourceIp: string): Promise<SignalMessage> {
    if (!this.running) throw new ConnectionLimitError("transport is not running");
    const ip = normaliseIp(sourceIp);
    let message: SignalMessage;
    let keys: PeerKeys;
    try {
      message = parseSignal(text);
      keys = this.codec.verify(message, { types: ["offer", "dial-request"], allowEmptyTo: true });
    } catch (err) {
      if (err instanceof SignallingAuthError) {
        this.counters.signalRejected.inc(1, { reason: err.reason });
        this.counters.authFailures.inc(1, { stage: "signalling" });
        this.warnAuth("Signalling authentication failed", { addr: ip, reason: err.reason });
      } else if (err instanceof SignallingFormatError) {
        this.counters.signalRejected.inc(1, { reason: "malformed" });
        this.log.debug("Malformed signalling request", { addr: ip, error: err.message });
      }
      throw err;
    }
    if (message.type === "dial-request") return this.answerDialRequest(message, keys, ip);
    return this.answerOffer(message, keys, ip);
  }

  private answerDialRequest(request: SignalMessage, keys: PeerKeys, ip: string): SignalMessage {
    // Only an authenticated link is reported: the requester must have held it once, so if it does
    // not hold it now, the link is dead on its side. A link still being set up proves nothing.
    const link = this.links.get(request.from);
    const held = link?.state === "connected" ? link.id : "";
    const ack = this.codec.create({ type: "dial-ack", to: request.from, re: request.nonce, link: held });
    if (request.from !== this.options.identity.nodeId && request.broker_port > 0) {
      const event: DialRequest = {
        nodeId: request.from,
        deviceId: keys.deviceId,
        address: { host: ip, brokerPort: request.broker_port },
        staleLink: request.link,
      };
      // After the reply is on its way: the requester should hold the ack before our offer arrives.
      this.timers.timeout(() => {
        for (const listener of this.dialRequestListeners) listener(event);
      }, 0);
    }
    return ack;
  }

  private async answerOffer(offer: SignalMessage, keys: PeerKeys, ip: string): Promise<SignalMessage> {
    const { identity } = this.options;
    if (offer.to !== identity.nodeId) throw new SignallingConflictError("an offer must name its addressee");
    if (!(keys.deviceId < identity.deviceId)) {
      this.counters.signalRejected.inc(1, { reason: "wrong_dialer" });
      throw new SignallingConflictError("the node with the smaller device id dials; send a dial-request instead");
    }
    // The dialer keeps one connection attempt per peer, so a new offer means it dropped any older one.
    const existing = this.links.get(offer.from);
    if (existing) this.closeLink(existing, DisconnectReasons.replaced);
    this.ensurePendingCapacity();
    const link = this.createLink(offer.from, keys, "answerer");
    link.id = offer.nonce;
    link.signalAddress = ip;
    if (offer.broker_port > 0) link.brokerAddress = { host: ip, brokerPort: offer.broker_port };
    try {
      // Applied without the dialer's candidates: see splitCandidates for why they come later.
      const { sdp, candidates } = splitCandidates(offer.sdp);
      link.pc.setRemoteDescription(sdp, "offer");
      link.candidateTimer = this.timers.timeout(() => this.addRemoteCandidates(link, candidates), this.tuning.candidateDelayMs);
    } catch (err) {
      this.closeLink(link, DisconnectReasons.protocolError, false);
      if (/gather/i.test(errorText(err))) throw new ConnectionLimitError(`cannot accept a connection: ${errorText(err)}`);
      throw new SignallingFormatError(`offer SDP rejected: ${errorText(err)}`);
    }
    const sdp = await this.localDescription(link);
    if (link.closed) throw new SignallingConflictError("connection replaced while answering");
    return this.codec.create({ type: "answer", to: offer.from, re: offer.nonce, sdp });
  }

  // ---- connections ------------------------------------------------------------------------------

  private pendingCount(): number {
    let n = 0;
    for (const link of this.links.values()) if (link.state !== "connected") n++;
    return n;
  }

  private connectedCount(): number {
    let n = 0;
    for (const link of this.links.values()) if (link.state === "connected") n++;
    return n;
  }

  private ensurePendingCapacity(): void {
    if (this.pendingCount() >= this.tuning.maxPending) {
      this.counters.signalRejected.inc(1, { reason: "pending_limit" });
      throw new ConnectionLimitError(`${this.tuning.maxPending} connections are already being set up; try again later`);
    }
  }

  private get mux(): boolean {
    return this.options.config.udpMux ?? true;
  }

  private rtcConfig(): RtcConfig {
    const { config } = this.options;
    return {
      iceServers: config.iceServers,
      ...(config.bindAddress ? { bindAddress: config.bindAddress } : {}),
      portRangeBegin: config.port,
      portRangeEnd: this.mux ? config.port : config.port + config.portRangeSize - 1,
      enableIceUdpMux: this.mux,
      maxMessageSize: this.tuning.channelMaxMessageBytes,
    };
  }

  private createLink(nodeId: string, keys: PeerKeys, role: Role): Link {
    const pc = new nodeDataChannel.PeerConnection(`${role}:${nodeId}`, this.rtcConfig());
    this.livePeerConnections++;
    this.createdPeerConnections++;
    const link = new Link(nodeId, keys, role, pc, this.tuning);
    this.links.set(nodeId, link);
    this.noteActivity();
    pc.onStateChange((state) => {
      if (state === "failed") this.closeLink(link, DisconnectReasons.iceFailed);
      else if (state === "closed") this.closeLink(link, DisconnectReasons.closedByPeer);
    });
    if (role === "dialer") {
      try {
        this.wireChannel(link, pc.createDataChannel("peat"));
      } catch (err) {
        this.closeLink(link, DisconnectReasons.closed, false);
        // libdatachannel gathers here; with every port of the range held it finds no candidate.
        throw new ConnectionLimitError(`cannot start a connection: ${errorText(err)}`);
      }
    } else {
      pc.onDataChannel((dc) => {
        if (link.closed || link.dc) {
          // Only the first channel is ours; hold the extra one until closed so it is not collected live.
          this.graveyard.add({ pc, dc });
          dc.close();
          return;
        }
        this.wireChannel(link, dc);
        if (dc.isOpen()) this.onChannelOpen(link);
      });
    }
    link.deadline = this.timers.timeout(() => {
      this.log.debug("Connection did not open in time", { peer: nodeId, addr: link.address });
      this.closeLink(link, DisconnectReasons.connectTimeout);
    }, this.tuning.connectTimeoutMs);
    return link;
  }

  private wireChannel(link: Link, dc: DataChannel): void {
    link.dc = dc;
    this.liveDataChannels++;
    dc.setBufferedAmountLowThreshold(this.tuning.lowWaterBytes);
    dc.onOpen(() => this.onChannelOpen(link));
    dc.onClosed(() => this.closeLink(link, DisconnectReasons.closedByPeer, false));
    dc.onError((err) => {
      this.log.debug("Data channel error", { peer: link.nodeId, error: err });
      this.closeLink(link, DisconnectReasons.protocolError, false);
    });
    dc.onBufferedAmountLow(() => this.flush(link));
    dc.onMessage((message) => this.onFrame(link, message));
  }

  /** Waits (bounded) for ICE gathering to finish and returns the description with every candidate. */
  private localDescription(link: Link): Promise<string> {
    const { pc } = link;
    return new Promise<string>((resolve, reject) => {
      let settled = false;
      const finish = () => {
        if (settled) return;
        settled = true;
        this.timers.clear(timer);
        if (link.closed) return reject(new DialError(`connection to ${link.nodeId} closed while gathering`));
        const description = pc.localDescription();
        if (!description) return reject(new DialError("no local description"));
        resolve(description.sdp);
      };
      // With STUN/TURN servers that do not answer, send what has been gathered rather than hang.
      const timer = this.timers.timeout(finish, this.tuning.gatherTimeoutMs);
      pc.onGatheringStateChange((state) => {
        if (state === "complete") finish();
      });
      if (pc.gatheringState() === "complete") finish();
    });
  }

  private addRemoteCandidates(link: Link, candidates: { candidate: string; mid: string }[]): void {
    link.candidateTimer = undefined;
    if (link.closed) return;
    for (const { candidate, mid } of candidates) {
      try {
        link.pc.addRemoteCandidate(candidate, mid);
      } catch (err) {
        this.log.debug("Remote candidate refused", { peer: link.nodeId, candidate, error: errorText(err) });
      }
    }
  }

  private onChannelOpen(link: Link): void {
    if (link.closed || link.handshake) return;
    this.timers.clear(link.deadline);
    link.state = "authenticating";
    link.lastRx = Date.now();
    link.remoteAddress = selectedRemote(link.pc);
    link.handshake = new AuthHandshake(this.options.formationKey, link.role);
    this.sendFrame(link, link.handshake.start());
    link.deadline = this.timers.timeout(() => {
      const err = new HandshakeTimeoutError(`no formation proof within ${this.tuning.handshakeTimeoutMs} ms`);
      this.counters.authFailures.inc(1, { stage: "handshake" });
      this.warnAuth("Peer failed formation authentication", { peer: link.nodeId, addr: link.address, error: err.message });
      this.closeLink(link, DisconnectReasons.authTimeout);
    }, this.tuning.handshakeTimeoutMs);
  }

  private onFrame(link: Link, message: string | Buffer | ArrayBuffer): void {
    if (link.closed) return;
    const bytes =
      typeof message === "string"
        ? undefined
        : message instanceof ArrayBuffer
          ? new Uint8Array(message)
          : new Uint8Array(message.buffer, message.byteOffset, message.byteLength);
    const size = bytes ? bytes.length : Buffer.byteLength(message as string);
    link.bytesReceived += size;
    this.counters.bytesReceived.inc(size);
    link.lastRx = Date.now();
    if (link.state !== "connected") {
      if (!link.handshake) this.onChannelOpen(link);
      this.onHandshakeFrame(link, bytes);
      return;
    }
    try {
      if (!bytes || bytes.length === 0) throw new FrameError("text or empty data-channel message");
      switch (bytes[0]) {
        case FrameType.ping: {
          const ping = readPing(bytes);
          // A 5-byte PING comes from an older node, which expects a PONG.
          if (bytes.length === 5) this.sendFrame(link, seqFrame(FrameType.pong, ping.seq));
          else if (ping.echo) this.measureRtt(link, ping.echo.seq, ping.echo.heldUs / 1000);
          link.peerPingSeq = ping.seq;
          link.peerPingAt = performance.now();
          return;
        }
        case FrameType.pong:
          this.measureRtt(link, readSeq(bytes), 0);
          return;
        case FrameType.goodbye:
          this.log.debug("Peer said goodbye", { peer: link.nodeId, reason: readReason(bytes) });
          this.closeLink(link, DisconnectReasons.closedByPeer, false);
          return;
        default: {
          this.noteActivity(bytes.length);
          const complete = link.reassembler.push(bytes);
          if (complete) this.deliver(link.nodeId, complete);
        }
      }
    } catch (err) {
      this.log.warn("Dropping peer after a malformed frame", {
        peer: link.nodeId,
        addresses: new Display(`[${link.address}]`),
        error: errorText(err),
      });
      this.closeLink(link, DisconnectReasons.protocolError);
    }
  }

  private onHandshakeFrame(link: Link, bytes: Uint8Array | undefined): void {
    const handshake = link.handshake as AuthHandshake;
    try {
      if (!bytes || bytes.length === 0) throw new HandshakeFailedError("text or empty message before authentication");
      const step = handshake.receive(bytes);
      for (const frame of step.send) this.sendFrame(link, frame);
      if (step.done) this.onAuthenticated(link);
    } catch (err) {
      this.counters.authFailures.inc(1, { stage: "handshake" });
      this.warnAuth("Peer failed formation authentication", { peer: link.nodeId, addr: link.address, error: errorText(err) });
      this.closeLink(link, DisconnectReasons.authFailed);
    }
  }

  private onAuthenticated(link: Link): void {
    if (link.closed) return;
    this.timers.clear(link.deadline);
    link.deadline = undefined;
    link.state = "connected";
    link.connectedAt = Date.now();
    link.remoteAddress = selectedRemote(link.pc) ?? link.remoteAddress;
    const addresses = [link.address].filter((a) => a !== "");
    this.log.info("Peer connected", {
      peer: link.nodeId,
      endpoint_id: new Display(link.keys.endpointId.slice(0, 10)),
      addresses: new Display(`[${addresses.join(", ")}]`),
    });
    this.options.events.emit({ type: "PeerConnected", peer_id: link.nodeId, device_id: link.keys.deviceId, addresses });
    this.topologyMaybeChanged();
    const peer: TransportPeer = {
      peerId: link.nodeId,
      deviceId: link.keys.deviceId,
      addresses,
      ...(link.brokerAddress ? { brokerAddress: link.brokerAddress } : {}),
    };
    this.emitConnected(peer);
    link.settle.resolve();
    // At once, so that the round trip is known within one ping interval of connecting.
    this.ping(link);
  }

  private deliver(peerId: string, bytes: Uint8Array): void {
    this.emitMessage(peerId, bytes);
  }

  protected listenerFailed(err: unknown): void {
    // A bug in a consumer must not tear down the connection that delivered to it.
    this.log.error("Transport listener failed", { error: errorText(err) });
  }

  private sendFrame(link: Link, frame: Uint8Array): void {
    if (!link.dc || link.closed) return;
    try {
      link.dc.sendMessageBinary(frame);
    } catch (err) {
      this.log.debug("Send failed", { peer: link.nodeId, error: errorText(err) });
      this.closeLink(link, DisconnectReasons.closedByPeer, false);
      return;
    }
    link.bytesSent += frame.length;
    this.counters.bytesSent.inc(frame.length);
  }

  /** Hands queued frames to the channel until its buffer reaches the high-water mark. */
  private flush(link: Link): void {
    const dc = link.dc;
    if (!dc || link.closed) return;
    while (link.queueHead < link.queue.length) {
      if (dc.bufferedAmount() >= this.tuning.highWaterBytes) break;
      const frame = link.queue[link.queueHead] as Uint8Array;
      link.queue[link.queueHead] = undefined as unknown as Uint8Array;
      link.queueHead++;
      link.queuedBytes -= frame.length;
      this.sendFrame(link, frame);
      if (link.closed) return;
    }
    if (link.queueHead === link.queue.length) {
      link.queue = [];
      link.queueHead = 0;
    } else if (link.queueHead > 1024) {
      link.queue = link.queue.slice(link.queueHead);
      link.queueHead = 0;
    }
  }

  /**
   * Data is moving (past QUIET_BYTES_PER_INTERVAL) or a connection is being set up: SCTP's timers
   * run at full pace (sctp-timer.ts). Without a size argument, busy at once.
   */
  private noteActivity(bytes = Number.POSITIVE_INFINITY): void {
    // A stopped transport holds nothing: frames still arriving while it closes must not pin the pace.
    if (!this.running) return;
    this.bytesSinceTick += bytes;
    if (!this.busy && this.bytesSinceTick > QUIET_BYTES_PER_INTERVAL) {
      this.busy = true;
      setSctpBusy(this, true);
    }
  }

  /** Idle once a whole ping interval passed quietly with every link connected. */
  private checkIdle(): void {
    let settingUp = false;
    for (const link of this.links.values()) settingUp ||= link.state !== "connected" && !link.closed;
    if (settingUp) this.noteActivity();
    else if (this.busy && this.bytesSinceTick <= QUIET_BYTES_PER_INTERVAL) {
      this.busy = false;
      setSctpBusy(this, false);
    }
    this.bytesSinceTick = 0;
  }

  private tick(): void {
    this.checkIdle();
    const now = Date.now();
    const silentMs = this.tuning.silentIntervals * this.tuning.pingIntervalMs;
    for (const link of [...this.links.values()]) {
      if (link.state !== "connected" || link.closed) continue;
      if (now - link.lastRx > silentMs) {
        this.log.warn("Peer silent; disconnecting", { peer: link.nodeId, addr: link.address, silent_ms: now - link.lastRx });
        this.closeLink(link, DisconnectReasons.timeout);
        continue;
      }
      this.ping(link);
      // In case a buffered-amount-low callback was missed, nothing stays queued past one interval.
      this.flush(link);
    }
  }

  private ping(link: Link): void {
    link.previousPingSeq = link.pingSeq;
    link.previousPingSentAt = link.pingSentAt;
    // Never 0, which in a PING's echo field means "none yet".
    link.pingSeq = (link.pingSeq + 1) >>> 0 || 1;
    link.pingSentAt = performance.now();
    const heldUs = link.peerPingSeq === 0 ? 0 : (link.pingSentAt - link.peerPingAt) * 1000;
    this.sendFrame(link, pingFrame(link.pingSeq, link.peerPingSeq, heldUs));
  }

  private measureRtt(link: Link, seq: number, heldMs: number): void {
    const sentAt = seq === link.pingSeq ? link.pingSentAt : seq === link.previousPingSeq ? link.previousPingSentAt : undefined;
    if (sentAt === undefined || seq === 0) return;
    const rtt = performance.now() - sentAt - heldMs;
    if (rtt >= 0) link.rttMs = Math.round(rtt * 1000) / 1000;
  }

  private closeLink(link: Link, reason: string, notifyPeer = true): void {
    if (link.closed) return;
    link.closed = true;
    this.timers.clear(link.deadline);
    this.timers.clear(link.candidateTimer);
    const wasConnected = link.state === "connected";
    if (this.links.get(link.nodeId) === link) this.links.delete(link.nodeId);
    const { pc, dc } = link;
    if (notifyPeer && dc) {
      try {
        if (dc.isOpen()) dc.sendMessageBinary(goodbyeFrame(reason));
      } catch {}
    }
    try {
      dc?.close();
    } catch {}
    try {
      pc.close();
    } catch {}
    this.livePeerConnections--;
    if (dc) this.liveDataChannels--;
    // Keep the wrappers reachable until libdatachannel's last callbacks for them have run: a
    // wrapper collected while native code still refers to it crashed the process in testing.
    const grave = { pc, dc };
    this.graveyard.add(grave);
    this.timers.timeout(() => this.graveyard.delete(grave), 10_000).unref?.();
    link.queue = [];
    link.queueHead = 0;
    link.queuedBytes = 0;
    if (wasConnected) {
      this.log.info("Peer disconnected", { peer: link.nodeId, reason });
      this.options.events.emit({ type: "PeerDisconnected", peer_id: link.nodeId, reason });
      this.topologyMaybeChanged();
      this.emitDisconnected(link.nodeId, reason);
    } else {
      const auth = reason === DisconnectReasons.authFailed || reason === DisconnectReasons.authTimeout;
      link.settle.reject(new DialError(`connection to ${link.nodeId} closed before authentication: ${reason}`, auth));
    }
  }

  private topologyMaybeChanged(): void {
    const count = this.connectedCount();
    if (count === this.lastConnectedCount) return;
    this.lastConnectedCount = count;
    this.options.events.emit({ type: "TopologyChanged", new_role: count > 0 ? "peer" : "standalone", peer_count: count });
  }

  private warnAuth(message: string, fields: Record<string, unknown>): void {
    const { ok, suppressed } = this.warnThrottle.allow();
    if (!ok) return;
    this.log.warn(message, suppressed > 0 ? { ...fields, suppressed } : fields);
  }
}

function selectedRemote(pc: PeerConnection): string | null {
  try {
    const pair = pc.getSelectedCandidatePair();
    return pair ? formatAddress(pair.remote.address, pair.remote.port) : null;
  } catch {
    return null;
  }
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}


/**
 * Separates the candidate lines from an offer. The answerer applies the offer without them and
 * adds them `candidateDelayMs` later. Reason (measured, docs/transport.md): if the answerer starts
 * connectivity checks at once, they reach the dialer while it is still inside
 * setRemoteDescription(answer); on loopback or a LAN, ICE then connects and DTLS verifies the
 * answerer's certificate before libdatachannel has stored the answer's fingerprint, so the
 * handshake fails ("DTLS alert: unknown CA", 2-28% of connections), and otherwise the answerer's
 * first DTLS flight is often lost (a 1 s retransmission on ~30% of connections). Without the
 * candidates, the answerer only answers the dialer's checks, which start after the dialer has the
 * whole answer. The late candidates still let the answerer punch through a NAT when STUN is used.
 */
export function splitCandidates(sdp: string): { sdp: string; candidates: { candidate: string; mid: string }[] } {
  const kept: string[] = [];
  const candidates: { candidate: string; mid: string }[] = [];
  let mid = "0";
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith("a=mid:")) mid = line.slice(6);
    if (line.startsWith("a=candidate:")) candidates.push({ candidate: line.slice(2), mid });
    // An early end-of-candidates with none listed would let ICE give up before the late ones come.
    else if (!line.startsWith("a=end-of-candidates")) kept.push(line);
  }
  return { sdp: kept.join("\r\n"), candidates };
}
