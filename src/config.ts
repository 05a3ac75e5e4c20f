/**
 * Every environment variable the node reads, parsed once into one typed object.
 *
 * Unlike the original, nothing falls back silently: a bad value throws ConfigError naming the
 * variable, the value (never the secret) and what is accepted, and main() exits 1 with that line.
 */
import { hostname as osHostname } from "node:os";
import { ConfigError } from "./errors.ts";
import { InvalidBase64Error, decodeStrictBase64 } from "./identity/index.ts";
import { type LogFilter, type LogFormat, LogFilterError, parseLogFilter } from "./log.ts";

export type DiscoveryMode = "kubernetes" | "mdns" | "static";
export type SyncMode = "LatestOnly" | "FullHistory";

export interface StaticPeerAddress {
  /** The peer's node id when the entry names it (`name@host:port`); learned at connect time otherwise. */
  name?: string;
  host: string;
  brokerPort: number;
  /** The entry as written, for messages. */
  entry: string;
}

export interface Config {
  /** Raw bytes of the base64 formation secret: the seed of every key. */
  formationSecret: Uint8Array;
  hostname: string;
  discovery: DiscoveryMode;
  staticPeers: StaticPeerAddress[];
  dataDir: string;
  broker: {
    port: number;
    bindAddress: string;
    token?: string;
    maxBodyBytes: number;
    /** A WebSocket client whose unsent backlog exceeds this is closed (it reads too slowly). */
    wsMaxBufferedBytes: number;
  };
  sync: {
    /** First UDP port of the ICE range (`PEAT_IROH_BIND_PORT`). */
    port: number;
    portRangeSize: number;
    /** STUN/TURN servers, as node-datachannel ICE server URLs. */
    iceServers: string[];
    /** Local address for ICE host candidates; unset offers every interface. */
    bindAddress?: string;
    /** One UDP port shared by every peer connection (true), or one port per connection from the range. */
    udpMux: boolean;
    intervalSecs: number;
    /** Pace (ms) of usrsctp's timer thread while the transport is idle; 10: usrsctp's own. See src/transport/sctp-timer.ts. */
    sctpIdlePaceMs: number;
  };
  compaction: {
    enabled: boolean;
    intervalSecs: number;
    thresholdBytes: number;
    /** Undefined: derive from the LatestOnly collections. */
    collections?: string[];
  };
  store: {
    cacheDocs: number;
    tombstoneTtlSecs: number;
    syncModes: Record<string, SyncMode>;
    collectionTtlSecs: Record<string, number>;
  };
  kubernetes: {
    namespace?: string;
    /** Where the service-account token, CA and namespace files are (default: the in-pod mount). */
    serviceAccountDir?: string;
    labelSelector: string;
    apiVersion: "discovery.k8s.io/v1" | "discovery.k8s.io/v1beta1";
  };
  log: {
    filterSpec: string;
    filter: LogFilter;
    format: LogFormat;
  };
}

export type Env = Record<string, string | undefined>;

/** Each variable with its default and what it means; the README's table is generated from the same facts. */
export const DEFAULTS = {
  HOSTNAME: "peat-mesh-0",
  PEAT_DISCOVERY: "kubernetes",
  PEAT_DATA_DIR: "/data",
  PEAT_BROKER_PORT: 8081,
  PEAT_BROKER_BIND: "0.0.0.0",
  PEAT_BROKER_MAX_BODY_BYTES: 1024 * 1024,
  PEAT_WS_MAX_BUFFERED_BYTES: 1024 * 1024,
  PEAT_IROH_BIND_PORT: 11204,
  PEAT_SYNC_PORT_RANGE: 16,
  PEAT_SYNC_INTERVAL_SECS: 5,
  PEAT_COMPACTION_INTERVAL_SECS: 300,
  PEAT_COMPACTION_THRESHOLD_BYTES: 65536,
  PEAT_STORE_CACHE_DOCS: 1000,
  PEAT_TOMBSTONE_TTL_SECS: 7 * 24 * 3600,
  PEAT_K8S_LABEL_SELECTOR: "app=peat-mesh",
  PEAT_K8S_API_VERSION: "discovery.k8s.io/v1",
  RUST_LOG: "info,peat_mesh=debug",
  PEAT_LOG_FORMAT: "text",
} as const;

