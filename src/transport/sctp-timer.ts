/**
 * Fewer wake-ups for usrsctp's timer thread without slowing SCTP's clock.
 *
 * usrsctp (inside node-datachannel's addon) runs one "SCTP timer" thread per process that loops on
 * `nanosleep(10 ms)` and, after each return, advances SCTP's clock by a fixed 10 ms. 100 wake-ups
 * a second cost 0.10–0.16 CPU-s/min on the bench VM, over half of an idle node's budget. Timer slack
 * (tried before, and removed) makes the wake-ups late, and since every wake-up still counts as
 * 10 ms, SCTP's retransmission timers then run slow in real time.
 *
 * Here the addon's import of `nanosleep` (its GOT slot) is pointed at a small C function
 * (sctp-timer.c, compiled at run time with bun:ffi's TinyCC) that, on the SCTP timer thread only,
 * keeps the real time at which each 10 ms tick falls due: a call whose tick is already due returns
 * at once, otherwise it sleeps until that tick is due plus `pace − 10 ms`. The thread then wakes
 * once per `pace` and delivers the pace/10 ticks owed in a burst, so SCTP's clock is never ahead of
 * real time and never more than `pace − 10 ms` behind. At pace 10 it behaves as before, except that
 * ticks follow an absolute schedule and no longer drift slow by each wake-up's overhead. Every other
 * thread and every other sleep length goes straight to libc's nanosleep.
 *
 * Measured on the 2-vCPU x86-64 dev VM (`bun test src/transport/sctp-timer.test.ts` prints it;
 * kernel schedstat of the SCTP timer thread over 2 s windows): unhooked 98/s and 0.12 CPU-s/min;
 * pace 10: 100/s, 0.12; pace 50: 20/s, 0.035; pace 100: 10/s, 0.017. Delivered ticks were exactly
 * elapsed/10 (200 in 2 s) at every pace; unhooked, usrsctp's clock loses ~2 % (98 ticks a second).
 *
 * Lowering the pace takes effect when the thread's current sleep ends, at most the old lag later:
 * interrupting it would need a signal or a futex, i.e. the wake-ups this exists to avoid.
 *
 * Finding the slot: the addon is located in /proc/self/maps (the file mapped at offset 0 that is an
 * ELF shared object for this machine, exports `napi_register_module_v1`, imports `nanosleep`, and
 * contains usrsctp's "SCTP timer" thread name). Checking content rather than the file name is what
 * makes it work in a `bun build --compile` executable, which extracts the addon to a temp file
 * named `.bun-<uid>-<hash>.node`. The ELF's section headers give `.rela.plt` / `.rela.dyn`, whose
 * JUMP_SLOT / GLOB_DAT entries for `nanosleep` give the slot's address relative to the load base.
 *
 * Fail-safe: any surprise (not Linux x64/arm64, cc failing, the addon not loaded, an unexpected ELF,
 * a slot that points neither at libc's nanosleep nor into the addon) returns a reason and writes
 * nothing. Linux glibc only, which is all node-datachannel ships here.
 */
import { cc, dlopen, type Pointer } from "bun:ffi";
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
// @ts-ignore -- Bun embeds the file and returns its path (a $bunfs path inside the executable).
import sctpTimerSource from "./sctp-timer.c" with { type: "file" };

/** usrsctp's fixed tick (TIMEOUT_INTERVAL), the pace that reproduces its unhooked behaviour. */
export const SCTP_TICK_MS = 10;
/** Highest pace accepted; sctp-timer.c clamps to the same bounds. */
export const MAX_SCTP_PACE_MS = 1000;

export class SctpTimerInstallError extends Error {
  override readonly name = "SctpTimerInstallError";
}

export class SctpTimerPaceError extends RangeError {
  override readonly name = "SctpTimerPaceError";
}

export interface SctpTimerStats {
  /** nanosleep calls taken over from the SCTP timer thread. */
  calls: number;
  /** Of those, how many really slept (the rest returned at once to deliver an owed tick). */
  sleeps: number;
  /** Ticks handed to usrsctp (one per call). */
  ticks: number;
  /** Times the schedule was reset because over a second was owed (suspend, SIGSTOP). */
  resyncs: number;
  /** Calls through the hook passed to libc unchanged (other threads, other lengths). */
  passthrough: number;
  /** Largest delay of a tick past its due time since install or `resetMaxLate()`. */
  maxLateMs: number;
}

