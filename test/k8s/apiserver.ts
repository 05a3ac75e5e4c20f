/**
 * A real Kubernetes control plane for tests: etcd (Debian's etcd-server) and kube-apiserver v1.20.2
 * (built from Debian's `kubernetes` source package by scripts/k8s/build-k8s.sh), on random ports,
 * with TLS, bearer tokens, RBAC and ServiceAccount tokens from TokenRequest.
 *
 * Two modes, same binary:
 * - "v1-crd" (default): the built-in discovery.k8s.io/v1beta1 is turned off and discovery.k8s.io/v1
 *   EndpointSlices are served through a CRD with v1's schema (1.20 has no built-in v1);
 * - "v1beta1": the built-in discovery.k8s.io/v1beta1 group, as a 1.20 cluster serves it.
 *
 * Every process is started here and killed by PID in stop(); every file lives in one temp dir that
 * stop() removes. `stopAllApiServers()` is the afterAll safety net.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const K8S_VERSION = "v1.20.2";
const PROJECT_ROOT = resolve(import.meta.dir, "../..");
export const BUILD_SCRIPT = join(PROJECT_ROOT, "scripts/k8s/build-k8s.sh");
export const FIXTURES = join(import.meta.dir, "fixtures");
export const ENDPOINTSLICE_V1_CRD = join(FIXTURES, "endpointslice-v1-crd.yaml");
export const RBAC_FIXTURE = join(FIXTURES, "rbac.yaml");

export class K8sUnavailableError extends Error {
  override readonly name = "K8sUnavailableError";
}

export class K8sApiError extends Error {
  override readonly name = "K8sApiError";
  constructor(
    readonly status: number,
    readonly body: unknown,
    what: string,
  ) {
    super(`${what}: HTTP ${status} ${typeof body === "object" && body && "message" in body ? String((body as { message: unknown }).message) : JSON.stringify(body)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Binaries: cached per machine, built when absent.

export function k8sCacheDir(): string {
  return process.env.PEAT_K8S_CACHE || join(homedir(), ".cache", "peat-mesh", `k8s-${K8S_VERSION}`);
}

export interface K8sBinaries {
  apiserver: string;
  controllerManager?: string;
  etcd: string;
}

function which(command: string): string | undefined {
  const result = spawnSync("sh", ["-c", `command -v ${command}`], { encoding: "utf8" });
  const path = result.stdout.trim();
  return result.status === 0 && path ? path : undefined;
}

export function findK8sBinaries(): K8sBinaries | undefined {
  const bin = join(k8sCacheDir(), "bin");
  const apiserver = join(bin, "kube-apiserver");
  const etcd = which("etcd");
  if (!existsSync(join(bin, ".complete")) || !existsSync(apiserver) || !etcd || !which("openssl")) return undefined;
  const controllerManager = join(bin, "kube-controller-manager");
  return { apiserver, etcd, ...(existsSync(controllerManager) ? { controllerManager } : {}) };
}

/**
 * Why the real apiserver cannot be had on this machine, or undefined when it is built or can be.
 * Synchronous, so a test file can decide between `describe` and `test.skip` at load time.
 */
export function k8sSkipReason(): string | undefined {
  if (process.platform !== "linux") return `kube-apiserver ${K8S_VERSION} tests need Linux`;
  if (findK8sBinaries()) return undefined;
  const cache = k8sCacheDir();
  if (process.getuid?.() !== 0) return `kube-apiserver ${K8S_VERSION} is not built in ${cache} and building it needs root (apt-get); run scripts/k8s/build-k8s.sh as root`;
  if (!which("apt-get")) return `kube-apiserver ${K8S_VERSION} is not built in ${cache} and this machine has no apt-get (the build uses Debian bookworm's source package)`;
  const osRelease = existsSync("/etc/os-release") ? readFileSync("/etc/os-release", "utf8") : "";
  if (!/^VERSION_CODENAME=bookworm$/m.test(osRelease)) return `kube-apiserver ${K8S_VERSION} is not built in ${cache} and the build recipe needs Debian bookworm`;
  return undefined;
}

