/**
 * Keeps this node's documents and its connected peers' documents the same.
 *
 * - Push: every committed change (local, or applied from a peer) is sent to every other connected
 *   peer on the next turn of the event loop, batched with whatever else changed meanwhile.
 * - Reconcile: on connect and every PEAT_SYNC_INTERVAL_SECS, peers compare one fingerprint of all
 *   they hold; when it differs they narrow down by collection and id range to the differing items.
 * - FullHistory documents travel as Automerge sync-protocol messages with a sync state per peer and
 *   document; LatestOnly documents as whole snapshots, last writer wins; deletes as tombstones.
 *
 * The engine knows peers only by id: how they were found and connected is the transport's business.
 */
import { Automerge } from "../automerge.ts";
import type { Component } from "../lifecycle.ts";
import type { Logger } from "../log.ts";
import type { Counter, Metrics } from "../metrics.ts";
import { type TimerHandle, TrackedTimers } from "../timers.ts";
import {
  type ApplyOutcome,
  type DocumentStore,
  InvalidDocumentError,
  InvalidHlcError,
  InvalidKeyError,
  InvalidRemoteDataError,
  type SyncModeRegistry,
  headsHash,
} from "../store/index.ts";
import type { Transport } from "../transport/types.ts";
import { FingerprintIndex, type Item, hex64 } from "./fingerprints.ts";
import { type Entry, MAX_BATCH_ENTRIES, MAX_ITEMS, MAX_RANGES, type Message, PROTOCOL_VERSION, ProtocolError, decodeMessage, encodeMessage } from "./protocol.ts";

type SyncState = ReturnType<typeof Automerge.initSyncState>;
type Doc = Automerge.Doc<unknown>;

/** A range with at most this many items is listed item by item instead of split further. */
const ITEM_LIST_THRESHOLD = 64;
const SPLIT_PARTS = 16;
/** A batch is sent once its entries reach this many bytes, to keep single messages moderate. */
const BATCH_BYTES = 512 * 1024;
/** Tombstones and LatestOnly/tombstone purges happen independently on each node; rebuilding the
 * index now and then folds those in without a change event for each. */
const INDEX_REBUILD_MS = 10 * 60_000;
/** Sync states of peers that went away are kept (for a quick resume) for this many peers. */
const MAX_REMEMBERED_PEERS = 64;
/**
 * Incoming messages are handled for at most this long per turn of the event loop; the rest wait in
 * their peer's inbox and are handled in later turns, peers taking turns. So a peer that sends
 * faster than this node can handle (a flood) cannot hold the event loop: other peers' pings and
 * messages, and the broker, keep being served, instead of every other peer seeing this node fall
 * silent and dropping it.
 */
const HANDLE_SLICE_MS = 20;
/** A peer whose unhandled messages exceed this is dropped: it sends faster than we can handle. */
const MAX_INBOX_BYTES = 128 * 1024 * 1024;
/**
 * A FullHistory document up to this size is pushed to a peer with no sync history for it as the
 * whole stored document, in one message, instead of opening a three-message Automerge exchange.
 * Past it, the exchange's have/need negotiation is worth its round trips.
 */
const WHOLE_DOC_PUSH_MAX_BYTES = 32 * 1024;
/** With no peer to push to, changed keys wait for the index; past this many it is rebuilt instead. */
const MAX_STALE_KEYS = 50_000;
/**
 * A node (re)joining catches up from the first peer it connects to before reconciling with the
 * others, so that it is not sent the same missing documents by every peer at once. Past this
 * long, it reconciles with the others anyway.
 */
const CATCH_UP_MAX_MS = 5000;
/** Catching up also ends once the first peer has sent nothing for this long after its last batch. */
const CATCH_UP_QUIET_MS = 500;

export interface SyncEngineOptions {
  store: DocumentStore;
  transport: Transport;
  syncModes: SyncModeRegistry;
  log: Logger;
  metrics: Metrics;
  intervalSecs: number;
  /** Tombstones older than this are expired everywhere and are neither sent nor accepted. */
  tombstoneTtlSecs: number;
}

const keyOf = (c: string, id: string) => `${c}\0${id}`;

/** The version a FullHistory entry carries, with the epoch of its history if it was re-created. */
const remoteVersion = (entry: { hlc: string; w: string; e?: string }) =>
  entry.e === undefined ? { hlc: entry.hlc, writer: entry.w } : { hlc: entry.hlc, writer: entry.w, epoch: entry.e };
function splitKey(key: string): { collection: string; id: string } {
  const sep = key.indexOf("\0");
  return { collection: key.slice(0, sep), id: key.slice(sep + 1) };
}

type Version = ReturnType<DocumentStore["getVersion"]>;

/** What one flush reads of a document once for all peers it goes to. */
interface DocView {
  version: Version;
  heads?: string[];
  bytes?: Uint8Array;
  epoch?: { e?: string };
}

