/**
 * Transport errors. Those a signalling request can raise extend the shared HTTP-mapped classes, so
 * the broker answers them with the right status without knowing about the transport.
 */
import {
  BadRequestError,
  ConflictError,
  PayloadTooLargeError,
  PeatError,
  ServiceUnavailableError,
  TooManyRequestsError,
  UnauthorizedError,
} from "../errors.ts";

/**
 * The shared HTTP error classes type `name` as a literal, which a subclass cannot narrow to its own
 * literal; the subclass sets its name at run time instead, so logs and `err.name` still say which.
 */
function rename(error: Error, name: string): void {
  Object.defineProperty(error, "name", { value: name, enumerable: false, configurable: true, writable: true });
}

/** A signalling message failed verification (proof, endpoint id, signature, freshness, replay). 401. */
export class SignallingAuthError extends UnauthorizedError {
  constructor(
    message: string,
    /** Short machine-readable cause, used as a metric label. */
    readonly reason: string,
  ) {
    super(message);
    rename(this, "SignallingAuthError");
  }
}

/** A well-formed, authenticated message that breaks the protocol (wrong dialer, wrong addressee). 409. */
export class SignallingConflictError extends ConflictError {
  constructor(message: string) {
    super(message);
    rename(this, "SignallingConflictError");
  }
}

/** The body is not a signalling message. 400. */
export class SignallingFormatError extends BadRequestError {
  constructor(message: string) {
    super(message);
    rename(this, "SignallingFormatError");
  }
}

export class SignallingTooLargeError extends PayloadTooLargeError {
  constructor(message: string) {
    super(message);
    rename(this, "SignallingTooLargeError");
  }
}

export class SignallingRateLimitError extends TooManyRequestsError {
  constructor(message: string) {
    super(message);
    rename(this, "SignallingRateLimitError");
  }
}

/** Too many half-open connections, or the transport is not running. 503. */
export class ConnectionLimitError extends ServiceUnavailableError {
  constructor(message: string) {
    super(message);
    rename(this, "ConnectionLimitError");
  }
}

/** The peer did not finish the formation challenge-response in time. */
export class HandshakeTimeoutError extends PeatError {
  override readonly name = "HandshakeTimeoutError";
}

/** The peer answered the formation challenge wrongly, or sent something else first. */
export class HandshakeFailedError extends PeatError {
  override readonly name = "HandshakeFailedError";
}

/** A data-channel frame that breaks the framing rules; the peer that sent it is dropped. */
export class FrameError extends PeatError {
  override readonly name = "FrameError";
}

/** `send` was given more bytes than one message may carry. */
export class MessageTooLargeError extends PeatError {
  override readonly name = "MessageTooLargeError";
}

/** A dial attempt failed: no address answered, the peer refused, or the connection never opened. */
export class DialError extends PeatError {
  override readonly name = "DialError";
  constructor(
    message: string,
    /** True when the failure was an authentication refusal (either side), for the `failed` state. */
    readonly authFailure = false,
  ) {
    super(message);
  }
}
