/**
 * Micro-measurement of the store's write path (not a test): sequential creates, updates of cached
 * documents, no-op PUTs and reads against a real SQLite file, in one process, without HTTP.
 * Usage: bun src/store/testdata/put-throughput.ts [count=10000]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { silentLogger } from "../../log.ts";
import { DocumentStore } from "../document-store.ts";

const count = Number(process.argv[2] ?? 10_000);
const dir = mkdtempSync(join(tmpdir(), "peat-put-throughput-"));
const store = new DocumentStore({ dataDir: dir, nodeId: "bench", log: silentLogger(), sweepIntervalMs: 0 });
await store.start();

const body = (i: number, round: number) => ({ seq: i, callsign: `UNIT-${i}`, lat: 52 + round / 1000, lon: 4.3, tags: ["a", "b"], ok: true });

async function measure(label: string, n: number, op: (i: number) => void): Promise<void> {
  const latencies: number[] = [];
  const start = performance.now();
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    op(i);
    latencies.push(performance.now() - t);
  }
  const secs = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => ((latencies[Math.min(n - 1, Math.floor((p / 100) * n))] ?? 0) * 1000).toFixed(0);
  console.log(`${label.padEnd(34)} ${Math.round(n / secs).toString().padStart(7)}/s  p50 ${pct(50)} us  p99 ${pct(99)} us`);
  // Let the background encoder run between phases, as it would between requests.
  await Bun.sleep(0);
}

await measure("put (create, warm-up)", 2_000, (i) => store.put("warm", `w${i}`, body(i, 0)));
const createStart = performance.now();
await measure("put (create)", count, (i) => store.put("bench", `d${i}`, body(i, 0)));
const encodeStart = performance.now();
const encoded = store.flushPending();
const encodeSecs = (performance.now() - encodeStart) / 1000;
console.log(
  `${"  + Automerge encoding (batched)".padEnd(34)} ${encoded} left for the encoder took ${(encodeSecs * 1000).toFixed(0)} ms; ` +
    `create incl. encoding: ${Math.round(count / ((performance.now() - createStart) / 1000))}/s`,
);
const hot = Math.min(500, count);
await measure(`put (update, ${hot} cached docs)`, count, (i) => store.put("bench", `d${i % hot}`, body(i % hot, 1 + i)));
for (let i = 0; i < hot; i++) store.put("bench", `d${i}`, body(i, -1));
await measure("put (no-op: same content again)", count, (i) => store.put("bench", `d${i % hot}`, body(i % hot, -1)));
await measure("get", count, (i) => store.get("bench", `d${i}`));
console.log(store.stats());
await store.stop();
rmSync(dir, { recursive: true, force: true });
