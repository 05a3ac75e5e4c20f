/**
 * Reads a whole HTTP body while counting bytes, so a peer or client cannot make the node buffer
 * more than `maxBytes` (a chunked body has no Content-Length to check up front).
 */
import { BadRequestError } from "./errors.ts";

export async function readCapped(body: ReadableStream<Uint8Array> | null, maxBytes: number, tooLarge: () => Error): Promise<Uint8Array> {
  const reader = body?.getReader();
  if (!reader) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    let chunk: Awaited<ReturnType<typeof reader.read>>;
    try {
      chunk = await reader.read();
    } catch (err) {
      // The other end went away mid-body (a client that hung up, a peer that was killed): a fault
      // of the request, not of this node, so it must not surface as a 500 and an ERROR line.
      throw new BadRequestError(`body could not be read: ${err instanceof Error ? err.message : String(err)}`);
    }
    const { done, value } = chunk;
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks);
}

/** Strict UTF-8: invalid sequences are an error, not replacement characters. */
export function decodeUtf8(bytes: Uint8Array): string | undefined {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
}
