/**
 * Builds the single-file executables `dist/peat-mesh-node-linux-{x64,arm64}` from `src/main.ts`.
 *
 * Usage: `bun scripts/build.ts [--target x64|arm64|all] [--entry src/main.ts] [--outdir dist]`
 * (`TARGET=x64|arm64|all` works too; the flag wins). `npm run build` builds both.
 *
 * Why the JS API and not `bun build --compile`: node-datachannel picks its addon package with a
 * computed `require()`, which the bundler cannot follow, so the CLI produces a binary that fails
 * with "Cannot load native addon" once node_modules is gone. The `embedNodeDatachannel` plugin
 * swaps the loader for a static require of the target's addon, and only the JS API takes plugins.
 * Automerge's wasm is embedded by `src/automerge.ts` itself (`with { type: "file" }`).
 *
 * minify + bytecode + esm: bytecode cuts module loading from ~100-200 ms to ~30-50 ms (measured in
 * the toolchain notes), and bytecode needs esm because the node uses top-level await.
 */
import type { BunPlugin } from "bun";
import { existsSync, mkdirSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { type Arch, ARCHES, ensureCrossDeps, ndcAddonPath, ndcPackage, projectRoot } from "./ensure-cross-deps.ts";

export class BuildError extends Error {
  override readonly name = "BuildError";
}

export class UsageError extends Error {
  override readonly name = "UsageError";
}

export const COMPILE_TARGET: Record<Arch, Bun.Build.CompileTarget> = {
  x64: "bun-linux-x64",
  arm64: "bun-linux-arm64",
};

export const DEFAULT_ENTRY: string = path.join(projectRoot, "src", "main.ts");
export const DEFAULT_OUTDIR: string = path.join(projectRoot, "dist");

export function outfileFor(arch: Arch, outdir: string = DEFAULT_OUTDIR): string {
  return path.join(outdir, `peat-mesh-node-linux-${arch}`);
}

/**
 * Replaces node-datachannel's loader module (both its esm and cjs builds) with a static require of
 * the addon for `arch`. A static specifier is what lets the bundler embed the .node file; at run
 * time Bun extracts it to `$TMPDIR/.bun-<uid>-<hash>.node` and dlopens it.
 * `hits` counts replacements so the caller can tell a silently non-matching filter (e.g. after a
 * node-datachannel upgrade moved the file) from a working build.
 */
export function embedNodeDatachannel(arch: Arch, hits: { count: number } = { count: 0 }): BunPlugin {
  const pkg = ndcPackage(arch);
  return {
    name: "embed-node-datachannel",
    setup(build) {
      build.onLoad({ filter: /node-datachannel[\\/]dist[\\/](esm|cjs)[\\/]lib[\\/]node-datachannel\.(mjs|cjs)$/ }, () => {
        hits.count++;
        return {
          contents: `const binding = require(${JSON.stringify(`${pkg}/node_datachannel.node`)});\nexport default binding;\n`,
          loader: "js",
        };
      });
    },
  };
}

/** Everything whose change should trigger a rebuild of the executable. */
function sourceInputs(): string[] {
  const files: string[] = [];
  const walk = (dir: string): void => {
    if (!existsSync(dir)) return;
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else files.push(full);
    }
  };
  walk(path.join(projectRoot, "src"));
  for (const f of ["package.json", "bun.lock", "tsconfig.json", "scripts/build.ts", "scripts/ensure-cross-deps.ts"]) {
    const full = path.join(projectRoot, f);
    if (existsSync(full)) files.push(full);
  }
  return files;
}

/** True if the executable is missing or older than any source, the lockfile or this script. */
export function isStale(arch: Arch, outdir: string = DEFAULT_OUTDIR): boolean {
  const out = outfileFor(arch, outdir);
  if (!existsSync(out)) return true;
  const built = statSync(out).mtimeMs;
  return sourceInputs().some((f) => statSync(f).mtimeMs > built);
}

export interface BuildResult {
  arch: Arch;
  outfile: string;
  bytes: number;
  seconds: number;
  /** Whether node-datachannel's addon went into the executable (false while nothing imports it). */
  embedsNodeDatachannel: boolean;
  modules: number;
}

