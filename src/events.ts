/**
 * Events the broker's WebSocket streams to local apps. The shapes are the original's MeshEvent,
 * with `origin` added to SyncEvent so an app can tell its own writes from the mesh's.
 */
export type MeshEvent =
  | { type: "SyncEvent"; collection: string; doc_id: string; action: "upsert" | "delete"; origin: "local" | "remote" }
  | { type: "PeerConnected"; peer_id: string; device_id?: string; addresses?: string[] }
  | { type: "PeerDisconnected"; peer_id: string; reason: string }
  | { type: "TopologyChanged"; new_role: string; peer_count: number };

export type MeshEventListener = (event: MeshEvent) => void;

export class MeshEvents {
  private readonly listeners = new Set<MeshEventListener>();

  on(listener: MeshEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(event: MeshEvent): void {
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch {
        // One failing subscriber (a closed socket) must not stop delivery to the others.
      }
    }
  }

  get listenerCount(): number {
    return this.listeners.size;
  }
}
