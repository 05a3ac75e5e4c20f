/**
 * Makes sure the per-architecture native packages the executable embeds are in node_modules.
 *
 * A plain `bun install` only fetches optional dependencies for the host CPU, so on an x64 build
 * machine `@node-datachannel/linux-arm64-gnu` is missing and the arm64 executable could not embed
 * its addon. `bun install --frozen-lockfile --cpu=x64 --cpu=arm64 --os=linux` adds the missing
 * packages from the lockfile without re-resolving anything: the lockfile already lists every
 * platform's package, so its content stays byte-identical (checked below, because a changed
 * lockfile would mean the build silently used versions nobody reviewed).
 *
 * Usage: `bun scripts/ensure-cross-deps.ts [x64|arm64 ...]` (default: both).
 */
import { existsSync } from "node:fs";
import path from "node:path";

export type Arch = "x64" | "arm64";
export const ARCHES: readonly Arch[] = ["x64", "arm64"];

export class CrossDepsError extends Error {
  override readonly name = "CrossDepsError";
}

export const projectRoot: string = path.resolve(import.meta.dir, "..");

/** The node-datachannel prebuilt package for a glibc Linux target. */
export function ndcPackage(arch: Arch): string {
  return `@node-datachannel/linux-${arch}-gnu`;
}

/** Absolute path of the addon file inside node_modules. */
export function ndcAddonPath(arch: Arch, root: string = projectRoot): string {
  return path.join(root, "node_modules", ndcPackage(arch), "node_datachannel.node");
}

async function lockfileHash(root: string): Promise<string | null> {
  const lock = Bun.file(path.join(root, "bun.lock"));
  if (!(await lock.exists())) return null;
  return new Bun.CryptoHasher("sha256").update(await lock.arrayBuffer()).digest("hex");
}

/**
 * Installs the Linux packages of every arch in `wanted` (plus the host's, so a fresh checkout never
 * loses the x64 addon) if any addon is missing. Returns the arches that had to be installed.
 */
export async function ensureCrossDeps(wanted: readonly Arch[], root: string = projectRoot): Promise<Arch[]> {
  const missing = wanted.filter((arch) => !existsSync(ndcAddonPath(arch, root)));
  if (missing.length === 0) return [];

  const before = await lockfileHash(root);
  if (before === null) {
    throw new CrossDepsError(`no bun.lock in ${root}: run \`bun install\` first so the versions are pinned`);
  }
  // Always name both arches: `--cpu=arm64` alone on an empty node_modules would install only the
  // arm64 packages and leave the host without its own addon.
  const cpus = new Set<Arch>([...ARCHES, ...wanted]);
  const cmd = [process.execPath, "install", "--frozen-lockfile", ...[...cpus].map((c) => `--cpu=${c}`), "--os=linux"];
  console.log(`[ensure-cross-deps] missing ${missing.map(ndcPackage).join(", ")}; running: ${cmd.slice(1).join(" ")}`);
  const proc = Bun.spawnSync({ cmd, cwd: root, stdout: "inherit", stderr: "inherit" });
  if (proc.exitCode !== 0) {
    throw new CrossDepsError(`\`bun ${cmd.slice(1).join(" ")}\` exited with ${proc.exitCode}`);
  }

  const after = await lockfileHash(root);
  if (after !== before) {
    throw new CrossDepsError("bun.lock changed while installing cross-architecture packages; revert it and investigate");
  }
  const stillMissing = wanted.filter((arch) => !existsSync(ndcAddonPath(arch, root)));
  if (stillMissing.length > 0) {
    throw new CrossDepsError(
      `still missing after install: ${stillMissing.map((a) => ndcAddonPath(a, root)).join(", ")} ` +
        "(is the package listed in bun.lock's optionalDependencies of node-datachannel?)",
    );
  }
  return missing;
}

function parseArches(args: string[]): Arch[] {
  if (args.length === 0) return [...ARCHES];
  return args.map((a) => {
    if (a === "x64" || a === "arm64") return a;
    throw new CrossDepsError(`unknown arch '${a}' (expected x64 or arm64)`);
  });
}

if (import.meta.main) {
  try {
    const installed = await ensureCrossDeps(parseArches(process.argv.slice(2)));
    console.log(installed.length ? `[ensure-cross-deps] installed for ${installed.join(", ")}` : "[ensure-cross-deps] all present");
  } catch (err) {
    console.error(`[ensure-cross-deps] ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  }
}
