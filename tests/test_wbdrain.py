"""The compiled drain of write-back ends (sim/wbdrain.py) against ``folio_end_writeback``.

A hand-worked drain over a few folios; the drained timers firing where separate timeouts
would, among other events, with the real pass deciding what is due; reclaim_throttle's
budget; and whole worlds (the node's lruvec, a memcg per VM, zswap in front of the disk)
equal with the drain on and off, every invariant holding with it on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st
from simpy.events import URGENT, Timeout

from sim.config import parse_scenario
from sim.engine import DrainedTimers, World
from sim.host.kswapd import ReclaimThrottle
from sim.host.memory import PG_DIRTY, PG_RECLAIM, PG_WRITEBACK
from sim.host.vmstat import VmEvents
from sim.reclaim.two_list import LRU_ACTIVE, LRU_INACTIVE
from sim.wbdrain import (
    E_PID,
    IO_BUDGET,
    IO_HEAD_T,
    IO_K,
    IO_SIZE,
    IO_SRC,
    NOT_DUE,
    PENDING,
    PYTHON,
    Q_SIZE,
    _drain,
    sorted_ends,
)
from tests.conftest import TINY, run_checked
from tests.test_fastpaths import check_world, drained
from tests.test_invariants import _check_random_world

_NO_LIMIT = np.iinfo(np.int64).max
_WB, _RECLAIM, _DIRTY = PG_WRITEBACK, PG_RECLAIM, PG_DIRTY


class Lists:
    """Four frames and the two lists of one lruvec: inactive (sentinel 4) holds 0 then 1
    (0 the oldest), active (sentinel 5) holds 2 then 3; frame ``i`` holds page ``10 + i``,
    pages 10-11 of mm 0 and 12-13 of mm 1."""

    def __init__(self) -> None:
        self.nxt = np.array([1, 4, 3, 5, 0, 2], dtype=np.int32)
        self.prev = np.array([4, 0, 5, 2, 1, 3], dtype=np.int32)
        self.fl = np.array([LRU_INACTIVE] * 2 + [LRU_ACTIVE] * 2, dtype=np.uint8)
        self.flags = np.zeros(14, dtype=np.uint8)
        self.frame_pid = np.arange(10, 14, dtype=np.int32)
        self.pid_base = np.array([0, 12], dtype=np.int64)
        self.special = np.zeros(2, dtype=np.bool_)
        self.lists = np.array([[0, 1, 0, 1]], dtype=np.int64)
        self.qs = np.array([[4, 5], [0, 0]], dtype=np.int64)
        self.pending = np.zeros(2, dtype=np.int64)
        self.io = np.zeros(IO_SIZE, dtype=np.int64)
        self.io[IO_HEAD_T:] = [_NO_LIMIT, 0, 0, 100, 0, 0, 0]

    def run(self, ends: np.ndarray, k: int = 0, budget: int = -1) -> list[int]:
        io = self.io
        io[IO_K], io[IO_BUDGET] = k, budget
        _drain(
            io,
            ends,
            self.flags,
            self.frame_pid,
            self.pid_base,
            self.special,
            np.zeros(1, dtype=np.uint8),
            np.zeros(2, dtype=np.int64),
            self.lists,
            self.qs,
            self.pending,
            self.fl,
            self.nxt,
            self.prev,
        )
        return io[: IO_SRC + 2].tolist()

    def tail_to_head(self, s: int) -> list[int]:
        out, p = [], int(self.nxt[s])
        while p != s:
            out.append(p)
            p = int(self.nxt[p])
        return out


def _ends(times: list[int], pfns: list[int], first: int = 100) -> np.ndarray:
    a = np.array((times, [10 + p for p in pfns], pfns), dtype=np.int64)
    return sorted_ends(a, 0, first)


def test_a_run_of_ends_as_folio_end_writeback_leaves_them() -> None:
    """Frame 1 (inactive, clean, PG_reclaim) and frame 3 (active, clean, PG_reclaim) rotate to
    the inactive tail in turn: inactive 3, 1, 0 from the tail, active 2; frame 2 (dirty again)
    only loses PG_reclaim; frame 0 (no PG_reclaim) only PG_writeback. Four ends, two
    rotations (pgrotated), one from the active list (its length down one, inactive's up)."""
    s = Lists()
    s.flags[10:14] = [_WB, _WB | _RECLAIM, _WB | _RECLAIM | _DIRTY, _WB | _RECLAIM]
    k, why, ended, rotated, moved, _, _ = s.run(_ends([5, 6, 6, 7], [1, 3, 2, 0]))
    assert (k, ended, rotated, moved) == (4, 4, 2, 1)
    assert why == 0
    assert s.flags[10:14].tolist() == [0, 0, _DIRTY, 0]
    assert s.tail_to_head(4) == [3, 1, 0]
    assert s.tail_to_head(5) == [2]
    assert s.fl.tolist() == [LRU_INACTIVE, LRU_INACTIVE, LRU_ACTIVE, LRU_INACTIVE]
    assert s.qs[Q_SIZE].tolist() == [1, -1]


def test_the_run_stops_where_python_or_the_event_queue_comes_first() -> None:
    s = Lists()
    s.flags[10:14] = _WB | _RECLAIM
    ends = _ends([5, 6, 7], [0, 1, 2])  # ids 100, 101, 102
    s.io[IO_HEAD_T : IO_HEAD_T + 3] = [6, 1, 100]  # a normal event at 6, scheduled before
    assert s.run(ends)[:3] == [1, NOT_DUE, 1]  # the end at 6 (id 101) sorts after it
    s.io[IO_HEAD_T : IO_HEAD_T + 3] = [6, 1, 102]
    assert s.run(ends, k=1)[:3] == [2, NOT_DUE, 1]  # ... before this one
    s.io[IO_HEAD_T] = _NO_LIMIT
    s.special[1] = True  # page 12 (frame 2) is of mm 1, which has a zapped page
    assert s.run(ends, k=2)[:3] == [2, PYTHON, 0]
    s.special[1] = False
    assert s.run(ends, k=2, budget=0)[:3] == [2, PYTHON, 0]  # it would wake the throttled
    s.pending[0] = 3  # the inactive list has buffered adds: rotating onto it drains them
    out = s.run(ends, k=2, budget=1)
    assert out[:3] == [2, PENDING, 0]
    assert out[IO_SRC : IO_SRC + 2] == [1, 0]
    s.pending[0] = 0
    out = s.run(ends, k=2, budget=1)
    assert out[:3] == [3, 0, 1]
    assert s.io[IO_BUDGET] == 0
    assert s.flags[12] == 0


def test_reclaim_throttle_budget_is_the_ends_that_wake_nobody() -> None:
    """One sleeper since 5 writes had ended, 30 ended now: the wake comes when more than 32
    have ended since, at the 38th, so 7 may end first."""
    env = simpy.Environment()
    t = ReclaimThrottle(env, None, VmEvents())  # type: ignore[arg-type]
    assert t.writeback_budget() == -1  # nobody sleeps
    t._written = 5
    env.process(t.writeback())
    env.run(until=1)
    assert t.nr_writeback_throttled == 1
    assert t._reclaim_start == 5
    t._written = 30
    assert t.writeback_budget() == 7
    t.writebacks_ended(7)
    assert t._written == 37
    assert not t._writeback.triggered  # type: ignore[union-attr]
    assert t.writeback_budget() == 0
    t.writeback_ended()
    assert t._writeback.triggered  # type: ignore[union-attr]
    assert t.writeback_budget() == -1


class _Drain:
    """The drain's protocol over the real compiled pass: every end is plain except those of
    ``python`` (their mm has a page zapped), each end of a run logged as it is done."""

    def __init__(self, n: int, python: set[int], log: Callable[[int, int], None]) -> None:
        self.s = Lists()
        self.s.flags = np.full(n, _WB, dtype=np.uint8)
        self.s.pid_base = np.arange(n, dtype=np.int64)
        self.s.special = np.array([i in python for i in range(n)], dtype=np.bool_)
        self.log = log

    def ends(self, times: list[int], pids: list[int], pfns: list[int], now: int, first: int):
        return sorted_ends(np.array((times, pids, pfns), dtype=np.int64), now, first)

    def drain(self, ends: np.ndarray, k: int, queue: list[tuple[Any, ...]]) -> int:
        io = self.s.io
        io[IO_HEAD_T : IO_HEAD_T + 3] = queue[0][:3] if queue else [_NO_LIMIT, 0, 0]
        io[IO_HEAD_T + 3] = len(self.s.flags)
        self.s.run(ends, k)
        for j in range(k, int(io[IO_K])):
            self.log(int(ends[E_PID, j]), int(ends[0, j]))
        return int(io[IO_K])


def _trace(ts: list[int], python: set[int], extra: list[tuple[int, bool, bool]], batched: bool):
    """tests/test_timers.py's trace: ends at ``ts`` set at time 1 among other events (each
    (time, set after the ends, urgent)); an end of ``python`` at time 3 wakes an urgent and a
    normal event, as a completion that wakes a task does. Drained ends log their own time."""
    env = simpy.Environment()
    out: list[object] = []

    def mark(tag: object) -> Callable[[simpy.Event], None]:
        return lambda _ev: out.append(tag)

    def fire(i: int, _pfn: int = 0) -> None:
        out.append(("end", i, int(env.now)))
        if env.now == 3 and i in python:
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
        ids = list(range(len(ts)))
        if batched:
            drain = _Drain(len(ts), python, lambda i, t: out.append(("end", i, t)))
            DrainedTimers(env, ts, ids, ids, drain, fire)  # type: ignore[arg-type]
        else:
            for t, i in zip(ts, ids, strict=True):
                Timeout(env, max(0, t - 1), i).callbacks.append(lambda ev: fire(ev.value))
        for j, (t, after, urgent) in enumerate(extra):
            if after:
                other(j, t, urgent)

    env.timeout(1).callbacks.append(setup)
    env.run()
    out.append(("ids", next(env._eid)))  # type: ignore[attr-defined]
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=12),
    st.sets(st.integers(0, 11)),
    st.lists(st.tuples(st.integers(0, 6), st.booleans(), st.booleans()), max_size=8),
)
def test_drained_ends_fall_where_separate_timeouts_would(
    ts: list[int], python: set[int], extra: list[tuple[int, bool, bool]]
) -> None:
    """Whatever is drained and whatever goes through Python, every end is done in the order
    and at the time its own timeout would have it, before and after the same other events."""
    assert _trace(ts, python, extra, batched=True) == _trace(ts, python, extra, batched=False)


