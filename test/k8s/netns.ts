/**
 * A LAN of network namespaces for multi-node tests: one bridge namespace (`<prefix>-sw`, bridge
 * br0) and N host namespaces (`<prefix>-h1`…), each with eth0 on the bridge, an address in a
 * random 10.x.y.0/24, loopback up and a multicast route (mDNS needs it). Optionally the root
 * namespace joins the bridge too (a veth with x.y.1), so a server started in the root namespace
 * on that address (the test apiserver) is reachable from every host, and the test process can
 * reach the hosts.
 *
 * Teardown deletes only the namespaces this module created (tracked by name) and kills, by PID,
 * the processes it spawned in them. Deleting the bridge namespace also removes the root-side veth.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";

export class NetnsError extends Error {
  override readonly name = "NetnsError";
}

export interface NetnsHost {
  /** Namespace name (`ip netns exec <name> …`). */
  name: string;
  address: string;
}

export interface BridgeNetworkOptions {
  hosts: number;
  /** Put the root namespace on the bridge too (default false). */
  rootLink?: boolean;
}

const createdNamespaces = new Set<string>();
const createdRootInterfaces = new Set<string>();
const spawned = new Set<ReturnType<typeof Bun.spawn>>();
let sequence = 0;

function ip(args: string[]): string {
  const result = spawnSync("ip", args, { encoding: "utf8" });
  if (result.status !== 0) throw new NetnsError(`ip ${args.join(" ")} failed: ${result.stderr.trim()}`);
  return result.stdout;
}

/** Why namespaces cannot be created here, or undefined. Synchronous, for test.skip at load time. */
export function netnsSkipReason(): string | undefined {
  if (process.platform !== "linux") return "network namespaces need Linux";
  if (process.getuid?.() !== 0) return "network namespaces need root";
  const probe = spawnSync("ip", ["netns", "list"], { encoding: "utf8" });
  if (probe.error || probe.status !== 0) return "iproute2 (`ip netns`) is not available";
  return undefined;
}

function usedIpv4Prefixes(): Set<string> {
  const used = new Set<string>();
  for (const match of ip(["-4", "route", "show", "table", "all"]).matchAll(/\b10\.(\d+)\.(\d+)\.\d+/g)) used.add(`${match[1]}.${match[2]}`);
  return used;
}

export class BridgeNetwork {
  readonly bridge: string;
  readonly hosts: NetnsHost[] = [];
  /** The root namespace's address on the bridge, when `rootLink` was asked for. */
  readonly rootAddress: string | undefined;
  /** `10.x.y` */
  readonly prefix: string;
  private readonly namespaces: string[] = [];
  private rootInterface: string | undefined;
  private readonly processes = new Set<ReturnType<typeof Bun.spawn>>();
  private destroyed = false;

  private constructor(readonly name: string, prefix: string, options: BridgeNetworkOptions) {
    this.prefix = prefix;
    this.bridge = `${name}-sw`;
    this.rootAddress = options.rootLink ? `${prefix}.1` : undefined;
  }

  static create(options: BridgeNetworkOptions): BridgeNetwork {
    const reason = netnsSkipReason();
    if (reason) throw new NetnsError(reason);
    const seq = sequence++;
    const name = `pmk${process.pid}-${seq}`;
    const used = usedIpv4Prefixes();
    let prefix = "";
    for (let i = 0; i < 200 && (!prefix || used.has(prefix.slice(3))); i++) {
      prefix = `10.${160 + Math.floor(Math.random() * 80)}.${Math.floor(Math.random() * 256)}`;
    }
    const net = new BridgeNetwork(name, prefix, options);
    try {
      net.build(options);
    } catch (err) {
      net.destroySync();
      throw err;
    }
    return net;
  }

  private addNamespace(ns: string): void {
    if (existsSync(`/run/netns/${ns}`)) throw new NetnsError(`network namespace ${ns} already exists`);
    ip(["netns", "add", ns]);
    createdNamespaces.add(ns);
    this.namespaces.push(ns);
    ip(["-n", ns, "link", "set", "lo", "up"]);
  }

