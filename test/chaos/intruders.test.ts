/**
 * Intruders against a real node ("delta") that has two real members connected ("bravo" dials it,
 * "charlie" asks to be dialled), both through a relay that records their signalling:
 *
 * 1. A real node process with another formation secret is pointed at delta and dials it on its own.
 * 2. PEAT_CHAOS_INTRUDER_ATTEMPTS (default 100) wrong-secret attempts in all: the intruder node's own
 *    plus messages built with the project's SignalCodec under the wrong secret (offers carrying a
 *    real SDP and dial-requests; fresh names and names of real members), from many source
 *    addresses so the per-address rate limit does not hide them.
 * 3. PEAT_CHAOS_REPLAY_ATTEMPTS (default 100) replays of the real offers and dial-requests the relay
 *    captured between the members and delta.
 * 4. A flood from one address: the rate limiter answers 429.
 *
 * Every attempt is refused with a 4xx JSON error, no PeerConnection is created for it, the
 * intruder gets no connection and no document, the members stay connected and in sync, and each
 * refusal is logged at WARN (a throttled WARN carries `suppressed=N` for the refusals it stands
 * for, and every refusal must be accounted for). Delta's RSS, file descriptors and
 * PeerConnections (`peat_transport_peer_connections`) do not grow.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { FormationKey, decodeStrictBase64, deriveIdentity } from "../../src/identity/index.ts";
import { SignalCodec, type SignalType } from "../../src/transport/signal.ts";
import { type NodeProcess, TEST_SECRET, freeTcpPort, startNode, stopAllNodes, udpRangeStart, waitFor } from "../harness/node-process.ts";
import {
  type CapturedSignal,
  Rng,
  SignalRecorder,
  alive,
  chaosSeed,
  connectedPeers,
  envInt,
  logLines,
  metricSum,
  mib,
  postSignal,
  printFigures,
  procStats,
  scrape,
  suppressedCount,
  syncState,
} from "./lib/hostile.ts";

const ATTEMPTS = envInt("PEAT_CHAOS_INTRUDER_ATTEMPTS", 100);
const REPLAYS = envInt("PEAT_CHAOS_REPLAY_ATTEMPTS", 100);
const FLOOD = 40;
/** Requests per source address: half the per-address burst, so no attempt is hidden by a 429. */
const PER_SOURCE = 10;
const RSS_TOLERANCE_BYTES = 48 * 1024 * 1024;
const OTHER_SECRET = "ZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmY=";
const SEED = chaosSeed();
const rng = new Rng(SEED);

const TARGET = "delta";
const DIALER = "bravo";
const DIALLED = "charlie";

const recorders: SignalRecorder[] = [];
const figures: Record<string, unknown> = { seed: SEED, attempts: ATTEMPTS, replays: REPLAYS };

afterAll(async () => {
  printFigures("intruders", figures);
  for (const r of recorders) r.stop();
  await stopAllNodes();
});

let sourceIndex = 0;
/** A fresh loopback source address (127.1.x.y) for every PER_SOURCE requests. */
function nextSource(): string {
  const n = sourceIndex++;
  return `127.1.${Math.floor(n / 250)}.${(n % 250) + 2}`;
}

const warnLines = (n: NodeProcess, from = 0) => logLines(n, "WARN", /Signalling authentication failed|Peer failed formation authentication/, from);

