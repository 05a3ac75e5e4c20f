/*
 * Paces usrsctp's "SCTP timer" thread without slowing the SCTP clock.
 *
 * That thread loops forever on nanosleep(10 ms) and, after every return, advances usrsctp's clock
 * by a fixed 10 ms (sctp_handle_tick). 100 wake-ups a second are most of an idle node's CPU. This
 * file replaces the addon's nanosleep (its GOT slot, see sctp-timer.ts) with peat_sctp_nanosleep,
 * which keeps the real time at which each 10 ms tick falls due and, on the SCTP thread only:
 *   - returns at once while a tick is already due, so owed ticks are delivered in a burst;
 *   - otherwise sleeps until the next tick is due plus `lag` (= pace - 10 ms).
 * So the SCTP clock never runs ahead of real time and never more than `lag` (+ scheduling) behind
 * it; at pace 100 ms the thread wakes 10 times a second and hands usrsctp 10 ticks per wake.
 *
 * Compiled at run time by Bun's embedded TinyCC (bun:ffi cc) with -nostdlib and no headers: a
 * distroless image has neither headers nor the libc.so linker script TinyCC's implicit -lc needs
 * (only libc.so.6), and Bun's TinyCC does not resolve undefined symbols from the running process.
 * So this file references no external symbol at all; the JS side looks the few libc functions up
 * with dlopen("libc.so.6") and hands their addresses to peat_sctp_init before anything runs here.
 * Types and constants are Linux LP64, the same on x86-64 and aarch64.
 *
 * Everything the SCTP thread touches is either its own (due, late) or a word-sized volatile that
 * another thread only writes whole (pace_ms, sctp_thread); aligned word loads and stores are atomic
 * on both architectures, and nothing here needs ordering between two such words.
 */

struct timespec {
  long tv_sec;
  long tv_nsec;
};

typedef int (*nanosleep_fn)(const struct timespec *req, struct timespec *rem);
typedef int (*clock_gettime_fn)(int clock_id, struct timespec *tp);
typedef int (*clock_nanosleep_fn)(int clock_id, int flags, const struct timespec *req, struct timespec *rem);
typedef unsigned long (*pthread_self_fn)(void);
typedef int (*prctl_fn)(int option, ...);
typedef int (*mprotect_fn)(void *addr, unsigned long len, int prot);

static nanosleep_fn libc_nanosleep;
static clock_gettime_fn libc_clock_gettime;
static clock_nanosleep_fn libc_clock_nanosleep;
static pthread_self_fn libc_pthread_self;
static prctl_fn libc_prctl;
static mprotect_fn libc_mprotect;
static unsigned long page_size;

#define CLOCK_MONOTONIC 1
#define TIMER_ABSTIME 1
#define PR_GET_NAME 16
#define PROT_READ 1
#define PROT_WRITE 2
#define EINTR 4

#define TICK_NS 10000000LL
#define MIN_PACE_MS 10
#define MAX_PACE_MS 1000
/* Owed ticks beyond lag + this are dropped instead of burst (a stopped or starved process; system
 * suspend does not count, CLOCK_MONOTONIC stands still through it): hundreds of ticks at once
 * would fire every pending retransmission together for no benefit. */
#define RESYNC_NS 1000000000LL

static volatile int pace_ms = MIN_PACE_MS;

static volatile unsigned long sctp_thread;
static volatile int sctp_thread_known;

/* Owned by the SCTP thread. */
static long long due_ns;
static int due_valid;

/* Written by the SCTP thread (passthrough by any thread), read by JS for tests and metrics. Torn
 * or lost increments from racing pass-through callers only make that counter approximate. */
static volatile unsigned long long n_calls;
static volatile unsigned long long n_sleeps;
static volatile unsigned long long n_ticks;
static volatile unsigned long long n_resyncs;
static volatile unsigned long long n_passthrough;
static volatile long long max_late_ns;

static long long mono_ns(void) {
  struct timespec ts;
  libc_clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * The thread name is checked with a syscall only for threads not yet known to be the SCTP thread,
 * and only when they ask for exactly 10 ms; the SCTP thread pays one pthread_self() per call.
 * A thread that is not the SCTP thread but sleeps exactly 10 ms pays one prctl per sleep, noise
 * next to the sleep itself; re-checking (rather than caching "not SCTP") is what lets a new SCTP
 * thread be adopted after node-datachannel's cleanup() stops the old one and a later init starts
 * another.
 */
static int is_sctp_thread(void) {
  unsigned long self = libc_pthread_self();
  if (sctp_thread_known && self == sctp_thread) return 1;
  char name[17];
  for (int i = 0; i < 17; i++) name[i] = 0;
  if (libc_prctl(PR_GET_NAME, (unsigned long)name, 0UL, 0UL, 0UL) != 0) return 0;
  const char *want = "SCTP timer";
  for (int i = 0; i < 11; i++) {
    if (name[i] != want[i]) return 0;
  }
  /* A new SCTP thread starts a new schedule: the old thread's due time means nothing to it. */
  due_valid = 0;
  sctp_thread = self;
  sctp_thread_known = 1;
  return 1;
}

static void sleep_until(long long target_ns) {
  struct timespec ts;
  ts.tv_sec = target_ns / 1000000000LL;
  ts.tv_nsec = target_ns % 1000000000LL;
  /* Absolute, so a signal only costs a retry, never extra time. */
  while (libc_clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, 0) == EINTR) {
  }
}

