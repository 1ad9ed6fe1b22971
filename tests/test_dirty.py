"""Dirty page cache limits and reclaim's file write-back (sim/host/page_writeback.py, the
flusher in sim/host/filemap.py, two_list's ``shrink_inactive_file``, kswapd's PGDAT_DIRTY):
thresholds, background write-back, the writer's pause, the flusher wake-up and kswapd's own
writes, against hand-worked numbers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sim.config import ConfigError, parse_scenario
from sim.engine import World
from sim.host.memory import PG_DIRTY, PG_RECLAIM, PG_WRITEBACK
from sim.host.page_writeback import (
    dirty_freerun_ceiling,
    dirty_pause,
    domain_dirty_limits,
    global_dirtyable_memory,
    pos_ratio,
    wb_max_pause,
)
from sim.host.vmscan import ScanControl
from sim.reclaim.two_list import LRU_ACTIVE, LRU_INACTIVE, PG_REFERENCED
from tests.conftest import run_checked


def test_thresholds_from_a_memory_state() -> None:
    """1000 free pages, a reserve (high watermark) of 200 and 3000 file LRU pages: 3801
    dirtyable; 20% is 819/4096 of it, 760 pages; 10% is 409/4096, 379; freerun 569."""
    avail = global_dirtyable_memory(nr_free=1000, totalreserve=200, nr_file_lru=3000)
    assert avail == 800 + 3000 + 1
    assert domain_dirty_limits(avail, 20, 10) == (760, 379)
    assert dirty_freerun_ceiling(760, 379) == 569
    # free below the reserve counts nothing; a background ratio above the limit is halved
    assert global_dirtyable_memory(nr_free=100, totalreserve=200, nr_file_lru=50) == 51
    assert domain_dirty_limits(1000, 10, 20) == (99, 49)


def test_pos_ratio_and_the_pause() -> None:
    """thresh 760, bg 379: setpoint 664, limit 760. pos_ratio is 1024 at the setpoint, 0 at
    the limit; at 712, x = -49152/97 = -506, x^3 >> 20 = -124, so 900; at 600, 1316."""
    assert pos_ratio(664, 760, 379) == 1024
    assert pos_ratio(760, 760, 379) == 0
    assert pos_ratio(712, 760, 379) == 900
    assert pos_ratio(600, 760, 379) == 1316
    # wb_max_pause: 1000 dirty at 32000 pages/s is under a jiffy (1); much dirty: MAX_PAUSE 50
    assert wb_max_pause(1000, 32000) == 1
    assert wb_max_pause(100_000, 3200) == 50
    # 300 pages at 3200 pages/s * 900/1024 = 2812/s: period 75000 // 2812 = 26 jiffies, one
    # already spent since the last pause: 25; max_pause 7000 // 101 + 1 = 70, capped at 50
    assert dirty_pause(
        712, 760, 379, pages_dirtied=300, bw_pages_per_s=3200, wb_dirty=7000, since_pause=1
    ) == (25, 26)
    # at the limit: task_ratelimit 0, max_pause, period 0 (the writer tries again)
    assert dirty_pause(
        760, 760, 379, pages_dirtied=300, bw_pages_per_s=3200, wb_dirty=7000, since_pause=1
    ) == (50, 0)
    # fast device: period 2 but max_pause 1
    assert dirty_pause(
        712, 760, 379, pages_dirtied=300, bw_pages_per_s=32000, wb_dirty=700, since_pause=None
    ) == (1, 2)


def _raw(**files: Any) -> dict[str, Any]:
    """A 64 MiB host with a small guest (no reclaim) and an 8 MiB file written everywhere."""
    return {
        "name": "dirty",
        "seed": 5,
        "duration_s": 0.2,
        "host": {"memory_mib": 64},
        "reclaim": {"policy": "two_list"},
        "swap": {"size_mib": 16},
        "vms": [
            {
                "name": "g",
                "memory_mib": 8,
                "working_set_mib": 4,
                "access_rate_per_s": 100_000,
                "workload": {"type": "uniform"},
            }
        ],
        "host_files": {
            "size_mib": 8,
            "access_rate_per_s": 400_000,
            "read_latency_us": 5,
            "write_ratio": 1.0,
            "dirty_writeback_ms": 100_000,  # the periodic flush never runs
            "dirty_expire_ms": 100_000,
            "workload": {"type": "uniform"},
        }
        | files,
    }


def _file_dirty(w: World) -> int:
    return int(np.count_nonzero(w.mem.flags[w.mem.file_base :] & PG_DIRTY))


def test_background_writeback_starts_over_the_threshold() -> None:
    """The file (2048 pages) outgrows 10% of the dirtyable memory (about 1500 pages): the
    flusher writes at once, though its period is far away, and brings the dirty page cache
    back to the threshold (within a batch dirtied since the last check); with the background
    ratio above the file it never writes."""
    w = World(parse_scenario(_raw()))
    run_checked(w, every_ns=50_000_000)
    st = w.vmscan.dirty.state()  # type: ignore[union-attr]
    assert w.kswapd_busy_ns() == 0
    assert w.vmstat["pgscan_file"] == 0
    assert w.vmstat["pgpgout"] > 0
    assert st.nr_dirty <= st.bg_thresh + w.sc.engine.batch_accesses
    assert w.vmstat["nr_dirtied"] == _file_dirty(w) + w.vmstat["pgpgout"] // 4
    raw = _raw()
    raw["host"].update(dirty_ratio=100, dirty_background_ratio=90)  # 90 >= 100 / 2: halved
    w = World(parse_scenario(raw))
    run_checked(w, every_ns=50_000_000)
    assert w.vmstat["pgpgout"] == 0
    assert _file_dirty(w) == w.vmstat["nr_dirtied"] == 2048


def test_a_writer_over_the_freerun_ceiling_is_paused() -> None:
    """A slow device (1 MiB/s: 256 pages/s) cannot keep up: dirty and write-back pages pass
    the freerun ceiling and the writer sleeps, whole jiffies at a time; the summary reports
    the time, not a vmstat counter. With a fast device and the default limits it never
    sleeps."""
    raw = _raw(writeback_mib_per_s=1.0)
    raw["host"].update(dirty_ratio=10, dirty_background_ratio=5)  # limit below the file
    raw["duration_s"] = 1.0
    w = World(parse_scenario(raw))
    run_checked(w, every_ns=50_000_000)
    r = w.file_readers[0]
    assert r.dirty_pauses > 1
    assert r.dirty_pause_ns > 0
    assert r.dirty_pause_ns % 4_000_000 == 0
    now = int(w.env.now)
    assert r.dirty_pause_ns <= r.dirty_pause_at(now) <= now
    summary = w.summary(0.0, now)
    assert summary["host"]["dirty_throttle"] == [
        {"pause_ns": r.dirty_pause_at(now), "pauses": r.dirty_pauses}
    ]
    raw["host_files"]["writeback_mib_per_s"] = 10_000.0
    raw["host"] = {"memory_mib": 64}
    fast = World(parse_scenario(raw))
    run_checked(fast, every_ns=50_000_000)
    assert fast.file_readers[0].dirty_pause_ns == 0


def _pressed() -> World:
    """A 16 MiB host, a guest and a 16 MiB clean page cache after 0.1 s under pressure, then
    the inactive file list's 64 tail folios dirtied by hand (no flusher process runs)."""
    raw = _raw(size_mib=16, write_ratio=0.0)
    raw["host"] = {"memory_mib": 16}
    raw["vms"][0].update(memory_mib=16, working_set_mib=8)
    raw["duration_s"] = 0.1
    w = World(parse_scenario(raw))
    run_checked(w, every_ns=50_000_000)
    pids = w.mem.frame_pid[_tail(w, 64)]
    w.mem.flags[pids] |= np.uint8(PG_DIRTY)
    return w


