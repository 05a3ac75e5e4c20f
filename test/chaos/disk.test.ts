/**
 * Storage faults at process level, on real filesystems:
 *
 * 1. Disk full: the node's PEAT_DATA_DIR is a tmpfs of PEAT_CHAOS_DISK_TMPFS_BYTES (default 4 MiB)
 *    that also holds a filler file the test placed there. Writes go on until the broker answers 507
 *    with a JSON error naming the full disk; reads keep working; deleting the filler frees space and
 *    writes succeed again without a restart. After a clean stop, `PRAGMA integrity_check` is ok, and
 *    after a restart every acknowledged write is there and no refused one is.
 * 2. Read-only: the data dir is a real ext4 filesystem (loop device, `errors=remount-ro`) and the
 *    kernel turns it read-only under the running node, exactly as on an I/O error
 *    (`mount -o remount,abort`). Writes fail with a JSON 5xx naming the cause, reads and health
 *    keep working, the node stays up. A tmpfs or bind mount cannot be made read-only while SQLite
 *    holds its files open for writing (the kernel refuses with EBUSY), and an aborted ext4 cannot be
 *    remounted read-write; so "writable again" is the operator's repair: stop, fsck, mount, start.
 *    Every acknowledged write is there afterwards and writes work.
 * 3. Read-only, then writable again in the running node: on ext4, the immutable attribute
 *    (`chattr +i` on the database, its WAL and the store directory) refuses writes even through
 *    descriptors SQLite opened before, and even to root. Writes fail with a JSON 5xx, reads work;
 *    after `chattr -i` writes succeed again in the same process, and nothing is lost.
 *
 * Counts: PEAT_CHAOS_DISK_TMPFS_BYTES and PEAT_CHAOS_DISK_FILLER_BYTES size the full disk.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type NodeProcess, startNode, stopAllNodes, waitFor } from "../harness/node-process.ts";
import {
  alive,
  chattrSkipReason,
  envInt,
  fsck,
  healthy,
  integrityCheck,
  isErrorBody,
  logLines,
  loopSkipReason,
  mountExt4,
  mountTmpfs,
  printFigures,
  remount,
  remountExt4,
  setImmutable,
  tmpfsSkipReason,
  unmount,
  unmountAll,
} from "./lib/hostile.ts";

const TMPFS_BYTES = envInt("PEAT_CHAOS_DISK_TMPFS_BYTES", 4 * 1024 * 1024);
const FILLER_BYTES = envInt("PEAT_CHAOS_DISK_FILLER_BYTES", 1024 * 1024);
const DOC_PAD = 12 * 1024;
const MAX_FILL_WRITES = 5000;

const figures: Record<string, unknown> = { tmpfs_bytes: TMPFS_BYTES, filler_bytes: FILLER_BYTES };

afterAll(async () => {
  printFigures("disk", figures);
  await stopAllNodes();
  unmountAll();
});

function mountDir(prefix: string): string {
  // A fresh, empty path: the mount point itself is created by the mount helper.
  const parent = mkdtempSync(join(tmpdir(), prefix));
  rmSync(parent, { recursive: true });
  return parent;
}

let seq = 0;
/** A document body of about DOC_PAD bytes that differs from every other (nothing dedupes it). */
function bulky(tag: string): Record<string, unknown> {
  seq++;
  let pad = "";
  let x = (seq * 2654435761) >>> 0;
  while (pad.length < DOC_PAD) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    pad += x.toString(36);
  }
  return { tag, seq, pad };
}

async function put(node: NodeProcess, path: string, body: unknown): Promise<{ status: number; text: string }> {
  const res = await node.fetch(`/api/v1/documents/${path}`, { method: "PUT", body: JSON.stringify(body), signal: AbortSignal.timeout(20_000) });
  return { status: res.status, text: await res.text() };
}

async function getDoc(node: NodeProcess, path: string): Promise<{ status: number; doc?: Record<string, unknown> }> {
  const res = await node.fetch(`/api/v1/documents/${path}`, { signal: AbortSignal.timeout(20_000) });
  const text = await res.text();
  return res.status === 200 ? { status: 200, doc: (JSON.parse(text) as { document: Record<string, unknown> }).document } : { status: res.status };
}

/** Every acknowledged document reads back exactly as written. */
async function expectAllPresent(node: NodeProcess, acked: Map<string, Record<string, unknown>>): Promise<void> {
  const wrong: string[] = [];
  for (const [path, body] of acked) {
    const got = await getDoc(node, path);
    const id = path.split("/")[1];
    if (got.status !== 200 || JSON.stringify(got.doc) !== JSON.stringify({ ...body, _id: id })) wrong.push(`${path}: ${got.status}`);
  }
  expect(wrong).toEqual([]);
}

