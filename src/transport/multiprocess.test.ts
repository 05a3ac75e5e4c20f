/**
 * Real WebRTC between real processes (testdata/peer.ts): connection per pair, one-sided static
 * configuration, large messages, restart after SIGKILL, a foreign formation, replayed and garbage
 * signalling, and malformed frames. Every wait is a poll with a deadline.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createHash } from "node:crypto";
import { FormationKey, decodeStrictBase64, deriveIdentity } from "../identity/index.ts";
import { patternBytes } from "./conformance.ts";
import { SignalCodec } from "./signal.ts";
import { type Line, PeerProcess, killAll, randomPortBase, waitUntil } from "./testdata/procs.ts";

setDefaultTimeout(60_000);

const SECRET = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OTHER_SECRET = "ZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmY=";
const SEED = decodeStrictBase64(SECRET);
const WAIT = 15_000;

let nextPort = randomPortBase();
function ports(): { brokerPort: number; icePort: number } {
  const p = { brokerPort: nextPort, icePort: nextPort + 1 };
  nextPort += 2;
  return p;
}

function deviceId(name: string): string {
  return deriveIdentity(SEED, name).deviceId;
}

function spawn(name: string, peers: string[], extra: Partial<{ secret: string; brokerPort: number; icePort: number }> = {}): PeerProcess {
  const p = extra.brokerPort !== undefined && extra.icePort !== undefined ? { brokerPort: extra.brokerPort, icePort: extra.icePort } : ports();
  return new PeerProcess({ name, secret: extra.secret ?? SECRET, ...p, peers });
}

function at(p: PeerProcess, name?: string): string {
  return `${name ? `${name}@` : ""}127.0.0.1:${p.config.brokerPort}`;
}

function expectedSha(size: number, seed: number): string {
  const body = patternBytes(size - 1, seed);
  const msg = new Uint8Array(size);
  msg[0] = "D".charCodeAt(0);
  msg.set(body, 1);
  return createHash("sha256").update(msg).digest("hex");
}

async function getJson(p: PeerProcess, path: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`http://127.0.0.1:${p.config.brokerPort}${path}`);
  return { status: res.status, body: await res.json() };
}

async function postSignal(p: PeerProcess, body: string | Uint8Array): Promise<{ status: number; body: any }> {
  const res = await fetch(`http://127.0.0.1:${p.config.brokerPort}/api/v1/signal`, { method: "POST", body });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {}
  return { status: res.status, body: parsed };
}

async function stats(p: PeerProcess): Promise<Line> {
  return p.request({ cmd: "stats" }, "stats");
}

afterAll(() => {
  killAll();
});

describe("three processes, each configured with the other two", () => {
  const names = ["mesh-a", "mesh-b", "mesh-c"];
  const procs: PeerProcess[] = [];

  test("every pair connects exactly once", async () => {
    const assigned = names.map(() => ports());
    names.forEach((name, i) => {
      const peers = names.flatMap((n, j) => (j === i ? [] : [`${n}@127.0.0.1:${assigned[j]?.brokerPort}`]));
      procs.push(spawn(name, peers, assigned[i]));
    });
    for (const p of procs) await p.ready();
    await waitUntil(() => procs.every((p) => names.every((n) => n === p.name || p.connectedTo(n))), WAIT, "full mesh");
    for (const p of procs) {
      const s = await stats(p);
      expect(s.connected).toBe(2);
      expect(s.peerConnections).toBe(2);
      // Each peer reported once: no second connection for the same pair.
      expect(p.events("connected").map((l) => l.peer).sort()).toEqual(names.filter((n) => n !== p.name).sort());
    }
  });

  test("the broker lists peers and topology", async () => {
    const [a] = procs as [PeerProcess];
    const peers = await getJson(a, "/api/v1/peers");
    expect(peers.status).toBe(200);
    expect(peers.body.count).toBe(2);
    for (const peer of peers.body.peers) {
      expect(peer).toMatchObject({ connected: true, state: "connected", discovered_via: ["static"], device_id: deviceId(peer.id) });
      expect(peer.addresses).toHaveLength(1);
      expect(typeof peer.bytes_sent).toBe("number");
    }
    const one = await getJson(a, "/api/v1/peers/mesh-b");
    expect(one.body.id).toBe("mesh-b");
    const missing = await getJson(a, "/api/v1/peers/nobody");
    expect(missing.status).toBe(404);
    expect(missing.body).toMatchObject({ status: 404 });
    expect((await getJson(a, "/api/v1/topology")).body).toEqual({ peer_count: 2, role: "peer", hierarchy_level: 0 });
    // The log line operators grep for.
    const line = a.logs("INFO", "Peer connected").find((l) => l.peer === "mesh-b") as Line;
    expect(line.endpoint_id).toBe(deriveIdentity(SEED, "mesh-b").endpointIdShort);
    expect(String(line.addresses)).toMatch(/^\[127\.0\.0\.1:\d+\]$/);
    expect(line.target).toBe("peat_mesh::transport");
  });

  test("small and large (> 1 MiB) messages arrive intact", async () => {
    const [a, b, c] = procs as [PeerProcess, PeerProcess, PeerProcess];
    const sent = await a.request({ cmd: "send", peer: "mesh-b", size: 3 * 1024 * 1024 + 5, seed: 7 }, "sent");
    expect(sent.ok).toBe(true);
    await c.request({ cmd: "send", peer: "mesh-b", size: 100, seed: 8 }, "sent");
    await waitUntil(() => b.events("message").length === 2, WAIT, "messages at b");
    const got = b.events("message");
    expect(got.find((m) => m.peer === "mesh-a")).toMatchObject({ len: 3 * 1024 * 1024 + 5, sha256: expectedSha(3 * 1024 * 1024 + 5, 7) });
    expect(got.find((m) => m.peer === "mesh-c")).toMatchObject({ len: 100, sha256: expectedSha(100, 8) });
  });

  test("a malformed frame drops only the peer that sent it", async () => {
    const [a, b, c] = procs as [PeerProcess, PeerProcess, PeerProcess];
    const before = b.events("disconnected").length;
    // A continuation chunk with no first chunk: a framing violation.
    expect((await a.request({ cmd: "raw", peer: "mesh-b", hex: "12010203" }, "raw")).ok).toBe(true);
    await waitUntil(() => b.events("disconnected").length > before, WAIT, "b to drop a");
    expect(b.events("disconnected").slice(before)).toEqual([{ ev: "disconnected", peer: "mesh-a", reason: "protocol_error" }]);
    expect(b.logs("WARN", "Dropping peer after a malformed frame").at(-1)).toMatchObject({ peer: "mesh-a" });
    await waitUntil(() => !a.connectedTo("mesh-b"), WAIT, "a to see the drop");
    // b and c are unaffected.
    expect(b.connectedTo("mesh-c") && c.connectedTo("mesh-b")).toBe(true);
    const count = b.events("message").length;
    await c.request({ cmd: "send", peer: "mesh-b", size: 50, seed: 9 }, "sent");
    await waitUntil(() => b.events("message").length === count + 1, WAIT, "c's message after the drop");
    // a and b find each other again.
    await waitUntil(() => a.connectedTo("mesh-b") && b.connectedTo("mesh-a"), WAIT, "a and b reconnect");
  });

  test("a peer killed with SIGKILL and restarted with the same identity is reconnected", async () => {
    const [a, b, c] = procs as [PeerProcess, PeerProcess, PeerProcess];
    b.kill("SIGKILL");
    await b.waitExit();
    await waitUntil(() => !a.connectedTo("mesh-b") && !c.connectedTo("mesh-b"), WAIT, "a and c to notice");
    const reasons = [a, c].map((p) => p.events("disconnected", (l) => l.peer === "mesh-b").at(-1)?.reason);
    for (const r of reasons) expect(["timeout", "closed_by_peer", "ice_failed"]).toContain(r as string);
    const b2 = spawn("mesh-b", b.config.peers, { brokerPort: b.config.brokerPort, icePort: b.config.icePort });
    procs[1] = b2;
    await b2.ready();
    await waitUntil(() => a.connectedTo("mesh-b") && c.connectedTo("mesh-b") && b2.connectedTo("mesh-a") && b2.connectedTo("mesh-c"), WAIT, "reconnect");
    await a.request({ cmd: "send", peer: "mesh-b", size: 2 * 1024 * 1024, seed: 11 }, "sent");
    await waitUntil(() => b2.events("message").length === 1, WAIT, "message after restart");
    expect(b2.events("message")[0]).toMatchObject({ peer: "mesh-a", sha256: expectedSha(2 * 1024 * 1024, 11) });
    expect((await stats(b2)).peerConnections).toBe(2);
  });
});

describe("a static peer configured on one side only (no name)", () => {
  for (const configuredIsDialer of [true, false]) {
    test(`connects once when the configured side ${configuredIsDialer ? "dials" : "must ask to be dialled"}`, async () => {
      const [small, large] = deviceId("one-x") < deviceId("one-y") ? ["one-x", "one-y"] : ["one-y", "one-x"];
      const [configuredName, otherName] = configuredIsDialer ? [small, large] : [large, small];
      const other = spawn(otherName, []);
      await other.ready();
      const configured = spawn(configuredName, [at(other)]);
      await configured.ready();
      await waitUntil(() => configured.connectedTo(otherName) && other.connectedTo(configuredName), WAIT, "one-sided connection");
      await Bun.sleep(300);
      expect(configured.events("connected")).toHaveLength(1);
      expect(other.events("connected")).toHaveLength(1);
      expect((await stats(configured)).peerConnections).toBe(1);
      // The provisional `static:` entry was replaced by the real node id.
      const peers = (await getJson(configured, "/api/v1/peers")).body;
      expect(peers.count).toBe(1);
      expect(peers.peers[0]).toMatchObject({ id: otherName, connected: true, discovered_via: ["static"] });
      const seenBack = (await getJson(other, "/api/v1/peers")).body;
      expect(seenBack.peers[0]).toMatchObject({ id: configuredName, connected: true, discovered_via: [] });
      configured.kill();
      other.kill();
    });
  }
});

describe("a process with another formation secret", () => {
  test("is refused on both sides, logged with its address, and receives nothing", async () => {
    const good = spawn("good-1", []);
    await good.ready();
    const foreign = spawn("foreign-1", [at(good, "good-1")], { secret: OTHER_SECRET });
    await foreign.ready();
    // good learns foreign's address too, so both directions are tried.
    const good2 = spawn("good-2", [at(good, "good-1"), at(foreign, "foreign-1")]);
    await good2.ready();
    await waitUntil(() => good.connectedTo("good-2"), WAIT, "the good pair to connect");
    await waitUntil(() => good.logs("WARN", "Signalling authentication failed").length > 0, WAIT, "WARN on good-1");
    await waitUntil(() => good2.logs("WARN").some((l) => String(l.message).startsWith("Peer refused")), WAIT, "WARN on good-2");
    expect(good.logs("WARN", "Signalling authentication failed")[0]).toMatchObject({ addr: "127.0.0.1", reason: "bad_proof" });
    expect(String(good2.logs("WARN").find((l) => String(l.message).startsWith("Peer refused"))?.addr)).toBe(at(foreign));
    expect(foreign.events("connected")).toEqual([]);
    expect((await good.request({ cmd: "send", peer: "foreign-1", size: 10 }, "sent")).ok).toBe(false);
    expect((await good2.request({ cmd: "send", peer: "foreign-1", size: 10 }, "sent")).ok).toBe(false);
    expect(foreign.events("message")).toEqual([]);
    expect((await stats(good)).peerConnections).toBe(1);
    const peer = (await getJson(good2, "/api/v1/peers/foreign-1")).body;
    expect(peer.connected).toBe(false);
    expect(["failed", "connecting", "discovered"]).toContain(peer.state);
    for (const p of [good, good2, foreign]) p.kill();
  });
});

describe("the signalling endpoint", () => {
  let node: PeerProcess;

  test("a replayed or stale message is refused", async () => {
    node = spawn("sig-1", []);
    await node.ready();
    const tester = deriveIdentity(SEED, "sig-tester");
    const codec = new SignalCodec({
      identity: tester,
      formationKey: new FormationKey(SEED),
      seed: SEED,
      brokerPort: () => 0, // no dial-back to the test process
      clockSkewMs: 60_000,
      replayCacheSize: 100,
    });
    const body = JSON.stringify(codec.create({ type: "dial-request", to: "sig-1" }));
    const first = await postSignal(node, body);
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ type: "dial-ack", from: "sig-1", to: "sig-tester" });
    const replay = await postSignal(node, body);
    expect(replay.status).toBe(401);
    expect(replay.body.error).toContain("replayed");
    const stale = new SignalCodec({
      identity: tester,
      formationKey: new FormationKey(SEED),
      seed: SEED,
      brokerPort: () => 0,
      clockSkewMs: 60_000,
      replayCacheSize: 100,
      now: () => Date.now() - 120_000,
    });
    const old = await postSignal(node, JSON.stringify(stale.create({ type: "dial-request", to: "sig-1" })));
    expect(old.status).toBe(401);
    // An SDP changed in transit breaks the signature (and the proof) over it.
    const offer = codec.create({ type: "offer", to: "sig-1", sdp: "v=0\r\na=fingerprint:sha-256 AA\r\n" });
    const tampered = await postSignal(node, JSON.stringify({ ...offer, sdp: offer.sdp.replace("AA", "BB") }));
    expect(tampered.status).toBe(401);
    expect((await stats(node)).created).toBe(0);
  });

  test("garbage gets a 4xx and allocates nothing", async () => {
    const before = await stats(node);
    const foreignCodec = new SignalCodec({
      identity: deriveIdentity(decodeStrictBase64(OTHER_SECRET), "intruder"),
      formationKey: new FormationKey(decodeStrictBase64(OTHER_SECRET)),
      seed: decodeStrictBase64(OTHER_SECRET),
      brokerPort: () => 0,
      clockSkewMs: 60_000,
      replayCacheSize: 10,
    });
    const cases: [string, string | Uint8Array][] = [
      ["random bytes", crypto.getRandomValues(new Uint8Array(2000))],
      ["not JSON", "hello"],
      ["empty object", "{}"],
      ["array", "[1,2,3]"],
      ["foreign formation offer", JSON.stringify(foreignCodec.create({ type: "offer", to: "sig-1", sdp: "v=0" }))],
      ["oversize", JSON.stringify({ v: 1, sdp: "x".repeat(100 * 1024) })],
    ];
    for (const [what, body] of cases) {
      const res = await postSignal(node, body);
      expect({ what, status: res.status >= 400 && res.status < 500 }).toEqual({ what, status: true });
    }
    expect(await postSignal(node, JSON.stringify({ v: 1, sdp: "x".repeat(100 * 1024) }))).toMatchObject({ status: 413 });
    const after = await stats(node);
    expect(after.created).toBe(before.created);
    expect(after.peerConnections).toBe(before.peerConnections);
  });

  test("a flood from one address is rate limited with 429", async () => {
    const results = await Promise.all(Array.from({ length: 60 }, () => postSignal(node, "{}")));
    const statuses = results.map((r) => r.status);
    expect(statuses).toContain(429);
    expect(statuses.filter((s) => s === 400).length).toBeLessThanOrEqual(25);
    expect((await stats(node)).created).toBe(0);
    node.kill();
  });
});
