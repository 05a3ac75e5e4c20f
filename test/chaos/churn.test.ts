/**
 * Churn: three real node processes on loopback (alpha, bravo, charlie; full mesh through static
 * peers). PEAT_CHAOS_CHURN_ROUNDS times (default 10) bravo goes away and comes back under the same
 * identity and data dir: alternately stopped gracefully (SIGTERM) and SIGKILLed, and every other
 * pair of rounds on a new broker port and a new UDP port (an address change).
 *
 * An address change is what a peer whose address is handed out dynamically (DHCP, a pod IP) sees:
 * bravo still knows where alpha and charlie are (their entries are unchanged), while alpha's and
 * charlie's PEAT_STATIC_PEERS keep naming bravo's old address, which nothing answers any more.
 * They must learn the new one from bravo's authenticated signalling: charlie from bravo's offer
 * (bravo's device id is the smaller, so bravo dials charlie), alpha from bravo's signed
 * dial-request (alpha's is the smaller, so alpha must dial bravo back at the address it learned).
 *
 * After each round: every node lists each other node once, connected (`/api/v1/peers`); no log
 * has two `Peer connected` for one peer without a `Peer disconnected` between; writes on each
 * node reach the others and all three reach the same `state_hash`.
 *
 * Leaks on the stable node alpha, compared before the first and after the last round, each in its
 * steady state: open file descriptors (`/proc/<pid>/fd`, within +3), live PeerConnections and data
 * channels (`peat_transport_peer_connections`, `peat_transport_data_channels`: 2 each, one per
 * peer) and pending timers (`peat_timers` per component: the transport's ping ticker, the sync
 * engine's two intervals, none in the connector).
 */
import { afterAll, expect, test } from "bun:test";
import { stopAllNodes, waitFor } from "../harness/node-process.ts";
import {
  Mesh,
  divergence,
  duplicateConnects,
  envInt,
  fdCount,
  metric,
  metricSamples,
  msSince,
  orderedSecret,
  peers,
  percentile,
  printFigures,
  stablePort,
  waitConverged,
} from "./lib/crash.ts";

const ROUNDS = envInt("PEAT_CHAOS_CHURN_ROUNDS", 10, 1);
const NAMES = ["alpha", "bravo", "charlie"];
/** Generous deadlines on waiting (loaded 2-core CI); strict checks on outcomes. */
const RECONNECT_TIMEOUT_MS = 60_000;
const STEADY_TIMEOUT_MS = 60_000;
const FD_TOLERANCE = 3;
/** Steady state of a node connected to two peers: see the file comment. */
const STEADY_TIMERS = { transport: 1, connector: 0, sync: 2 };

afterAll(stopAllNodes);

interface Resources {
  fds: number;
  peerConnections: number;
  dataChannels: number;
  timers: { transport: number; connector: number; sync: number };
}

async function resources(mesh: Mesh): Promise<Resources> {
  const a = mesh.node("alpha");
  const timers = await metricSamples(a, "peat_timers");
  return {
    fds: fdCount(a.pid),
    peerConnections: await metric(a, "peat_transport_peer_connections"),
    dataChannels: await metric(a, "peat_transport_data_channels"),
    timers: {
      transport: timers.get('{component="transport"}') ?? -1,
      connector: timers.get('{component="connector"}') ?? -1,
      sync: timers.get('{component="sync"}') ?? -1,
    },
  };
}

/** Waits for alpha's steady state: one PeerConnection and data channel per peer, the idle timers. */
async function steady(mesh: Mesh, what: string): Promise<Resources> {
  return waitFor(
    async () => {
      const r = await resources(mesh);
      const ok =
        r.peerConnections === 2 &&
        r.dataChannels === 2 &&
        r.timers.transport === STEADY_TIMERS.transport &&
        r.timers.connector === STEADY_TIMERS.connector &&
        r.timers.sync === STEADY_TIMERS.sync;
      return ok ? r : undefined;
    },
    STEADY_TIMEOUT_MS,
    what,
    250,
  ).catch(async (err) => {
    throw new Error(`${(err as Error).message}; alpha has ${JSON.stringify(await resources(mesh))}`);
  });
}

/** Each node lists each other node exactly once, connected, and nothing else. */
async function meshProblems(mesh: Mesh): Promise<string[]> {
  const problems: string[] = [];
  for (const name of NAMES) {
    const ps = await peers(mesh.node(name));
    const ids = ps.map((p) => p.id).sort();
    const others = NAMES.filter((n) => n !== name);
    if (ids.join() !== others.join()) problems.push(`${name} lists ${JSON.stringify(ids)}`);
    for (const p of ps) if (!p.connected) problems.push(`${name}: ${p.id} is ${p.state}`);
  }
  return problems;
}

function allDuplicates(mesh: Mesh): string[] {
  return [...mesh.members.values()].flatMap((m) =>
    m.incarnations.flatMap((n, i) => duplicateConnects(n).map((d) => `${m.name}#${i} (pid ${n.pid}): peer ${d.peer} at log line ${d.line}`)),
  );
}

async function doc(mesh: Mesh, name: string, path: string): Promise<unknown> {
  const res = await mesh.node(name).fetch(`/api/v1/documents/${path}`);
  if (res.status === 404) return undefined;
  return ((await res.json()) as { document: unknown }).document;
}

