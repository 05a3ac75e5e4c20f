/**
 * What every chaos test shares: counts from the environment, the one-line figures, a node's sync
 * state (the convergence check) and small statistics.
 */
import type { CollectionState } from "../../../src/sync/routes.ts";
import type { NodeProcess } from "../../harness/node-process.ts";

/** A count from `name`, or `fallback`; anything but digits (at least `min`) stops the run. */
export function envInt(name: string, fallback: number, min = 0): number {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === "") return fallback;
  if (!/^[0-9]+$/.test(raw.trim()) || Number(raw) < min) {
    throw new Error(`${name} must be an integer of at least ${min}, got ${JSON.stringify(raw)}`);
  }
  return Number(raw);
}

/** The line `docs/reliability.md` is filled from. */
export function printFigures(area: string, figures: unknown): void {
  console.log(`CHAOS-FIGURES ${area}: ${JSON.stringify(figures)}`);
}

/** Nearest-rank percentile; null for no values. */
export function percentile(values: readonly number[], p: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] as number;
}

export interface SyncState {
  state_hash: string;
  collections: CollectionState[];
}

/** A node that does not answer this fast is as good as down to the caller. */
const STATE_TIMEOUT_MS = 15_000;

/**
 * `GET /api/v1/sync/state`: nodes are converged exactly when their `state_hash` values are equal.
 * One parameter only, so that `nodes.map(syncState)` is safe.
 */
export async function syncState(node: NodeProcess): Promise<SyncState> {
  const res = await node.fetch("/api/v1/sync/state", { signal: AbortSignal.timeout(STATE_TIMEOUT_MS) });
  if (res.status !== 200) throw new Error(`sync/state on ${node.env.HOSTNAME}: ${res.status}`);
  return (await res.json()) as SyncState;
}
