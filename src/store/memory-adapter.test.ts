import { runStorageAdapterConformance } from "./conformance.ts";
import { MemoryStorageAdapter } from "./memory-adapter.ts";

runStorageAdapterConformance("MemoryStorageAdapter", () => ({ adapter: new MemoryStorageAdapter() }));
