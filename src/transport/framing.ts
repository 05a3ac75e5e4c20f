/**
 * Data-channel framing. Every data-channel message is one frame whose first byte is its type:
 *
 *   0x01 CHALLENGE [32-byte nonce]          formation handshake (see handshake.ts)
 *   0x02 RESPONSE  [32-byte HMAC]
 *   0x03 AUTH_OK   (empty)
 *   0x10 WHOLE     [payload]                 a message that fits in one chunk
 *   0x11 FIRST     [u32 BE total][payload]   first chunk of a larger message
 *   0x12 NEXT      [payload]                 following chunk; the message ends when `total` is reached
 *   0x20 PING      [u32 BE seq]
 *   0x21 PONG      [u32 BE seq]
 *   0x30 GOODBYE   [utf-8 reason]
 *
 * The channel is reliable and ordered and the sender never interleaves two messages' chunks, so
 * any other order is a broken or hostile peer, not a network effect: the peer is dropped.
 */
import { FrameError } from "./errors.ts";

export const FrameType = {
  challenge: 0x01,
  response: 0x02,
  authOk: 0x03,
  whole: 0x10,
  first: 0x11,
  next: 0x12,
  ping: 0x20,
  pong: 0x21,
  goodbye: 0x30,
} as const;

export const DEFAULT_CHUNK_BYTES = 64 * 1024;
export const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
const FIRST_HEADER = 5;
const MAX_REASON_BYTES = 64;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function frame(type: number, payload: Uint8Array, headerExtra = 0): Uint8Array {
  const out = new Uint8Array(1 + headerExtra + payload.length);
  out[0] = type;
  out.set(payload, 1 + headerExtra);
  return out;
}

export function controlFrame(type: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  return frame(type, body);
}

export function seqFrame(type: typeof FrameType.ping | typeof FrameType.pong, seq: number): Uint8Array {
  const out = new Uint8Array(5);
  out[0] = type;
  new DataView(out.buffer).setUint32(1, seq >>> 0);
  return out;
}

export function goodbyeFrame(reason: string): Uint8Array {
  return frame(FrameType.goodbye, encoder.encode(reason).subarray(0, MAX_REASON_BYTES));
}

/**
 * Splits a message into frames of at most `chunkBytes` payload. A message that fits is one WHOLE
 * frame, so a small message costs one byte of overhead and goes out in one piece.
 */
export function encodeMessage(bytes: Uint8Array, chunkBytes: number): Uint8Array[] {
  if (bytes.length <= chunkBytes) return [frame(FrameType.whole, bytes)];
  const frames: Uint8Array[] = [];
  const first = frame(FrameType.first, bytes.subarray(0, chunkBytes), 4);
  new DataView(first.buffer).setUint32(1, bytes.length);
  frames.push(first);
  for (let offset = chunkBytes; offset < bytes.length; offset += chunkBytes) {
    frames.push(frame(FrameType.next, bytes.subarray(offset, offset + chunkBytes)));
  }
  return frames;
}

/** Bytes the frames of a message of `length` bytes take on the wire. */
export function encodedLength(length: number, chunkBytes: number): number {
  if (length <= chunkBytes) return length + 1;
  return length + Math.ceil(length / chunkBytes) + 4;
}

/**
 * PING: its own sequence number, the last one received from the peer (0: none yet) and how long
 * ago that arrived, in microseconds. Both ends ping every interval; the echo gives the other its
 * round trip (now − our send time − the peer's hold time), so no PONG is needed.
 */
export function pingFrame(seq: number, echo: number, heldUs: number): Uint8Array {
  const out = new Uint8Array(13);
  out[0] = FrameType.ping;
  const view = new DataView(out.buffer);
  view.setUint32(1, seq >>> 0);
  view.setUint32(5, echo >>> 0);
  view.setUint32(9, Math.min(Math.max(0, Math.round(heldUs)), 0xffffffff));
  return out;
}