export interface SctpTimerPacer {
  /** Sets the pace, 10 (every tick on time, today's behaviour) to 1000 ms; call on state changes, not per message. */
  setPaceMs(ms: number): void;
  readonly paceMs: number;
  /** Re-installs the hook if something (a racing lazy-binding resolver) overwrote it; true if hooked now. */
  ensureHooked(): boolean;
  stats(): SctpTimerStats;
  resetMaxLate(): void;
  /** Absolute addresses of the hooked GOT slots, for diagnostics and tests. */
  readonly slots: readonly number[];
  /** The addon file the hook was installed into, as /proc/self/maps names it. */
  readonly addonPath: string;
}

export type InstallResult = { pacer: SctpTimerPacer } | { pacer: undefined; reason: string };

// ---- ELF --------------------------------------------------------------------------------------

const EM_X86_64 = 62;
const EM_AARCH64 = 183;
const ET_DYN = 3;
const PT_LOAD = 1;
const SHT_RELA = 4;
const SHT_DYNSYM = 11;

/** Relocation types that fill a GOT slot with a symbol's address, per machine. */
const SLOT_RELOCS: Record<number, Record<number, "JUMP_SLOT" | "GLOB_DAT">> = {
  [EM_X86_64]: { 7: "JUMP_SLOT", 6: "GLOB_DAT" },
  [EM_AARCH64]: { 1026: "JUMP_SLOT", 1025: "GLOB_DAT" },
};

const MACHINE_FOR_ARCH: Record<string, number> = { x64: EM_X86_64, arm64: EM_AARCH64 };

export interface GotSlot {
  /** Link-time address (add the load bias for the run-time address). */
  vaddr: number;
  kind: "JUMP_SLOT" | "GLOB_DAT";
}

export interface AddonElf {
  machine: number;
  /** p_vaddr of the first PT_LOAD, truncated to its alignment: what the offset-0 mapping starts at. */
  firstLoadVaddr: number;
  nanosleepSlots: GotSlot[];
  exportsNapi: boolean;
  /** Whether .rodata holds usrsctp's timer thread name, i.e. this object runs the SCTP timer. */
  hasSctpTimer: boolean;
}

/** Reads byte ranges of one file without loading all of it (the addon is ~9 MB). */
class FileReader {
  readonly size: number;
  constructor(private readonly fd: number) {
    this.size = fstatSync(fd).size;
  }
  read(offset: number, length: number): Buffer {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new SctpTimerInstallError(`ELF range ${offset}+${length} lies outside the ${this.size}-byte file`);
    }
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = readSync(this.fd, buf, done, length - done, offset + done);
      if (n <= 0) throw new SctpTimerInstallError(`short read at ${offset + done}`);
      done += n;
    }
    return buf;
  }
}

/** Offsets and sizes beyond 2^53 cannot occur in a file we can read; refusing them keeps the rest in plain numbers. */
function num(v: bigint): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new SctpTimerInstallError(`ELF value ${v} is implausibly large`);
  return Number(v);
}

function cstr(buf: Buffer, at: number): string {
  if (at >= buf.length) return "";
  const end = buf.indexOf(0, at);
  return buf.toString("latin1", at, end < 0 ? buf.length : end);
}

