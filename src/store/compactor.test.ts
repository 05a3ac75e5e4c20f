import { afterEach, describe, expect, test } from "bun:test";
import { validateCronExpression } from "cron";
import { Automerge } from "../automerge.ts";
import { silentLogger } from "../log.ts";
import { Compactor, type CompactorOptions, compactionSchedule } from "./compactor.ts";
import { DocumentStore, type DocumentStoreOptions } from "./document-store.ts";
import { FullHistoryCompactionError } from "./errors.ts";
import { SyncModeRegistry } from "./sync-mode.ts";
import { captureLogger, TestStores, waitFor } from "./testdata/helpers.ts";

const stores = new TestStores();
const temp = stores.temp;
const compactors: Compactor[] = [];

afterEach(async () => {
  for (const c of compactors.splice(0)) await c.stop();
  await stores.cleanup();
});

const openStore = (opts: Partial<DocumentStoreOptions> = {}) => stores.start(opts);

function compactor(store: DocumentStore, opts: Partial<CompactorOptions> = {}): Compactor {
  const c = new Compactor({ store, log: silentLogger(), enabled: true, intervalSecs: 300, thresholdBytes: 1024, ...opts });
  compactors.push(c);
  return c;
}

/** 500 updates: a small document with a long history. */
function churn(store: DocumentStore, collection: string, id: string, updates = 500): void {
  for (let i = 0; i < updates; i++) {
    store.put(collection, id, { callsign: "UNIT-7", lat: 52 + i / 1000, lon: 4.3 + i / 1000, seq: i, status: i % 2 ? "moving" : "halted" });
  }
}

const storedBytes = (store: DocumentStore, collection: string, id: string): number => store.getDocBytes(collection, id)!.length;

describe("compactionSchedule", () => {
  test("intervals that divide their unit become cron expressions firing at even gaps", () => {
    const cases: [number, string][] = [
      [1, "* * * * * *"],
      [10, "*/10 * * * * *"],
      [30, "*/30 * * * * *"],
      [60, "0 * * * * *"],
      [300, "0 */5 * * * *"],
      [1200, "0 */20 * * * *"],
      [3600, "0 0 * * * *"],
      [7200, "0 0 */2 * * *"],
      [21600, "0 0 */6 * * *"],
      [86400, "0 0 0 * * *"],
    ];
    for (const [secs, expression] of cases) {
      expect(compactionSchedule(secs)).toEqual({ kind: "cron", expression });
      expect(validateCronExpression(expression).valid).toBe(true);
    }
  });

  test("other intervals are chained one-shot jobs", () => {
    for (const secs of [7, 45, 90, 420, 5400, 172800, 604800]) {
      expect(compactionSchedule(secs)).toEqual({ kind: "chained", intervalMs: secs * 1000 });
    }
  });

  test("non-positive or fractional intervals are refused", () => {
    for (const secs of [0, -5, 1.5, Number.NaN]) expect(() => compactionSchedule(secs)).toThrow(RangeError);
  });
});

describe("DocumentStore.compactDocument", () => {
  test("a LatestOnly document with a long history really shrinks and keeps its content and version", async () => {
    const dataDir = temp.make();
    const store = await openStore({ dataDir });
    churn(store, "beacons", "b1");
    const content = store.get("beacons", "b1");
    const version = store.getVersion("beacons", "b1")!;
    const before = storedBytes(store, "beacons", "b1");
    const result = store.compactDocument("beacons", "b1")!;
    expect(result.before).toBe(before);
    expect(result.after).toBe(storedBytes(store, "beacons", "b1"));
    expect(result.after).toBeLessThan(before / 10);
    expect(store.get("beacons", "b1")).toEqual(content);
    expect(store.getVersion("beacons", "b1")).toMatchObject({ hlc: version.hlc, writer: version.writer });
    expect(store.getVersion("beacons", "b1")!.headsHash).not.toBe(version.headsHash);
    expect(Automerge.getAllChanges(Automerge.load(store.getDocBytes("beacons", "b1")!)).length).toBe(1);

    // Writes continue on the compacted history and everything survives a restart.
    store.put("beacons", "b1", { callsign: "UNIT-7", lat: 1, lon: 2, seq: 501, status: "halted" });
    await store.stop();
    const reopened = await openStore({ dataDir });
    expect(reopened.get("beacons", "b1")).toEqual({ callsign: "UNIT-7", lat: 1, lon: 2, seq: 501, status: "halted" });
    expect(Automerge.getAllChanges(reopened.getDoc("beacons", "b1")!).length).toBe(2);
    expect(storedBytes(reopened, "beacons", "b1")).toBeLessThan(before / 5);
  });

  test("FullHistory documents are refused", async () => {
    const store = await openStore();
    store.put("alerts", "a", { v: 1 });
    expect(() => store.compactDocument("alerts", "a")).toThrow(FullHistoryCompactionError);
  });

  test("a peer holding the old history accepts the compacted document's later writes (LWW replace)", async () => {
    const store = await openStore();
    const peer = await openStore({ nodeId: "node-b" });
    churn(store, "beacons", "b1", 50);
    let v = store.getVersion("beacons", "b1")!;
    expect(peer.applyRemoteSnapshot("beacons", "b1", store.getDocBytes("beacons", "b1")!, v.hlc, v.writer)).toBe("applied");
    store.compactDocument("beacons", "b1");
    store.put("beacons", "b1", { after: "compaction" });
    v = store.getVersion("beacons", "b1")!;
    expect(peer.applyRemoteSnapshot("beacons", "b1", store.getDocBytes("beacons", "b1")!, v.hlc, v.writer)).toBe("applied");
    expect(peer.get("beacons", "b1")).toEqual({ after: "compaction" });
  });
});

