import { describe, expect, test } from "bun:test";
import { FormationKey } from "../identity/index.ts";
import { HandshakeFailedError } from "./errors.ts";
import { FrameType } from "./framing.ts";
import { AuthHandshake } from "./handshake.ts";

const key = new FormationKey(new Uint8Array(32).fill(1));
const otherKey = new FormationKey(new Uint8Array(32).fill(2));

/** Runs two handshakes against each other over an in-order "channel"; returns who finished. */
function run(a: AuthHandshake, b: AuthHandshake): { a: boolean; b: boolean; error?: string } {
  const toB: Uint8Array[] = [a.start()];
  const toA: Uint8Array[] = [b.start()];
  try {
    for (let i = 0; i < 10 && (toA.length > 0 || toB.length > 0); i++) {
      for (const f of toB.splice(0)) toA.push(...b.receive(f).send);
      for (const f of toA.splice(0)) toB.push(...a.receive(f).send);
    }
  } catch (err) {
    return { a: a.done, b: b.done, error: (err as Error).message };
  }
  return { a: a.done, b: b.done };
}

describe("formation handshake", () => {
  test("two members authenticate each other", () => {
    expect(run(new AuthHandshake(key, "dialer"), new AuthHandshake(key, "answerer"))).toEqual({ a: true, b: true });
  });

  test("a different formation key fails, and neither side completes", () => {
    const result = run(new AuthHandshake(key, "dialer"), new AuthHandshake(otherKey, "answerer"));
    expect(result.error).toBe("wrong formation proof");
    expect(result.a || result.b).toBe(false);
  });

  test("a reflected challenge is refused", () => {
    const victim = new AuthHandshake(key, "answerer");
    const challenge = victim.start();
    expect(() => victim.receive(challenge)).toThrow("challenge reflected back");
  });

  test("our own answer replayed back (same role) does not verify", () => {
    // An attacker without the key relays the victim's nonce to another member acting as the
    // victim's role, then replays that member's answer: the role tag makes it invalid.
    const victim = new AuthHandshake(key, "dialer");
    const oracle = new AuthHandshake(key, "dialer");
    const nonce = victim.start().subarray(1);
    const answer = oracle.receive(Uint8Array.of(FrameType.challenge, ...nonce)).send[0] as Uint8Array;
    expect(() => victim.receive(answer)).toThrow(HandshakeFailedError);
  });

  test.each([
    ["data before authentication", Uint8Array.of(FrameType.whole, 1)],
    ["a short challenge", Uint8Array.of(FrameType.challenge, 1, 2)],
    ["AUTH_OK with a body", Uint8Array.of(FrameType.authOk, 1)],
  ])("%s fails the handshake", (_what, frame) => {
    expect(() => new AuthHandshake(key, "dialer").receive(frame)).toThrow(HandshakeFailedError);
  });

  test("a second challenge fails the handshake", () => {
    const h = new AuthHandshake(key, "dialer");
    const peer = new AuthHandshake(key, "answerer");
    h.receive(peer.start());
    expect(() => h.receive(peer.start())).toThrow("second challenge");
  });
});
