/**
 * The formation pre-shared key, as the original's `FormationKey`: members prove they hold the
 * formation secret by answering an HMAC challenge, without revealing it.
 */
import { hkdf } from "@noble/hashes/hkdf.js";
import { hmac } from "@noble/hashes/hmac.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex } from "@noble/hashes/utils.js";

const encoder = new TextEncoder();
const FORMATION_INFO = "peat-protocol-v1-formation";
export const DEFAULT_FORMATION_ID = "peat";
export const NONCE_BYTES = 32;

/** Constant-time equality: the time taken depends on the length only, never on where bytes differ. */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= (a[i] as number) ^ (b[i] as number);
  return diff === 0;
}

export class FormationKey {
  readonly formationId: string;
  private readonly hmacKey: Uint8Array;

  constructor(secretBytes: Uint8Array, formationId: string = DEFAULT_FORMATION_ID) {
    this.formationId = formationId;
    // A 32-byte secret is used as is; any other length is hashed to 32 bytes first.
    const secret32 = secretBytes.length === 32 ? secretBytes : sha256(secretBytes);
    this.hmacKey = hkdf(sha256, secret32, encoder.encode(formationId), encoder.encode(FORMATION_INFO), 32);
  }

  /** HMAC-SHA256(key, nonce ‖ formation_id). */
  respond(nonce: Uint8Array): Uint8Array {
    const id = encoder.encode(this.formationId);
    const message = new Uint8Array(nonce.length + id.length);
    message.set(nonce, 0);
    message.set(id, nonce.length);
    return hmac(sha256, this.hmacKey, message);
  }

  verify(nonce: Uint8Array, response: Uint8Array): boolean {
    return constantTimeEqual(this.respond(nonce), response);
  }

  /** A MAC over arbitrary bytes with the formation key (proofs in signalling messages). */
  mac(message: Uint8Array): Uint8Array {
    return hmac(sha256, this.hmacKey, message);
  }

  /**
   * A public tag naming the formation (for mDNS TXT records), derived one-way from the key so
   * that formations sharing a LAN can ignore each other without revealing anything usable.
   */
  fingerprint(): string {
    return bytesToHex(this.mac(encoder.encode("peat-formation-fingerprint-v1")).subarray(0, 8));
  }

  /** Exposed for the test vectors only. */
  hmacKeyHex(): string {
    return bytesToHex(this.hmacKey);
  }
}

export function randomNonce(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
}