/** Writes bulky documents until the broker answers 507 five times in a row. */
async function fillUntilFull(
  node: NodeProcess,
  prefix: string,
  acked: Map<string, Record<string, unknown>>,
): Promise<{ statuses: Record<string, number>; refused: string[]; bad: string[] }> {
  const statuses: Record<string, number> = {};
  const refused: string[] = [];
  const bad: string[] = [];
  let consecutive507 = 0;
  for (let i = 0; i < MAX_FILL_WRITES && consecutive507 < 5; i++) {
    const path = `${prefix}/d-${i}`;
    const body = bulky(path);
    const r = await put(node, path, body);
    statuses[r.status] = (statuses[r.status] ?? 0) + 1;
    if (r.status === 201) {
      acked.set(path, body);
      consecutive507 = 0;
    } else if (r.status === 507) {
      refused.push(path);
      consecutive507++;
      if (!isErrorBody(r.text, 507) || !/full/i.test(r.text)) bad.push(`${path}: ${r.text.slice(0, 200)}`);
    } else bad.push(`${path}: ${r.status} ${r.text.slice(0, 200)}`);
  }
  if (consecutive507 < 5) bad.push(`no 507 after ${MAX_FILL_WRITES} writes`);
  return { statuses, refused, bad };
}

/** Retries a write until it is acknowledged (space was just freed); returns the attempts needed. */
async function writeUntilAccepted(node: NodeProcess, prefix: string, acked: Map<string, Record<string, unknown>>): Promise<number> {
  let attempts = 0;
  await waitFor(
    async () => {
      attempts++;
      const path = `${prefix}/first-${attempts}`;
      const body = bulky(path);
      const r = await put(node, path, body);
      if (r.status === 201) acked.set(path, body);
      else if (r.status !== 507) throw new Error(`unexpected ${r.status} ${r.text}`);
      return r.status === 201;
    },
    10_000,
    "a write to succeed after space was freed",
    100,
  );
  return attempts;
}

describe("disk full (tmpfs)", () => {
  const skip = tmpfsSkipReason();
  test.skipIf(skip !== undefined)(
    `writes get 507 when the ${TMPFS_BYTES}-byte data dir is full, reads keep working, freeing space brings writes back without a restart, a restart on a full disk works, nothing is lost`,
    async () => {
      const dir = mountDir("peat-chaos-full-");
      mountTmpfs(dir, TMPFS_BYTES);
      const filler = join(dir, "filler.bin");
      writeFileSync(filler, new Uint8Array(FILLER_BYTES).fill(7));
      let node = await startNode({ env: { HOSTNAME: "disk-full", PEAT_DATA_DIR: dir } });
      const acked = new Map<string, Record<string, unknown>>();
      const refused: string[] = [];

      // 1. Fill the disk: 507 with a JSON error naming the full disk.
      const first = await fillUntilFull(node, "fill", acked);
      refused.push(...first.refused);
      figures.fill_statuses = first.statuses;
      figures.writes_acknowledged_before_full = acked.size;
      figures.example_507 = (await put(node, "fill/example", bulky("example"))).text;
      refused.push("fill/example");
      expect(first.bad).toEqual([]);
      expect(acked.size).toBeGreaterThan(10);

      // While full, every acknowledged document reads back, the listing works, the node is healthy.
      await expectAllPresent(node, acked);
      const list = await node.json<{ total: number }>("/api/v1/documents/fill?limit=1000");
      expect(list.status).toBe(200);
      expect(list.body.total).toBe(acked.size);
      expect(await healthy(node)).toBe(true);
      figures.reads_ok_while_full = acked.size;

      // 2. Free space (delete the test's filler file): writes succeed again in the same process.
      rmSync(filler);
      const pid = node.pid;
      figures.attempts_until_recovered_after_delete = await writeUntilAccepted(node, "after-delete", acked);
      for (let i = 0; i < 10; i++) {
        const path = `after-delete/d-${i}`;
        const body = bulky(path);
        expect((await put(node, path, body)).status).toBe(201);
        acked.set(path, body);
      }
      expect(node.pid).toBe(pid);
      expect(alive(pid)).toBe(true);
      figures.recovered_without_restart = true;

      // 3. Full again, then a restart while full: the node starts, serves reads, refuses writes.
      const second = await fillUntilFull(node, "refill", acked);
      refused.push(...second.refused);
      expect(second.bad).toEqual([]);
      figures.error_log_lines_while_full = logLines(node, "ERROR", /./).length;
      expect(await node.stop()).toBe(0);
      expect(integrityCheck(dir)).toBe("ok");
      node = await startNode({ env: { HOSTNAME: "disk-full", PEAT_DATA_DIR: dir } });
      await expectAllPresent(node, acked);
      const refusedAfterRestart = await put(node, "refill/after-restart", bulky("after-restart"));
      expect(refusedAfterRestart.status).toBe(507);
      refused.push("refill/after-restart");
      figures.restart_while_full = "started, reads ok, writes 507";

      // 4. Free space by growing the filesystem (remount with a larger size): writes succeed again.
      remount(dir, `size=${TMPFS_BYTES * 2}`);
      figures.attempts_until_recovered_after_grow = await writeUntilAccepted(node, "after-grow", acked);
      figures.writes_refused_507 = refused.length;
      figures.writes_acknowledged = acked.size;

      // Clean stop, integrity check, restart: everything acknowledged is there, nothing refused is.
      expect(await node.stop()).toBe(0);
      const integrity = integrityCheck(dir);
      figures.integrity_check = integrity;
      expect(integrity).toBe("ok");
      node = await startNode({ env: { HOSTNAME: "disk-full", PEAT_DATA_DIR: dir } });
      await expectAllPresent(node, acked);
      for (const path of refused) expect((await getDoc(node, path)).status).toBe(404);
      figures.acknowledged_present_after_restart = acked.size;
      figures.refused_absent_after_restart = refused.length;
      await node.stop();
    },
    180_000,
  );
});

