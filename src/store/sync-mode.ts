/**
 * Which collections sync by latest state only and which keep full Automerge history
 * (reference §6.9). WindowedHistory collections of the original behaved as FullHistory and are
 * FullHistory here.
 */
import { InvalidSyncModeError } from "./errors.ts";
import type { SyncMode } from "./types.ts";

export const SYNC_MODES: readonly SyncMode[] = ["LatestOnly", "FullHistory"];

/** Collections whose current state is all that matters (positions, beacons, status). */
export const DEFAULT_LATEST_ONLY: readonly string[] = ["beacons", "platforms", "tracks", "nodes", "cells", "node_states"];

/** Any collection ending in this suffix (squad_summaries, platoon_summaries, ...) is LatestOnly. */
export const LATEST_ONLY_SUFFIX = "_summaries";

export function isSyncMode(value: unknown): value is SyncMode {
  return value === "LatestOnly" || value === "FullHistory";
}

export class SyncModeRegistry {
  private readonly overrides = new Map<string, SyncMode>();

  constructor(overrides: Record<string, SyncMode> = {}) {
    for (const [collection, mode] of Object.entries(overrides)) this.set(collection, mode);
  }

  set(collection: string, mode: SyncMode): void {
    if (!isSyncMode(mode)) {
      throw new InvalidSyncModeError(`sync mode for '${collection}' must be LatestOnly or FullHistory, got ${JSON.stringify(mode)}`);
    }
    this.overrides.set(collection, mode);
  }

  modeFor(collection: string): SyncMode {
    const override = this.overrides.get(collection);
    if (override) return override;
    if (DEFAULT_LATEST_ONLY.includes(collection) || collection.endsWith(LATEST_ONLY_SUFFIX)) return "LatestOnly";
    return "FullHistory";
  }

  isLatestOnly(collection: string): boolean {
    return this.modeFor(collection) === "LatestOnly";
  }

  /**
   * The LatestOnly set as names for logging: defaults plus overrides, minus collections overridden
   * to FullHistory, plus the `*_summaries` pattern (which matches an open-ended set of names).
   */
  latestOnlyNames(): string[] {
    const names = new Set<string>();
    for (const c of DEFAULT_LATEST_ONLY) if (this.modeFor(c) === "LatestOnly") names.add(c);
    for (const [c, mode] of this.overrides) if (mode === "LatestOnly") names.add(c);
    const sorted = [...names].sort();
    sorted.push(`*${LATEST_ONLY_SUFFIX}`);
    return sorted;
  }

  overridesSnapshot(): Record<string, SyncMode> {
    return Object.fromEntries(this.overrides);
  }
}
