/**
 * Spawns testdata/peer.ts processes and reads their JSON lines. Every process is tracked and
 * killed by PID in `killAll()` (call it in afterAll) even when a test fails half-way.
 */
import { forEachLine } from "../../../test/harness/node-process.ts";
import { join } from "node:path";
import type { Subprocess } from "bun";
import type { PeerConfig } from "./peer.ts";

const PEER_SCRIPT = join(import.meta.dir, "peer.ts");
const running = new Set<PeerProcess>();

export type Line = Record<string, unknown>;

export async function waitUntil<T>(check: () => T | undefined | false | null, timeoutMs: number, what: string): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value) return value;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(10);
  }
}

export class PeerProcess {
  readonly lines: Line[] = [];
  readonly raw: string[] = [];
  private readonly proc: Subprocess<"pipe", "pipe", "pipe">;
  exited = false;

  constructor(readonly config: PeerConfig) {
    this.proc = Bun.spawn(["bun", PEER_SCRIPT], {
      env: { ...process.env, PEER_CONFIG: JSON.stringify(config), NO_COLOR: "1" },
      stdin: "pipe",
      stdout: "pipe",
      stderr: "pipe",
    });
    running.add(this);
    void this.read(this.proc.stdout);
    void this.read(this.proc.stderr);
    void this.proc.exited.then(() => {
      this.exited = true;
      running.delete(this);
    });
  }

  get pid(): number {
    return this.proc.pid;
  }

  get name(): string {
    return this.config.name;
  }

  private async read(stream: ReadableStream<Uint8Array>): Promise<void> {
    await forEachLine(stream, (line) => {
      this.raw.push(line);
      try {
        this.lines.push(JSON.parse(line) as Line);
      } catch {
        // stderr noise (a crash trace) stays in `raw` for the failure message.
      }
    });
  }

  events(ev: string, filter: (l: Line) => boolean = () => true): Line[] {
    return this.lines.filter((l) => l.ev === ev && filter(l));
  }

  logs(level: string, message?: string): Line[] {
    return this.lines.filter((l) => l.level === level && (message === undefined || l.message === message));
  }

  command(cmd: Record<string, unknown>): void {
    this.proc.stdin.write(`${JSON.stringify(cmd)}\n`);
    this.proc.stdin.flush();
  }

  /** Sends a command and waits for the first new event of type `ev` it produces. */
  async request(cmd: Record<string, unknown>, ev: string, timeoutMs = 10_000): Promise<Line> {
    const before = this.lines.length;
    this.command(cmd);
    return waitUntil(() => this.lines.slice(before).find((l) => l.ev === ev), timeoutMs, `${this.name}: ${ev}`);
  }

  async ready(timeoutMs = 10_000): Promise<Line> {
    return waitUntil(() => this.events("ready")[0] ?? (this.exited ? this.fail() : undefined), timeoutMs, `${this.name} ready`);
  }

  connectedTo(peer: string): boolean {
    const connected = this.events("connected", (l) => l.peer === peer).length;
    const disconnected = this.events("disconnected", (l) => l.peer === peer).length;
    return connected > disconnected;
  }

  private fail(): never {
    throw new Error(`${this.name} exited early:\n${this.raw.slice(-30).join("\n")}`);
  }

  kill(signal: NodeJS.Signals = "SIGTERM"): void {
    if (!this.exited) process.kill(this.pid, signal);
  }

  async waitExit(timeoutMs = 5000): Promise<void> {
    await waitUntil(() => this.exited, timeoutMs, `${this.name} to exit`);
  }
}

export function killAll(): void {
  for (const p of running) {
    try {
      process.kill(p.pid, "SIGKILL");
    } catch {}
  }
  running.clear();
}

/** A base port for a test file: 10000-19600 in steps of 16, away from the ephemeral range. */
export function randomPortBase(): number {
  return 10_000 + Math.floor(Math.random() * 600) * 16;
}
