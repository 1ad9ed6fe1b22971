"""Memory cgroups (sim/host/memcontrol.py, sim/reclaim/memcg.py) against hand-worked numbers:
the memory.high penalty, protection and its scan scaling, inactive_is_low per lruvec, and the
charge -> limit reclaim -> 16 retries -> memcg OOM sequence; then whole worlds with limits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import parse_scenario
from sim.engine import World
from sim.errors import ConfigError
from sim.host.memcontrol import (
    JIFFY_NS,
    MEMCG_MAX_HIGH_DELAY_JIFFIES,
    MemcgLimits,
    apply_proportional_protection,
    calculate_high_delay,
    calculate_overage,
    effective_protection,
    mem_cgroup_protection,
)
from sim.host.memory import HostMemory, setup_per_zone_wmarks
from sim.host.vmstat import new_vmstat
from sim.reclaim.memcg import (
    MEMCG_LRU_TAIL,
    MEMCG_LRU_YOUNG,
    MemcgMglru,
    MemcgTwoList,
)
from sim.reclaim.mglru import MglruConfig
from sim.reclaim.two_list import TwoListConfig
from tests.conftest import run_checked
from tests.test_invariants import scenarios


# -- memory.high penalty ------------------------------------------------------------------------
def test_overage_is_in_2_to_the_20_units_of_high() -> None:
    # 500 pages over 10000: 500 * 2^20 / 10000 = 52428.8 -> 52428
    assert calculate_overage(10_500, 10_000) == 52_428
    assert calculate_overage(10_000, 10_000) == 0
    assert calculate_overage(5, 0) == 4 << 20  # high 0 acts as 1 page: 5 - 1 over it


def test_high_delay_is_quadratic_in_the_overage() -> None:
    # 5% over: 0.05^2 * HZ(250) * 2^40 >> 34 = 40 jiffies; truncation of 52428 gives 39
    assert calculate_high_delay(52_428) == 39
    # 1% over: 0.01^2 * 250 * 64 = 1.6 -> 1 jiffy (below HZ/100: no sleep at all)
    assert calculate_high_delay(calculate_overage(10_100, 10_000)) == 1
    # 20% over: 640 jiffies, over the 2 s (500 jiffy) clamp applied per return
    assert calculate_high_delay(calculate_overage(12_000, 10_000)) == 639
    assert MEMCG_MAX_HIGH_DELAY_JIFFIES * JIFFY_NS == 2_000_000_000
    # half the nominal batch of 64 pages: half the penalty
    assert calculate_high_delay(52_428, nr_pages=32) == 19


# -- protection ---------------------------------------------------------------------------------
def test_effective_protection_is_shared_out_when_siblings_overclaim() -> None:
    # uses 300 of a 500 setting; siblings claim 1500 of a parent's 1000: 300 * 1000 / 1500
    assert effective_protection(300, 2000, 500, 1000, 1500) == 200
    assert effective_protection(300, 2000, 500, 1000, 800) == 300
    assert effective_protection(700, 2000, 500, 1000, 800) == 500


def test_one_level_under_root_gets_its_settings_and_the_target_none() -> None:
    lim = MemcgLimits(max=[9, 9], high=[9, 9], low=[600, 0], min=[100, 0], swap_max=[9, 9])
    assert mem_cgroup_protection(lim, -1, 0) == (100, 600)
    assert mem_cgroup_protection(lim, 0, 0) == (0, 0)  # limit reclaim of the memcg itself


def test_scan_is_scaled_by_the_protected_share() -> None:
    # memory.low 600 of 800 used: 1000 - 1000 * 600 // 801 = 1000 - 749
    assert apply_proportional_protection(1000, 0, 600, 800, False) == (251, True)
    # the retry before OOM ignores memory.low; memory.min 0 leaves the full list
    assert apply_proportional_protection(1000, 0, 600, 800, True) == (1000, False)
    # memory.min 700 of 1000: 1000 - 1000 * 700 // 1001 = 1000 - 699
    assert apply_proportional_protection(1000, 700, 0, 1000, False) == (301, False)
    # never below SWAP_CLUSTER_MAX: 40 - 40 * 600 // 801 = 11 -> 32
    assert apply_proportional_protection(40, 0, 600, 800, False) == (32, True)
    assert apply_proportional_protection(1000, 0, 0, 100, False) == (1000, False)


def test_scan_of_usage_below_protection_keeps_reclaim_moving() -> None:
    # cgroup_size is raised to the protection: 1000 - 1000 * 600 // 601 = 1000 - 998 = 2 -> 32
    assert apply_proportional_protection(1000, 0, 600, 100, False) == (32, True)


# -- lruvecs ------------------------------------------------------------------------------------
def _lruvecs(pages: tuple[int, int], page_shift: int = 12) -> tuple[MemcgTwoList, HostMemory]:
    nr = sum(pages)
    mem = HostMemory(nr, nr, setup_per_zone_wmarks(nr), [0, pages[0]])
    lim = MemcgLimits.from_configs([None, None], 256)
    pol = MemcgTwoList(
        TwoListConfig(),
        nr,
        new_vmstat(2),
        np.random.default_rng(0),
        mem=mem,
        limits=lim,
        swap_usage=lambda i: 0,
    )
    pol.page_shift = page_shift
    return pol, mem


def _fill(pol: MemcgTwoList, mem: HostMemory, pids: range, active: int) -> None:
    for k, pid in enumerate(pids):
        pfn = mem.alloc_frame(pid)
        pol.folio_add_lru(pfn, None)
        if k < active:  # FOLL_TOUCH then kvm_release_page: the second mark activates
            pol.folio_mark_accessed(pfn)
            pol.folio_mark_accessed(pfn)


def test_inactive_is_low_is_judged_per_lruvec() -> None:
    # 2 MiB pages: 1100 pages = 2.1 GiB -> gb 2, ratio int_sqrt(20) = 4: 200 * 4 < 900, low;
    # 190 pages -> gb 0, ratio 1: 100 >= 90, not low. Together: 1290 pages, gb 2, ratio 4,
    # 300 * 4 >= 990: one node-wide lruvec would not deactivate.
    pol, mem = _lruvecs((1100, 190), page_shift=21)
    _fill(pol, mem, range(0, 1100), active=900)
    _fill(pol, mem, range(1100, 1290), active=90)
    a, b = pol.lruvecs
    assert (len(a.inactive), len(a.active), len(b.inactive), len(b.active)) == (200, 900, 100, 90)
    assert a.inactive_is_low()
    assert not b.inactive_is_low()
    assert pol.lru_sizes() == {"inactive": 300, "active": 990}
    on_lru = np.ones(1290, dtype=np.bool_)
    pol.check(on_lru)


# -- whole worlds -------------------------------------------------------------------------------
def _world(memcg: dict[str, Any] | None, *, dur: float = 0.3, vcpus: int = 1) -> World:
    vm: dict[str, Any] = {
        "memory_mib": 32,
        "vcpus": vcpus,
        "access_rate_per_s": 400_000,
        "workload": {"type": "hotcold", "hot_fraction": 0.5, "hot_access_fraction": 0.95},
    }
    raw = {
        "name": "memcg",
        "seed": 5,
        "duration_s": dur,
        "host": {"memory_mib": 128},
        "swap": {"size_mib": 128},
        "vms": [{"name": "a", **vm, **({"memcg": memcg} if memcg else {})}, {"name": "b", **vm}],
    }
    return World(parse_scenario(raw))


def test_charge_reclaim_16_retries_then_memcg_oom() -> None:
    """memory.swap.max 0 leaves the memcg nothing reclaimable: the 257th charge over a 1 MiB
    (256 page) memory.max counts ``max`` once, reclaims nothing, retries 16 times, then the
    memcg OOM kills that VM only."""
    w = _world({"max_mib": 1, "swap_max_mib": 0})
    run_checked(w)
    s = w.summary(0.0)
    a, b = s["vms"]
    assert a["memcg"]["events"] == {
        "low": 0,
        "high": 0,
        "max": 17,
        "oom": 1,
        "oom_kill": 1,
        "swap_max": 0,
    }
    assert a["oom_killed"]
    assert not b["oom_killed"]
    assert a["faults"]["first_touch"] == 257  # 256 charged; the 257th ended in the kill
    assert a["vmstat"].get("pgscan_direct", 0) == 0  # nothing was reclaimable
    assert [name for _, name in w.oom_kills] == ["a"]
    assert b["faults"]["major"] == 0
    assert b["vmstat"].get("pgscan_direct", 0) == 0


def test_memory_max_makes_only_that_vm_reclaim() -> None:
    w = _world({"max_mib": 8})
    run_checked(w)
    a, b = w.summary(0.0)["vms"]
    assert not a["oom_killed"]
    assert a["memcg"]["events"]["max"] > 0
    assert a["faults"]["major"] > 0
    assert a["vmstat"]["pgsteal_direct"] > 0
    assert a["resident_pages"] <= 8 * 256 + 1
    assert b["faults"]["major"] == 0
    assert b["vmstat"].get("pgscan_direct", 0) == 0


def test_memory_high_throttles_the_vcpu() -> None:
    free = _world(None)
    free.run()
    high = _world({"high_mib": 8})
    run_checked(high)
    a = high.summary(0.0)["vms"][0]
    assert a["memcg"]["events"]["high"] > 0
    assert a["stall_ns"] > free.summary(0.0)["vms"][0]["stall_ns"]
    assert a["memcg"]["events"]["max"] == 0


def test_swap_max_caps_the_vms_swap() -> None:
    w = _world({"max_mib": 8, "swap_max_mib": 4})
    run_checked(w)
    a = w.summary(0.0)["vms"][0]["memcg"]
    assert a["events"]["swap_max"] > 0
    assert a["swap_current_pages"] <= 4 * 256


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reclaim": {"policy": "clock"}}, "vms[0].memcg: per-memcg reclaim is modelled for"),
        ({"reclaim": {"policy": "two_list", "trigger": "demand"}}, "vms[0].memcg: needs"),
        ({"host": {"memory_mib": 128, "page_size_kib": 2048}}, "vms[0].memcg.max_mib: 3 is not"),
    ],
)
def test_memcg_refused_where_not_modelled(change: dict[str, Any], message: str) -> None:
    raw = {
        "name": "x",
        "duration_s": 0.1,
        "host": {"memory_mib": 128},
        "vms": [{"name": "a", "memory_mib": 32, "memcg": {"max_mib": 3}}],
        **change,
    }
    with pytest.raises(ConfigError) as e:
        parse_scenario(raw)
    text = str(e.value)
    assert message in text
    assert "\n" not in text


def test_negative_limit_is_one_line_error() -> None:
    raw = {
        "name": "x",
        "duration_s": 0.1,
        "host": {"memory_mib": 64},
        "vms": [{"name": "a", "memory_mib": 32, "memcg": {"low_mib": -1}}],
    }
    with pytest.raises(ConfigError) as e:
        parse_scenario(raw)
    assert "vms[0].memcg.low_mib" in str(e.value)
    assert "\n" not in str(e.value)


def test_unset_memcg_leaves_the_config_dump_alone() -> None:
    sc = parse_scenario(
        {
            "name": "x",
            "duration_s": 0.1,
            "host": {"memory_mib": 64},
            "vms": [{"name": "a", "memory_mib": 32}],
        }
    )
    assert "memcg" not in sc.to_yaml()
    sc = parse_scenario(
        {
            "name": "x",
            "duration_s": 0.1,
            "host": {"memory_mib": 64},
            "vms": [{"name": "a", "memory_mib": 32, "memcg": {}}],
        }
    )
    assert "memcg" in sc.to_yaml()


limits = st.fixed_dictionaries(
    {},
    optional={
        "max_mib": st.integers(0, 12),
        "high_mib": st.integers(0, 12),
        "low_mib": st.integers(0, 12),
        "min_mib": st.integers(0, 12),
        "swap_max_mib": st.integers(0, 8),
    },
)


page_cache = st.fixed_dictionaries(
    {
        "size_mib": st.integers(1, 8),
        "access_rate_per_s": st.sampled_from([10_000, 1_000_000]),
        "read_latency_us": st.sampled_from([1, 100]),
        "workload": st.sampled_from([{"type": "uniform"}, {"type": "zipf"}]),
        "write_ratio": st.sampled_from([0.0, 0.3]),
        "dirty_writeback_ms": st.sampled_from([1, 5000]),
        "dirty_expire_ms": st.sampled_from([0, 2]),
        "swappiness": st.sampled_from([0, 60, 200]),  # reclaim's, drawn beside the file
    }
)


@settings(max_examples=20)
@given(
    scenarios(),
    st.lists(st.one_of(st.none(), limits), min_size=3, max_size=3),
    st.sampled_from(["two_list", "mglru"]),
    st.sampled_from(["none", "root", "vm", "both"]),
    page_cache,
)
def test_invariants_hold_with_memcgs(
    raw: dict[str, Any], cgs: list[Any], policy: str, files: str, hf: dict[str, Any]
) -> None:
    """Random two-list and MGLRU worlds where VMs have random memcgs: charges equal frames
    owned (file pages included), swap charges equal slots held, each lruvec holds its memcg's
    folios, the memcg LRU holds every memcg once, at every checked millisecond. Two-list
    worlds with a page cache charge it to the root, to a VM's memcg, or one file each."""
    raw["reclaim"] = {"policy": policy}
    raw.pop("host_files", None)
    for p, cg in zip(raw["vms"], cgs, strict=False):
        if cg is not None:
            p["memcg"] = cg
    charged = [p for p in raw["vms"] if "memcg" in p]
    if policy == "two_list" and files != "none":  # MGLRU has no file type yet
        raw["reclaim"]["swappiness"] = hf.pop("swappiness")
        raw["host_files"] = hf
        if charged and files != "root":
            vm = charged[-1]
            name = vm["name"] if vm.get("count", 1) == 1 else f"{vm['name']}1"
            raw["host_files"] = [hf | {"memcg": name}]
            if files == "both":
                raw["host_files"].append(hf | {"size_mib": 1, "write_ratio": 0.0})
    w = World(parse_scenario(raw))
    assert run_checked(w) >= 10
    w.summary(0.0)