WORLDS: dict[str, dict[str, Any]] = {
    "node": {"swap": {"size_mib": 64, "queue_depth": 2}},
    "memcg": {
        "swap": {"size_mib": 64, "queue_depth": 2},
        "vms": [TINY["vms"][0] | {"memcg": {"max_mib": 5, "swap_max_mib": 8}}],
    },
    "zswap": {"swap": {"size_mib": 64, "zswap": {"enabled": True, "max_pool_percent": 5}}},
    "page_cache": {
        "swap": {"size_mib": 64, "queue_depth": 2},
        "host_files": {"size_mib": 2, "access_rate_per_s": 100_000, "write_ratio": 0.5},
    },
}


@pytest.mark.parametrize("name", sorted(WORLDS))
def test_worlds_equal_with_the_drain_on_and_off(name: str) -> None:
    """The tiny world (4 MiB host) on the node's lruvec, with a memcg per VM, with zswap in
    front of the disk, with page cache: equal with the drain and without, and it drains."""
    raw = copy.deepcopy(TINY) | {"host": {"memory_mib": 4}} | WORLDS[name]
    taken, general = check_world(raw, ("writeback_drain",))
    assert general["vmstat"]["pgrotated"] > 0
    assert taken["writeback_drain"] > 0


@settings(max_examples=10, deadline=None, database=None, derandomize=True)
@given(drained())
def test_invariants_hold_with_the_drain(raw: dict[str, Any]) -> None:
    _check_random_world(raw)


def test_a_world_the_drain_does_not_take_runs_without_it() -> None:
    raw = copy.deepcopy(TINY) | {"reclaim": {"policy": "mglru"}}
    w = World(parse_scenario(raw))
    assert w.wb_drain is None
    assert w.vmscan.schedule_ends is None
    assert run_checked(w, every_ns=10_000_000) > 0
