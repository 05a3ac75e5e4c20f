/**
 * Opt-in (`PEAT_SCTP_TIMER_SLACK_MS`, default 0): fewer wake-ups for usrsctp's timer thread, paid
 * for with slower SCTP loss recovery.
 *
 * usrsctp, the SCTP stack under libdatachannel's data channels, runs one timer thread per process
 * that wakes every 10 ms for as long as the process lives, busy or not. On the 2-vCPU VM of
 * bench/RESULTS.md those wake-ups cost 0.10–0.12 CPU-seconds a minute (a bare C loop of 10 ms
 * nanosleeps costs the same), half of an idle node's budget of 0.2.
 *
 * A thread's timer slack lets the kernel defer its timed wake-ups by up to that much, and a new
 * thread inherits the slack of the thread that creates it. libdatachannel creates all of its
 * threads (the SCTP timer and its worker pool) in one synchronous call, `preload()`. So the main
 * thread raises its own slack, preloads, and puts its slack back before anything else runs; the
 * event loop's own timers are never affected. (Linux exposes no per-thread slack file, and changing
 * another thread's needs CAP_SYS_NICE, so this is the only moment it can be set.)
 *
 * Why it is off by default: usrsctp advances its clock by 10 ms per wake-up, not by the time that
 * passed, so its retransmission and acknowledgement timers run (10 + slack) / 10 times slower in
 * real time. Measured with the chaos loss test (20 % loss on every link), against 9–17 s of writes
 * and 0–2 dropped links without slack: 5 ms kept within that range (SCTP thread 0.08–0.09
 * CPU-s/min); 10 ms took 18–24 s and dropped up to 6 links; 20 ms took 36–58 s and dropped 10–12.
 * Lossy links are what this mesh is for, so only a node on clean links that must save every
 * wake-up (a battery-powered box on a wired LAN) should turn it on, at 5 ms or so.
 *
 * Linux only; anywhere the slack file cannot be read or written, preload runs without it.
 */
import { readFileSync, writeFileSync } from "node:fs";

/** The calling thread's timer slack file when that thread is the process's main thread. */
const SLACK_FILE = "/proc/self/timerslack_ns";

let preloaded = false;

/** Runs `preload` (once per process) with `slackNs` as the timer slack the threads it starts inherit. */
export function preloadWithTimerSlack(preload: () => void, slackNs: number): void {
  if (preloaded) return;
  preloaded = true;
  let previous: string | undefined;
  try {
    previous = readFileSync(SLACK_FILE, "utf8").trim();
    writeFileSync(SLACK_FILE, String(slackNs));
  } catch {
    previous = undefined;
  }
  try {
    preload();
  } finally {
    if (previous !== undefined) {
      try {
        writeFileSync(SLACK_FILE, previous);
      } catch {}
    }
  }
}
