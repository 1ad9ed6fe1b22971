"""get_scan_count's anon/file balance (sim/reclaim/scan_balance.py) against hand-worked numbers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from sim.host.vmscan import ScanControl
from sim.reclaim.scan_balance import (
    ScanBalance,
    cache_trim_mode,
    calculate_pressure_balance,
    file_is_tiny,
    lru_note_cost,
    scan_balance,
)
from sim.reclaim.two_list import LRU_ACTIVE, LRU_INACTIVE, TwoList, TwoListConfig


@pytest.mark.parametrize(
    ("swappiness", "anon_cost", "file_cost", "expected"),
    [
        # no costs yet: total 0, so ap = swappiness, fp = 200 - swappiness
        (60, 0, 0, (60, 140)),
        # equal costs at swappiness 100: total 20 -> anon = file = 30, total 60;
        # ap = fp = 100 * 61 // 31 = 196
        (100, 10, 10, (196, 196)),
        # anon cost only, swappiness 60: total 100 -> anon 200, file 100, total 300;
        # ap = 60 * 301 // 201 = 89, fp = 140 * 301 // 101 = 417
        (60, 100, 0, (89, 417)),
        # a third at least: anon far costlier at swappiness 100 -> anon 2000, file 1000,
        # total 3000; ap = 100 * 3001 // 2001 = 149, fp = 100 * 3001 // 1001 = 299 (149/448 = 1/3)
        (100, 1000, 0, (149, 299)),
        # swappiness 200: file gets nothing; total 55 -> anon 60, file 105, total 165;
        # ap = 200 * 166 // 61 = 544
        (200, 5, 50, (544, 0)),
        # swappiness 0: anon gets nothing; fp = 200 * 166 // 106 = 313
        (0, 5, 50, (0, 313)),
    ],
)
def test_calculate_pressure_balance(
    swappiness: int, anon_cost: int, file_cost: int, expected: tuple[int, int]
) -> None:
    assert calculate_pressure_balance(swappiness, anon_cost, file_cost) == expected


def test_lru_note_cost_adds_and_decays() -> None:
    # 2 I/Os weigh 64 rotations: 69 <= 1000 // 4, kept
    assert lru_note_cost(0, 0, file=False, nr_io=2, nr_rotated=5, lru_pages=1000) == (69, 0)
    # file 60 + 32 = 92; 200 + 92 = 292 > 250: both halve
    assert lru_note_cost(200, 60, file=True, nr_io=1, nr_rotated=0, lru_pages=1000) == (100, 46)


def test_scan_balance_order() -> None:
    kw = dict(
        can_reclaim_anon=True,
        cgroup_reclaim=False,
        swappiness=60,
        priority=12,
        file_is_tiny=False,
        cache_trim_mode=False,
    )
    assert scan_balance(**kw) == ScanBalance.SCAN_FRACT
    assert scan_balance(**{**kw, "can_reclaim_anon": False, "priority": 0}) == ScanBalance.SCAN_FILE
    assert scan_balance(**{**kw, "cgroup_reclaim": True, "swappiness": 0}) == ScanBalance.SCAN_FILE
    # global reclaim at swappiness 0 still balances (and scans anon at no weight)
    assert scan_balance(**{**kw, "swappiness": 0}) == ScanBalance.SCAN_FRACT
    assert scan_balance(**{**kw, "swappiness": 0, "priority": 0}) == ScanBalance.SCAN_FRACT
    both = {**kw, "file_is_tiny": True, "cache_trim_mode": True}
    assert scan_balance(**{**both, "priority": 0}) == ScanBalance.SCAN_EQUAL
    assert scan_balance(**both) == ScanBalance.SCAN_ANON
    assert scan_balance(**{**kw, "cache_trim_mode": True}) == ScanBalance.SCAN_FILE


def test_file_is_tiny_and_cache_trim_mode() -> None:
    kw = dict(nr_free=20, high_wmark=30, may_deactivate_anon=False, anon_left=True)
    assert file_is_tiny(nr_file=10, **kw)
    assert not file_is_tiny(nr_file=11, **kw)
    assert not file_is_tiny(nr_file=0, **{**kw, "may_deactivate_anon": True})
    assert not file_is_tiny(nr_file=0, **{**kw, "anon_left": False})
    assert cache_trim_mode(inactive_file_left=True, may_deactivate_file=False)
    assert not cache_trim_mode(inactive_file_left=True, may_deactivate_file=True)
    assert not cache_trim_mode(inactive_file_left=False, may_deactivate_file=False)


class _Reclaimer:
    """The two facts get_scan_count asks the host: swap room, free pages and the high mark."""

    def __init__(self, free: int, high: int, swap: bool = True) -> None:
        self.free, self.high, self.swap = free, high, swap

    def can_swap(self) -> bool:
        return self.swap

    def free_and_high(self) -> tuple[int, int]:
        return self.free, self.high


def _two_list(swappiness: int, anon_cost: int) -> TwoList:
    """4096 inactive and 8192 active anon folios."""
    pol = TwoList(TwoListConfig(swappiness=swappiness), 12288, Counter(), np.random.default_rng(0))
    ina, act = np.arange(4096, dtype=np.int64), np.arange(4096, 12288, dtype=np.int64)
    pol.fl[ina], pol.fl[act] = LRU_INACTIVE, LRU_ACTIVE
    pol.inactive.add_head(ina)
    pol.active.add_head(act)
    pol.anon_cost = anon_cost
    return pol


def test_two_list_get_scan_count_split() -> None:
    pol = _two_list(60, 100)
    sc = ScanControl(nr_to_reclaim=32, priority=2)
    # SCAN_FRACT, ap 89 of 506: 1024 * 89 // 506 = 180, 2048 * 89 // 506 = 360
    assert pol.get_scan_count(sc, _Reclaimer(free=100, high=50), True) == (180, 360)
    # file (none) + free at or below high, no deactivation due: SCAN_ANON
    assert pol.get_scan_count(sc, _Reclaimer(free=10, high=50), False) == (1024, 2048)
    # priority 0: SCAN_EQUAL
    sc0 = ScanControl(nr_to_reclaim=32, priority=0)
    assert pol.get_scan_count(sc0, _Reclaimer(free=100, high=50), True) == (4096, 8192)
    # no swap: SCAN_FILE, nothing of anon
    assert pol.get_scan_count(sc, _Reclaimer(free=10, high=50, swap=False), False) == (0, 0)


def test_two_list_swappiness_zero() -> None:
    pol = _two_list(0, 100)
    sc = ScanControl(nr_to_reclaim=32, priority=2)
    # global reclaim at swappiness 0: SCAN_FRACT with ap 0 (unless file is tiny)
    assert pol.get_scan_count(sc, _Reclaimer(free=100, high=50), True) == (0, 0)
    assert pol.get_scan_count(sc, _Reclaimer(free=10, high=50), False) == (1024, 2048)
    # memcg limit reclaim at swappiness 0: SCAN_FILE (file_is_tiny is global reclaim's only)
    memcg_sc = ScanControl(nr_to_reclaim=32, priority=2, target_memcg=0)
    assert pol.get_scan_count(memcg_sc, _Reclaimer(free=10, high=50), False) == (0, 0)
