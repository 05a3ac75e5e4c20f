/**
 * Structured logging, one line per event on stdout.
 *
 * Text: `2026-03-28T22:03:39.123Z  INFO peat_mesh_node: Mesh started node_id=peat-mesh-0 device_id=...`
 * (the shape of tracing-subscriber's default output, so the seed's grep recipes keep working).
 * JSON: one object per line with `timestamp`, `level`, `target`, `message` and the fields.
 *
 * The filter uses tracing's EnvFilter directive syntax (`RUST_LOG=info,peat_mesh=debug`): a bare
 * level sets the default, `target=level` applies to that target and its `::` children, and the
 * longest matching target wins.
 */

export const LEVELS = ["error", "warn", "info", "debug", "trace"] as const;
export type Level = (typeof LEVELS)[number];
export type LogFormat = "text" | "json";
export type Fields = Record<string, unknown>;

const SEVERITY: Record<Level | "off", number> = { off: 0, error: 1, warn: 2, info: 3, debug: 4, trace: 5 };

export interface LogFilter {
  defaultLevel: Level | "off";
  directives: { target: string; level: Level | "off" }[];
}

export class LogFilterError extends Error {
  override readonly name = "LogFilterError";
}

function parseLevel(word: string): Level | "off" | undefined {
  const lower = word.trim().toLowerCase();
  if (lower === "off") return "off";
  if (lower === "warning") return "warn";
  return (LEVELS as readonly string[]).includes(lower) ? (lower as Level) : undefined;
}

/** Parses `info,peat_mesh=debug,peat_mesh::sync=trace`. Throws LogFilterError naming the bad directive. */
export function parseLogFilter(spec: string): LogFilter {
  const filter: LogFilter = { defaultLevel: "info", directives: [] };
  for (const raw of spec.split(",")) {
    const directive = raw.trim();
    if (directive === "") continue;
    const eq = directive.indexOf("=");
    if (eq < 0) {
      const level = parseLevel(directive);
      if (level) filter.defaultLevel = level;
      // A bare word that is not a level is a target at trace, as in EnvFilter.
      else if (/^[A-Za-z0-9_:.-]+$/.test(directive)) filter.directives.push({ target: directive, level: "trace" });
      else throw new LogFilterError(`bad log directive '${directive}'`);
      continue;
    }
    const target = directive.slice(0, eq).trim();
    const level = parseLevel(directive.slice(eq + 1));
    if (!target || !level || !/^[A-Za-z0-9_:.-]+$/.test(target)) {
      throw new LogFilterError(`bad log directive '${directive}'`);
    }
    filter.directives.push({ target, level });
  }
  filter.directives.sort((a, b) => b.target.length - a.target.length);
  return filter;
}

function levelFor(filter: LogFilter, target: string): Level | "off" {
  for (const d of filter.directives) {
    if (target === d.target || target.startsWith(`${d.target}::`)) return d.level;
  }
  return filter.defaultLevel;
}

export interface LogSink {
  write(line: string): void;
}

export const stdoutSink: LogSink = {
  write(line) {
    process.stdout.write(line);
  },
};

export interface LoggerOptions {
  filter?: LogFilter;
  format?: LogFormat;
  color?: boolean;
  sink?: LogSink;
  now?: () => Date;
}

const COLORS: Record<Level, string> = {
  error: "\x1b[31m",
  warn: "\x1b[33m",
  info: "\x1b[32m",
  debug: "\x1b[34m",
  trace: "\x1b[35m",
};

/** True when stdout is a terminal and NO_COLOR is unset or empty. */
export function colorWanted(env: Record<string, string | undefined> = process.env): boolean {
  return Boolean(process.stdout.isTTY) && !env.NO_COLOR;
}

function formatValue(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (typeof value === "string") return /^[^\s"=]*$/.test(value) && value !== "" ? value : JSON.stringify(value);
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") return String(value);
  if (value instanceof Error) return JSON.stringify(value.message);
  if (Array.isArray(value)) {
    return `[${value.map((v) => (typeof v === "string" ? JSON.stringify(v) : formatValue(v))).join(", ")}]`;
  }
  return JSON.stringify(value);
}

function jsonValue(value: unknown): unknown {
  if (value instanceof Error) return value.message;
  if (typeof value === "bigint") return value.toString();
  return value;
}

/** Writes a value that the text format should print bare, like tracing's `%value`: `addresses=[10.0.0.1:11204]`. */
export class Display {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
  toJSON(): string {
    return this.text;
  }
}

export class Logger {
  readonly target: string;
  private readonly options: Required<Omit<LoggerOptions, "filter">> & { filter: LogFilter };
  private readonly cache = new Map<string, number>();

  constructor(target: string, options: LoggerOptions = {}) {
    this.target = target;
    this.options = {
      filter: options.filter ?? parseLogFilter("info"),
      format: options.format ?? "text",
      color: options.color ?? false,
      sink: options.sink ?? stdoutSink,
      now: options.now ?? (() => new Date()),
    };
  }

  /** A logger for a sub-target sharing this one's filter, format and sink. */
  child(target: string): Logger {
    return new Logger(target, this.options);
  }

  enabled(level: Level): boolean {
    let max = this.cache.get(this.target);
    if (max === undefined) {
      max = SEVERITY[levelFor(this.options.filter, this.target)];
      this.cache.set(this.target, max);
    }
    return SEVERITY[level] <= max;
  }

  error(message: string, fields?: Fields): void {
    this.log("error", message, fields);
  }
  warn(message: string, fields?: Fields): void {
    this.log("warn", message, fields);
  }
  info(message: string, fields?: Fields): void {
    this.log("info", message, fields);
  }
  debug(message: string, fields?: Fields): void {
    this.log("debug", message, fields);
  }
  trace(message: string, fields?: Fields): void {
    this.log("trace", message, fields);
  }

  log(level: Level, message: string, fields?: Fields): void {
    if (!this.enabled(level)) return;
    const timestamp = this.options.now().toISOString();
    if (this.options.format === "json") {
      const record: Record<string, unknown> = { timestamp, level: level.toUpperCase(), target: this.target, message };
      for (const [k, v] of Object.entries(fields ?? {})) if (v !== undefined) record[k] = jsonValue(v);
      this.options.sink.write(`${JSON.stringify(record)}\n`);
      return;
    }
    const label = level.toUpperCase().padStart(5);
    const shownLevel = this.options.color ? `${COLORS[level]}${label}\x1b[0m` : label;
    let line = `${timestamp} ${shownLevel} ${this.target}: ${message}`;
    for (const [k, v] of Object.entries(fields ?? {})) {
      if (v === undefined) continue;
      line += ` ${k}=${v instanceof Display ? v.text : formatValue(v)}`;
    }
    this.options.sink.write(`${line}\n`);
  }
}

/** A logger that drops everything; for unit tests of components that take a logger. */
export function silentLogger(target = "test"): Logger {
  return new Logger(target, { filter: parseLogFilter("off"), sink: { write() {} } });
}
