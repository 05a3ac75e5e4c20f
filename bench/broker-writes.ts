/**
 * Broker write path, measured through HTTP against a real node process:
 * - sequential PUTs from one keep-alive client (goal ≥ 3,000/s);
 * - PUTs from 32 concurrent clients (goal ≥ 5,000/s), with p50/p99 latency;
 * - RSS with 100,000 stored documents (goal ≤ 200 MB), and cold start to ready with them (goal < 2 s).
 *
 * Usage: bun bench/broker-writes.ts [--docs 100000] [--seq 5000] [--concurrent 20000]
 */
import { parseArgs } from "node:util";
import { startNode, stopAllNodes, tempDir } from "../test/harness/node-process.ts";

const { values } = parseArgs({
  options: {
    docs: { type: "string", default: "100000" },
    seq: { type: "string", default: "5000" },
    concurrent: { type: "string", default: "20000" },
    clients: { type: "string", default: "32" },
  },
});
const TOTAL_DOCS = Number(values.docs);
const SEQUENTIAL = Number(values.seq);
const CONCURRENT = Number(values.concurrent);
const CLIENTS = Number(values.clients);

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

function rssMb(pid: number): number {
  const status = require("node:fs").readFileSync(`/proc/${pid}/status`, "utf8") as string;
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN);
  return kb / 1024;
}

function body(i: number): string {
  return JSON.stringify({ seq: i, callsign: `UNIT-${i}`, lat: 52 + (i % 1000) / 1000, lon: 4.3, tags: ["a", "b"], ok: true });
}

async function put(base: string, collection: string, id: string, payload: string): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(`${base}/api/v1/documents/${collection}/${id}`, {
    method: "PUT",
    body: payload,
    headers: { "content-type": "application/json" },
  });
  await res.arrayBuffer();
  if (res.status !== 201 && res.status !== 200) throw new Error(`PUT ${id}: ${res.status}`);
  return performance.now() - t0;
}

async function main(): Promise<void> {
  const dataDir = tempDir("peat-bench-");
  const env = { PEAT_DATA_DIR: dataDir, RUST_LOG: "warn" };
  let node = await startNode({ env });
  const base = node.url;
  console.log(`node pid=${node.pid} data=${dataDir}`);

  // Warm-up so JIT and SQLite page cache are not part of the measurement.
  for (let i = 0; i < 300; i++) await put(base, "warmup", `w${i}`, body(i));

  const seqLatencies: number[] = [];
  let t0 = performance.now();
  for (let i = 0; i < SEQUENTIAL; i++) seqLatencies.push(await put(base, "seq", `d${i}`, body(i)));
  const seqSecs = (performance.now() - t0) / 1000;
  seqLatencies.sort((a, b) => a - b);
  console.log(
    `sequential PUT (1 keep-alive client): ${SEQUENTIAL} in ${seqSecs.toFixed(2)} s = ${Math.round(SEQUENTIAL / seqSecs)}/s; ` +
      `p50 ${percentile(seqLatencies, 50).toFixed(2)} ms p99 ${percentile(seqLatencies, 99).toFixed(2)} ms`,
  );

  const conLatencies: number[] = [];
  let next = 0;
  t0 = performance.now();
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      for (;;) {
        const i = next++;
        if (i >= CONCURRENT) return;
        conLatencies.push(await put(base, "con", `d${i}`, body(i)));
      }
    }),
  );
  const conSecs = (performance.now() - t0) / 1000;
  conLatencies.sort((a, b) => a - b);
  console.log(
    `concurrent PUT (${CLIENTS} clients): ${CONCURRENT} in ${conSecs.toFixed(2)} s = ${Math.round(CONCURRENT / conSecs)}/s; ` +
      `p50 ${percentile(conLatencies, 50).toFixed(2)} ms p99 ${percentile(conLatencies, 99).toFixed(2)} ms max ${conLatencies.at(-1)?.toFixed(2)} ms`,
  );

  // Fill up to TOTAL_DOCS stored documents.
  const stored = 300 + SEQUENTIAL + CONCURRENT;
  next = 0;
  const fill = Math.max(0, TOTAL_DOCS - stored);
  t0 = performance.now();
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      for (;;) {
        const i = next++;
        if (i >= fill) return;
        await put(base, `fill${i % 10}`, `d${i}`, body(i));
      }
    }),
  );
  console.log(`filled ${fill} more documents in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  Bun.gc(true);
  console.log(`RSS after writing ${TOTAL_DOCS} documents: ${rssMb(node.pid).toFixed(1)} MB`);
  await node.stop();

  t0 = performance.now();
  node = await startNode({ env });
  const coldMs = performance.now() - t0;
  const list = await fetch(`${node.url}/api/v1/documents/fill3?limit=1000`);
  await list.arrayBuffer();
  for (let i = 0; i < 2000; i++) {
    const res = await fetch(`${node.url}/api/v1/documents/fill${i % 10}/d${i * 40}`);
    await res.arrayBuffer();
  }
  console.log(`cold start to ready with ${TOTAL_DOCS} documents: ${coldMs.toFixed(0)} ms (spawn of bun src/main.ts included)`);
  console.log(`RSS after restart, a 1000-document list and 2000 reads: ${rssMb(node.pid).toFixed(1)} MB`);
  await node.stop();
}

try {
  await main();
} finally {
  await stopAllNodes();
}
