export { decodeStrictBase64, InvalidBase64Error } from "./base64.ts";
export { DEFAULT_FORMATION_ID, FormationKey, NONCE_BYTES, constantTimeEqual, randomNonce } from "./formation-key.ts";
export {
  type NodeIdentity,
  SigningKey,
  deriveIdentity,
  deriveKeySeed,
  deviceIdOf,
  endpointIdFor,
  verifySignature,
} from "./keys.ts";