describe("read-only data dir (ext4 remounted read-only by the kernel)", () => {
  const skip = loopSkipReason();
  test.skipIf(skip !== undefined)(
    "writes fail with a JSON 5xx naming the cause, reads and health keep working; after the repair every acknowledged write is there",
    async () => {
      const dir = mountDir("peat-chaos-ro-");
      const image = `${dir}.img`;
      mountExt4(dir, image, 64 * 1024 * 1024);
      let node = await startNode({ env: { HOSTNAME: "disk-ro", PEAT_DATA_DIR: dir } });
      const acked = new Map<string, Record<string, unknown>>();
      for (let i = 0; i < 30; i++) {
        const path = `ro/d-${i}`;
        const body = { i, text: `before ${i}` };
        expect((await put(node, path, body)).status).toBe(201);
        acked.set(path, body);
      }

      // What the filesystem had written out before the fault. (The node acknowledges a write once it
      // is in the WAL, not fsynced: synchronous=NORMAL. Writes still in the page cache when the
      // filesystem aborts are lost, as on a power cut; that trade-off is documented, so the test
      // lets the kernel write them out first, as its periodic commit would.)
      execFileSync("sync", ["-f", join(dir, "automerge")]);
      // The kernel makes the filesystem read-only under the running node (as on an I/O error).
      remount(dir, "abort");
      expect(existsSync(join(dir, "automerge"))).toBe(true);

      const answers: Record<string, number> = {};
      const bad: string[] = [];
      const refused: string[] = [];
      const attempts: { method: string; path: string; body?: unknown }[] = [];
      for (let i = 0; i < 20; i++) attempts.push({ method: "PUT", path: `ro/new-${i}`, body: { i } });
      for (let i = 0; i < 10; i++) attempts.push({ method: "PATCH", path: `ro/d-${i}`, body: { patched: true } });
      for (let i = 10; i < 20; i++) attempts.push({ method: "DELETE", path: `ro/d-${i}` });
      let example = "";
      for (const a of attempts) {
        const res = await node.fetch(`/api/v1/documents/${a.path}`, {
          method: a.method,
          signal: AbortSignal.timeout(20_000),
          ...(a.body === undefined ? {} : { body: JSON.stringify(a.body) }),
        });
        const text = await res.text();
        answers[res.status] = (answers[res.status] ?? 0) + 1;
        example ||= text;
        if (res.status < 500 || !isErrorBody(text, res.status) || !/read-only/i.test(text)) bad.push(`${a.method} ${a.path}: ${res.status} ${text.slice(0, 200)}`);
        else refused.push(`${a.method} ${a.path}`);
      }
      figures.read_only_answers = answers;
      figures.read_only_example = example;
      figures.writes_refused_read_only = refused.length;
      expect(bad).toEqual([]);

      // Reads, listing, health and the node itself are unaffected.
      await expectAllPresent(node, acked);
      expect((await node.json<{ total: number }>("/api/v1/documents/ro?limit=1000")).body.total).toBe(acked.size);
      expect(await healthy(node)).toBe(true);
      expect(alive(node.pid)).toBe(true);
      figures.reads_ok_while_read_only = acked.size;

      // The repair: stop the node, check the filesystem, mount it read-write, start the node.
      const code = await node.stop();
      figures.stop_exit_code = code;
      expect(code).toBe(0);
      unmount(dir);
      const check = fsck(image);
      figures.fsck_exit_code = check.code;
      expect([0, 1]).toContain(check.code);
      remountExt4(dir, image);
      expect(integrityCheck(dir)).toBe("ok");
      node = await startNode({ env: { HOSTNAME: "disk-ro", PEAT_DATA_DIR: dir } });
      await expectAllPresent(node, acked);
      for (let i = 0; i < 20; i++) expect((await getDoc(node, `ro/new-${i}`)).status).toBe(404);
      for (let i = 0; i < 10; i++) {
        const path = `ro/after-${i}`;
        expect((await put(node, path, { i })).status).toBe(201);
      }
      figures.writes_recovered_after_repair = true;
      await node.stop();
    },
    180_000,
  );
});

