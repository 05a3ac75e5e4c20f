/**
 * The single place that loads Automerge. The `/slim` entry plus an embedded wasm file keeps the
 * compiled executable self-contained (the default entry reads the wasm from the build machine's
 * node_modules path). Every module imports Automerge from here, after `await`ing `automergeReady`.
 */
import * as Automerge from "@automerge/automerge/slim";
// @ts-ignore -- Bun embeds the file and returns its path (a $bunfs path inside the executable).
import wasmPath from "@automerge/automerge/automerge.wasm" with { type: "file" };

export const automergeReady: Promise<void> = (async () => {
  const bytes = new Uint8Array(await Bun.file(wasmPath as string).arrayBuffer());
  await Automerge.initializeWasm(bytes);
})();

await automergeReady;

export { Automerge };
