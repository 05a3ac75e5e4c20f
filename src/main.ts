#!/usr/bin/env bun
/**
 * peat-mesh-node. The runtime settings come first (src/runtime-tuning.ts: the process may replace
 * itself before anything else is loaded); the node itself is src/run-node.ts.
 */
import { reexecWithRuntimeDefaults } from "./runtime-tuning.ts";

await reexecWithRuntimeDefaults();
await import("./run-node.ts");
