/**
 * PeerConnector: turns discovery's addresses into authenticated connections, and keeps them.
 *
 * - Peers are keyed by node id. A static entry written without a name starts under a provisional
 *   id (`static:<host>:<port>`); the first signed dial-ack tells us the real id, and the entry is
 *   merged into any entry another strategy already has for that node.
 * - Of each pair, the node with the smaller device id dials (sends the offer). The other one sends
 *   a signed dial-request, which makes the smaller one dial back, to the addresses it knows or to
 *   the request's source address. So a peer configured on one side only still gets connected,
 *   and there is never more than one connection per pair.
 * - A failed attempt or a lost connection is retried with exponential backoff and jitter
 *   (250 ms doubling to 5 s; to 30 s for a peer that failed authentication). A peer that
 *   discovery no longer reports is disconnected and forgotten; one we only know because it
 *   connected to us is forgotten when it disconnects.
 */
import type { DiscoveredPeer, DiscoveryEvent, DiscoveryStrategy, PeerAddress } from "../discovery/types.ts";
import type { NodeIdentity } from "../identity/index.ts";
import type { Component } from "../lifecycle.ts";
import { Display, type Logger } from "../log.ts";
import { TrackedTimers } from "../timers.ts";
import { DialError } from "./errors.ts";
import { NODE_ID_PATTERN } from "./signal.ts";
import { DisconnectReasons, type TransportPeer } from "./types.ts";
import { type DialRequest, type WebRtcTransport, errorText, formatAddress } from "./webrtc.ts";

export type PeerState = "discovered" | "connecting" | "authenticating" | "connected" | "backoff" | "failed";

/** One peer as the broker's `/api/v1/peers` reports it. */
export interface PeerView {
  id: string;
  device_id: string | null;
  endpoint_id: string | null;
  connected: boolean;
  state: PeerState;
  rtt_ms: number | null;
  /** Broker addresses we know for the peer (`ip:port`). */
  addresses: string[];
  /** The peer's ICE address while connected (`ip:port`). */
  remote_address: string | null;
  discovered_via: string[];
  bytes_sent: number;
  bytes_received: number;
  last_error: string | null;
}

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  /** The cap for a peer whose last attempt failed authentication (another formation will not change soon). */
  authMaxMs: number;
}

export interface PeerConnectorOptions {
  transport: WebRtcTransport;
  discovery: DiscoveryStrategy[];
  identity: NodeIdentity;
  log: Logger;
  backoff?: Partial<BackoffOptions>;
  /** How long the larger side waits for the dial-back its dial-request asked for. */
  dialBackWaitMs?: number;
}

interface SourceEntry {
  source: string;
  addresses: PeerAddress[];
}

interface PeerEntry {
  id: string;
  provisional: boolean;
  /** Keyed by `<source>|<id the strategy reported>`, so one strategy losing the peer leaves the others. */
  sources: Map<string, SourceEntry>;
  /** Where a dial-request came from, for peers discovery does not know. */
  learned: PeerAddress | undefined;
  failures: number;
  busy: boolean;
  timer: ReturnType<typeof setTimeout> | undefined;
  lastError: string | null;
  authFailed: boolean;
  dropped: boolean;
}

/**
 * The 5 s cap bounds how long a pair stays apart after a partition heals, however long it lasted:
 * an attempt hanging on the dead link gets through on a retransmitted SYN or gives up at the 10 s
 * signalling timeout (at most ~3 s after the heal), and as the delay counts from the start of the
 * attempt, the next one follows at once. So peers reconnect within a few seconds of a heal and
 * converge within 10 s (test/chaos/partition.test.ts); with a 30 s cap counted from the failure
 * they took up to 30 s after long partitions. The cost: one signalling request per unreachable peer
 * every 2.5–10 s. Authentication failures keep the long cap.
 */
const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 250, maxMs: 5000, authMaxMs: 30_000 };

/** Node ids cannot contain ':'; anything that is not a node id is a discovery placeholder. */
export function isProvisionalId(id: string): boolean {
  return !NODE_ID_PATTERN.test(id);
}

