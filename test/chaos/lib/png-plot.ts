/**
 * A small dependency-free PNG line-plot writer: an RGB raster with lines, rectangles and text in a
 * built-in 5×7 bitmap font, stacked plot panels with axes, "nice" tick labels, a legend and
 * vertical event markers, encoded as an 8-bit truecolour PNG (filter 0 rows, `node:zlib` deflate,
 * CRC-32 per chunk). Enough to put a soak curve in a Markdown document without a plotting package.
 */
import { deflateSync } from "node:zlib";

export type Rgb = readonly [number, number, number];

export const COLORS = {
  white: [255, 255, 255],
  black: [0, 0, 0],
  grid: [226, 226, 226],
  axis: [60, 60, 60],
  text: [30, 30, 30],
  blue: [31, 119, 180],
  orange: [255, 127, 14],
  green: [44, 160, 44],
  red: [214, 39, 40],
  purple: [148, 103, 189],
  grey: [150, 150, 150],
  shade: [238, 238, 238],
} as const satisfies Record<string, Rgb>;

// ---- font ---------------------------------------------------------------------------------------

/** 5×7 glyphs, one string of 5 cells per row ('#' = ink). Lower case is drawn as upper case. */
const GLYPHS: Record<string, readonly string[]> = {
  " ": [".....", ".....", ".....", ".....", ".....", ".....", "....."],
  "0": [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
  "1": ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
  "2": [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
  "3": ["#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."],
  "4": ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
  "5": ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
  "6": ["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."],
  "7": ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
  "8": [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
  "9": [".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."],
  A: [".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"],
  B: ["####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."],
  C: [".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."],
  D: ["###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."],
  E: ["#####", "#....", "#....", "####.", "#....", "#....", "#####"],
  F: ["#####", "#....", "#....", "####.", "#....", "#....", "#...."],
  G: [".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"],
  H: ["#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"],
  I: [".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."],
  J: ["..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."],
  K: ["#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"],
  L: ["#....", "#....", "#....", "#....", "#....", "#....", "#####"],
  M: ["#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"],
  N: ["#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"],
  O: [".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
  P: ["####.", "#...#", "#...#", "####.", "#....", "#....", "#...."],
  Q: [".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"],
  R: ["####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"],
  S: [".####", "#....", "#....", ".###.", "....#", "....#", "####."],
  T: ["#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."],
  U: ["#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
  V: ["#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."],
  W: ["#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."],
  X: ["#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"],
  Y: ["#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."],
  Z: ["#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"],
  ".": [".....", ".....", ".....", ".....", ".....", ".##..", ".##.."],
  ",": [".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."],
  ":": [".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."],
  ";": [".....", ".##..", ".##..", ".....", ".##..", "..#..", ".#..."],
  "[": [".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###."],
  "]": [".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###."],
  "*": [".....", "..#..", "#.#.#", ".###.", "#.#.#", "..#..", "....."],
  "!": ["..#..", "..#..", "..#..", "..#..", "..#..", ".....", "..#.."],
  "-": [".....", ".....", ".....", "#####", ".....", ".....", "....."],
  "+": [".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."],
  "/": [".....", "....#", "...#.", "..#..", ".#...", "#....", "....."],
  "(": ["...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."],
  ")": [".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."],
  "%": ["##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"],
  "=": [".....", ".....", "#####", ".....", "#####", ".....", "....."],
  "<": ["...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#."],
  ">": [".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#..."],
  _: [".....", ".....", ".....", ".....", ".....", ".....", "#####"],
  "'": ["..#..", "..#..", ".#...", ".....", ".....", ".....", "....."],
  "|": ["..#..", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."],
  "#": [".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."],
  "?": [".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."],
};

const GLYPH_W = 5;
const GLYPH_H = 7;

function glyph(ch: string): readonly string[] {
  return GLYPHS[ch] ?? GLYPHS[ch.toUpperCase()] ?? (GLYPHS["?"] as readonly string[]);
}

// ---- raster -------------------------------------------------------------------------------------

export class Raster {
  readonly data: Uint8Array;

  constructor(
    readonly width: number,
    readonly height: number,
    background: Rgb = COLORS.white,
  ) {
    if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
      throw new RangeError(`raster size must be positive integers, got ${width}×${height}`);
    }
    this.data = new Uint8Array(width * height * 3);
    for (let i = 0; i < width * height; i++) this.data.set(background, i * 3);
  }

  setPixel(x: number, y: number, c: Rgb): void {
    x = Math.round(x);
    y = Math.round(y);
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    this.data.set(c, (y * this.width + x) * 3);
  }

  getPixel(x: number, y: number): Rgb {
    const i = (y * this.width + x) * 3;
    return [this.data[i] as number, this.data[i + 1] as number, this.data[i + 2] as number];
  }

  fillRect(x: number, y: number, w: number, h: number, c: Rgb): void {
    const x0 = Math.max(0, Math.round(x));
    const y0 = Math.max(0, Math.round(y));
    const x1 = Math.min(this.width, Math.round(x + w));
    const y1 = Math.min(this.height, Math.round(y + h));
    for (let yy = y0; yy < y1; yy++) for (let xx = x0; xx < x1; xx++) this.data.set(c, (yy * this.width + xx) * 3);
  }

  /** A line of `thickness` pixels; `dash` = [on, off] lengths in pixels for a dashed line. */
  line(x0: number, y0: number, x1: number, y1: number, c: Rgb, thickness = 1, dash?: readonly [number, number]): void {
    const dx = x1 - x0;
    const dy = y1 - y0;
    const steps = Math.max(1, Math.ceil(Math.max(Math.abs(dx), Math.abs(dy))));
    const half = (thickness - 1) / 2;
    for (let i = 0; i <= steps; i++) {
      if (dash && i % (dash[0] + dash[1]) >= dash[0]) continue;
      const x = x0 + (dx * i) / steps;
      const y = y0 + (dy * i) / steps;
      if (thickness <= 1) this.setPixel(x, y, c);
      else this.fillRect(Math.round(x - half), Math.round(y - half), thickness, thickness, c);
    }
  }

  /** Text with its top-left corner at (x, y); `scale` multiplies the 5×7 cells. */
  text(x: number, y: number, s: string, c: Rgb, scale = 1): void {
    let cx = Math.round(x);
    for (const ch of s) {
      const rows = glyph(ch);
      for (let r = 0; r < GLYPH_H; r++) {
        const row = rows[r] as string;
        for (let col = 0; col < GLYPH_W; col++) {
          if (row[col] === "#") this.fillRect(cx + col * scale, Math.round(y) + r * scale, scale, scale, c);
        }
      }
      cx += (GLYPH_W + 1) * scale;
    }
  }

  /** Text rotated 90° counter-clockwise (reads bottom to top), its bounding box's top-left at (x, y). */
  textVertical(x: number, y: number, s: string, c: Rgb, scale = 1): void {
    const len = textWidth(s, scale);
    let offset = 0;
    for (const ch of s) {
      const rows = glyph(ch);
      for (let r = 0; r < GLYPH_H; r++) {
        const row = rows[r] as string;
        for (let col = 0; col < GLYPH_W; col++) {
          if (row[col] !== "#") continue;
          // (col, r) in the glyph → x grows with r, y shrinks with col along the string.
          this.fillRect(Math.round(x) + r * scale, Math.round(y) + len - (offset + col + 1) * scale, scale, scale, c);
        }
      }
      offset += GLYPH_W + 1;
    }
  }
}

export function textWidth(s: string, scale = 1): number {
  return s.length === 0 ? 0 : ([...s].length * (GLYPH_W + 1) - 1) * scale;
}

export const textHeight = (scale = 1): number => GLYPH_H * scale;

// ---- PNG encoding -------------------------------------------------------------------------------

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (ISO 3309, as PNG uses it) over `bytes`. */
export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = (CRC_TABLE[(c ^ b) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

export const PNG_SIGNATURE = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function chunk(type: string, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + payload.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, payload.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(payload, 8);
  view.setUint32(8 + payload.length, crc32(out.subarray(4, 8 + payload.length)));
  return out;
}

/** The raster as a PNG file: 8-bit RGB, no interlace, every row with filter type 0. */
export function encodePng(r: Raster): Uint8Array {
  const ihdr = new Uint8Array(13);
  const view = new DataView(ihdr.buffer);
  view.setUint32(0, r.width);
  view.setUint32(4, r.height);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: truecolour
  ihdr[10] = 0; // compression: deflate
  ihdr[11] = 0; // filter method 0
  ihdr[12] = 0; // no interlace
  const stride = r.width * 3;
  const raw = new Uint8Array(r.height * (stride + 1));
  for (let y = 0; y < r.height; y++) {
    raw[y * (stride + 1)] = 0;
    raw.set(r.data.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  }
  const parts = [PNG_SIGNATURE, chunk("IHDR", ihdr), chunk("IDAT", deflateSync(raw, { level: 9 })), chunk("IEND", new Uint8Array(0))];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// ---- plots --------------------------------------------------------------------------------------

/** A point with y = null breaks the line (e.g. a node that is down). */
export type Point = readonly [number, number | null];

export interface Series {
  label: string;
  color: Rgb;
  points: readonly Point[];
  thickness?: number;
  dash?: readonly [number, number];
}

export interface Marker {
  x: number;
  color: Rgb;
  dash?: readonly [number, number];
}

export interface Band {
  x0: number;
  x1: number;
  color: Rgb;
}

export interface Panel {
  title: string;
  yLabel: string;
  series: readonly Series[];
  /** Defaults to 0 (these plots are of non-negative quantities). */
  yMin?: number;
  /** Defaults to the data's maximum plus headroom. */
  yMax?: number;
  /** Logarithmic y axis (yMin must then be > 0; values ≤ 0 are not drawn). Ticks at 1, 2, 5 × 10^k. */
  yLog?: boolean;
  /** Plot height in pixels (defaults to the figure's panelHeight). */
  height?: number;
}

export interface LegendEntry {
  label: string;
  color: Rgb;
  dash?: readonly [number, number];
  /** Drawn as a filled box (for a band) instead of a line. */
  box?: boolean;
}

export interface Figure {
  title: string;
  xLabel: string;
  xMin: number;
  xMax: number;
  panels: readonly Panel[];
  /** Vertical lines drawn through every panel (flaps, for instance). */
  markers?: readonly Marker[];
  /** Shaded x ranges drawn behind every panel (a warm-up, for instance). */
  bands?: readonly Band[];
  /** Extra legend entries (for markers and bands) shown under the panels. */
  legend?: readonly LegendEntry[];
  width?: number;
  panelHeight?: number;
}

/** Ticks at 1, 2 or 5 × 10^k covering [min, max], about `target` of them. */
export function niceTicks(min: number, max: number, target = 6): { step: number; ticks: number[] } {
  if (!(max > min)) max = min + 1;
  const raw = (max - min) / Math.max(1, target);
  const pow = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * pow).find((s) => s >= raw) ?? 10 * pow;
  const ticks: number[] = [];
  for (let v = Math.ceil(min / step - 1e-9) * step; v <= max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return { step, ticks };
}

/** Ticks at 1, 2 and 5 × 10^k within [min, max] (min > 0), for a logarithmic axis. */
export function logTicks(min: number, max: number): number[] {
  const ticks: number[] = [];
  for (let k = Math.floor(Math.log10(min)); k <= Math.ceil(Math.log10(max)); k++) {
    for (const m of [1, 2, 5]) {
      const v = Number((m * 10 ** k).toPrecision(6));
      if (v >= min * (1 - 1e-9) && v <= max * (1 + 1e-9)) ticks.push(v);
    }
  }
  return ticks;
}

export function formatTick(v: number, step: number): string {
  const decimals = step >= 1 ? 0 : Math.min(6, Math.ceil(-Math.log10(step) - 1e-9));
  return v.toFixed(decimals);
}

const SCALE = 2; // text scale: 10×14 pixel glyphs

/** Renders the figure: a title, stacked panels sharing the x axis, each with its own legend. */
export function renderFigure(fig: Figure): Raster {
  const width = fig.width ?? 1200;
  const panelHeight = fig.panelHeight ?? 340;
  const left = 100;
  const right = 30;
  const titleH = 44;
  const panelGap = 70; // room for the panel title and the x tick labels
  const bottomLegend = fig.legend && fig.legend.length > 0 ? 40 : 0;
  const xAxisTitleH = 40;
  const heights = fig.panels.map((p) => p.height ?? panelHeight);
  const tops = heights.map((_, i) => titleH + heights.slice(0, i).reduce((a, h) => a + h + panelGap, 0) + 28);
  const height = titleH + heights.reduce((a, h) => a + h + panelGap, 0) + xAxisTitleH + bottomLegend;
  const r = new Raster(width, height);
  const plotW = width - left - right;
  const xSpan = fig.xMax - fig.xMin || 1;
  const px = (x: number) => left + ((x - fig.xMin) / xSpan) * plotW;

  r.text((width - textWidth(fig.title, SCALE + 1)) / 2, 10, fig.title, COLORS.text, SCALE + 1);
  const xTicks = niceTicks(fig.xMin, fig.xMax, 10);

  fig.panels.forEach((panel, i) => {
    const panelHeight = heights[i] as number;
    const top = tops[i] as number;
    const bottom = top + panelHeight;
    const log = panel.yLog === true;
    const values = panel.series.flatMap((s) =>
      s.points.map((p) => p[1]).filter((v): v is number => v !== null && Number.isFinite(v) && (!log || v > 0)),
    );
    const dataMax = values.length > 0 ? Math.max(...values) : 1;
    let yMin: number;
    let yMax: number;
    let yTicks: { step: number; ticks: number[] };
    if (log) {
      yMin = panel.yMin ?? 10 ** Math.floor(Math.log10(values.length > 0 ? Math.min(...values) : 1));
      yMax = panel.yMax ?? 10 ** Math.ceil(Math.log10(Math.max(dataMax, yMin * 10)));
      yTicks = { step: yMin < 1 ? yMin : 1, ticks: logTicks(yMin, yMax) };
    } else {
      yMin = panel.yMin ?? 0;
      const yMaxRaw = panel.yMax ?? (dataMax > yMin ? yMin + (dataMax - yMin) * 1.1 : yMin + 1);
      yTicks = niceTicks(yMin, yMaxRaw, 6);
      yMax = Math.max(yMaxRaw, yTicks.ticks.at(-1) ?? yMaxRaw);
    }
    const py = log
      ? (y: number) => bottom - ((Math.log10(y) - Math.log10(yMin)) / (Math.log10(yMax) - Math.log10(yMin) || 1)) * panelHeight
      : (y: number) => bottom - ((y - yMin) / (yMax - yMin || 1)) * panelHeight;

    // Panel title, bands, grid, markers, axes.
    r.text(left, top - 24, panel.title, COLORS.text, SCALE);
    for (const band of fig.bands ?? []) {
      const x0 = Math.max(left, px(band.x0));
      const x1 = Math.min(left + plotW, px(band.x1));
      if (x1 > x0) r.fillRect(x0, top, x1 - x0, panelHeight, band.color);
    }
    for (const t of yTicks.ticks) {
      const y = py(t);
      if (y < top - 0.5 || y > bottom + 0.5) continue;
      r.line(left, y, left + plotW, y, COLORS.grid);
      const label = log ? String(t) : formatTick(t, yTicks.step);
      r.text(left - 8 - textWidth(label, SCALE), y - textHeight(SCALE) / 2, label, COLORS.text, SCALE);
    }
    for (const t of xTicks.ticks) {
      const x = px(t);
      if (x < left - 0.5 || x > left + plotW + 0.5) continue;
      r.line(x, top, x, bottom, COLORS.grid);
      r.line(x, bottom, x, bottom + 5, COLORS.axis);
      const label = formatTick(t, xTicks.step);
      r.text(x - textWidth(label, SCALE) / 2, bottom + 9, label, COLORS.text, SCALE);
    }
    for (const m of fig.markers ?? []) {
      const x = px(m.x);
      if (x >= left && x <= left + plotW) r.line(x, top, x, bottom, m.color, 1, m.dash ?? [4, 4]);
    }
    r.line(left, top, left, bottom, COLORS.axis, 2);
    r.line(left, bottom, left + plotW, bottom, COLORS.axis, 2);
    r.textVertical(12, top + (panelHeight - textWidth(panel.yLabel, SCALE)) / 2, panel.yLabel, COLORS.text, SCALE);

    // Series, clipped to the panel.
    const clipY = (y: number) => Math.min(bottom, Math.max(top, y));
    for (const s of panel.series) {
      let prev: [number, number] | undefined;
      for (const [x, y] of s.points) {
        if (y === null || !Number.isFinite(y) || (log && y <= 0)) {
          prev = undefined;
          continue;
        }
        const cur: [number, number] = [px(x), clipY(py(y))];
        if (prev) r.line(prev[0], prev[1], cur[0], cur[1], s.color, s.thickness ?? 2, s.dash);
        else r.fillRect(cur[0] - 1, cur[1] - 1, 2, 2, s.color);
        prev = cur;
      }
    }

    // Legend, top right inside the panel.
    let lx = left + plotW - 10;
    const entries = [...panel.series].reverse();
    for (const s of entries) {
      const w = textWidth(s.label, SCALE);
      lx -= w;
      r.fillRect(lx - 34, top + 6, w + 40, 22, COLORS.white);
      r.line(lx - 30, top + 17, lx - 6, top + 17, s.color, 3, s.dash);
      r.text(lx, top + 10, s.label, COLORS.text, SCALE);
      lx -= 50;
    }
  });

  const axisY = titleH + heights.reduce((a, h) => a + h + panelGap, 0) + 10;
  r.text(left + (plotW - textWidth(fig.xLabel, SCALE)) / 2, axisY, fig.xLabel, COLORS.text, SCALE);
  if (bottomLegend > 0) {
    let lx = left;
    const ly = axisY + 32;
    for (const e of fig.legend ?? []) {
      if (e.box) {
        r.fillRect(lx, ly - 2, 24, 18, e.color);
        r.line(lx, ly - 2, lx + 24, ly - 2, COLORS.grey);
        r.line(lx, ly + 16, lx + 24, ly + 16, COLORS.grey);
      } else r.line(lx, ly + 7, lx + 24, ly + 7, e.color, 3, e.dash);
      r.text(lx + 30, ly, e.label, COLORS.text, SCALE);
      lx += 30 + textWidth(e.label, SCALE) + 40;
    }
  }
  return r;
}
