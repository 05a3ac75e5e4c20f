import { describe, expect, test } from "bun:test";
import { RUNTIME_DEFAULTS, TUNED_MARKER, reexecArguments, tunedEnvironment } from "./runtime-tuning.ts";

describe("tunedEnvironment", () => {
  test("adds the settings the environment lacks, the marker, and keeps everything else", () => {
    const env = tunedEnvironment({ PATH: "/bin", HOSTNAME: "n0", EMPTY: undefined });
    expect(env).toEqual({ PATH: "/bin", HOSTNAME: "n0", ...RUNTIME_DEFAULTS, [TUNED_MARKER]: "1" });
  });

  test("an operator's value wins; with every setting given there is nothing to do", () => {
    expect(tunedEnvironment({ BUN_GC_TIMER_INTERVAL: "1000" })?.BUN_GC_TIMER_INTERVAL).toBe("1000");
    expect(tunedEnvironment({ BUN_GC_TIMER_INTERVAL: "1000", MIMALLOC_PURGE_HOLES_MIN_INTERVAL: "10" })).toBeUndefined();
  });

  test("a process that already re-executed never does again", () => {
    expect(tunedEnvironment({ [TUNED_MARKER]: "1" })).toBeUndefined();
  });
});

describe("reexecArguments", () => {
  test("bun src/main.ts keeps Bun's flags and the script", () => {
    expect(reexecArguments("/usr/bin/bun", ["/usr/bin/bun", "/app/src/main.ts", "--x"], ["--smol"], false)).toEqual([
      "/usr/bin/bun",
      "--smol",
      "/app/src/main.ts",
      "--x",
    ]);
  });

  test("a compiled executable is its own program: the embedded entry path is dropped", () => {
    expect(reexecArguments("/opt/peat-mesh-node", ["bun", "/$bunfs/root/peat-mesh-node", "--x"], [], true)).toEqual(["/opt/peat-mesh-node", "--x"]);
  });
});
