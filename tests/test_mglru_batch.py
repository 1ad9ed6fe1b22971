"""MGLRU's scan batch and its swap test, against hand-worked numbers (sim/reclaim/mglru.py).

``scan_folios`` meets folios from the oldest generation's tail within a budget of
``min(nr_to_scan, MAX_LRU_BATCH)`` folios, sorted ones included, and stops once MIN_LRU_BATCH
are isolated; ``evict_folios`` returns what it met (plus one if ``try_to_inc_min_seq`` moved);
``try_to_shrink_lruvec`` calls it until the sum reaches ``get_nr_to_scan``'s budget, which it
recomputes each round. ``get_swappiness`` treats anon as evictable only with MIN_LRU_BATCH free
swap slots, for a memcg's lruvec as ``mem_cgroup_get_nr_swap_pages`` counts them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from sim.host.memcontrol import MemcgLimits
from sim.host.memory import HostMemory, setup_per_zone_wmarks
from sim.host.vmscan import Outcome, ScanControl
from sim.host.vmstat import new_vmstat
from sim.reclaim.memcg import MemcgMglru, MemcgWalkReclaimer
from sim.reclaim.mglru import MAX_LRU_BATCH, MIN_LRU_BATCH, Mglru, MglruConfig
from tests.conftest import drive

NR = 5000


class _Host:
    """The reclaimer calls an anon scan and eviction make: nothing under write-back, no pte
    young, every folio handed to ``shrink_folio_list`` freed; ``slots`` free swap slots."""

    def __init__(self, slots: int = 1 << 20) -> None:
        self.slots = slots
        self.freed: list[int] = []

    def folio_test_writeback(self, pfns: np.ndarray) -> np.ndarray:
        return np.zeros(len(pfns), dtype=np.bool_)

    def nr_swap_pages(self) -> int:
        return self.slots

    def can_swap(self) -> bool:
        return self.slots > 0

    def folio_scanned(self, pfns: np.ndarray) -> None:
        """No eviction log here: nothing to count."""

    def clear_young(self, pfns: np.ndarray, sc: ScanControl) -> np.ndarray:
        return np.zeros(len(pfns), dtype=np.bool_)

    def shrink_folio_list(self, pfns: np.ndarray, sc: ScanControl) -> np.ndarray:
        self.freed.extend(pfns.tolist())
        sc.freed(len(pfns))
        return np.full(len(pfns), Outcome.FREED)

    def activate_locked(self, pfns: np.ndarray) -> None:
        assert len(pfns) == 0

    def free_and_high(self) -> tuple[int, int]:
        return 0, 100  # far below high: kswapd never aborts for the watermark

    def now(self) -> int:
        return 0


def _lruvec(gens: dict[int, int], promoted: int = 0) -> Mglru:
    """An anon lruvec (max_seq 3, min_seq 0) with ``gens[seq]`` folios in each generation,
    pfns numbered from generation 0's tail; the first ``promoted`` of generation 0 carry
    ``max_seq`` (promoted lazily by aging: ``sort_folio`` moves them, it does not isolate
    them). No folio has refs: all tier 0."""
    pol = Mglru(MglruConfig(), NR, Counter(), np.random.default_rng(0))
    start = 0
    for seq, n in sorted(gens.items()):
        pfns = np.arange(start, start + n, dtype=np.int64)
        pol._add(pfns, np.full(n, seq, dtype=np.int64))
        start += n
    if promoted:
        pol._set_seq(np.arange(promoted, dtype=np.int64), pol.max_seq)
    return pol


def test_scan_stops_once_min_lru_batch_is_isolated() -> None:
    """100 eligible folios, budget 1,000: the kernel isolates 64 and stops (the model used to
    stop at sc.batch, 32); the 36 not reached stay on the list, in order."""
    pol = _lruvec({0: 100})
    assert pol.lists[0].snapshot().tolist() == list(range(100))  # pfn 0 at the tail
    sc = ScanControl(nr_to_reclaim=32)
    scanned, iso = pol._scan_folios(1000, sc, _Host(), tier_idx=0)  # type: ignore[arg-type]
    assert iso.tolist() == list(range(MIN_LRU_BATCH))
    assert scanned == 64
    assert sc.nr_scanned == 64  # pgscan: isolated
    assert sc.nr_refill == 0
    assert pol.lists[0].snapshot().tolist() == list(range(64, 100))
    assert pol.nr_pages[0] == 36


def test_a_small_budget_stops_the_scan_before_the_batch() -> None:
    """``remaining = min(nr_to_scan, MAX_LRU_BATCH)``: a budget of 40 isolates 40."""
    pol = _lruvec({0: 100})
    scanned, iso = pol._scan_folios(40, ScanControl(nr_to_reclaim=32), _Host(), 0)  # type: ignore[arg-type]
    assert (scanned, len(iso)) == (40, 40)


def test_sorted_folios_use_the_budget_which_is_at_most_max_lru_batch() -> None:
    """4,090 lazily promoted folios at the tail, then 110 eligible; a budget of 10,000 is cut to
    4,096: 4,090 sorted and 6 isolated, and the scan returns all 4,096 it met."""
    pol = _lruvec({0: 4200}, promoted=4090)
    sc = ScanControl(nr_to_reclaim=32)
    scanned, iso = pol._scan_folios(10_000, sc, _Host(), 0)  # type: ignore[arg-type]
    assert MAX_LRU_BATCH == 4096
    assert scanned == 4096
    assert iso.tolist() == list(range(4090, 4096))
    assert sc.nr_refill == 4090  # pgrefill: sorted into their own generation
    assert sc.nr_scanned == 6
    assert pol.nr_pages[pol.max_seq % 4] == 4090
    assert pol.lists[0].snapshot().tolist() == list(range(4096, 4200))


def test_a_spent_budget_counts_though_nothing_was_isolated() -> None:
    """``isolated || !remaining ? scanned : 0``: 100 promoted folios and a budget of 100 return
    100 (the caller goes on); 50 promoted folios and nothing else return 0 (the list ran out
    with budget left: ``isolate_folios`` would try the other type)."""
    pol = _lruvec({0: 150}, promoted=100)
    scanned, iso = pol._scan_folios(100, ScanControl(nr_to_reclaim=32), _Host(), 0)  # type: ignore[arg-type]
    assert (scanned, len(iso)) == (100, 0)
    pol = _lruvec({0: 50}, promoted=50)
    scanned, iso = pol._scan_folios(1000, ScanControl(nr_to_reclaim=32), _Host(), 0)  # type: ignore[arg-type]
    assert (scanned, len(iso)) == (0, 0)


def test_demand_mode_still_takes_one_folio_at_a_time() -> None:
    """Demand mode (``sc.batch`` 1, one victim per miss) isolates one folio per scan."""
    pol = _lruvec({0: 10})
    sc = ScanControl(nr_to_reclaim=1, batch=1, direct=True, priority=0)
    scanned, iso = pol._scan_folios(10, sc, _Host(), 0)  # type: ignore[arg-type]
    assert (scanned, iso.tolist()) == (1, [0])


def test_evict_returns_what_it_met_plus_one_when_min_seq_moves() -> None:
    """10 folios in generation 0, 5 in generation 1: all 10 are isolated and freed, generation
    0 empties, ``try_to_inc_min_seq`` moves min_seq to 1 and adds one: 11."""
    pol = _lruvec({0: 10, 1: 5})
    host = _Host()
    sc = ScanControl(nr_to_reclaim=32)
    assert pol._evict_folios(1000, sc, host, 60) == 11  # type: ignore[arg-type]
    assert pol.min_seq == 1
    assert sorted(host.freed) == list(range(10))
    assert sc.nr_reclaimed == 10


def test_try_to_shrink_lruvec_recomputes_the_budget_each_round() -> None:
    """300 folios in generation 0 and 100 in generation 1, priority 0, kswapd far below high.
    Each round ``get_nr_to_scan`` is all that is left, shifted by priority 0 (min_seq 0 + 2 <
    max_seq 3: no aging): rounds of 64 leave 336, 272, 208, 144 and stop once the 256 met reach
    144. With rounds of 32 it would take 7 rounds and 224 folios (176 left <= 224)."""
    pol = _lruvec({0: 300, 1: 100})
    host = _Host()
    sc = ScanControl(nr_to_reclaim=1000, priority=0)
    rounds: list[int] = []
    evict = pol._evict_folios

    def counted(nr_to_scan: int, sc: ScanControl, reclaim: Any, swappiness: int) -> int:
        rounds.append(nr_to_scan)
        return evict(nr_to_scan, sc, reclaim, swappiness)

    pol._evict_folios = counted  # type: ignore[method-assign]
    assert drive(pol._try_to_shrink_lruvec(sc, host, 60)) is True  # type: ignore[arg-type]
    assert rounds == [400, 336, 272, 208]
    assert sc.nr_reclaimed == 256
    assert pol.nr_pages[0] == 44


def test_get_swappiness_wants_min_lru_batch_free_slots() -> None:
    """63 free slots: anon is not evictable (swappiness 0, and an anon-only lruvec is not
    sizable); 64: the configured swappiness."""
    pol = _lruvec({0: 100, 1: 100})
    sc = ScanControl(nr_to_reclaim=32, priority=0)
    assert MIN_LRU_BATCH == 64
    assert pol._get_swappiness(_Host(slots=63)) == 0  # type: ignore[arg-type]
    assert not pol.lruvec_is_sizable(sc, _Host(slots=63))  # type: ignore[arg-type]
    assert pol._get_swappiness(_Host(slots=64)) == 60  # type: ignore[arg-type]
    assert pol.lruvec_is_sizable(sc, _Host(slots=64))  # type: ignore[arg-type]


def test_a_memcg_counts_the_slots_its_swap_max_leaves() -> None:
    """``mem_cgroup_get_nr_swap_pages``: min(device's free slots, swap.max - swap usage). A
    memcg with swap.max 100 using 37 has 63 left: swappiness 0 though the device has 10,000
    free; using 36 it has 64. A device with 63 free bounds an unlimited memcg the same way."""
    nr = 1000
    mem = HostMemory(nr, nr, setup_per_zone_wmarks(nr), [0, 500])
    big = 1 << 40
    usage = [37, 0]
    lim = MemcgLimits(max=[big] * 2, high=[big] * 2, low=[0, 0], min=[0, 0], swap_max=[100, big])
    pol = MemcgMglru(
        MglruConfig(),
        nr,
        new_vmstat(2),
        np.random.default_rng(0),
        mem=mem,
        limits=lim,
        swap_usage=lambda i: usage[i],
    )
    host = _Host(slots=10_000)
    lru = pol._reclaimer(0, host)  # type: ignore[arg-type]
    assert isinstance(lru, MemcgWalkReclaimer)
    assert lru.nr_swap_pages() == 63
    assert lru.can_swap()  # the classic test (one slot) would still swap
    assert pol.lruvecs[0]._get_swappiness(lru) == 0
    usage[0] = 36
    assert lru.nr_swap_pages() == 64
    assert pol.lruvecs[0]._get_swappiness(lru) == 60
    assert pol._reclaimer(1, _Host(slots=63)).nr_swap_pages() == 63  # type: ignore[arg-type]
    assert pol.lruvecs[1]._get_swappiness(pol._reclaimer(1, _Host(slots=63))) == 0  # type: ignore[arg-type]
