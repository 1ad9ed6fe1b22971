"""Lazy memcg statistics (``host.memcg_stats``): two_list limit reclaim judges deactivation by
the counters of the memcg's last rstat flush, so a KVM guest whose pages all start active
under a memory.max is OOM-killed unless a flush (periodic, or a memory.stat reader) shows it
the active list; exact statistics (the default) leave every run as it was."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from sim.config import parse_scenario
from sim.engine import World
from sim.errors import ConfigError
from sim.reclaim.memcg import MemcgTwoList
from sim.reclaim.two_list import LruvecStats, TwoList, TwoListConfig
from tests.conftest import run_checked
from tests.fuzz import mutate, numeric_fields

KILLED_BY_NS = 15_000_000  # lazy, no flush: the memcg OOM comes at about 15 ms


def _raw(host: dict[str, Any] | None = None, *, policy: str = "two_list") -> dict[str, Any]:
    """A 32 MiB guest under an 8 MiB memory.max with swap, beside an unlimited one."""
    vm: dict[str, Any] = {
        "memory_mib": 32,
        "vcpus": 1,
        "access_rate_per_s": 400_000,
        "workload": {"type": "hotcold", "hot_fraction": 0.5, "hot_access_fraction": 0.95},
    }
    return {
        "name": "stats",
        "seed": 5,
        "duration_s": 0.3,
        "host": {"memory_mib": 128, **(host or {})},
        "reclaim": {"policy": policy},
        "swap": {"size_mib": 128},
        "vms": [{"name": "a", **vm, "memcg": {"max_mib": 8}}, {"name": "b", **vm}],
    }


def _world(host: dict[str, Any] | None = None, **kw: Any) -> World:
    return World(parse_scenario(_raw(host, **kw)))


def _limited(w: World) -> dict[str, Any]:
    return w.summary(0.0)["vms"][0]


def test_exact_is_the_default_and_changes_nothing() -> None:
    """An explicit ``exact`` runs as a config without the option: same summary, same hash."""
    runs = []
    for host in (None, {"memcg_stats": "exact", "memcg_stats_flush_ms": 2000.0}):
        w = _world(host)
        w.run()
        runs.append(w.summary(0.0))
    assert runs[0] == runs[1]
    assert not runs[0]["vms"][0]["oom_killed"]
    assert runs[0]["vms"][0]["memcg"]["events"]["max"] > 0
    lazy = parse_scenario(_raw({"memcg_stats": "lazy"}))
    assert lazy.config_hash() != runs[0]["config_hash"]


def test_lazy_stats_oom_kill_a_guest_whose_pages_start_active() -> None:
    """The flush at the start saw an empty memcg (inactive 0, active 0: not low): limit
    reclaim never deactivates, finds the inactive list empty, and after 16 failed retries the
    memcg OOM kills the guest; with exact statistics the same run reclaims and lives."""
    w = _world({"memcg_stats": "lazy"})
    run_checked(w)
    a = _limited(w)
    assert a["oom_killed"]
    assert a["memcg"]["events"] == {
        "low": 0,
        "high": 0,
        "max": 17,  # one failed charge, 16 retries
        "oom": 1,
        "oom_kill": 1,
        "swap_max": 0,
    }
    assert a["vmstat"].get("pgsteal_direct", 0) == 0
    assert a["faults"]["first_touch"] == 8 * 256 + 1
    assert [name for _, name in w.oom_kills] == ["a"]
    assert w.oom_kills[0][0] < KILLED_BY_NS
    assert not w.summary(0.0)["vms"][1]["oom_killed"]

    exact = _world()
    exact.run()
    assert not _limited(exact)["oom_killed"]
    assert _limited(exact)["vmstat"]["pgsteal_direct"] > 0


def test_a_memory_stat_read_after_the_guest_faulted_in_avoids_the_kill() -> None:
    """A reader of memory.stat (``flush_stats``) once the guest holds thousands of active
    pages: the flushed sizes show a low inactive list, so reclaim deactivates and frees."""
    w = _world({"memcg_stats": "lazy"})
    w.start()
    w.env.run(until=10_000_000)
    assert not w.oom_kills
    lv = w.policy.lruvecs[0]  # type: ignore[attr-defined]
    assert lv.stats == LruvecStats()  # still the flush at the start
    assert len(lv.active) > 1000
    assert len(lv.inactive) == 0
    assert w.memcg is not None
    w.memcg.flush_stats(0)
    assert (lv.stats.inactive, lv.stats.active) == (0, len(lv.active))
    run_checked(w)
    a = _limited(w)
    assert not a["oom_killed"]
    assert a["vmstat"]["pgsteal_direct"] > 0


def test_the_flush_period_matters() -> None:
    """Flushed every millisecond the guest is shown its active list before it reaches
    memory.max and lives, much as with exact statistics; flushed every 20 ms (or the
    kernel's 2 s) it is killed first."""
    short = _world({"memcg_stats": "lazy", "memcg_stats_flush_ms": 1.0})
    run_checked(short)
    exact = _world()
    exact.run()
    s, e = _limited(short), _limited(exact)
    assert not s["oom_killed"]
    assert s["vmstat"]["pgsteal_direct"] > 0
    assert abs(s["faults"]["first_touch"] - e["faults"]["first_touch"]) < 50
    for ms in (20.0, 2000.0):
        w = _world({"memcg_stats": "lazy", "memcg_stats_flush_ms": ms})
        w.run()
        assert _limited(w)["oom_killed"], ms


def test_a_late_periodic_flush_lets_reclaim_flush_ratelimited() -> None:
    """``prepare_scan_control``'s ratelimited flush: when the last root flush is more than two
    periods old (the worker late), the next reclaim pass flushes the target memcg."""
    w = _world({"memcg_stats": "lazy"})
    w.start()
    w.env.run(until=10_000_000)
    assert w.memcg is not None
    w.memcg.flush_last_ns = -5_000_000_000  # as if the worker had missed two periods
    run_checked(w)
    assert not _limited(w)["oom_killed"]
    assert w.memcg.flush_last_ns == -5_000_000_000  # a memcg's flush is not the root's


def test_lazy_runs_are_deterministic() -> None:
    runs = []
    for _ in range(2):
        w = _world({"memcg_stats": "lazy", "memcg_stats_flush_ms": 5.0})
        w.run()
        runs.append(w.summary(0.0))
    assert runs[0] == runs[1]


def test_mglru_reads_no_flushed_counters() -> None:
    """MGLRU's memcg reclaim decides from its generations' sizes and refault controller, not
    ``lruvec_page_state``: lazy statistics change nothing."""
    runs = []
    for host in (None, {"memcg_stats": "lazy"}):
        w = _world(host, policy="mglru")
        w.run()
        s = w.summary(0.0)
        s.pop("config_hash")
        runs.append(s)
    assert runs[0] == runs[1]


# -- the lruvec's reads -------------------------------------------------------------------------
def _lruvec(inactive: int, active: int) -> TwoList:
    lv = TwoList(TwoListConfig(), 1000, Counter(), np.random.default_rng(0))
    lv.stats = LruvecStats()
    lv.inactive.add_head(np.arange(inactive, dtype=np.int64))
    lv.active.add_head(np.arange(inactive, inactive + active, dtype=np.int64))
    return lv


def test_inactive_is_low_reads_the_last_flush_only_where_the_kernel_does() -> None:
    lv = _lruvec(0, 100)
    assert lv.inactive_is_low()  # the lists (kswapd_age_node's stand-in for the root's test)
    assert not lv.inactive_is_low(flushed=True)  # flushed empty: 0 < 0 is false
    lv.flush_stats()
    assert lv.inactive_is_low(flushed=True)
    lv.inactive.add_head(np.arange(500, 700, dtype=np.int64))
    assert not lv.inactive_is_low()
    assert lv.inactive_is_low(flushed=True)  # until the next flush


def test_refault_distance_is_judged_against_the_flushed_workingset() -> None:
    """``workingset_test_recent`` sizes the workingset with ``lruvec_page_state``: a refault
    within the active list as it is now, but not as flushed, starts inactive."""
    lv = _lruvec(0, 100)
    shadow = int(lv.workingset_eviction(np.array([900], dtype=np.int64))[0])
    lv.folio_add_lru(900, shadow)
    assert 900 in lv.inactive.snapshot()
    lv.flush_stats()
    shadow = int(lv.workingset_eviction(np.array([901], dtype=np.int64))[0])
    lv.folio_add_lru(901, shadow)
    assert 901 in lv.active.snapshot()


def test_root_lruvec_keeps_exact_stats() -> None:
    """Every VM's memcg reads flushed counters (an unlimited one too); the root's lruvec,
    holding page cache of no memcg, reads its lists."""
    raw = _raw({"memcg_stats": "lazy"})
    raw["host_files"] = {"size_mib": 1}
    w = World(parse_scenario(raw))
    pol = w.policy
    assert isinstance(pol, MemcgTwoList)
    root = pol.limits.root
    assert root == 2
    assert len(pol.lruvecs) == 3
    assert all(lv.stats is not None for lv in pol.lruvecs[:root])
    assert pol.lruvecs[root].stats is None


# -- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "where"),
    [
        ({"memcg_stats": "sometimes"}, "host.memcg_stats"),
        ({"memcg_stats_flush_ms": 0}, "host.memcg_stats_flush_ms"),
        ({"memcg_stats_flush_ms": "x"}, "host.memcg_stats_flush_ms"),
    ],
)
def test_bad_values_are_one_line_errors(host: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_scenario(_raw(host))
    assert where in str(e.value)
    assert "\n" not in str(e.value)


def test_the_fuzzer_covers_the_fields() -> None:
    paths = [at for at, *_ in numeric_fields()]
    assert ("host", "memcg_stats_flush_ms") in paths
    import random

    rng = random.Random(3)
    seen = set()
    for _ in range(400):
        raw = mutate(rng, _raw(), ["t.npy"])
        if isinstance(raw.get("host"), dict) and "memcg_stats" in raw["host"]:
            seen.add(str(raw["host"]["memcg_stats"]))
    assert {"lazy", "exact"} <= seen
