import { describe, expect, test } from "bun:test";
import { FormationKey, deriveIdentity } from "../identity/index.ts";
import { SignallingAuthError, SignallingFormatError } from "./errors.ts";
import { LruMap, RateLimiter, ReplayCache } from "./limits.ts";
import { SignalCodec, type SignalMessage, parseSignal } from "./signal.ts";
import { splitCandidates } from "./webrtc.ts";

const SEED = new Uint8Array(32).map((_, i) => i);
const FOREIGN = new Uint8Array(32).fill(9);

function codec(name: string, opts: { seed?: Uint8Array; key?: Uint8Array; now?: () => number } = {}): SignalCodec {
  const seed = opts.seed ?? SEED;
  return new SignalCodec({
    identity: deriveIdentity(seed, name),
    formationKey: new FormationKey(opts.key ?? seed),
    seed,
    brokerPort: () => 8081,
    clockSkewMs: 60_000,
    replayCacheSize: 1000,
    ...(opts.now ? { now: opts.now } : {}),
  });
}

const roundTrip = (m: SignalMessage) => parseSignal(JSON.stringify(m));

function reason(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof SignallingAuthError) return err.reason;
    throw err;
  }
  return "accepted";
}

describe("signalling messages", () => {
  const alice = codec("alice");
  test("a message from a member verifies and yields its keys", () => {
    const bob = codec("bob");
    const keys = bob.verify(roundTrip(alice.create({ type: "offer", to: "bob", sdp: "v=0" })), { types: ["offer"] });
    expect(keys.deviceId).toBe(deriveIdentity(SEED, "alice").deviceId);
    expect(keys.endpointId).toBe(deriveIdentity(SEED, "alice").endpointId);
  });

  test("the same message twice is a replay", () => {
    const bob = codec("bob");
    const m = roundTrip(alice.create({ type: "dial-request", to: "bob" }));
    expect(reason(() => bob.verify(m, { types: ["dial-request"] }))).toBe("accepted");
    expect(reason(() => bob.verify(m, { types: ["dial-request"] }))).toBe("replayed");
  });

  test.each([
    ["sdp changed", (m: SignalMessage) => ({ ...m, sdp: "v=1" }), "bad_proof"],
    ["ts changed", (m: SignalMessage) => ({ ...m, ts: m.ts + 1 }), "bad_proof"],
    ["sender renamed", (m: SignalMessage) => ({ ...m, from: "mallory" }), "bad_proof"],
    ["addressed elsewhere", (m: SignalMessage) => ({ ...m, to: "carol" }), "wrong_addressee"],
  ])("%s is refused", (_what, tamper, expected) => {
    const m = tamper(roundTrip(alice.create({ type: "offer", to: "bob", sdp: "v=0" })));
    expect(reason(() => codec("bob").verify(m, { types: ["offer"] }))).toBe(expected);
  });

  test("a member signing for another member's name fails the endpoint or signature check", () => {
    const mallory = codec("mallory");
    const m = mallory.create({ type: "offer", to: "bob", sdp: "v=0" });
    // Recompute a valid proof for the forged sender: only the signature and endpoint stand in the way.
    const forged = { ...m, from: "alice" };
    const bytes = new TextEncoder().encode(
      `peat-signal-v1\n${JSON.stringify([forged.v, forged.type, forged.from, forged.endpoint, forged.to, forged.ts, forged.nonce, forged.re, forged.broker_port, forged.link, forged.sdp])}`,
    );
    forged.proof = Buffer.from(new FormationKey(SEED).mac(bytes)).toString("hex");
    expect(reason(() => codec("bob").verify(forged, { types: ["offer"] }))).toBe("bad_endpoint");
    const withEndpoint = { ...forged, endpoint: deriveIdentity(SEED, "alice").endpointId };
    const bytes2 = new TextEncoder().encode(
      `peat-signal-v1\n${JSON.stringify([withEndpoint.v, withEndpoint.type, withEndpoint.from, withEndpoint.endpoint, withEndpoint.to, withEndpoint.ts, withEndpoint.nonce, withEndpoint.re, withEndpoint.broker_port, withEndpoint.link, withEndpoint.sdp])}`,
    );
    withEndpoint.proof = Buffer.from(new FormationKey(SEED).mac(bytes2)).toString("hex");
    expect(reason(() => codec("bob").verify(withEndpoint, { types: ["offer"] }))).toBe("bad_signature");
  });

  test("another formation fails the proof", () => {
    const m = codec("alice", { seed: FOREIGN }).create({ type: "offer", to: "bob", sdp: "v=0" });
    expect(reason(() => codec("bob").verify(roundTrip(m), { types: ["offer"] }))).toBe("bad_proof");
  });

  test("timestamps more than 60 s off either way are stale", () => {
    for (const skew of [-61_000, 61_000]) {
      const m = codec("alice", { now: () => Date.now() + skew }).create({ type: "offer", to: "bob", sdp: "" });
      expect(reason(() => codec("bob").verify(roundTrip(m), { types: ["offer"] }))).toBe("stale");
    }
    const ok = codec("alice", { now: () => Date.now() - 50_000 }).create({ type: "offer", to: "bob", sdp: "" });
    expect(reason(() => codec("bob").verify(roundTrip(ok), { types: ["offer"] }))).toBe("accepted");
  });

  test("a response must answer our request and come from whom we asked", () => {
    const bob = codec("bob");
    const answer = roundTrip(bob.create({ type: "answer", to: "alice", re: "0".repeat(32), sdp: "v=0" }));
    expect(reason(() => codec("alice").verify(answer, { types: ["answer"], re: "1".repeat(32) }))).toBe("wrong_request");
    expect(reason(() => codec("alice").verify(answer, { types: ["answer"], from: "carol" }))).toBe("wrong_sender");
  });

  test("an empty addressee is accepted only where allowed", () => {
    const m = roundTrip(alice.create({ type: "dial-request", to: "" }));
    expect(reason(() => codec("bob").verify(m, { types: ["dial-request"] }))).toBe("wrong_addressee");
    expect(reason(() => codec("bob").verify(m, { types: ["dial-request"], allowEmptyTo: true }))).toBe("accepted");
  });

  test.each([
    ["not JSON", "nope"],
    ["an array", "[]"],
    ["missing fields", "{\"v\":1}"],
    ["a bad nonce", JSON.stringify({ ...alice.create({ type: "offer", to: "bob" }), nonce: "xyz" })],
    ["an over-long sdp", JSON.stringify({ ...alice.create({ type: "offer", to: "bob" }), sdp: "x".repeat(20_000) })],
    ["an unknown type", JSON.stringify({ ...alice.create({ type: "offer", to: "bob" }), type: "hello" })],
  ])("%s is a format error", (_what, text) => {
    expect(() => parseSignal(text)).toThrow(SignallingFormatError);
  });
});

