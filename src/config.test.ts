import { describe, expect, test } from "bun:test";
import { DEFAULTS, type Env, loadConfig, parseStaticPeer } from "./config.ts";
import { ConfigError } from "./errors.ts";

const SECRET = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const base: Env = { PEAT_FORMATION_SECRET: SECRET };

function configError(env: Env): ConfigError {
  try {
    loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error("expected a ConfigError");
}

describe("defaults", () => {
  test("only the secret set gives the seed's defaults", () => {
    const c = loadConfig(base, { hostname: () => undefined });
    expect(c.hostname).toBe("peat-mesh-0");
    expect(c.discovery).toBe("kubernetes");
    expect(c.dataDir).toBe("/data");
    expect(c.broker.port).toBe(8081);
    expect(c.broker.bindAddress).toBe("0.0.0.0");
    expect(c.broker.token).toBeUndefined();
    expect(c.broker.maxBodyBytes).toBe(1024 * 1024);
    expect(c.sync.port).toBe(11204);
    expect(c.sync.iceServers).toEqual([]);
    expect(c.sync.intervalSecs).toBe(5);
    expect(c.compaction).toEqual({ enabled: false, intervalSecs: 300, thresholdBytes: 65536 });
    expect(c.log.filterSpec).toBe("info,peat_mesh=debug");
    expect(c.log.format).toBe("text");
    expect(c.staticPeers).toEqual([]);
    expect(c.store.tombstoneTtlSecs).toBe(7 * 24 * 3600);
    expect(c.kubernetes.labelSelector).toBe(DEFAULTS.PEAT_K8S_LABEL_SELECTOR);
    expect(c.formationSecret.length).toBe(32);
  });
});

describe("parsing", () => {
  test("HOSTNAME unset falls back to the machine's name, then to peat-mesh-0", () => {
    expect(loadConfig(base, { hostname: () => "edge-box-7" }).hostname).toBe("edge-box-7");
    expect(loadConfig(base, { hostname: () => "bad name!" }).hostname).toBe("peat-mesh-0");
    expect(loadConfig({ ...base, HOSTNAME: "pod-3" }, { hostname: () => "edge-box-7" }).hostname).toBe("pod-3");
  });

  test("every variable of the seed's table is read", () => {
    const c = loadConfig({
      ...base,
      HOSTNAME: "edge-7",
      PEAT_DISCOVERY: "k8s",
      PEAT_DATA_DIR: "/var/lib/peat",
      PEAT_BROKER_PORT: "9000",
      PEAT_IROH_BIND_PORT: "12000",
      PEAT_IROH_RELAY_URLS: "stun:stun.example.org:3478, turn:user:pw@turn.example.org:3478?transport=udp",
      PEAT_COMPACTION_ENABLED: "true",
      PEAT_COMPACTION_INTERVAL_SECS: "60",
      PEAT_COMPACTION_THRESHOLD_BYTES: "16384",
      PEAT_COMPACTION_COLLECTIONS: "beacons, platforms",
      RUST_LOG: "debug",
    });
    expect(c.hostname).toBe("edge-7");
    expect(c.discovery).toBe("kubernetes");
    expect(c.dataDir).toBe("/var/lib/peat");
    expect(c.broker.port).toBe(9000);
    expect(c.sync.port).toBe(12000);
    expect(c.sync.iceServers).toEqual([
      "stun:stun.example.org:3478",
      "turn:user:pw@turn.example.org:3478?transport=udp",
    ]);
    expect(c.compaction).toEqual({ enabled: true, intervalSecs: 60, thresholdBytes: 16384, collections: ["beacons", "platforms"] });
    expect(c.log.filter.defaultLevel).toBe("debug");
  });

  test("PEAT_SCTP_IDLE_PACE_MS: 100 unless set, 10 to 1000", () => {
    expect(loadConfig(base).sync.sctpIdlePaceMs).toBe(100);
    expect(loadConfig({ ...base, PEAT_SCTP_IDLE_PACE_MS: "10" }).sync.sctpIdlePaceMs).toBe(10);
  });

  test("aliases: PEAT_SYNC_PORT, PEAT_RELAY_URLS, PEAT_LOG", () => {
    const c = loadConfig({ ...base, PEAT_SYNC_PORT: "13000", PEAT_RELAY_URLS: "stun:10.0.0.1", PEAT_LOG: "warn" });
    expect(c.sync.port).toBe(13000);
    expect(c.sync.iceServers).toEqual(["stun:10.0.0.1"]);
    expect(c.log.filter.defaultLevel).toBe("warn");
  });

  test("the compatibility names win over the aliases", () => {
    expect(loadConfig({ ...base, PEAT_IROH_BIND_PORT: "12000", PEAT_SYNC_PORT: "13000" }).sync.port).toBe(12000);
  });

  test("mdns and static discovery, json logs, broker token", () => {
    expect(loadConfig({ ...base, PEAT_DISCOVERY: "mdns" }).discovery).toBe("mdns");
    expect(loadConfig({ ...base, PEAT_DISCOVERY: "static" }).discovery).toBe("static");
    expect(loadConfig({ ...base, PEAT_LOG_FORMAT: "json" }).log.format).toBe("json");
    expect(loadConfig({ ...base, PEAT_BROKER_TOKEN: "0123456789abcdef0123" }).broker.token).toBe("0123456789abcdef0123");
  });

  test("static peers: host:port, name@host:port, IPv6", () => {
    const c = loadConfig({ ...base, PEAT_STATIC_PEERS: "10.0.0.2:8081, gw@peat-gw.example.org:9081,[fd00::2]:8081" });
    expect(c.staticPeers.map(({ name, host, brokerPort }) => ({ name, host, brokerPort }))).toEqual([
      { name: undefined, host: "10.0.0.2", brokerPort: 8081 },
      { name: "gw", host: "peat-gw.example.org", brokerPort: 9081 },
      { name: undefined, host: "fd00::2", brokerPort: 8081 },
    ]);
    expect(parseStaticPeer("host-only")).toBeUndefined();
    expect(parseStaticPeer("h:0")).toBeUndefined();
  });

  test("sync mode overrides and collection TTLs", () => {
    const c = loadConfig({ ...base, PEAT_SYNC_MODES: "alerts=LatestOnly,tracks=FullHistory", PEAT_COLLECTION_TTL_SECS: "beacons=600" });
    expect(c.store.syncModes).toEqual({ alerts: "LatestOnly", tracks: "FullHistory" });
    expect(c.store.collectionTtlSecs).toEqual({ beacons: 600 });
  });
});

describe("refusals name the variable, the value and what is accepted", () => {
  const cases: [string, Env, string, RegExp][] = [
    ["missing secret", {}, "PEAT_FORMATION_SECRET", /\(unset\).*base64/],
    ["empty secret (the old Helm default)", { PEAT_FORMATION_SECRET: "" }, "PEAT_FORMATION_SECRET", /\(empty\)/],
    ["bad base64", { PEAT_FORMATION_SECRET: "not-valid-base64!!!" }, "PEAT_FORMATION_SECRET", /redacted.*base64/],
    ["unpadded base64", { PEAT_FORMATION_SECRET: "dGVzdA" }, "PEAT_FORMATION_SECRET", /base64/],
    ["URL-safe base64", { PEAT_FORMATION_SECRET: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh-_" }, "PEAT_FORMATION_SECRET", /base64/],
    ["11-byte secret (vector C)", { PEAT_FORMATION_SECRET: "dGVzdC1zZWNyZXQ=" }, "PEAT_FORMATION_SECRET", /11 bytes.*at least 16 bytes/],
    ["unknown discovery", { ...base, PEAT_DISCOVERY: "consul" }, "PEAT_DISCOVERY", /"consul".*kubernetes, k8s, mdns, static/],
    ["discovery is case-sensitive", { ...base, PEAT_DISCOVERY: "MDNS" }, "PEAT_DISCOVERY", /"MDNS"/],
    ["broker port out of range", { ...base, PEAT_BROKER_PORT: "70000" }, "PEAT_BROKER_PORT", /"70000".*0 to 65535/],
    ["broker port not a number", { ...base, PEAT_BROKER_PORT: "http" }, "PEAT_BROKER_PORT", /"http"/],
    ["negative sync port", { ...base, PEAT_IROH_BIND_PORT: "-1" }, "PEAT_IROH_BIND_PORT", /"-1"/],
    ["sync port alias out of range", { ...base, PEAT_SYNC_PORT: "65535" }, "PEAT_SYNC_PORT", /"65535".*must fit/],
    ["compaction interval under 10 s", { ...base, PEAT_COMPACTION_INTERVAL_SECS: "5" }, "PEAT_COMPACTION_INTERVAL_SECS", /"5".*from 10/],
    ["compaction flag", { ...base, PEAT_COMPACTION_ENABLED: "maybe" }, "PEAT_COMPACTION_ENABLED", /"maybe".*true, false/],
    ["SCTP idle pace under 10 ms", { ...base, PEAT_SCTP_IDLE_PACE_MS: "5" }, "PEAT_SCTP_IDLE_PACE_MS", /"5".*10 to 1000.*10 turns it off/],
    ["log format", { ...base, PEAT_LOG_FORMAT: "xml" }, "PEAT_LOG_FORMAT", /"xml".*text or json/],
    ["log filter", { ...base, RUST_LOG: "info,peat_mesh=loud" }, "RUST_LOG", /peat_mesh=loud/],
    ["static peer without port", { ...base, PEAT_STATIC_PEERS: "10.0.0.2:8081,gateway" }, "PEAT_STATIC_PEERS", /entry "gateway"/],
    ["relay URL scheme", { ...base, PEAT_IROH_RELAY_URLS: "https://relay.example.org" }, "PEAT_IROH_RELAY_URLS", /https:\/\/relay.*stun:/],
    ["short broker token", { ...base, PEAT_BROKER_TOKEN: "abc" }, "PEAT_BROKER_TOKEN", /redacted, 3 characters/],
    ["hostname with a space", { ...base, HOSTNAME: "peat mesh" }, "HOSTNAME", /"peat mesh"/],
  ];
  test.each(cases)("%s", (_label, env, variable, message) => {
    const err = configError(env);
    expect(err.variable).toBe(variable);
    expect(err.message.startsWith(`${variable}: invalid value `)).toBe(true);
    expect(err.message).toMatch(message);
    expect(err.message).toContain("accepted:");
  });

  test("the secret never appears in a message", () => {
    for (const secret of ["not-valid-base64!!!", "dGVzdC1zZWNyZXQ=", "c2VjcmV0LXNlY3JldC1zZWNyZXQ"]) {
      expect(configError({ PEAT_FORMATION_SECRET: secret }).message).not.toContain(secret);
    }
    const token = "short token";
    expect(configError({ ...base, PEAT_BROKER_TOKEN: token }).message).not.toContain(token);
  });
});
