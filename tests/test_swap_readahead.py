"""Swap readahead (swap_state.py): the kernel's window arithmetic, and a world that reads ahead."""

from __future__ import annotations

from typing import Any

import pytest

from sim.engine import World
from sim.host.swap_state import SwapRaInfo, swap_vma_ra_win, swapin_nr_pages
from tests.conftest import run_checked, tiny


@pytest.mark.parametrize(
    ("prev", "offset", "hits", "max_pages", "prev_win", "want"),
    [
        (0, 1000, 0, 8, 0, 1),  # no hits, not adjacent: one page
        (999, 1000, 0, 8, 0, 2),  # no hits, next to the last fault: two
        (1001, 1000, 0, 8, 0, 2),  # ... or just before it
        (0, 1000, 1, 8, 0, 4),  # hits + 2 = 3, rounded up to a power of two from 4
        (0, 1000, 3, 8, 0, 8),  # 5 -> 8
        (0, 1000, 7, 8, 0, 8),  # 9 -> 16, capped at 1 << page_cluster
        (0, 1000, 0, 8, 8, 4),  # a miss after a window of 8: not below half of it
        (0, 1000, 0, 8, 3, 1),  # half of 3 is 1
        (0, 1000, 2, 2, 0, 2),  # page_cluster 1
    ],
)
def test_swapin_nr_pages_is_the_kernels_arithmetic(
    prev: int, offset: int, hits: int, max_pages: int, prev_win: int, want: int
) -> None:
    assert swapin_nr_pages(prev, offset, hits, max_pages, prev_win) == want


def test_window_sequence_for_a_hit_and_miss_history() -> None:
    """A sequential run that hits its readahead, then random faults that do not (page_cluster 3,
    the VMA from page 0 to 1 << 20, PMDs of 512 pages)."""
    ra = SwapRaInfo()
    seq = []

    def fault(addr: int) -> None:
        seq.append(swap_vma_ra_win(ra, addr, 0, 1 << 20, 3, 512))

    fault(1000)  # first fault: not next to the zeroed address
    fault(1001)  # adjacent, no hits: 2, placed forward
    ra.cache_hit(1002, readahead=True)  # the page read ahead is touched
    fault(1003)  # 1 hit: 3 -> 4, forward from the hit at 1002
    for a in (1004, 1005, 1006):
        ra.cache_hit(a, readahead=True)
    fault(1007)  # 3 hits: 5 -> 8
    fault(5000)  # no hits, far away: 1, but not below 8 / 2: centred
    fault(9000)  # 1 -> max(1, 4 / 2) = 2, centred: (2 - 1) // 2 = 0 to the left
    fault(20000)  # 1 -> max(1, 2 / 2) = 1: off
    assert seq == [
        (1, 1000, 1001),
        (2, 1001, 1003),
        (4, 1003, 1007),
        (8, 1007, 1015),
        (4, 4999, 5003),
        (2, 9000, 9002),
        (1, 20000, 20001),
    ]
    assert (ra.addr, ra.win, ra.hits) == (20000, 1, 0)


def test_window_is_placed_backward_and_clipped_to_the_pmd_and_the_vma() -> None:
    ra = SwapRaInfo(addr=1025, win=8, hits=6)  # 6 hits: 8 pages
    assert swap_vma_ra_win(ra, 1024, 0, 1 << 20, 3, 512) == (8, 1024, 1025)  # backward, PMD
    ra = SwapRaInfo(addr=1022, win=8, hits=6)
    assert swap_vma_ra_win(ra, 1023, 0, 1 << 20, 3, 512) == (8, 1023, 1024)  # forward, PMD
    ra = SwapRaInfo(addr=0, win=8, hits=0)
    assert swap_vma_ra_win(ra, 2001, 2000, 2003, 3, 512) == (4, 2000, 2003)  # the VMA's ends


def test_hits_saturate_and_page_cluster_zero_is_off() -> None:
    ra = SwapRaInfo()
    for _ in range(100):
        ra.cache_hit(7, readahead=True)
    assert ra.hits == 63
    ra.cache_hit(8, readahead=False)
    assert (ra.addr, ra.hits) == (8, 63)
    assert swap_vma_ra_win(ra, 9, 0, 100, 0, 512) == (1, 9, 10)
    assert (ra.addr, ra.hits) == (8, 63)  # no readahead: the state is not touched
    assert swap_vma_ra_win(SwapRaInfo(hits=63), 9, 0, 100, 9, 512)[0] == 32  # order ceiling 5


def _scan_world(page_cluster: int) -> tuple[World, dict[str, Any]]:
    sc = tiny(
        swap__page_cluster=page_cluster,
        vms__0__workload={"type": "scan"},
        vms__0__vcpus=1,
        vms__0__access_rate_per_s=500_000,
    )
    w = World(sc)
    run_checked(w)
    return w, w.summary(0.0)


def test_a_sequential_guest_reads_ahead_and_hits() -> None:
    """A guest scanning its RAM over and over refaults in address order: readahead reads the
    next pages with each major fault, and the guest then finds them in the swap cache."""
    w, s = _scan_world(3)
    vs = s["host"]["vmstat"]
    assert vs["swap_ra"] > 0
    assert 0 < vs["swap_ra_hit"] <= vs["swap_ra"]
    # each read counts pswpin once, read ahead or not, at submission; pgmajfault only for the
    # faulting page, when its read ends (at most one per vCPU still in flight at the end)
    vcpus = sum(v["vcpus"] for v in s["vms"])
    assert 0 <= vs["pswpin"] - vs["swap_ra"] - vs["pgmajfault"] <= vcpus
    off_w, off = _scan_world(0)
    assert off["host"]["vmstat"]["swap_ra"] == 0
    assert off["host"]["vmstat"]["swap_ra_hit"] == 0
    scan = {v["name"]: v for v in s["vms"]}
    scan_off = {v["name"]: v for v in off["vms"]}
    name = next(iter(scan))
    assert scan[name]["faults"]["major"] < scan_off[name]["faults"]["major"]