/** Parses just enough of a little-endian ELF64 shared object to find its `nanosleep` GOT slots. */
export function readAddonElf(file: string): AddonElf {
  const fd = openSync(file, "r");
  try {
    const f = new FileReader(fd);
    const eh = f.read(0, 64);
    if (eh.readUInt32BE(0) !== 0x7f454c46) throw new SctpTimerInstallError(`${file} is not an ELF file`);
    if (eh[4] !== 2 || eh[5] !== 1) throw new SctpTimerInstallError(`${file} is not a little-endian ELF64 file`);
    if (eh.readUInt16LE(16) !== ET_DYN) throw new SctpTimerInstallError(`${file} is not a shared object`);
    const machine = eh.readUInt16LE(18);
    const slotRelocs = SLOT_RELOCS[machine];
    if (!slotRelocs) throw new SctpTimerInstallError(`${file} has unsupported e_machine ${machine}`);
    const phoff = num(eh.readBigUInt64LE(32));
    const shoff = num(eh.readBigUInt64LE(40));
    const phentsize = eh.readUInt16LE(54);
    const phnum = eh.readUInt16LE(56);
    const shentsize = eh.readUInt16LE(58);
    const shnum = eh.readUInt16LE(60);
    const shstrndx = eh.readUInt16LE(62);
    if (phentsize < 56 || shentsize < 64 || shnum === 0 || shstrndx >= shnum) {
      throw new SctpTimerInstallError(`${file} has unexpected ELF header tables`);
    }

    let firstLoadVaddr: number | undefined;
    const ph = f.read(phoff, phentsize * phnum);
    for (let i = 0; i < phnum; i++) {
      const p = i * phentsize;
      if (ph.readUInt32LE(p) !== PT_LOAD) continue;
      const vaddr = num(ph.readBigUInt64LE(p + 16));
      const align = Math.max(num(ph.readBigUInt64LE(p + 48)), 1);
      if (num(ph.readBigUInt64LE(p + 8)) !== 0) throw new SctpTimerInstallError(`${file}: first PT_LOAD does not start at file offset 0`);
      firstLoadVaddr = vaddr - (vaddr % align);
      break;
    }
    if (firstLoadVaddr === undefined) throw new SctpTimerInstallError(`${file} has no PT_LOAD segment`);

    interface Section { name: number; type: number; offset: number; size: number; link: number; entsize: number; nameStr: string }
    const sh = f.read(shoff, shentsize * shnum);
    const sections: Section[] = [];
    for (let i = 0; i < shnum; i++) {
      const s = i * shentsize;
      sections.push({
        name: sh.readUInt32LE(s),
        type: sh.readUInt32LE(s + 4),
        offset: num(sh.readBigUInt64LE(s + 24)),
        size: num(sh.readBigUInt64LE(s + 32)),
        link: sh.readUInt32LE(s + 40),
        entsize: num(sh.readBigUInt64LE(s + 56)),
        nameStr: "",
      });
    }
    const shstr = sections[shstrndx]!;
    const shstrtab = f.read(shstr.offset, shstr.size);
    for (const s of sections) s.nameStr = cstr(shstrtab, s.name);

    const symtabs = new Map<number, { syms: Buffer; strs: Buffer; entsize: number }>();
    const loadSymtab = (index: number) => {
      let t = symtabs.get(index);
      if (t) return t;
      const sym = sections[index];
      if (!sym || sym.type !== SHT_DYNSYM) return undefined;
      const str = sections[sym.link];
      if (!str) throw new SctpTimerInstallError(`${file}: .dynsym links to a missing string table`);
      t = { syms: f.read(sym.offset, sym.size), strs: f.read(str.offset, str.size), entsize: sym.entsize || 24 };
      symtabs.set(index, t);
      return t;
    };

    const nanosleepSlots: GotSlot[] = [];
    let exportsNapi = false;
    sections.forEach((s, i) => {
      if (s.type !== SHT_DYNSYM) return;
      const t = loadSymtab(i)!;
      for (let at = t.entsize; at + 24 <= t.syms.length; at += t.entsize) {
        const defined = t.syms.readUInt16LE(at + 6) !== 0;
        if (defined && cstr(t.strs, t.syms.readUInt32LE(at)) === "napi_register_module_v1") exportsNapi = true;
      }
    });
    for (const s of sections) {
      if (s.type !== SHT_RELA) continue;
      const symtab = loadSymtab(s.link);
      if (!symtab) continue;
      const entsize = s.entsize || 24;
      const rela = f.read(s.offset, s.size);
      for (let r = 0; r + 24 <= rela.length; r += entsize) {
        const info = rela.readBigUInt64LE(r + 8);
        const kind = slotRelocs[Number(info & 0xffffffffn)];
        if (!kind) continue;
        const symAt = Number(info >> 32n) * symtab.entsize;
        if (symAt === 0 || symAt + 24 > symtab.syms.length) continue;
        // Only an import (undefined symbol) is a call into libc; a definition would be the addon's own.
        if (symtab.syms.readUInt16LE(symAt + 6) !== 0) continue;
        if (cstr(symtab.strs, symtab.syms.readUInt32LE(symAt)) !== "nanosleep") continue;
        nanosleepSlots.push({ vaddr: num(rela.readBigUInt64LE(r)), kind });
      }
    }

    // The thread name is what this hook is about, so its presence is the identity check that
    // survives renames (the compiled executable's temp file) and rebuilds of the addon.
    const rodata = sections.find((s) => s.nameStr === ".rodata");
    const hasSctpTimer = rodata ? f.read(rodata.offset, rodata.size).includes("SCTP timer\0", 0, "latin1") : false;

    return { machine, firstLoadVaddr, nanosleepSlots, exportsNapi, hasSctpTimer };
  } finally {
    closeSync(fd);
  }
}

