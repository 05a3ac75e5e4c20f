import type { Config } from "../config.ts";
import type { FormationKey, NodeIdentity } from "../identity/index.ts";
import type { Logger } from "../log.ts";
import { KubernetesDiscovery } from "./kubernetes.ts";
import { MdnsDiscovery } from "./mdns.ts";
import { StaticDiscovery } from "./static.ts";
import type { DiscoveryStrategy } from "./types.ts";

export * from "./types.ts";
export { MdnsDiscovery } from "./mdns.ts";
export { StaticDiscovery } from "./static.ts";

export interface DiscoveryDeps {
  config: Config;
  log: Logger;
  identity: NodeIdentity;
  formationKey: FormationKey;
  /** The broker's bound port, known only once it has started (PEAT_BROKER_PORT may be 0). */
  brokerPort: () => number;
}

/**
 * The strategies PEAT_DISCOVERY selects. PEAT_STATIC_PEERS adds static peers to any mode (hybrid);
 * the connector merges duplicates by node id.
 */
export function createDiscovery({ config, log, identity, formationKey, brokerPort }: DiscoveryDeps): DiscoveryStrategy[] {
  const strategies: DiscoveryStrategy[] = [];
  switch (config.discovery) {
    case "kubernetes":
      log.info("Using Kubernetes EndpointSlice discovery");
      strategies.push(
        new KubernetesDiscovery({
          selfNodeId: identity.nodeId,
          namespace: config.kubernetes.namespace,
          labelSelector: config.kubernetes.labelSelector,
          apiVersion: config.kubernetes.apiVersion,
          // Used only for slices that do not name their ports: every replica shares this config.
          defaultBrokerPort: brokerPort,
          defaultSyncPort: config.sync.port,
          serviceAccountDir: config.kubernetes.serviceAccountDir,
          log: log.child("peat_mesh::discovery::kubernetes"),
        }),
      );
      break;
    case "mdns":
      log.info("Using mDNS discovery");
      strategies.push(
        new MdnsDiscovery({
          nodeId: identity.nodeId,
          deviceId: identity.deviceId,
          brokerPort,
          syncPort: config.sync.port,
          formationFingerprint: formationKey.fingerprint(),
          log: log.child("peat_mesh::discovery::mdns"),
        }),
      );
      break;
    case "static":
      log.info("Using static peer discovery", { peers: config.staticPeers.length });
      break;
  }
  if (config.staticPeers.length > 0 || config.discovery === "static") {
    strategies.push(new StaticDiscovery({
        peers: config.staticPeers,
        selfNodeId: identity.nodeId,
        log: log.child("peat_mesh::discovery::static"),
      }),);
  }
  return strategies;
}
