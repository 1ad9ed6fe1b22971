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
from sim.host.vmscan import ScanControl
from sim.host.vmstat import new_vmstat
from sim.reclaim.memcg import (
    MEMCG_LRU_TAIL,
    MEMCG_LRU_YOUNG,
    MemcgMglru,
    MemcgTwoList,
)
from sim.reclaim.mglru import MglruConfig
from sim.reclaim.two_list import TwoListConfig, inactive_is_low
from tests.conftest import drive, run_checked
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
def _lruvecs(
    pages: tuple[int, int], cfg: TwoListConfig | None = None
) -> tuple[MemcgTwoList, HostMemory]:
    nr = sum(pages)
    mem = HostMemory(nr, nr, setup_per_zone_wmarks(nr), [0, pages[0]])
    lim = MemcgLimits.from_configs([None, None], 256)
    pol = MemcgTwoList(
        cfg or TwoListConfig(),
        nr,
        new_vmstat(2),
        np.random.default_rng(0),
        mem=mem,
        limits=lim,
        swap_usage=lambda i: 0,
    )
    return pol, mem


def test_inactive_ratio_is_int_sqrt_of_the_lists_gigabytes() -> None:
    gib = 1 << 18  # 4 KiB pages
    # 3 GiB on the lists: ratio int_sqrt(30) = 5, so low while 5 * inactive < 3 GiB - inactive
    assert inactive_is_low((1 << 17) - 1, 3 * gib - (1 << 17) + 1, None)
    assert not inactive_is_low(1 << 17, 3 * gib - (1 << 17), None)
    assert inactive_is_low(100, 101, None)  # under 1 GiB: ratio 1
    assert not inactive_is_low(100, 100, None)


def _fill(pol: MemcgTwoList, mem: HostMemory, pids: range, active: int) -> None:
    for k, pid in enumerate(pids):
        pfn = mem.alloc_frame(pid)
        pol.folio_add_lru(pfn, None)
        if k < active:  # FOLL_TOUCH then kvm_release_page: the second mark activates
            pol.folio_mark_accessed(pfn)
            pol.folio_mark_accessed(pfn)


def test_inactive_is_low_is_judged_per_lruvec() -> None:
    # inactive_ratio 4: 200 * 4 < 900, low; 100 * 4 >= 90, not low. Together: 300 * 4 >= 990:
    # one node-wide lruvec would not deactivate.
    pol, mem = _lruvecs((1100, 190), TwoListConfig(inactive_ratio=4))
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
    assert "memcg:" not in sc.to_yaml()  # (host.memcg_stats is another key)
    sc = parse_scenario(
        {
            "name": "x",
            "duration_s": 0.1,
            "host": {"memory_mib": 64},
            "vms": [{"name": "a", "memory_mib": 32, "memcg": {}}],
        }
    )
    assert "memcg:" in sc.to_yaml()


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
    st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_invariants_hold_with_memcgs(
    raw: dict[str, Any],
    cgs: list[Any],
    policy: str,
    files: str,
    hf: dict[str, Any],
    prefault: list[bool],
) -> None:
    """Random two-list and MGLRU worlds where VMs have random memcgs, some prefaulted: charges
    equal frames owned (file pages included), swap charges equal slots held, each lruvec holds
    its memcg's folios, the memcg LRU holds every memcg once, right after the fill and at every
    checked millisecond; the fill charges nothing past memory.max or memory.swap.max. Worlds
    with a page cache (two_list's file lists, MGLRU's file type on every lruvec) charge it to
    the root, to a VM's memcg, or one file each."""
    raw["reclaim"] = {"policy": policy}
    raw.pop("host_files", None)
    for p, cg, pre in zip(raw["vms"], cgs, prefault, strict=False):
        if cg is not None:
            p["memcg"] = cg
        p["prefault"] = pre
    charged = [p for p in raw["vms"] if "memcg" in p]
    if files != "none":
        raw["reclaim"]["swappiness"] = hf.pop("swappiness")
        raw["host_files"] = hf
        if charged and files != "root":
            vm = charged[-1]
            name = vm["name"] if vm.get("count", 1) == 1 else f"{vm['name']}1"
            raw["host_files"] = [hf | {"memcg": name}]
            if files == "both":
                raw["host_files"].append(hf | {"size_mib": 1, "write_ratio": 0.0})
    w = World(parse_scenario(raw))
    w.check()
    if w.memcg is not None:
        lim = w.memcg.limits
        for i in range(len(w.vms)):
            assert w.memcg.usage(i) <= min(lim.max[i], lim.high[i])
            assert w.memcg.swap_usage[i] <= lim.swap_max[i]
    assert run_checked(w) >= 10
    w.summary(0.0)