/** The binaries, building them first (~3.5 min cold) when they are absent. */
export async function ensureK8sBinaries(): Promise<K8sBinaries> {
  const found = findK8sBinaries();
  if (found) return found;
  const reason = k8sSkipReason();
  if (reason) throw new K8sUnavailableError(reason);
  const cache = k8sCacheDir();
  const logPath = join(tmpdir(), `peat-k8s-build-${process.pid}.log`);
  process.stderr.write(`building kube-apiserver ${K8S_VERSION} from Debian's source package into ${cache} (~3-4 min); log: ${logPath}\n`);
  const log = openSync(logPath, "w");
  const proc = Bun.spawn(["bash", BUILD_SCRIPT, cache], { stdout: log, stderr: log, stdin: "ignore" });
  const code = await proc.exited;
  closeSync(log);
  const built = findK8sBinaries();
  if (code !== 0 || !built) {
    const tail = readFileSync(logPath, "utf8").split("\n").slice(-30).join("\n");
    throw new K8sUnavailableError(`build-k8s.sh exited ${code}; last lines of ${logPath}:\n${tail}`);
  }
  rmSync(logPath, { force: true });
  return built;
}

// ---------------------------------------------------------------------------------------------
// Processes.

const running = new Set<ApiServer>();
const livePids = new Set<number>();

process.on("exit", () => {
  // Last resort if a test run dies before afterAll: never leave daemons behind.
  for (const pid of livePids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {}
  }
});

class ManagedProcess {
  readonly proc: ReturnType<typeof Bun.spawn>;
  constructor(
    readonly name: string,
    argv: string[],
    readonly logPath: string,
  ) {
    const fd = openSync(logPath, "a");
    this.proc = Bun.spawn(argv, { stdout: fd, stderr: fd, stdin: "ignore" });
    closeSync(fd);
    livePids.add(this.proc.pid);
  }

  get pid(): number {
    return this.proc.pid;
  }

  get exited(): boolean {
    return this.proc.exitCode !== null || this.proc.signalCode !== null;
  }

  logTail(lines = 25): string {
    try {
      return readFileSync(this.logPath, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "";
    }
  }

  /** SIGTERM by PID, SIGKILL after `graceMs`. */
  async kill(graceMs = 10_000): Promise<void> {
    if (!this.exited) {
      this.proc.kill("SIGTERM");
      const timer = setTimeout(() => this.proc.kill("SIGKILL"), graceMs);
      await this.proc.exited;
      clearTimeout(timer);
    }
    livePids.delete(this.proc.pid);
  }
}

/** A TCP port on `host` that was free a moment ago. */
export function freePort(host = "127.0.0.1"): number {
  const listener = Bun.listen({ hostname: host, port: 0, socket: { data() {} } });
  const port = listener.port;
  listener.stop(true);
  return port;
}

async function until<T>(check: () => Promise<T | undefined> | T | undefined, timeoutMs: number, what: string, failFast?: () => string | undefined): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    const fatal = failFast?.();
    if (fatal) throw new Error(`${what}: ${fatal}`);
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (performance.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last instanceof Error ? ` (last error: ${last.message})` : ""}`);
    }
    await Bun.sleep(50);
  }
}

function run(argv: string[], cwd: string): void {
  const result = spawnSync(argv[0] as string, argv.slice(1), { cwd, encoding: "utf8" });
  if (result.status !== 0) throw new Error(`${argv.join(" ")} failed: ${result.stderr}`);
}

// ---------------------------------------------------------------------------------------------
// The API server.

export type ApiServerMode = "v1-crd" | "v1beta1";

export interface StartApiServerOptions {
  mode?: ApiServerMode;
  /** Address the apiserver binds and advertises (default 127.0.0.1). A bridge address makes it reachable from network namespaces. */
  bindAddress?: string;
  /** Extra IP SANs for the serving certificate. */
  extraSans?: string[];
  /** How long to wait for /readyz (default 60 s). */
  readyTimeoutMs?: number;
}

export interface ObjectRef {
  apiVersion: string;
  kind: string;
  name: string;
  namespace?: string;
}

export type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; resourceVersion?: string; [k: string]: unknown };
  [k: string]: unknown;
};

interface ResourceInfo {
  name: string;
  namespaced: boolean;
}

export interface RequestOptions {
  token?: string;
  contentType?: string;
  /** Statuses that are not errors (default: 2xx only). */
  accept?: number[];
}

export class ApiServer {
  /** `https://<bind>:<port>` */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly caPath: string;
  readonly adminToken: string;
  /** Admin kubeconfig (token + certificate-authority file). */
  readonly kubeconfig: string;
  readonly mode: ApiServerMode;
  private apiserver: ManagedProcess | undefined;
  private readonly resources = new Map<string, Map<string, ResourceInfo>>();
  private stopped = false;

