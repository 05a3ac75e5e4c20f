/**
 * The behaviour every Transport must have, as a bun:test suite. Call it from a test file with a
 * factory that builds two unconnected transports:
 *
 *   runTransportConformance("MemoryTransport", async () => { ...; return { a, b, aId, bId, connect, dispose } });
 *
 * The suite registers its listeners first and then calls `connect()`, so no event is missed.
 */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { MessageTooLargeError } from "./errors.ts";
import { patternBytes } from "./testdata/pattern.ts";
import type { Transport, TransportPeer } from "./types.ts";

export { patternBytes };

export interface ConformancePair {
  a: Transport;
  b: Transport;
  /** The id under which `b` sees `a`, and the other way round. */
  aId: string;
  bId: string;
  /** Starts whatever is needed for `a` and `b` to connect to each other. */
  connect(): Promise<void>;
  /** Stops both and releases everything; called after every test. */
  dispose(): Promise<void>;
}

export interface ConformanceOptions {
  /** Deadline for each wait (connection, delivery); WebRTC may take 1 s for a DTLS retransmit. */
  waitMs?: number;
}

interface Recorder {
  connected: TransportPeer[];
  messages: { from: string; bytes: Uint8Array }[];
  disconnected: { peerId: string; reason: string }[];
  /** Senders of messages that arrived while this side did not consider them connected: must stay empty. */
  afterClose: string[];
}

function record(t: Transport): Recorder {
  const r: Recorder = { connected: [], messages: [], disconnected: [], afterClose: [] };
  const open = new Set<string>();
  t.onConnected((peer) => {
    open.add(peer.peerId);
    r.connected.push(peer);
  });
  t.onMessage((from, bytes) => {
    if (!open.has(from)) r.afterClose.push(from);
    r.messages.push({ from, bytes });
  });
  t.onDisconnected((peerId, reason) => {
    open.delete(peerId);
    r.disconnected.push({ peerId, reason });
  });
  return r;
}