export async function buildExecutable(
  arch: Arch,
  opts: { entry?: string; outdir?: string } = {},
): Promise<BuildResult> {
  const entry = path.resolve(opts.entry ?? DEFAULT_ENTRY);
  const outdir = path.resolve(opts.outdir ?? DEFAULT_OUTDIR);
  if (!existsSync(entry)) throw new BuildError(`entry point ${entry} does not exist`);

  await ensureCrossDeps([arch]);
  if (!existsSync(ndcAddonPath(arch))) {
    throw new BuildError(`${ndcPackage(arch)} is not installed; run \`bun scripts/ensure-cross-deps.ts ${arch}\``);
  }

  mkdirSync(outdir, { recursive: true });
  const outfile = outfileFor(arch, outdir);
  const hits = { count: 0 };
  const started = performance.now();
  let result: Bun.BuildOutput;
  try {
    result = await Bun.build({
      entrypoints: [entry],
      compile: {
        target: COMPILE_TARGET[arch],
        outfile,
        // The node is configured by environment only; a stray .env or bunfig.toml in whatever
        // directory the binary happens to start in must not change its behaviour.
        autoloadDotenv: false,
        autoloadBunfig: false,
      },
      minify: true,
      bytecode: true,
      format: "esm",
      sourcemap: "none",
      metafile: true,
      plugins: [embedNodeDatachannel(arch, hits)],
      throw: false,
    });
  } catch (err) {
    // Bun.build can still throw for configuration problems (e.g. a cross-compile runtime download failing).
    throw new BuildError(`Bun.build for ${COMPILE_TARGET[arch]} threw: ${err instanceof Error ? err.message : String(err)}`);
  }
  const seconds = (performance.now() - started) / 1000;

  if (!result.success) {
    const logs = result.logs
      .map((l) => {
        const at = l.position ? `${path.relative(projectRoot, l.position.file)}:${l.position.line}:${l.position.column}: ` : "";
        return `  ${at}${l.level}: ${l.message}`;
      })
      .join("\n");
    throw new BuildError(`Bun.build for ${COMPILE_TARGET[arch]} failed:\n${logs}`);
  }
  const inputs = Object.keys(result.metafile?.inputs ?? {});
  const bundlesNdc = inputs.some((p) => /node_modules[\\/]node-datachannel[\\/]/.test(p));
  if (bundlesNdc && hits.count === 0) {
    throw new BuildError(
      "node-datachannel is in the bundle but the embed-node-datachannel plugin never matched its loader, so the " +
        "addon is not embedded and the executable would fail without node_modules; update the plugin's filter " +
        "for this node-datachannel version",
    );
  }
  if (!existsSync(outfile)) throw new BuildError(`Bun.build reported success but ${outfile} was not written`);
  return {
    arch,
    outfile,
    bytes: statSync(outfile).size,
    seconds,
    embedsNodeDatachannel: hits.count > 0,
    modules: inputs.length,
  };
}

function parseTargets(value: string): Arch[] {
  const v = value.replace(/^bun-linux-/, "");
  if (v === "all") return [...ARCHES];
  if (v === "x64" || v === "arm64") return [v];
  throw new UsageError(`unknown target '${value}' (expected x64, arm64 or all)`);
}

interface Cli {
  targets: Arch[];
  entry?: string;
  outdir?: string;
}

function parseArgs(argv: string[]): Cli {
  let target = process.env.TARGET ?? "all";
  let entry: string | undefined;
  let outdir: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const [flag, inline] = arg.includes("=") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, undefined];
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    if (flag === "--target") target = value();
    else if (flag === "--entry") entry = value();
    else if (flag === "--outdir") outdir = value();
    else throw new UsageError(`unknown argument '${arg}' (usage: bun scripts/build.ts [--target x64|arm64|all])`);
  }
  return { targets: parseTargets(target), entry, outdir };
}

const mb = (bytes: number): string => (bytes / 1024 / 1024).toFixed(1);

if (import.meta.main) {
  try {
    const cli = parseArgs(process.argv.slice(2));
    const started = performance.now();
    for (const arch of cli.targets) {
      const r = await buildExecutable(arch, { entry: cli.entry, outdir: cli.outdir });
      const ndc = r.embedsNodeDatachannel ? `embeds ${ndcPackage(arch)}` : "node-datachannel not imported, no addon embedded";
      console.log(
        `built ${path.relative(process.cwd(), r.outfile)}  ${mb(r.bytes)} MB  in ${r.seconds.toFixed(2)} s  (${r.modules} modules; ${ndc})`,
      );
    }
    console.log(`build finished in ${((performance.now() - started) / 1000).toFixed(2)} s`);
  } catch (err) {
    if (err instanceof BuildError || err instanceof UsageError || (err instanceof Error && err.name === "CrossDepsError")) {
      console.error(`build failed: ${err.message}`);
    } else {
      console.error("build failed:", err);
    }
    process.exit(1);
  }
}
