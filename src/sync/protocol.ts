/**
 * The sync wire protocol: a typed union of messages, msgpack-encoded, one per transport message.
 * `docs/protocol.md` documents it. Every decoded value is checked against its shape before use; a
 * message that fails the check is a protocol violation and costs the sender its connection.
 */
import { Packr } from "msgpackr";
import { isHlc as isHlcStamp } from "../store/hlc.ts";

export const PROTOCOL_VERSION = 1;
/** Identifier strings on the wire: collection and document names as the broker accepts them. */
const NAME = /^[A-Za-z0-9_.-]{1,128}$/;
/** HLC strings as the store formats them; bounded so a hostile one costs nothing. */
const MAX_HLC_LENGTH = 300;
const MAX_WRITER_LENGTH = 256;
export const MAX_BATCH_ENTRIES = 4096;
export const MAX_RANGES = 64;
export const MAX_ITEMS = 4096;
/** Bound on the peer list of a batch's relay hint. */
export const MAX_PEERS = 256;

export interface Version {
  /** Hybrid logical clock of the last write. */
  hlc: string;
  /** Node id of that writer: the tie-break. */
  w: string;
}

/**
 * Of a FullHistory entry: the HLC of the delete after which the sender's history of the document
 * was started afresh (it was re-created). A receiver's copy older than that delete is replaced, not
 * merged. Absent for a document never deleted, or one updated (not re-created) after a delete.
 */
export interface Epoch {
  e?: string;
}

/** One document-level update. */
export type Entry =
  /** Automerge sync-protocol message for a FullHistory document. */
  | ({ t: "am"; c: string; id: string; m: Uint8Array } & Version & Epoch)
  /**
   * The changes of a FullHistory document since `base`, heads the receiver is known to hold
   * (`Automerge.saveSince` bytes), and the sender's heads after them. One message instead of an
   * Automerge sync exchange whenever the sender knows where the receiver stands.
   */
  | ({ t: "chg"; c: string; id: string; data: Uint8Array; heads: string[] } & Version & Epoch)
  /** Whole current state of a LatestOnly document (`Automerge.save` bytes), last writer wins. */
  | ({ t: "snap"; c: string; id: string; data: Uint8Array } & Version)
  /** A delete marker. `at` is wall-clock ms (expiry), `by` the deleting node. */
  | { t: "tomb"; c: string; id: string; hlc: string; by: string; at: number };

/** A half-open id range [lo, hi) of one collection, summarised; `hi` "" means unbounded. */
export interface RangeSummary {
  lo: string;
  hi: string;
  /** XOR of the item fingerprints, as 16 hex digits. */
  fp: string;
  n: number;
}

export type Message =
  | { t: "hello"; v: number }
  /** Fingerprint of everything this node holds; equal roots mean nothing to do. */
  | { t: "root"; fp: string; n: number }
  /** Per-collection fingerprints, sent in answer to a root that differs. */
  | { t: "cols"; cols: { c: string; fp: string; n: number }[] }
  /** Range summaries of one collection, to narrow where two nodes differ. */
  | { t: "ranges"; c: string; ranges: RangeSummary[] }
  /**
   * Every item of a small range: `[id, fingerprint]`. The receiver sends what it holds that
   * differs, and asks with `want` for what only the sender holds.
   */
  | { t: "items"; c: string; lo: string; hi: string; items: [string, string][] }
  /** Ids whose current state (document or tombstone) the receiver should send. */
  | { t: "want"; c: string; ids: string[] }
  /**
   * Document updates. `to`, on a push, names the sender's other peers that were sent the same
   * updates at the same time: the receiver does not relay them there (a hint; reconciliation
   * covers a push that was lost).
   */
  | { t: "batch"; entries: Entry[]; to?: string[] };

export class ProtocolError extends Error {
  override readonly name = "ProtocolError";
}

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: "number" });

export function encodeMessage(message: Message): Uint8Array {
  return packr.pack(message);
}

const isName = (v: unknown): v is string => typeof v === "string" && NAME.test(v);
const isBoundId = (v: unknown): v is string => v === "" || isName(v);
const isHlc = (v: unknown): v is string => typeof v === "string" && v.length <= MAX_HLC_LENGTH && isHlcStamp(v);
const isWriter = (v: unknown): v is string => typeof v === "string" && v.length > 0 && v.length <= MAX_WRITER_LENGTH;
const isFp = (v: unknown): v is string => typeof v === "string" && /^[0-9a-f]{16}$/.test(v);
const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
const isBytes = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
export const MAX_HEADS = 64;
const isHeads = (v: unknown): v is string[] =>
  Array.isArray(v) && v.length > 0 && v.length <= MAX_HEADS && v.every((h) => typeof h === "string" && /^[0-9a-f]{64}$/.test(h));
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

export function isEntry(v: unknown): v is Entry {
  if (!isObject(v) || !isName(v.c) || !isName(v.id)) return false;
  switch (v.t) {
    case "am":
      return isBytes(v.m) && isHlc(v.hlc) && isWriter(v.w) && (v.e === undefined || isHlc(v.e));
    case "chg":
      return isBytes(v.data) && isHeads(v.heads) && isHlc(v.hlc) && isWriter(v.w) && (v.e === undefined || isHlc(v.e));
    case "snap":
      return isBytes(v.data) && isHlc(v.hlc) && isWriter(v.w);
    case "tomb":
      return isHlc(v.hlc) && isWriter(v.by) && isCount(v.at);
    default:
      return false;
  }
}

function isRange(v: unknown): v is RangeSummary {
  return isObject(v) && isBoundId(v.lo) && isBoundId(v.hi) && isFp(v.fp) && isCount(v.n);
}

export function isMessage(v: unknown): v is Message {
  if (!isObject(v)) return false;
  switch (v.t) {
    case "hello":
      return isCount(v.v);
    case "root":
      return isFp(v.fp) && isCount(v.n);
    case "cols":
      return (
        Array.isArray(v.cols) &&
        v.cols.length <= MAX_ITEMS &&
        v.cols.every((c) => isObject(c) && isName(c.c) && isFp(c.fp) && isCount(c.n))
      );
    case "ranges":
      return isName(v.c) && Array.isArray(v.ranges) && v.ranges.length <= MAX_RANGES && v.ranges.every(isRange);
    case "items":
      return (
        isName(v.c) &&
        isBoundId(v.lo) &&
        isBoundId(v.hi) &&
        Array.isArray(v.items) &&
        v.items.length <= MAX_ITEMS &&
        v.items.every((i) => Array.isArray(i) && i.length === 2 && isName(i[0]) && isFp(i[1]))
      );
    case "want":
      return isName(v.c) && Array.isArray(v.ids) && v.ids.length <= MAX_ITEMS && v.ids.every(isName);
    case "batch":
      return (
        Array.isArray(v.entries) &&
        v.entries.length <= MAX_BATCH_ENTRIES &&
        v.entries.every(isEntry) &&
        (v.to === undefined || (Array.isArray(v.to) && v.to.length <= MAX_PEERS && v.to.every(isWriter)))
      );
    default:
      return false;
  }
}

/** Decodes and checks one message; throws ProtocolError for anything that is not a valid message. */
export function decodeMessage(bytes: Uint8Array): Message {
  let value: unknown;
  try {
    value = packr.unpack(bytes);
  } catch (err) {
    throw new ProtocolError(`undecodable message: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (!isMessage(value)) {
    const kind = isObject(value) && typeof value.t === "string" ? `'${value.t.slice(0, 20)}'` : "unknown";
    throw new ProtocolError(`malformed ${kind} message`);
  }
  return value;
}
