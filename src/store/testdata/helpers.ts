/** Test helpers for the store's tests: temp dirs, a capturing logger, condition waits. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Logger, parseLogFilter, silentLogger } from "../../log.ts";
import { DocumentStore, type DocumentStoreOptions } from "../document-store.ts";

export class TempDirs {
  private readonly dirs: string[] = [];

  make(prefix = "peat-store-"): string {
    const dir = mkdtempSync(join(tmpdir(), prefix));
    this.dirs.push(dir);
    return dir;
  }

  cleanup(): void {
    for (const d of this.dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  }
}

export interface CapturedLog {
  log: Logger;
  lines: string[];
}

export function captureLogger(target = "peat_mesh::store"): CapturedLog {
  const lines: string[] = [];
  const log = new Logger(target, { filter: parseLogFilter("trace"), sink: { write: (line) => void lines.push(line.trimEnd()) } });
  return { log, lines };
}

/** Polls `condition` until it holds or `timeoutMs` passes (then throws with `what`). */
export async function waitFor(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(5);
  }
}

/** A settable clock for `now` injection. */
export class FakeClock {
  constructor(public ms = 1_700_000_000_000) {}
  readonly now = (): number => this.ms;
  advance(ms: number): void {
    this.ms += ms;
  }
}

/**
 * Opens real stores in temp dirs for a test file and closes and removes them all in `cleanup()`
 * (call it from afterEach). Defaults: node `node-a`, a silent logger, no background sweep.
 */
export class TestStores {
  readonly temp = new TempDirs();
  private readonly open: DocumentStore[] = [];

  async start(opts: Partial<DocumentStoreOptions> = {}): Promise<DocumentStore> {
    const store = new DocumentStore({ dataDir: opts.dataDir ?? this.temp.make(), nodeId: "node-a", log: silentLogger(), sweepIntervalMs: 0, ...opts });
    this.open.push(store);
    await store.start();
    return store;
  }

  async cleanup(): Promise<void> {
    for (const s of this.open.splice(0)) await s.stop();
    this.temp.cleanup();
  }
}
