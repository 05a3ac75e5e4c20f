/**
 * usrsctp, the SCTP stack under libdatachannel's data channels, runs one timer thread per process
 * that wakes every 10 ms for as long as the process lives, busy or not. On the 2-vCPU VM of
 * bench/RESULTS.md those wake-ups alone cost 0.11–0.12 CPU-seconds a minute (a bare C loop of
 * 10 ms nanosleeps costs the same), over half of an idle node's budget of 0.2.
 *
 * A thread's timer slack lets the kernel defer its timed wake-ups by up to that much, and a new
 * thread inherits the slack of the thread that creates it. libdatachannel creates all of its
 * threads (the SCTP timer and its worker pool) in one synchronous call, `preload()`. So the main
 * thread raises its own slack, preloads, and puts its slack back before anything else runs; the
 * event loop's own timers are never affected. With 20 ms the SCTP timer thread measured 0.055
 * CPU-s/min.
 *
 * The cost: usrsctp advances its clock by 10 ms per wake-up, not by the time that passed, so its
 * own timers (delayed acknowledgement, retransmission, heartbeat) run up to three times slower in
 * real time. Nothing waits on them to send: data goes out at once, liveness is our own ping with
 * its own deadline (a link silent for 6–8 s is redialled either way), and the chaos suite's loss
 * and partition figures (docs/reliability.md) are measured with it.
 *
 * Linux only; anywhere the slack file cannot be read or written, preload runs without it.
 */
import { readFileSync, writeFileSync } from "node:fs";

export const RTC_THREAD_TIMER_SLACK_NS = 20_000_000;

/** The calling thread's timer slack file when that thread is the process's main thread. */
const SLACK_FILE = "/proc/self/timerslack_ns";

let preloaded = false;

/** Runs `preload` (once per process) with RTC_THREAD_TIMER_SLACK_NS as the slack the new threads inherit. */
export function preloadWithTimerSlack(preload: () => void, slackNs = RTC_THREAD_TIMER_SLACK_NS): void {
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