interface SendOptions {
  /**
   * Nothing is known of the peer's copies (a push) or it has none (it did not list them, or asked
   * for them): a small FullHistory document with no sync history with the peer goes whole.
   */
  whole?: boolean;
  /** The other peers this push goes to, for the receiver's relay decision. */
  to?: string[];
  /** What this flush already read of each document, shared by its peers. */
  views?: Map<string, DocView>;
}

function getOrCreate<V>(map: Map<string, Map<string, V>>, key: string): Map<string, V> {
  let inner = map.get(key);
  if (!inner) {
    inner = new Map();
    map.set(key, inner);
  }
  return inner;
}

/** Marks `key` most recently used in an insertion-ordered map and evicts beyond `bound`. */
function touchRecent<V>(map: Map<string, V>, key: string, bound: number): void {
  const value = map.get(key);
  if (value !== undefined) {
    map.delete(key);
    map.set(key, value);
  }
  while (map.size > bound) map.delete(map.keys().next().value as string);
}

/** A sync state reduced to the heads both sides certainly hold: what was sent is forgotten. */
function sharedHeadsOnly(state: SyncState): SyncState {
  return Automerge.decodeSyncState(Automerge.encodeSyncState(state));
}

/** The `need` of an Automerge sync message; a message that does not decode is rejected later. */
function decodeNeed(message: Uint8Array): string[] {
  try {
    return Automerge.decodeSyncMessage(message).need;
  } catch {
    return [];
  }
}

function sameHeads(a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(a);
  return b.every((h) => set.has(h));
}

/** Errors caused by what a peer sent (as opposed to faults of this node, such as a full disk). */
function isPeerFault(err: unknown): boolean {
  return (
    err instanceof ProtocolError ||
    err instanceof InvalidRemoteDataError ||
    err instanceof InvalidHlcError ||
    err instanceof InvalidKeyError ||
    err instanceof InvalidDocumentError
  );
}

interface Session {
  peerId: string;
  /** Keys to send to this peer on the next flush (its own echoes excluded). */
  dirty: Set<string>;
  /** The last root the peer sent. */
  root?: { fp: string; n: number };
  /** Whether what we know the peer lacks has been pushed since it connected. */
  knownDifferencesSent: boolean;
  /** Reconciliation with this peer waits until we have caught up from another. */
  deferred: boolean;
}

export class SyncEngine implements Component {
  readonly name = "sync";
  private readonly index: FingerprintIndex;
  private readonly sessions = new Map<string, Session>();
  /** Automerge sync states per peer, per document; kept across reconnects of the same peer. */
  private readonly states = new Map<string, Map<string, SyncState>>();
  /**
   * Heads each peer is known to hold, per FullHistory document (from a finished Automerge exchange
   * or an acknowledged delta). Facts about the peer's stored data, so they survive reconnects; if
   * the peer lost its data, the next delta fails on missing dependencies and falls back.
   */
  private readonly shared = new Map<string, Map<string, string[]>>();
  private readonly unsubscribe: (() => void)[] = [];
  private timer: ReturnType<typeof setInterval> | undefined;
  private rebuildTimer: ReturnType<typeof setInterval> | undefined;
  /** `peat_timers{component="sync"}`. */
  readonly timers = new TrackedTimers();
  private flushScheduled = false;
  /** Keys whose fingerprint must be re-read before the index is next used. */
  private readonly stale = new Set<string>();
  /**
   * Versions read since the key last changed (a change event drops the key), so that applying an
   * entry, refreshing the index and pushing read each document's row once. Cleared by every flush.
   */
  private readonly knownVersions = new Map<string, Version>();
  /** The peer whose data the store is applying right now: its echo is not sent back to it. */
  private applyingFrom: string | undefined;
  /** Messages received but not handled yet, per peer (see HANDLE_SLICE_MS). */
  private readonly inboxes = new Map<string, { queue: (Uint8Array | undefined)[]; head: number; bytes: number }>();
  private drainScheduled = false;
  /** Time spent handling messages since the event loop last came round (reset by setImmediate). */
  private handledMs = 0;
  private handledResetScheduled = false;
  /** Peers the batch being applied was also pushed to: not relayed there either. */
  private alsoSentTo: ReadonlySet<string> | undefined;
  /** The peer we are catching up from (see CATCH_UP_MAX_MS), and when that ends at the latest. */
  private catchUp: { peerId: string; timer: TimerHandle; quiet?: TimerHandle } | undefined;
  private readonly log: Logger;
  private readonly counters: {
    messagesIn: Counter;
    messagesOut: Counter;
    bytesIn: Counter;
    bytesOut: Counter;
    entriesApplied: Counter;
    protocolErrors: Counter;
    reconciles: Counter;
  };