export async function waitUntil(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(2);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

export function runTransportConformance(name: string, makePair: () => Promise<ConformancePair>, options: ConformanceOptions = {}): void {
  const waitMs = options.waitMs ?? 10_000;
  // Each test states its own limit: the runner's default (5 s) is shorter than one wait.
  const testMs = waitMs * 3;

  describe(`${name} conformance`, () => {
    let pair: ConformancePair;
    let ra: Recorder;
    let rb: Recorder;

    beforeEach(async () => {
      pair = await makePair();
      ra = record(pair.a);
      rb = record(pair.b);
      await pair.connect();
      await waitUntil(() => ra.connected.length > 0 && rb.connected.length > 0, waitMs, "both sides to connect");
    }, testMs);

    afterEach(async () => {
      await pair.dispose();
    }, testMs);

    test("connect: each side reports the other exactly once", async () => {
      expect(ra.connected.map((p) => p.peerId)).toEqual([pair.bId]);
      expect(rb.connected.map((p) => p.peerId)).toEqual([pair.aId]);
      expect(pair.a.connectedPeers()).toEqual([pair.bId]);
      expect(pair.b.connectedPeers()).toEqual([pair.aId]);
      expect(typeof ra.connected[0]?.deviceId).toBe("string");
    }, testMs);

    test("small messages arrive whole and in order, in both directions", async () => {
      const count = 200;
      for (let i = 0; i < count; i++) {
        expect(pair.a.send(pair.bId, patternBytes(1 + (i % 50), i + 1))).toBe(true);
        expect(pair.b.send(pair.aId, patternBytes(1 + (i % 70), i + 1001))).toBe(true);
      }
      await waitUntil(() => rb.messages.length === count && ra.messages.length === count, waitMs, "small messages");
      for (let i = 0; i < count; i++) {
        expect(rb.messages[i]?.from).toBe(pair.aId);
        expect(sameBytes(rb.messages[i]?.bytes as Uint8Array, patternBytes(1 + (i % 50), i + 1))).toBe(true);
        expect(sameBytes(ra.messages[i]?.bytes as Uint8Array, patternBytes(1 + (i % 70), i + 1001))).toBe(true);
      }
    }, testMs);

    test("a large message (> 1 MiB) arrives intact and in order with small ones around it", async () => {
      const big = patternBytes(3 * 1024 * 1024 + 17, 42);
      const sequence = [patternBytes(10, 1), big, patternBytes(20, 2), patternBytes(1024 * 1024 + 1, 3), patternBytes(1, 4)];
      for (const m of sequence) expect(pair.a.send(pair.bId, m)).toBe(true);
      expect(pair.b.send(pair.aId, big)).toBe(true);
      await waitUntil(() => rb.messages.length === sequence.length && ra.messages.length === 1, waitMs * 2, "large messages");
      sequence.forEach((m, i) => expect(sameBytes(rb.messages[i]?.bytes as Uint8Array, m)).toBe(true));
      expect(sameBytes(ra.messages[0]?.bytes as Uint8Array, big)).toBe(true);
    }, testMs);

    test("the sender may reuse its buffer once send returns", async () => {
      const buffer = patternBytes(100_000, 9);
      const expected = buffer.slice();
      pair.a.send(pair.bId, buffer);
      buffer.fill(0);
      await waitUntil(() => rb.messages.length === 1, waitMs, "message");
      expect(sameBytes(rb.messages[0]?.bytes as Uint8Array, expected)).toBe(true);
    }, testMs);

    test("an empty message arrives as an empty message", async () => {
      expect(pair.a.send(pair.bId, new Uint8Array(0))).toBe(true);
      await waitUntil(() => rb.messages.length === 1, waitMs, "empty message");
      expect(rb.messages[0]?.bytes.length).toBe(0);
    }, testMs);

    test("send to a peer that is not connected returns false", () => {
      expect(pair.a.send("no-such-peer", new Uint8Array(1))).toBe(false);
    }, testMs);

    test("a message over maxMessageBytes is refused with MessageTooLargeError", () => {
      expect(() => pair.a.send(pair.bId, new Uint8Array(pair.a.maxMessageBytes + 1))).toThrow(MessageTooLargeError);
      expect(pair.a.connectedPeers()).toEqual([pair.bId]);
    }, testMs);

    test("disconnect: both sides see it once, and nothing is delivered afterwards", async () => {
      pair.a.send(pair.bId, patternBytes(10, 5));
      await waitUntil(() => rb.messages.length === 1, waitMs, "message before close");
      pair.a.disconnect(pair.bId);
      await waitUntil(() => ra.disconnected.length === 1 && rb.disconnected.length === 1, waitMs, "disconnect on both sides");
      expect(ra.disconnected[0]?.peerId).toBe(pair.bId);
      expect(rb.disconnected[0]?.peerId).toBe(pair.aId);
      expect(pair.a.connectedPeers()).toEqual([]);
      expect(pair.b.connectedPeers()).toEqual([]);
      expect(pair.a.send(pair.bId, patternBytes(10, 6))).toBe(false);
      expect(pair.b.send(pair.aId, patternBytes(10, 7))).toBe(false);
      await Bun.sleep(50);
      expect(rb.messages.length).toBe(1);
      expect(ra.messages.length).toBe(0);
      expect(ra.afterClose).toEqual([]);
      expect(rb.afterClose).toEqual([]);
      expect(ra.disconnected.length).toBe(1);
      expect(rb.disconnected.length).toBe(1);
    }, testMs);

    test("stop: the other side sees a disconnect", async () => {
      await pair.a.stop();
      await waitUntil(() => rb.disconnected.length === 1, waitMs, "disconnect after stop");
      expect(rb.disconnected[0]?.peerId).toBe(pair.aId);
      expect(pair.b.connectedPeers()).toEqual([]);
      expect(pair.b.send(pair.aId, new Uint8Array(1))).toBe(false);
    }, testMs);
  });
}
