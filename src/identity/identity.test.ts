import { describe, expect, test } from "bun:test";
import { bytesToHex, hexToBytes } from "@noble/hashes/utils.js";
import {
  FormationKey,
  InvalidBase64Error,
  constantTimeEqual,
  decodeStrictBase64,
  deriveIdentity,
  deriveKeySeed,
  endpointIdFor,
  verifySignature,
} from "./index.ts";

// Vectors from the original's behavioural reference, §2.2 and §3.1.
const SECRET_A = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SECRET_C = "dGVzdC1zZWNyZXQ=";

describe("strict base64", () => {
  test("decodes the vector A secret to bytes 0x00..0x1f", () => {
    expect(bytesToHex(decodeStrictBase64(SECRET_A))).toBe(
      "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    );
  });
  test("trims surrounding whitespace like the original", () => {
    expect(decodeStrictBase64(`  ${SECRET_C}\n`).length).toBe(11);
  });
  test.each([["not-valid-base64!!!"], ["dGVzdA"], ["ab-_"], ["dGVzdB=="], ["a==="]])("rejects %p", (bad) => {
    expect(() => decodeStrictBase64(bad)).toThrow(InvalidBase64Error);
  });
  test("accepts the canonical padded form", () => {
    expect(new TextDecoder().decode(decodeStrictBase64("dGVzdA=="))).toBe("test");
  });
  test("accepts the empty string (vector D) at the function level", () => {
    expect(decodeStrictBase64("").length).toBe(0);
  });
});

describe("identity derivation", () => {
  test("vector A: peat-mesh-0", () => {
    const seed = decodeStrictBase64(SECRET_A);
    expect(bytesToHex(deriveKeySeed(seed, "peat-mesh-0"))).toBe(
      "f4c766ef645f02f3e360459f82b7763255dda7e6dce884281f52078f342252df",
    );
    const id = deriveIdentity(seed, "peat-mesh-0");
    expect(id.deviceKey.publicKeyHex).toBe("63e75b76642f46a74fdfb5acebce28fe1f8f352a0a17ee27cc33723bdc403bc4");
    expect(id.deviceId).toBe("91cd54000bc001cbdd3aadafbc7b8b6e");
    expect(bytesToHex(deriveKeySeed(seed, "iroh:peat-mesh-0"))).toBe(
      "bc295664c7a93c4797232afed4b8c0d379cf4554134c96f2e1451db734292510",
    );
    expect(id.endpointId).toBe("23d1c8b3e6861d693c7f446bfa73b58f8877c21db60ee32497bf9974c655b3de");
    expect(id.endpointIdShort).toBe("23d1c8b3e6");
    expect(id.nodeId).toBe("peat-mesh-0");
  });

  test("vector B: peat-mesh-1, same secret, different identity", () => {
    const id = deriveIdentity(decodeStrictBase64(SECRET_A), "peat-mesh-1");
    expect(id.deviceId).toBe("278f65e9fc7910dd7b0a01eca9ff25cd");
    expect(id.endpointId).toBe("58660eb0c6a63de2a32168399f7f94670f5a2862dc214dc4be14984734259f7e");
  });

  test("vector C: an 11-byte secret is a valid input to the derivation", () => {
    const id = deriveIdentity(decodeStrictBase64(SECRET_C), "peat-mesh-0");
    expect(id.deviceKey.publicKeyHex).toBe("51ec5b556919fbfafdac9ad9860681830eea2baf11ab1d08b0853d36bfea8b6b");
    expect(id.deviceId).toBe("3f8c5e752b94fbc8c4bc489747dd8efe");
    expect(id.endpointId).toBe("d09b6f2e89eac78cfdbb08d9e90f2911027f0dec14ebba7afd197a839cf3a20b");
  });

  test("vector D: the empty secret derives too (the config refuses it, not the function)", () => {
    const id = deriveIdentity(new Uint8Array(0), "peat-mesh-0");
    expect(id.deviceId).toBe("fc5aee136c3216fd8c44406170aec473");
    expect(id.endpointId).toBe("e3046b27d2b63b77ea7e4437326972831e81264579f2c5e757202a7d46981920");
  });

  test("a peer's endpoint id is computable from its hostname", () => {
    const seed = decodeStrictBase64(SECRET_A);
    expect(endpointIdFor(seed, "peat-mesh-1")).toBe(deriveIdentity(seed, "peat-mesh-1").endpointId);
  });

  test("transport key signatures verify, and fail for another key or message", () => {
    const seed = decodeStrictBase64(SECRET_A);
    const a = deriveIdentity(seed, "peat-mesh-0");
    const b = deriveIdentity(seed, "peat-mesh-1");
    const msg = new TextEncoder().encode("offer");
    const sig = a.transportKey.sign(msg);
    expect(verifySignature(sig, msg, a.transportKey.publicKey)).toBe(true);
    expect(verifySignature(sig, msg, b.transportKey.publicKey)).toBe(false);
    expect(verifySignature(sig, new TextEncoder().encode("offer!"), a.transportKey.publicKey)).toBe(false);
    expect(verifySignature(new Uint8Array(3), msg, a.transportKey.publicKey)).toBe(false);
  });
});

describe("formation key (HMAC challenge-response)", () => {
  const zeroNonce = new Uint8Array(32);
  const countingNonce = Uint8Array.from({ length: 32 }, (_, i) => i);

  test("vector A, zero nonce", () => {
    const key = new FormationKey(decodeStrictBase64(SECRET_A));
    expect(key.hmacKeyHex()).toBe("4049e4e64cdfd6302ee0a12d0874c75bfd4c81aa172fc1aadf515c292a9d6324");
    expect(bytesToHex(key.respond(zeroNonce))).toBe("4a24ca5d9518dd19845142f59e68d0575e84ea9bbdc74fdee6a3bb5d8f37dfdb");
  });

  test("vector A, nonce 0..31", () => {
    const key = new FormationKey(decodeStrictBase64(SECRET_A));
    expect(bytesToHex(key.respond(countingNonce))).toBe(
      "202109aec7edeace25fc71964c1c7f95f67833e9e68525afd6ae7faca95e2ed4",
    );
  });

  test("vector C (secret hashed to 32 bytes first), zero nonce", () => {
    const key = new FormationKey(decodeStrictBase64(SECRET_C));
    expect(bytesToHex(key.respond(zeroNonce))).toBe("8330bb057471a9ad3334dc0513bc00bfb24335a690940b702104521d7223a5f7");
  });

  test("verify accepts the right response and rejects another formation's", () => {
    const ours = new FormationKey(decodeStrictBase64(SECRET_A));
    const theirs = new FormationKey(decodeStrictBase64(SECRET_C));
    expect(ours.verify(countingNonce, ours.respond(countingNonce))).toBe(true);
    expect(ours.verify(countingNonce, theirs.respond(countingNonce))).toBe(false);
    expect(ours.verify(countingNonce, ours.respond(zeroNonce))).toBe(false);
    expect(ours.verify(countingNonce, new Uint8Array(0))).toBe(false);
  });

  test("fingerprints differ per formation and do not reveal the key", () => {
    const a = new FormationKey(decodeStrictBase64(SECRET_A));
    const c = new FormationKey(decodeStrictBase64(SECRET_C));
    expect(a.fingerprint()).toMatch(/^[0-9a-f]{16}$/);
    expect(a.fingerprint()).not.toBe(c.fingerprint());
    expect(a.hmacKeyHex().includes(a.fingerprint())).toBe(false);
  });

  test("constantTimeEqual", () => {
    expect(constantTimeEqual(hexToBytes("0102"), hexToBytes("0102"))).toBe(true);
    expect(constantTimeEqual(hexToBytes("0102"), hexToBytes("0103"))).toBe(false);
    expect(constantTimeEqual(hexToBytes("0102"), hexToBytes("01"))).toBe(false);
  });
});
