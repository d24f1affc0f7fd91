"""bench/event_loop.py: its heap loop runs events in SimPy's order, so the comparison is fair."""

from __future__ import annotations

import random

import simpy

from tests.bench.loader import load_bench


def _schedule(seed: int) -> list[tuple[float, float]]:
    """(delay, then delay) pairs on a coarse grid, so many events tie on time."""
    rng = random.Random(seed)
    return [(rng.randint(0, 6) * 0.5, rng.randint(0, 3) * 0.5) for _ in range(200)]


def test_the_heap_loop_runs_events_in_simpys_order():
    heap_clock = load_bench("event_loop").HeapClock
    for seed in range(5):
        plan = _schedule(seed)
        seen_simpy: list[tuple[float, int]] = []
        env = simpy.Environment()

        def sleeper(name: int, env=env, seen=seen_simpy):
            for gap in (0.0, 0.5, 1.0, 0.5):
                yield env.timeout(gap)
                seen.append((env.now, -name))

        for i, (first, then) in enumerate(plan):

            def fire(_e, i=i, then=then, env=env, seen=seen_simpy):
                seen.append((env.now, i))
                env.timeout(then).callbacks.append(lambda _e: seen.append((env.now, 1000 + i)))

            env.timeout(first).callbacks.append(fire)
            if i % 50 == 0:
                env.process(sleeper(i + 1))
        env.run()

        seen_heap: list[tuple[float, int]] = []
        clock = heap_clock()

        def sleeper_h(name: int, clock=clock, seen=seen_heap):
            for gap in (0.0, 0.5, 1.0, 0.5):
                yield gap
                seen.append((clock.now, -name))

        for i, (first, then) in enumerate(plan):

            def fire_h(i=i, then=then, clock=clock, seen=seen_heap):
                seen.append((clock.now, i))
                clock.after(then, lambda: seen.append((clock.now, 1000 + i)))

            clock.after(first, fire_h)
            if i % 50 == 0:
                clock.process(sleeper_h(i + 1))
        clock.run()
        assert len(seen_simpy) == 200 * 2 + 4 * 4
        assert seen_heap == seen_simpy, seed


def test_both_loops_fire_every_batch_end():
    module = load_bench("event_loop")
    assert module.on_simpy(500) == module.on_heap(500) == 500
