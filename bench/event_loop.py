"""The simulator's per-event overhead: SimPy against a plain heap loop, for our use.

Runs the event pattern the engines produce, with no work in the callbacks: a chain of batch
ends (each a timeout whose callback schedules the next, with a stale, superseded end now and
then, as re-rated runs leave) and two sleeping processes (arrivals, cancellations), on SimPy
and on the smallest heap loop that keeps SimPy's event order (time, priority, insertion),
alternating, and prints the CPU microseconds per event of each and their ratio. Multiply
the difference by a run's events (``bench/sim_profile.py`` reports them) to see what
replacing SimPy would save.

    python bench/event_loop.py --events 200000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from heapq import heappop, heappush
from itertools import count

import simpy


class HeapClock:
    """Callbacks at times in (time, priority, insertion) order; processes yield delays."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list = []
        self._order = count()

    def after(self, delay: float, callback, priority: int = 1) -> None:
        heappush(self._queue, (self.now + delay, priority, next(self._order), callback))

    def process(self, steps) -> None:
        def resume() -> None:
            for delay in steps:
                self.after(delay, resume)
                return

        self.after(0.0, resume, 0)

    def run(self) -> None:
        queue = self._queue
        while queue:
            when, _, _, callback = heappop(queue)
            self.now = when
            callback()


def on_simpy(events: int) -> int:
    env = simpy.Environment()
    fired = 0

    def batch_end(_event=None) -> None:
        nonlocal fired
        fired += 1
        if fired < events:
            env.timeout(0.01).callbacks.append(batch_end)
            if fired % 5 == 0:
                env.timeout(0.02).callbacks.append(lambda _e: None)

    def sleeper(gap: float):
        for _ in range(events // 10):
            yield env.timeout(gap)

    env.process(sleeper(0.07))
    env.process(sleeper(0.13))
    batch_end()
    env.run()
    return fired


def on_heap(events: int) -> int:
    clock = HeapClock()
    fired = 0

    def batch_end() -> None:
        nonlocal fired
        fired += 1
        if fired < events:
            clock.after(0.01, batch_end)
            if fired % 5 == 0:
                clock.after(0.02, lambda: None)

    def sleeper(gap: float):
        for _ in range(events // 10):
            yield gap

    clock.process(sleeper(0.07))
    clock.process(sleeper(0.13))
    batch_end()
    clock.run()
    return fired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="batch ends per run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.events < 10 or args.repeats < 1:
        parser.error("--events must be at least 10 and --repeats at least 1")
    # Batch ends, stale ends and the two processes' steps.
    total = args.events + args.events // 5 + 2 * (args.events // 10)
    times: dict[str, list[float]] = {"simpy": [], "heap": []}
    for _ in range(args.repeats):
        for name, fn in (("simpy", on_simpy), ("heap", on_heap)):
            start = time.process_time()
            fn(args.events)
            times[name].append(time.process_time() - start)
    per = {name: statistics.median(t) / total * 1e6 for name, t in times.items()}
    for name, us in per.items():
        print(f"{name:>6}: {us:.2f} us CPU per event (median of {args.repeats}, {total} events)")
    print(f"heap/simpy: {per['heap'] / per['simpy']:.3f}")


if __name__ == "__main__":
    main()