  private build(options: BridgeNetworkOptions): void {
    this.addNamespace(this.bridge);
    ip(["-n", this.bridge, "link", "add", "br0", "type", "bridge"]);
    ip(["-n", this.bridge, "link", "set", "br0", "up"]);
    for (let i = 1; i <= options.hosts; i++) {
      const ns = `${this.name}-h${i}`;
      this.addNamespace(ns);
      // Create the pair inside the bridge namespace, so no name is ever taken in the root namespace.
      ip(["-n", this.bridge, "link", "add", `v${i}`, "type", "veth", "peer", "name", "eth0", "netns", ns]);
      ip(["-n", this.bridge, "link", "set", `v${i}`, "master", "br0", "up"]);
      const address = `${this.prefix}.${10 + i}`;
      ip(["-n", ns, "addr", "add", `${address}/24`, "dev", "eth0"]);
      ip(["-n", ns, "link", "set", "eth0", "up"]);
      ip(["-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
      this.hosts.push({ name: ns, address });
    }
    if (this.rootAddress) {
      // Root-side names must be unique on the machine and at most 15 characters.
      const rootIf = `pk${process.pid % 1_000_000}r${this.name.split("-")[1]}`;
      ip(["link", "add", rootIf, "type", "veth", "peer", "name", "vroot", "netns", this.bridge]);
      this.rootInterface = rootIf;
      createdRootInterfaces.add(rootIf);
      ip(["-n", this.bridge, "link", "set", "vroot", "master", "br0", "up"]);
      ip(["addr", "add", `${this.rootAddress}/24`, "dev", rootIf]);
      ip(["link", "set", rootIf, "up"]);
    }
  }

  /** Runs `argv` inside host namespace `ns`; the process is killed by PID on destroy(). */
  spawn(ns: string, argv: string[], options: Parameters<typeof Bun.spawn>[1] = {}): ReturnType<typeof Bun.spawn> {
    if (!this.namespaces.includes(ns)) throw new NetnsError(`${ns} is not a namespace of this network`);
    // `ip netns exec` execs the command after setns, so the PID is the command's own.
    const proc = Bun.spawn(["ip", "netns", "exec", ns, ...argv], options);
    this.processes.add(proc);
    spawned.add(proc);
    return proc;
  }

  /** argv prefix that runs a command in `ns`, for harnesses that spawn processes themselves. */
  execPrefix(ns: string): string[] {
    return ["ip", "netns", "exec", ns];
  }

  async destroy(): Promise<void> {
    for (const proc of this.processes) if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await Promise.all([...this.processes].map((p) => p.exited));
    this.destroySync();
  }

  private destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const proc of this.processes) {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
      spawned.delete(proc);
    }
    this.processes.clear();
    // The kernel removes a namespace's devices asynchronously, so the root-side veth is deleted
    // explicitly: the next test must not find its address still routed.
    if (this.rootInterface) {
      spawnSync("ip", ["link", "del", this.rootInterface]);
      createdRootInterfaces.delete(this.rootInterface);
      this.rootInterface = undefined;
    }
    for (const ns of [...this.namespaces].reverse()) {
      spawnSync("ip", ["netns", "del", ns]);
      createdNamespaces.delete(ns);
    }
    this.namespaces.length = 0;
  }
}

/** Deletes every namespace this process created and has not deleted yet (afterAll safety net). */
export async function destroyAllNetworks(): Promise<void> {
  for (const proc of spawned) if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
  await Promise.all([...spawned].map((p) => p.exited));
  spawned.clear();
  for (const link of createdRootInterfaces) spawnSync("ip", ["link", "del", link]);
  createdRootInterfaces.clear();
  for (const ns of [...createdNamespaces].reverse()) spawnSync("ip", ["netns", "del", ns]);
  createdNamespaces.clear();
}

process.on("exit", () => {
  for (const proc of spawned) if (proc.exitCode === null) proc.kill("SIGKILL");
  for (const link of createdRootInterfaces) spawnSync("ip", ["link", "del", link]);
  for (const ns of createdNamespaces) spawnSync("ip", ["netns", "del", ns]);
});