def test_limit_reclaim_is_counted_once_in_the_vms_breakdown() -> None:
    """pgscan of limit reclaim is the host's direct scan, all of it in the limited VM's
    memory.stat, none in its neighbour's."""
    w = _world({"max_mib": 8, "low_mib": 4})
    w.run()
    vs = w.vmstat
    vs.check()
    a, b = vs.per_mm
    assert a["pgscan_direct"] > 0
    assert b["pgscan_direct"] == 0
    assert vs["pgscan_direct"] == a["pgscan_direct"]


def test_memcg_worlds_are_deterministic() -> None:
    """Same seed, same memcgs: the same counts, events and per-VM breakdowns."""
    runs = []
    for _ in range(2):
        w = _world({"max_mib": 8, "high_mib": 6, "swap_max_mib": 16})
        w.run()
        runs.append(w.summary(0.0))
    assert runs[0] == runs[1]
    assert runs[0]["vms"][0]["memcg"]["events"]["high"] > 0


def test_memory_low_is_breached_only_when_nothing_else_gives() -> None:
    """Both VMs protected above what they use: kswapd skips both and fails; direct reclaim
    finds nothing unprotected, retries with memory.low ignored (``memory.events low``), and
    no VM is killed."""
    raw = {
        "name": "low",
        "seed": 2,
        "duration_s": 0.3,
        "host": {"memory_mib": 32},
        "swap": {"size_mib": 128},
        "vms": [
            {
                "name": n,
                "memory_mib": 32,
                "access_rate_per_s": 400_000,
                "workload": {"type": "uniform"},
                "memcg": {"low_mib": 32},
            }
            for n in ("a", "b")
        ],
    }
    w = World(parse_scenario(raw))
    run_checked(w)
    s = w.summary(0.0)
    assert sum(v["memcg"]["events"]["low"] for v in s["vms"]) > 0
    assert s["host"]["kswapd_reclaimed"] == 0
    assert s["host"]["direct_reclaimed"] > 0
    assert not any(v["oom_killed"] for v in s["vms"])


