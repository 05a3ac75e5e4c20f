/**
 * Two runtime settings that Bun reads only while the process starts, before any of our code runs,
 * and whose defaults cost an idle node more CPU than all of its own mesh work (measured with three
 * idle nodes, 10,000 documents in sync, per-thread CPU from /proc/<pid>/task/<tid>/schedstat):
 *
 * - Bun's idle GC timer collects once a second whenever the heap size changed since the last
 *   tick. A node's pings change it every tick, so it never slows down: ≈ 0.04 CPU-s/min on the
 *   main thread and the GC helper threads, and with 10,000 documents held, still ≈ 0.015 at one
 *   collection per 30 s. JavaScriptCore still collects as allocation demands; this only spaces
 *   out the extra idle collection, to one per 2 minutes.
 * - mimalloc's background purge thread (`mi-scavenger`) returns the free holes in its pages to the
 *   OS as often as it may, which with a steady trickle of small messages is constantly: ≈ 0.04–0.08
 *   CPU-s/min. At most once per 5 s it measured 0.01, and memory still goes back: 165 MB RSS after
 *   100,000 documents (bench/broker-writes.ts) against 160 MB with the default. (Never purging,
 *   `MIMALLOC_PURGE_DELAY=-1`, saved the same CPU but left RSS at its high-water mark: 212 MB.)
 *
 * The process therefore replaces itself once, in place, with `execve` (same PID, same arguments,
 * so Kubernetes, systemd and anything that tracks the PID sees one process), with the settings
 * added to its environment. A setting the operator gave explicitly is kept as given. If `execve`
 * is unavailable (no glibc, not Linux), the node runs on with Bun's defaults.
 */
import { readFileSync } from "node:fs";

export const RUNTIME_DEFAULTS: Readonly<Record<string, string>> = {
  BUN_GC_TIMER_INTERVAL: "120000",
  MIMALLOC_PURGE_HOLES_MIN_INTERVAL: "5000",
};

/** Set in the re-executed process, so that it never executes itself again. */
export const TUNED_MARKER = "PEAT_RUNTIME_TUNED";

/** The environment to re-execute with, or undefined when there is nothing to change. */
export function tunedEnvironment(env: Readonly<Record<string, string | undefined>>): Record<string, string> | undefined {
  if (env[TUNED_MARKER]) return undefined;
  const missing = Object.entries(RUNTIME_DEFAULTS).filter(([name]) => env[name] === undefined);
  if (missing.length === 0) return undefined;
  const tuned: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) if (value !== undefined) tuned[name] = value;
  for (const [name, value] of missing) tuned[name] = value;
  tuned[TUNED_MARKER] = "1";
  return tuned;
}

/**
 * The argument vector that starts this same program again: a compiled executable is its own
 * program (its argv[1] is the path of the embedded entry point), `bun src/main.ts` needs the script
 * and Bun's own flags.
 */
export function reexecArguments(execPath: string, argv: readonly string[], execArgv: readonly string[], compiled: boolean): string[] {
  return compiled ? [execPath, ...argv.slice(2)] : [execPath, ...execArgv, ...argv.slice(1)];
}

/** Replaces the process with itself under `tunedEnvironment`; returns only if that is not needed or not possible. */
export async function reexecWithRuntimeDefaults(): Promise<void> {
  const env = tunedEnvironment(process.env);
  if (!env || process.platform !== "linux") return;
  try {
    // Only glibc is known to be there: the executable links against it.
    if (!readFileSync("/proc/self/maps", "utf8").includes("libc.so.6")) return;
    const { dlopen, FFIType, ptr } = await import("bun:ffi");
    const libc = dlopen("libc.so.6", {
      execve: { args: [FFIType.cstring, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    });
    const compiled = import.meta.path.startsWith("/$bunfs/") || import.meta.path.startsWith("B:\\~BUN");
    const cString = (s: string) => Buffer.from(`${s}\0`);
    const strings = (values: string[]) => values.map(cString);
    const pointerTable = (buffers: Buffer[]) => {
      const table = new BigUint64Array(buffers.length + 1);
      buffers.forEach((b, i) => {
        table[i] = BigInt(ptr(b));
      });
      return table;
    };
    // Kept in variables so that the buffers the tables point into stay alive across the call.
    const args = strings(reexecArguments(process.execPath, process.argv, process.execArgv, compiled));
    const vars = strings(Object.entries(env).map(([k, v]) => `${k}=${v}`));
    const argTable = pointerTable(args);
    const varTable = pointerTable(vars);
    libc.symbols.execve(cString(process.execPath), ptr(argTable), ptr(varTable));
    // Only reached when execve failed; the node runs with Bun's defaults.
    libc.close();
  } catch {
    // No FFI or no libc: same.
  }
}
