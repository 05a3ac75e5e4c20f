/**
 * The node as a process: starts, identifies itself, answers probes, refuses bad config, stops
 * cleanly on SIGTERM and SIGINT.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync, readdirSync } from "node:fs";
import {
  MAIN,
  TEST_SECRET,
  TEST_SECRET_DEVICE_ID,
  freeTcpPort,
  startNode,
  waitFor,
  stopAllNodes,
  tempDir,
} from "./harness/node-process.ts";

afterAll(stopAllNodes);

describe("a node started with static discovery and a local data dir", () => {
  test("answers health, ready and node, logs Mesh started, and stops on SIGTERM with 0 within 5 s", async () => {
    const node = await startNode({ env: { HOSTNAME: "peat-mesh-0" } });

    const health = await node.json("/api/v1/health");
    expect(health).toEqual({ status: 200, body: { status: "healthy", node_id: "peat-mesh-0" } });

    const ready = await node.json("/api/v1/ready");
    expect(ready).toEqual({ status: 200, body: { ready: true, node_id: "peat-mesh-0", checks: [] } });

    const info = await node.json<Record<string, unknown>>("/api/v1/node");
    expect(info.status).toBe(200);
    expect(info.body.node_id).toBe("peat-mesh-0");
    expect(info.body.device_id).toBe(TEST_SECRET_DEVICE_ID);
    expect(info.body.endpoint_id).toBe("23d1c8b3e6861d693c7f446bfa73b58f8877c21db60ee32497bf9974c655b3de");
    expect(info.body.version).toBe((await Bun.file(`${import.meta.dir}/../package.json`).json()).version);
    expect(typeof info.body.uptime_secs).toBe("number");

    const started = await node.waitForLine(/Mesh started/);
    expect(started).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z  INFO peat_mesh_node: Mesh started node_id=peat-mesh-0 device_id=91cd54000bc001cbdd3aadafbc7b8b6e/);
    expect(started.match(/device_id=\S+/)?.[0]).toBe(`device_id=${TEST_SECRET_DEVICE_ID}`);
    await node.waitForLine(/INFO peat_mesh_node: Starting peat-mesh-node hostname=peat-mesh-0 discovery=static/);
    await node.waitForLine(/INFO peat_mesh::broker: Broker listening addr=127\.0\.0\.1:\d+/);
    await node.waitForLine(/Discovery started/);
    expect(node.lines.join("\n")).not.toContain("\x1b[");

    const t0 = performance.now();
    const code = await node.stop();
    expect(code).toBe(0);
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(node.lines.some((l) => l.includes("Received SIGTERM"))).toBe(true);
    expect(node.lines.at(-1)).toContain("peat-mesh-node stopped");
  });

  test("SIGINT stops it too", async () => {
    const node = await startNode({ env: { HOSTNAME: "peat-mesh-1" } });
    node.proc.kill("SIGINT");
    expect(await node.exited).toBe(0);
    expect(node.lines.some((l) => l.includes("Received SIGINT"))).toBe(true);
  });

  test("the same secret and hostname give the same device_id across restarts; another hostname another one", async () => {
    const dataDir = tempDir();
    const first = await startNode({ env: { HOSTNAME: "peat-mesh-1", PEAT_DATA_DIR: dataDir } });
    const a = (await first.json<{ device_id: string }>("/api/v1/node")).body.device_id;
    await first.stop();
    const second = await startNode({ env: { HOSTNAME: "peat-mesh-1", PEAT_DATA_DIR: dataDir } });
    const b = (await second.json<{ device_id: string }>("/api/v1/node")).body.device_id;
    await second.stop();
    expect(a).toBe("278f65e9fc7910dd7b0a01eca9ff25cd");
    expect(b).toBe(a);
  });

  test("PEAT_LOG_FORMAT=json gives one JSON object per line", async () => {
    const node = await startNode({ env: { PEAT_LOG_FORMAT: "json" } });
    await node.waitForLine(/Mesh started/);
    await node.stop();
    const records = node.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const started = records.find((r) => r.message === "Mesh started");
    expect(started).toMatchObject({ level: "INFO", target: "peat_mesh_node", node_id: "peat-mesh-0", device_id: TEST_SECRET_DEVICE_ID });
  });

  test("unknown routes get a JSON 404 and wrong methods a JSON 405", async () => {
    const node = await startNode();
    const missing = await node.json("/api/v1/nope");
    expect(missing).toEqual({ status: 404, body: { error: "no route for GET /api/v1/nope", status: 404 } });
    const wrong = await node.fetch("/api/v1/health", { method: "DELETE" });
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get("allow")).toContain("GET");
    expect(await wrong.json()).toEqual({ error: "method DELETE not allowed on /api/v1/health", status: 405 });
    await node.stop();
  });
});

describe("runtime settings (src/runtime-tuning.ts, src/transport/sctp-timer.ts)", () => {
  const environ = (pid: number) => new Map(
    readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)] as const),
  );
  const threadsNamed = (pid: number, name: string) =>
    readdirSync(`/proc/${pid}/task`).filter((tid) => readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim() === name);

  test("the node replaces itself once, same PID and name, with Bun's idle GC timer and mimalloc's purge interval set", async () => {
    const node = await startNode({ env: { HOSTNAME: "peat-mesh-0" } });
    const env = environ(node.pid);
    expect(env.get("BUN_GC_TIMER_INTERVAL")).toBe("120000");
    expect(env.get("MIMALLOC_PURGE_HOLES_MIN_INTERVAL")).toBe("5000");
    expect(env.get("PEAT_RUNTIME_TUNED")).toBe("1");
    expect(readFileSync(`/proc/${node.pid}/comm`, "utf8").trim()).not.toBe("exe");
    expect(readFileSync(`/proc/${node.pid}/cmdline`, "utf8").split("\0")).toContain(MAIN);
    expect(await node.stop()).toBe(0);
  });

  test("a value the operator set is kept", async () => {
    const node = await startNode({ env: { HOSTNAME: "peat-mesh-0", BUN_GC_TIMER_INTERVAL: "5000" } });
    const env = environ(node.pid);
    expect(env.get("BUN_GC_TIMER_INTERVAL")).toBe("5000");
    expect(env.get("MIMALLOC_PURGE_HOLES_MIN_INTERVAL")).toBe("5000");
    await node.stop();
  });

  // How often usrsctp's timer thread runs (schedstat's third field) over a window.
  async function sctpRunsPerSecond(node: Awaited<ReturnType<typeof startNode>>, windowMs = 2000): Promise<number> {
    const sctp = threadsNamed(node.pid, "SCTP timer");
    expect(sctp.length).toBe(1);
    const runs = () => Number(readFileSync(`/proc/${node.pid}/task/${sctp[0]}/schedstat`, "utf8").split(" ")[2]);
    const [before, t0] = [runs(), performance.now()];
    await Bun.sleep(windowMs); // a measurement window, not a wait for a condition
    return ((runs() - before) * 1000) / (performance.now() - t0);
  }

  async function connectedPair(extra: Record<string, string> = {}) {
    const ports = [freeTcpPort(), freeTcpPort()];
    const pair = await Promise.all(
      ["pace-a", "pace-b"].map((name, i) =>
        startNode({
          env: { HOSTNAME: name, PEAT_BROKER_PORT: String(ports[i]), PEAT_STATIC_PEERS: `${i ? "pace-a" : "pace-b"}@127.0.0.1:${ports[1 - i]}`, ...extra },
        }),
      ),
    );
    await Promise.all(pair.map((n) => n.waitForLine(/Peer connected/, 30_000)));
    return pair as [Awaited<ReturnType<typeof startNode>>, Awaited<ReturnType<typeof startNode>>];
  }

  const gauge = async (node: Awaited<ReturnType<typeof startNode>>, name: string): Promise<number> => {
    const m = new RegExp(`^${name} (\\S+)$`, "m").exec(await (await node.fetch("/metrics")).text());
    if (!m) throw new Error(`${name} not exported`);
    return Number(m[1]);
  };
  /** The transport reports idle once a ping interval (2 s) passes with only pings and `root`s. */
  const idle = (node: Awaited<ReturnType<typeof startNode>>) =>
    waitFor(async () => (await gauge(node, "peat_transport_busy")) === 0, 20_000, `${node.env.HOSTNAME}'s transport to go idle`);

  test("idle, usrsctp's timer thread wakes about 10 times a second (PEAT_SCTP_IDLE_PACE_MS, default 100); with data moving, every 10 ms", async () => {
    const [a, b] = await connectedPair();
    await idle(b);
    const idleRate = await sctpRunsPerSecond(b);
    expect(idleRate).toBeGreaterThan(5);
    expect(idleRate).toBeLessThan(30);
    expect(await gauge(b, "peat_transport_sctp_timer_pace_ms")).toBe(100);
    // Writes on a reach b as pushes: b's SCTP timers run at full pace while they do.
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing; i++) await (await a.fetch(`/api/v1/documents/alerts/w${i % 50}`, { method: "PUT", body: JSON.stringify({ i }) })).arrayBuffer();
    })();
    await waitFor(async () => (await b.fetch("/api/v1/documents/alerts/w0")).status === 200, 10_000, "a's writes to reach b");
    await waitFor(async () => (await gauge(b, "peat_transport_busy")) === 1, 10_000, "b's transport to count as busy");
    const busyRate = await sctpRunsPerSecond(b);
    const busyPace = await gauge(b, "peat_transport_sctp_timer_pace_ms");
    writing = false;
    await writer;
    expect(busyPace).toBe(10);
    // Fewer only when the machine is too busy to run it on time.
    expect(busyRate).toBeGreaterThan(60);
    expect(b.lines.join("\n")).not.toContain("SCTP timer pacing unavailable");
    await Promise.all([a.stop(), b.stop()]);
  });

  test("PEAT_SCTP_IDLE_PACE_MS=10 leaves usrsctp's 10 ms timer alone, idle or not", async () => {
    const [a, b] = await connectedPair({ PEAT_SCTP_IDLE_PACE_MS: "10" });
    await idle(b);
    expect(await sctpRunsPerSecond(b)).toBeGreaterThan(60);
    expect(await gauge(b, "peat_transport_sctp_timer_pace_ms")).toBe(10);
    await Promise.all([a.stop(), b.stop()]);
  });
});

