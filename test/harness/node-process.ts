/**
 * Runs real peat-mesh-node processes for integration tests: spawn with an env, read their log
 * lines, wait on conditions with deadlines, stop by PID. Every process started here is tracked and
 * killed by `stopAllNodes()` (call it in afterAll) even when a test fails half-way.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const PROJECT_ROOT = resolve(import.meta.dir, "../..");
export const MAIN = join(PROJECT_ROOT, "src/main.ts");
/** Vector A of the reference: device_id 91cd54000bc001cbdd3aadafbc7b8b6e for HOSTNAME peat-mesh-0. */
export const TEST_SECRET = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
export const TEST_SECRET_DEVICE_ID = "91cd54000bc001cbdd3aadafbc7b8b6e";

const running = new Set<NodeProcess>();
const tempDirs = new Set<string>();

/** Calls `onLine` for each newline-terminated line of a process's output (and a final partial one). */
export async function forEachLine(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of stream) {
    buffered += decoder.decode(chunk, { stream: true });
    let nl = buffered.indexOf("\n");
    while (nl >= 0) {
      onLine(buffered.slice(0, nl));
      buffered = buffered.slice(nl + 1);
      nl = buffered.indexOf("\n");
    }
  }
  if (buffered) onLine(buffered);
}

export class DeadlineError extends Error {
  override readonly name = "DeadlineError";
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor<T>(
  check: () => T | undefined | false | null | Promise<T | undefined | false | null>,
  timeoutMs: number,
  what: string,
  intervalMs = 10,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    if (performance.now() > deadline) {
      const detail = lastError instanceof Error ? ` (last error: ${lastError.message})` : "";
      throw new DeadlineError(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await Bun.sleep(intervalMs);
  }
}

export function tempDir(prefix = "peat-test-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

export function removeTempDirs(): void {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

/** A TCP port that was free a moment ago (bind to 0, read, close). */
export function freeTcpPort(): number {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = listener.port;
  listener.stop(true);
  return port;
}

/** A UDP range start unlikely to collide between concurrently running tests. */
export function udpRangeStart(): number {
  return 20000 + Math.floor(Math.random() * 2000) * 16;
}

export interface StartOptions {
  env?: Record<string, string>;
  /** The command to run; defaults to `bun src/main.ts`. */
  command?: string[];
  /** Runs the command inside a network namespace (`ip netns exec` prefix). */
  prefix?: string[];
  /** Address the test reaches the broker at (default 127.0.0.1). */
  host?: string;
  cwd?: string;
  /** Wait for the broker to answer /api/v1/ready with 200 (default true). */
  waitReady?: boolean;
  readyTimeoutMs?: number;
}

export class NodeProcess {
  readonly lines: string[] = [];
  readonly stderrLines: string[] = [];
  readonly exited: Promise<number>;
  brokerPort: number;

  constructor(
    readonly proc: ReturnType<typeof Bun.spawn>,
    brokerPort: number,
    readonly env: Record<string, string>,
    readonly host = "127.0.0.1",
  ) {
    this.brokerPort = brokerPort;
    this.exited = proc.exited;
    void this.pump(proc.stdout as ReadableStream<Uint8Array>, this.lines);
    void this.pump(proc.stderr as ReadableStream<Uint8Array>, this.stderrLines);
  }

  get pid(): number {
    return this.proc.pid;
  }

  get url(): string {
    return `http://${this.host}:${this.brokerPort}`;
  }

  private async pump(stream: ReadableStream<Uint8Array>, into: string[]): Promise<void> {
    await forEachLine(stream, (line) => into.push(line));
  }

  /** The first stdout line matching `pattern`, waiting up to `timeoutMs` for it. */
  waitForLine(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
    return waitFor(() => this.lines.find((l) => pattern.test(l)), timeoutMs, `a log line matching ${pattern}`);
  }

  fetch(path: string, init?: RequestInit): Promise<Response> {
    return fetch(`${this.url}${path}`, init);
  }

  async json<T = unknown>(path: string, init?: RequestInit): Promise<{ status: number; body: T }> {
    const res = await this.fetch(path, init);
    const text = await res.text();
    return { status: res.status, body: (text ? JSON.parse(text) : null) as T };
  }

  async waitReady(timeoutMs = 15_000): Promise<void> {
    // A node that dies during startup fails the wait at once, not when the deadline runs out.
    const died = this.exited.then((code) => {
      throw new Error(`node ${this.env.HOSTNAME} exited with ${code} before ready: ${this.stderrLines.join(" | ")}`);
    });
    const ready = waitFor(async () => (await this.fetch("/api/v1/ready")).status === 200, timeoutMs, `node ${this.env.HOSTNAME} to be ready`);
    died.catch(() => {});
    await Promise.race([ready, died]);
  }

  /** SIGTERM, then wait for the exit code (SIGKILL if it overruns `timeoutMs`). */
  async stop(timeoutMs = 6000): Promise<number> {
    if (this.proc.exitCode === null) this.proc.kill("SIGTERM");
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), timeoutMs);
    const code = await this.exited;
    clearTimeout(timer);
    running.delete(this);
    return code;
  }

  async kill(): Promise<void> {
    if (this.proc.exitCode === null) this.proc.kill("SIGKILL");
    await this.exited;
    running.delete(this);
  }
}

export async function startNode(options: StartOptions = {}): Promise<NodeProcess> {
  const brokerPort = options.env?.PEAT_BROKER_PORT ? Number(options.env.PEAT_BROKER_PORT) : freeTcpPort();
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: process.env.HOME ?? "/tmp",
    TMPDIR: process.env.TMPDIR ?? tmpdir(),
    NO_COLOR: "1",
    PEAT_FORMATION_SECRET: TEST_SECRET,
    HOSTNAME: "peat-mesh-0",
    PEAT_DISCOVERY: "static",
    PEAT_DATA_DIR: tempDir("peat-data-"),
    PEAT_BROKER_BIND: "127.0.0.1",
    PEAT_BROKER_PORT: String(brokerPort),
    PEAT_IROH_BIND_PORT: String(udpRangeStart()),
    RUST_LOG: "info,peat_mesh=debug",
    ...options.env,
  };
  const proc = Bun.spawn([...(options.prefix ?? []), ...(options.command ?? [process.execPath, MAIN])], {
    env,
    cwd: options.cwd ?? PROJECT_ROOT,
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
  });
  const node = new NodeProcess(proc, brokerPort, env, options.host);
  running.add(node);
  if (options.waitReady !== false) await node.waitReady(options.readyTimeoutMs);
  return node;
}

/** Kills, by PID, every node a test started and did not stop; removes temp dirs. */
export async function stopAllNodes(): Promise<void> {
  await Promise.all([...running].map((n) => n.kill()));
  removeTempDirs();
}