  constructor(private readonly options: SyncEngineOptions) {
    this.log = options.log;
    this.index = new FingerprintIndex(options.store, options.syncModes);
    const m = options.metrics;
    this.counters = {
      messagesIn: m.counter("peat_sync_messages_received_total", "Sync messages received, by type"),
      messagesOut: m.counter("peat_sync_messages_sent_total", "Sync messages sent, by type"),
      bytesIn: m.counter("peat_sync_bytes_received_total", "Sync payload bytes received, by message type"),
      bytesOut: m.counter("peat_sync_bytes_sent_total", "Sync payload bytes sent, by message type"),
      entriesApplied: m.counter("peat_sync_entries_applied_total", "Remote document updates that changed local state, by kind"),
      protocolErrors: m.counter("peat_sync_protocol_errors_total", "Peers dropped for malformed or out-of-protocol messages"),
      reconciles: m.counter("peat_sync_reconciliations_total", "Reconciliation rounds that found differences"),
    };
    m.gauge("peat_sync_peers", "Peers with an active sync session", () => this.sessions.size);
  }

  async start(): Promise<void> {
    const { transport, store } = this.options;
    this.unsubscribe.push(
      transport.onConnected((peer) => this.peerConnected(peer.peerId)),
      transport.onDisconnected((peerId) => this.peerDisconnected(peerId)),
      transport.onMessage((peerId, bytes) => this.received(peerId, bytes)),
      store.onChange((e) => this.changed(e.collection, e.id, e.action)),
    );
    for (const peerId of transport.connectedPeers()) this.peerConnected(peerId);
    this.timer = this.timers.interval(() => this.reconcileAll(), this.options.intervalSecs * 1000);
    this.rebuildTimer = this.timers.interval(() => this.index.invalidate(), INDEX_REBUILD_MS);
  }

  async stop(): Promise<void> {
    this.timers.clear(this.timer);
    this.timers.clear(this.rebuildTimer);
    this.inboxes.clear();
    this.timers.clear(this.catchUp?.timer);
    this.timers.clear(this.catchUp?.quiet);
    this.catchUp = undefined;
    for (const off of this.unsubscribe.splice(0)) off();
    this.sessions.clear();
  }

  // ------------------------------------------------------------------ peers

  private peerConnected(peerId: string): void {
    if (this.sessions.has(peerId)) return;
    const alone = this.sessions.size === 0;
    const session: Session = { peerId, dirty: new Set(), knownDifferencesSent: false, deferred: !alone && this.catchUp !== undefined };
    this.sessions.set(peerId, session);
    if (alone) {
      this.timers.clear(this.catchUp?.timer);
      this.timers.clear(this.catchUp?.quiet);
      const timer = this.timers.timeout(() => this.caughtUp(), CATCH_UP_MAX_MS);
      this.catchUp = { peerId, timer };
    }
    // After a reconnect the peer may have lost what was in flight: keep only what both sides
    // certainly share (the Automerge-recommended reset), so nothing is assumed delivered.
    const states = this.states.get(peerId);
    if (states) {
      this.states.delete(peerId);
      const reset = new Map<string, SyncState>();
      for (const [key, state] of states) reset.set(key, sharedHeadsOnly(state));
      this.states.set(peerId, reset);
    }
    this.send(peerId, { t: "hello", v: PROTOCOL_VERSION });
    if (session.deferred) return;
    this.refreshIndex();
    this.send(peerId, { t: "root", ...this.index.root() });
  }

  /** Catching up ended (we hold what the first peer holds, or time ran out): reconcile with the rest. */
  private caughtUp(): void {
    if (!this.catchUp) return;
    this.timers.clear(this.catchUp.timer);
    this.timers.clear(this.catchUp.quiet);
    this.catchUp = undefined;
    const deferred = [...this.sessions.values()].filter((s) => s.deferred);
    if (deferred.length === 0) return;
    this.refreshIndex();
    const root = this.index.root();
    for (const s of deferred) {
      s.deferred = false;
      this.send(s.peerId, { t: "root", ...root });
      // A root it sent while deferred was left unanswered: answer it now.
      this.compareRoots(s);
    }
  }

  private checkCaughtUp(): void {
    const source = this.catchUp && this.sessions.get(this.catchUp.peerId);
    if (!this.catchUp || !source?.root) return;
    this.refreshIndex();
    const mine = this.index.root();
    if (mine.fp === source.root.fp && mine.n === source.root.n) return this.caughtUp();
    // Its root may be outdated (we sent it something too): settle for a pause in what it sends.
    this.timers.clear(this.catchUp.quiet);
    this.catchUp.quiet = this.timers.timeout(() => this.caughtUp(), CATCH_UP_QUIET_MS);
  }

  /**
   * Sends a peer whose root differs from ours the documents we know it holds an older version of
   * (from earlier syncs, kept across reconnects) as deltas, before any narrowing: a node that was
   * away catches up in one round instead of after listing whole collections.
   */
  private sendKnownDifferences(peerId: string, theirs: { n: number }): void {
    const shared = this.shared.get(peerId);
    if (!shared || shared.size === 0) return;
    if (theirs.n === 0) {
      // It lost everything it had: what we knew of it no longer holds.
      this.shared.delete(peerId);
      this.states.delete(peerId);
      return;
    }
    const keys: string[] = [];
    for (const [key, heads] of shared) {
      const { collection, id } = splitKey(key);
      if (!this.index.holdsHeads(collection, id, headsHash(heads))) keys.push(key);
    }
    if (keys.length > 0) this.sendEntries(peerId, keys);
  }

