import { expect, test } from "bun:test";
import { TrackedTimers } from "./timers.ts";

test("counts timeouts until they fire or are cleared, and intervals until cleared", async () => {
  const timers = new TrackedTimers();
  let fired = 0;
  const { promise, resolve } = Promise.withResolvers<void>();
  timers.timeout(() => {
    fired++;
    resolve();
  }, 1);
  const cleared = timers.timeout(() => fired++, 60_000);
  const every = timers.interval(() => {}, 60_000);
  expect(timers.size).toBe(3);
  await promise;
  expect(fired).toBe(1);
  expect(timers.size).toBe(2);
  timers.clear(cleared);
  timers.clear(every);
  timers.clear(undefined);
  expect(timers.size).toBe(0);
});
