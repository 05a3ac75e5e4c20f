#!/usr/bin/env bun
/**
 * Measures the transport between two peer processes on loopback: connection setup (discovery to
 * authenticated, both roles), application RTT, and throughput. Not a test; run by hand:
 *   bun src/transport/testdata/measure.ts [rounds]
 */
import { deriveIdentity, decodeStrictBase64 } from "../../identity/index.ts";
import { PeerProcess, killAll, randomPortBase, waitUntil } from "./procs.ts";

const SECRET = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const rounds = Number(process.argv[2] ?? 10);
const seed = decodeStrictBase64(SECRET);
const [small, large] = ["m-x", "m-y"].sort((a, b) => (deriveIdentity(seed, a).deviceId < deriveIdentity(seed, b).deviceId ? -1 : 1)) as [string, string];
let port = randomPortBase();

function pct(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? Number.NaN;
}

async function pair(configured: string, other: string): Promise<[PeerProcess, PeerProcess, number]> {
  const b = new PeerProcess({ name: other, secret: SECRET, brokerPort: port++, icePort: port++, peers: [] });
  await b.ready();
  const a = new PeerProcess({ name: configured, secret: SECRET, brokerPort: port++, icePort: port++, peers: [`${other}@127.0.0.1:${b.config.brokerPort}`] });
  await a.ready();
  const connected = await waitUntil(() => a.events("connected")[0], 15_000, "connection");
  return [a, b, Number(connected.setupMs)];
}

try {
  const setup: Record<string, number[]> = { "configured side dials": [], "configured side asks to be dialled": [] };
  for (let i = 0; i < rounds; i++) {
    for (const [label, configured, other] of [
      ["configured side dials", small, large],
      ["configured side asks to be dialled", large, small],
    ] as const) {
      const [a, b, ms] = await pair(configured, other);
      setup[label]?.push(ms);
      a.kill();
      b.kill();
      await a.waitExit();
      await b.waitExit();
    }
  }
  for (const [label, values] of Object.entries(setup)) {
    console.log(`setup (${label}): p50 ${pct(values, 0.5).toFixed(1)} ms, max ${Math.max(...values).toFixed(1)} ms, n=${values.length}`);
  }
  const [a, b] = await pair(small, large);
  const peer = large;
  for (const [n, size] of [[1000, 64], [1000, 1024]] as const) {
    const r = await a.request({ cmd: "bench-rtt", peer, n, size }, "bench-rtt", 60_000);
    console.log(`rtt ${size} B x${n}: p50 ${Number(r.p50).toFixed(3)} ms, p99 ${Number(r.p99).toFixed(3)} ms`);
  }
  for (const [n, size] of [[10_000, 1024], [100, 256 * 1024], [10, 4 * 1024 * 1024]] as const) {
    const r = await a.request({ cmd: "bench-tput", peer, n, size }, "bench-tput", 120_000);
    console.log(`throughput ${n} x ${size} B: ${Number(r.ms).toFixed(0)} ms, ${Number(r.msgPerSec).toFixed(0)} msg/s, ${Number(r.mibPerSec).toFixed(1)} MiB/s`);
  }
  const peers = await fetch(`http://127.0.0.1:${a.config.brokerPort}/api/v1/peers`).then((r) => r.json() as Promise<{ peers: { rtt_ms: number | null }[] }>);
  console.log(`transport ping rtt_ms (from /api/v1/peers): ${peers.peers[0]?.rtt_ms}`);
  a.kill();
  b.kill();
} finally {
  killAll();
}