  private peerDisconnected(peerId: string): void {
    this.sessions.delete(peerId);
    // What a dropped connection delivered but we had not handled goes with it, as on the wire.
    this.inboxes.delete(peerId);
    if (this.catchUp?.peerId === peerId) this.caughtUp();
    // Keep what we know of the peer for a quick resume; forget the longest-gone peers beyond the bound.
    touchRecent(this.states, peerId, MAX_REMEMBERED_PEERS);
    touchRecent(this.shared, peerId, MAX_REMEMBERED_PEERS);
  }

  private statesFor(peerId: string): Map<string, SyncState> {
    return getOrCreate(this.states, peerId);
  }

  private sharedFor(peerId: string): Map<string, string[]> {
    return getOrCreate(this.shared, peerId);
  }

  private send(peerId: string, message: Message): boolean {
    const bytes = encodeMessage(message);
    this.counters.messagesOut.inc(1, { type: message.t });
    this.counters.bytesOut.inc(bytes.byteLength, { type: message.t });
    return this.options.transport.send(peerId, bytes);
  }

  private violation(peerId: string, err: unknown): void {
    this.counters.protocolErrors.inc();
    this.log.warn("Dropping peer for a protocol violation", {
      peer: peerId,
      error: err instanceof Error ? err.message : String(err),
    });
    this.options.transport.disconnect(peerId, "protocol_error");
    this.peerDisconnected(peerId);
    this.states.delete(peerId);
    this.shared.delete(peerId);
  }

  // ------------------------------------------------------------------ push

  private changed(collection: string, id: string, action: "upsert" | "delete" = "upsert"): void {
    const key = keyOf(collection, id);
    this.stale.add(key);
    this.knownVersions.delete(key);
    if (action === "delete") {
      // The document's history is gone with it. What we knew of each peer's copy (heads it holds,
      // Automerge sync state) describes that history; kept, it would stall the sync of a document
      // re-created under the same id, whose history is new (the exchange never starts afresh).
      for (const shared of this.shared.values()) shared.delete(key);
      for (const states of this.states.values()) states.delete(key);
    }
    for (const session of this.sessions.values()) {
      if (session.peerId === this.applyingFrom || this.alsoSentTo?.has(session.peerId)) continue;
      // A deferred peer reconciles with us once we have caught up: relaying what we catch up on
      // would send it, one by one, what it most likely holds already.
      if (this.applyingFrom !== undefined && session.deferred) continue;
      session.dirty.add(key);
    }
    this.scheduleFlush();
  }

  /**
   * Brings the index up to date with the keys that changed since it was last used. Done in bulk,
   * off the write path: building many documents' Automerge form at once is far cheaper than one
   * by one, and a node with no peers need not build them at all until one connects.
   */
  private refreshIndex(): void {
    if (this.stale.size === 0) return;
    const keys = [...this.stale].map(splitKey);
    this.stale.clear();
    this.options.store.prepareForSync(keys);
    for (const { collection, id } of keys) this.index.update(collection, id, this.versionOf(collection, id));
  }

  private versionOf(collection: string, id: string): Version {
    const key = keyOf(collection, id);
    if (this.knownVersions.has(key)) return this.knownVersions.get(key);
    const version = this.options.store.getVersion(collection, id);
    this.knownVersions.set(key, version);
    return version;
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // Not a timer: the batch is whatever committed before the loop comes round, so a lone write
    // goes out at once and a burst goes out together.
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    if (this.sessions.size === 0) {
      if (this.stale.size > MAX_STALE_KEYS) {
        this.stale.clear();
        this.index.invalidate();
      }
      this.knownVersions.clear();
      return;
    }
    this.refreshIndex();
    const recipients = [...this.sessions.values()].filter((s) => s.dirty.size > 0);
    const views = new Map<string, DocView>();
    for (const session of recipients) {
      const keys = [...session.dirty];
      session.dirty.clear();
      const to = recipients.filter((r) => r !== session).map((r) => r.peerId);
      this.sendEntries(session.peerId, keys, { whole: true, to, views });
    }
    this.knownVersions.clear();
  }

  /**
   * Sends keys the peer has shown it lacks or holds differently. If we believed it held exactly
   * our current version, that belief is wrong (it restarted with an empty store, say) and is
   * dropped, so the Automerge exchange starts from scratch. Otherwise a delta from what we believe
   * it holds goes out, and a peer that lacks its base answers with an exchange instead.
   */
  private sendRequested(peerId: string, keys: string[], opts: { lacking: boolean }): void {
    const shared = this.shared.get(peerId);
    for (const key of keys) {
      const known = shared?.get(key);
      if (!known && !opts.lacking) continue;
      if (!opts.lacking) {
        const { collection, id } = splitKey(key);
        const doc = this.options.store.syncDoc(collection, id);
        if (doc && !sameHeads(known as string[], Automerge.getHeads(doc))) continue;
      }
      shared?.delete(key);
      this.states.get(peerId)?.delete(key);
    }
    this.sendEntries(peerId, keys, { whole: opts.lacking });
  }