describe("bounded bookkeeping", () => {
  test("the replay cache forgets expired entries and fails closed when full of live ones", () => {
    let now = 0;
    const cache = new ReplayCache(2, 1000, () => now);
    expect(cache.add("a")).toBe("ok");
    expect(cache.add("a")).toBe("replayed");
    expect(cache.add("b")).toBe("ok");
    expect(cache.add("c")).toBe("full");
    now = 1001;
    expect(cache.add("c")).toBe("ok");
    expect(cache.size).toBeLessThanOrEqual(2);
  });

  test("rate limiter: burst, refill, and a cap on remembered addresses", () => {
    let now = 0;
    const limiter = new RateLimiter({ burst: 3, perSecond: 1, globalBurst: 100, globalPerSecond: 100, maxKeys: 2 }, () => now);
    expect([1, 2, 3, 4].map(() => limiter.take("x"))).toEqual([true, true, true, false]);
    now = 1000;
    expect(limiter.take("x")).toBe(true);
    expect(limiter.take("x")).toBe(false);
    expect(limiter.take("y")).toBe(true);
    expect(limiter.take("z")).toBe(true);
  });

  test("the global bucket caps all addresses together", () => {
    const limiter = new RateLimiter({ burst: 10, perSecond: 0, globalBurst: 3, globalPerSecond: 0, maxKeys: 100 }, () => 0);
    expect(["a", "b", "c", "d"].map((k) => limiter.take(k))).toEqual([true, true, true, false]);
  });

  test("LruMap keeps the most recently used", () => {
    const m = new LruMap<string, number>(2);
    m.set("a", 1);
    m.set("b", 2);
    m.get("a");
    m.set("c", 3);
    expect([m.get("a"), m.get("b"), m.get("c")]).toEqual([1, undefined, 3]);
  });
});

describe("splitCandidates", () => {
  test("moves candidate lines out and drops end-of-candidates", () => {
    const sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\na=candidate:1 1 UDP 1 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n";
    const { sdp: rest, candidates } = splitCandidates(sdp);
    expect(candidates).toEqual([{ candidate: "candidate:1 1 UDP 1 127.0.0.1 5000 typ host", mid: "0" }]);
    expect(rest).not.toContain("candidate");
    expect(rest).toContain("a=mid:0");
  });
});
