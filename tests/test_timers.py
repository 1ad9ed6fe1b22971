"""``Timers`` (sim/engine.py): many timers as one event, firing exactly where separate timeouts
would, among other events at the same times (before and after, normal and urgent)."""

from __future__ import annotations

from collections.abc import Callable

import simpy
from hypothesis import given, settings
from hypothesis import strategies as st
from simpy.events import URGENT, Timeout

from sim.engine import Timers

times = st.lists(st.integers(0, 6), min_size=1, max_size=12)
others = st.lists(st.tuples(st.integers(0, 6), st.booleans(), st.booleans()), max_size=8)


def _trace(ts: list[int], extra: list[tuple[int, bool, bool]], batched: bool) -> list[object]:
    """Fire order of timers ``ts`` set at time 1 together with other events: each of
    ``extra`` is (time, set after the timers, urgent); a timer that fires at time 3 also
    schedules an urgent and a normal event for now, as a completion that wakes a task does."""
    env = simpy.Environment()
    out: list[object] = []

    def mark(tag: object) -> Callable[[simpy.Event], None]:
        return lambda _ev: out.append(tag)

    def fire(i: int) -> None:
        out.append(("timer", i, int(env.now)))
        if env.now == 3:
            for prio in (URGENT, 1):
                ev = simpy.Event(env)
                ev._ok, ev._value = True, None
                ev.callbacks.append(mark(("woken", i, prio)))
                env.schedule(ev, prio)

    def other(j: int, t: int, urgent: bool) -> None:
        ev = simpy.Event(env)
        ev._ok, ev._value = True, None
        ev.callbacks.append(mark(("other", j, int(env.now))))
        env.schedule(ev, URGENT if urgent else 1, max(0, t - 1))

    def setup(_ev: simpy.Event) -> None:
        for j, (t, after, urgent) in enumerate(extra):
            if not after:
                other(j, t, urgent)
        args = [(i,) for i in range(len(ts))]
        if batched:
            Timers(env, ts, fire, args)
        else:
            for t, a in zip(ts, args, strict=True):
                Timeout(env, max(0, t - 1), a).callbacks.append(lambda ev: fire(*ev.value))
        for j, (t, after, urgent) in enumerate(extra):
            if after:
                other(j, t, urgent)

    env.timeout(1).callbacks.append(setup)
    env.run()
    out.append(("ids", next(env._eid)))  # type: ignore[attr-defined]
    return out


@settings(max_examples=200, deadline=None)
@given(times, others)
def test_timers_fire_where_separate_timeouts_would(ts: list[int], extra: list) -> None:
    assert _trace(ts, extra, batched=True) == _trace(ts, extra, batched=False)


def test_peek_sees_the_earliest_timer() -> None:
    env = simpy.Environment()
    seen: list[int] = []
    Timers(env, [5, 2, 9], lambda i: seen.append(i), [(0,), (1,), (2,)])
    assert env.peek() == 2
    env.run()
    assert seen == [1, 0, 2]