def _tail(w: World, n: int) -> np.ndarray:
    """The ``n`` folios at the inactive file tail, without taking them off."""
    pfns = w.policy.inactive_file.isolate_tail(n)  # type: ignore[attr-defined]
    w.policy.inactive_file.add_tail(pfns)  # type: ignore[attr-defined]
    return pfns


def test_the_flusher_is_woken_when_every_file_folio_taken_is_unqueued_dirty() -> None:
    """``stat.nr_unqueued_dirty == nr_taken``: 32 dirty folios taken wake the flushers (all
    dirty data written at once); one clean folio among them, or one under write-back, does
    not."""
    w = _pressed()
    woken: list[int] = []
    w.vmscan.dirty.wakeup_flusher_threads = lambda: woken.append(1)  # type: ignore[union-attr,method-assign]
    pids = w.mem.frame_pid[_tail(w, 32)]
    assert ((w.mem.flags[pids] & (PG_DIRTY | PG_WRITEBACK)) == PG_DIRTY).all()
    sc = ScanControl(nr_to_reclaim=32, direct=True, vmstat=w.vmstat)
    w.policy.shrink_inactive_file(32, sc, w.vmscan)  # type: ignore[attr-defined]
    assert woken == [1]
    assert sc.nr_unqueued_dirty == sc.nr_file_taken == 32
    assert w.vmstat["nr_vmscan_immediate_reclaim"] >= 32  # direct reclaim never writes
    for cleanse in (PG_DIRTY, 0):  # one clean folio / one dirty folio under write-back
        pfns = _tail(w, 32)
        w.mem.flags[w.mem.frame_pid[pfns]] |= np.uint8(PG_DIRTY)
        pid = int(w.mem.frame_pid[pfns[0]])
        if cleanse:
            w.mem.flags[pid] &= ~np.uint8(PG_DIRTY)
        else:
            w.mem.flags[pid] |= np.uint8(PG_WRITEBACK)
            w.mem.nr_writeback += 1
        sc = ScanControl(nr_to_reclaim=32, direct=True, vmstat=w.vmstat)
        w.policy.shrink_inactive_file(32, sc, w.vmscan)  # type: ignore[attr-defined]
        assert woken == [1]
        assert sc.nr_unqueued_dirty == 31
        if not cleanse:
            w.mem.flags[pid] &= ~np.uint8(PG_WRITEBACK)
            w.mem.nr_writeback -= 1


