import type { Config } from "../config.ts";
import { PeatError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { StaticDiscovery } from "./static.ts";
import type { DiscoveryStrategy } from "./types.ts";

export * from "./types.ts";
export { StaticDiscovery } from "./static.ts";

export class DiscoveryUnavailableError extends PeatError {
  override readonly name = "DiscoveryUnavailableError";
}

/**
 * The strategies PEAT_DISCOVERY selects. PEAT_STATIC_PEERS adds static peers to any mode (hybrid);
 * the connector merges duplicates by node id.
 */
export function createDiscovery(config: Config, log: Logger): DiscoveryStrategy[] {
  const strategies: DiscoveryStrategy[] = [];
  switch (config.discovery) {
    case "kubernetes":
      log.info("Using Kubernetes EndpointSlice discovery");
      throw new DiscoveryUnavailableError(
        "Kubernetes discovery is not available in this build; use PEAT_DISCOVERY=static with PEAT_STATIC_PEERS (or mdns)",
      );
    case "mdns":
      log.info("Using mDNS discovery");
      throw new DiscoveryUnavailableError("mDNS discovery is not available in this build; use PEAT_DISCOVERY=static");
    case "static":
      log.info("Using static peer discovery", { peers: config.staticPeers.length });
      break;
  }
  if (config.staticPeers.length > 0 || config.discovery === "static") {
    strategies.push(new StaticDiscovery({ peers: config.staticPeers, log: log.child("peat_mesh::discovery::static") }));
  }
  return strategies;
}
