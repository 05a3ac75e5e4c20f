/**
 * Signalling messages: the SDP offer/answer exchange and the dial-request that asks the peer
 * with the smaller device id to dial. They travel as JSON over HTTP to the peer's broker port.
 *
 * Every message carries two proofs over the same canonical bytes:
 *   - `proof`: HMAC-SHA256 with the formation key (cheap; checked first, so a caller without the
 *     formation secret costs one HMAC and never reaches the signature check or any allocation);
 *   - `sig`: Ed25519 by the sender's transport key, whose public key is the sender's endpoint id.
 *     The receiver recomputes that id from the claimed node id and the formation seed, so the
 *     claim is only accepted from a formation member.
 * The SDP, and with it the DTLS certificate fingerprint, is inside the signed bytes: a relay cannot
 * substitute its own certificate and sit in the middle of the DTLS session.
 *
 * Freshness: `ts` must be within ±60 s of the receiver's clock and `(from, nonce)` must not have
 * been seen within that window. Responses also echo the request's nonce in `re`, so an old answer
 * cannot be passed off as the answer to a new offer.
 */
import { bytesToHex, hexToBytes } from "@noble/hashes/utils.js";
import { type FormationKey, type NodeIdentity, constantTimeEqual, deriveIdentity, verifySignature } from "../identity/index.ts";
import { SignallingAuthError, SignallingFormatError } from "./errors.ts";
import { LruMap, ReplayCache } from "./limits.ts";

export const SIGNAL_VERSION = 1;
export const SIGNAL_TYPES = ["offer", "answer", "dial-request", "dial-ack"] as const;
export type SignalType = (typeof SIGNAL_TYPES)[number];

export interface SignalMessage {
  v: number;
  type: SignalType;
  /** Sender's node id. */
  from: string;
  /** Sender's endpoint id (its transport public key, 64 hex). */
  endpoint: string;
  /** Addressee's node id; empty only in a dial-request to a peer whose id is not yet known. */
  to: string;
  /** Sender's clock, ms since the epoch. */
  ts: number;
  /** 16 random bytes, hex. For an offer it also names the resulting connection (the link id). */
  nonce: string;
  /** In a response: the nonce of the request it answers. Empty otherwise. */
  re: string;
  /** Sender's broker port, so that a dial-request can be answered by dialling back. */
  broker_port: number;
  /**
   * dial-request: a link id the requester does not hold (so the addressee may drop it);
   * dial-ack: the link id the responder holds with the requester. Empty when none.
   */
  link: string;
  /** The SDP with all gathered candidates (non-trickle), for offer and answer. Empty otherwise. */
  sdp: string;
  proof: string;
  sig: string;
}

export type UnsignedFields = Pick<SignalMessage, "type" | "to"> & Partial<Pick<SignalMessage, "re" | "link" | "sdp">>;

export const NODE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$/;
const NONCE_PATTERN = /^[0-9a-f]{32}$/;
const MAX_SDP_CHARS = 16 * 1024;
const DOMAIN = "peat-signal-v1\n";
const encoder = new TextEncoder();

function canonicalBytes(m: Omit<SignalMessage, "proof" | "sig">): Uint8Array {
  // A JSON array of strings and integers serialises one way only, so both ends hash the same bytes.
  return encoder.encode(
    DOMAIN + JSON.stringify([m.v, m.type, m.from, m.endpoint, m.to, m.ts, m.nonce, m.re, m.broker_port, m.link, m.sdp]),
  );
}

export function newNonce(): string {
  return bytesToHex(crypto.getRandomValues(new Uint8Array(16)));
}

function isString(value: unknown, max: number): value is string {
  return typeof value === "string" && value.length <= max;
}

/** Checks the shape only; says nothing about authenticity. Throws SignallingFormatError. */
export function parseSignal(text: string): SignalMessage {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new SignallingFormatError("signalling body is not JSON");
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw new SignallingFormatError("signalling body must be an object");
  const m = raw as Record<string, unknown>;
  const bad = (field: string) => new SignallingFormatError(`invalid signalling field '${field}'`);
  if (m.v !== SIGNAL_VERSION) throw bad("v");
  if (typeof m.type !== "string" || !(SIGNAL_TYPES as readonly string[]).includes(m.type)) throw bad("type");
  if (!isString(m.from, 253) || !NODE_ID_PATTERN.test(m.from)) throw bad("from");
  if (!isString(m.endpoint, 64) || !/^[0-9a-f]{64}$/.test(m.endpoint)) throw bad("endpoint");
  if (!isString(m.to, 253) || (m.to !== "" && !NODE_ID_PATTERN.test(m.to))) throw bad("to");
  if (typeof m.ts !== "number" || !Number.isSafeInteger(m.ts) || m.ts < 0) throw bad("ts");
  if (!isString(m.nonce, 32) || !NONCE_PATTERN.test(m.nonce)) throw bad("nonce");
  if (!isString(m.re, 32) || (m.re !== "" && !NONCE_PATTERN.test(m.re))) throw bad("re");
  if (typeof m.broker_port !== "number" || !Number.isInteger(m.broker_port) || m.broker_port < 0 || m.broker_port > 65535) {
    throw bad("broker_port");
  }
  if (!isString(m.link, 32) || (m.link !== "" && !NONCE_PATTERN.test(m.link))) throw bad("link");
  if (!isString(m.sdp, MAX_SDP_CHARS)) throw bad("sdp");
  if (!isString(m.proof, 64) || !/^[0-9a-f]{64}$/.test(m.proof)) throw bad("proof");
  if (!isString(m.sig, 128) || !/^[0-9a-f]{128}$/.test(m.sig)) throw bad("sig");
  return {
    v: m.v,
    type: m.type as SignalType,
    from: m.from,
    endpoint: m.endpoint,
    to: m.to,
    ts: m.ts,
    nonce: m.nonce,
    re: m.re,
    broker_port: m.broker_port,
    link: m.link,
    sdp: m.sdp,
    proof: m.proof,
    sig: m.sig,
  };
}

