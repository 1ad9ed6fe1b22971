"""The page cache charged to memory cgroups (``host_files[].memcg``): file folios on their
memcg's lruvec, counted in memory.current, reclaimed by that memcg's limit reclaim; root page
cache on the root lruvec. Hand-worked scan counts, then whole worlds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sim.config import parse_scenario
from sim.engine import World
from sim.errors import ConfigError
from sim.host.memcontrol import MemcgLimits
from sim.host.memory import HostMemory, setup_per_zone_wmarks
from sim.host.vmscan import ScanControl
from sim.host.vmstat import new_vmstat
from sim.reclaim.memcg import MemcgTwoList
from sim.reclaim.two_list import LRU_ACTIVE, LRU_FILE, LRU_INACTIVE, TwoListConfig
from tests.conftest import run_checked
from tests.test_scan_balance import _Reclaimer


# -- routing and the scan count -----------------------------------------------------------------
def _policy(swappiness: int = 60) -> tuple[MemcgTwoList, HostMemory]:
    """Two VMs of 16 pages, then a 16-page file charged to VM 0 and one charged to the root."""
    nr = 64
    mem = HostMemory(nr, nr, setup_per_zone_wmarks(nr), [0, 16, 32, 48], file_base=32)
    return _memcg_two_list(
        mem, MemcgLimits.from_configs([None, None], 256, [0, None]), swappiness
    ), mem


def _memcg_two_list(mem: HostMemory, lim: MemcgLimits, swappiness: int) -> MemcgTwoList:
    """A per-memcg two-list policy with file lists over ``mem``, nothing charged to swap."""
    return MemcgTwoList(
        TwoListConfig(swappiness=swappiness),
        mem.nr_frames,
        new_vmstat(lim.nr_memcgs),
        np.random.default_rng(0),
        mem=mem,
        limits=lim,
        swap_usage=lambda i: 0,
        file=True,
    )


def test_owners_are_charged_to_their_memcgs_and_the_root_comes_first() -> None:
    lim = MemcgLimits.from_configs([None, None], 256, [0, None, 1])
    assert lim.owner_memcg == [0, 1, 0, 2, 1]  # VM 0, VM 1, file -> VM 0, root, file -> VM 1
    assert lim.owners == [[0, 2], [1, 4], [3]]
    assert (lim.root, lim.nr_memcgs) == (2, 3)
    assert lim.usage(np.array([5, 7, 11, 13, 17]), 0) == 16  # memory.current: anon + file
    assert lim.usage(np.array([5, 7, 11, 13, 17]), 2) == 13
    pol, _ = _policy()
    assert pol._order == [2, 0, 1]  # mem_cgroup_iter: the root, then its children


def test_file_folios_join_their_memcgs_lruvec() -> None:
    pol, mem = _policy()
    for pid in (0, 16, 32, 33, 48):
        pfn = mem.alloc_frame(pid)
        if pid < 32:
            pol.folio_add_lru(pfn, None)
        else:
            pol.file_add_lru(pfn, None, swap_ok=True)
    a, b, root = pol.lruvecs
    assert (len(a.inactive), len(a.inactive_file), len(b.inactive), len(b.inactive_file)) == (
        1,
        2,
        1,
        0,
    )
    assert (len(root.inactive), len(root.inactive_file)) == (0, 1)
    assert pol.lru_sizes() == {"inactive": 2, "active": 0, "inactive_file": 3, "active_file": 0}
    on_lru = np.zeros(64, dtype=np.bool_)
    on_lru[:5] = True  # frames 0-4, taken in that order
    pol.check(on_lru)


def _lists(pol: MemcgTwoList, sizes: tuple[int, int, int, int]) -> None:
    """Fill VM 0's lruvec: inactive anon, active anon, inactive file, active file (by flag
    only: get_scan_count reads list sizes)."""
    lv = pol.lruvecs[0]
    start = 0
    for n, q, flag in zip(
        sizes,
        (lv.inactive, lv.active, lv.inactive_file, lv.active_file),
        (LRU_INACTIVE, LRU_ACTIVE, LRU_INACTIVE | LRU_FILE, LRU_ACTIVE | LRU_FILE),
        strict=True,
    ):
        pfns = np.arange(start, start + n, dtype=np.int64)
        lv.fl[pfns] = flag
        q.add_head(pfns)
        start += n


def _big_policy(swappiness: int) -> MemcgTwoList:
    nr = 16384
    mem = HostMemory(nr, nr, setup_per_zone_wmarks(nr), [0, 8192, 12288], file_base=12288)
    pol = _memcg_two_list(mem, MemcgLimits.from_configs([None, None], 256, [0]), swappiness)
    _lists(pol, (4096, 8192, 2048, 1024))
    return pol


def test_limit_reclaim_at_swappiness_0_scans_file_only() -> None:
    lv = _big_policy(0).lruvecs[0]
    sc = ScanControl(nr_to_reclaim=32, priority=2, target_memcg=0, memcg=0)
    # SCAN_FILE: 2048 >> 2 = 512 inactive, 1024 >> 2 = 256 active file; no anon at all
    assert lv.get_scan_count_file(sc, _Reclaimer(free=10, high=50), False, True) == [0, 0, 512, 256]
    # global reclaim at swappiness 0 is SCAN_FRACT with no anon weight (file is not tiny)
    sc = ScanControl(nr_to_reclaim=32, priority=2, memcg=0)
    assert lv.get_scan_count_file(sc, _Reclaimer(free=10, high=50), False, True) == [0, 0, 512, 256]


def test_limit_reclaim_has_no_file_is_tiny() -> None:
    # 3072 file + 10 free <= 4000 high, no anon deactivation due, anon left: global reclaim
    # finds the file tiny and scans anon only; limit reclaim never asks, and scans by SCAN_FRACT
    lv = _big_policy(60).lruvecs[0]
    reclaim = _Reclaimer(free=10, high=4000)
    sc = ScanControl(nr_to_reclaim=32, priority=2, memcg=0)
    assert lv.get_scan_count_file(sc, reclaim, False, True) == [1024, 2048, 0, 0]
    sc = ScanControl(nr_to_reclaim=32, priority=2, target_memcg=0, memcg=0)
    # SCAN_FRACT, costs 0: ap = 60 * 1 // 1 = 60, fp = 140, floored (online memcg):
    # 1024 * 60 // 200 = 307, 2048 * 60 // 200 = 614, 512 * 140 // 200 = 358, 256 * .7 = 179
    assert lv.get_scan_count_file(sc, reclaim, False, True) == [307, 614, 358, 179]


def test_memory_low_scales_the_file_lists_too() -> None:
    # memory.low 3000 of 15360 used, priority 0 (SCAN_EQUAL): each list n - n * 3000 // 15361:
    # 4096 - 799, 8192 - 1599, 2048 - 399, 1024 - 199
    lv = _big_policy(60).lruvecs[0]
    sc = ScanControl(nr_to_reclaim=32, priority=0, memcg=0, elow=3000, cgroup_size=15360)
    got = lv.get_scan_count_file(sc, _Reclaimer(free=10, high=50), True, True)
    assert got == [3297, 6593, 1649, 825]
    assert sc.memcg_low_skipped


def _root_and_vm() -> MemcgTwoList:
    """VM 0's lruvec: 4096 inactive and 8192 active anon; the root's: 2048 inactive and 1024
    active file (a host service's page cache)."""
    nr = 16384
    mem = HostMemory(nr, nr, setup_per_zone_wmarks(nr), [0, 8192, 12288], file_base=12288)
    lim = MemcgLimits.from_configs([None, None], 256, [None])
    pol = MemcgTwoList(
        TwoListConfig(),
        nr,
        new_vmstat(lim.nr_memcgs),
        np.random.default_rng(0),
        mem=mem,
        limits=lim,
        swap_usage=lambda i: 0,
        file=True,
    )
    _lists(pol, (4096, 8192, 0, 0))
    root = pol.lruvecs[2]
    for q, start, n, flag in (
        (root.inactive_file, 12288, 2048, LRU_INACTIVE),
        (root.active_file, 14336, 1024, LRU_ACTIVE),
    ):
        pfns = np.arange(start, start + n, dtype=np.int64)
        root.fl[pfns] = flag | LRU_FILE
        q.add_head(pfns)
    return pol


def test_global_reclaim_takes_the_roots_cache_trim_mode() -> None:
    # node-wide at priority 2: inactive file 2048 >> 2 = 512 left and no file refaults, so
    # cache_trim_mode; inactive anon is low (4096 < 8192, ratio 1 under 1 GB) but that only
    # allows deactivation. Every memcg then scans file only: the VM's anon none at all.
    pol = _root_and_vm()
    root, vm = pol.lruvecs[2], pol.lruvecs[0]
    reclaim = _Reclaimer(free=10, high=50)
    sc = ScanControl(nr_to_reclaim=32, priority=2)
    prep = pol.prepare_scan_control(sc, reclaim)
    assert (prep.may_anon, prep.may_file, prep.cache_trim_mode, prep.file_is_tiny) == (
        True,
        False,
        True,
        False,
    )
    vm.prep = root.prep = prep
    assert vm.get_scan_count_file(sc, reclaim, True, False) == [0, 0, 0, 0]
    assert root.get_scan_count_file(sc, reclaim, True, False) == [0, 0, 512, 256]
    # judged on the VM's lruvec alone (no file there): SCAN_FRACT scans its anon
    vm.prep = None
    assert vm.get_scan_count_file(sc, reclaim, True, False) == [307, 614, 0, 0]


def test_costs_add_up_to_the_root() -> None:
    pol = _root_and_vm()
    vm = pol.lruvecs[0]
    # 2 swap-outs and 5 rotations: 2 * 32 + 5 = 69 on the VM's lruvec and on the root's
    vm._note_cost(file=False, nr_io=2, nr_rotated=5, lru_pages=1000)
    assert (vm.anon_cost, pol.node_cost.anon_cost) == (69, 69)
    # 300 file rotations: 369 > 1000 / 4 halves the VM's (34, 150); the root's LRU is the
    # node's 15360 pages, whose quarter 3840 is not reached
    vm._note_cost(file=True, nr_io=0, nr_rotated=300, lru_pages=1000)
    assert (vm.anon_cost, vm.file_cost) == (34, 150)
    assert (pol.node_cost.anon_cost, pol.node_cost.file_cost) == (69, 300)


# -- whole worlds -------------------------------------------------------------------------------
def _raw(swappiness: int = 0, **vm_a: Any) -> dict[str, Any]:
    """A 64 MiB host that never needs global reclaim: VM a keeps all 8 MiB (2048 pages) busy
    under memory.max 12 MiB (3072 pages) and reads a 16 MiB disk image charged to its memcg;
    VM b (2 MiB busy) and a 4 MiB root file do their own thing."""
    vm = {"access_rate_per_s": 400_000, "workload": {"type": "uniform"}}
    return {
        "name": "mcpc",
        "seed": 4,
        "duration_s": 0.3,
        "host": {"memory_mib": 64},
        "reclaim": {"policy": "two_list", "swappiness": swappiness},
        "swap": {"size_mib": 64},
        "vms": [
            {"name": "a", "memory_mib": 8, "memcg": {"max_mib": 12}, **vm, **vm_a},
            {"name": "b", "memory_mib": 8, "working_set_mib": 2, "memcg": {}, **vm},
        ],
        "host_files": [
            {
                "size_mib": 16,
                "memcg": "a",
                "access_rate_per_s": 200_000,
                "read_latency_us": 5,
                "workload": {"type": "uniform"},
            },
            {"size_mib": 4, "access_rate_per_s": 50_000, "read_latency_us": 5},
        ],
    }


def test_page_cache_over_memory_max_reclaims_only_that_memcgs_file() -> None:
    """Swappiness 0: a's limit reclaim is SCAN_FILE, so every scan is of a's own file
    folios; its guest keeps all 2048 pages (no swap-out, no major fault); nobody else is
    scanned, and kswapd never runs. memory.current = a's 2048 anon + its resident file pages."""
    w = World(parse_scenario(_raw()))
    assert run_checked(w, every_ns=10_000_000) >= 10
    s = w.summary(0.0)
    a, b = s["vms"]
    vs = w.vmstat
    root = vs.per_mm[2]
    assert a["memcg"]["events"]["max"] > 0
    assert (
        a["vmstat"].get("pgscan_file", 0) == a["vmstat"].get("pgsteal_file", 0) > 0
    )  # clean: all freed
    assert a["vmstat"].get("pgscan_anon", 0) == 0
    assert vs["pswpout"] == 0
    assert a["faults"]["major"] == 0
    assert a["resident_pages"] == 2048
    mc = a["memcg"]
    assert mc["current_pages"] == 2048 + mc["file_pages"]
    assert mc["file_pages"] == int(w.mem.nr_resident[2])  # the file's pseudo-mm
    assert 3072 - 32 <= mc["current_pages"] <= 3072 + 2  # a vCPU's and the reader's charges
    assert b["vmstat"].get("pgscan_anon", 0) + b["vmstat"].get("pgscan_file", 0) == 0
    assert root["pgscan_direct"] + root["pgscan_kswapd"] == 0
    assert s["host"]["kswapd_scanned"] == 0
    assert b["memcg"]["file_pages"] == 0
    # the root file was never reclaimed: no refault, and it fits its 1024 pages
    assert root["workingset_refault_file"] == 0
    assert 0 < int(w.mem.nr_resident[3]) <= 1024
    rm = s["host"]["root_memcg"]  # the root memcg's memory.stat: its file, nothing else
    assert rm["current_pages"] == rm["file_pages"] == int(w.mem.nr_resident[3])
    assert rm["vmstat"].get("pgscan_file", 0) == 0


def test_with_swappiness_limit_reclaim_may_take_anon() -> None:
    """The same world at swappiness 60: limit reclaim balances by SCAN_FRACT and swaps some
    of a's guest pages out; the neighbour is still untouched."""
    w = World(parse_scenario(_raw(60)))
    run_checked(w, every_ns=50_000_000)
    a, b = w.summary(0.0)["vms"]
    assert a["vmstat"].get("pgscan_anon", 0) > 0
    assert a["vmstat"].get("pgscan_file", 0) > 0
    assert b["vmstat"].get("pgscan_anon", 0) + b["vmstat"].get("pgscan_file", 0) == 0


def test_memory_high_throttles_the_reader() -> None:
    """memory.high 9 MiB (2304 pages) with 8 MiB of busy guest: the reader's charges push
    the memcg over high; it reclaims (``memory.events high``), charged to a's breakdown."""
    raw = _raw(0)
    raw["vms"][0]["memcg"] = {"high_mib": 9}
    w = World(parse_scenario(raw))
    run_checked(w, every_ns=50_000_000)
    a = w.summary(0.0)["vms"][0]
    assert a["memcg"]["events"]["high"] > 0
    assert a["memcg"]["events"]["max"] == 0
    assert a["vmstat"].get("pgscan_anon", 0) == 0
    assert a["memcg"]["current_pages"] <= 2304 + 64  # at most a charge batch above high


def test_reader_of_a_killed_vm_stops() -> None:
    """memory.max 4 MiB with no swap for an 8 MiB busy guest: the memcg OOM kills a (its file
    pages were reclaimed first); its reader, a QEMU thread, reads no more, and what stays of
    its file is still a's charge."""
    raw = _raw(0)
    raw["vms"][0]["memcg"] = {"max_mib": 4, "swap_max_mib": 0}
    raw["host_files"] = raw["host_files"][:1]
    w = World(parse_scenario(raw))
    w.start()
    w.env.run(until=200_000_000)
    w.check()
    assert w.mms[0].dead
    pgpgin, cached = w.vmstat["pgpgin"], int(w.mem.nr_resident[2])
    w.run()
    w.check()
    assert w.vmstat["pgpgin"] == pgpgin
    assert int(w.mem.nr_resident[2]) == cached
    assert w.memcg is not None
    assert w.memcg.usage(0) == cached  # the VM's anon is gone; its file is all it holds


def test_one_section_list_runs_as_the_mapping() -> None:
    """A one-element list is the mapping form: same streams, same numbers."""
    raw = _raw(60)
    raw["vms"][0].pop("memcg")
    raw["vms"][1].pop("memcg")
    one = dict(raw["host_files"][1])
    runs = []
    for hf in (one, [one]):
        w = World(parse_scenario(raw | {"host_files": hf, "duration_s": 0.05}))
        w.run()
        s = w.summary(0.0)
        s.pop("config_hash")
        runs.append(s)
    assert runs[0] == runs[1]


def test_mapping_form_keeps_its_config_hash() -> None:
    """The hash main gave this config before host_files took lists and memcg."""
    sc = parse_scenario(
        {
            "name": "x",
            "duration_s": 0.1,
            "host": {"memory_mib": 16},
            "vms": [{"name": "g", "memory_mib": 16}, {"name": "h", "memory_mib": 8}],
            "host_files": {"size_mib": 4},
        }
    )
    assert sc.config_hash() == "6e9149ae6d"
    assert "memcg:" not in sc.to_yaml()  # (host.memcg_stats is another key)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([{"size_mib": 4, "memcg": "zz"}], "host_files[0].memcg: no VM named 'zz'"),
        ([{"size_mib": 4}, {"size_mib": 4, "memcg": "h"}], "host_files[1].memcg: VM 'h' has no"),
        ({"size_mib": 4, "memcg": "h"}, "host_files.memcg: VM 'h' has no memcg section"),
        ([], "host_files: an empty list"),
        ([{"size_mib": 4}, {"size_mib": 0}], "host_files[1].size_mib: must be at least 1"),
        ([{"size_mib": 4, "memcg": 3}], "host_files[0].memcg"),
        ([{"size_mib": 4, "colour": 1}], "host_files[0].colour: unknown key"),
    ],
)
def test_bad_file_memcg_is_one_line_naming_the_field(files: Any, message: str) -> None:
    raw = {
        "name": "x",
        "duration_s": 0.1,
        "host": {"memory_mib": 16},
        "vms": [{"name": "g", "memory_mib": 16, "memcg": {}}, {"name": "h", "memory_mib": 8}],
        "host_files": files,
    }
    with pytest.raises(ConfigError) as e:
        parse_scenario(raw)
    text = str(e.value)
    assert message in text
    assert "\n" not in text


def test_file_memcg_accepted_with_mglru() -> None:
    """MGLRU has the file type on every memcg's lruvec (tests/test_mglru_memcg_file.py)."""
    raw = _raw()
    raw["reclaim"] = {"policy": "mglru"}
    assert parse_scenario(raw).file_sections()[0].memcg == "a"


def test_memcg_page_cache_worlds_are_deterministic() -> None:
    """Same config and seed, memcg-charged and root page cache: the same summary."""
    runs = []
    for _ in range(2):
        w = World(parse_scenario(_raw(60) | {"duration_s": 0.1}))
        w.run()
        runs.append(w.summary(0.0))
    assert runs[0] == runs[1]
    assert runs[0]["vms"][0]["memcg"]["file_pages"] > 0