def test_the_wake_up_writes_all_dirty_data() -> None:
    """The flusher woken by reclaim writes every dirty folio (``wb_check_start_all``), though
    its period and the background threshold are far away."""
    w = _pressed()
    dirty = _file_dirty(w)
    assert dirty == 64
    assert w.vmstat["pgpgout"] == 0
    w.env.process(w.file_readers[0].flusher())
    w.env.run(until=int(w.env.now) + 1)
    w.vmscan.wakeup_flusher_threads()
    w.env.run(until=int(w.env.now) + 1)
    assert w.vmstat["pgpgout"] // 4 == dirty == 64
    assert _file_dirty(w) == 0


@pytest.mark.parametrize("direct", [False, True])
def test_kswapd_writes_only_a_pg_reclaim_folio_with_pgdat_dirty(direct: bool) -> None:
    """Of 8 dirty folios at the tail, PGDAT_DIRTY set: 4 have PG_reclaim, one of them
    referenced. kswapd writes the 3 unreferenced ones (``nr_vmscan_write``, ``pgpgout`` 12
    KiB; back on the inactive list under write-back), keeps the referenced one inactive, and
    activates the 4 without PG_reclaim (``nr_vmscan_immediate_reclaim``). Direct reclaim, or
    kswapd without PGDAT_DIRTY, writes none: all 8 are activated."""
    for pgdat_dirty in (True, False):
        w = _pressed()
        mem, fl = w.mem, w.policy.fl  # type: ignore[attr-defined]
        pfns = _tail(w, 8)  # isolate_tail takes the tail's folios; order does not matter
        pids = mem.frame_pid[pfns]
        assert ((mem.flags[pids] & (PG_DIRTY | PG_WRITEBACK)) == PG_DIRTY).all()
        mem.flags[pids] &= ~np.uint8(PG_RECLAIM)
        marked = pfns[:4]
        mem.flags[mem.frame_pid[marked]] |= np.uint8(PG_RECLAIM)
        fl[pfns] &= ~np.uint8(PG_REFERENCED)
        fl[marked[0]] |= np.uint8(PG_REFERENCED)
        w.vmscan.pgdat_dirty = pgdat_dirty
        before = dict(w.vmstat.items())
        sc = ScanControl(nr_to_reclaim=32, direct=direct, vmstat=w.vmstat)
        w.policy.shrink_inactive_file(8, sc, w.vmscan)  # type: ignore[attr-defined]
        d = {k: w.vmstat[k] - before.get(k, 0) for k in ("nr_vmscan_write", "pgpgout")}
        d["immediate"] = w.vmstat["nr_vmscan_immediate_reclaim"] - before.get(
            "nr_vmscan_immediate_reclaim", 0
        )
        if pgdat_dirty and not direct:
            assert d == {"nr_vmscan_write": 3, "pgpgout": 12, "immediate": 4}
            assert sc.nr_pageout == 3
            wb = (mem.flags[mem.frame_pid[marked[1:]]] & (PG_WRITEBACK | PG_DIRTY)) == PG_WRITEBACK
            assert wb.all()
            assert (fl[marked] & LRU_INACTIVE).all()  # written and kept: inactive
            assert (fl[pfns[4:]] & LRU_ACTIVE).all()
        else:
            assert d == {"nr_vmscan_write": 0, "pgpgout": 0, "immediate": 8}
            assert (fl[pfns] & LRU_ACTIVE).all()
        w.check()