describe("intruders", () => {
  test(`${ATTEMPTS} wrong-secret attempts and ${REPLAYS} replays are refused, logged, and cost nothing`, async () => {
    const started = performance.now();
    const seed = decodeStrictBase64(TEST_SECRET);
    const device = (name: string) => deriveIdentity(seed, name).deviceId;
    // The roles rest on the device-id order: the smaller id dials.
    expect(device(DIALER) < device(TARGET)).toBe(true);
    expect(device(DIALLED) > device(TARGET)).toBe(true);

    const targetPort = freeTcpPort();
    const relay = new SignalRecorder(targetPort);
    recorders.push(relay);
    const common = { PEAT_SYNC_BIND: "127.0.0.1", PEAT_SYNC_INTERVAL_SECS: "1" };
    const delta = await startNode({ env: { ...common, HOSTNAME: TARGET, PEAT_BROKER_PORT: String(targetPort), PEAT_IROH_BIND_PORT: String(udpRangeStart()) } });
    const members = await Promise.all(
      [DIALER, DIALLED].map((name) =>
        startNode({ env: { ...common, HOSTNAME: name, PEAT_STATIC_PEERS: `${TARGET}@127.0.0.1:${relay.port}`, PEAT_IROH_BIND_PORT: String(udpRangeStart()) } }),
      ),
    );
    await waitFor(async () => JSON.stringify(await connectedPeers(delta)) === JSON.stringify([DIALER, DIALLED]), 30_000, "both members connected to delta", 100);
    for (let i = 0; i < 5; i++) {
      expect((await delta.fetch(`/api/v1/documents/secrets/s-${i}`, { method: "PUT", body: JSON.stringify({ i, secret: `classified ${i}` }) })).status).toBe(201);
    }
    await waitFor(async () => {
      const states = await Promise.all([delta, ...members].map(syncState));
      return states.every((s) => s.state_hash === states[0]?.state_hash && s.collections.length === 1);
    }, 30_000, "the members to hold delta's documents", 100);

    const captured = relay.captured.filter((c) => c.to === TARGET || c.to === "");
    const offers = captured.filter((c) => c.type === "offer");
    const dialRequests = captured.filter((c) => c.type === "dial-request");
    expect(offers.length).toBeGreaterThan(0);
    expect(dialRequests.length).toBeGreaterThan(0);
    expect(captured.every((c) => c.status === 200)).toBe(true);
    figures.captured = { offers: offers.length, dial_requests: dialRequests.length };

    const linesAtStart = delta.lines.length;
    const metricsAtStart = await scrape(delta);
    const authFailures = (m: Map<string, number>) => metricSum(m, "peat_transport_auth_failures_total", { stage: "signalling" });
    const rejected = (m: Map<string, number>, reason: string) => metricSum(m, "peat_transport_signal_rejected_total", { reason });
    const connectedLinesAtStart = logLines(delta, "INFO", /Peer (connected|disconnected)/).length;

    // PeerConnections on delta, sampled the whole time: only the two members' may ever exist.
    let sampling = true;
    let maxPeerConnections = 0;
    const sampler = (async () => {
      while (sampling) {
        maxPeerConnections = Math.max(maxPeerConnections, metricSum(await scrape(delta), "peat_transport_peer_connections"));
        // The sampling rate, not a synchronisation.
        await Bun.sleep(50);
      }
    })();

    // 1. A real node with another formation's secret, configured with delta, tries on its own.
    const intruder = await startNode({
      env: { ...common, HOSTNAME: "intruder", PEAT_FORMATION_SECRET: OTHER_SECRET, PEAT_STATIC_PEERS: `${TARGET}@127.0.0.1:${targetPort}`, PEAT_IROH_BIND_PORT: String(udpRangeStart()) },
    });
    await waitFor(async () => authFailures(await scrape(delta)) - authFailures(metricsAtStart) >= 3, 30_000, "delta to refuse the intruder node three times", 100);
    await intruder.waitForLine(/Peer refused our signalling/, 10_000);
    expect(logLines(intruder, "INFO", /Peer connected/)).toEqual([]);
    expect((await syncState(intruder)).collections).toEqual([]);
    expect(await intruder.stop()).toBe(0);
    const byIntruderNode = authFailures(await scrape(delta)) - authFailures(metricsAtStart);
    figures.intruder_node_attempts = byIntruderNode;

    // Resources after the first refusals (code paths warm), before the bulk of the attempts.
    const baseline = procStats(delta.pid);

    // 2. Wrong-secret messages from the project's own codec, until ATTEMPTS attempts in all.
    const otherSeed = decodeStrictBase64(OTHER_SECRET);
    const realSdp = JSON.parse((offers[0] as CapturedSignal).body).sdp as string;
    const statuses: Record<string, number> = {};
    const badAnswers: string[] = [];
    let refused401 = 0;
    const expect401 = (r: { status: number; text: string }, what: string) => {
      statuses[r.status] = (statuses[r.status] ?? 0) + 1;
      let body: { error?: unknown; status?: unknown } = {};
      try {
        body = JSON.parse(r.text);
      } catch {}
      if (r.status !== 401 || typeof body.error !== "string" || body.status !== 401) badAnswers.push(`${what}: ${r.status} ${r.text.slice(0, 160)}`);
      else refused401++;
    };
    const forged = (n: number): string => {
      const name = rng.pick([`intruder-${n}`, DIALER, DIALLED, "peat-mesh-0"]);
      const codec = new SignalCodec({
        identity: deriveIdentity(otherSeed, name),
        formationKey: new FormationKey(otherSeed),
        seed: otherSeed,
        brokerPort: () => freeTcpPort(),
        clockSkewMs: 60_000,
        replayCacheSize: 16,
      });
      const type: SignalType = rng.pick(["offer", "dial-request"]);
      return JSON.stringify(codec.create(type === "offer" ? { type, to: TARGET, sdp: realSdp } : { type, to: rng.chance(0.5) ? TARGET : "" }));
    };
    let source = nextSource();
    let sentFromSource = 0;
    const send = async (body: string, what: string) => {
      if (sentFromSource === PER_SOURCE) {
        source = nextSource();
        sentFromSource = 0;
      }
      sentFromSource++;
      expect401(await postSignal(targetPort, body, source), what);
    };
    const forgedCount = Math.max(0, ATTEMPTS - byIntruderNode);
    for (let i = 0; i < forgedCount; i++) await send(forged(i), `forged ${i}`);
    figures.forged_attempts = forgedCount;

    // 3. Replays of the real members' captured offers and dial-requests.
    const requests = [...offers, ...dialRequests];
    for (let i = 0; i < REPLAYS; i++) {
      const c = rng.pick(requests);
      await send(c.body, `replay of ${c.type} from ${c.from}`);
    }

    // 4. A flood from one address: beyond the burst, 429.
    const floodSource = nextSource();
    const flood = await Promise.all(Array.from({ length: FLOOD }, (_, i) => postSignal(targetPort, forged(1000 + i), floodSource)));
    const flood429 = flood.filter((r) => r.status === 429);
    for (const r of flood.filter((r) => r.status !== 429)) expect401(r, "flood");
    figures.flood = { sent: FLOOD, rate_limited_429: flood429.length, refused_401: FLOOD - flood429.length };
    expect(flood429.length).toBeGreaterThan(0);
    for (const r of flood429) expect(JSON.parse(r.text)).toEqual({ error: expect.any(String), status: 429 });

    // Every refusal is accounted for in the log: one WARN line each, or counted in a later line's
    // `suppressed=N` (the throttle's 10 s window). Probe attempts, themselves refused and counted,
    // bring out the last count.
    const expectedRefusals = () => byIntruderNode + refused401;
    let probes = 0;
    await waitFor(
      async () => {
        const lines = warnLines(delta, linesAtStart);
        if (lines.length + suppressedCount(lines) === expectedRefusals()) return true;
        probes++;
        await send(forged(5000 + probes), "probe");
        return false;
      },
      30_000,
      "every refusal to be accounted for in delta's WARN lines",
      1000,
    );
    sampling = false;
    await sampler;

    const metricsAfter = await scrape(delta);
    const lines = warnLines(delta, linesAtStart);
    figures.statuses = statuses;
    figures.refused_total = expectedRefusals();
    figures.warn_lines = lines.length;
    figures.warn_suppressed_counted = suppressedCount(lines);
    figures.rejected_by_reason = Object.fromEntries(
      ["bad_proof", "replayed", "stale", "wrong_addressee", "rate_limited"].map((r) => [r, rejected(metricsAfter, r) - rejected(metricsAtStart, r)]),
    );
    expect(badAnswers).toEqual([]);
    expect(authFailures(metricsAfter) - authFailures(metricsAtStart)).toBe(expectedRefusals());
    expect(byIntruderNode + forgedCount + probes).toBeGreaterThanOrEqual(ATTEMPTS);
    expect(rejected(metricsAfter, "replayed") + rejected(metricsAfter, "stale") - rejected(metricsAtStart, "replayed") - rejected(metricsAtStart, "stale")).toBe(REPLAYS);
    // Each WARN names the source and the reason.
    expect(lines.every((l) => /addr=127\.\d+\.\d+\.\d+ reason=(bad_proof|replayed|stale)/.test(l))).toBe(true);

    // Nothing was set up for any of it, and the members were never disturbed.
    figures.max_peer_connections = maxPeerConnections;
    expect(maxPeerConnections).toBe(2);
    expect(metricSum(metricsAfter, "peat_transport_peer_connections")).toBe(2);
    expect(logLines(delta, "INFO", /Peer (connected|disconnected)/).length).toBe(connectedLinesAtStart);
    expect(await connectedPeers(delta)).toEqual([DIALER, DIALLED]);
    const states = await Promise.all([delta, ...members].map(syncState));
    expect(states.every((s) => s.state_hash === states[0]?.state_hash)).toBe(true);

    // Resources: no growth beyond noise.
    await waitFor(() => procStats(delta.pid).fds <= baseline.fds + 3, 15_000, "delta's file descriptors to settle", 100);
    const after = procStats(delta.pid);
    figures.rss_before_mib = mib(baseline.rssBytes);
    figures.rss_after_mib = mib(after.rssBytes);
    figures.fds_before = baseline.fds;
    figures.fds_after = after.fds;
    figures.threads_before = baseline.threads;
    figures.threads_after = after.threads;
    expect(after.rssBytes - baseline.rssBytes).toBeLessThan(RSS_TOLERANCE_BYTES);
    expect(after.threads).toBeLessThanOrEqual(baseline.threads + 2);
    expect(alive(delta.pid)).toBe(true);
    expect(logLines(delta, "ERROR", /./)).toEqual([]);
    figures.wall_ms = Math.round(performance.now() - started);
  }, 300_000);
});