// ---- /proc/self/maps --------------------------------------------------------------------------

interface Mapping {
  start: number;
  end: number;
  perms: string;
  offset: number;
  inode: number;
  path: string;
}

function readMaps(): Mapping[] {
  const out: Mapping[] = [];
  for (const line of readFileSync("/proc/self/maps", "utf8").split("\n")) {
    // start-end perms offset dev inode [path]; the path may contain spaces.
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) \S+ (\d+)\s*(.*)$/.exec(line);
    if (!m) continue;
    out.push({
      start: parseInt(m[1]!, 16),
      end: parseInt(m[2]!, 16),
      perms: m[3]!,
      offset: parseInt(m[4]!, 16),
      inode: Number(m[5]),
      path: m[6]!,
    });
  }
  return out;
}

interface LocatedAddon {
  path: string;
  inode: number;
  base: number;
  elf: AddonElf;
}

/**
 * The mapped file that is node-datachannel's addon. Only `.node` files (or ones whose name says
 * node_datachannel) are opened, so ordinary libraries cost nothing; the content checks decide.
 */
function locateAddon(maps: Mapping[], machine: number): LocatedAddon {
  const seen = new Set<string>();
  const found: LocatedAddon[] = [];
  const rejected: string[] = [];
  for (const m of maps) {
    if (m.offset !== 0 || m.inode === 0 || !m.path.startsWith("/")) continue;
    const key = `${m.inode}:${m.path}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const base = path.basename(m.path.replace(/ \(deleted\)$/, ""));
    if (!base.endsWith(".node") && !base.includes("node_datachannel")) continue;
    const file = fileForMapping(m);
    if (!file) {
      rejected.push(`${m.path}: cannot open the mapped file`);
      continue;
    }
    let elf: AddonElf;
    try {
      elf = readAddonElf(file);
    } catch (err) {
      rejected.push(`${m.path}: ${err instanceof Error ? err.message : String(err)}`);
      continue;
    }
    if (elf.machine !== machine) rejected.push(`${m.path}: e_machine ${elf.machine}, not ${machine}`);
    else if (!elf.exportsNapi) rejected.push(`${m.path}: not a Node-API addon`);
    else if (!elf.hasSctpTimer) rejected.push(`${m.path}: no SCTP timer`);
    else if (elf.nanosleepSlots.length === 0) rejected.push(`${m.path}: does not import nanosleep through a GOT slot`);
    else found.push({ path: m.path, inode: m.inode, base: m.start, elf });
  }
  if (found.length === 0) {
    throw new SctpTimerInstallError(
      `node-datachannel's addon is not mapped (load it and call preload() first)` + (rejected.length ? `; rejected: ${rejected.join("; ")}` : ""),
    );
  }
  if (found.length > 1) {
    // Two copies mean two SCTP timer threads sharing one schedule in the hook; leave them alone.
    throw new SctpTimerInstallError(`more than one usrsctp addon is mapped: ${found.map((a) => a.path).join(", ")}`);
  }
  return found[0]!;
}