function sameAddresses(a: PeerAddress[], b: PeerAddress[]): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export class PeerConnector implements Component {
  readonly name = "peer-connector";
  private readonly log: Logger;
  private readonly transport: WebRtcTransport;
  private readonly selfId: string;
  private readonly backoff: BackoffOptions;
  private readonly dialBackWaitMs: number;
  private readonly entries = new Map<string, PeerEntry>();
  /** Provisional id → real node id, learned from dial-acks (the real id may be our own). */
  private readonly aliases = new Map<string, string>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly unsubscribe: (() => void)[] = [];
  private running = false;
  /** Retry and dial-back timers: `peat_timers{component="connector"}`. */
  readonly timers = new TrackedTimers();

  constructor(private readonly options: PeerConnectorOptions) {
    this.log = options.log.child("peat_mesh::peer_connector");
    this.transport = options.transport;
    this.selfId = options.identity.nodeId;
    const backoff = options.backoff ?? {};
    // A caller that sets its own cap (tests) gets it for authentication failures too.
    this.backoff = { ...DEFAULT_BACKOFF, ...backoff, authMaxMs: backoff.authMaxMs ?? backoff.maxMs ?? DEFAULT_BACKOFF.authMaxMs };
    this.dialBackWaitMs = options.dialBackWaitMs ?? 10_000;
    // Subscribed at construction, so peers found while discovery starts are not missed whatever
    // the start order; dialling waits for start().
    for (const strategy of options.discovery) this.unsubscribe.push(strategy.onEvent((e) => this.onDiscovery(e)));
    this.unsubscribe.push(this.transport.onConnected((peer) => this.onConnected(peer)));
    this.unsubscribe.push(this.transport.onDisconnected((peerId, reason) => this.onDisconnected(peerId, reason)));
    this.unsubscribe.push(this.transport.onDialRequest((request) => this.onDialRequest(request)));
  }

  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    for (const strategy of this.options.discovery) for (const peer of strategy.peers()) this.onFound(peer);
    for (const entry of this.entries.values()) if (!entry.timer && !entry.busy) this.schedule(entry, 0);
    this.log.info("PeerConnector started");
  }

  async stop(): Promise<void> {
    this.running = false;
    for (const entry of this.entries.values()) {
      this.timers.clear(entry.timer);
      entry.timer = undefined;
    }
    for (const off of this.unsubscribe) off();
    this.unsubscribe.length = 0;
  }

  // ---- views for the broker ---------------------------------------------------------------------

  peers(): PeerView[] {
    return [...this.entries.values()].map((e) => this.view(e)).sort((a, b) => a.id.localeCompare(b.id));
  }

  peer(id: string): PeerView | undefined {
    const entry = this.entries.get(id) ?? this.entries.get(this.aliases.get(id) ?? "");
    return entry ? this.view(entry) : undefined;
  }

  private view(e: PeerEntry): PeerView {
    const link = e.provisional ? undefined : this.transport.linkInfo(e.id);
    const keys = e.provisional ? undefined : this.transport.peerKeys(e.id);
    let state: PeerState;
    if (link) state = link.state;
    else if (e.busy) state = "connecting";
    else if (e.timer && e.failures > 0) state = e.authFailed ? "failed" : "backoff";
    else state = "discovered";
    const addresses = this.addressesOf(e).map((a) => formatAddress(a.host, a.brokerPort));
    return {
      id: e.id,
      device_id: keys?.deviceId ?? null,
      endpoint_id: keys?.endpointId ?? null,
      connected: link?.state === "connected",
      state,
      rtt_ms: link?.rttMs ?? null,
      addresses,
      remote_address: link?.remoteAddress ?? null,
      discovered_via: [...new Set([...e.sources.values()].map((s) => s.source))].sort(),
      bytes_sent: link?.bytesSent ?? 0,
      bytes_received: link?.bytesReceived ?? 0,
      last_error: e.lastError,
    };
  }

  // ---- discovery --------------------------------------------------------------------------------

  private onDiscovery(event: DiscoveryEvent): void {
    if (event.type === "PeerLost") this.onLost(event.nodeId, event.source);
    else this.onFound(event.peer);
  }

  private onFound(peer: DiscoveredPeer): void {
    const id = this.aliases.get(peer.nodeId) ?? peer.nodeId;
    if (id === this.selfId) {
      this.log.debug("Skipping self in peer discovery", { peer: peer.nodeId });
      return;
    }
    let entry = this.entries.get(id);
    const key = `${peer.source}|${peer.nodeId}`;
    if (!entry) {
      entry = this.newEntry(id);
      entry.sources.set(key, { source: peer.source, addresses: peer.addresses });
      this.log.debug("Peer discovered", { peer: id, source: peer.source, addresses: this.shownAddresses(entry) });
      if (this.running) this.schedule(entry, 0);
      return;
    }
    const previous = entry.sources.get(key);
    entry.sources.set(key, { source: peer.source, addresses: peer.addresses });
    // mDNS re-announces unchanged records; only a real address change is worth an early retry.
    if (previous && sameAddresses(previous.addresses, peer.addresses)) return;
    this.log.debug("Peer addresses updated", { peer: id, addresses: this.shownAddresses(entry) });
    if (this.running && !entry.busy && !this.isConnected(entry)) this.schedule(entry, 0);
  }

  private onLost(nodeId: string, source: string): void {
    const id = this.aliases.get(nodeId) ?? nodeId;
    const entry = this.entries.get(id);
    if (!entry) return;
    entry.sources.delete(`${source}|${nodeId}`);
    if (entry.sources.size > 0) return;
    this.drop(entry);
    this.log.info("Peer removed", { peer: id, source });
    if (!entry.provisional) this.transport.disconnect(id, DisconnectReasons.lost);
  }

  // ---- transport events -------------------------------------------------------------------------

  private onConnected(peer: TransportPeer): void {
    let entry = this.entries.get(peer.peerId);
    if (!entry) entry = this.newEntry(peer.peerId);
    // Where it signalled from, authenticated: a peer that moved is redialled there, not only at the
    // (now stale) address discovery gave.
    if (peer.brokerAddress) entry.learned = peer.brokerAddress;
    entry.failures = 0;
    entry.lastError = null;
    entry.authFailed = false;
    this.timers.clear(entry.timer);
    entry.timer = undefined;
    const waiters = this.waiters.get(peer.peerId);
    if (waiters) for (const wake of waiters) wake();
  }

  private onDisconnected(peerId: string, reason: string): void {
    const entry = this.entries.get(peerId);
    if (!entry || entry.dropped) return;
    if (entry.sources.size === 0) {
      // Known only because it connected (or asked us to): it is its side's job to come back.
      this.drop(entry);
      return;
    }
    if (!this.running || reason === DisconnectReasons.lost) return;
    this.schedule(entry, this.delay(entry.failures, entry.authFailed));
  }

  private onDialRequest(request: DialRequest): void {
    if (!this.running || request.nodeId === this.selfId) return;
    // The requester found out who dials; if that is the requester (it did not know our id), it dials.
    if (!this.transport.isDialerFor(request.nodeId)) return;
    const link = this.transport.linkInfo(request.nodeId);
    if (link) {
      // The requester does not hold this link (it said so, naming it): it is dead on its side.
      if (request.staleLink === "" || request.staleLink !== link.linkId) return;
      this.log.debug("Peer reports our connection gone; redialling", { peer: request.nodeId });
      this.transport.disconnect(request.nodeId, DisconnectReasons.replaced);
    }
    const entry = this.entries.get(request.nodeId) ?? this.newEntry(request.nodeId);
    entry.learned = request.address;
    if (entry.busy) return;
    // The peer is evidently up: no reason to wait out a backoff.
    entry.failures = 0;
    this.schedule(entry, 0);
  }

  // ---- dialling ---------------------------------------------------------------------------------

  private newEntry(id: string): PeerEntry {
    const entry: PeerEntry = {
      id,
      provisional: isProvisionalId(id),
      sources: new Map(),
      learned: undefined,
      failures: 0,
      busy: false,
      timer: undefined,
      lastError: null,
      authFailed: false,
      dropped: false,
    };
    this.entries.set(id, entry);
    return entry;
  }

  private drop(entry: PeerEntry): void {
    entry.dropped = true;
    this.timers.clear(entry.timer);
    entry.timer = undefined;
    if (this.entries.get(entry.id) === entry) this.entries.delete(entry.id);
  }

  private isConnected(entry: PeerEntry): boolean {
    return !entry.provisional && this.transport.linkInfo(entry.id)?.state === "connected";
  }

  private addressesOf(entry: PeerEntry): PeerAddress[] {
    const all: PeerAddress[] = [];
    const seen = new Set<string>();
    for (const s of entry.sources.values()) {
      for (const a of s.addresses) {
        const key = formatAddress(a.host, a.brokerPort);
        if (!seen.has(key)) {
          seen.add(key);
          all.push(a);
        }
      }
    }
    if (entry.learned && !seen.has(formatAddress(entry.learned.host, entry.learned.brokerPort))) all.push(entry.learned);
    return all;
  }

  private shownAddresses(entry: PeerEntry): Display {
    return new Display(`[${this.addressesOf(entry).map((a) => formatAddress(a.host, a.brokerPort)).join(", ")}]`);
  }

  /** Backoff with "equal jitter": half the exponential step fixed, half random, so peers that failed together spread out. */
  private delay(failures: number, authFailed = false): number {
    const cap = authFailed ? Math.max(this.backoff.maxMs, this.backoff.authMaxMs) : this.backoff.maxMs;
    const step = Math.min(cap, this.backoff.initialMs * 2 ** Math.min(failures, 30));
    return Math.round(step / 2 + (Math.random() * step) / 2);
  }

  private schedule(entry: PeerEntry, delayMs: number): void {
    if (!this.running || entry.dropped) return;
    this.timers.clear(entry.timer);
    entry.timer = this.timers.timeout(() => {
      entry.timer = undefined;
      void this.attempt(entry);
    }, delayMs);
  }

  private async attempt(entry: PeerEntry): Promise<void> {
    if (!this.running || entry.dropped || entry.busy || this.isConnected(entry)) return;
    entry.busy = true;
    const started = performance.now();
    try {
      await this.connect(entry);
      entry.failures = 0;
      entry.lastError = null;
      entry.authFailed = false;
    } catch (err) {
      if (entry.dropped || !this.running) return;
      entry.failures++;
      entry.lastError = errorText(err);
      entry.authFailed = err instanceof DialError && err.authFailure;
      if (entry.sources.size === 0) {
        // Only a dial-request told us about it; the requester will ask again if it still wants us.
        this.log.debug("Dial-back failed", { peer: entry.id, error: entry.lastError });
        if (!this.isConnected(entry)) this.drop(entry);
        return;
      }
      // The delay runs from the start of the failed attempt: one that hung until its timeout on a
      // dead link (10 s) has waited long enough, and the next one may be the one after the heal.
      const wait = Math.max(0, Math.round(this.delay(entry.failures, entry.authFailed) - (performance.now() - started)));
      this.log.debug("Connection attempt failed; will retry", {
        peer: entry.id,
        addresses: this.shownAddresses(entry),
        attempt: entry.failures,
        retry_ms: wait,
        error: entry.lastError,
      });
      this.schedule(entry, wait);
    } finally {
      entry.busy = false;
    }
  }

  private async connect(entry: PeerEntry): Promise<void> {
    const addresses = this.addressesOf(entry);
    if (addresses.length === 0) throw new DialError("no address known");
    if (entry.provisional) {
      const ack = await this.transport.requestDial(undefined, addresses);
      const resolved = this.resolve(entry, ack.nodeId);
      if (!resolved) return;
      if (resolved !== entry) {
        // Merged into an entry another strategy already had: that entry makes its own attempts.
        if (!resolved.busy && !this.isConnected(resolved)) this.schedule(resolved, 0);
        return;
      }
      if (this.transport.isDialerFor(entry.id)) await this.transport.dial(entry.id, addresses);
      else await this.awaitDialBack(entry, ack.link, ack.address);
      return;
    }
    if (this.transport.isDialerFor(entry.id)) {
      await this.transport.dial(entry.id, addresses);
      return;
    }
    const ack = await this.transport.requestDial(entry.id, addresses);
    await this.awaitDialBack(entry, ack.link, ack.address);
  }

  /** After our dial-request: if the peer holds a link we do not, tell it so; then wait for its offer. */
  private async awaitDialBack(entry: PeerEntry, peerLink: string, address: PeerAddress): Promise<void> {
    const ours = this.transport.linkInfo(entry.id);
    if (peerLink !== "" && ours?.linkId !== peerLink) {
      await this.transport.requestDial(entry.id, [address], peerLink);
    }
    await this.waitForConnection(entry.id, this.dialBackWaitMs);
  }

  private waitForConnection(id: string, timeoutMs: number): Promise<void> {
    if (this.transport.linkInfo(id)?.state === "connected") return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      let set = this.waiters.get(id);
      if (!set) {
        set = new Set();
        this.waiters.set(id, set);
      }
      const done = () => {
        this.timers.clear(timer);
        set.delete(done);
        if (set.size === 0) this.waiters.delete(id);
      };
      const wake = () => {
        done();
        resolve();
      };
      const timer = this.timers.timeout(() => {
        done();
        reject(new DialError(`${id} did not dial back within ${timeoutMs} ms`));
      }, timeoutMs);
      set.add(wake);
    });
  }

  /** Replaces a provisional entry by the node it turned out to be; undefined when that node is us. */
  private resolve(entry: PeerEntry, nodeId: string): PeerEntry | undefined {
    const provisionalId = entry.id;
    this.aliases.set(provisionalId, nodeId);
    if (this.entries.get(provisionalId) === entry) this.entries.delete(provisionalId);
    if (nodeId === this.selfId) {
      this.log.debug("Skipping self in peer discovery", { peer: provisionalId });
      entry.dropped = true;
      return undefined;
    }
    const existing = this.entries.get(nodeId);
    if (existing && existing !== entry) {
      for (const [key, source] of entry.sources) existing.sources.set(key, source);
      existing.learned ??= entry.learned;
      entry.dropped = true;
      this.log.debug("Static peer identified; merged", { entry: provisionalId, peer: nodeId });
      return existing;
    }
    entry.id = nodeId;
    entry.provisional = false;
    this.entries.set(nodeId, entry);
    this.log.debug("Static peer identified", { entry: provisionalId, peer: nodeId });
    return entry;
  }
}
