/**
 * Child process for the SIGKILL durability test: writes documents forever and prints
 * `<id> <round>` on stdout after each `put` returns, i.e. after the write was acknowledged.
 * Usage: bun src/store/testdata/writer.ts <dataDir> [ids=50]
 */
import { silentLogger } from "../../log.ts";
import { DocumentStore } from "../document-store.ts";

const dataDir = process.argv[2];
if (!dataDir) throw new Error("usage: writer.ts <dataDir> [ids]");
const ids = Number(process.argv[3] ?? 50);

const store = new DocumentStore({ dataDir, nodeId: "writer", log: silentLogger(), sweepIntervalMs: 0 });
await store.start();
process.stdout.write("ready\n");
for (let round = 0; ; round++) {
  for (let i = 0; i < ids; i++) {
    const id = `d${i}`;
    store.put("durable", id, { i, round, note: `round ${round} of ${id}`, list: [round, i] });
    process.stdout.write(`${id} ${round}\n`);
  }
}
