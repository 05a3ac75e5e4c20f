import { describe, expect, test } from "bun:test";
import { patternBytes } from "./conformance.ts";
import { FrameError } from "./errors.ts";
import { FrameType, Reassembler, encodeMessage, encodedLength, goodbyeFrame, pingFrame, readPing, readReason, readSeq, seqFrame } from "./framing.ts";

const CHUNK = 1024;

function roundTrip(bytes: Uint8Array, chunk = CHUNK): Uint8Array[] {
  const r = new Reassembler(16 * 1024 * 1024, 256 * 1024);
  const out: Uint8Array[] = [];
  for (const f of encodeMessage(bytes, chunk)) {
    const m = r.push(f);
    if (m) out.push(m);
  }
  return out;
}

describe("encodeMessage / Reassembler", () => {
  test.each([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 3])("%p bytes round-trip", (n) => {
    const bytes = patternBytes(n, n + 1);
    const frames = encodeMessage(bytes, CHUNK);
    expect(frames.reduce((s, f) => s + f.length, 0)).toBe(encodedLength(n, CHUNK));
    expect(frames.every((f) => f.length <= CHUNK + 5)).toBe(true);
    const out = roundTrip(bytes);
    expect(out).toHaveLength(1);
    expect(Buffer.from(out[0] as Uint8Array).equals(Buffer.from(bytes))).toBe(true);
  });

  test("a message that fits one chunk is a single WHOLE frame with one byte of overhead", () => {
    const frames = encodeMessage(new Uint8Array(100), CHUNK);
    expect(frames).toHaveLength(1);
    expect(frames[0]?.[0]).toBe(FrameType.whole);
    expect(frames[0]?.length).toBe(101);
  });

  test("messages back to back stay separate", () => {
    const r = new Reassembler(1 << 20, 1 << 20);
    const a = patternBytes(3000, 1);
    const b = patternBytes(10, 2);
    const got = [...encodeMessage(a, CHUNK), ...encodeMessage(b, CHUNK)].map((f) => r.push(f)).filter(Boolean) as Uint8Array[];
    expect(got.map((m) => m.length)).toEqual([3000, 10]);
  });

  const first = (total: number, payload: number[]) => {
    const f = new Uint8Array(5 + payload.length);
    f[0] = FrameType.first;
    new DataView(f.buffer).setUint32(1, total);
    f.set(payload, 5);
    return f;
  };

  test.each([
    ["continuation without a first chunk", [Uint8Array.of(FrameType.next, 1)]],
    ["whole inside a chunked message", [first(10, [1, 2]), Uint8Array.of(FrameType.whole, 1)]],
    ["first inside a chunked message", [first(10, [1, 2]), first(10, [1, 2])]],
    ["chunks beyond the announced total", [first(4, [1, 2]), Uint8Array.of(FrameType.next, 1, 2, 3)]],
    ["announced total over the cap", [first(17 * 1024 * 1024, [1])]],
    ["truncated first header", [Uint8Array.of(FrameType.first, 0, 0)]],
    ["empty continuation", [first(4, [1]), Uint8Array.of(FrameType.next)]],
    ["first chunk as large as the total", [first(2, [1, 2])]],
    ["unknown frame type", [Uint8Array.of(0x7f, 1)]],
    ["handshake frame after authentication", [Uint8Array.of(FrameType.challenge)]],
  ])("%s is a FrameError", (_what, frames) => {
    const r = new Reassembler(16 * 1024 * 1024, 256 * 1024);
    expect(() => {
      for (const f of frames) r.push(f);
    }).toThrow(FrameError);
  });

  test("a chunk larger than the channel limit is refused", () => {
    const r = new Reassembler(1 << 20, 100);
    expect(() => r.push(new Uint8Array(102).fill(FrameType.whole, 0, 1))).toThrow(FrameError);
  });
});

describe("control frames", () => {
  test("a ping carries its sequence number, the peer's last one and how long ago that arrived", () => {
    expect(readPing(pingFrame(7, 0xfffffffe, 1500.4))).toEqual({ seq: 7, echo: { seq: 0xfffffffe, heldUs: 1500 } });
    expect(readPing(pingFrame(1, 0, 0))).toEqual({ seq: 1 });
    expect(readPing(pingFrame(2, 1, -5)).echo?.heldUs).toBe(0);
    expect(readPing(seqFrame(FrameType.ping, 9))).toEqual({ seq: 9 });
    expect(() => readPing(Uint8Array.of(FrameType.ping, 0, 0, 0, 1, 0, 0))).toThrow(FrameError);
  });

  test("ping/pong carry a sequence number", () => {
    expect(readSeq(seqFrame(FrameType.ping, 0xfffffffe))).toBe(0xfffffffe);
    expect(() => readSeq(Uint8Array.of(FrameType.ping, 1))).toThrow(FrameError);
  });
  test("goodbye carries a short reason", () => {
    expect(readReason(goodbyeFrame("timeout"))).toBe("timeout");
    expect(goodbyeFrame("x".repeat(500)).length).toBe(65);
  });
});
