/**
 * Background compaction of LatestOnly documents: documents whose stored size exceeds the threshold
 * are rewritten without history (see DocumentStore.compactDocument). FullHistory collections are
 * never compacted: a history-free rewrite would give them an unrelated history that cannot merge
 * with the peers' copies.
 *
 * Scheduling uses the `cron` package. An interval becomes a six-field cron expression when it
 * divides its unit evenly (10 s → `*\/10 * * * * *`, 300 s → `0 *\/5 * * * *`, 2 h →
 * `0 0 *\/2 * * *`), because a plain `*\/N` step restarts at every unit boundary and would tick at
 * uneven gaps otherwise (`*\/45` in the seconds field fires at :00 and :45). Any other interval
 * (45 s, 90 s, 7 min, ...) is run as a chain of one-shot `CronJob`s whose `cronTime` is the
 * `Date` of the next run, which the cron package supports directly.
 */
import { CronJob } from "cron";
import type { Component } from "../lifecycle.ts";
import type { Logger } from "../log.ts";
import type { DocumentStore } from "./document-store.ts";
import type { SyncModeRegistry } from "./sync-mode.ts";
import type { CompactionResult } from "./types.ts";

export const DEFAULT_COMPACTION_INTERVAL_SECS = 300;
export const DEFAULT_COMPACTION_THRESHOLD_BYTES = 64 * 1024;

export type CompactionSchedule = { kind: "cron"; expression: string } | { kind: "chained"; intervalMs: number };

/** How an interval in whole seconds is scheduled (see the file comment). */
export function compactionSchedule(intervalSecs: number): CompactionSchedule {
  if (!Number.isInteger(intervalSecs) || intervalSecs < 1) {
    throw new RangeError(`compaction interval must be a positive whole number of seconds, got ${intervalSecs}`);
  }
  const s = intervalSecs;
  if (s < 60 && 60 % s === 0) return { kind: "cron", expression: s === 1 ? "* * * * * *" : `*/${s} * * * * *` };
  if (s % 60 === 0) {
    const m = s / 60;
    if (m < 60 && 60 % m === 0) return { kind: "cron", expression: m === 1 ? "0 * * * * *" : `0 */${m} * * * *` };
    if (m % 60 === 0) {
      const h = m / 60;
      if (h < 24 && 24 % h === 0) return { kind: "cron", expression: h === 1 ? "0 0 * * * *" : `0 0 */${h} * * *` };
      if (h === 24) return { kind: "cron", expression: "0 0 0 * * *" };
    }
  }
  return { kind: "chained", intervalMs: s * 1000 };
}

export interface CompactorOptions {
  store: DocumentStore;
  log: Logger;
  enabled: boolean;
  intervalSecs: number;
  thresholdBytes: number;
  /** Explicit collections; undefined derives them from the LatestOnly sync modes. */
  collections?: string[];
  /** Defaults to the store's registry (the one the store also enforces). */
  syncModes?: SyncModeRegistry;
}

export class Compactor implements Component {
  readonly name = "compactor";
  private readonly store: DocumentStore;
  private readonly log: Logger;
  private readonly opts: CompactorOptions;
  private readonly schedule: CompactionSchedule;
  private readonly include: (collection: string) => boolean;
  /** Collection names for the startup log (derived sets end with the `*_summaries` pattern). */
  private readonly shown: string[];
  /** Explicitly named collections that are FullHistory and therefore skipped. */
  private readonly skipped: string[];
  private job: CronJob | undefined;
  private started = false;
  private running = false;

  constructor(opts: CompactorOptions) {
    this.opts = opts;
    this.store = opts.store;
    this.log = opts.log;
    this.schedule = compactionSchedule(opts.intervalSecs);
    if (!(opts.thresholdBytes >= 0)) throw new RangeError(`compaction threshold must be >= 0 bytes, got ${opts.thresholdBytes}`);
    const registry = opts.syncModes ?? this.store.syncModes;
    if (opts.collections === undefined) {
      this.include = (c) => registry.isLatestOnly(c);
      this.shown = registry.latestOnlyNames();
      this.skipped = [];
    } else {
      const kept = opts.collections.filter((c) => registry.isLatestOnly(c));
      const set = new Set(kept);
      this.include = (c) => set.has(c);
      this.shown = kept;
      this.skipped = opts.collections.filter((c) => !registry.isLatestOnly(c));
    }
  }

  async start(): Promise<void> {
    if (this.started) return;
    if (!this.opts.enabled) {
      this.log.info("Background compaction disabled");
      return;
    }
    for (const collection of this.skipped) {
      this.log.warn("Not compacting FullHistory collection: compaction drops the history peers merge with", { collection });
    }
    if (this.opts.collections === undefined) {
      this.log.info("Auto-derived compaction collections from LatestOnly sync modes", { collections: this.shown });
    }
    this.log.info("Background compaction started (per-collection)", {
      interval_secs: this.opts.intervalSecs,
      threshold_bytes: this.opts.thresholdBytes,
      collections: this.shown,
      schedule: this.schedule.kind === "cron" ? this.schedule.expression : `chained every ${this.opts.intervalSecs}s`,
    });
    this.started = true;
    this.arm();
  }

  async stop(): Promise<void> {
    this.started = false;
    const job = this.job;
    this.job = undefined;
    await job?.stop();
  }

  /** When the next scheduled run fires, or undefined when not scheduled. */
  nextRunAt(): Date | undefined {
    return this.job ? this.job.nextDate().toJSDate() : undefined;
  }

  private arm(): void {
    if (this.schedule.kind === "cron") {
      this.job = CronJob.from({ cronTime: this.schedule.expression, onTick: () => this.tick(), start: true, unrefTimeout: true });
      return;
    }
    const intervalMs = this.schedule.intervalMs;
    const next = (): CronJob =>
      CronJob.from({
        cronTime: new Date(Date.now() + intervalMs),
        onTick: () => {
          if (!this.started) return;
          this.job = next();
          this.tick();
        },
        start: true,
        unrefTimeout: true,
      });
    this.job = next();
  }

  private tick(): void {
    if (!this.started || this.running || !this.store.isOpen()) return;
    try {
      this.runOnce();
    } catch (e) {
      this.log.warn("background compaction failed", { error: e instanceof Error ? e.message : String(e) });
    }
  }

  /** One compaction pass over the configured collections (the scheduler calls this; so can tests). */
  runOnce(): CompactionResult {
    this.running = true;
    try {
      const result = this.store.compact({ include: this.include, thresholdBytes: this.opts.thresholdBytes });
      if (result.count > 0) {
        this.log.info("background compaction complete", { count: result.count, before: result.before, after: result.after });
      }
      return result;
    } finally {
      this.running = false;
    }
  }
}
