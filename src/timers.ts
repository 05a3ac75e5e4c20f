/**
 * setTimeout/setInterval that keep count of what is pending, so a component's timers can be
 * observed (the `peat_timers` gauge) and a leak (a timer per connection never cleared) shows up as
 * a number that does not come back down after peers come and go.
 */
export type TimerHandle = ReturnType<typeof setTimeout>;

export class TrackedTimers {
  private readonly live = new Set<TimerHandle>();

  /** A one-shot timer; it stops counting when it fires or is cleared. */
  timeout(fn: () => void, ms: number): TimerHandle {
    const handle: TimerHandle = setTimeout(() => {
      this.live.delete(handle);
      fn();
    }, ms);
    this.live.add(handle);
    return handle;
  }

  /** A repeating timer; it counts until cleared. */
  interval(fn: () => void, ms: number): TimerHandle {
    const handle: TimerHandle = setInterval(fn, ms);
    this.live.add(handle);
    return handle;
  }

  /** Clears a timeout or an interval made here; undefined is ignored. */
  clear(handle: TimerHandle | undefined): void {
    if (handle === undefined) return;
    clearTimeout(handle);
    this.live.delete(handle);
  }

  /** Timers pending (timeouts not yet fired, intervals not cleared). */
  get size(): number {
    return this.live.size;
  }
}
