/**
 * A TCP forwarder between a client under test and a real server, so a test can break the path the
 * way networks break: `cut()` resets every connection and refuses new ones (the server is gone),
 * `freeze()` keeps existing connections open but silently drops their bytes (a dead path nobody
 * notices), `resume()` heals. TLS passes through untouched.
 */
import type { Socket, TCPSocketListener } from "bun";

interface Pair {
  client: Socket<Pair>;
  upstream: Socket<Pair> | undefined;
  toUpstream: Uint8Array[];
  toClient: Uint8Array[];
  frozen: boolean;
  closed: boolean;
}

function send(socket: Socket<Pair> | undefined, queue: Uint8Array[], chunk: Uint8Array): void {
  if (!socket || queue.length > 0) {
    queue.push(chunk);
    return;
  }
  const written = socket.write(chunk);
  if (written < chunk.length) queue.push(chunk.subarray(Math.max(0, written)));
}

function flush(socket: Socket<Pair>, queue: Uint8Array[]): void {
  while (queue.length > 0) {
    const chunk = queue[0] as Uint8Array;
    const written = socket.write(chunk);
    if (written < chunk.length) {
      queue[0] = chunk.subarray(Math.max(0, written));
      return;
    }
    queue.shift();
  }
}

export class TcpProxy {
  private readonly pairs = new Set<Pair>();
  private refusing = false;
  private readonly listener: TCPSocketListener<Pair>;
  /** Connections accepted since start (a reconnect shows up here). */
  connections = 0;

  constructor(
    readonly target: { host: string; port: number },
    host = "127.0.0.1",
  ) {
    this.listener = Bun.listen<Pair>({
      hostname: host,
      port: 0,
      socket: {
        open: (client) => {
          if (this.refusing) {
            client.terminate();
            return;
          }
          this.connections++;
          const pair: Pair = { client, upstream: undefined, toUpstream: [], toClient: [], frozen: false, closed: false };
          client.data = pair;
          this.pairs.add(pair);
          void Bun.connect<Pair>({
            hostname: target.host,
            port: target.port,
            socket: {
              open: (upstream) => {
                upstream.data = pair;
                if (pair.closed) return void upstream.terminate();
                pair.upstream = upstream;
                flush(upstream, pair.toUpstream);
              },
              data: (_upstream, chunk) => {
                if (!pair.frozen) send(pair.client, pair.toClient, new Uint8Array(chunk));
              },
              drain: (upstream) => flush(upstream, pair.toUpstream),
              close: () => this.close(pair),
              error: () => this.close(pair),
              connectError: () => this.close(pair),
            },
          }).catch(() => this.close(pair));
        },
        data: (client, chunk) => {
          const pair = client.data;
          if (pair && !pair.frozen) send(pair.upstream, pair.toUpstream, new Uint8Array(chunk));
        },
        drain: (client) => client.data && flush(client, client.data.toClient),
        close: (client) => client.data && this.close(client.data),
        error: (client) => client.data && this.close(client.data),
      },
    });
  }

  get port(): number {
    return this.listener.port;
  }

  get host(): string {
    return this.listener.hostname;
  }

  private close(pair: Pair): void {
    if (pair.closed) return;
    pair.closed = true;
    this.pairs.delete(pair);
    pair.client.terminate();
    pair.upstream?.terminate();
  }

  /** Resets every open connection and refuses new ones until resume(). */
  cut(): void {
    this.refusing = true;
    for (const pair of [...this.pairs]) this.close(pair);
  }

  /** Existing connections stay open but carry nothing more; new connections work normally. */
  freeze(): void {
    for (const pair of this.pairs) pair.frozen = true;
  }

  resume(): void {
    this.refusing = false;
  }

  get openConnections(): number {
    return this.pairs.size;
  }

  stop(): void {
    this.cut();
    this.listener.stop(true);
  }
}
