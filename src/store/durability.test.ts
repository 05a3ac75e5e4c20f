/**
 * A write acknowledged by `put` survives the process being killed with SIGKILL right after.
 * A child process writes and reports each acknowledged write; we kill it mid-stream and check
 * that every reported write is on disk.
 */
import { afterEach, expect, test } from "bun:test";
import { join } from "node:path";
import { Automerge } from "../automerge.ts";
import { silentLogger } from "../log.ts";
import { DocumentStore } from "./document-store.ts";
import { TempDirs } from "./testdata/helpers.ts";

const temp = new TempDirs();
afterEach(() => temp.cleanup());

async function runAndKill(dataDir: string, killAfterAcks: number): Promise<Map<string, number>> {
  const child = Bun.spawn([process.execPath, join(import.meta.dir, "testdata", "writer.ts"), dataDir, "40"], {
    stdout: "pipe",
    stderr: "pipe",
  });
  const acked = new Map<string, number>();
  let count = 0;
  let buffer = "";
  const decoder = new TextDecoder();
  const deadline = Date.now() + 20_000;
  const reader = child.stdout.getReader();
  try {
    while (count < killAfterAcks) {
      if (Date.now() > deadline) throw new Error(`writer acknowledged only ${count} writes before the deadline`);
      const { value, done } = await reader.read();
      if (done) throw new Error(`writer exited early: ${await new Response(child.stderr).text()}`);
      buffer += decoder.decode(value, { stream: true });
      let nl = buffer.indexOf("\n");
      while (nl >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        nl = buffer.indexOf("\n");
        if (line === "ready") continue;
        const [id, round] = line.split(" ");
        acked.set(id!, Number(round));
        count++;
      }
    }
    // Kill while it is still writing: no chance to close, checkpoint or flush anything.
    process.kill(child.pid, "SIGKILL");
  } finally {
    reader.releaseLock();
  }
  expect(await child.exited).not.toBe(0);
  expect(child.signalCode).toBe("SIGKILL");
  return acked;
}

test(
  "every write acknowledged before a SIGKILL is present after reopening",
  async () => {
    const dataDir = temp.make("peat-durability-");
    const first = await runAndKill(dataDir, 500);
    expect(first.size).toBe(40);

    const store = new DocumentStore({ dataDir, nodeId: "checker", log: silentLogger(), sweepIntervalMs: 0 });
    await store.start();
    try {
      for (const [id, round] of first) {
        const doc = store.get("durable", id);
        const i = Number(id.slice(1));
        expect(doc).toBeDefined();
        // The acknowledged round, or the next one if that write committed before the kill but was
        // not yet reported.
        expect([round, round + 1]).toContain(doc!.round as number);
        expect(doc).toEqual({ i, round: doc!.round as number, note: `round ${doc!.round} of ${id}`, list: [doc!.round as number, i] });
        // The Automerge bytes agree with the JSON rendering.
        expect(Automerge.toJS(store.getDoc("durable", id)!)).toMatchObject({ i, round: doc!.round });
      }
    } finally {
      await store.stop();
    }

    // A second writer resumes on the same files (WAL replay) and is killed again.
    const second = await runAndKill(dataDir, 300);
    const again = new DocumentStore({ dataDir, nodeId: "checker", log: silentLogger(), sweepIntervalMs: 0 });
    await again.start();
    try {
      for (const [id, round] of second) expect([round, round + 1]).toContain(again.get("durable", id)!.round as number);
    } finally {
      await again.stop();
    }
  },
  { timeout: 60_000 },
);
