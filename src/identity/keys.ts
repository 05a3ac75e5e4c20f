/**
 * Identity derivation, bit-for-bit the original's: the same formation secret and HOSTNAME give the
 * same device_id and endpoint_id, so a node keeps its identity across restarts with no state.
 */
import * as ed from "@noble/ed25519";
import { hkdf } from "@noble/hashes/hkdf.js";
import { sha256, sha512 } from "@noble/hashes/sha2.js";
import { bytesToHex } from "@noble/hashes/utils.js";

// noble's synchronous API needs its hash wired in explicitly.
ed.hashes.sha512 = sha512;

const encoder = new TextEncoder();

/** HKDF-SHA256 with no salt (RFC 5869 zero salt), 32 bytes: the original's `Hkdf::new(None, seed)`. */
export function deriveKeySeed(seed: Uint8Array, info: string): Uint8Array {
  return hkdf(sha256, seed, undefined, encoder.encode(info), 32);
}

export class SigningKey {
  readonly publicKey: Uint8Array;
  readonly publicKeyHex: string;

  constructor(private readonly secret: Uint8Array) {
    this.publicKey = ed.getPublicKey(secret);
    this.publicKeyHex = bytesToHex(this.publicKey);
  }

  sign(message: Uint8Array): Uint8Array {
    return ed.sign(message, this.secret);
  }
}

export function verifySignature(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean {
  try {
    return ed.verify(signature, message, publicKey);
  } catch {
    return false;
  }
}

/** Lowercase hex of the first 16 bytes of SHA-256(public key): 32 characters. */
export function deviceIdOf(publicKey: Uint8Array): string {
  return bytesToHex(sha256(publicKey).subarray(0, 16));
}

export interface NodeIdentity {
  /** The HOSTNAME: what the broker and logs call the node. */
  nodeId: string;
  deviceKey: SigningKey;
  deviceId: string;
  /** Signs signalling; its public key is the endpoint id. */
  transportKey: SigningKey;
  endpointId: string;
  /** First 5 bytes of the endpoint id, as the original's logs print it. */
  endpointIdShort: string;
}

export function deriveIdentity(seed: Uint8Array, hostname: string): NodeIdentity {
  const deviceKey = new SigningKey(deriveKeySeed(seed, hostname));
  const transportKey = new SigningKey(deriveKeySeed(seed, `iroh:${hostname}`));
  return {
    nodeId: hostname,
    deviceKey,
    deviceId: deviceIdOf(deviceKey.publicKey),
    transportKey,
    endpointId: transportKey.publicKeyHex,
    endpointIdShort: transportKey.publicKeyHex.slice(0, 10),
  };
}

/** Any formation member can compute a peer's endpoint id from its hostname alone. */
export function endpointIdFor(seed: Uint8Array, hostname: string): string {
  return bytesToHex(ed.getPublicKey(deriveKeySeed(seed, `iroh:${hostname}`)));
}
