/**
 * Peers from Kubernetes EndpointSlices: the headless Service of the StatefulSet gets one endpoint
 * per pod, and the EndpointSlice controller keeps them current. Unlike the original (a 30 s list
 * poll), this lists once and then watches, so a pod that appears or goes is known within a second.
 *
 * The client is Bun's own `fetch` with `tls: { ca, cert, key }`, not @kubernetes/client-node:
 * - client-node 1.4's typed APIs have no `discovery.k8s.io/v1beta1`, which 1.20 clusters serve;
 * - the watch loop needs exact control of resourceVersion, bookmarks, 410 handling, backoff and
 *   token re-reads, which its `Watch` helper hides;
 * - it keeps client-node (and node-fetch) out of the binary's startup path.
 * Everything here is two GETs (list, watch) plus reading the in-cluster files or a kubeconfig.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, isAbsolute, join } from "node:path";
import { PeatError } from "../errors.ts";
import type { Logger } from "../log.ts";
import {
  type DiscoveredPeer,
  DiscoveryEmitter,
  type DiscoveryListener,
  type DiscoveryStrategy,
  type PeerAddress,
} from "./types.ts";

export const DEFAULT_SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";
export const DEFAULT_LABEL_SELECTOR = "app=peat-mesh";
export const ANNOTATION_PREFIX = "peat.";
/** Port names read from a slice: the chart's, plus `iroh-quic` from the original chart. */
export const BROKER_PORT_NAMES = ["broker"] as const;
export const SYNC_PORT_NAMES = ["sync", "iroh-quic"] as const;

export type EndpointSliceApiVersion = "discovery.k8s.io/v1" | "discovery.k8s.io/v1beta1";
type Env = Record<string, string | undefined>;

/** Neither in-cluster credentials nor a usable kubeconfig: the node cannot use Kubernetes discovery. */
export class KubernetesConfigError extends PeatError {
  override readonly name = "KubernetesConfigError";
}

/** A non-2xx answer from the API server (or an ERROR event on a watch), with the Status it carried. */
export class KubernetesApiError extends PeatError {
  override readonly name: string = "KubernetesApiError";
  constructor(
    readonly httpStatus: number,
    readonly reason: string,
    /** The API verb that was refused: `list` or `watch`. */
    readonly verb: "list" | "watch",
    message: string,
  ) {
    super(message);
  }
}

/** 410 Gone: the resourceVersion a watch asked for is no longer in the server's history. */
export class ResourceExpiredError extends KubernetesApiError {
  override readonly name = "ResourceExpiredError";
}

function apiError(status: number, reason: string | undefined, verb: "list" | "watch", detail: string | undefined): KubernetesApiError {
  const message = `${status} ${reason ?? ""}: ${detail ?? "(no message)"}`;
  return status === 410
    ? new ResourceExpiredError(status, reason ?? "Expired", verb, message)
    : new KubernetesApiError(status, reason ?? "", verb, message);
}

/** Where the API server is and how to authenticate, resolved once at start. */
export interface KubernetesConnection {
  /** `https://host:port`, without a trailing slash. */
  server: string;
  /** PEM of the CA that signed the server's certificate; undefined trusts the system store. */
  ca?: string;
  insecureSkipTlsVerify?: boolean;
  /** Name the server certificate must carry when it differs from the URL's host. */
  tlsServerName?: string;
  clientCert?: { cert: string; key: string };
  /** The bearer token now; re-reads its file when `refresh` is set or the cached copy is old. */
  token?: (refresh?: boolean) => string | undefined;
  /** Namespace from the service account or the kubeconfig context. */
  namespace?: string;
  /** Who we authenticate as, for error messages: `system:serviceaccount:ns:name` or a kubeconfig user. */
  identity: string;
  /** `in-cluster` or `kubeconfig <path>`, for the startup log. */
  origin: string;
}

