/**
 * Hybrid logical clock (Kulkarni et al.), rendered as a string that sorts correctly with a plain
 * byte comparison, so SQLite can index it, `max(hlc)` restores the clock after a restart, and peers
 * compare versions without parsing:
 *
 *   `<wall ms, 15 digits>.<counter, 6 digits>@<node id>`   e.g. `001732412345678.000003@peat-mesh-0`
 *
 * 15 digits of milliseconds last until the year 33658; the counter orders events within one
 * millisecond (on overflow the logical wall time moves on by 1 ms). The node id suffix makes stamps
 * from different nodes distinct, so equal (wall, counter) pairs still order deterministically.
 */
import { InvalidHlcError } from "./errors.ts";

const WALL_DIGITS = 15;
const COUNTER_DIGITS = 6;
const MAX_COUNTER = 10 ** COUNTER_DIGITS - 1;
const HLC_PATTERN = /^(\d{15})\.(\d{6})@(.+)$/s;
/** How far ahead of this node's clock a peer's stamp may be (see `receiveRemote`). */
export const MAX_REMOTE_AHEAD_MS = 10 * 60_000;

export interface HlcParts {
  wallMs: number;
  counter: number;
  nodeId: string;
}

export function formatHlc(parts: HlcParts): string {
  return `${String(parts.wallMs).padStart(WALL_DIGITS, "0")}.${String(parts.counter).padStart(COUNTER_DIGITS, "0")}@${parts.nodeId}`;
}

export function parseHlc(stamp: string): HlcParts {
  const m = typeof stamp === "string" ? HLC_PATTERN.exec(stamp) : null;
  if (!m) throw new InvalidHlcError(`malformed HLC stamp: ${JSON.stringify(stamp)}`);
  return { wallMs: Number(m[1]), counter: Number(m[2]), nodeId: m[3] as string };
}

export function isHlc(stamp: unknown): stamp is string {
  return typeof stamp === "string" && HLC_PATTERN.test(stamp);
}

/**
 * Compares by Unicode code point, which equals UTF-8 byte order (SQLite's BINARY collation).
 * JS `<` compares UTF-16 code units, which disagrees for astral vs. U+E000..U+FFFF characters.
 */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    // Only surrogates (0xD800-0xDFFF) sort differently between UTF-16 and code point order.
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    if (xs === ys) return x < y ? -1 : 1;
    return xs ? 1 : -1;
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
}

/** Last-writer-wins order: higher HLC wins; equal HLC → higher writer node id wins. */
export function compareVersions(a: { hlc: string; writer: string }, b: { hlc: string; writer: string }): number {
  return compareCodePoints(a.hlc, b.hlc) || compareCodePoints(a.writer, b.writer);
}

export class HybridLogicalClock {
  private wallMs = 0;
  private counter = 0;

  constructor(
    readonly nodeId: string,
    private readonly physicalNow: () => number = Date.now,
  ) {
    if (!nodeId) throw new InvalidHlcError("HLC node id must not be empty");
  }

  /** A fresh stamp, greater than every stamp issued or received so far. */
  now(): string {
    const pt = Math.floor(this.physicalNow());
    if (pt > this.wallMs) {
      this.wallMs = pt;
      this.counter = 0;
    } else if (this.counter < MAX_COUNTER) {
      this.counter++;
    } else {
      this.wallMs++;
      this.counter = 0;
    }
    return formatHlc({ wallMs: this.wallMs, counter: this.counter, nodeId: this.nodeId });
  }

  /**
   * Max rule: after seeing `stamp` (from a peer or from disk at startup), every later `now()` sorts
   * above it, so a local write always beats every version this node has already seen.
   */
  receive(stamp: string): void {
    const r = parseHlc(stamp);
    if (r.wallMs > this.wallMs || (r.wallMs === this.wallMs && r.counter > this.counter)) {
      this.wallMs = r.wallMs;
      this.counter = r.counter;
    }
  }

  /**
   * `receive` for a stamp from a peer: refused (InvalidHlcError) when it is more than
   * `MAX_REMOTE_AHEAD_MS` ahead of this node's physical clock. Honest stamps come from some node's
   * physical clock, and members' clocks agree to within a minute (signalling refuses larger skew);
   * without the bound, one stamp from the far future (a hostile or broken peer) would move every
   * later local write there for good, and a stamp at the end of the range would overflow it.
   */
  receiveRemote(stamp: string): void {
    const r = parseHlc(stamp);
    const limit = Math.floor(this.physicalNow()) + MAX_REMOTE_AHEAD_MS;
    if (r.wallMs > limit) {
      throw new InvalidHlcError(`HLC stamp ${JSON.stringify(stamp.slice(0, 40))} is more than ${MAX_REMOTE_AHEAD_MS / 60_000} minutes ahead of this node's clock`);
    }
    this.receive(stamp);
  }

  /** The latest stamp issued or received (without advancing). */
  peek(): string {
    return formatHlc({ wallMs: this.wallMs, counter: this.counter, nodeId: this.nodeId });
  }
}