def test_memory_min_is_never_breached() -> None:
    """One VM protected by memory.min above what it can use: host reclaim takes only from the
    other, however short the host is."""
    raw = {
        "name": "min",
        "seed": 2,
        "duration_s": 0.3,
        "host": {"memory_mib": 32},
        "swap": {"size_mib": 128},
        "vms": [
            {
                "name": "a",
                "memory_mib": 16,
                "access_rate_per_s": 400_000,
                "workload": {"type": "uniform"},
                "memcg": {"min_mib": 16},
            },
            {
                "name": "b",
                "memory_mib": 32,
                "access_rate_per_s": 400_000,
                "workload": {"type": "uniform"},
            },
        ],
    }
    w = World(parse_scenario(raw))
    run_checked(w)
    a, b = w.summary(0.0)["vms"]
    assert a["faults"]["major"] == 0
    assert a["vmstat"].get("pgscan_kswapd", 0) + a["vmstat"].get("pgscan_direct", 0) == 0
    assert b["faults"]["major"] > 0


def test_memcg_lru_rotation() -> None:
    """``lru_gen_rotate_memcg`` by hand: three memcgs in generation 0 (bins 0, 1, 2). TAIL
    keeps the generation and marks the segment; YOUNG moves to generation seq + 1; when the
    current generation empties, seq advances."""
    nr = 30
    mem = HostMemory(nr, nr, setup_per_zone_wmarks(nr), [0, 10, 20])
    lim = MemcgLimits.from_configs([None, None, None], 256)
    pol = MemcgMglru(
        MglruConfig(),
        nr,
        new_vmstat(3),
        np.random.default_rng(0),
        mem=mem,
        limits=lim,
        swap_usage=lambda i: 0,
    )
    assert (pol.seq, pol.gen, pol.nr_memcgs) == (0, [0, 0, 0], [3, 0, 0])
    pol.lru_gen_rotate_memcg(1, MEMCG_LRU_TAIL)
    assert (pol.gen[1], pol.seg[1], pol.fifo[0][1]) == (0, MEMCG_LRU_TAIL, [1])
    for i in (0, 1):
        pol.lru_gen_rotate_memcg(i, MEMCG_LRU_YOUNG)
    assert (pol.seq, pol.gen, pol.nr_memcgs, pol.seg[1]) == (0, [1, 1, 0], [1, 2, 0], 0)
    pol.lru_gen_rotate_memcg(2, MEMCG_LRU_YOUNG)  # generation 0 empties: seq advances
    assert (pol.seq, pol.gen, pol.nr_memcgs) == (1, [1, 1, 1], [0, 3, 0])
    pol.check(np.zeros(nr, dtype=np.bool_))


def test_mglru_memory_max_reclaims_only_that_vm() -> None:
    raw = _world({"max_mib": 8}).sc.model_dump(mode="json")
    raw["reclaim"] = {"policy": "mglru"}
    w = World(parse_scenario(raw))
    run_checked(w)
    a, b = w.summary(0.0)["vms"]
    assert a["memcg"]["events"]["max"] > 0
    assert a["faults"]["major"] > 0
    assert b["faults"]["major"] == 0
    assert b["vmstat"].get("pgscan_direct", 0) == 0
