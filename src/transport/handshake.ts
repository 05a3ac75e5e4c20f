/**
 * The formation challenge-response that opens every data channel, in both directions: each side
 * sends a fresh nonce, answers the other's with an HMAC under the formation key, and confirms with
 * AUTH_OK once it has checked the answer to its own nonce. A side is authenticated when it has
 * checked the peer's answer and received the peer's AUTH_OK, so neither side sends or accepts data
 * until both have proved membership.
 *
 * The answer is the original's FormationKey response, HMAC(key, input ‖ formation_id), where the
 * input is the nonce followed by the answering side's role. Without the role, a peer that does
 * not hold the key could send our own nonce back as its challenge and replay our answer as its own
 * (a reflection attack); with it, our answer is only valid in the other direction.
 */
import { type FormationKey, NONCE_BYTES, constantTimeEqual, randomNonce } from "../identity/index.ts";
import { HandshakeFailedError } from "./errors.ts";
import { FrameType, controlFrame } from "./framing.ts";

export type Role = "dialer" | "answerer";

const ROLE_TAG: Record<Role, number> = { dialer: 0x44, answerer: 0x41 };

function proofInput(nonce: Uint8Array, responder: Role): Uint8Array {
  const input = new Uint8Array(nonce.length + 1);
  input.set(nonce, 0);
  input[nonce.length] = ROLE_TAG[responder];
  return input;
}

export interface HandshakeStep {
  /** Frames to send, in order. */
  send: Uint8Array[];
  /** True once this side is authenticated: data may flow from now on. */
  done: boolean;
}

export class AuthHandshake {
  private readonly nonce = randomNonce();
  private answered = false;
  private verified = false;
  private peerConfirmed = false;

  constructor(
    private readonly key: FormationKey,
    private readonly role: Role,
  ) {}

  get done(): boolean {
    return this.verified && this.peerConfirmed;
  }

  /** The first frame, sent as soon as the channel opens. */
  start(): Uint8Array {
    return controlFrame(FrameType.challenge, this.nonce);
  }

  /** Feeds one frame received before the handshake completed. Throws HandshakeFailedError. */
  receive(frame: Uint8Array): HandshakeStep {
    const body = frame.subarray(1);
    switch (frame[0]) {
      case FrameType.challenge: {
        if (this.answered) throw new HandshakeFailedError("second challenge");
        if (body.length !== NONCE_BYTES) throw new HandshakeFailedError(`challenge of ${body.length} bytes`);
        if (constantTimeEqual(body, this.nonce)) throw new HandshakeFailedError("challenge reflected back");
        this.answered = true;
        return { send: [controlFrame(FrameType.response, this.key.respond(proofInput(body, this.role)))], done: this.done };
      }
      case FrameType.response: {
        if (this.verified) throw new HandshakeFailedError("second response");
        const peerRole: Role = this.role === "dialer" ? "answerer" : "dialer";
        if (!this.key.verify(proofInput(this.nonce, peerRole), body)) {
          throw new HandshakeFailedError("wrong formation proof");
        }
        this.verified = true;
        return { send: [controlFrame(FrameType.authOk)], done: this.done };
      }
      case FrameType.authOk: {
        if (this.peerConfirmed || body.length !== 0) throw new HandshakeFailedError("unexpected AUTH_OK");
        this.peerConfirmed = true;
        return { send: [], done: this.done };
      }
      default:
        throw new HandshakeFailedError(`frame type 0x${(frame[0] ?? 0).toString(16)} before authentication`);
    }
  }
}
