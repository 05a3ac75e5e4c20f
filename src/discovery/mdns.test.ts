import { describe, expect, test } from "bun:test";
import { networkInterfaces } from "node:os";
import { silentLogger } from "../log.ts";
import { CONFORMANCE_PEERS, CONFORMANCE_SELF_PORT, runDiscoveryConformance } from "./conformance.ts";
import { Bonjour } from "bonjour-service";
import { MdnsDiscovery, SERVICE_PROTOCOL, SERVICE_TYPE, hasMulticastRoute, mdnsHostName } from "./mdns.ts";

const FINGERPRINT = "00112233aabbccdd";
const routeTable = (() => {
  try {
    return require("node:fs").readFileSync("/proc/net/route", "utf8") as string;
  } catch {
    return "";
  }
})();
const lanAddress = Object.values(networkInterfaces())
  .flat()
  .find((a) => a && a.family === "IPv4" && !a.internal)?.address;
const canMulticast = hasMulticastRoute(routeTable) && lanAddress !== undefined;

function node(nodeId: string, brokerPort: number, fingerprint = FINGERPRINT): MdnsDiscovery {
  return new MdnsDiscovery({
    nodeId,
    deviceId: `device-${nodeId}`,
    brokerPort: () => brokerPort,
    syncPort: 11204,
    formationFingerprint: fingerprint,
    log: silentLogger(),
    queryIntervalMs: 250,
    expireAfterMs: 1500,
  });
}

/** Another node on the LAN, announced with plain bonjour-service so the test controls its lifecycle. */
function publishRaw(nodeId: string, brokerPort: number): Bonjour {
  const bonjour = new Bonjour({}, () => {});
  bonjour.publish({
    name: `peat-${nodeId}`,
    type: SERVICE_TYPE,
    protocol: SERVICE_PROTOCOL,
    port: 11204,
    host: mdnsHostName(nodeId),
    txt: { node_id: nodeId, device_id: `device-${nodeId}`, broker_port: String(brokerPort), sync_port: "11204", fp: FINGERPRINT },
    disableIPv6: true,
    probe: false,
  });
  return bonjour;
}

if (canMulticast) {
  // A real LAN: the machine's own interface, multicast through its route.
  runDiscoveryConformance("mdns", async () => {
    const self = `self-${process.pid}`;
    const published = new Map<string, Bonjour>();
    const ports: Record<string, number> = { ...CONFORMANCE_PEERS, [self]: CONFORMANCE_SELF_PORT };
    const publish = (name: string, port: number) => {
      // Closing without goodbye packets is what a crash looks like; the replacement then differs only in its TXT.
      published.get(name)?.destroy();
      published.set(name, publishRaw(name, port));
    };
    return {
      strategy: node(self, CONFORMANCE_SELF_PORT),
      selfId: self,
      observer: () => node(`observer-${process.pid}`, 1),
      reportedHost: () => lanAddress as string,
      announce: async (name, _host, port) => publish(name, port),
      move: async (name) => publish(name, (ports[name] ?? 0) + 1000),
      withdraw: async (name) => {
        const bonjour = published.get(name);
        published.delete(name);
        await new Promise<void>((resolve) => bonjour?.unpublishAll(() => resolve()));
        bonjour?.destroy();
      },
      cleanup: async () => {
        for (const bonjour of published.values()) bonjour.destroy();
      },
      timeoutMs: 5000,
    };
  });
} else {
  test.skip("mdns conformance: no multicast route on this machine (see the namespace LAN test)", () => {});
}

describe("mdns specifics", () => {
  test("the multicast route check reads /proc/net/route", () => {
    const header = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT";
    const connectedOnly = `${header}\neth0\t0000C80A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n`;
    const withDefault = `${connectedOnly}eth0\t00000000\t0100C80A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n`;
    const withMulticast = `${connectedOnly}eth0\t000000E0\t00000000\t0001\t0\t0\t0\t000000F0\t0\t0\t0\n`;
    expect(hasMulticastRoute(connectedOnly)).toBe(false);
    expect(hasMulticastRoute(withDefault)).toBe(true);
    expect(hasMulticastRoute(withMulticast)).toBe(true);
    expect(hasMulticastRoute("")).toBe(false);
  });

  test("a missing multicast route is logged as a warning naming the fix", async () => {
    const lines: string[] = [];
    const { Logger, parseLogFilter } = await import("../log.ts");
    const log = new Logger("t", { filter: parseLogFilter("info"), sink: { write: (l) => lines.push(l) } });
    const strategy = new MdnsDiscovery({
      nodeId: "lonely",
      deviceId: "d",
      brokerPort: () => 1,
      syncPort: 1,
      formationFingerprint: FINGERPRINT,
      log,
      readRouteTable: () => "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n",
    });
    await strategy.start();
    await strategy.stop();
    expect(lines.find((l) => l.includes("WARN"))).toContain("ip route add 224.0.0.0/4");
  });

  test("host names are mDNS-safe", () => {
    expect(mdnsHostName("peat-mesh-0")).toBe("peat-mesh-0.local");
    expect(mdnsHostName("edge_7.site")).toBe("edge-7-site.local");
  });

  test.if(canMulticast)("a node of another formation on the same LAN is ignored", async () => {
    const ours = node(`ours-${process.pid}`, 1);
    const theirs = node(`theirs-${process.pid}`, 2, "ffffffffffffffff");
    const friend = node(`friend-${process.pid}`, 3);
    const seen: string[] = [];
    ours.onEvent((e) => e.type === "PeerFound" && seen.push(e.peer.nodeId));
    await ours.start();
    await theirs.start();
    await friend.start();
    const deadline = performance.now() + 5000;
    while (!seen.includes(`friend-${process.pid}`) && performance.now() < deadline) await Bun.sleep(10);
    await Promise.all([ours.stop(), theirs.stop(), friend.stop()]);
    expect(seen).toEqual([`friend-${process.pid}`]);
  });
});
