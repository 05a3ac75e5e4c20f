/**
 * The one place where errors become HTTP responses: every domain error class carries its status,
 * anything else is a 500 whose details stay in the log, not the response.
 */
import { PeatError } from "../errors.ts";
import type { Logger } from "../log.ts";

export interface ErrorBody {
  error: string;
  status: number;
}

export function jsonResponse(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

export function errorResponse(status: number, message: string, headers: Record<string, string> = {}): Response {
  const body: ErrorBody = { error: message, status };
  return jsonResponse(body, status, headers);
}

/** Maps a thrown value to its response. Elysia's own parse/validation codes are client errors. */
export function responseForError(err: unknown, code: string | number | undefined, log: Logger): Response {
  if (err instanceof PeatError) {
    if (err.status >= 500) log.error("request failed", { error: err.message, kind: err.name });
    return errorResponse(err.status, err.message);
  }
  switch (code) {
    case "PARSE":
      return errorResponse(400, "malformed request body");
    case "VALIDATION":
      return errorResponse(400, "invalid request");
    case "NOT_FOUND":
      return errorResponse(404, "not found");
    case "INVALID_COOKIE_SIGNATURE":
      return errorResponse(400, "invalid cookie");
  }
  log.error("unhandled broker error", { error: err instanceof Error ? err.message : String(err) });
  return errorResponse(500, "internal error");
}
