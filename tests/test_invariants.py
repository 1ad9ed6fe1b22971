"""Invariants hold at every point of random scenarios (hypothesis).

Checked every simulated millisecond by ``World.check``: frames are conserved; the pages that own
a frame (mapped, under write-out or read-in) are exactly the frames' owners, each with one pfn
pointing back at it; a page without a frame holds its shadow if in swap, else no entry; sptes
exist only over resident pages; KVM's rmap agrees with the sptes; every policy's lists hold
exactly the mapped folios; the swap slots in use are the pages flagged as in swap; per-VM
counters match the arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import parse_scenario
from sim.engine import World
from tests.conftest import run_checked

workloads = st.one_of(
    st.just({"type": "uniform"}),
    st.builds(lambda a: {"type": "zipf", "alpha": a}, st.floats(0.3, 2.0)),
    st.builds(
        lambda h, a: {"type": "hotcold", "hot_fraction": h, "hot_access_fraction": a},
        st.floats(0.05, 0.9),
        st.floats(0.0, 1.0),
    ),
    st.just({"type": "scan"}),
    st.just(
        {
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
    ),
)

vm_profiles = st.builds(
    lambda i, count, mem, vcpus, rate, wr, wl: {
        "name": f"p{i}",
        "count": count,
        "memory_mib": mem,
        "vcpus": vcpus,
        "access_rate_per_s": rate,
        "write_ratio": wr,
        "workload": wl,
    },
    st.integers(0, 10**6),
    st.integers(1, 2),
    st.integers(2, 10),
    st.integers(1, 3),
    st.integers(100_000, 4_000_000),
    st.floats(0.0, 1.0),
    workloads,
)


POLICIES = ["two_list", "mglru", "clock", "fifo", "lru", "random"]


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """Random small worlds (4 KiB pages; THP worlds: :func:`thp_scenarios`)."""
    profiles = draw(st.lists(vm_profiles, min_size=1, max_size=3))
    for i, p in enumerate(profiles):
        p["name"] = f"p{i}"
    host = {"memory_mib": draw(st.integers(2, 12))}
    device = draw(st.sampled_from(["disk", "zram"]))
    policy = draw(st.sampled_from(POLICIES))
    extra: dict[str, Any] = {}
    if policy in ("two_list", "mglru") and draw(st.booleans()):  # a host page cache
        extra["host_files"] = {
            "size_mib": draw(st.integers(1, 8)),
            "access_rate_per_s": draw(st.sampled_from([10_000, 1_000_000])),
            "read_latency_us": draw(st.sampled_from([1, 100])),
            "workload": draw(st.sampled_from([{"type": "uniform"}, {"type": "zipf"}])),
            "write_ratio": draw(st.sampled_from([0.0, 0.3, 1.0])),
            "dirty_writeback_ms": draw(st.sampled_from([1, 5, 5000])),
            "dirty_expire_ms": draw(st.sampled_from([0, 2])),
            "writeback_mib_per_s": draw(st.sampled_from([10, 1000])),
        }
        # vm.dirty_ratio / dirty_background_ratio: defaults, tight (the writer throttled, the
        # flusher in the background), the background one above the limit (halved), and loose
        # (dirty data left for reclaim: the flusher woken, kswapd's own writes)
        ratio, bg = draw(st.sampled_from([(20, 10), (2, 1), (10, 50), (100, 99)]))
        host.update(dirty_ratio=ratio, dirty_background_ratio=bg)
        if draw(st.booleans()):  # a second file, its own reader (the list form)
            second = {"size_mib": 1, "workload": {"type": "uniform"}}
            extra["host_files"] = [extra["host_files"], second]
        extra["reclaim"] = {"policy": policy, "swappiness": draw(st.sampled_from([0, 60, 200]))}
    return extra | {
        "name": "prop",
        "seed": draw(st.integers(0, 2**32)),
        "duration_s": draw(st.sampled_from([0.01, 0.03, 0.06])),
        "host": host,
        "reclaim": extra.get("reclaim", {"policy": policy}),
        "swap": {
            "size_mib": draw(st.sampled_from([0, 1, 4, 64])),
            "queue_depth": draw(st.integers(1, 8)),
            "latency_cv": draw(st.sampled_from([0.0, 0.5])),
            "page_cluster": draw(st.sampled_from([0, 1, 3])),
            "device": device,
            "zswap": {
                "enabled": device == "disk" and draw(st.booleans()),
                "max_pool_percent": draw(st.sampled_from([1, 5, 20])),
            },
        },
        "kvm": {
            "mmu_notifiers": draw(st.booleans()),
            "ept_ad_bits": draw(st.booleans()),
            "mmu": draw(st.sampled_from(["tdp", "legacy_tdp", "shadow"])),
            "shadow_sptes_per_gfn": draw(st.integers(1, 3)),
            "flush_on_age": draw(st.booleans()),
        },
        "vms": profiles,
        "engine": {"batch_accesses": draw(st.sampled_from([1, 7, 64, 512]))},
    }


@pytest.mark.parametrize("device", ["disk", "zram"])
def test_invariants_hold_throughout_random_scenarios(device: str) -> None:
    """13 random worlds per swap device (a test each, so xdist's workers share them)."""

    @settings(max_examples=13)
    @given(scenarios().filter(lambda raw: raw["swap"]["device"] == device))
    def check(raw: dict[str, Any]) -> None:
        _check_random_world(raw)

    check()


@st.composite
def thp_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """Random small worlds with THP-backed guest RAM (host.thp, or its shorthand
    host.page_size_kib: 2048): two-list watermark reclaim, guests of whole 2 MiB blocks,
    sometimes a host page cache beside them and async page faults, swap with or without
    THP_SWAP, sometimes too little swap for a free cluster (the split
    fallback), sometimes zswap in front of a disk, sometimes a memcg per VM whose limits make
    THP charges fall back, limit reclaim swap THPs out or split them, and memory.swap.max
    refuse a THP's 512 slots. Every check holds each LRU list's size (in pages) equal to
    ``folio_nr_pages`` summed over its entries (``TwoList.check``), on the node's lruvec and
    on every memcg's."""
    raw = draw(scenarios())
    if draw(st.integers(0, 2)):  # else the host page cache drawn: file pages beside THPs
        raw.pop("host_files", None)
    for p in raw["vms"]:
        p["memory_mib"] *= 2
        if draw(st.integers(0, 3)) == 0:  # async page faults on the blocks' 4 KiB swap-ins
            p["async_pf"] = draw(st.sampled_from([0.5, 1.0]))
    raw["host"] = {"memory_mib": draw(st.integers(6, 24))}
    raw["host"]["thp"] = {"swap": draw(st.booleans())}
    if draw(st.booleans()):  # khugepaged awake every simulated millisecond
        raw["host"]["thp"]["khugepaged"] = {
            "scan_sleep_ms": 1,
            "alloc_sleep_ms": 1,
            "max_ptes_swap": 511,
        }
    if raw["host"]["thp"] == {"swap": True} and draw(st.booleans()):  # the same, as shorthand
        raw["host"] = {"memory_mib": raw["host"]["memory_mib"], "page_size_kib": 2048}
    raw["reclaim"] = {"policy": "two_list"}
    raw["swap"]["zswap"] = {  # behind zswap a THP is stored whole or written whole
        "enabled": raw["swap"]["device"] == "disk" and draw(st.booleans()),
        "max_pool_percent": draw(st.sampled_from([1, 5, 20])),
    }
    raw["swap"]["size_mib"] = draw(st.sampled_from([0, 1, 3, 64]))
    raw["swap"]["rotational"] = raw["swap"]["device"] == "disk" and draw(st.booleans())
    raw["kvm"]["mmu"] = draw(st.sampled_from(["tdp", "legacy_tdp"]))
    for p in raw["vms"]:
        if draw(st.booleans()):  # touch every block, then keep to a few: cold THPs to reclaim
            p["workload"] = {
                "type": "phases",
                "phases": [
                    {"duration_s": 0.005, "workload": {"type": "scan"}},
                    {"duration_s": 0.1, "workload": {"type": "zipf"}, "working_set_mib": 2},
                ],
            }
    if draw(st.booleans()):  # libvirt's layout: a memcg per VM, its limits tight enough to bite
        for p in raw["vms"]:
            memcg: dict[str, int] = {"max_mib": draw(st.integers(1, p["memory_mib"]))}
            if draw(st.booleans()):
                memcg["high_mib"] = draw(st.integers(1, p["memory_mib"]))
            if draw(st.booleans()):
                memcg["swap_max_mib"] = draw(st.sampled_from([0, 1, 2, 8]))
            p["memcg"] = memcg
        raw["host"]["memcg_stats"] = draw(st.sampled_from(["exact", "lazy"]))
    return raw


@st.composite
def thp_balloon_scenarios(draw: st.DrawFn, reporting: bool) -> dict[str, Any]:
    """:func:`thp_scenarios` whose first VM runs a guest kernel with a balloon inflating from
    the start (partial unmaps of its THPs: the deferred split queue), with or without free
    page reporting (whole-THP discards), sometimes with deflate-on-OOM (guest touches of
    inflated pages)."""
    raw = draw(thp_scenarios())
    p = raw["vms"][0]
    mib = p["memory_mib"]
    p["guest"] = {"footprint_mib": draw(st.integers(2, mib))}  # a phase has 2 MiB
    p["balloon"] = {
        "enabled": True,
        "initial_target_mib": draw(st.integers(1, mib - 1)),
        "deflate_on_oom": draw(st.booleans()),
        "free_page_reporting": {"enabled": reporting},
    }
    raw["duration_s"] = draw(st.sampled_from([0.03, 0.1]))
    return raw


@settings(max_examples=20)
@given(thp_scenarios())
def test_invariants_hold_with_thp(raw: dict[str, Any]) -> None:
    _check_random_world(raw)


@pytest.mark.parametrize("reporting", [False, True], ids=["balloon", "reporting"])
def test_invariants_hold_with_thp_and_a_ballooned_guest_kernel(reporting: bool) -> None:
    """4 random worlds without free page reporting and 4 with it (a test each, so xdist's
    workers share them: 8 worlds in one test were the suite's longest)."""

    @settings(max_examples=4, deadline=None)
    @given(thp_balloon_scenarios(reporting))
    def check(raw: dict[str, Any]) -> None:
        _check_random_world(raw)

    check()


def _check_random_world(raw: dict[str, Any]) -> None:
    w = World(parse_scenario(raw))
    assert run_checked(w) >= 10
    s = w.summary(0.0)
    for v in s["vms"]:
        assert v["stall_ns"] >= 0
        assert v["accesses"] >= 0
    h = s["host"]
    assert h["kswapd_reclaimed"] <= h["kswapd_scanned"]  # pgsteal <= pgscan, per path
    assert h["direct_reclaimed"] <= h["direct_scanned"]
    assert h["swap"]["used_end"] <= h["swap"]["slots"]
    assert h["pswpin"] <= h["pswpout"]


def test_free_frames_come_back_in_the_order_of_a_full_stack() -> None:
    """The free stack keeps never-used frames implicit; allocation order must equal that of a
    stack holding every frame (lowest first, then the most recently freed)."""
    from sim.host.memory import HostMemory, setup_per_zone_wmarks

    n = 64
    mem = HostMemory(n, 2 * n, setup_per_zone_wmarks(n), [0])
    ref = list(range(n - 1, -1, -1))  # the old explicit stack, top at the end
    rng = np.random.default_rng(0)
    owned: list[int] = []
    pid = 0
    for _ in range(400):
        if owned and (mem.nr_free == 0 or rng.random() < 0.45):
            k = int(rng.integers(1, min(len(owned), 5) + 1))
            pick = [owned.pop(int(rng.integers(len(owned)))) for _ in range(k)]
            if k == 1:
                mem.free_frame(pick[0])
            else:
                mem.free_frames(np.array(pick, dtype=np.int64))
            ref.extend(pick)
        else:
            pfn = mem.alloc_frame(pid % (2 * n))
            assert pfn == ref.pop()
            owned.append(pfn)
            pid += 1
        assert mem.nr_free == len(ref)
        assert sorted(mem.free_list().tolist()) == sorted(ref)
