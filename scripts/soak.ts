/**
 * The long soak (not in CI): three real nodes on loopback, a steady write load through A and B,
 * C restarted every N seconds (alternately SIGTERM and SIGKILL), RSS and write→readable latency
 * sampled throughout. Writes the curve as a PNG, the raw samples as CSV and the figures as JSON to
 * --out, prints the verdicts and a `CHAOS-FIGURES soak:` line, and exits 1 when a verdict fails.
 * The driver and the verdicts are in test/chaos/lib/soak.ts (the CI test runs the same, shorter).
 *
 * Usage: bun scripts/soak.ts --minutes 30 --out docs/reliability
 *        bun scripts/soak.ts --replot docs/reliability   (re-draws soak.png from soak.csv + soak.json)
 *          [--rate 50] [--flap-secs 30] [--down-secs 3] [--sample-secs 5] [--window-secs <min(300, run/6)>]
 *          [--docs-per-writer 100] [--warmup-secs <min(10 % of the run, 120)>] [--converge-secs 120]
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { stopAllNodes } from "../test/harness/node-process.ts";
import {
  defaultWarmupSecs,
  formatVerdicts,
  parseSoakCsv,
  runSoak,
  soakCsv,
  soakFigures,
  soakOptions,
  soakPng,
} from "../test/chaos/lib/soak.ts";

const { values } = parseArgs({
  options: {
    minutes: { type: "string", default: "30" },
    out: { type: "string", default: "docs/reliability" },
    rate: { type: "string", default: "50" },
    "flap-secs": { type: "string", default: "30" },
    "down-secs": { type: "string", default: "3" },
    "sample-secs": { type: "string", default: "5" },
    "window-secs": { type: "string" },
    "docs-per-writer": { type: "string", default: "100" },
    "warmup-secs": { type: "string" },
    "converge-secs": { type: "string", default: "120" },
    replot: { type: "string" },
  },
  allowPositionals: false,
});

function num(name: keyof typeof values): number {
  const v = Number(values[name]);
  if (!Number.isFinite(v) || v <= 0) {
    console.error(`--${name} must be a positive number (got ${values[name]})`);
    process.exit(2);
  }
  return v;
}

if (values.replot !== undefined) {
  const dir = resolve(values.replot);
  const saved = JSON.parse(readFileSync(join(dir, "soak.json"), "utf8"));
  const samples = parseSoakCsv(readFileSync(join(dir, "soak.csv"), "utf8"));
  writeFileSync(join(dir, "soak.png"), soakPng({ samples, flaps: saved.flaps, options: saved.options }));
  console.log(`re-drew ${join(dir, "soak.png")} from ${samples.length} samples`);
  process.exit(0);
}

const durationSecs = num("minutes") * 60;
const outDir = resolve(values.out as string);
const opts = soakOptions(durationSecs, {
  writesPerSec: num("rate"),
  flapEverySecs: num("flap-secs"),
  downSecs: num("down-secs"),
  sampleEverySecs: num("sample-secs"),
  windowSecs: values["window-secs"] === undefined ? Math.min(300, durationSecs / 6) : num("window-secs"),
  docsPerWriter: num("docs-per-writer"),
  convergeTimeoutMs: num("converge-secs") * 1000,
  warmupSecs: values["warmup-secs"] === undefined ? defaultWarmupSecs(durationSecs) : num("warmup-secs"),
  log: (line) => console.log(`[soak ${new Date().toISOString().slice(11, 19)}] ${line}`),
});

let interrupted = false;
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    console.error(`${sig}: stopping the nodes`);
    void stopAllNodes().then(() => process.exit(130));
  });
}

/** What the run ran on: the machine is shared with other work, so its load is part of the record. */
function machine(): Record<string, unknown> {
  let model = cpus()[0]?.model ?? "unknown";
  try {
    model = /model name\s*:\s*(.+)/.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? model;
  } catch {}
  return { cpus: cpus().length, cpu_model: model, mem_gib: Math.round(totalmem() / 2 ** 30), loadavg_1_5_15: loadavg().map((x) => Number(x.toFixed(2))), bun: Bun.version };
}

try {
  const machineAtStart = machine();
  console.log(`soak: ${durationSecs} s, ${opts.writesPerSec} writes/s, C restarted every ${opts.flapEverySecs} s, warm-up ${opts.warmupSecs} s, out ${outDir}`);
  const result = await runSoak(opts);
  mkdirSync(outDir, { recursive: true });
  const figures = soakFigures(result);
  writeFileSync(join(outDir, "soak.csv"), soakCsv(result));
  writeFileSync(join(outDir, "soak.png"), soakPng(result));
  writeFileSync(
    join(outDir, "soak.json"),
    `${JSON.stringify({ started_at: result.startedAt, options: { ...opts, log: undefined }, machine_at_start: machineAtStart, machine_at_end: machine(), figures, verdicts: result.verdicts, flaps: result.flaps }, null, 2)}\n`,
  );
  console.log(formatVerdicts(result));
  console.log(`CHAOS-FIGURES soak: ${JSON.stringify(figures)}`);
  console.log(`wrote ${join(outDir, "soak.png")}, soak.csv, soak.json`);
  await stopAllNodes();
  process.exit(result.ok ? 0 : 1);
} catch (err) {
  console.error(err);
  await stopAllNodes();
  process.exit(1);
}