describe("bad configuration stops startup with exit code 1 and one line naming the variable", () => {
  const cases: [string, Record<string, string>, RegExp][] = [
    ["missing secret", { PEAT_FORMATION_SECRET: "" }, /^Error: PEAT_FORMATION_SECRET: invalid value \(empty\); accepted: required/],
    ["bad base64", { PEAT_FORMATION_SECRET: "not-valid-base64!!!" }, /^Error: PEAT_FORMATION_SECRET: invalid value \(redacted, 19 characters\); accepted: standard padded base64/],
    ["short secret", { PEAT_FORMATION_SECRET: "dGVzdC1zZWNyZXQ=" }, /^Error: PEAT_FORMATION_SECRET: invalid value \(redacted, decodes to 11 bytes\)/],
    ["unknown discovery mode", { PEAT_DISCOVERY: "consul" }, /^Error: PEAT_DISCOVERY: invalid value "consul"; accepted: one of kubernetes, k8s, mdns, static$/],
    ["broker port out of range", { PEAT_BROKER_PORT: "65536" }, /^Error: PEAT_BROKER_PORT: invalid value "65536"; accepted: an integer from 0 to 65535/],
    ["sync port out of range", { PEAT_IROH_BIND_PORT: "0" }, /^Error: PEAT_IROH_BIND_PORT: invalid value "0"; accepted: an integer from 1 to/],
    ["compaction interval under 10 s", { PEAT_COMPACTION_INTERVAL_SECS: "9" }, /^Error: PEAT_COMPACTION_INTERVAL_SECS: invalid value "9"; accepted: an integer number of seconds from 10/],
    ["bad static peer entry", { PEAT_STATIC_PEERS: "10.0.0.2:8081,10.0.0.3" }, /^Error: PEAT_STATIC_PEERS: invalid value entry "10.0.0.3"/],
  ];
  test.each(cases)("%s", async (_label, overrides, message) => {
    const proc = Bun.spawn([process.execPath, MAIN], {
      env: {
        PATH: process.env.PATH ?? "",
        PEAT_FORMATION_SECRET: TEST_SECRET,
        PEAT_DISCOVERY: "static",
        PEAT_DATA_DIR: tempDir(),
        PEAT_BROKER_PORT: String(freeTcpPort()),
        ...overrides,
      },
      stdout: "pipe",
      stderr: "pipe",
    });
    const [code, stderr, stdout] = await Promise.all([proc.exited, new Response(proc.stderr).text(), new Response(proc.stdout).text()]);
    expect(code).toBe(1);
    const lines = stderr.trimEnd().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(message);
    expect(stderr).not.toContain("not-valid-base64!!!");
    expect(stdout).not.toContain("Mesh started");
  });

  test("a broker port already in use stops startup with 1", async () => {
    const blocker = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("busy") });
    try {
      const node = await startNode({ env: { PEAT_BROKER_PORT: String(blocker.port) }, waitReady: false });
      expect(await node.exited).toBe(1);
      expect(node.stderrLines.join("\n")).toMatch(/^Error: .*(port|address|in use|EADDRINUSE)/i);
    } finally {
      blocker.stop(true);
    }
  });

  test("an unwritable data dir stops startup with 1 and names the path", async () => {
    const node = await startNode({ env: { PEAT_DATA_DIR: "/proc/peat-cannot-write-here" }, waitReady: false });
    expect(await node.exited).toBe(1);
    expect(node.stderrLines.join("\n")).toContain("/proc/peat-cannot-write-here");
  });
});