/** A PING, in the form above or the older 5-byte one (sequence only, answered with a PONG). */
export function readPing(frameBytes: Uint8Array): { seq: number; echo?: { seq: number; heldUs: number } } {
  if (frameBytes.length === 5) return { seq: readSeq(frameBytes) };
  if (frameBytes.length !== 13) throw new FrameError(`ping frame of ${frameBytes.length} bytes, expected 13 (or 5)`);
  const view = new DataView(frameBytes.buffer, frameBytes.byteOffset, frameBytes.byteLength);
  const echo = view.getUint32(5);
  return { seq: view.getUint32(1), ...(echo !== 0 ? { echo: { seq: echo, heldUs: view.getUint32(9) } } : {}) };
}

export function readSeq(frameBytes: Uint8Array): number {
  if (frameBytes.length !== 5) throw new FrameError(`ping/pong frame of ${frameBytes.length} bytes, expected 5`);
  return new DataView(frameBytes.buffer, frameBytes.byteOffset, frameBytes.byteLength).getUint32(1);
}

export function readReason(frameBytes: Uint8Array): string {
  return decoder.decode(frameBytes.subarray(1, 1 + MAX_REASON_BYTES));
}

/**
 * Rebuilds messages from WHOLE/FIRST/NEXT frames. Parts are kept as received and joined once at
 * the end, so a peer that announces a large total but sends little costs only what it sent.
 */
export class Reassembler {
  private total = 0;
  private received = 0;
  private parts: Uint8Array[] = [];

  constructor(
    private readonly maxMessageBytes: number,
    private readonly maxChunkBytes: number,
  ) {}

  get inProgress(): boolean {
    return this.total > 0;
  }

  /** Returns the completed message, or undefined while one is still being received. Throws FrameError. */
  push(frameBytes: Uint8Array): Uint8Array | undefined {
    const type = frameBytes[0];
    switch (type) {
      case FrameType.whole: {
        if (this.inProgress) throw new FrameError("whole message inside a chunked one");
        const payload = frameBytes.subarray(1);
        this.checkChunk(payload.length);
        return payload;
      }
      case FrameType.first: {
        if (this.inProgress) throw new FrameError("first chunk inside a chunked message");
        if (frameBytes.length < FIRST_HEADER) throw new FrameError("truncated first-chunk header");
        const total = new DataView(frameBytes.buffer, frameBytes.byteOffset, frameBytes.byteLength).getUint32(1);
        if (total > this.maxMessageBytes) {
          throw new FrameError(`message of ${total} bytes exceeds the ${this.maxMessageBytes}-byte limit`);
        }
        const payload = frameBytes.subarray(FIRST_HEADER);
        this.checkChunk(payload.length);
        if (payload.length === 0 || payload.length >= total) {
          throw new FrameError(`first chunk of ${payload.length} bytes for a ${total}-byte message`);
        }
        this.total = total;
        this.received = payload.length;
        this.parts = [payload];
        return undefined;
      }
      case FrameType.next: {
        if (!this.inProgress) throw new FrameError("continuation chunk without a first chunk");
        const payload = frameBytes.subarray(1);
        this.checkChunk(payload.length);
        if (payload.length === 0) throw new FrameError("empty continuation chunk");
        if (this.received + payload.length > this.total) {
          throw new FrameError(`chunks exceed the announced ${this.total} bytes`);
        }
        this.parts.push(payload);
        this.received += payload.length;
        if (this.received < this.total) return undefined;
        const message = Buffer.concat(this.parts, this.total);
        this.total = 0;
        this.received = 0;
        this.parts = [];
        return new Uint8Array(message.buffer, message.byteOffset, message.byteLength);
      }
      default:
        throw new FrameError(`frame type 0x${(type ?? 0).toString(16)} is not a data frame`);
    }
  }

  private checkChunk(length: number): void {
    if (length > this.maxChunkBytes) throw new FrameError(`chunk of ${length} bytes exceeds ${this.maxChunkBytes}`);
  }
}