  /** Sends the current state of each key to the peer, in batches of bounded size. */
  private sendEntries(peerId: string, keys: string[], opts: SendOptions = {}): void {
    const batch = (entries: Entry[]): Message => (opts.to?.length ? { t: "batch", entries, to: opts.to } : { t: "batch", entries });
    let entries: Entry[] = [];
    let bytes = 0;
    for (const key of keys) {
      const { collection, id } = splitKey(key);
      const entry = this.entryFor(peerId, collection, id, opts);
      if (!entry) continue;
      entries.push(entry);
      bytes += entry.t === "am" ? entry.m.byteLength : entry.t === "tomb" ? 64 : entry.data.byteLength;
      if (bytes >= BATCH_BYTES || entries.length >= MAX_BATCH_ENTRIES) {
        if (!this.send(peerId, batch(entries))) return;
        entries = [];
        bytes = 0;
      }
    }
    if (entries.length > 0) this.send(peerId, batch(entries));
  }

  /** What to send a peer for one document: a tombstone, a snapshot, or an Automerge sync message. */
  private entryFor(peerId: string, c: string, id: string, opts: SendOptions): Entry | undefined {
    const { store } = this.options;
    const key = keyOf(c, id);
    let view = opts.views?.get(key);
    if (!view) {
      view = { version: this.versionOf(c, id) };
      opts.views?.set(key, view);
    }
    const version = view.version;
    if (!version) {
      const t = store.getTombstone(c, id);
      if (!t || this.expired(t.deletedAt)) return undefined;
      return { t: "tomb", c, id, hlc: t.hlc, by: t.deletedBy, at: t.deletedAt };
    }
    if (this.options.syncModes.isLatestOnly(c)) {
      const data = (view.bytes ??= store.getDocBytes(c, id));
      return data ? { t: "snap", c, id, data, hlc: version.hlc, w: version.writer } : undefined;
    }
    const doc = store.syncDoc(c, id);
    if (!doc) return undefined;
    const heads = (view.heads ??= Automerge.getHeads(doc));
    const known = this.shared.get(peerId)?.get(key);
    if (known && Automerge.hasHeads(doc, known)) {
      if (sameHeads(known, heads)) return undefined;
      // Assume delivery; a receiver missing dependencies answers with an Automerge exchange instead.
      this.sharedFor(peerId).set(key, heads);
      return { t: "chg", c, id, data: Automerge.saveSince(doc, known), heads, hlc: version.hlc, w: version.writer, ...(view.epoch ??= this.epochOf(c, id)) };
    }
    if (opts.whole && !known && !this.states.get(peerId)?.has(key)) {
      // Nothing known of the peer's copy, typically a new document: send all of it at once.
      const data = (view.bytes ??= store.getDocBytes(c, id));
      if (data && data.byteLength <= WHOLE_DOC_PUSH_MAX_BYTES) {
        this.sharedFor(peerId).set(key, heads);
        return { t: "chg", c, id, data, heads, hlc: version.hlc, w: version.writer, ...(view.epoch ??= this.epochOf(c, id)) };
      }
    }
    const states = this.statesFor(peerId);
    const [state, message] = Automerge.generateSyncMessage(doc, states.get(key) ?? Automerge.initSyncState());
    states.set(key, state);
    return message ? { t: "am", c, id, m: message, hlc: version.hlc, w: version.writer, ...(view.epoch ??= this.epochOf(c, id)) } : undefined;
  }

  /**
   * `e` of a FullHistory entry: a tombstone beside a document we hold is the delete after which
   * its history was started afresh (a re-creation). Receivers holding a copy older than that delete
   * replace it instead of merging it (DocumentStore.applyRemoteWith).
   */
  private epochOf(c: string, id: string): { e?: string } {
    const t = this.options.store.getTombstone(c, id);
    return t ? { e: t.hlc } : {};
  }

  private expired(deletedAt: number): boolean {
    return deletedAt < Date.now() - this.options.tombstoneTtlSecs * 1000;
  }

  // ------------------------------------------------------------------ receive

  private received(peerId: string, bytes: Uint8Array): void {
    if (!this.sessions.has(peerId)) return;
    const inbox = this.inboxes.get(peerId);
    if (!inbox && this.handledMs < HANDLE_SLICE_MS) {
      // Nothing waiting and time left in this turn: handle at once (the usual case).
      this.handleTimed(peerId, bytes);
      return;
    }
    const box = inbox ?? { queue: [], head: 0, bytes: 0 };
    if (box.bytes + bytes.byteLength > MAX_INBOX_BYTES) {
      this.violation(peerId, new ProtocolError(`more than ${MAX_INBOX_BYTES} bytes of messages waiting to be handled`));
      return;
    }
    // A copy: the transport may hand us a view of a buffer it reuses once we return.
    box.queue.push(new Uint8Array(bytes));
    box.bytes += bytes.byteLength;
    this.inboxes.set(peerId, box);
    this.scheduleDrain();
  }

