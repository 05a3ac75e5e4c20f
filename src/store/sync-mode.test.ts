import { describe, expect, test } from "bun:test";
import { InvalidSyncModeError } from "./errors.ts";
import { SyncModeRegistry } from "./sync-mode.ts";
import type { SyncMode } from "./types.ts";

describe("SyncModeRegistry", () => {
  test("the well-known LatestOnly collections and *_summaries", () => {
    const r = new SyncModeRegistry();
    for (const c of ["beacons", "platforms", "tracks", "nodes", "cells", "node_states", "squad_summaries", "company_summaries", "x_summaries"]) {
      expect(r.modeFor(c)).toBe("LatestOnly");
      expect(r.isLatestOnly(c)).toBe(true);
    }
  });

  test("everything else is FullHistory", () => {
    const r = new SyncModeRegistry();
    for (const c of ["alerts", "commands", "contact_reports", "track_history", "summaries", "beacon", "summaries_x"]) {
      expect(r.modeFor(c)).toBe("FullHistory");
    }
  });

  test("overrides win in both directions and show in the derived name list", () => {
    const r = new SyncModeRegistry({ alerts: "LatestOnly", tracks: "FullHistory", platoon_summaries: "FullHistory" });
    expect(r.modeFor("alerts")).toBe("LatestOnly");
    expect(r.modeFor("tracks")).toBe("FullHistory");
    expect(r.modeFor("platoon_summaries")).toBe("FullHistory");
    expect(r.modeFor("squad_summaries")).toBe("LatestOnly");
    expect(r.latestOnlyNames()).toEqual(["alerts", "beacons", "cells", "node_states", "nodes", "platforms", "*_summaries"]);
    r.set("alerts", "FullHistory");
    expect(r.modeFor("alerts")).toBe("FullHistory");
    expect(r.overridesSnapshot()).toEqual({ alerts: "FullHistory", tracks: "FullHistory", platoon_summaries: "FullHistory" });
  });

  test("an unknown mode is refused with a named error", () => {
    expect(() => new SyncModeRegistry({ alerts: "WindowedHistory" as SyncMode })).toThrow(InvalidSyncModeError);
  });
});