  private constructor(
    readonly dir: string,
    private readonly binaries: K8sBinaries,
    private readonly etcd: ManagedProcess,
    private readonly etcdUrl: string,
    options: Required<Pick<StartApiServerOptions, "mode" | "bindAddress">>,
    private readonly readyTimeoutMs: number,
  ) {
    this.mode = options.mode;
    this.host = options.bindAddress;
    this.port = freePort(this.host);
    this.url = `https://${this.host.includes(":") ? `[${this.host}]` : this.host}:${this.port}`;
    this.caPath = join(dir, "pki", "ca.crt");
    this.adminToken = readFileSync(join(dir, "pki", "tokens.csv"), "utf8").split(",")[0] as string;
    this.kubeconfig = join(dir, "admin.kubeconfig");
    writeFileSync(
      this.kubeconfig,
      [
        "apiVersion: v1",
        "kind: Config",
        "clusters:",
        `- name: test\n  cluster:\n    server: ${this.url}\n    certificate-authority: ${this.caPath}`,
        "users:",
        `- name: admin\n  user:\n    token: ${this.adminToken}`,
        "contexts:",
        "- name: test\n  context:\n    cluster: test\n    user: admin\n    namespace: default",
        "current-context: test",
        "",
      ].join("\n"),
    );
  }