int peat_sctp_nanosleep(const struct timespec *req, struct timespec *rem) {
  if (req == 0 || req->tv_sec != 0 || req->tv_nsec != TICK_NS || !is_sctp_thread()) {
    n_passthrough++;
    /* libc's own, never the GOT slot's old value: that may be the lazy-binding stub, which would
     * resolve nanosleep and write the real address over this hook. */
    return libc_nanosleep(req, rem);
  }
  n_calls++;
  int pace = pace_ms;
  if (pace < MIN_PACE_MS) pace = MIN_PACE_MS;
  if (pace > MAX_PACE_MS) pace = MAX_PACE_MS;
  long long lag = (long long)(pace - MIN_PACE_MS) * 1000000LL;

  long long now = mono_ns();
  if (!due_valid) {
    /* The first call stands for the 10 ms sleep the thread asked for, as before the hook. */
    due_ns = now + TICK_NS;
    due_valid = 1;
  }
  if (now - due_ns > lag + RESYNC_NS) {
    due_ns = now;
    n_resyncs++;
  }
  if (due_ns > now) {
    /* A pace lowered during this sleep is seen when it ends, at most the old lag late: waking to
     * re-check would cost the very wake-ups this exists to save. */
    sleep_until(due_ns + lag);
    n_sleeps++;
    now = mono_ns();
  }
  long long late = now - due_ns;
  if (late > max_late_ns) max_late_ns = late;
  due_ns += TICK_NS;
  n_ticks++;
  return 0;
}

/* Called once, before peat_sctp_install, with libc's functions and the page size. */
void peat_sctp_init(void *nanosleep_p, void *clock_gettime_p, void *clock_nanosleep_p, void *pthread_self_p, void *prctl_p,
                    void *mprotect_p, int page) {
  libc_nanosleep = (nanosleep_fn)nanosleep_p;
  libc_clock_gettime = (clock_gettime_fn)clock_gettime_p;
  libc_clock_nanosleep = (clock_nanosleep_fn)clock_nanosleep_p;
  libc_pthread_self = (pthread_self_fn)pthread_self_p;
  libc_prctl = (prctl_fn)prctl_p;
  libc_mprotect = (mprotect_fn)mprotect_p;
  page_size = (unsigned long)page;
}

void peat_sctp_set_pace_ms(int ms) {
  if (ms < MIN_PACE_MS) ms = MIN_PACE_MS;
  if (ms > MAX_PACE_MS) ms = MAX_PACE_MS;
  pace_ms = ms;
}

int peat_sctp_get_pace_ms(void) {
  return pace_ms;
}

/*
 * Stores `value` in the GOT slot. `writable` says whether the slot's page is already writable
 * (from /proc/self/maps): a lazily bound .got.plt is, a full-RELRO GOT is not and gets made
 * writable just for the store and read-only again after it.
 * Returns 0, or -1 if mprotect failed (nothing was written then).
 */
static int write_slot(void **slot, void *value, int writable) {
  if (writable) {
    /* One aligned pointer store: a thread jumping through the slot sees the old or the new. */
    *(void *volatile *)slot = value;
    return 0;
  }
  void *start = (void *)((unsigned long)slot & ~(page_size - 1));
  if (libc_mprotect(start, page_size, PROT_READ | PROT_WRITE) != 0) return -1;
  *(void *volatile *)slot = value;
  libc_mprotect(start, page_size, PROT_READ);
  return 0;
}

int peat_sctp_install(void **slot, int writable) {
  return write_slot(slot, (void *)&peat_sctp_nanosleep, writable);
}

/* Points the slot at libc's nanosleep: what a resolved slot held before install. */
int peat_sctp_uninstall(void **slot, int writable) {
  return write_slot(slot, (void *)libc_nanosleep, writable);
}

int peat_sctp_hooked(void **slot) {
  return *(void *volatile *)slot == (void *)&peat_sctp_nanosleep;
}

/* calls, sleeps, ticks, resyncs, passthrough, max lateness in ns. */
void peat_sctp_stats(unsigned long long *out) {
  out[0] = n_calls;
  out[1] = n_sleeps;
  out[2] = n_ticks;
  out[3] = n_resyncs;
  out[4] = n_passthrough;
  out[5] = (unsigned long long)max_late_ns;
}

void peat_sctp_reset_max_late(void) {
  max_late_ns = 0;
}

void *peat_sctp_slot_value(void **slot) {
  return *(void *volatile *)slot;
}

void *peat_sctp_hook_address(void) {
  return (void *)&peat_sctp_nanosleep;
}

