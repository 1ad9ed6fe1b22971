"""LRU sizes and scan budgets count pages (host.thp): hand-worked numbers on one lruvec.

The kernel keeps each LRU list's size in pages (``update_lru_size`` by ``folio_nr_pages``)
and ``isolate_lru_folios`` takes folios while fewer than ``nr_to_scan`` pages were scanned
(``scan += nr_pages``), so a THP uses 512 of a batch's budget. One two-list lruvec with a
stand-in for the THP state: frame 0 is a THP's head (512 pages), frames 1-40 are 4 KiB folios.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from numpy.typing import NDArray

from sim.host.vmscan import ScanControl
from sim.host.vmstat import VmStat
from sim.reclaim.two_list import TwoList, TwoListConfig

N = 40  # 4 KiB folios
THP = 0  # the THP's head frame


class _Sizes:
    """``folio_nr_pages``: 512 for frame 0, one for every other."""

    def nr_pages_each(self, pfns: NDArray[np.int64]) -> NDArray[np.int64]:
        return np.where(np.asarray(pfns) == THP, 512, 1).astype(np.int64)

    def nr_pages(self, pfns: NDArray[np.int64]) -> int:
        return int(self.nr_pages_each(pfns).sum())

    def folio_nr_pages(self, pfn: int) -> int:
        return 512 if pfn == THP else 1


class _Reclaim:
    """A reclaimer that finds every folio young and none under write-back (so nothing is
    reclaimed: a first sighting keeps a folio, a second activates it); it records each batch
    ``folio_referenced`` was asked about, in isolation order."""

    ksm = None

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def writeback_check(self, pfns: NDArray[np.int64], sc: ScanControl) -> NDArray[np.bool_]:
        return np.zeros(len(pfns), dtype=np.bool_)

    def folio_referenced(self, pfns: NDArray[np.int64], sc: ScanControl) -> NDArray[np.bool_]:
        self.batches.append([int(p) for p in pfns])
        return np.ones(len(pfns), dtype=np.bool_)

    def activate_locked(self, pfns: NDArray[np.int64]) -> None:
        pass


def _lruvec() -> TwoList:
    lru = TwoList(TwoListConfig(), 64, Counter(), np.random.default_rng(0))
    lru.folios = _Sizes()
    for pfn in range(N + 1):  # the THP first: the inactive list's tail (oldest)
        lru.folio_add_lru(pfn, None)
    return lru


def test_a_thp_counts_512_pages_on_its_list_and_of_a_scan_budget() -> None:
    lru, reclaim, vs = _lruvec(), _Reclaim(), Counter[str]()
    assert lru.lru_sizes() == {"inactive": 512 + N, "active": 0}  # 41 entries, 552 pages
    assert len(lru.inactive) == N + 1
    # nr_to_scan 32: scan 0 < 32 takes the THP at the tail, scan = 512 >= 32 ends the batch
    sc = ScanControl(nr_to_reclaim=32, vmstat=vs)  # type: ignore[arg-type]
    lru.shrink_inactive_list(32, sc, reclaim)  # type: ignore[arg-type]
    assert reclaim.batches == [[THP]]
    assert (sc.nr_taken, sc.nr_scanned, vs[VmStat.PGSCAN_KSWAPD]) == (512, 512, 512)
    # young, first sighting: kept with PG_referenced at the inactive head; sizes unchanged
    assert lru.lru_sizes() == {"inactive": 552, "active": 0}
    # the tail is now folios 1..40: the next 32 pages are 32 of them
    sc = ScanControl(nr_to_reclaim=32, vmstat=vs)  # type: ignore[arg-type]
    lru.shrink_inactive_list(32, sc, reclaim)  # type: ignore[arg-type]
    assert reclaim.batches[-1] == list(range(1, 33))
    assert sc.nr_taken == 32
    # 33..40 are 8 pages < 32, so the THP behind them is taken too: 9 folios, 520 pages
    sc = ScanControl(nr_to_reclaim=32, vmstat=vs)  # type: ignore[arg-type]
    lru.shrink_inactive_list(32, sc, reclaim)  # type: ignore[arg-type]
    assert reclaim.batches[-1] == [*range(33, 41), THP]
    assert (sc.nr_taken, sc.nr_scanned) == (520, 520)
    # the THP's second sighting activates it: 512 pages move, pgactivate 512, and the
    # putback ages the workingset clock by 512 (move_folios_to_lru)
    assert (sc.nr_activate, lru.nonresident_age) == (512, 512)
    assert lru.lru_sizes() == {"inactive": N, "active": 512}
    assert vs[VmStat.PGSCAN_KSWAPD] == 512 + 32 + 520
    # shrink_active_list of 32: the THP is 512 of the budget, deactivated whole
    sc = ScanControl(nr_to_reclaim=32, vmstat=vs)  # type: ignore[arg-type]
    lru.shrink_active_list(32, sc, reclaim)  # type: ignore[arg-type]
    assert reclaim.batches[-1] == [THP]
    assert (sc.nr_refill, sc.nr_deactivate) == (512, 512)
    assert lru.lru_sizes() == {"inactive": 552, "active": 0}
    on_lru = np.zeros(64, dtype=np.bool_)
    on_lru[: N + 1] = True
    lru.check(on_lru)  # each list's size is folio_nr_pages summed over its entries


def test_eviction_ages_the_workingset_clock_by_each_folios_pages() -> None:
    lru = _lruvec()
    gone = np.array([5, THP, 6], dtype=np.int64)
    lru.folio_remove(gone)
    assert lru.lru_sizes() == {"inactive": 552 - 514, "active": 0}
    # workingset_eviction: each shadow is the clock before its folio, which then ages it
    # by folio_nr_pages: 0 for folio 5, 1 for the THP, 1 + 512 = 513 for folio 6
    shadows = lru.workingset_eviction(gone)
    assert shadows.tolist() == [0, 1, 513]
    assert lru.nonresident_age == 514
    on_lru = np.zeros(64, dtype=np.bool_)
    on_lru[1 : N + 1] = True
    on_lru[[5, 6]] = False
    lru.check(on_lru)


def test_a_refault_of_a_thp_counts_and_ages_by_its_pages() -> None:
    # workingset_refault of a large folio (zram's large swap-in): workingset_refault and
    # workingset_activate count 512, the clock ages 512, the active list gains 512 pages
    lru = TwoList(TwoListConfig(), 64, Counter(), np.random.default_rng(0))
    lru.folios = _Sizes()
    lru.nonresident_age = 10
    lru.folio_add_lru(THP, 10)  # evicted at age 10: distance 0 <= the active list's 0
    assert lru.lru_sizes() == {"inactive": 0, "active": 512}
    assert lru.nonresident_age == 10 + 512
    vs = lru.vmstat
    assert (vs[VmStat.WORKINGSET_REFAULT], vs[VmStat.WORKINGSET_ACTIVATE]) == (512, 512)
