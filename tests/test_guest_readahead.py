"""The guest's file readahead (mm/readahead.c): window sizes, the sync and async decisions
worked by hand, and what it does to a sequential and a random reader."""

from __future__ import annotations

from typing import Any

import pytest

from sim.guest.kernel import _init_ra_size, _next_ra_size, _RaState
from tests.test_guest import _raw, _world


@pytest.mark.parametrize(
    ("size", "max_pages", "init"), [(1, 32, 4), (1, 4, 2), (8, 32, 16), (16, 32, 32), (3, 64, 8)]
)
def test_the_first_window_is_get_init_ra_size(size: int, max_pages: int, init: int) -> None:
    assert _init_ra_size(size, max_pages) == init


@pytest.mark.parametrize(("cur", "nxt"), [(1, 4), (4, 8), (8, 16), (16, 32), (32, 32)])
def test_each_next_window_is_get_next_ra_size(cur: int, nxt: int) -> None:
    assert _next_ra_size(cur, 32) == nxt


def test_a_sequential_stream_ramps_its_window_up_from_the_marks() -> None:
    ra, none = _RaState(), lambda i: False
    assert ra.sync_window(0, 32, none) == [0, 1, 2, 3]  # the file's start: 4 pages
    assert ra.mark() == 1  # async_size 3: the mark on the first page read ahead
    assert ra.async_window(1, 32, none) == list(range(4, 12))
    assert ra.mark() == 4  # async windows: the mark on their first page
    assert ra.async_window(4, 32, none) == list(range(12, 28))
    assert ra.async_window(12, 32, none) == list(range(28, 60))
    assert ra.async_window(28, 32, none) == list(range(60, 92))  # at ra_pages


def test_a_random_miss_reads_one_page_and_leaves_the_state() -> None:
    ra = _RaState()
    ra.prev, ra.start, ra.size, ra.async_size = 100, 96, 8, 8
    assert ra.sync_window(50, 32, lambda i: False) == [50]
    assert (ra.start, ra.size, ra.async_size) == (96, 8, 8)
    assert ra.sync_window(101, 32, lambda i: False) == [101, 102, 103, 104]  # sequential


def test_cached_pages_before_a_miss_betray_a_stream_context_readahead() -> None:
    ra = _RaState()
    ra.prev = 10
    assert ra.sync_window(50, 32, lambda i: 40 <= i < 50) == list(range(50, 61))  # 10 + 1
    assert (ra.size, ra.async_size) == (11, 1)
    ra.prev = 10
    assert ra.sync_window(50, 32, lambda i: 49 <= i < 50) == [50]  # one cached: random
    ra.prev = 10
    assert ra.sync_window(8, 32, lambda i: i < 8) == list(range(8, 25))  # from the start: x2


def test_a_mark_without_its_state_sizes_the_window_from_the_cached_run() -> None:
    ra = _RaState()
    # interleaved readers: the mark at 20 is not this state's; 21..23 cached, 24 missing
    # size: the run after the mark (4) plus the read (1), ramped up: 10
    assert ra.async_window(20, 32, lambda i: 21 <= i < 24) == list(range(24, 34))
    assert ra.async_window(20, 32, lambda i: i > 20) == []  # cached past the window: nothing


def _reader(workload: dict[str, Any], ra_kb: int, seconds: float) -> dict[str, Any]:
    raw = _raw(host_mib=64, ram_mib=16, footprint_mib=1, file_mib=8, read_ahead_kb=ra_kb)
    raw["vms"][0]["guest"]["swap"] = {"read_latency_us": 50}
    raw["vms"][0]["workload"] = workload
    raw["duration_s"] = seconds
    s = _world(raw).summary(0.0)["vms"][0]
    return {"accesses": s["accesses"], **s["guest"]}


def test_a_sequential_reader_waits_for_few_reads_with_readahead() -> None:
    """A scan of the process's memory then its 8 MiB file: without readahead each page of the
    file is a 50 us read the process waits for; with it the windows grow to 32 pages, read as
    one request each and ahead of the reader, which reads the whole file in the same time."""
    off = _reader({"type": "scan"}, 0, 0.05)
    on = _reader({"type": "scan"}, 128, 0.05)
    assert off["pgpgin"] // 4 < 1100  # about 0.05 s / 50 us reads, one page each
    assert on["pgpgin"] == 8 * 1024  # the whole file, in KiB
    assert on["accesses"] > 10 * off["accesses"]
    assert on["wait_ns"] < off["wait_ns"] // 10


def test_a_standalone_miss_marks_nothing_whatever_the_old_window() -> None:
    """A random miss reads its page alone and leaves the readahead state as it was; the old
    window's mark falling on that page must not give it PG_readahead."""
    from sim.config import parse_scenario
    from sim.engine import build_world

    raw = _raw(host_mib=64, ram_mib=16, footprint_mib=1, file_mib=8)
    w = build_world(parse_scenario(raw), None)
    g = w.vms[0].guest
    g.ra.prev, g.ra.start, g.ra.size, g.ra.async_size = 10, 96, 8, 8  # its mark: page 96
    w.env.process(g.file_fault(g.nr_anon + 96))
    w.env.run(until=10_000_000)
    assert g.vmstat["pgpgin"] == 4  # the one page, in KiB
    assert not g._ra_mark.any()
    assert (g.ra.start, g.ra.size, g.ra.async_size) == (96, 8, 8)
