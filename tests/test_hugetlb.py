"""hugetlbfs-backed guests (sim/host/hugetlb.py) beside anonymous ones.

The pool's frames leave the buddy allocator at build and never come back; its pages are on
no LRU list, so reclaim never scans, ages, zaps or swaps them and their vCPUs never fault or
stall on the host, however hard the anonymous guests swap; the watermarks stay those of the
whole host (``__setup_per_zone_wmarks`` over managed pages) while free memory is lower by the
pool; a hugetlbfs VM's memcg charges only its VMM overhead.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import fast
from sim.cli import summary_table
from sim.config import parse_scenario
from sim.engine import World
from sim.errors import ConfigError
from sim.host.memory import PG_RESIDENT, PG_SWAP, PTE_PRESENT, PTE_YOUNG
from sim.host.vmstat import VmStat
from sim.kvm import spte as sp
from sim.scale import scale_scenario
from tests.conftest import run_checked
from tests.test_fastpaths import check_world
from tests.test_invariants import scenarios

HUGE = 2  # the hugetlbfs VM's index in RAW's worlds
# khugepaged awake every simulated millisecond, collapsing blocks with swapped pages too
FAST_KHUGEPAGED = {"scan_sleep_ms": 1, "alloc_sleep_ms": 1, "max_ptes_swap": 511}

RAW: dict[str, Any] = {
    "name": "hugetlb",
    "seed": 3,
    "duration_s": 0.08,
    "host": {"memory_mib": 16},
    "reclaim": {"policy": "two_list"},
    "swap": {"size_mib": 64, "latency_cv": 0.0},
    "vms": [
        {
            "name": "anon",
            "count": 2,
            "memory_mib": 8,
            "vcpus": 2,
            "access_rate_per_s": 2_000_000,
            "workload": {"type": "zipf", "alpha": 0.9},
        },
        {
            "name": "huge",
            "memory_mib": 6,
            "vcpus": 2,
            "access_rate_per_s": 2_000_000,
            "write_ratio": 0.5,
            "workload": {"type": "uniform"},
            "memory_backing": "hugetlbfs",
        },
    ],
    "engine": {"batch_accesses": 64, "sample_interval_ms": 1.0},
}


def raw(**changes: Any) -> dict[str, Any]:
    """RAW with top-level sections replaced and ``huge__<key>`` set on the hugetlbfs VM."""
    out = copy.deepcopy(RAW)
    for key, value in changes.items():
        if key.startswith("huge__"):
            out["vms"][1][key[6:]] = value
        else:
            out[key] = value
    return out


def world(**changes: Any) -> World:
    return World(parse_scenario(raw(**changes)))


def _pids(w: World) -> slice:
    mm = w.vms[HUGE].mm
    return slice(mm.pid_base, mm.pid_base + mm.nr_pages)


def test_the_pool_takes_its_frames_at_build_and_never_frees_them() -> None:
    w = world()
    n = w.vms[HUGE].mm.nr_pages
    assert n == 6 << 8
    pids = _pids(w)
    assert w.mem.nr_free == w.nr_frames - n, "the pool's pages are not free memory"
    assert (w.mem.flags[pids] == PTE_PRESENT | PTE_YOUNG | PG_RESIDENT).all()
    assert int(w.mem.nr_resident[HUGE]) == n
    assert sp.is_present(w.vms[HUGE].mmu.spte).all(), "KVM maps it all from the start"
    pfns = w.mem.pfn[pids].copy()
    assert (w.mem.frame_pid[pfns] == np.arange(pids.start, pids.stop)).all()
    run_checked(w)
    assert w.vmstat[VmStat.PSWPOUT] > 0, "the anonymous guests swap"
    assert (w.mem.pfn[pids] == pfns).all(), "a pool frame changed"
    assert (w.mem.frame_pid[pfns] == np.arange(pids.start, pids.stop)).all()
    assert int(w.mem.nr_resident[HUGE]) == n


@pytest.mark.parametrize("policy", ["two_list", "mglru"])
def test_reclaim_never_reaches_the_pool_while_the_others_swap_hard(policy: str) -> None:
    w = world(reclaim={"policy": policy})
    run_checked(w)  # each check: the policy tracks exactly the resident folios but the pool's
    vs = w.vmstat
    assert vs[VmStat.PSWPOUT] > 1000
    assert vs[VmStat.PGSCAN_ANON] > 0
    mine = vs.mm_stat(HUGE)
    assert not any(mine.values()), {k: v for k, v in mine.items() if v}
    assert not any(vs.notifier_calls(HUGE).values()), "a notifier call reached the pool"
    assert w.vms[HUGE].mmu.zapped == 0
    assert w.vms[HUGE].mmu.pf_fixed == 0
    assert sp.is_present(w.vms[HUGE].mmu.spte).all()
    assert not (w.mem.flags[_pids(w)] & PG_SWAP).any()
    assert np.isin(w.mem.pfn[_pids(w)], w.vmscan.pte_pfns(w.vmscan.walk_mm())).sum() == 0
    st = w.vms[HUGE].stats
    assert not any(st.faults.values())
    assert st.refaults == 0
    assert st.stall_ns == 0
    assert w.stall_ns(w.vms[HUGE], int(w.env.now)) == 0
    assert st.accesses > 0
    anon = w.vms[0].stats
    assert anon.faults["major"] > 0
    assert anon.stall_ns > 0


def test_watermarks_are_the_whole_hosts_and_free_memory_excludes_the_pool() -> None:
    w = world()
    anon = World(parse_scenario(raw(huge__memory_backing="anonymous")))
    assert w.mem.wmark == anon.mem.wmark, "managed pages include the pool"
    assert w.mem.nr_free == anon.mem.nr_free - w.vms[HUGE].mm.nr_pages
    run_checked(w)
    assert (
        w.mem.nr_free
        + int(w.mem.nr_resident[:HUGE].sum())
        + int(w.mem.nr_resident[HUGE])
        + w.mem.nr_pool
        == w.nr_frames
    )
    s = w.summary(0.0)
    assert s["host"]["hugetlb"] == {
        "pool_pages": 6 << 8,
        "hstates": [{"hugepage_size_kib": 2048, "HugePages_Total": 3, "HugePages_Free": 0}],
    }
    assert s["vms"][HUGE]["memory_backing"] == "hugetlbfs"
    assert s["vms"][HUGE]["hugepage_size_kib"] == 2048
    assert "memory_backing" not in s["vms"][0]
    assert "hugetlb" not in anon.summary(0.0)["host"]


@pytest.mark.parametrize("policy", ["two_list", "mglru"])
def test_a_hugetlbfs_memcg_charges_only_the_vmm_overhead(policy: str) -> None:
    memcg = {"max_mib": 1, "vmm_overhead_kib": 512}
    r = raw(huge__memcg=memcg, reclaim={"policy": policy})
    r["vms"][0]["memcg"] = {"max_mib": 4}
    w = World(parse_scenario(r))
    assert w.memcg is not None
    assert w.memcg.usage(HUGE) == 128, "memory.current: the overhead alone"
    run_checked(w)
    assert not w.vms[HUGE].mm.dead, "memory.max below its RAM reclaims and kills nothing"
    assert w.memcg.usage(HUGE) == 128
    stat = w.summary(0.0)["vms"][HUGE]["memcg"]
    assert stat["current_pages"] == 128
    assert not any(stat["events"].values())
    assert w.memcg.usage(0) <= 4 << 8, "the anonymous memcg is held to its max"


def test_the_oom_killer_never_chooses_the_hugetlbfs_vm() -> None:
    w = world(swap={"size_mib": 0})
    run_checked(w)
    assert w.oom_kills, "no swap: the anonymous guests run out of memory"
    assert all(name != "huge" for _, name in w.oom_kills)
    assert not w.vms[HUGE].mm.dead


def test_1gib_pages_and_the_pool_summary() -> None:
    r = raw(host={"memory_mib": 2048 + 64}, huge__memory_mib=2048, huge__hugepage_size_kib=1048576)
    r["duration_s"] = 0.01
    w = World(parse_scenario(r))
    run_checked(w)
    assert w.summary(0.0)["host"]["hugetlb"]["hstates"] == [
        {"hugepage_size_kib": 1048576, "HugePages_Total": 2, "HugePages_Free": 0}
    ]


def test_same_config_same_results() -> None:
    a, b = world(), world()
    a.run()
    b.run()
    sa, sb = a.summary(0.0), b.summary(0.0)
    assert sa == sb
    assert (a.mem.flags == b.mem.flags).all()
    assert (a.spte == b.spte).all()


@pytest.mark.parametrize("policy", ["two_list", "mglru"])
def test_fast_paths_equal_the_general_path(policy: str) -> None:
    taken, _ = check_world(raw(reclaim={"policy": policy}), tuple(fast.registered()))
    assert taken["host_core"] > 0, "the compiled reclaim core ran beside the pool"
    assert taken["tdp_shortcut"] > 0


def test_the_default_backing_leaves_the_config_hash_alone() -> None:
    plain = parse_scenario(raw(huge__memory_backing="anonymous"))
    r = raw()
    del r["vms"][1]["memory_backing"]
    assert parse_scenario(r).config_hash() == plain.config_hash()
    assert parse_scenario(raw()).config_hash() != plain.config_hash()


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"huge__memory_mib": 5}, "vms[1]: memory_mib: 5 is not a whole number of 2048 KiB huge"),
        (
            {"huge__memory_backing": "anonymous", "huge__hugepage_size_kib": 1048576},
            "set memory_backing: hugetlbfs",
        ),
        ({"huge__memory_mib": 16}, "fill host memory"),
        ({"reclaim": {"policy": "lru"}}, "reclaim.policy: two_list or mglru"),
        ({"reclaim": {"policy": "two_list", "trigger": "demand"}}, "reclaim.trigger: watermark"),
        ({"kvm": {"mmu": "shadow"}}, "kvm.mmu: tdp or legacy_tdp"),
        ({"huge__prefault": True}, "vms[1].prefault: not modelled for a hugetlbfs-backed VM"),
        ({"huge__async_pf": 0.5}, "vms[1].async_pf"),
        ({"huge__guest": {}}, "vms[1].guest"),
    ],
)
def test_refusals(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_scenario(raw(**changes))
    msg = str(exc.value)
    assert needle in msg, msg
    assert "\n" not in msg.strip(), msg


@pytest.mark.parametrize(
    "changes",
    [
        {"swap": {"size_mib": 64, "device": "zram"}},
        {"swap": {"size_mib": 64, "zswap": {"enabled": True}}, "reclaim": {"policy": "mglru"}},
        {"kvm": {"mmu": "legacy_tdp", "ept_ad_bits": False}, "huge__guest_tlb": {}},
        {"host_files": {"size_mib": 4, "write_ratio": 0.3}},
        {"host": {"memory_mib": 16, "ksm": {"pages_to_scan": 500, "sleep_ms": 1}}},
        {"host": {"memory_mib": 16, "thp": {"khugepaged": FAST_KHUGEPAGED}}},
    ],
    ids=["zram", "zswap-mglru", "legacy-tdp-tlb", "page-cache", "ksm", "thp"],
)
def test_invariants_hold_beside_every_feature_of_the_anonymous_guests(
    changes: dict[str, Any],
) -> None:
    r = raw(**changes)
    if "ksm" in r["host"]:
        r["vms"][0]["content"] = {"zero_share": 0.3}
    w = World(parse_scenario(r))
    pfns = w.mem.pfn[_pids(w)].copy()
    run_checked(w)
    assert (w.mem.pfn[_pids(w)] == pfns).all()
    assert not any(w.vmstat.mm_stat(HUGE).values())
    assert not any(w.vms[HUGE].stats.faults.values())
    assert w.vms[HUGE].stats.stall_ns == 0


def test_thp_backs_the_anonymous_guests_and_khugepaged_leaves_hugetlbfs_alone() -> None:
    """THP for anonymous guest RAM beside a hugetlbfs guest: the anonymous guests get THPs,
    swapped out whole; khugepaged, awake every millisecond, scans only anonymous VMAs
    (thp_vma_allowable_order refuses VM_HUGETLB), so it collapses none of the hugetlbfs
    guest's blocks, whose pages keep their pool frames and stay off every THP state."""
    r = raw(host={"memory_mib": 16, "thp": {"khugepaged": FAST_KHUGEPAGED}})
    w = World(parse_scenario(r))
    pids = _pids(w)
    pfns = w.mem.pfn[pids].copy()
    run_checked(w)
    assert w.vmstat["thp_fault_alloc"] > 0
    assert w.khugepaged is not None
    assert w.khugepaged.stats.pmds_scanned > 2 * w.khugepaged.nr_blocks  # every block, twice
    assert (w.mem.pfn[pids] == pfns).all()
    assert w.thp is not None
    assert not w.thp.block[pids.start >> 9 : pids.stop >> 9].any()  # no THP state at all
    assert not any(w.vmstat.mm_stat(HUGE).values())
    assert not any(w.vms[HUGE].stats.faults.values())


