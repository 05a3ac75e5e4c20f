/**
 * Soak, bounded for CI: the driver of scripts/soak.ts (test/chaos/lib/soak.ts) for
 * PEAT_CHAOS_SOAK_SECS (default 60) instead of 30 minutes. Three real node processes on loopback,
 * 50 writes/s through A and B (PUT/PATCH/DELETE over 400 documents, a LatestOnly and a FullHistory
 * collection), C restarted every 15 s (alternately SIGTERM and SIGKILL, down 3 s each time), RSS
 * and write-on-A → readable-on-B latency sampled every 2 s. Then the curve is written as PNG + CSV
 * to a temp dir and the PNG is checked byte by byte (signature, chunk CRCs, IHDR, the inflated
 * rows equal the raster).
 *
 * Verdicts (same as the long run, see the driver's header), with these choices for a short run:
 *  - warm-up: the long run's rule (10 % of the run, at most 2 min) would end after 6 s, deep inside
 *    start-up (JIT, SQLite page cache, Automerge heap, the 400-document working set and the first
 *    restarts of C all land in the first half minute). A 60 s run is mostly warm-up, so the CI run
 *    takes the first half of the run as warm-up and compares the median RSS of the 3rd quarter with
 *    that of the 4th. The leak signal over one quarter of a minute is weak, so the CI tolerance is
 *    looser (see RSS_TOLERANCE_PCT below) and the 10 % rule is left to the 30-minute run, whose
 *    figures are in docs/reliability.md;
 *  - latency: p99 of the last quarter ≤ max(2 × p99 of the 3rd quarter, that + 100 ms). In CI the
 *    two cores are shared with the rest of the suite, and a 15-s window's p99 (~140 probes) is close
 *    to its maximum, so the floor is 100 ms rather than the long run's 20 ms: still far below the
 *    backlog a sync feedback loop produces (p99 of seconds, which is what this test caught once);
 *  - and, unchanged: no write failed, every probe became readable, every graceful stop exited 0,
 *    every restart of C rejoined, all three converged (equal state_hash), nothing acknowledged lost,
 *    and no sync feedback loop (≤ 10 sync batches sent per node per acknowledged write).
 */
