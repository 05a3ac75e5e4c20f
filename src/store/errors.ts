/**
 * Store-specific errors. They extend PeatError with the HTTP status the broker should answer with
 * (400 for bad input, 503 while closed); they do not subclass BadRequestError only because its
 * `name` is typed as the literal "BadRequestError", which would hide these names from logs.
 */
import { PeatError } from "../errors.ts";

/** A collection name or document id the store cannot key safely (empty, NUL, broken UTF-16). */
export class InvalidKeyError extends PeatError {
  override readonly status = 400;
  override readonly name = "InvalidKeyError";
}

/** A document that is not JSON the store can represent (non-object root, NaN, undefined, ...). */
export class InvalidDocumentError extends PeatError {
  override readonly status = 400;
  override readonly name = "InvalidDocumentError";
}

/** A malformed hybrid logical clock stamp received from a peer. */
export class InvalidHlcError extends PeatError {
  override readonly status = 400;
  override readonly name = "InvalidHlcError";
}

/** Bytes or metadata from a peer that Automerge cannot load or apply. */
export class InvalidRemoteDataError extends PeatError {
  override readonly status = 400;
  override readonly name = "InvalidRemoteDataError";
}

/** Compaction asked for a FullHistory collection: a history-free rewrite would fork it from peers. */
export class FullHistoryCompactionError extends PeatError {
  override readonly status = 400;
  override readonly name = "FullHistoryCompactionError";
}

/** A sync-mode override naming something other than LatestOnly / FullHistory. */
export class InvalidSyncModeError extends Error {
  override readonly name = "InvalidSyncModeError";
}

/** Called before `start()` or after `stop()`: 503 so a broker racing shutdown answers sensibly. */
export class StoreClosedError extends PeatError {
  override readonly status = 503;
  override readonly name = "StoreClosedError";
}
