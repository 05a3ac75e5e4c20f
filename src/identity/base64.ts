const STRICT_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export class InvalidBase64Error extends Error {
  override readonly name = "InvalidBase64Error";
}

/**
 * RFC 4648 standard alphabet, padding required, no trailing bits: the same acceptance as the
 * original's base64 0.22 STANDARD engine, so a secret valid there is valid here and vice versa.
 * Surrounding whitespace is trimmed first, as the original does.
 */
export function decodeStrictBase64(text: string): Uint8Array {
  const trimmed = text.trim();
  if (!STRICT_BASE64.test(trimmed)) {
    throw new InvalidBase64Error("not standard padded base64 (alphabet A-Z a-z 0-9 + /, '=' padding)");
  }
  const bytes = new Uint8Array(Buffer.from(trimmed, "base64"));
  if (Buffer.from(bytes).toString("base64") !== trimmed) {
    throw new InvalidBase64Error("non-canonical base64 (trailing bits set)");
  }
  return bytes;
}