def test_scaling_down_keeps_whole_huge_pages() -> None:
    r = raw(host={"memory_mib": 64})
    r["vms"][0]["memory_mib"] = 16
    r["vms"][1]["memory_mib"] = 24
    scaled = scale_scenario(r, 4)
    assert "memory_mib: 6\n" in scaled.yaml()
    with pytest.raises(ConfigError, match=r"24 MiB / 8 is not a whole number of 2 MiB huge pages"):
        scale_scenario(r, 8)


def test_the_run_table_names_the_backing_and_the_pool() -> None:
    w = world(duration_s=0.01)
    w.run()
    t = summary_table(w.summary(0.0))
    names = [str(c) for c in t.columns[0].cells]
    assert names == ["anon0", "anon1", "huge (hugetlbfs)"]
    assert "hugetlb pool 1,536 pages (3 x 2 MiB, none free)" in str(t.caption)


def test_the_eviction_logs_idle_rank_samples_only_pages_on_an_lru(tmp_path: Path) -> None:
    w = World(parse_scenario(raw(duration_s=0.02)), tmp_path)
    w.run()
    rec = w.recorder
    assert rec is not None
    seen: list[np.ndarray] = []
    stamps = rec._stamps

    def spy(pids: np.ndarray) -> Any:
        seen.append(pids.copy())
        return stamps(pids)

    rec._stamps = spy  # type: ignore[method-assign]
    for _ in range(20):
        rec._idle_rank(np.zeros(1, dtype=np.int64))
    sampled = np.concatenate(seen)
    assert len(sampled) > 0
    assert w.hugetlb is not None
    assert not w.hugetlb.mask[sampled].any(), "a hugetlb page in idle_rank's sample"


