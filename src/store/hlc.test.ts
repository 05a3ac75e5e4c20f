import { describe, expect, test } from "bun:test";
import { InvalidHlcError } from "./errors.ts";
import { compareCodePoints, compareVersions, formatHlc, HybridLogicalClock, isHlc, parseHlc } from "./hlc.ts";

describe("HLC stamps", () => {
  test("format and parse round-trip, node ids may contain separators", () => {
    const parts = { wallMs: 1_732_412_345_678, counter: 3, nodeId: "peat-mesh-0@x.y" };
    const stamp = formatHlc(parts);
    expect(stamp).toBe("001732412345678.000003@peat-mesh-0@x.y");
    expect(parseHlc(stamp)).toEqual(parts);
    expect(isHlc(stamp)).toBe(true);
  });

  test("malformed stamps are InvalidHlcError", () => {
    for (const bad of ["", "1.2@n", "001732412345678.000003", "001732412345678-000003@n", "00173241234567x.000003@n"]) {
      expect(() => parseHlc(bad)).toThrow(InvalidHlcError);
      expect(isHlc(bad)).toBe(false);
    }
    expect(() => parseHlc(42 as unknown as string)).toThrow(InvalidHlcError);
  });

  test("string order equals (wall, counter, node) order", () => {
    const stamps = [
      { wallMs: 9, counter: 999_999, nodeId: "a" },
      { wallMs: 10, counter: 0, nodeId: "a" },
      { wallMs: 10, counter: 1, nodeId: "a" },
      { wallMs: 10, counter: 1, nodeId: "b" },
      { wallMs: 1_000_000_000_000, counter: 0, nodeId: "a" },
    ].map(formatHlc);
    const shuffled = [stamps[3], stamps[0], stamps[4], stamps[2], stamps[1]] as string[];
    expect(shuffled.sort(compareCodePoints)).toEqual(stamps);
  });
});

describe("HybridLogicalClock", () => {
  test("follows physical time when it moves forward", () => {
    let now = 1_000;
    const clock = new HybridLogicalClock("n1", () => now);
    expect(clock.now()).toBe(formatHlc({ wallMs: 1_000, counter: 0, nodeId: "n1" }));
    now = 2_000;
    expect(clock.now()).toBe(formatHlc({ wallMs: 2_000, counter: 0, nodeId: "n1" }));
  });

  test("stays strictly increasing when physical time stalls or goes backwards", () => {
    let now = 5_000;
    const clock = new HybridLogicalClock("n1", () => now);
    const a = clock.now();
    const b = clock.now();
    now = 4_000;
    const c = clock.now();
    expect(compareCodePoints(a, b)).toBeLessThan(0);
    expect(compareCodePoints(b, c)).toBeLessThan(0);
    expect(parseHlc(c)).toEqual({ wallMs: 5_000, counter: 2, nodeId: "n1" });
  });

  test("counter overflow moves the logical wall time on by 1 ms", () => {
    const clock = new HybridLogicalClock("n1", () => 7);
    clock.receive(formatHlc({ wallMs: 7, counter: 999_999, nodeId: "other" }));
    expect(parseHlc(clock.now())).toEqual({ wallMs: 8, counter: 0, nodeId: "n1" });
  });

  test("receive applies the max rule: later stamps sort after anything seen", () => {
    const clock = new HybridLogicalClock("n1", () => 1_000);
    const remote = formatHlc({ wallMs: 50_000, counter: 7, nodeId: "n2" });
    clock.receive(remote);
    const next = clock.now();
    expect(compareCodePoints(next, remote)).toBeGreaterThan(0);
    expect(parseHlc(next)).toEqual({ wallMs: 50_000, counter: 8, nodeId: "n1" });
    // An older remote stamp does not move the clock back.
    clock.receive(formatHlc({ wallMs: 10, counter: 0, nodeId: "n3" }));
    expect(parseHlc(clock.now())).toEqual({ wallMs: 50_000, counter: 9, nodeId: "n1" });
    expect(clock.peek()).toBe(formatHlc({ wallMs: 50_000, counter: 9, nodeId: "n1" }));
  });

  test("an empty node id is refused", () => {
    expect(() => new HybridLogicalClock("")).toThrow(InvalidHlcError);
  });
});

describe("ordering helpers", () => {
  test("compareCodePoints agrees with UTF-8 byte order where UTF-16 order does not", () => {
    const samples = ["a", "b", "é", "\uFF5E", "\u{1F600}", "\u{10FFFF}", "", "ab", "\uE000"];
    for (const x of samples) {
      for (const y of samples) {
        expect(Math.sign(compareCodePoints(x, y))).toBe(Math.sign(Buffer.compare(Buffer.from(x), Buffer.from(y))));
      }
    }
    expect("\u{1F600}" < "\uFF5E").toBe(true); // UTF-16 order, which would be wrong here
    expect(compareCodePoints("\u{1F600}", "\uFF5E")).toBeGreaterThan(0);
  });

  test("compareVersions: higher HLC wins, then higher writer", () => {
    const h1 = formatHlc({ wallMs: 1, counter: 0, nodeId: "a" });
    const h2 = formatHlc({ wallMs: 2, counter: 0, nodeId: "a" });
    expect(compareVersions({ hlc: h2, writer: "a" }, { hlc: h1, writer: "z" })).toBeGreaterThan(0);
    expect(compareVersions({ hlc: h1, writer: "b" }, { hlc: h1, writer: "a" })).toBeGreaterThan(0);
    expect(compareVersions({ hlc: h1, writer: "a" }, { hlc: h1, writer: "a" })).toBe(0);
  });
});