test(
  `a peer restarting ${ROUNDS} times, gracefully or killed, sometimes on new ports: one connection per pair, writes sync, nothing leaks`,
  async () => {
    const t0 = performance.now();
    const mesh = await Mesh.start({ names: NAMES, secret: orderedSecret(NAMES) });
    await waitFor(async () => (await meshProblems(mesh)).length === 0, RECONNECT_TIMEOUT_MS, "a full mesh", 100);
    const before = await steady(mesh, "alpha's steady state before the churn");

    const bravo = mesh.get("bravo");
    const reconnectMs: number[] = [];
    const convergeMs: number[] = [];
    let graceful = 0;
    let killed = 0;
    let moves = 0;

    for (let round = 0; round < ROUNDS; round++) {
      const kill = round % 2 === 1;
      const move = round % 4 >= 2;
      const old = bravo.node;
      if (kill) {
        await old.kill(); // SIGKILL to its pid
        expect(old.proc.signalCode).toBe("SIGKILL");
        killed++;
      } else {
        expect(await old.stop()).toBe(0);
        graceful++;
      }
      if (move) {
        bravo.brokerPort = await stablePort();
        bravo.udpPort = await stablePort();
        moves++;
      }
      const restartedAt = performance.now();
      await mesh.launch(bravo);
      await waitFor(async () => (await meshProblems(mesh)).length === 0, RECONNECT_TIMEOUT_MS, `the full mesh after round ${round}`, 50).catch(
        async (err) => {
          throw new Error(`${(err as Error).message}: ${(await meshProblems(mesh)).join("; ")}`);
        },
      );
      reconnectMs.push(msSince(restartedAt));

      // Writes on every node reach the others.
      const writtenAt = performance.now();
      for (const name of NAMES) {
        const res = await mesh.node(name).fetch(`/api/v1/documents/churn/r${round}-${name}`, {
          method: "PUT",
          body: JSON.stringify({ round, by: name, moved: move, killed: kill }),
        });
        expect(res.status).toBe(201);
      }
      await waitConverged(mesh.nodes(), RECONNECT_TIMEOUT_MS, `convergence after round ${round}`).catch(async (err) => {
        throw new Error(`${(err as Error).message}\n${await divergence(mesh.nodes())}`);
      });
      convergeMs.push(msSince(writtenAt));
      for (const reader of NAMES) {
        for (const writer of NAMES) {
          expect(await doc(mesh, reader, `churn/r${round}-${writer}`)).toEqual({ round, by: writer, moved: move, killed: kill, _id: `r${round}-${writer}` });
        }
      }
      expect(await meshProblems(mesh)).toEqual([]);
      expect(allDuplicates(mesh)).toEqual([]);
      // Bravo at its new address is what alpha and charlie are connected to.
      if (move) {
        for (const name of ["alpha", "charlie"]) {
          const view = (await peers(mesh.node(name))).find((p) => p.id === "bravo");
          expect(view?.addresses).toContain(`127.0.0.1:${bravo.brokerPort}`);
        }
      }
    }

    const after = await steady(mesh, "alpha's steady state after the churn");
    const fdsAfter = await waitFor(
      () => {
        const n = fdCount(mesh.node("alpha").pid);
        return n <= before.fds + FD_TOLERANCE ? n : undefined;
      },
      STEADY_TIMEOUT_MS,
      `alpha's open fds to return to at most ${before.fds} + ${FD_TOLERANCE}`,
      250,
    ).catch(() => fdCount(mesh.node("alpha").pid));
    const connectLines = (name: string) => mesh.node(name).lines.filter((l) => /Peer connected peer=bravo /.test(l)).length;
    const disconnectReasons = (name: string) =>
      mesh
        .node(name)
        .lines.map((l) => /Peer disconnected peer=bravo reason=(\S+)/.exec(l)?.[1])
        .filter((r): r is string => r !== undefined);

    const figures = {
      rounds: ROUNDS,
      restarts: graceful + killed,
      graceful_stops: graceful,
      sigkills: killed,
      address_changes: moves,
      duplicate_connections: allDuplicates(mesh).length,
      bravo_connects_seen_by_alpha: connectLines("alpha"),
      bravo_connects_seen_by_charlie: connectLines("charlie"),
      bravo_disconnect_reasons_seen_by_alpha: disconnectReasons("alpha"),
      bravo_disconnect_reasons_seen_by_charlie: disconnectReasons("charlie"),
      restart_to_full_mesh_ms: { p50: percentile(reconnectMs, 50), max: Math.max(...reconnectMs) },
      write_to_converged_ms: { p50: percentile(convergeMs, 50), max: Math.max(...convergeMs) },
      alpha_before: before,
      alpha_after: { ...after, fds: fdsAfter },
      wall_ms: msSince(t0),
    };
    printFigures("churn", figures);
    expect(figures.duplicate_connections).toBe(0);
    // One connection per restart of bravo, plus the first: no connection was set up twice.
    expect({ alpha: figures.bravo_connects_seen_by_alpha, charlie: figures.bravo_connects_seen_by_charlie }).toEqual({ alpha: ROUNDS + 1, charlie: ROUNDS + 1 });
    expect(fdsAfter).toBeLessThanOrEqual(before.fds + FD_TOLERANCE);
    expect(after.peerConnections).toBe(before.peerConnections);
    expect(after.dataChannels).toBe(before.dataChannels);
    expect(after.timers).toEqual(before.timers);
  },
  120_000 + ROUNDS * 60_000,
);