  private handleTimed(peerId: string, bytes: Uint8Array): void {
    const started = performance.now();
    try {
      this.handleBytes(peerId, bytes);
    } finally {
      this.handledMs += performance.now() - started;
      if (!this.handledResetScheduled) {
        this.handledResetScheduled = true;
        setImmediate(() => {
          this.handledResetScheduled = false;
          this.handledMs = 0;
        });
      }
    }
  }

  private scheduleDrain(): void {
    if (this.drainScheduled) return;
    this.drainScheduled = true;
    setImmediate(() => {
      this.drainScheduled = false;
      this.drain();
    });
  }

  /** Handles waiting messages for one slice, one message per peer in turn, in each peer's order. */
  private drain(): void {
    const deadline = performance.now() + HANDLE_SLICE_MS;
    while (this.inboxes.size > 0 && performance.now() < deadline) {
      for (const [peerId, box] of this.inboxes) {
        const bytes = box.queue[box.head] as Uint8Array;
        box.queue[box.head++] = undefined;
        box.bytes -= bytes.byteLength;
        if (box.head === box.queue.length) this.inboxes.delete(peerId);
        else if (box.head > 1024) {
          box.queue = box.queue.slice(box.head);
          box.head = 0;
        }
        try {
          if (this.sessions.has(peerId)) this.handleTimed(peerId, bytes);
        } catch (err) {
          // As the transport does for a failing listener: a fault here must not end the process.
          this.log.error("Handling a sync message failed", { peer: peerId, error: err instanceof Error ? err.message : String(err) });
        }
        if (performance.now() >= deadline) break;
      }
    }
    if (this.inboxes.size > 0) this.scheduleDrain();
  }

  private handleBytes(peerId: string, bytes: Uint8Array): void {
    let message: Message;
    try {
      message = decodeMessage(bytes);
    } catch (err) {
      this.violation(peerId, err);
      return;
    }
    this.counters.messagesIn.inc(1, { type: message.t });
    this.counters.bytesIn.inc(bytes.byteLength, { type: message.t });
    try {
      this.handle(peerId, message);
    } catch (err) {
      if (isPeerFault(err)) this.violation(peerId, err);
      else throw err;
    }
  }

  private handle(peerId: string, message: Message): void {
    switch (message.t) {
      case "hello":
        if (message.v !== PROTOCOL_VERSION) throw new ProtocolError(`unsupported protocol version ${message.v}`);
        return;
      case "root": {
        const session = this.sessions.get(peerId) as Session;
        session.root = { fp: message.fp, n: message.n };
        return this.compareRoots(session);
      }
      case "cols":
        this.refreshIndex();
        return this.compareCollections(peerId, message.cols);
      case "ranges":
        this.refreshIndex();
        return this.compareRanges(peerId, message.c, message.ranges);
      case "items":
        this.refreshIndex();
        return this.compareItems(peerId, message.c, message.lo, message.hi, message.items);
      case "want":
        return this.sendRequested(
          peerId,
          message.ids.map((id) => keyOf(message.c, id)),
          { lacking: true },
        );
      case "batch": {
        // Replies and push-backs for the whole batch go out together, as one message.
        const replies: Entry[] = [];
        const pushBack: string[] = [];
        const alsoSentTo = message.to?.filter((p) => p !== peerId && this.sessions.has(p)) ?? [];
        this.alsoSentTo = alsoSentTo.length ? new Set(alsoSentTo) : undefined;
        try {
          // One commit for the whole batch: per-document commits were most of a receiver's cost.
          this.options.store.group(() => {
            for (const entry of message.entries) {
              this.apply(peerId, entry, replies, pushBack);
              // Those peers were sent these changes too: later deltas to them can start from here.
              if (entry.t === "chg") {
                for (const other of alsoSentTo) this.sharedFor(other).set(keyOf(entry.c, entry.id), entry.heads);
              }
            }
          });
        } catch (e) {
          // Versions read inside a group that did not commit are not what the store holds.
          this.knownVersions.clear();
          throw e;
        } finally {
          this.alsoSentTo = undefined;
        }
        if (this.catchUp?.peerId === peerId) this.checkCaughtUp();
        this.sendBatch(peerId, replies);
        // The peer has just shown it holds something else than our current state (a tombstone or
        // an older version), so any belief that it holds our heads is wrong (a push assumed
        // delivered was lost with a connection): sendRequested drops such beliefs before sending.
        if (pushBack.length > 0) this.sendRequested(peerId, pushBack, { lacking: false });
        return;
      }
    }
  }

  private compareCollections(peerId: string, theirs: { c: string; fp: string; n: number }[]): void {
    const mine = new Map(this.index.cols().map((c) => [c.c, c]));
    const names = new Set([...mine.keys(), ...theirs.map((c) => c.c)]);
    const byName = new Map(theirs.map((c) => [c.c, c]));
    let differing = 0;
    for (const c of names) {
      const a = mine.get(c);
      const b = byName.get(c);
      if (a && b && a.fp === b.fp && a.n === b.n) continue;
      differing++;
      this.offerRange(peerId, c, "", "");
    }
    if (differing > 0) this.counters.reconciles.inc();
  }