@st.composite
def hugetlb_worlds(draw: st.DrawFn) -> dict[str, Any]:
    """The invariant tests' random worlds (two-list or MGLRU, TDP) with a hugetlbfs VM added
    at a random place among the profiles, the host grown by its RAM."""
    r = draw(scenarios())
    r["reclaim"] = {**r["reclaim"], "policy": draw(st.sampled_from(["two_list", "mglru"]))}
    r["kvm"]["mmu"] = draw(st.sampled_from(["tdp", "legacy_tdp"]))
    mib = draw(st.sampled_from([2, 4]))
    r["host"]["memory_mib"] += mib
    huge = {
        "name": "huge",
        "memory_mib": mib,
        "vcpus": draw(st.integers(1, 2)),
        "access_rate_per_s": draw(st.integers(100_000, 4_000_000)),
        "write_ratio": draw(st.floats(0.0, 1.0)),
        "workload": {"type": "uniform"},
        "memory_backing": "hugetlbfs",
    }
    r["vms"].insert(draw(st.integers(0, len(r["vms"]))), huge)
    return r


@settings(max_examples=12, deadline=None, database=None, derandomize=True)
@given(hugetlb_worlds())
def test_random_worlds_with_a_hugetlbfs_vm_keep_every_invariant_and_fast_path(
    r: dict[str, Any],
) -> None:
    sc = parse_scenario(copy.deepcopy(r))
    w = World(sc)
    i = [n for n, _ in sc.vm_list()].index("huge")
    mm = w.vms[i].mm
    pfns = w.mem.pfn[mm.pid_base : mm.pid_base + mm.nr_pages].copy()
    run_checked(w)
    assert (w.mem.pfn[mm.pid_base : mm.pid_base + mm.nr_pages] == pfns).all()
    assert not any(w.vmstat.mm_stat(i).values())
    assert not any(w.vms[i].stats.faults.values())
    check_world(r, tuple(fast.registered()))