const MIN_SECRET_BYTES = 16;
const MIN_COMPACTION_INTERVAL_SECS = 10;
const NAME_PATTERN = /^[A-Za-z0-9_.-]{1,128}$/;

function shown(value: string): string {
  return JSON.stringify(value);
}

/** The first set variable among `names` (an alias list), with the name it was found under. */
function pick(env: Env, names: string[]): { name: string; value: string } | undefined {
  for (const name of names) {
    const value = env[name];
    if (value !== undefined) return { name, value };
  }
  return undefined;
}

function integer(env: Env, names: string[], fallback: number, min: number, max: number, accepted?: string): number {
  const found = pick(env, names);
  if (!found) return fallback;
  const text = found.value.trim();
  const value = /^[0-9]+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(found.name, shown(found.value), accepted ?? `an integer from ${min} to ${max}`);
  }
  return value;
}

function boolean(env: Env, name: string, fallback: boolean): boolean {
  const raw = env[name];
  if (raw === undefined) return fallback;
  const value = raw.trim().toLowerCase();
  if (["true", "1", "yes", "on"].includes(value)) return true;
  if (["false", "0", "no", "off"].includes(value)) return false;
  throw new ConfigError(name, shown(raw), "true, false, 1, 0, yes, no, on or off");
}

function list(raw: string | undefined): string[] {
  if (raw === undefined) return [];
  return raw
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

function parseSecret(env: Env): Uint8Array {
  const raw = env.PEAT_FORMATION_SECRET;
  const accepted = `standard padded base64 of at least ${MIN_SECRET_BYTES} bytes (generate one with: openssl rand -base64 32)`;
  if (raw === undefined || raw.trim() === "") {
    throw new ConfigError("PEAT_FORMATION_SECRET", raw === undefined ? "(unset)" : "(empty)", `required, ${accepted}`);
  }
  const redacted = `(redacted, ${raw.length} characters)`;
  let bytes: Uint8Array;
  try {
    bytes = decodeStrictBase64(raw);
  } catch (err) {
    if (err instanceof InvalidBase64Error) {
      throw new ConfigError("PEAT_FORMATION_SECRET", redacted, `${accepted} (${err.message})`);
    }
    throw err;
  }
  if (bytes.length < MIN_SECRET_BYTES) {
    throw new ConfigError(
      "PEAT_FORMATION_SECRET",
      `(redacted, decodes to ${bytes.length} bytes)`,
      `${accepted} (too short)`,
    );
  }
  return bytes;
}

const HOSTNAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$/;

/**
 * Kubernetes and Docker set HOSTNAME; a shell does not export it. Falling back to the machine's
 * name rather than a constant keeps nodes on one LAN from all claiming to be `peat-mesh-0`.
 */
function parseHostname(env: Env, systemHostname: () => string | undefined): string {
  const raw = env.HOSTNAME;
  if (raw === undefined) {
    const system = systemHostname();
    return system && HOSTNAME_PATTERN.test(system) ? system : DEFAULTS.HOSTNAME;
  }
  const value = raw.trim();
  if (!HOSTNAME_PATTERN.test(value)) {
    throw new ConfigError(
      "HOSTNAME",
      shown(raw),
      "1-253 characters of letters, digits, '-', '_' and '.', starting with a letter or digit",
    );
  }
  return value;
}

function parseDiscovery(env: Env): DiscoveryMode {
  const raw = env.PEAT_DISCOVERY;
  if (raw === undefined) return DEFAULTS.PEAT_DISCOVERY;
  switch (raw.trim()) {
    case "kubernetes":
    case "k8s":
      return "kubernetes";
    case "mdns":
      return "mdns";
    case "static":
      return "static";
    default:
      throw new ConfigError("PEAT_DISCOVERY", shown(raw), "one of kubernetes, k8s, mdns, static");
  }
}

/** `host:port`, `name@host:port`, `[v6]:port`, `name@[v6]:port`. */
export function parseStaticPeer(entry: string): StaticPeerAddress | undefined {
  const match = /^(?:([A-Za-z0-9][A-Za-z0-9_.-]*)@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$/.exec(entry);
  if (!match) return undefined;
  const [, name, rawHost, rawPort] = match;
  const port = Number(rawPort);
  if (!rawHost || port < 1 || port > 65535) return undefined;
  const host = rawHost.startsWith("[") ? rawHost.slice(1, -1) : rawHost;
  if (host.startsWith("-") || host.endsWith("-") || host.includes("..")) return undefined;
  return name ? { name, host, brokerPort: port, entry } : { host, brokerPort: port, entry };
}

function parseStaticPeers(env: Env): StaticPeerAddress[] {
  const peers: StaticPeerAddress[] = [];
  for (const entry of list(env.PEAT_STATIC_PEERS)) {
    const peer = parseStaticPeer(entry);
    if (!peer) {
      throw new ConfigError(
        "PEAT_STATIC_PEERS",
        `entry ${shown(entry)}`,
        "comma-separated host:broker_port or name@host:broker_port (IPv6 as [addr]:port), port 1-65535",
      );
    }
    peers.push(peer);
  }
  return peers;
}

/** STUN and TURN server URLs as libdatachannel takes them (RFC 7064/7065 forms, credentials inline). */
function parseIceServers(env: Env): string[] {
  const found = pick(env, ["PEAT_IROH_RELAY_URLS", "PEAT_RELAY_URLS"]);
  if (!found) return [];
  const servers: string[] = [];
  for (const url of list(found.value)) {
    if (!/^(stun|stuns|turn|turns):(?:[^@\s]+@)?[A-Za-z0-9.:[\]-]+(?::[0-9]{1,5})?(?:\?transport=(udp|tcp))?$/.test(url)) {
      throw new ConfigError(
        found.name,
        `entry ${shown(url)}`,
        "comma-separated ICE server URLs: stun:host[:port] or turn[s]:user:password@host[:port][?transport=udp|tcp]",
      );
    }
    servers.push(url);
  }
  return servers;
}

function parseCollections(env: Env, name: string): string[] | undefined {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return undefined;
  const names = list(raw);
  for (const c of names) {
    if (!NAME_PATTERN.test(c)) throw new ConfigError(name, `entry ${shown(c)}`, "collection names matching [A-Za-z0-9_.-]{1,128}");
  }
  return names;
}

/** `tracks=LatestOnly,alerts=FullHistory` */
function parseSyncModes(env: Env): Record<string, SyncMode> {
  const modes: Record<string, SyncMode> = {};
  for (const entry of list(env.PEAT_SYNC_MODES)) {
    const [collection, mode] = entry.split("=").map((s) => s.trim());
    if (!collection || !NAME_PATTERN.test(collection) || (mode !== "LatestOnly" && mode !== "FullHistory")) {
      throw new ConfigError("PEAT_SYNC_MODES", `entry ${shown(entry)}`, "comma-separated collection=LatestOnly|FullHistory");
    }
    modes[collection] = mode;
  }
  return modes;
}

/** `beacons=600,tracks=3600`: a default document lifetime per collection, in seconds. */
function parseCollectionTtls(env: Env): Record<string, number> {
  const ttls: Record<string, number> = {};
  for (const entry of list(env.PEAT_COLLECTION_TTL_SECS)) {
    const [collection, secs] = entry.split("=").map((s) => s.trim());
    const value = secs && /^[0-9]+$/.test(secs) ? Number(secs) : Number.NaN;
    if (!collection || !NAME_PATTERN.test(collection) || !Number.isSafeInteger(value) || value < 1) {
      throw new ConfigError("PEAT_COLLECTION_TTL_SECS", `entry ${shown(entry)}`, "comma-separated collection=seconds (a positive integer)");
    }
    ttls[collection] = value;
  }
  return ttls;
}

function parseLog(env: Env): Config["log"] {
  const found = pick(env, ["RUST_LOG", "PEAT_LOG"]);
  const filterSpec = found?.value ?? DEFAULTS.RUST_LOG;
  let filter: LogFilter;
  try {
    filter = parseLogFilter(filterSpec);
  } catch (err) {
    if (err instanceof LogFilterError) {
      throw new ConfigError(
        found?.name ?? "RUST_LOG",
        shown(filterSpec),
        `comma-separated directives (${err.message}): level or target=level, levels error|warn|info|debug|trace|off`,
      );
    }
    throw err;
  }
  const rawFormat = env.PEAT_LOG_FORMAT;
  const format = rawFormat === undefined ? DEFAULTS.PEAT_LOG_FORMAT : rawFormat.trim();
  if (format !== "text" && format !== "json") {
    throw new ConfigError("PEAT_LOG_FORMAT", shown(rawFormat ?? ""), "text or json");
  }
  return { filterSpec, filter, format };
}

function parseBrokerToken(env: Env): string | undefined {
  const raw = env.PEAT_BROKER_TOKEN;
  if (raw === undefined || raw === "") return undefined;
  if (raw.length < 16 || /\s/.test(raw)) {
    throw new ConfigError(
      "PEAT_BROKER_TOKEN",
      `(redacted, ${raw.length} characters)`,
      "at least 16 characters with no whitespace, or unset to disable broker authentication",
    );
  }
  return raw;
}

function parseDataDir(env: Env): string {
  const raw = env.PEAT_DATA_DIR;
  if (raw === undefined) return DEFAULTS.PEAT_DATA_DIR;
  if (raw.trim() === "" || raw.includes("\0")) throw new ConfigError("PEAT_DATA_DIR", shown(raw), "a directory path");
  return raw;
}

function parseBindAddress(env: Env, name: string, fallback: string): string {
  const raw = env[name];
  if (raw === undefined) return fallback;
  const value = raw.trim();
  const ipv4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;
  if (!ipv4.test(value) && !/^[0-9A-Fa-f:]+$/.test(value)) {
    throw new ConfigError(name, shown(raw), "an IPv4 or IPv6 address, e.g. 0.0.0.0 or 127.0.0.1");
  }
  return value;
}

export interface SystemFacts {
  /** The machine's host name, used when HOSTNAME is not in the environment. */
  hostname: () => string | undefined;
}

export function loadConfig(env: Env = process.env, system: SystemFacts = { hostname: () => osHostname() }): Config {
  // Order matters only for which error is reported first: the secret, as in the original.
  const formationSecret = parseSecret(env);
  const hostname = parseHostname(env, system.hostname);
  const discovery = parseDiscovery(env);
  const portRangeSize = integer(env, ["PEAT_SYNC_PORT_RANGE"], DEFAULTS.PEAT_SYNC_PORT_RANGE, 1, 1024);
  const syncPort = integer(
    env,
    ["PEAT_IROH_BIND_PORT", "PEAT_SYNC_PORT"],
    DEFAULTS.PEAT_IROH_BIND_PORT,
    1,
    65536 - portRangeSize,
    `an integer from 1 to ${65536 - portRangeSize} (the UDP range of ${portRangeSize} ports starting there must fit below 65536)`,
  );
  const apiVersion = env.PEAT_K8S_API_VERSION?.trim() ?? DEFAULTS.PEAT_K8S_API_VERSION;
  if (apiVersion !== "discovery.k8s.io/v1" && apiVersion !== "discovery.k8s.io/v1beta1") {
    throw new ConfigError("PEAT_K8S_API_VERSION", shown(apiVersion), "discovery.k8s.io/v1 or discovery.k8s.io/v1beta1");
  }
  const labelSelector = env.PEAT_K8S_LABEL_SELECTOR?.trim() || DEFAULTS.PEAT_K8S_LABEL_SELECTOR;
  if (!/^[A-Za-z0-9_./=!,() -]+$/.test(labelSelector)) {
    throw new ConfigError("PEAT_K8S_LABEL_SELECTOR", shown(labelSelector), "a Kubernetes label selector, e.g. app=peat-mesh");
  }
  const namespace = env.PEAT_K8S_NAMESPACE?.trim();
  if (namespace !== undefined && namespace !== "" && !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(namespace)) {
    throw new ConfigError("PEAT_K8S_NAMESPACE", shown(namespace), "a Kubernetes namespace name (RFC 1123 label)");
  }
  const compactionCollections = parseCollections(env, "PEAT_COMPACTION_COLLECTIONS");
  const token = parseBrokerToken(env);

  return {
    formationSecret,
    hostname,
    discovery,
    staticPeers: parseStaticPeers(env),
    dataDir: parseDataDir(env),
    broker: {
      port: integer(env, ["PEAT_BROKER_PORT"], DEFAULTS.PEAT_BROKER_PORT, 0, 65535, "an integer from 0 to 65535 (0 picks a free port)"),
      bindAddress: parseBindAddress(env, "PEAT_BROKER_BIND", DEFAULTS.PEAT_BROKER_BIND),
      ...(token ? { token } : {}),
      maxBodyBytes: integer(env, ["PEAT_BROKER_MAX_BODY_BYTES"], DEFAULTS.PEAT_BROKER_MAX_BODY_BYTES, 1024, 64 * 1024 * 1024),
      wsMaxBufferedBytes: integer(env, ["PEAT_WS_MAX_BUFFERED_BYTES"], DEFAULTS.PEAT_WS_MAX_BUFFERED_BYTES, 16 * 1024, 256 * 1024 * 1024),
    },
    sync: {
      port: syncPort,
      portRangeSize,
      iceServers: parseIceServers(env),
      ...(env.PEAT_SYNC_BIND !== undefined ? { bindAddress: parseBindAddress(env, "PEAT_SYNC_BIND", "") } : {}),
      udpMux: boolean(env, "PEAT_SYNC_UDP_MUX", true),
      intervalSecs: integer(env, ["PEAT_SYNC_INTERVAL_SECS"], DEFAULTS.PEAT_SYNC_INTERVAL_SECS, 1, 3600),
      sctpIdlePaceMs: integer(env, ["PEAT_SCTP_IDLE_PACE_MS"], 100, 10, 1000, "an integer from 10 to 1000 (milliseconds; 10 turns it off)"),
    },
    compaction: {
      enabled: boolean(env, "PEAT_COMPACTION_ENABLED", false),
      intervalSecs: integer(
        env,
        ["PEAT_COMPACTION_INTERVAL_SECS"],
        DEFAULTS.PEAT_COMPACTION_INTERVAL_SECS,
        MIN_COMPACTION_INTERVAL_SECS,
        7 * 24 * 3600,
        `an integer number of seconds from ${MIN_COMPACTION_INTERVAL_SECS} (the minimum) to 604800`,
      ),
      thresholdBytes: integer(env, ["PEAT_COMPACTION_THRESHOLD_BYTES"], DEFAULTS.PEAT_COMPACTION_THRESHOLD_BYTES, 0, 2 ** 40),
      ...(compactionCollections ? { collections: compactionCollections } : {}),
    },
    store: {
      cacheDocs: integer(env, ["PEAT_STORE_CACHE_DOCS"], DEFAULTS.PEAT_STORE_CACHE_DOCS, 1, 1_000_000),
      tombstoneTtlSecs: integer(env, ["PEAT_TOMBSTONE_TTL_SECS"], DEFAULTS.PEAT_TOMBSTONE_TTL_SECS, 60, 10 * 365 * 24 * 3600),
      syncModes: parseSyncModes(env),
      collectionTtlSecs: parseCollectionTtls(env),
    },
    kubernetes: {
      ...(namespace ? { namespace } : {}),
      ...(env.PEAT_K8S_SERVICE_ACCOUNT_DIR?.trim() ? { serviceAccountDir: env.PEAT_K8S_SERVICE_ACCOUNT_DIR.trim() } : {}),
      labelSelector,
      apiVersion,
    },
    log: parseLog(env),
  };
}