  /** Starts narrowing [lo, hi) of a collection: list it if small, else send its split summaries. */
  private offerRange(peerId: string, c: string, lo: string, hi: string): void {
    const ids = this.index.idsIn(c, lo, hi);
    if (ids.length <= ITEM_LIST_THRESHOLD) this.sendItems(peerId, c, lo, hi, ids);
    else this.send(peerId, { t: "ranges", c, ranges: this.index.split(c, lo, hi, SPLIT_PARTS) });
  }

  private sendItems(peerId: string, c: string, lo: string, hi: string, ids: string[]): void {
    const items = ids.map((id) => [id, hex64((this.index.item(c, id) as Item).fp)] as [string, string]);
    this.send(peerId, { t: "items", c, lo, hi, items });
  }

  private compareRanges(peerId: string, c: string, ranges: { lo: string; hi: string; fp: string; n: number }[]): void {
    const replies: { lo: string; hi: string; fp: string; n: number }[] = [];
    for (const range of ranges) {
      const mine = this.index.summarise(c, range.lo, range.hi);
      if (mine.fp === range.fp && mine.n === range.n) continue;
      if (mine.n <= ITEM_LIST_THRESHOLD) {
        this.sendItems(peerId, c, range.lo, range.hi, this.index.idsIn(c, range.lo, range.hi));
        continue;
      }
      replies.push(...this.index.split(c, range.lo, range.hi, SPLIT_PARTS));
    }
    for (let i = 0; i < replies.length; i += MAX_RANGES) {
      this.send(peerId, { t: "ranges", c, ranges: replies.slice(i, i + MAX_RANGES) });
    }
  }

  /**
   * The receiver of a range's items sees both sides: it sends whatever it holds that differs and
   * asks for what only the sender holds. Where both hold different versions, the exchange that
   * follows settles it: Automerge merges FullHistory documents, and for snapshots and tombstones
   * the older side answers with its newer state.
   */
  private compareItems(peerId: string, c: string, lo: string, hi: string, items: [string, string][]): void {
    const theirs = new Map(items);
    const differing: string[] = [];
    const lacking: string[] = [];
    for (const id of this.index.idsIn(c, lo, hi)) {
      const fp = theirs.get(id);
      theirs.delete(id);
      if (fp === undefined) lacking.push(id);
      else if (fp !== hex64((this.index.item(c, id) as Item).fp)) differing.push(id);
    }
    for (const id of theirs.keys()) {
      // An item outside the range it was sent for can only come from a confused or hostile peer.
      if ((lo !== "" && id < lo) || (hi !== "" && id >= hi)) throw new ProtocolError(`item '${id}' outside range`);
    }
    const want = [...theirs.keys()];
    if (differing.length > 0) this.sendRequested(peerId, differing.map((id) => keyOf(c, id)), { lacking: false });
    if (lacking.length > 0) this.sendRequested(peerId, lacking.map((id) => keyOf(c, id)), { lacking: true });
    for (let i = 0; i < want.length; i += MAX_ITEMS) this.send(peerId, { t: "want", c, ids: want.slice(i, i + MAX_ITEMS) });
  }

  private sendBatch(peerId: string, entries: Entry[]): void {
    for (let i = 0; i < entries.length; i += MAX_BATCH_ENTRIES) {
      this.send(peerId, { t: "batch", entries: entries.slice(i, i + MAX_BATCH_ENTRIES) });
    }
  }

  private apply(peerId: string, entry: Entry, replies: Entry[], pushBack: string[]): void {
    const { store } = this.options;
    let outcome: ApplyOutcome;
    this.applyingFrom = peerId;
    try {
      switch (entry.t) {
        case "tomb":
          if (this.expired(entry.at)) return;
          outcome = store.applyRemoteTombstone({ collection: entry.c, id: entry.id, deletedAt: entry.at, deletedBy: entry.by, hlc: entry.hlc });
          break;
        case "snap":
          outcome = store.applyRemoteSnapshot(entry.c, entry.id, entry.data, entry.hlc, entry.w);
          break;
        case "am":
          outcome = this.applySyncMessage(peerId, entry, replies);
          break;
        case "chg":
          outcome = this.applyDelta(peerId, entry, replies);
          break;
      }
    } finally {
      this.applyingFrom = undefined;
    }
    this.stale.add(keyOf(entry.c, entry.id));
    if (outcome === "applied") this.counters.entriesApplied.inc(1, { kind: entry.t });
    // We hold something newer than what arrived (a later write, or a delete): send it back, so
    // the peer converges now rather than at the next reconciliation.
    if (outcome === "superseded") pushBack.push(keyOf(entry.c, entry.id));
  }