def test_limit_reclaim_is_counted_as_the_kernel_counts_it() -> None:
    """Limit reclaim (``cgroup_reclaim``) on a host with room to spare: /proc/vmstat's
    ``pgscan_direct``/``pgsteal_direct`` stay 0 (global reclaim only), its ``pgscan_anon`` and
    ``pgsteal_anon`` count every folio, and the limited VM's memory.stat counts it as direct
    reclaim (``count_memcg_events``; the charging task reclaims), its neighbour's nothing."""
    w = _world({"max_mib": 8, "low_mib": 4})
    w.run()
    vs = w.vmstat
    vs.check()
    a, b = vs.per_mm
    assert a["pgscan_direct"] > 0
    assert b["pgscan_direct"] == b["pgscan_anon"] == 0
    assert vs["pgscan_direct"] == vs["pgscan_kswapd"] == vs["pgsteal_direct"] == 0
    assert vs["pgscan_anon"] == a["pgscan_anon"] == a["pgscan_direct"]
    assert vs["pgsteal_anon"] == a["pgsteal_anon"] == a["pgsteal_direct"] > 0
    assert vs["pgscan_file"] == vs["pgsteal_file"] == 0
    h = w.summary(0.0)["host"]
    assert h["direct_scanned"] == h["kswapd_scanned"] == 0
    assert h["scanned"] == vs["pgscan_anon"]


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
    """``lru_gen_rotate_memcg`` by hand: three memcgs in generation 0, each at the tail of a
    random bin. TAIL keeps the generation and marks the segment; YOUNG moves to generation
    seq + 1 and clears it; each rotation draws a new bin; when the current generation
    empties, seq advances."""
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
    bins = list(pol.bin)
    pol.lru_gen_rotate_memcg(1, MEMCG_LRU_TAIL)
    assert (pol.gen[1], pol.seg[1], pol.fifo[0][pol.bin[1]][-1]) == (0, MEMCG_LRU_TAIL, 1)
    assert 1 not in pol.fifo[0][bins[1]] or pol.bin[1] == bins[1]
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


def test_swap_full_is_half_of_swap_max_per_memcg() -> None:
    """``mem_cgroup_swap_full``: a memcg holding at least half its memory.swap.max (4 MiB =
    1,024 slots: 512 is full, 511 is not) gives slots back on swap-in; an unlimited one
    never does by itself (the node-wide half-full test is separate)."""
    w = _world({"max_mib": 8, "swap_max_mib": 4})
    cg = w.memcg
    assert cg is not None
    owners = np.array([0, 1])
    cg.swap_usage[:] = [511, 10**6]
    assert cg.swap_full(owners).tolist() == [False, False]
    cg.swap_usage[:] = [512, 0]
    assert cg.swap_full(owners).tolist() == [True, False]


def test_swapped_in_pages_give_their_slots_back_under_swap_max() -> None:
    """memory.max 16 MiB plus swap.max 16 MiB hold the VM's 32 MiB, but only if pages faulted
    back leave their slots once the memcg's swap is half used (``mem_cgroup_swap_full``);
    keeping them, the slots fill with pages already back in RAM, add_to_swap fails and the
    memcg OOM kills the VM (it did, 1 s in, before this rule was modelled)."""
    w = _world({"max_mib": 16, "swap_max_mib": 16}, dur=1.0)
    run_checked(w)
    a = w.summary(0.0)["vms"][0]
    assert not a["oom_killed"]
    assert a["memcg"]["events"]["swap_max"] == 0
    assert a["faults"]["major"] > 5000
    assert 2048 <= a["memcg"]["swap_current_pages"] <= 16 * 256


