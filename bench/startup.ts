/**
 * Cold start: time from spawn to the first 200 on /api/v1/ready, for the x64 executable and for
 * `bun src/main.ts`. Goal for the executable: < 300 ms. Prints numbers only; asserts nothing.
 *
 * Usage: `bun bench/startup.ts [--runs N]` (or RUNS=N; default 10). Builds the executable first if
 * it is missing or stale.
 *
 * Every run gets a fresh data dir and TMPDIR, as a new pod would: the executable then also pays for
 * extracting its embedded native addon, which a warm TMPDIR would hide. The executable runs from a
 * directory outside the project so nothing resolves through the project's node_modules.
 */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { isStale, outfileFor } from "../scripts/build.ts";
import { PROJECT_ROOT, TEST_SECRET, freeTcpPort, udpRangeStart } from "../test/harness/node-process.ts";

class StartupBenchError extends Error {
  override readonly name = "StartupBenchError";
}

const READY_DEADLINE_MS = 20_000;
const STOP_DEADLINE_MS = 6_000;
const POLL_MS = 2;

function parseRuns(): number {
  const args = process.argv.slice(2);
  const i = args.findIndex((a) => a === "--runs" || a.startsWith("--runs="));
  const raw = i < 0 ? process.env.RUNS : args[i]!.includes("=") ? args[i]!.split("=")[1] : args[i + 1];
  const runs = Number(raw ?? 10);
  if (!Number.isInteger(runs) || runs < 1) throw new StartupBenchError(`bad run count '${raw}'`);
  return runs;
}

async function ensureBuilt(): Promise<string> {
  const out = outfileFor("x64");
  if (!isStale("x64")) return out;
  console.log("building the x64 executable…");
  const proc = Bun.spawn([process.execPath, path.join(PROJECT_ROOT, "scripts/build.ts"), "--target", "x64"], {
    cwd: PROJECT_ROOT,
    stdout: "inherit",
    stderr: "inherit",
  });
  if ((await proc.exited) !== 0) throw new StartupBenchError("build failed");
  return out;
}

/** One cold start: spawn, poll readiness every POLL_MS, SIGTERM, reap. Returns spawn→ready in ms. */
async function coldStart(command: string[], cwd: string): Promise<number> {
  const base = mkdtempSync(path.join(tmpdir(), "peat-startup-"));
  const dataDir = path.join(base, "data");
  const tmp = path.join(base, "tmp");
  mkdirSync(dataDir);
  mkdirSync(tmp);
  const port = freeTcpPort();
  const url = `http://127.0.0.1:${port}/api/v1/ready`;
  let proc: ReturnType<typeof Bun.spawn> | undefined;
  try {
    const t0 = performance.now();
    proc = Bun.spawn(command, {
      cwd,
      stdin: "ignore",
      stdout: "ignore",
      stderr: "pipe",
      env: {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
        HOME: base,
        TMPDIR: tmp,
        NO_COLOR: "1",
        PEAT_FORMATION_SECRET: TEST_SECRET,
        HOSTNAME: "peat-mesh-0",
        PEAT_DISCOVERY: "static",
        PEAT_DATA_DIR: dataDir,
        PEAT_BROKER_BIND: "127.0.0.1",
        PEAT_BROKER_PORT: String(port),
        PEAT_IROH_BIND_PORT: String(udpRangeStart()),
      },
    });
    for (;;) {
      if (proc.exitCode !== null) {
        const err = await new Response(proc.stderr as ReadableStream<Uint8Array>).text();
        throw new StartupBenchError(`node exited with ${proc.exitCode} before ready: ${err.trim()}`);
      }
      try {
        if ((await fetch(url)).status === 200) return performance.now() - t0;
      } catch {
        // Not listening yet.
      }
      if (performance.now() - t0 > READY_DEADLINE_MS) throw new StartupBenchError(`not ready after ${READY_DEADLINE_MS} ms`);
      await Bun.sleep(POLL_MS);
    }
  } finally {
    if (proc && proc.exitCode === null) {
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc?.kill("SIGKILL"), STOP_DEADLINE_MS);
      await proc.exited;
      clearTimeout(timer);
    }
    rmSync(base, { recursive: true, force: true });
  }
}

function summary(label: string, samples: number[]): string {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  const f = (n: number): string => n.toFixed(0).padStart(5);
  return `${label.padEnd(24)} min ${f(sorted[0]!)} ms  p50 ${f(at(0.5))} ms  max ${f(sorted[sorted.length - 1]!)} ms  (first run ${samples[0]!.toFixed(0)} ms, n=${samples.length})`;
}

async function main(): Promise<void> {
  const runs = parseRuns();
  const exe = await ensureBuilt();
  const size = statSync(exe).size;

  const exeDir = mkdtempSync(path.join(tmpdir(), "peat-startup-exe-"));
  try {
    const alone = path.join(exeDir, path.basename(exe));
    copyFileSync(exe, alone);

    const exeSamples: number[] = [];
    for (let i = 0; i < runs; i++) exeSamples.push(await coldStart([alone], exeDir));
    const srcSamples: number[] = [];
    for (let i = 0; i < runs; i++) {
      srcSamples.push(await coldStart([process.execPath, path.join(PROJECT_ROOT, "src/main.ts")], PROJECT_ROOT));
    }

    console.log(`cold start, spawn → first 200 on /api/v1/ready (goal for the executable: < 300 ms)`);
    console.log(`executable ${path.relative(PROJECT_ROOT, exe)}: ${(size / 1024 / 1024).toFixed(1)} MB`);
    console.log(summary("executable (x64)", exeSamples));
    console.log(summary("bun src/main.ts", srcSamples));
  } finally {
    rmSync(exeDir, { recursive: true, force: true });
  }
}

try {
  await main();
} catch (err) {
  console.error(`startup bench failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}
