/**
 * Domain errors. Each carries the HTTP status it maps to, so the broker translates
 * errors in one place (`broker/errors.ts`) instead of every route choosing a code.
 */
export class PeatError extends Error {
  readonly status: number = 500;
  override readonly name: string = "PeatError";
}

export class BadRequestError extends PeatError {
  override readonly status = 400;
  override readonly name: string = "BadRequestError";
}

export class UnauthorizedError extends PeatError {
  override readonly status = 401;
  override readonly name: string = "UnauthorizedError";
}

export class ForbiddenError extends PeatError {
  override readonly status = 403;
  override readonly name: string = "ForbiddenError";
}

export class NotFoundError extends PeatError {
  override readonly status = 404;
  override readonly name: string = "NotFoundError";
}

export class MethodNotAllowedError extends PeatError {
  override readonly status = 405;
  override readonly name: string = "MethodNotAllowedError";
}

export class ConflictError extends PeatError {
  override readonly status = 409;
  override readonly name: string = "ConflictError";
}

export class PayloadTooLargeError extends PeatError {
  override readonly status = 413;
  override readonly name: string = "PayloadTooLargeError";
}

export class UnsupportedMediaTypeError extends PeatError {
  override readonly status = 415;
  override readonly name: string = "UnsupportedMediaTypeError";
}

export class TooManyRequestsError extends PeatError {
  override readonly status = 429;
  override readonly name: string = "TooManyRequestsError";
}

export class ServiceUnavailableError extends PeatError {
  override readonly status = 503;
  override readonly name: string = "ServiceUnavailableError";
}

/** The store could not persist a write (read-only medium, I/O error). */
export class StorageError extends PeatError {
  override readonly status: number = 500;
  override readonly name: string = "StorageError";
}

/** A group of writes could not be committed as a whole: none of it is stored. */
export class GroupCommitError extends StorageError {
  override readonly name = "GroupCommitError";
}

/** The disk is full: 507 Insufficient Storage, so clients can tell it from a bug. */
export class InsufficientStorageError extends StorageError {
  override readonly status = 507;
  override readonly name: string = "InsufficientStorageError";
}

/** A bad environment variable. Never reaches HTTP: startup stops with exit code 1. */
export class ConfigError extends Error {
  override readonly name: string = "ConfigError";
  constructor(
    readonly variable: string,
    readonly shownValue: string,
    readonly accepted: string,
  ) {
    super(`${variable}: invalid value ${shownValue}; accepted: ${accepted}`);
  }
}