/** What a formation member can compute about any other member from its node id alone. */
export interface PeerKeys {
  endpointId: string;
  publicKey: Uint8Array;
  deviceId: string;
}

export interface VerifyExpectations {
  types: readonly SignalType[];
  /** Required sender, when the receiver knows whom it is talking to. */
  from?: string;
  /** The request nonce a response must echo. */
  re?: string;
  /** Accept an empty `to` (a dial-request to a peer that does not know our id yet). */
  allowEmptyTo?: boolean;
}

export interface SignalCodecOptions {
  identity: NodeIdentity;
  formationKey: FormationKey;
  seed: Uint8Array;
  brokerPort: () => number;
  clockSkewMs: number;
  replayCacheSize: number;
  now?: () => number;
}

export class SignalCodec {
  private readonly keys: LruMap<string, PeerKeys>;
  readonly replay: ReplayCache;
  private readonly now: () => number;

  constructor(private readonly options: SignalCodecOptions) {
    this.now = options.now ?? Date.now;
    this.keys = new LruMap(1024);
    this.replay = new ReplayCache(options.replayCacheSize, 2 * options.clockSkewMs, this.now);
  }

  /** Endpoint id, public key and device id of a node, derived from the formation seed (cached). */
  peerKeys(nodeId: string): PeerKeys {
    let keys = this.keys.get(nodeId);
    if (!keys) {
      const id = deriveIdentity(this.options.seed, nodeId);
      keys = { endpointId: id.endpointId, publicKey: id.transportKey.publicKey, deviceId: id.deviceId };
      this.keys.set(nodeId, keys);
    }
    return keys;
  }

  create(fields: UnsignedFields): SignalMessage {
    const { identity } = this.options;
    const body = {
      v: SIGNAL_VERSION,
      type: fields.type,
      from: identity.nodeId,
      endpoint: identity.endpointId,
      to: fields.to,
      ts: this.now(),
      nonce: newNonce(),
      re: fields.re ?? "",
      broker_port: this.options.brokerPort(),
      link: fields.link ?? "",
      sdp: fields.sdp ?? "",
    };
    const bytes = canonicalBytes(body);
    return {
      ...body,
      proof: bytesToHex(this.options.formationKey.mac(bytes)),
      sig: bytesToHex(identity.transportKey.sign(bytes)),
    };
  }

  /**
   * Authenticates a parsed message, cheapest checks first; throws SignallingAuthError (401) naming
   * the failed check. On success the nonce is recorded, so the same message is refused next time.
   */
  verify(m: SignalMessage, expect: VerifyExpectations): PeerKeys {
    const fail = (message: string, reason: string) => new SignallingAuthError(message, reason);
    if (!expect.types.includes(m.type)) throw new SignallingFormatError(`unexpected signalling message type '${m.type}'`);
    if (expect.from !== undefined && m.from !== expect.from) throw fail(`response from '${m.from}', expected '${expect.from}'`, "wrong_sender");
    if (m.to !== this.options.identity.nodeId && !(m.to === "" && expect.allowEmptyTo)) {
      throw fail(`message addressed to '${m.to}'`, "wrong_addressee");
    }
    if (expect.re !== undefined && m.re !== expect.re) throw fail("response does not answer our request", "wrong_request");
    if (Math.abs(m.ts - this.now()) > this.options.clockSkewMs) {
      throw fail(`timestamp ${m.ts} outside ±${this.options.clockSkewMs / 1000} s`, "stale");
    }
    const bytes = canonicalBytes(m);
    if (!constantTimeEqual(this.options.formationKey.mac(bytes), hexToBytes(m.proof))) {
      throw fail("formation proof does not verify", "bad_proof");
    }
    // Past this point the sender holds the formation key, so deriving (and caching) its keys is safe.
    const keys = this.peerKeys(m.from);
    if (keys.endpointId !== m.endpoint) throw fail(`endpoint id does not belong to '${m.from}'`, "bad_endpoint");
    if (!verifySignature(hexToBytes(m.sig), bytes, keys.publicKey)) throw fail("signature does not verify", "bad_signature");
    const recorded = this.replay.add(`${m.from}/${m.nonce}`);
    if (recorded === "replayed") throw fail("replayed signalling message", "replayed");
    if (recorded === "full") throw fail("replay cache full; try again later", "replay_cache_full");
    return keys;
  }
}