def test_kswapd_sets_pgdat_dirty_and_writes_under_pressure() -> None:
    """A whole run with dirty page cache under pressure and the flusher slow to come: kswapd
    flags the node and writes file folios itself (``nr_vmscan_write``), which it does not in a
    run with no writes."""
    raw = _raw(size_mib=16, writeback_mib_per_s=50.0)
    raw["host"] = {"memory_mib": 16, "dirty_ratio": 100, "dirty_background_ratio": 99}
    raw["vms"][0].update(memory_mib=16, working_set_mib=12, access_rate_per_s=400_000)
    raw["duration_s"] = 0.3
    w = World(parse_scenario(raw))
    run_checked(w, every_ns=50_000_000)
    assert w.vmstat["nr_vmscan_write"] > w.vmstat["pswpout"]  # file writes by kswapd
    assert w.vmstat["nr_dirtied"] == _file_dirty(w) + w.vmstat["pgpgout"] // 4


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dirty_ratio": 0}, "host.dirty_ratio"),
        ({"dirty_ratio": 101}, "host.dirty_ratio"),
        ({"dirty_background_ratio": -1}, "host.dirty_background_ratio"),
    ],
)
def test_bad_dirty_ratios_are_one_line_naming_the_field(change: dict[str, Any], field: str) -> None:
    raw = _raw()
    raw["host"].update(change)
    with pytest.raises(ConfigError) as e:
        parse_scenario(raw)
    assert "\n" not in str(e.value)
    assert field in str(e.value)


def test_default_ratios_keep_the_config_hash() -> None:
    """Results named by a hash before the ratios existed keep their directories."""
    raw = _raw()
    h = parse_scenario(raw).config_hash()
    raw["host"].update(dirty_ratio=20, dirty_background_ratio=10)
    assert parse_scenario(raw).config_hash() == h
    raw["host"]["dirty_ratio"] = 30
    assert parse_scenario(raw).config_hash() != h


def test_dirty_limits_runs_are_deterministic() -> None:
    """Two runs of a world with a throttled writer, background write-back and kswapd's file
    writes give the same counters and the same pause."""
    out = []
    for _ in range(2):
        raw = _raw(size_mib=16, writeback_mib_per_s=20.0)
        raw["host"] = {"memory_mib": 16, "dirty_ratio": 5, "dirty_background_ratio": 2}
        raw["vms"][0].update(memory_mib=16, working_set_mib=12, access_rate_per_s=400_000)
        w = World(parse_scenario(raw))
        w.run()
        out.append((dict(w.vmstat.items()), w.file_readers[0].dirty_pause_at(int(w.env.now))))
    assert out[0] == out[1]
    assert out[0][1] > 0
