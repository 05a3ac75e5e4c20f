/**
 * Broker routes contributed by the transport: the signalling endpoint peers call, and the
 * read-only peer and topology views for local apps.
 */
import { decodeUtf8, readCapped } from "../read-capped.ts";
import type { Elysia } from "elysia";
import type { RouteGroup } from "../broker/server.ts";
import { NotFoundError } from "../errors.ts";
import type { PeerConnector } from "./connector.ts";
import { SignallingFormatError, SignallingTooLargeError } from "./errors.ts";
import type { WebRtcTransport } from "./webrtc.ts";

export const SIGNAL_PATH = "/api/v1/signal";

/** Reads at most `maxBytes`, refusing as soon as more arrive: the cap applies before any parsing. */
async function readBodyCapped(request: Request, maxBytes: number): Promise<string> {
  const declared = request.headers.get("content-length");
  const tooLarge = () => new SignallingTooLargeError(`signalling body exceeds ${maxBytes} bytes`);
  if (declared !== null && Number(declared) > maxBytes) throw tooLarge();
  if (!request.body) throw new SignallingFormatError("signalling body required");
  const text = decodeUtf8(await readCapped(request.body, maxBytes, tooLarge));
  if (text === undefined) throw new SignallingFormatError("signalling body is not UTF-8");
  return text;
}

/**
 * `POST /api/v1/signal`: offers and dial-requests from peers. Exempt from the broker's bearer
 * token (each message carries its own proof). Order of work for a caller: rate limit (no body
 * read), size cap while reading, then the checks in SignalCodec.verify, and only then any
 * PeerConnection.
 */
export function signalRoutes(transport: WebRtcTransport): RouteGroup {
  return (app: Elysia) =>
    app.post(
      SIGNAL_PATH,
      async ({ request, server }) => {
        const ip = server?.requestIP(request)?.address ?? "unknown";
        transport.admitSignal(ip);
        const body = await readBodyCapped(request, transport.maxSignalBodyBytes);
        return await transport.handleSignal(body, ip);
      },
      { parse: "none" },
    ) as unknown as Elysia;
}

/** `GET /api/v1/peers`, `GET /api/v1/peers/:id`, `GET /api/v1/topology`. */
export function peerRoutes(connector: PeerConnector): RouteGroup {
  return (app: Elysia) =>
    app
      .get("/api/v1/peers", () => {
        const peers = connector.peers();
        return { peers, count: peers.length };
      })
      .get("/api/v1/peers/:id", ({ params }) => {
        const peer = connector.peer(params.id);
        if (!peer) throw new NotFoundError(`peer not found: ${params.id.slice(0, 260)}`);
        return peer;
      })
      .get("/api/v1/topology", () => {
        const count = connector.peers().filter((p) => p.connected).length;
        return { peer_count: count, role: count > 0 ? "peer" : "standalone", hierarchy_level: 0 };
      }) as unknown as Elysia;
}
