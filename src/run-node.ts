/**
 * The node's process body (src/main.ts loads it): reads the environment, builds the mesh, runs
 * until SIGTERM or SIGINT. Exit codes: 0 after a clean stop, 1 when startup fails (bad config, port
 * in use, unwritable data dir).
 */
import pkg from "../package.json" with { type: "json" };
import { loadConfig } from "./config.ts";
import { ConfigError } from "./errors.ts";
import { Logger, colorWanted } from "./log.ts";
import { PeatMesh } from "./mesh.ts";

/** SIGTERM must end the process with 0 within 5 s even if a component hangs while stopping. */
const SHUTDOWN_DEADLINE_MS = 4500;

function fail(message: string): never {
  process.stderr.write(`Error: ${message}\n`);
  process.exit(1);
}

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }

  const log = new Logger("peat_mesh_node", {
    filter: config.log.filter,
    format: config.log.format,
    color: config.log.format === "text" && colorWanted(process.env),
  });

  const mesh = new PeatMesh({ config, log, version: pkg.version });

  let stopping = false;
  const shutdown = async (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log.info(`Received ${signal}`);
    log.info("Shutting down...");
    const deadline = setTimeout(() => {
      log.warn("Shutdown deadline reached; exiting with components still stopping");
      process.exit(0);
    }, SHUTDOWN_DEADLINE_MS);
    await mesh.stop();
    clearTimeout(deadline);
    log.info("peat-mesh-node stopped");
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));

  // A fault in one peer's handling must not take the node down; it is logged and the node goes on.
  process.on("unhandledRejection", (reason) => {
    log.error("Unhandled rejection", { error: reason instanceof Error ? reason.message : String(reason) });
  });

  try {
    await mesh.start();
  } catch (err) {
    fail(err instanceof Error ? err.message : String(err));
  }
}

await main();