describe("Compactor", () => {
  test("runOnce compacts LatestOnly documents above the threshold and never touches FullHistory ones", async () => {
    const { log, lines } = captureLogger("peat_mesh::store::compaction");
    const store = await openStore();
    churn(store, "beacons", "big");
    churn(store, "squad_summaries", "s1");
    churn(store, "alerts", "history");
    store.put("beacons", "small", { v: 1 });
    const alertsBefore = storedBytes(store, "alerts", "history");
    const smallBefore = storedBytes(store, "beacons", "small");
    const bigBefore = storedBytes(store, "beacons", "big");
    const c = compactor(store, { log });
    const result = c.runOnce();
    expect(result.count).toBe(2);
    expect(result.after).toBeLessThan(result.before / 10);
    expect(storedBytes(store, "beacons", "big")).toBeLessThan(bigBefore / 10);
    expect(storedBytes(store, "alerts", "history")).toBe(alertsBefore);
    expect(storedBytes(store, "beacons", "small")).toBe(smallBefore);
    expect(store.stats().compactionRuns).toBe(1);
    expect(lines.some((l) => l.includes(`background compaction complete count=2 before=${result.before} after=${result.after}`))).toBe(true);
    // Nothing left above the threshold: the next run compacts nothing, logs nothing.
    expect(c.runOnce().count).toBe(0);
    expect(store.stats().compactionRuns).toBe(1);
    expect(lines.filter((l) => l.includes("background compaction complete"))).toHaveLength(1);
  });

  test("with no collections given it derives them from the LatestOnly sync modes and says so", async () => {
    const { log, lines } = captureLogger("peat_mesh::store::compaction");
    const store = await openStore({ syncModes: new SyncModeRegistry({ alerts: "LatestOnly", tracks: "FullHistory" }) });
    const c = compactor(store, { log });
    await c.start();
    expect(lines.some((l) => l.includes("Auto-derived compaction collections from LatestOnly sync modes collections=[\"alerts\", \"beacons\", \"cells\", \"node_states\", \"nodes\", \"platforms\", \"*_summaries\"]"))).toBe(true);
    expect(lines.some((l) => l.includes("Background compaction started (per-collection) interval_secs=300 threshold_bytes=1024 collections=["))).toBe(true);
    churn(store, "alerts", "a", 100);
    churn(store, "tracks", "t", 100);
    expect(c.runOnce().count).toBe(1);
  });

  test("explicitly named FullHistory collections are skipped with a warning", async () => {
    const { log, lines } = captureLogger("peat_mesh::store::compaction");
    const store = await openStore();
    const c = compactor(store, { log, collections: ["beacons", "alerts"] });
    await c.start();
    expect(lines.some((l) => l.includes("WARN") && l.includes("collection=alerts"))).toBe(true);
    expect(lines.some((l) => l.includes('collections=["beacons"]'))).toBe(true);
    churn(store, "alerts", "a", 100);
    churn(store, "nodes", "n", 100); // LatestOnly, but not in the explicit list
    churn(store, "beacons", "b", 100);
    expect(c.runOnce().count).toBe(1);
    expect(Automerge.getAllChanges(Automerge.load(store.getDocBytes("nodes", "n")!)).length).toBe(100);
  });

  test("the cron schedule runs compaction on its own", async () => {
    const { log, lines } = captureLogger("peat_mesh::store::compaction");
    const store = await openStore();
    churn(store, "beacons", "b1", 100);
    const c = compactor(store, { log, intervalSecs: 1 });
    await c.start();
    expect(c.nextRunAt()).toBeInstanceOf(Date);
    await waitFor(() => store.stats().compactionRuns >= 1, "a scheduled compaction run");
    expect(lines.some((l) => l.includes("background compaction complete count=1"))).toBe(true);
    await c.stop();
    expect(c.nextRunAt()).toBeUndefined();
  }, 20_000);

  test("an interval that cron cannot express is scheduled as a one-shot job at now + interval", async () => {
    const store = await openStore();
    const c = compactor(store, { intervalSecs: 45 });
    const before = Date.now();
    await c.start();
    const next = c.nextRunAt()!.getTime();
    expect(next).toBeGreaterThanOrEqual(before + 45_000 - 1_000);
    expect(next).toBeLessThanOrEqual(Date.now() + 45_000 + 1_000);
  });

  test("disabled: logs so and schedules nothing", async () => {
    const { log, lines } = captureLogger("peat_mesh::store::compaction");
    const store = await openStore();
    const c = compactor(store, { log, enabled: false });
    await c.start();
    expect(c.nextRunAt()).toBeUndefined();
    expect(lines.some((l) => l.includes("Background compaction disabled"))).toBe(true);
  });
});