export interface ResolveConnectionOptions {
  /** Environment for KUBERNETES_SERVICE_HOST/PORT, KUBECONFIG and HOME (default process.env). */
  env?: Env;
  /** In-cluster service-account directory (token, ca.crt, namespace). */
  serviceAccountDir?: string;
  /** How long a read token is reused before the file is read again; projected tokens rotate. */
  tokenRefreshMs?: number;
}

export interface KubernetesDiscoveryOptions extends ResolveConnectionOptions {
  /** This node's id (its HOSTNAME, the pod name); its own endpoint is never reported. */
  selfNodeId: string;
  /** Overrides the service account's namespace (PEAT_K8S_NAMESPACE). */
  namespace?: string;
  labelSelector?: string;
  apiVersion?: EndpointSliceApiVersion;
  /** Used when a slice has no port named `broker`: every replica shares the node's own config. */
  defaultBrokerPort: number | (() => number);
  /** Used when a slice has no port named `sync` or `iroh-quic`. */
  defaultSyncPort?: number;
  log: Logger;
  /** A resolved connection instead of reading the environment (tests, embedding). */
  connection?: KubernetesConnection;
  /** Full re-list period, the safety net under the watch (default 30 s). */
  relistIntervalMs?: number;
  /** Server-side watch timeout; the watch is resumed from the last resourceVersion when it ends. */
  watchTimeoutSeconds?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Per-request limit for list calls and for opening a watch (default 15 s). */
  requestTimeoutMs?: number;
}

// ---------------------------------------------------------------------------------------------
// Connection: in-cluster service account, or a kubeconfig.

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/** The `sub` claim of a service-account JWT (not verified: only for naming it in messages). */
export function tokenSubject(token: string | undefined): string | undefined {
  const payload = token?.split(".")[1];
  if (!payload) return undefined;
  try {
    const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as { sub?: unknown };
    return typeof claims.sub === "string" ? claims.sub : undefined;
  } catch {
    return undefined;
  }
}

/** Reads a token file, keeping the last good copy for `ttlMs` and through a failed re-read. */
function tokenFileReader(path: string, ttlMs: number): (refresh?: boolean) => string | undefined {
  let cached: string | undefined;
  let readAt = Number.NEGATIVE_INFINITY;
  return (refresh = false) => {
    if (refresh || performance.now() - readAt >= ttlMs) {
      const text = readText(path)?.trim();
      if (text) cached = text;
      readAt = performance.now();
    }
    return cached;
  };
}

