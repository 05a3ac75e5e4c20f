import { describe, expect, test } from "bun:test";
import { Display, Logger, parseLogFilter } from "./log.ts";

function capture(spec: string, format: "text" | "json" = "text", color = false) {
  const lines: string[] = [];
  const log = new Logger("peat_mesh_node", {
    filter: parseLogFilter(spec),
    format,
    color,
    sink: { write: (l) => lines.push(l) },
    now: () => new Date("2026-03-28T22:03:39.123Z"),
  });
  return { log, lines };
}

describe("text format", () => {
  test("matches the shape the seed greps for", () => {
    const { log, lines } = capture("info");
    log.info("Mesh started", { node_id: "peat-mesh-0", device_id: "91cd54000bc001cbdd3aadafbc7b8b6e" });
    expect(lines).toEqual([
      "2026-03-28T22:03:39.123Z  INFO peat_mesh_node: Mesh started node_id=peat-mesh-0 device_id=91cd54000bc001cbdd3aadafbc7b8b6e\n",
    ]);
    expect(lines[0]?.match(/device_id=\S+/)?.[0]).toBe("device_id=91cd54000bc001cbdd3aadafbc7b8b6e");
  });

  test("strings with spaces are quoted, arrays print like Rust Debug, Display prints bare", () => {
    const { log, lines } = capture("info");
    log.warn("x", { reason: "timed out", collections: ["beacons", "platforms"], addresses: new Display("[10.0.0.1:11204]"), n: 3, ok: true });
    expect(lines[0]).toBe(
      '2026-03-28T22:03:39.123Z  WARN peat_mesh_node: x reason="timed out" collections=["beacons", "platforms"] addresses=[10.0.0.1:11204] n=3 ok=true\n',
    );
  });

  test("no colour codes unless asked for", () => {
    const plain = capture("info");
    plain.log.error("boom");
    expect(plain.lines[0]).not.toContain("\x1b[");
    const colored = capture("info", "text", true);
    colored.log.error("boom");
    expect(colored.lines[0]).toContain("\x1b[31mERROR\x1b[0m");
  });
});

describe("json format", () => {
  test("one object per line with the fields at top level", () => {
    const { log, lines } = capture("info", "json");
    log.info("Broker listening", { addr: "0.0.0.0:8081", err: new Error("e") });
    expect(lines[0]?.endsWith("\n")).toBe(true);
    expect(JSON.parse(lines[0] as string)).toEqual({
      timestamp: "2026-03-28T22:03:39.123Z",
      level: "INFO",
      target: "peat_mesh_node",
      message: "Broker listening",
      addr: "0.0.0.0:8081",
      err: "e",
    });
  });
});

describe("filter (RUST_LOG directives)", () => {
  test("the default filter shows peat_mesh debug but not the binary's debug", () => {
    const { log, lines } = capture("info,peat_mesh=debug");
    log.debug("hidden");
    log.child("peat_mesh::store").debug("shown");
    log.child("peat_mesh_other").debug("hidden: a different crate, not a child");
    log.child("tower_http").debug("hidden");
    expect(lines.map((l) => l.split(": ")[1]?.trim())).toEqual(["shown"]);
  });

  test("longest target wins; off silences", () => {
    const { log, lines } = capture("debug,peat_mesh=warn,peat_mesh::sync=trace,peat_mesh_node=off");
    log.error("off");
    log.child("peat_mesh::store").info("below warn");
    log.child("peat_mesh::sync::wire").trace("trace ok");
    log.child("other").debug("debug ok");
    expect(lines.map((l) => l.split(": ")[1]?.trim())).toEqual(["trace ok", "debug ok"]);
  });

  test("bad directives are refused", () => {
    expect(() => parseLogFilter("peat_mesh=loud")).toThrow("bad log directive 'peat_mesh=loud'");
    expect(() => parseLogFilter("=debug")).toThrow();
  });
});
