"""THP-backed guest RAM beside the host's page cache, with async page faults, and beside a
guest's virtual disk cached by the host: the combinations run their usual paths together.

Each world is a tiny one (tests/conftest.py ``TINY``: an 8 MiB host, two 8 MiB guests of four
2 MiB blocks each) run for tens of simulated milliseconds with every invariant checked every
millisecond, and the counters prove that both mechanisms were exercised in it.
"""

from __future__ import annotations

from typing import Any

from sim.engine import World, build_world
from tests.conftest import run_checked, tiny


def _run(**changes: Any) -> World:
    changes.setdefault("host__thp", {})
    w = build_world(tiny(**changes), None)
    assert isinstance(w, World)
    assert run_checked(w) > 10
    return w


def test_file_pages_and_thps_are_reclaimed_side_by_side() -> None:
    """A host page cache on the same lruvec as THP-backed guest RAM: get_scan_count balances
    the file and anon lists in pages (a THP counts 512), and reclaim takes both."""
    w = _run(
        duration_s=0.06,
        host_files={"size_mib": 4, "access_rate_per_s": 1_000_000, "write_ratio": 0.3},
    )
    vs = w.vmstat
    assert vs["thp_fault_alloc"] > 0
    assert vs["pgsteal_file"] > 0
    assert vs["thp_swpout"] + vs["thp_split_page"] > 0  # THPs left memory, whole or split
    assert vs["pgsteal_anon"] >= 512


def test_async_page_faults_on_the_4k_swap_ins_of_swapped_out_thps() -> None:
    """A THP swapped out whole comes back 4 KiB at a time; with async_pf the vCPU runs on
    while KVM's worker faults each page in."""
    w = _run(duration_s=0.06, vms__0__async_pf=1.0, vms__0__count=2)
    vs = w.vmstat
    assert vs["thp_swpout"] > 0
    assert vs["pgmajfault"] > 0
    assert sum(vm.stats.async_pf for vm in w.vms) > 0


def test_a_guest_disk_cached_by_the_host_beside_thps() -> None:
    """A guest kernel reading a file from its virtual disk, opened with cache=writeback: the
    disk's pages are host page cache, reclaimed with the THP-backed guest RAM around them."""
    w = _run(
        duration_s=0.06,
        vms__0__guest={"footprint_mib": 4, "file_mib": 8, "disk_cache": "writeback"},
    )
    vs = w.vmstat
    assert vs["thp_fault_alloc"] > 0
    assert vs["pgsteal_file"] > 0