function hostForUrl(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

function inClusterConnection(env: Env, dir: string, tokenRefreshMs: number): KubernetesConnection | string {
  const host = env.KUBERNETES_SERVICE_HOST?.trim();
  const port = env.KUBERNETES_SERVICE_PORT?.trim();
  const tokenPath = join(dir, "token");
  if (!host || !port) return "KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set (not running in a pod)";
  if (!existsSync(tokenPath)) return `no service-account token at ${tokenPath}`;
  const token = tokenFileReader(tokenPath, tokenRefreshMs);
  const ca = readText(join(dir, "ca.crt"));
  const namespace = readText(join(dir, "namespace"))?.trim() || undefined;
  return {
    server: `https://${hostForUrl(host)}:${port}`,
    ...(ca ? { ca } : {}),
    token,
    ...(namespace ? { namespace } : {}),
    identity: tokenSubject(token()) ?? `the service account of ${tokenPath}`,
    origin: "in-cluster",
  };
}

interface KubeconfigFile {
  path: string;
  doc: Record<string, unknown>;
}

type Named = { name?: unknown; [k: string]: unknown };

function namedEntry(files: KubeconfigFile[], list: string, name: string, field: string): Record<string, unknown> | undefined {
  // As kubectl merges several files: the first file that defines a name wins.
  for (const file of files) {
    const entries = file.doc[list];
    if (!Array.isArray(entries)) continue;
    const entry = (entries as Named[]).find((e) => e?.name === name);
    if (entry && typeof entry[field] === "object" && entry[field] !== null) {
      return { ...(entry[field] as Record<string, unknown>), __file: file.path };
    }
  }
  return undefined;
}

function str(value: unknown): string | undefined {
  return typeof value === "string" && value !== "" ? value : undefined;
}

function kubeconfigConnection(paths: string[], tokenRefreshMs: number): KubernetesConnection {
  const files: KubeconfigFile[] = [];
  for (const path of paths) {
    const text = readText(path);
    if (text === undefined) continue;
    let doc: unknown;
    try {
      doc = Bun.YAML.parse(text);
    } catch (err) {
      throw new KubernetesConfigError(`kubeconfig ${path} is not valid YAML: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (doc && typeof doc === "object" && !Array.isArray(doc)) files.push({ path, doc: doc as Record<string, unknown> });
  }
  const first = paths[0] ?? "(none)";
  if (files.length === 0) throw new KubernetesConfigError(`kubeconfig ${paths.join(":")} could not be read`);
  const contextName = files.map((f) => str(f.doc["current-context"])).find((c) => c !== undefined);
  if (!contextName) throw new KubernetesConfigError(`kubeconfig ${first} has no current-context`);
  const context = namedEntry(files, "contexts", contextName, "context");
  if (!context) throw new KubernetesConfigError(`kubeconfig ${first}: context '${contextName}' is not defined`);
  const clusterName = str(context.cluster);
  const userName = str(context.user);
  const cluster = clusterName ? namedEntry(files, "clusters", clusterName, "cluster") : undefined;
  if (!cluster || !str(cluster.server)) {
    throw new KubernetesConfigError(`kubeconfig ${first}: context '${contextName}' names no cluster with a server`);
  }
  const user = userName ? (namedEntry(files, "users", userName, "user") ?? {}) : {};
  // Relative paths in a kubeconfig are relative to the file that holds them.
  const resolvePath = (entry: Record<string, unknown>, value: unknown) => {
    const p = str(value);
    if (!p) return undefined;
    return isAbsolute(p) ? p : join(dirname(String(entry.__file)), p);
  };
  const fileOrData = (entry: Record<string, unknown>, fileKey: string, dataKey: string, what: string) => {
    const data = str(entry[dataKey]);
    if (data) return Buffer.from(data, "base64").toString("utf8");
    const path = resolvePath(entry, entry[fileKey]);
    if (!path) return undefined;
    const text = readText(path);
    if (text === undefined) throw new KubernetesConfigError(`kubeconfig ${first}: cannot read ${what} ${path}`);
    return text;
  };
  if (user.exec || user["auth-provider"]) {
    throw new KubernetesConfigError(
      `kubeconfig ${first}: user '${userName}' authenticates with an exec plugin or auth-provider, which this node does not run; use a token, tokenFile or client certificate`,
    );
  }
  const ca = fileOrData(cluster, "certificate-authority", "certificate-authority-data", "certificate-authority");
  const cert = fileOrData(user, "client-certificate", "client-certificate-data", "client-certificate");
  const key = fileOrData(user, "client-key", "client-key-data", "client-key");
  const staticToken = str(user.token);
  const tokenFile = resolvePath(user, user.tokenFile);
  const token = staticToken ? () => staticToken : tokenFile ? tokenFileReader(tokenFile, tokenRefreshMs) : undefined;
  const namespace = str(context.namespace);
  const tlsServerName = str(cluster["tls-server-name"]);
  return {
    server: String(cluster.server).replace(/\/+$/, ""),
    ...(ca ? { ca } : {}),
    ...(cluster["insecure-skip-tls-verify"] === true ? { insecureSkipTlsVerify: true } : {}),
    ...(tlsServerName ? { tlsServerName } : {}),
    ...(cert && key ? { clientCert: { cert, key } } : {}),
    ...(token ? { token } : {}),
    ...(namespace ? { namespace } : {}),
    identity: tokenSubject(token?.()) ?? `kubeconfig user '${userName ?? "(none)"}'`,
    origin: `kubeconfig ${files.map((f) => f.path).join(":")}`,
  };
}

/**
 * An explicit KUBECONFIG wins (someone asked for it); then the pod's service account; then
 * ~/.kube/config, as kubectl would. Throws KubernetesConfigError naming what was looked for.
 */
export function resolveKubernetesConnection(options: ResolveConnectionOptions = {}): KubernetesConnection {
  const env = options.env ?? process.env;
  const dir = options.serviceAccountDir ?? DEFAULT_SERVICE_ACCOUNT_DIR;
  const refresh = options.tokenRefreshMs ?? 60_000;
  const explicit = env.KUBECONFIG?.split(":").filter((p) => p !== "");
  if (explicit && explicit.length > 0) return kubeconfigConnection(explicit, refresh);
  const inCluster = inClusterConnection(env, dir, refresh);
  if (typeof inCluster !== "string") return inCluster;
  const home = env.HOME;
  const fallback = home ? join(home, ".kube", "config") : undefined;
  if (fallback && existsSync(fallback)) return kubeconfigConnection([fallback], refresh);
  throw new KubernetesConfigError(
    `Kubernetes discovery has no API access: ${inCluster}, KUBECONFIG is not set and ${fallback ?? "~/.kube/config"} does not exist. ` +
      "Run the node in a pod with a service account (the Helm chart sets one up), point KUBECONFIG at a kubeconfig, " +
      "or choose another discovery: PEAT_DISCOVERY=mdns, or PEAT_DISCOVERY=static with PEAT_STATIC_PEERS",
  );
}

// ---------------------------------------------------------------------------------------------
// EndpointSlices: the fields read, and their translation into peers.

interface SlicePort {
  name?: string | null;
  port?: number | null;
  protocol?: string | null;
}

interface SliceEndpoint {
  addresses?: string[] | null;
  conditions?: { ready?: boolean | null; serving?: boolean | null; terminating?: boolean | null } | null;
  hostname?: string | null;
  targetRef?: { kind?: string; name?: string } | null;
}

export interface EndpointSlice {
  metadata?: { name?: string; namespace?: string; resourceVersion?: string; annotations?: Record<string, string> | null };
  addressType?: string;
  endpoints?: SliceEndpoint[] | null;
  ports?: SlicePort[] | null;
}

interface SliceView {
  name: string;
  metadata: Record<string, string>;
  entries: { nodeId: string; addresses: PeerAddress[] }[];
}

function validPort(port: unknown): number | undefined {
  return typeof port === "number" && Number.isInteger(port) && port >= 1 && port <= 65535 ? port : undefined;
}

function namedPort(ports: SlicePort[], names: readonly string[]): number | undefined {
  for (const name of names) {
    const port = validPort(ports.find((p) => p.name === name)?.port);
    if (port !== undefined) return port;
  }
  return undefined;
}

/** The slice's peers; self, terminating endpoints and endpoints without a name or address are left out. */
export function viewSlice(
  slice: EndpointSlice,
  selfNodeId: string,
  defaults: { brokerPort: number; syncPort?: number },
): SliceView {
  const ports = slice.ports ?? [];
  // Port order in a slice follows no rule the controller promises, so only names are trusted.
  const brokerPort = namedPort(ports, BROKER_PORT_NAMES) ?? validPort(defaults.brokerPort);
  const syncPort = namedPort(ports, SYNC_PORT_NAMES) ?? validPort(defaults.syncPort);
  const metadata: Record<string, string> = {};
  for (const [key, value] of Object.entries(slice.metadata?.annotations ?? {})) {
    if (key.startsWith(ANNOTATION_PREFIX) && key.length > ANNOTATION_PREFIX.length) {
      metadata[key.slice(ANNOTATION_PREFIX.length)] = String(value);
    }
  }
  const entries: SliceView["entries"] = [];
  if (brokerPort !== undefined) {
    for (const endpoint of slice.endpoints ?? []) {
      if (!endpoint || endpoint.conditions?.terminating === true) continue;
      const nodeId = endpoint.targetRef?.name || endpoint.hostname || undefined;
      if (!nodeId || nodeId === selfNodeId) continue;
      const hosts = (endpoint.addresses ?? []).filter((a) => typeof a === "string" && a !== "");
      if (hosts.length === 0) continue;
      entries.push({
        nodeId,
        addresses: hosts.map((host) => ({ host, brokerPort, ...(syncPort !== undefined ? { syncPort } : {}) })),
      });
    }
  }
  return { name: slice.metadata?.name ?? "", metadata, entries };
}

/** Merges every slice's entries by node id: a pod can be in several slices (IPv4 and IPv6, or mid-move). */
export function peersFromSlices(views: Iterable<SliceView>): Map<string, DiscoveredPeer> {
  const sorted = [...views].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const peers = new Map<string, DiscoveredPeer>();
  for (const view of sorted) {
    for (const entry of view.entries) {
      let peer = peers.get(entry.nodeId);
      if (!peer) {
        peer = { nodeId: entry.nodeId, addresses: [], source: "kubernetes", metadata: {} };
        peers.set(entry.nodeId, peer);
      }
      Object.assign(peer.metadata, view.metadata);
      for (const address of entry.addresses) {
        if (!peer.addresses.some((a) => a.host === address.host && a.brokerPort === address.brokerPort && a.syncPort === address.syncPort)) {
          peer.addresses.push(address);
        }
      }
    }
  }
  for (const peer of peers.values()) {
    // A stable order, so that the controller reordering a slice is not reported as a change.
    peer.addresses.sort((a, b) => (a.host < b.host ? -1 : a.host > b.host ? 1 : a.brokerPort - b.brokerPort));
    peer.metadata = Object.fromEntries(Object.entries(peer.metadata).sort(([a], [b]) => (a < b ? -1 : 1)));
  }
  return peers;
}

// ---------------------------------------------------------------------------------------------
// The strategy.

class StoppedError extends Error {
  override readonly name = "StoppedError";
}

interface WatchEvent {
  type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";
  object: EndpointSlice & { code?: number; reason?: string; message?: string };
}

function describeError(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === "string" && !err.message.includes(code) ? `${err.message} (${code})` : err.message;
  }
  return String(err);
}

export class KubernetesDiscovery implements DiscoveryStrategy {
  readonly name = "discovery:kubernetes";
  readonly source = "kubernetes" as const;
  private readonly emitter = new DiscoveryEmitter();
  private readonly slices = new Map<string, SliceView>();
  private known = new Map<string, DiscoveredPeer>();
  private connection: KubernetesConnection | undefined;
  private namespaceName = "";
  private abort: AbortController | undefined;
  private loop: Promise<void> | undefined;
  private resourceVersion = "";
  /** Consecutive failures, for the backoff; reset only by a watch that proved healthy. */
  private failures = 0;

  constructor(private readonly options: KubernetesDiscoveryOptions) {}

  /** The namespace watched (known once started). */
  get namespace(): string {
    return this.namespaceName;
  }

  get labelSelector(): string {
    return this.options.labelSelector ?? DEFAULT_LABEL_SELECTOR;
  }

  get apiVersion(): EndpointSliceApiVersion {
    return this.options.apiVersion ?? "discovery.k8s.io/v1";
  }

  onEvent(listener: DiscoveryListener): () => void {
    return this.emitter.on(listener);
  }

  peers(): DiscoveredPeer[] {
    return [...this.known.values()];
  }

  /**
   * Resolves the API connection, throwing KubernetesConfigError when there is none, then lists and
   * watches in the background: an unreachable or refusing API server is retried, never fatal.
   */
  async start(): Promise<void> {
    if (this.loop) return;
    const connection = this.options.connection ?? resolveKubernetesConnection(this.options);
    this.connection = connection;
    this.namespaceName = this.options.namespace || connection.namespace || "default";
    this.options.log.info(
      `Starting Kubernetes discovery in namespace '${this.namespaceName}' with selector '${this.labelSelector}'`,
      { api_version: this.apiVersion, server: connection.server, credentials: connection.origin },
    );
    const abort = new AbortController();
    this.abort = abort;
    this.loop = this.run(abort.signal).catch((err: unknown) => {
      if (!(err instanceof StoppedError)) {
        this.options.log.error("Kubernetes discovery stopped on an unexpected error", { error: describeError(err) });
      }
    });
  }

  async stop(): Promise<void> {
    this.abort?.abort();
    await this.loop;
    this.abort = undefined;
    this.loop = undefined;
    this.slices.clear();
    this.known.clear();
    this.resourceVersion = "";
    this.failures = 0;
  }

  // -- the loop -------------------------------------------------------------------------------

  /**
   * List, then watch from the list's resourceVersion. A watch that ends or whose connection breaks
   * is resumed from the last resourceVersion seen (as client-go's reflector does: re-listing after
   * every network blip is what a large cluster cannot afford); the server answers 410 when it no
   * longer has that history, and then we re-list at once. A refusal or server error (any other
   * HTTP status) re-lists after an exponential backoff. Every `relistIntervalMs` the watch is
   * dropped and everything re-listed anyway.
   */
  private async run(signal: AbortSignal): Promise<void> {
    const relistMs = this.options.relistIntervalMs ?? 30_000;
    let needList = true;
    let listedAt = 0;
    while (!signal.aborted) {
      try {
        if (needList) {
          await this.list(signal);
          listedAt = performance.now();
          needList = false;
        }
        await this.watch(signal, listedAt + relistMs);
        this.options.log.debug("Periodic EndpointSlice re-list");
        needList = true;
      } catch (err) {
        if (signal.aborted) break;
        if (err instanceof ResourceExpiredError) {
          this.options.log.info("EndpointSlice watch expired (410 Gone); re-listing", { resource_version: this.resourceVersion });
          needList = true;
          continue;
        }
        if (err instanceof KubernetesApiError) {
          needList = true;
          // An expired projected token: read the file again before the next attempt.
          if (err.httpStatus === 401) this.connection?.token?.(true);
        }
        const delay = this.backoff();
        this.report(err, needList, delay);
        await sleep(delay, signal);
      }
    }
    throw new StoppedError();
  }

  private backoff(): number {
    const initial = this.options.backoffInitialMs ?? 500;
    const max = this.options.backoffMaxMs ?? 30_000;
    const base = Math.min(max, initial * 2 ** Math.min(this.failures, 30));
    this.failures++;
    // ±20 % jitter, so that a whole StatefulSet does not retry in step after an API outage.
    return Math.round(base * (0.8 + Math.random() * 0.4));
  }

  private report(err: unknown, relist: boolean, delayMs: number): void {
    const log = this.options.log;
    const retry = `${(delayMs / 1000).toFixed(1)}s`;
    if (err instanceof KubernetesApiError && err.httpStatus === 403) {
      // From the token in use now: a rotated file may belong to another account than at start.
      const identity = tokenSubject(this.connection?.token?.()) ?? this.connection?.identity;
      log.error(
        `Kubernetes API refused to ${err.verb} endpointslices (API group discovery.k8s.io) in namespace '${this.namespaceName}' ` +
          `for service account '${identity}': grant it a Role with verbs list and watch on endpointslices in API group ` +
          `discovery.k8s.io, bound by a RoleBinding in that namespace (the Helm chart creates both); retrying in ${retry}`,
        {
          namespace: this.namespaceName,
          resource: "endpointslices.discovery.k8s.io",
          verb: err.verb,
          service_account: identity,
          status: 403,
          reason: err.message,
        },
      );
      return;
    }
    if (relist) log.error(`Failed to list EndpointSlices: ${describeError(err)}`, { namespace: this.namespaceName, retry_in: retry });
    else log.warn(`EndpointSlice watch failed: ${describeError(err)}; resuming`, { resource_version: this.resourceVersion, retry_in: retry });
  }

  // -- HTTP -------------------------------------------------------------------------------------

  private path(query: Record<string, string>): string {
    const q = new URLSearchParams({ labelSelector: this.labelSelector, ...query });
    return `/apis/${this.apiVersion}/namespaces/${encodeURIComponent(this.namespaceName)}/endpointslices?${q}`;
  }

  /** Sends a GET; `signal` governs the request and its body. Non-2xx answers throw KubernetesApiError. */
  private async send(path: string, signal: AbortSignal, verb: "list" | "watch"): Promise<Response> {
    const c = this.connection as KubernetesConnection;
    const headers: Record<string, string> = { Accept: "application/json" };
    const token = c.token?.();
    if (token) headers.Authorization = `Bearer ${token}`;
    const tls: BunFetchRequestInitTLS = {};
    if (c.ca) tls.ca = c.ca;
    if (c.clientCert) {
      tls.cert = c.clientCert.cert;
      tls.key = c.clientCert.key;
    }
    if (c.insecureSkipTlsVerify) tls.rejectUnauthorized = false;
    if (c.tlsServerName) tls.serverName = c.tlsServerName;
    // The timeout bounds only the wait for the response head: a watch body streams for minutes.
    const timeoutMs = this.options.requestTimeoutMs ?? 15_000;
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(new Error(`no answer from ${c.server} within ${timeoutMs} ms`)), timeoutMs);
    let response: Response;
    try {
      response = await fetch(`${c.server}${path}`, { headers, tls, signal: AbortSignal.any([signal, timeout.signal]) });
    } catch (err) {
      if (signal.aborted) throw new StoppedError();
      throw timeout.signal.aborted ? timeout.signal.reason : err;
    } finally {
      clearTimeout(timer);
    }
    if (response.ok) return response;
    const text = await response.text().catch(() => "");
    let status: { reason?: string; message?: string } = {};
    try {
      status = JSON.parse(text) as typeof status;
    } catch {
      status = { message: text.slice(0, 200) };
    }
    throw apiError(response.status, status.reason ?? response.statusText, verb, status.message);
  }

  private async list(signal: AbortSignal): Promise<void> {
    const fresh = new Map<string, SliceView>();
    let continueToken = "";
    let resourceVersion = "";
    do {
      const query: Record<string, string> = { limit: "500" };
      if (continueToken) query.continue = continueToken;
      const response = await this.send(this.path(query), signal, "list");
      let body: { metadata?: { resourceVersion?: string; continue?: string }; items?: EndpointSlice[] | null };
      try {
        body = (await response.json()) as typeof body;
      } catch (err) {
        if (signal.aborted) throw new StoppedError();
        throw err;
      }
      // The first page's version is the snapshot every later page belongs to.
      if (!resourceVersion) resourceVersion = body.metadata?.resourceVersion ?? "";
      for (const slice of body.items ?? []) {
        const view = this.view(slice);
        if (view.name) fresh.set(view.name, view);
      }
      continueToken = body.metadata?.continue ?? "";
    } while (continueToken);
    if (signal.aborted) throw new StoppedError();
    this.slices.clear();
    for (const [name, view] of fresh) this.slices.set(name, view);
    this.resourceVersion = resourceVersion;
    this.options.log.debug("Listed EndpointSlices", { slices: fresh.size, resource_version: resourceVersion });
    this.reconcile(signal);
  }

  /** Watches until `deadline` (returns), the stop signal, or an error (throws). */
  private async watch(signal: AbortSignal, deadline: number): Promise<void> {
    const timeoutSeconds = this.options.watchTimeoutSeconds ?? 300;
    while (performance.now() < deadline) {
      if (signal.aborted) throw new StoppedError();
      // One controller per connection, so that leaving the loop (deadline, error) always closes it.
      const connection = new AbortController();
      const onStop = () => connection.abort();
      signal.addEventListener("abort", onStop, { once: true });
      let deadlineHit = false;
      const timer = setTimeout(() => {
        deadlineHit = true;
        connection.abort();
      }, Math.max(0, deadline - performance.now()));
      const openedAt = performance.now();
      let opened = false;
      let events = 0;
      try {
        const query = { watch: "1", resourceVersion: this.resourceVersion, allowWatchBookmarks: "true", timeoutSeconds: String(timeoutSeconds) };
        const response = await this.send(this.path(query), connection.signal, "watch");
        opened = true;
        for await (const line of lines(response.body, connection.signal)) {
          if (line.trim() === "") continue;
          this.apply(JSON.parse(line) as WatchEvent, signal);
          events++;
        }
      } catch (err) {
        if (signal.aborted) throw new StoppedError();
        if (!deadlineHit || err instanceof KubernetesApiError) throw err;
      } finally {
        clearTimeout(timer);
        signal.removeEventListener("abort", onStop);
        connection.abort();
        // A connection that carried events, or stayed up a while, shows the path is healthy again.
        if (events > 0 || (opened && performance.now() - openedAt >= 1000)) this.failures = 0;
      }
      // A body cancelled by stop() or the deadline just ends, as if the server had closed it.
      if (signal.aborted) throw new StoppedError();
      if (deadlineHit) return;
      // A watch the server keeps closing at once would otherwise spin: treat it as a failure.
      if (events === 0 && performance.now() - openedAt < 1000) throw new Error("the API server closed the watch at once");
      this.options.log.debug("EndpointSlice watch ended; resuming", { resource_version: this.resourceVersion });
    }
  }

  private apply(event: WatchEvent, signal: AbortSignal): void {
    const object = event.object ?? {};
    if (event.type === "ERROR") throw apiError(object.code ?? 500, object.reason, "watch", object.message);
    const rv = object.metadata?.resourceVersion;
    if (rv) this.resourceVersion = rv;
    if (event.type === "BOOKMARK") return;
    const name = object.metadata?.name;
    if (!name) return;
    if (event.type === "DELETED") this.slices.delete(name);
    else this.slices.set(name, this.view(object));
    this.reconcile(signal);
  }

  private view(slice: EndpointSlice): SliceView {
    const broker = this.options.defaultBrokerPort;
    return viewSlice(slice, this.options.selfNodeId, {
      brokerPort: typeof broker === "function" ? broker() : broker,
      ...(this.options.defaultSyncPort !== undefined ? { syncPort: this.options.defaultSyncPort } : {}),
    });
  }

  /** Diffs the peers the slices now describe against those last reported, and emits the changes. */
  private reconcile(signal: AbortSignal): void {
    if (signal.aborted) return;
    const next = peersFromSlices(this.slices.values());
    const previous = this.known;
    this.known = next;
    const log = this.options.log;
    for (const [nodeId, peer] of next) {
      const before = previous.get(nodeId);
      if (!before) {
        log.debug(`Discovered new Kubernetes peer: ${nodeId}`, { addresses: peer.addresses.map(formatAddress) });
        this.emitter.emit({ type: "PeerFound", peer });
      } else if (JSON.stringify(before) !== JSON.stringify(peer)) {
        log.debug(`Kubernetes peer updated: ${nodeId}`, { addresses: peer.addresses.map(formatAddress) });
        this.emitter.emit({ type: "PeerUpdated", peer });
      }
    }
    for (const nodeId of previous.keys()) {
      if (next.has(nodeId)) continue;
      log.debug(`Lost Kubernetes peer: ${nodeId}`);
      this.emitter.emit({ type: "PeerLost", nodeId, source: "kubernetes" });
    }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

function formatAddress(a: PeerAddress): string {
  const host = a.host.includes(":") ? `[${a.host}]` : a.host;
  return a.syncPort !== undefined ? `${host}:${a.brokerPort}/${a.syncPort}` : `${host}:${a.brokerPort}`;
}

/** Newline-delimited chunks of a streamed body (a watch sends one JSON object per line). */
async function* lines(body: ReadableStream<Uint8Array> | null, signal: AbortSignal): AsyncGenerator<string> {
  if (!body) return;
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  const cancel = () => void reader.cancel().catch(() => {});
  signal.addEventListener("abort", cancel, { once: true });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let nl = buffered.indexOf("\n");
      while (nl >= 0) {
        yield buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        nl = buffered.indexOf("\n");
      }
    }
    buffered += decoder.decode();
    if (buffered.trim() !== "") yield buffered;
  } finally {
    signal.removeEventListener("abort", cancel);
    reader.releaseLock();
  }
}