/**
 * A path that reads the very file that is mapped: the named path when its inode still matches,
 * else the kernel's map_files link (which survives deletion, but may need privileges).
 */
function fileForMapping(m: Mapping): string | undefined {
  if (!m.path.endsWith(" (deleted)")) {
    try {
      if (statSync(m.path).ino === m.inode) return m.path;
    } catch {}
  }
  const viaProc = `/proc/self/map_files/${m.start.toString(16)}-${m.end.toString(16)}`;
  try {
    closeSync(openSync(viaProc, "r"));
    return viaProc;
  } catch {
    return undefined;
  }
}

// ---- the C side -------------------------------------------------------------------------------

const SYMBOLS = {
  peat_sctp_init: { args: ["ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "int"], returns: "void" },
  peat_sctp_set_pace_ms: { args: ["int"], returns: "void" },
  peat_sctp_get_pace_ms: { args: [], returns: "int" },
  peat_sctp_install: { args: ["ptr", "int"], returns: "int" },
  peat_sctp_uninstall: { args: ["ptr", "int"], returns: "int" },
  peat_sctp_hooked: { args: ["ptr"], returns: "int" },
  peat_sctp_slot_value: { args: ["ptr"], returns: "ptr" },
  peat_sctp_hook_address: { args: [], returns: "ptr" },
  peat_sctp_stats: { args: ["ptr"], returns: "void" },
  peat_sctp_reset_max_late: { args: [], returns: "void" },
} as const;

type HookLibrary = ReturnType<typeof cc<typeof SYMBOLS>>;

/** Only their addresses are used (handed to the C side); the signatures are never called from JS. */
const LIBC_FUNCTIONS = {
  nanosleep: { args: [], returns: "void" },
  clock_gettime: { args: [], returns: "void" },
  clock_nanosleep: { args: [], returns: "void" },
  pthread_self: { args: [], returns: "void" },
  prctl: { args: [], returns: "void" },
  mprotect: { args: [], returns: "void" },
  getpagesize: { args: [], returns: "int" },
} as const;

type Libc = ReturnType<typeof dlopen<typeof LIBC_FUNCTIONS>>;

/**
 * Held for the life of the process: once a GOT slot points into this code, freeing it (which
 * dropping the Library would eventually do) would crash the SCTP thread on its next sleep.
 */
let hookLibrary: HookLibrary | undefined;
/** Referenced for as long as the hook (which calls through these addresses) may run. */
let libc: Libc | undefined;

/**
 * -nostdlib: TinyCC's implicit -lc wants the libc.so linker script from libc6-dev, which a
 * distroless image lacks ("library 'c' not found"); the C side needs no linking since it receives
 * libc's functions by address (peat_sctp_init).
 */
const CC_FLAGS = ["-std=c11", "-nostdlib"];

/** A dlopen'd function's address; bun:ffi sets `.ptr` at run time but does not type it. */
function addressOf(fn: unknown, name: string): Pointer {
  const p = (fn as { ptr?: unknown }).ptr;
  if (typeof p !== "number" || p === 0) throw new SctpTimerInstallError(`libc.so.6 gave no address for ${name}`);
  return p as Pointer;
}

function compileHook(): HookLibrary {
  if (hookLibrary) return hookLibrary;
  try {
    libc ??= dlopen("libc.so.6", LIBC_FUNCTIONS);
  } catch (err) {
    throw new SctpTimerInstallError(`cannot dlopen libc.so.6: ${err instanceof Error ? err.message : String(err)}`);
  }
  const source = sctpTimerSource as string;
  let compiled: HookLibrary;
  try {
    compiled = cc({ source, flags: CC_FLAGS, symbols: SYMBOLS });
  } catch (direct) {
    // Inside a compiled executable the source is a $bunfs path that only Bun's own file APIs can
    // read, not TinyCC; give it a real file for the length of the compile.
    let text: string;
    try {
      text = readFileSync(source, "utf8");
    } catch {
      throw new SctpTimerInstallError(`cc could not compile ${source}: ${direct instanceof Error ? direct.message : String(direct)}`);
    }
    const dir = mkdtempSync(path.join(os.tmpdir(), "peat-sctp-timer-"));
    try {
      const file = path.join(dir, "sctp-timer.c");
      writeFileSync(file, text);
      compiled = cc({ source: file, flags: CC_FLAGS, symbols: SYMBOLS });
    } catch (err) {
      throw new SctpTimerInstallError(`cc could not compile the SCTP timer hook: ${err instanceof Error ? err.message : String(err)}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const fn = libc.symbols;
  const page = fn.getpagesize();
  if (!(page > 0 && (page & (page - 1)) === 0)) throw new SctpTimerInstallError(`implausible page size ${page}`);
  compiled.symbols.peat_sctp_init(
    addressOf(fn.nanosleep, "nanosleep"),
    addressOf(fn.clock_gettime, "clock_gettime"),
    addressOf(fn.clock_nanosleep, "clock_nanosleep"),
    addressOf(fn.pthread_self, "pthread_self"),
    addressOf(fn.prctl, "prctl"),
    addressOf(fn.mprotect, "mprotect"),
    page,
  );
  hookLibrary = compiled;
  return hookLibrary;
}

// ---- install ----------------------------------------------------------------------------------

let installedPacer: SctpTimerPacer | undefined;

/**
 * Hooks the addon's nanosleep (once per process; later calls return the same pacer). The pace
 * starts at 10 ms, i.e. unchanged behaviour, until `setPaceMs`. Load node-datachannel and call its
 * `preload()` first. On failure nothing has been written and the call may be retried.
 */
export function installSctpTimerPacer(): InstallResult {
  if (installedPacer) return { pacer: installedPacer };
  try {
    installedPacer = install();
    return { pacer: installedPacer };
  } catch (err) {
    return { pacer: undefined, reason: err instanceof Error ? err.message : String(err) };
  }
}

function install(): SctpTimerPacer {
  if (process.platform !== "linux") throw new SctpTimerInstallError(`unsupported platform ${process.platform}`);
  const machine = MACHINE_FOR_ARCH[process.arch];
  if (machine === undefined) throw new SctpTimerInstallError(`unsupported architecture ${process.arch}`);

  let maps = readMaps();
  const addon = locateAddon(maps, machine);
  const bias = addon.base - addon.elf.firstLoadVaddr;
  const addonMappings = maps.filter((m) => m.inode === addon.inode && m.path === addon.path);
  const slots = addon.elf.nanosleepSlots.map((s) => bias + s.vaddr);
  for (const slot of slots) {
    const home = addonMappings.find((m) => slot >= m.start && slot + 8 <= m.end);
    if (!home || slot % 8 !== 0) {
      throw new SctpTimerInstallError(`computed nanosleep slot 0x${slot.toString(16)} is not an aligned address inside ${addon.path}'s mappings`);
    }
  }

  const lib = compileHook().symbols;
  const hook = Number(lib.peat_sctp_hook_address());
  const libcNanosleep = Number(addressOf(libc!.symbols.nanosleep, "nanosleep"));
  /**
   * Resolved (libc), still lazy (the PLT stub inside the addon), or ours already. Anything else
   * means someone else has interposed nanosleep; replacing that is not ours to do.
   */
  const checkSlotValue = (slot: number): void => {
    const value = Number(lib.peat_sctp_slot_value(slot as Pointer));
    const insideAddon = addonMappings.some((m) => value >= m.start && value < m.end);
    if (value !== libcNanosleep && value !== hook && !insideAddon) {
      throw new SctpTimerInstallError(
        `nanosleep slot 0x${slot.toString(16)} holds 0x${value.toString(16)}, neither libc's nanosleep nor the addon's PLT`,
      );
    }
  };
  for (const slot of slots) checkSlotValue(slot);

  // Page protections may have changed since the first read (full RELRO is applied at load).
  maps = readMaps();
  const writable = (slot: number): boolean => maps.some((m) => slot >= m.start && slot + 8 <= m.end && m.perms[1] === "w");
  const installOne = (slot: number): void => {
    if (lib.peat_sctp_install(slot as Pointer, writable(slot) ? 1 : 0) !== 0) {
      throw new SctpTimerInstallError(`mprotect refused to make the nanosleep slot at 0x${slot.toString(16)} writable`);
    }
  };
  const done: number[] = [];
  try {
    for (const slot of slots) {
      installOne(slot);
      done.push(slot);
    }
  } catch (err) {
    // All slots or none: put back the ones already hooked (libc's nanosleep is what a bound slot holds).
    for (const slot of done) lib.peat_sctp_uninstall(slot as Pointer, writable(slot) ? 1 : 0);
    throw err;
  }

  const out = new BigUint64Array(6);
  return {
    setPaceMs(ms: number): void {
      if (!Number.isFinite(ms) || ms < SCTP_TICK_MS || ms > MAX_SCTP_PACE_MS) {
        throw new SctpTimerPaceError(`SCTP timer pace must be ${SCTP_TICK_MS}–${MAX_SCTP_PACE_MS} ms, got ${ms}`);
      }
      lib.peat_sctp_set_pace_ms(Math.round(ms));
    },
    get paceMs(): number {
      return lib.peat_sctp_get_pace_ms();
    },
    ensureHooked(): boolean {
      let ok = true;
      for (const slot of slots) {
        if (lib.peat_sctp_hooked(slot as Pointer)) continue;
        maps = readMaps();
        try {
          checkSlotValue(slot);
          installOne(slot);
        } catch {
          ok = false;
          continue;
        }
        ok &&= lib.peat_sctp_hooked(slot as Pointer) !== 0;
      }
      return ok;
    },
    stats(): SctpTimerStats {
      lib.peat_sctp_stats(out);
      return {
        calls: Number(out[0]),
        sleeps: Number(out[1]),
        ticks: Number(out[2]),
        resyncs: Number(out[3]),
        passthrough: Number(out[4]),
        maxLateMs: Number(out[5]) / 1e6,
      };
    },
    resetMaxLate(): void {
      lib.peat_sctp_reset_max_late();
    },
    slots,
    addonPath: addon.path,
  };
}

// ---- pace by activity ---------------------------------------------------------------------------

/**
 * The process has one SCTP timer thread, shared by every transport in it (tests run several): it
 * keeps full pace while any of them is busy and slows to the idle pace only when all are idle.
 */
const busyTransports = new Set<object>();
let pacing: { pacer: SctpTimerPacer; idlePaceMs: number; current: number } | undefined;

/**
 * Hooks the SCTP timer (see installSctpTimerPacer) so that it slows to `idlePaceMs` while every
 * transport is idle. Returns why it could not, or undefined. The first caller's idle pace wins.
 */
export function enableSctpIdlePacing(idlePaceMs: number): string | undefined {
  if (pacing) return undefined;
  if (!Number.isInteger(idlePaceMs) || idlePaceMs < SCTP_TICK_MS || idlePaceMs > MAX_SCTP_PACE_MS) {
    throw new SctpTimerPaceError(`SCTP idle pace must be an integer from ${SCTP_TICK_MS} to ${MAX_SCTP_PACE_MS} ms, got ${idlePaceMs}`);
  }
  const result = installSctpTimerPacer();
  if (!result.pacer) return result.reason;
  pacing = { pacer: result.pacer, idlePaceMs, current: result.pacer.paceMs };
  applyPace();
  return undefined;
}

/** A transport reports whether it is busy (data moving, connections being set up) or idle. */
export function setSctpBusy(transport: object, busy: boolean): void {
  if (busy === busyTransports.has(transport)) return;
  if (busy) busyTransports.add(transport);
  else busyTransports.delete(transport);
  applyPace();
}

function applyPace(): void {
  if (!pacing) return;
  const pace = busyTransports.size > 0 ? SCTP_TICK_MS : pacing.idlePaceMs;
  if (pace === pacing.current) return;
  // Going idle is the moment to check that no lazy-binding resolver has overwritten the hook.
  if (pace !== SCTP_TICK_MS) pacing.pacer.ensureHooked();
  pacing.pacer.setPaceMs(pace);
  pacing.current = pace;
}

/** The pacer, once enableSctpIdlePacing succeeded (for metrics and tests). */
export function sctpPacer(): SctpTimerPacer | undefined {
  return pacing?.pacer;
}