  private applySyncMessage(peerId: string, entry: Extract<Entry, { t: "am" }>, replies: Entry[]): ApplyOutcome {
    const { store } = this.options;
    const key = keyOf(entry.c, entry.id);
    const states = this.statesFor(peerId);
    let state = states.get(key) ?? Automerge.initSyncState();
    // Automerge never sends a change twice in one exchange. A peer that names one we hold in
    // `need` lost it (changes waiting for a dependency are not kept across a restart or a cache
    // eviction): forget what we sent, keeping the shared heads, or the exchange stalls for good.
    const resend = decodeNeed(entry.m).length > 0;
    const outcome = store.applyRemoteWith(entry.c, entry.id, remoteVersion(entry), (doc: Doc) => {
      // Read now: applying the entry's epoch may have deleted our copy, and our sync state with it.
      state = states.get(key) ?? Automerge.initSyncState();
      if (resend) state = sharedHeadsOnly(state);
      const [next, nextState] = Automerge.receiveSyncMessage(doc, state, entry.m);
      state = nextState;
      return next;
    });
    states.set(key, state);
    if (outcome === "superseded") return outcome;
    // Answer within the same exchange: acknowledge, ask for what is missing, or send what they lack.
    const doc = store.syncDoc(entry.c, entry.id);
    const version = store.getVersion(entry.c, entry.id);
    const base = doc ?? Automerge.init<unknown>();
    const [replyState, reply] = Automerge.generateSyncMessage(base, state);
    if (!doc) Automerge.free(base);
    states.set(key, replyState);
    if (replyState.sharedHeads.length > 0) this.sharedFor(peerId).set(key, replyState.sharedHeads);
    if (reply) {
      const e = version ? this.epochOf(entry.c, entry.id) : {};
      replies.push({ t: "am", c: entry.c, id: entry.id, m: reply, hlc: version?.hlc ?? entry.hlc, w: version?.writer ?? entry.w, ...e });
    }
    return outcome;
  }

  /** Applies a peer's delta; answers with our own extra changes, or an Automerge exchange if it does not fit. */
  private applyDelta(peerId: string, entry: Extract<Entry, { t: "chg" }>, replies: Entry[]): ApplyOutcome {
    const { store } = this.options;
    const key = keyOf(entry.c, entry.id);
    const outcome = store.applyRemoteWith(
      entry.c,
      entry.id,
      remoteVersion(entry),
      (doc: Doc) => {
        // Through the handle: the JS view is never read here (the store renders from the handle).
        Automerge.getBackend(doc).loadIncremental(entry.data);
        return doc;
      },
      entry.data,
    );
    if (outcome === "superseded") return outcome;
    const version = this.versionOf(entry.c, entry.id);
    if (outcome !== "missing-deps" && version?.headsHash === headsHash(entry.heads)) {
      // The usual case: we now hold exactly what the sender holds. Nothing to load or answer.
      this.sharedFor(peerId).set(key, entry.heads);
      return outcome;
    }
    const doc = store.syncDoc(entry.c, entry.id);
    if (outcome === "missing-deps" || !doc || !version || !Automerge.hasHeads(doc, entry.heads)) {
      // The sender's idea of what we hold was wrong (we lost data, or it never arrived): fall back
      // to the Automerge exchange, which works out what each side lacks from scratch.
      this.shared.get(peerId)?.delete(key);
      this.statesFor(peerId).delete(key);
      const base = doc ?? Automerge.init<unknown>();
      const [state, message] = Automerge.generateSyncMessage(base, Automerge.initSyncState());
      if (!doc) Automerge.free(base);
      this.statesFor(peerId).set(key, state);
      if (message) {
        const e = version ? this.epochOf(entry.c, entry.id) : {};
        replies.push({ t: "am", c: entry.c, id: entry.id, m: message, hlc: version?.hlc ?? entry.hlc, w: version?.writer ?? entry.w, ...e });
      }
      return outcome;
    }
    const heads = Automerge.getHeads(doc);
    this.sharedFor(peerId).set(key, heads);
    // We held changes the sender lacked (concurrent edits): send them back relative to its heads.
    if (!sameHeads(heads, entry.heads)) {
      const e = this.epochOf(entry.c, entry.id);
      replies.push({ t: "chg", c: entry.c, id: entry.id, data: Automerge.saveSince(doc, entry.heads), heads, hlc: version.hlc, w: version.writer, ...e });
    }
    return outcome;
  }

  // ------------------------------------------------------------------ reconcile

  /**
   * Both sides send roots; only the one with the smaller node id drives the narrowing, so the
   * work is not done twice.
   */
  private compareRoots(session: Session): void {
    const theirs = session.root;
    if (!theirs || session.deferred) return;
    this.refreshIndex();
    const mine = this.index.root();
    if (mine.fp === theirs.fp && mine.n === theirs.n) {
      if (this.catchUp?.peerId === session.peerId) this.caughtUp();
      return;
    }
    if (!session.knownDifferencesSent) {
      session.knownDifferencesSent = true;
      this.sendKnownDifferences(session.peerId, theirs);
    }
    if (this.options.store.nodeId < session.peerId) this.send(session.peerId, { t: "cols", cols: this.index.cols() });
  }

  private reconcileAll(): void {
    if (this.sessions.size === 0) return;
    this.refreshIndex();
    const root = this.index.root();
    for (const s of this.sessions.values()) if (!s.deferred) this.send(s.peerId, { t: "root", ...root });
  }
}