import { afterAll, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { crc32 as zlibCrc32, inflateSync } from "node:zlib";
import { stopAllNodes, tempDir } from "../harness/node-process.ts";
import { PNG_SIGNATURE, encodePng } from "./lib/png-plot.ts";
import { formatVerdicts, runSoak, soakCsv, soakFigure, soakFigures, soakOptions } from "./lib/soak.ts";

function envNumber(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got ${raw}`);
  return n;
}

const SECS = envNumber("PEAT_CHAOS_SOAK_SECS", 60);
const RATE = envNumber("PEAT_CHAOS_SOAK_WRITES_PER_SEC", 50);
const FLAP_SECS = envNumber("PEAT_CHAOS_SOAK_FLAP_SECS", 15);
/** See the header: a short run compares the 3rd and 4th quarter. */
const RSS_TOLERANCE_PCT = envNumber("PEAT_CHAOS_SOAK_RSS_TOLERANCE_PCT", SECS >= 600 ? 10 : 20);

afterAll(stopAllNodes);

test(
  `soak: ${SECS} s at ${RATE} writes/s with C restarted every ${FLAP_SECS} s: RSS and latency stable, nothing lost`,
  async () => {
    const long = SECS >= 600;
    const opts = soakOptions(SECS, {
      writesPerSec: RATE,
      flapEverySecs: FLAP_SECS,
      sampleEverySecs: long ? 5 : 2,
      warmupSecs: long ? Math.min(SECS * 0.1, 120) : SECS / 2,
      windowSecs: long ? 60 : SECS / 4,
      rssTolerancePct: RSS_TOLERANCE_PCT,
      latencyFloorMs: long ? 20 : 100,
      log: (line) => console.log(`[soak] ${line}`),
    });
    const result = await runSoak(opts);
    const out = tempDir("peat-soak-out-");
    const raster = soakFigure(result);
    const png = encodePng(raster);
    writeFileSync(join(out, "soak.png"), png);
    writeFileSync(join(out, "soak.csv"), soakCsv(result));
    const figures = soakFigures(result);
    console.log(formatVerdicts(result));
    console.log(`CHAOS-FIGURES soak: ${JSON.stringify(figures)}`);

    // The PNG: signature, chunks with valid CRCs (checked with zlib's CRC-32, not ours), IHDR,
    // IDAT that inflates to exactly the raster's rows behind filter byte 0, IEND last.
    const bytes = new Uint8Array(readFileSync(join(out, "soak.png")));
    expect([...bytes.subarray(0, 8)]).toEqual([...PNG_SIGNATURE]);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const chunks: { type: string; data: Uint8Array }[] = [];
    for (let at = 8; at < bytes.length; ) {
      const length = view.getUint32(at);
      const type = new TextDecoder().decode(bytes.subarray(at + 4, at + 8));
      const data = bytes.subarray(at + 8, at + 8 + length);
      expect(view.getUint32(at + 8 + length)).toBe(zlibCrc32(bytes.subarray(at + 4, at + 8 + length)));
      chunks.push({ type, data });
      at += 12 + length;
    }
    expect(chunks.map((c) => c.type)).toEqual(["IHDR", "IDAT", "IEND"]);
    const ihdr = new DataView((chunks[0] as { data: Uint8Array }).data.slice().buffer);
    expect([ihdr.getUint32(0), ihdr.getUint32(4)]).toEqual([raster.width, raster.height]);
    expect([ihdr.getUint8(8), ihdr.getUint8(9), ihdr.getUint8(12)]).toEqual([8, 2, 0]); // 8-bit RGB, no interlace
    expect(raster.width).toBeGreaterThanOrEqual(800);
    expect(raster.height).toBeGreaterThanOrEqual(600);
    const rows = inflateSync((chunks[1] as { data: Uint8Array }).data);
    const stride = raster.width * 3;
    expect(rows.length).toBe(raster.height * (stride + 1));
    for (let y = 0; y < raster.height; y++) {
      expect(rows[y * (stride + 1)]).toBe(0);
      if (y % 97 === 0) expect(Buffer.compare(rows.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)), Buffer.from(raster.data.subarray(y * stride, (y + 1) * stride)))).toBe(0);
    }
    // Something was drawn in each series' colour (the curves are there, not just axes).
    const inks = new Set<string>();
    for (let i = 0; i < raster.data.length; i += 3) inks.add(`${raster.data[i]},${raster.data[i + 1]},${raster.data[i + 2]}`);
    for (const colour of ["31,119,180", "255,127,14", "44,160,44", "214,39,40"]) expect(inks.has(colour)).toBe(true);

    // The CSV: a header and one row per sample.
    const csv = readFileSync(join(out, "soak.csv"), "utf8").trim().split("\n");
    expect(csv[0]).toStartWith("t_s,a_pid,a_rss_mb,");
    expect(csv.length - 1).toBe(result.samples.length);
    expect(result.samples.length).toBeGreaterThanOrEqual(Math.floor(SECS / opts.sampleEverySecs) - 1);

    // The verdicts, one by one so a failure names itself.
    const verdict = (name: string) => result.verdicts.find((v) => v.name === name);
    expect(result.flaps.length).toBeGreaterThanOrEqual(Math.max(1, Math.floor((SECS - 8) / FLAP_SECS)));
    expect(result.flaps.some((f) => f.kind === "SIGKILL") || result.flaps.length < 2).toBe(true);
    for (const name of [
      "no write failed",
      "every probe readable on B",
      "graceful stops exit 0",
      "every restart of C rejoined",
      "converged",
      "no lost acknowledged writes",
      "no sync feedback loop",
      "rss alpha",
      "rss bravo",
      "latency stable",
    ]) {
      expect({ name, ok: verdict(name)?.ok, detail: verdict(name)?.detail }).toEqual({ name, ok: true, detail: expect.any(String) });
    }
    expect(result.writes.acked).toBeGreaterThan(RATE * SECS * 0.5);
    expect(result.ok).toBe(true);
  },
  (SECS + 300) * 1000,
);
