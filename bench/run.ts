/**
 * Runs every benchmark in turn and prints its numbers. Each benchmark is also runnable alone:
 *   bun bench/startup.ts          cold start of the executable and of `bun src/main.ts`
 *   bun bench/broker-writes.ts    PUT throughput, latency, RSS and cold start with 100,000 documents
 *   bun bench/mesh-sync.ts        three-node sync latency, bulk, idle cost, catch-up (vs automerge-repo)
 * Record results in bench/RESULTS.md with the machine and the command.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";

const benches = ["startup.ts", "broker-writes.ts", "mesh-sync.ts"].filter((b) => existsSync(join(import.meta.dir, b)));
for (const bench of benches) {
  console.log(`\n=== bench/${bench} ===`);
  const proc = Bun.spawn([process.execPath, join(import.meta.dir, bench), ...process.argv.slice(2)], { stdout: "inherit", stderr: "inherit" });
  const code = await proc.exited;
  if (code !== 0) {
    console.error(`bench/${bench} exited with ${code}`);
    process.exitCode = 1;
  }
}