describe("read-only data dir, writable again without a restart (ext4 immutable attribute)", () => {
  const skip = loopSkipReason() ?? chattrSkipReason();
  test.skipIf(skip !== undefined)(
    "with the database, its WAL and the directory immutable (chattr +i, which stops root too) writes fail with a JSON 5xx, reads work; chattr -i and writes recover in the same process",
    async () => {
      const dir = mountDir("peat-chaos-immutable-");
      const image = `${dir}.img`;
      mountExt4(dir, image, 64 * 1024 * 1024);
      let node = await startNode({ env: { HOSTNAME: "disk-immutable", PEAT_DATA_DIR: dir } });
      const acked = new Map<string, Record<string, unknown>>();
      for (let i = 0; i < 20; i++) {
        const path = `imm/d-${i}`;
        const body = { i, text: `before ${i}` };
        expect((await put(node, path, body)).status).toBe(201);
        acked.set(path, body);
      }
      const store = join(dir, "automerge");
      const targets = [join(store, "peat.sqlite"), join(store, "peat.sqlite-wal"), store].filter((p) => existsSync(p));
      expect(targets.length).toBe(3);
      setImmutable(targets, true);

      const answers: Record<string, number> = {};
      const bad: string[] = [];
      let refused = 0;
      let example = "";
      for (let i = 0; i < 10; i++) {
        for (const [method, path, body] of [
          ["PUT", `imm/new-${i}`, { i }],
          ["PATCH", `imm/d-${i}`, { patched: true }],
          ["DELETE", `imm/d-${i + 10}`, undefined],
        ] as const) {
          const res = await node.fetch(`/api/v1/documents/${path}`, {
            method,
            signal: AbortSignal.timeout(20_000),
            ...(body === undefined ? {} : { body: JSON.stringify(body) }),
          });
          const text = await res.text();
          answers[res.status] = (answers[res.status] ?? 0) + 1;
          example ||= text;
          if (res.status < 500 || !isErrorBody(text, res.status) || !/read-only/i.test(text)) bad.push(`${method} ${path}: ${res.status} ${text.slice(0, 200)}`);
          else refused++;
        }
      }
      figures.immutable_answers = answers;
      figures.immutable_example = example;
      figures.writes_refused_immutable = refused;
      expect(bad).toEqual([]);
      await expectAllPresent(node, acked);
      expect(await healthy(node)).toBe(true);

      // Writable again: the same process accepts writes.
      setImmutable(targets, false);
      const pid = node.pid;
      figures.attempts_until_recovered_after_chattr = await writeUntilAccepted(node, "imm-after", acked);
      for (let i = 0; i < 10; i++) {
        const path = `imm-after/d-${i}`;
        const body = { i };
        expect((await put(node, path, body)).status).toBe(201);
        acked.set(path, body);
      }
      for (let i = 0; i < 10; i++) {
        expect((await getDoc(node, `imm/new-${i}`)).status).toBe(404);
        expect((await getDoc(node, `imm/d-${i}`)).doc).toEqual({ ...acked.get(`imm/d-${i}`), _id: `d-${i}` });
      }
      expect(node.pid).toBe(pid);
      figures.recovered_without_restart_after_chattr = true;

      expect(await node.stop()).toBe(0);
      expect(integrityCheck(dir)).toBe("ok");
      node = await startNode({ env: { HOSTNAME: "disk-immutable", PEAT_DATA_DIR: dir } });
      await expectAllPresent(node, acked);
      await node.stop();
    },
    180_000,
  );
});