  /** Starts etcd and kube-apiserver (building the binaries first if needed) and waits until ready. */
  static async start(options: StartApiServerOptions = {}): Promise<ApiServer> {
    const binaries = await ensureK8sBinaries();
    const mode = options.mode ?? "v1-crd";
    const bindAddress = options.bindAddress ?? "127.0.0.1";
    const dir = mkdtempSync(join(tmpdir(), "peat-k8s-"));
    let etcd: ManagedProcess | undefined;
    try {
      makePki(join(dir, "pki"), [bindAddress, ...(options.extraSans ?? [])]);
      // etcd stays on loopback: only the apiserver talks to it. A port taken between choosing and
      // binding makes etcd exit; then try other ports.
      let etcdUrl = "";
      for (let attempt = 0; ; attempt++) {
        const clientPort = freePort();
        const peerPort = freePort();
        etcdUrl = `http://127.0.0.1:${clientPort}`;
        const peerUrl = `http://127.0.0.1:${peerPort}`;
        etcd = new ManagedProcess(
          "etcd",
          [
            binaries.etcd,
            "--name=test",
            `--data-dir=${join(dir, "etcd")}`,
            `--listen-client-urls=${etcdUrl}`,
            `--advertise-client-urls=${etcdUrl}`,
            `--listen-peer-urls=${peerUrl}`,
            `--initial-advertise-peer-urls=${peerUrl}`,
            `--initial-cluster=test=${peerUrl}`,
            "--log-level=warn",
            "--logger=zap",
          ],
          join(dir, "etcd.log"),
        );
        const current = etcd;
        try {
          await until(async () => ((await fetch(`${etcdUrl}/health`)).ok ? true : undefined), 15_000, "etcd /health", () =>
            current.exited ? `etcd exited: ${current.logTail()}` : undefined,
          );
          break;
        } catch (err) {
          await current.kill();
          if (attempt >= 2) throw err;
        }
      }
      const server = new ApiServer(dir, binaries, etcd, etcdUrl, { mode, bindAddress }, options.readyTimeoutMs ?? 60_000);
      running.add(server);
      await server.startApiserver();
      if (mode === "v1-crd") await server.installEndpointSliceCrd();
      return server;
    } catch (err) {
      await etcd?.kill();
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
  }

  private apiserverArgs(): string[] {
    const pki = join(this.dir, "pki");
    const args = [
      this.binaries.apiserver,
      `--etcd-servers=${this.etcdUrl}`,
      `--bind-address=${this.host}`,
      `--advertise-address=${this.host}`,
      `--secure-port=${this.port}`,
      "--insecure-port=0",
      `--tls-cert-file=${join(pki, "apiserver.crt")}`,
      `--tls-private-key-file=${join(pki, "apiserver.key")}`,
      `--client-ca-file=${join(pki, "ca.crt")}`,
      `--token-auth-file=${join(pki, "tokens.csv")}`,
      "--authorization-mode=Node,RBAC",
      "--service-account-issuer=https://kubernetes.default.svc",
      `--service-account-key-file=${join(pki, "sa.pub")}`,
      `--service-account-signing-key-file=${join(pki, "sa.key")}`,
      "--service-cluster-ip-range=10.0.0.0/24",
      // Advertising a loopback address would make the endpoint reconciler complain forever.
      "--endpoint-reconciler-type=none",
      `--cert-dir=${join(this.dir, "apiserver-certs")}`,
      "--v=1",
    ];
    if (this.mode === "v1-crd") args.push("--runtime-config=discovery.k8s.io/v1beta1=false");
    return args;
  }

  private async startApiserver(): Promise<void> {
    const proc = new ManagedProcess("kube-apiserver", this.apiserverArgs(), join(this.dir, "apiserver.log"));
    this.apiserver = proc;
    await until(
      async () => ((await this.request("GET", "/readyz", undefined, { accept: [200, 500] })).status === 200 ? true : undefined),
      this.readyTimeoutMs,
      "kube-apiserver /readyz",
      () => (proc.exited ? `kube-apiserver exited: ${proc.logTail()}` : undefined),
    );
  }

  get apiserverPid(): number | undefined {
    return this.apiserver?.pid;
  }

  get etcdEndpoint(): string {
    return this.etcdUrl;
  }

  /** Stops the apiserver (SIGTERM by PID) and starts it again on the same port and etcd. */
  async restart(): Promise<void> {
    await this.apiserver?.kill();
    this.resources.clear();
    await this.startApiserver();
    if (this.mode === "v1-crd") await this.waitForEndpointSliceApi();
  }

  private async installEndpointSliceCrd(): Promise<void> {
    await this.apply(readFileSync(ENDPOINTSLICE_V1_CRD, "utf8"));
    await until(
      async () => {
        const crd = (await this.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/endpointslices.discovery.k8s.io")).body as {
          status?: { conditions?: { type: string; status: string }[] };
        };
        return crd.status?.conditions?.some((c) => c.type === "Established" && c.status === "True") ? true : undefined;
      },
      30_000,
      "the EndpointSlice CRD to be Established",
    );
    await this.waitForEndpointSliceApi();
  }

  private async waitForEndpointSliceApi(): Promise<void> {
    await until(
      async () => ((await this.request("GET", "/apis/discovery.k8s.io/v1/endpointslices", undefined, { accept: [200, 404, 503] })).status === 200 ? true : undefined),
      30_000,
      "discovery.k8s.io/v1 endpointslices to be served",
    );
  }

  /** A raw call with the admin token (or `options.token`). Throws K8sApiError on unexpected statuses. */
  async request(method: string, path: string, body?: unknown, options: RequestOptions = {}): Promise<{ status: number; body: unknown }> {
    const headers: Record<string, string> = { Accept: "application/json", Authorization: `Bearer ${options.token ?? this.adminToken}` };
    let payload: string | undefined;
    if (body !== undefined) {
      headers["Content-Type"] = options.contentType ?? "application/json";
      payload = typeof body === "string" ? body : JSON.stringify(body);
    }
    const response = await fetch(`${this.url}${path}`, {
      method,
      headers,
      ...(payload !== undefined ? { body: payload } : {}),
      tls: { ca: readFileSync(this.caPath, "utf8") },
    });
    const text = await response.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {}
    const ok = options.accept ? options.accept.includes(response.status) : response.ok;
    if (!ok) throw new K8sApiError(response.status, parsed, `${method} ${path}`);
    return { status: response.status, body: parsed };
  }

  private async resourceFor(apiVersion: string, kind: string): Promise<ResourceInfo> {
    let kinds = this.resources.get(apiVersion);
    if (!kinds) {
      const base = apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
      const list = (await this.request("GET", base)).body as { resources: { name: string; kind: string; namespaced: boolean }[] };
      kinds = new Map();
      for (const r of list.resources) if (!r.name.includes("/")) kinds.set(r.kind, { name: r.name, namespaced: r.namespaced });
      this.resources.set(apiVersion, kinds);
    }
    const info = kinds.get(kind);
    if (!info) throw new Error(`the apiserver serves no kind ${kind} in ${apiVersion}`);
    return info;
  }

  /** The REST path of an object (or of its collection when `name` is omitted). */
  async pathOf(ref: { apiVersion: string; kind: string; namespace?: string; name?: string }): Promise<string> {
    const info = await this.resourceFor(ref.apiVersion, ref.kind);
    const base = ref.apiVersion.includes("/") ? `/apis/${ref.apiVersion}` : `/api/${ref.apiVersion}`;
    const ns = info.namespaced ? `/namespaces/${encodeURIComponent(ref.namespace ?? "default")}` : "";
    return `${base}${ns}/${info.name}${ref.name ? `/${encodeURIComponent(ref.name)}` : ""}`;
  }

  /**
   * Creates each object, or replaces it if it exists (like `kubectl apply` for objects this test
   * owns entirely). Accepts YAML (multi-document) or objects. Returns what the server stored.
   */
  async apply(input: string | K8sObject | K8sObject[], options: { namespace?: string } = {}): Promise<K8sObject[]> {
    const objects = typeof input === "string" ? parseManifests(input) : Array.isArray(input) ? input : [input];
    const stored: K8sObject[] = [];
    for (const object of objects) {
      const obj = structuredClone(object);
      if (options.namespace && !obj.metadata.namespace) obj.metadata.namespace = options.namespace;
      const collection = await this.pathOf({ apiVersion: obj.apiVersion, kind: obj.kind, namespace: obj.metadata.namespace });
      const created = await this.request("POST", collection, obj, { accept: [200, 201, 409] });
      if (created.status !== 409) {
        stored.push(created.body as K8sObject);
        continue;
      }
      const path = `${collection}/${encodeURIComponent(obj.metadata.name)}`;
      const current = (await this.request("GET", path)).body as K8sObject;
      obj.metadata.resourceVersion = current.metadata.resourceVersion as string;
      stored.push((await this.request("PUT", path, obj)).body as K8sObject);
    }
    return stored;
  }

  /** JSON merge patch (RFC 7386) of one object. */
  async patch(ref: ObjectRef, mergePatch: unknown): Promise<K8sObject> {
    const path = await this.pathOf(ref);
    return (await this.request("PATCH", path, mergePatch, { contentType: "application/merge-patch+json" })).body as K8sObject;
  }

  async get(ref: ObjectRef): Promise<K8sObject | undefined> {
    const result = await this.request("GET", await this.pathOf(ref), undefined, { accept: [200, 404] });
    return result.status === 404 ? undefined : (result.body as K8sObject);
  }

  /** Deletes objects (refs, objects, or YAML); a missing object is not an error. */
  async delete(input: string | ObjectRef | K8sObject | (ObjectRef | K8sObject)[]): Promise<void> {
    const items = typeof input === "string" ? parseManifests(input) : Array.isArray(input) ? input : [input];
    for (const item of items) {
      const ref: ObjectRef =
        "metadata" in item
          ? { apiVersion: item.apiVersion, kind: item.kind, name: item.metadata.name, ...(item.metadata.namespace ? { namespace: item.metadata.namespace } : {}) }
          : item;
      await this.request("DELETE", await this.pathOf(ref), undefined, { accept: [200, 202, 404] });
    }
  }

  async createNamespace(name: string): Promise<void> {
    await this.apply({ apiVersion: "v1", kind: "Namespace", metadata: { name } });
  }

  /** A ServiceAccount token from the TokenRequest API, as the kubelet projects into pods. */
  async createServiceAccountToken(namespace: string, serviceAccount: string, expirationSeconds = 3600): Promise<string> {
    const result = await this.request(
      "POST",
      `/api/v1/namespaces/${encodeURIComponent(namespace)}/serviceaccounts/${encodeURIComponent(serviceAccount)}/token`,
      { apiVersion: "authentication.k8s.io/v1", kind: "TokenRequest", spec: { expirationSeconds } },
    );
    const token = (result.body as { status?: { token?: string } }).status?.token;
    if (!token) throw new Error(`TokenRequest for ${namespace}/${serviceAccount} returned no token`);
    return token;
  }

  /**
   * A directory laid out like a pod's /var/run/secrets/kubernetes.io/serviceaccount: `token`
   * (fresh from TokenRequest), `ca.crt` and `namespace`. Removed by stop().
   */
  async serviceAccountDir(namespace: string, serviceAccount: string): Promise<string> {
    const dir = mkdtempSync(join(this.dir, "sa-"));
    writeFileSync(join(dir, "token"), await this.createServiceAccountToken(namespace, serviceAccount));
    writeFileSync(join(dir, "ca.crt"), readFileSync(this.caPath));
    writeFileSync(join(dir, "namespace"), namespace);
    return dir;
  }

  /** The chart-equivalent ServiceAccount, Role and RoleBinding (test/k8s/fixtures/rbac.yaml) in `namespace`. */
  async applyRbacFixture(namespace: string): Promise<void> {
    await this.apply(readFileSync(RBAC_FIXTURE, "utf8").replaceAll("__NAMESPACE__", namespace));
  }

  /** A client certificate signed by the cluster CA: user `commonName`, groups `organizations`. */
  clientCertificate(commonName: string, organizations: string[] = []): { cert: string; key: string; certPath: string; keyPath: string } {
    const pki = join(this.dir, "pki");
    const base = `client-${randomBytes(4).toString("hex")}`;
    const subject = `${organizations.map((o) => `/O=${o}`).join("")}/CN=${commonName}`;
    writeFileSync(join(pki, `${base}.cnf`), "extendedKeyUsage=clientAuth\n");
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", `${base}.key`, "-out", `${base}.csr`, "-subj", subject], pki);
    run(["openssl", "x509", "-req", "-in", `${base}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", `${base}.crt`, "-days", "2", "-extfile", `${base}.cnf`], pki);
    const certPath = join(pki, `${base}.crt`);
    const keyPath = join(pki, `${base}.key`);
    return { cert: readFileSync(certPath, "utf8"), key: readFileSync(keyPath, "utf8"), certPath, keyPath };
  }

  /** Kills the apiserver and etcd by PID and removes every file this server wrote. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.apiserver?.kill();
    await this.etcd.kill();
    rmSync(this.dir, { recursive: true, force: true });
    running.delete(this);
  }
}

/** Stops every apiserver this process started and has not stopped (afterAll safety net). */
export async function stopAllApiServers(): Promise<void> {
  await Promise.all([...running].map((s) => s.stop()));
}

export function parseManifests(yaml: string): K8sObject[] {
  const parsed = Bun.YAML.parse(yaml) as unknown;
  // A multi-document stream parses to an array of documents; a single document to itself.
  const docs = Array.isArray(parsed) && parsed.every((d) => d === null || (typeof d === "object" && !Array.isArray(d))) ? parsed : [parsed];
  const out: K8sObject[] = [];
  for (const doc of docs as (K8sObject | null)[]) {
    if (!doc) continue;
    if (doc.kind === "List" && Array.isArray((doc as { items?: unknown }).items)) out.push(...((doc as unknown as { items: K8sObject[] }).items));
    else out.push(doc);
  }
  return out;
}

/** CA, serving cert (SANs: the bind address, 127.0.0.1, 10.0.0.1, kubernetes.default.svc), SA signing keys and the admin token. */
function makePki(dir: string, ips: string[]): void {
  mkdirSync(dir, { recursive: true });
  const sans = [...new Set(["127.0.0.1", "10.0.0.1", ...ips])].map((ip) => `IP:${ip}`);
  sans.push("DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local");
  writeFileSync(join(dir, "ext.cnf"), `subjectAltName=${sans.join(",")}\nextendedKeyUsage=serverAuth\n`);
  run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=peat-test-ca"], dir);
  run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver"], dir);
  run(["openssl", "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "apiserver.crt", "-days", "2", "-extfile", "ext.cnf"], dir);
  run(["openssl", "genrsa", "-out", "sa.key", "2048"], dir);
  run(["openssl", "rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], dir);
  writeFileSync(join(dir, "tokens.csv"), `${randomBytes(24).toString("hex")},admin,admin,system:masters\n`);
}