# -- MGLRU's memcg LRU: shrink_one's branches, shrink_many, limit reclaim, min_ttl ---------------
class _Host:
    """The few host calls the memcg LRU makes: swap room, the watermarks, the clock."""

    def __init__(self, swap: bool = True) -> None:
        self.swap = swap

    def can_swap(self) -> bool:
        return self.swap

    def nr_swap_pages(self) -> int:
        return 1 << 20 if self.swap else 0

    def free_and_high(self) -> tuple[int, int]:
        return 0, 100  # far below high: kswapd never aborts for the watermark

    def now(self) -> int:
        return 10**12


def _lru(nr: int, low: list[int], mn: list[int], resident: list[int]) -> MemcgMglru:
    """A memcg LRU over ``len(low)`` memcgs with the given memory.low / memory.min and
    memory.current (pages); each lruvec's shrink is replaced by ``_fake_shrink``."""
    n = len(low)
    mem = HostMemory(nr, nr, setup_per_zone_wmarks(nr), [nr // n * i for i in range(n)])
    big = [1 << 40] * n
    lim = MemcgLimits(max=big, high=big, low=low, min=mn, swap_max=big)
    pol = MemcgMglru(
        MglruConfig(min_ttl_ms=1000),
        nr,
        new_vmstat(n),
        np.random.default_rng(0),
        mem=mem,
        limits=lim,
        swap_usage=lambda i: 0,
    )
    mem.nr_resident[:] = resident
    return pol


def _fake_shrink(pol: MemcgMglru, memcg: int, aged: bool, freed: int, log: list[int]) -> None:
    """The lruvec's reclaim: frees ``freed``, and says whether it aged."""
    lv = pol.lruvecs[memcg]

    def shrink_node(sc: ScanControl, reclaim: Any) -> Any:
        log.append(memcg)
        sc.nr_reclaimed += freed
        lv.should_rotate = aged
        yield

    lv.shrink_node = shrink_node  # type: ignore[method-assign]


def test_shrink_one_follows_the_kernels_branches() -> None:
    """``shrink_one`` by hand, at priority 12 (a lruvec is sizable from 4096 folios on):
    below memory.min -> YOUNG, not shrunk; below memory.low -> TAIL the first time (no
    event), then shrunk with ``memory.events low``; aged -> YOUNG; not aged and sizable ->
    stay (0); too small -> TAIL, and YOUNG once it already is at the tail; with swap full no
    folio is evictable, so even a big lruvec is too small (``lruvec_is_sizable``)."""
    pol = _lru(64, low=[0, 100, 0], mn=[100, 0, 0], resident=[80, 80, 500])
    log: list[int] = []
    host = _Host()
    sc = ScanControl(nr_to_reclaim=32, priority=12, direct=True)
    _fake_shrink(pol, 0, aged=True, freed=0, log=log)
    assert drive(pol._shrink_one(0, sc, host)) == MEMCG_LRU_YOUNG  # below min
    _fake_shrink(pol, 1, aged=False, freed=3, log=log)
    pol.lruvecs[1].nr_pages[0] = 8192
    assert drive(pol._shrink_one(1, sc, host)) == MEMCG_LRU_TAIL  # below low, first visit
    assert log == []
    assert pol.vmstat["memcg_low"] == 0
    pol.lru_gen_rotate_memcg(1, MEMCG_LRU_TAIL)
    assert drive(pol._shrink_one(1, sc, host)) == 0  # reclaimed; sizable, not aged: stays
    assert log == [1]
    assert sc.nr_reclaimed == 3
    assert pol.vmstat["memcg_low"] == 1
    assert pol.seg[1] == MEMCG_LRU_TAIL  # no rotation: the next visit reclaims it again
    _fake_shrink(pol, 2, aged=True, freed=0, log=log)
    assert drive(pol._shrink_one(2, sc, host)) == MEMCG_LRU_YOUNG  # aged
    _fake_shrink(pol, 2, aged=False, freed=0, log=log)
    pol.lruvecs[2].nr_pages[0] = 4095  # 4095 >> 12 == 0: too small
    assert drive(pol._shrink_one(2, sc, host)) == MEMCG_LRU_TAIL
    pol.lru_gen_rotate_memcg(2, MEMCG_LRU_TAIL)
    assert drive(pol._shrink_one(2, sc, host)) == MEMCG_LRU_YOUNG  # the one retry is spent
    pol.lru_gen_rotate_memcg(2, MEMCG_LRU_YOUNG)
    pol.lruvecs[2].nr_pages[0] = 8192  # 8192 >> 12 == 2: sizable with swap ...
    assert drive(pol._shrink_one(2, sc, host)) == 0
    assert drive(pol._shrink_one(2, sc, _Host(swap=False))) == MEMCG_LRU_TAIL  # ... not without


def test_shrink_many_walks_the_generation_it_started_in() -> None:
    """Three memcgs age and go young one after the other; the old generation empties and
    ``seq`` advances in the middle of the call, but ``shrink_many`` keeps to the bins of the
    generation it read at the start, so each memcg is shrunk once."""
    pol = _lru(64, low=[0, 0, 0], mn=[0, 0, 0], resident=[500, 500, 500])
    log: list[int] = []
    for i in range(3):
        _fake_shrink(pol, i, aged=True, freed=1, log=log)
    sc = ScanControl(nr_to_reclaim=32, priority=11, direct=True)
    drive(pol._shrink_many(sc, _Host()))
    assert sorted(log) == [0, 1, 2]
    assert sc.nr_reclaimed == 3
    assert (pol.seq, pol.gen, pol.nr_memcgs) == (1, [1, 1, 1], [0, 3, 0])
    pol.check(np.zeros(64, dtype=np.bool_))


def test_memory_low_under_mglru_defers_once_per_aging() -> None:
    """A memcg below memory.low: its first visit moves it to the tail (no reclaim), every
    later one reclaims it (``memory.events low`` each time) while it does not age; once it
    ages (YOUNG clears the tail mark) the next visit defers it again. Visits are driven one
    by one here, as ``shrink_many`` makes them."""
    pol = _lru(64, low=[100], mn=[0], resident=[80])
    pol.lruvecs[0].nr_pages[0] = 8192
    log: list[int] = []
    sc = ScanControl(nr_to_reclaim=32, priority=11, direct=True)
    ops = []
    for aged in (False, False, False, True, False):
        _fake_shrink(pol, 0, aged=aged, freed=1, log=log)
        op = drive(pol._shrink_one(0, sc, _Host()))
        ops.append(op)
        if op:
            pol.lru_gen_rotate_memcg(0, op)
    assert ops == [MEMCG_LRU_TAIL, 0, 0, MEMCG_LRU_YOUNG, MEMCG_LRU_TAIL]
    assert log == [0, 0, 0]
    assert pol.vmstat["memcg_low"] == 3


def test_mglru_limit_reclaim_does_not_abort_and_makes_an_aged_memcg_young() -> None:
    """Limit reclaim: ``should_abort_scan`` is false whatever was reclaimed (the kernel does
    not abort memcg reclaim, for fairness), true for root reclaim that has its target; a
    lruvec that aged moves its memcg to the young generation (``lru_gen_shrink_lruvec``)."""
    pol = _lru(64, low=[0, 0], mn=[0, 0], resident=[10, 10])
    lv = pol.lruvecs[1]
    done = ScanControl(nr_to_reclaim=32, nr_reclaimed=32, direct=True)
    assert lv._should_abort_scan(done, _Host())
    done.target_memcg = 1
    assert not lv._should_abort_scan(done, _Host())
    log: list[int] = []
    _fake_shrink(pol, 1, aged=True, freed=5, log=log)
    sc = ScanControl(nr_to_reclaim=32, direct=True, target_memcg=1)
    drive(pol.shrink_node(sc, _Host()))
    assert log == [1]
    assert (pol.gen, pol.nr_memcgs) == ([0, 1], [1, 1, 0])


def test_min_ttl_counts_a_memcg_below_min_as_not_reclaimable() -> None:
    """``lru_gen_age_node`` with min_ttl: memcg 0 is big and its oldest generation is old, but
    it is below memory.min (``lruvec_is_reclaimable`` is false); memcg 1 is too small; so no
    memcg is reclaimable and the OOM check fires. Without memory.min, memcg 0 would do."""
    for mn, oom in ((100, 1), (0, 0)):
        pol = _lru(64, low=[0, 0], mn=[mn, 0], resident=[80, 10])
        pol.lruvecs[0].nr_pages[0] = 8192
        sc = ScanControl(nr_to_reclaim=32, priority=12)
        drive(pol.age_node(sc, _Host()))
        assert pol.vmstat["mglru_min_ttl_oom"] == oom


def test_shrink_many_restarts_when_another_reclaimer_rotated_the_next_memcg() -> None:
    """Five VMs under mglru, a memcg with memory.min, two prefaulted groups: while one
    reclaimer shrinks a memcg, another rotates the next one in the bin out of it; the walk
    starts the bin again (as the kernel's ``shrink_many`` restarts) instead of losing its
    place. Found by the random worlds once they drew prefault."""
    phases = {
        "type": "phases",
        "phases": [
            {"duration_s": 0.005, "workload": {"type": "scan"}},
            {
                "duration_s": 0.01,
                "workload": {"type": "zipf", "alpha": 1.2},
                "offset_mib": 1,
                "working_set_mib": 1,
            },
        ],
    }
    vm = {"count": 2, "memory_mib": 6, "vcpus": 1, "access_rate_per_s": 1312678}
    raw = {
        "name": "race",
        "seed": 10475,
        "duration_s": 0.06,
        "host": {"memory_mib": 12},
        "reclaim": {"policy": "mglru"},
        "swap": {
            "size_mib": 4,
            "latency_cv": 0.0,
            "queue_depth": 1,
            "page_cluster": 0,
            "device": "zram",
        },
        "kvm": {"mmu_notifiers": False, "ept_ad_bits": False},
        "vms": [
            {"name": "p0", **vm, "workload": phases},
            {"name": "p1", **vm, "write_ratio": 0.795082525, "workload": phases, "prefault": True},
            {
                "name": "p2",
                "memory_mib": 5,
                "vcpus": 3,
                "access_rate_per_s": 1067289,
                "write_ratio": 0.220868738,
                "workload": {"type": "zipf", "alpha": 1.872762311},
                "memcg": {"min_mib": 3},
                "prefault": True,
            },
        ],
        "engine": {"batch_accesses": 1},
    }
    w = World(parse_scenario(raw))
    assert run_checked(w) >= 10


# -- MGLRU's proportional protection (6.16+: get_nr_to_scan -> apply_proportional_protection) ----
def _budget(pol: MemcgMglru, sc: ScanControl) -> int:
    """``get_nr_to_scan`` of memcg 0's lruvec: 1000 evictable folios in four generations, so
    no aging is due and the budget is the scaled size >> priority."""
    lv = pol.lruvecs[0]
    lv.max_seq = 3
    lv.nr_pages[:] = [1000, 0, 0, 0]
    return int(drive(lv._get_nr_to_scan(sc, _Host(), 60)))


def test_mglru_budget_is_scaled_by_protection() -> None:
    """1000 evictable folios at priority 2 (unscaled: 1000 >> 2 = 250). memory.low 300,
    usage 400: 1000 - 1000 * 300 // 401 = 1000 - 748 = 252, >> 2 = 63, and
    ``memcg_low_skipped`` is set. The retry (``memcg_low_reclaim``) scales by memory.min, 0
    here: 250, flag left alone. memory.min 100 in the retry: 1000 - 100000 // 401 = 751, >> 2
    = 187. Usage 250 below low 300: the size counts as 300, 1000 - 1000 * 300 // 301 = 4, at
    least SWAP_CLUSTER_MAX: 32 >> 2 = 8. Limit reclaim of the memcg itself: no protection,
    250. Below memory.min (usage 400, min 500): -1, not scanned (rotated young)."""
    pol = _lru(64, low=[300], mn=[0], resident=[400])
    sc = ScanControl(nr_to_reclaim=32, priority=2, direct=True)
    assert (_budget(pol, sc), sc.memcg_low_skipped) == (63, True)
    sc = ScanControl(nr_to_reclaim=32, priority=2, direct=True, memcg_low_reclaim=True)
    assert (_budget(pol, sc), sc.memcg_low_skipped) == (250, False)
    pol.limits.min[0] = 100
    assert _budget(pol, sc) == 187
    pol.limits.min[0] = 0
    pol.mem.nr_resident[0] = 250
    sc = ScanControl(nr_to_reclaim=32, priority=2, direct=True)
    assert (_budget(pol, sc), sc.memcg_low_skipped) == (8, True)
    sc = ScanControl(nr_to_reclaim=32, priority=2, direct=True, target_memcg=0)
    assert (_budget(pol, sc), sc.memcg_low_skipped) == (250, False)
    pol.limits.min[0], pol.mem.nr_resident[0] = 500, 400
    sc = ScanControl(nr_to_reclaim=32, priority=2, direct=True)
    assert _budget(pol, sc) == -1
    plain = pol.lruvecs[0]
    plain.protection = None  # the node's one lruvec without memcgs: never scaled
    assert (_budget(pol, sc), sc.memcg_low_skipped) == (250, False)


def test_mglru_root_reclaim_sets_memcg_low_skipped_and_the_retry_lifts_it() -> None:
    """Root reclaim through the memcg LRU (``shrink_many`` -> ``shrink_one`` ->
    ``try_to_shrink_lruvec``), memcg 0 above its memory.low (usage 400, low 300) so
    ``shrink_one`` does not defer it, eviction stubbed to reclaim nothing: the first pass at
    priority 2 asks to evict 63 and leaves ``memcg_low_skipped`` set with nothing reclaimed,
    which is ``do_try_to_free_pages``' condition for its retry; the retry
    (``memcg_low_reclaim``) asks for the unscaled 250 and sets no flag."""
    pol = _lru(64, low=[300], mn=[0], resident=[400])
    lv = pol.lruvecs[0]
    lv.max_seq = 3
    lv.nr_pages[:] = [1000, 0, 0, 0]
    asked: list[int] = []

    def evict(nr_to_scan: int, sc: ScanControl, reclaim: Any, swappiness: int) -> int:
        asked.append(nr_to_scan)
        return nr_to_scan  # met that many, reclaimed none

    lv._evict_folios = evict  # type: ignore[method-assign]
    sc = ScanControl(nr_to_reclaim=32, priority=2, direct=True)
    drive(pol.shrink_node(sc, _Host()))
    assert (asked, sc.nr_reclaimed, sc.memcg_low_skipped) == ([63], 0, True)
    sc.memcg_low_reclaim, sc.memcg_low_skipped = True, False  # do_try_to_free_pages' retry
    drive(pol.shrink_node(sc, _Host()))
    assert (asked, sc.memcg_low_skipped) == ([63, 250], False)


def test_mglru_direct_reclaim_retries_with_memory_low_lifted() -> None:
    """configs/noisy_neighbour.yaml under mglru for 1.5 s: ``steady`` (below its memory.low
    throughout) loses pages to kswapd only at the scaled budget of its first passes, never
    in a retry (kswapd has none), and to direct reclaim also in the ``memcg_low_reclaim``
    retry that ``memcg_low_skipped`` gives it."""
    from pathlib import Path

    from sim.config import load_scenario

    sc_ = load_scenario(
        Path("configs/noisy_neighbour.yaml"), ["reclaim.policy=mglru", "duration_s=1.5"], 7
    )
    w = World(sc_)
    lv = w.policy.lruvecs[0]  # type: ignore[attr-defined]
    evict = lv._evict_folios
    taken: dict[tuple[bool, bool], int] = {}

    def counted(nr: int, sc: ScanControl, reclaim: Any, swappiness: int) -> int:
        before = sc.nr_reclaimed
        out = evict(nr, sc, reclaim, swappiness)
        key = (sc.direct, sc.memcg_low_reclaim)
        taken[key] = taken.get(key, 0) + sc.nr_reclaimed - before
        return int(out)

    lv._evict_folios = counted
    w.run()
    assert taken.get((False, True), 0) == 0
    assert taken[(True, True)] > 0
    assert taken[(False, False)] > 0


def test_mglru_counts_refaults_in_each_memcgs_memory_stat() -> None:
    """Under MGLRU with memcgs (no page cache) every lruvec counts its workingset refaults in
    its memcg's memory.stat, and the VMs' breakdowns add up to the host's count."""
    sc = _world({"max_mib": 8}).sc
    w = World(sc.model_copy(update={"reclaim": MglruConfig()}))
    run_checked(w)
    s = w.summary(0.0)
    per_vm = [vm["vmstat"].get("workingset_refault_anon", 0) for vm in s["vms"]]
    assert per_vm[0] > 0
    assert sum(per_vm) == s["host"]["vmstat"]["workingset_refault_anon"]
