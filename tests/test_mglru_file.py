"""MGLRU's file type (sim/reclaim/mglru.py with ``host_files``): per-type min_seq and PID
controller, page-cache placement and tiers, clean folios dropped without I/O, dirty ones left
to the flusher, and swappiness choosing the type."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import parse_scenario
from sim.engine import World
from sim.host.memory import PG_DIRTY
from sim.host.vmscan import ScanControl
from sim.reclaim.mglru import (
    ANON,
    FILE,
    FL_BATCH,
    FL_FILE,
    FL_LRU,
    LRU_REFS_MASK,
    LRU_REFS_PGOFF,
    PG_REFERENCED,
    PG_WORKINGSET,
    Mglru,
    MglruConfig,
)
from tests.conftest import run_checked
from tests.test_pagecache import _raw

NR_FRAMES = 64


def _pol(**cfg: Any) -> Mglru:
    return Mglru(MglruConfig(**cfg), NR_FRAMES, Counter(), np.random.default_rng(0), file=True)


class _Host:
    """The reclaimer side a scan of page-cache folios uses: dirty and write-back flags per
    frame, PG_reclaim marks, and the folios dropped through ``__remove_mapping``."""

    def __init__(self) -> None:
        self.dirty = np.zeros(NR_FRAMES, dtype=np.bool_)
        self.writeback = np.zeros(NR_FRAMES, dtype=np.bool_)
        self.reclaim = np.zeros(NR_FRAMES, dtype=np.bool_)
        self.removed: list[int] = []
        self.pol: Mglru | None = None

    def folio_test_dirty(self, pfns: np.ndarray) -> np.ndarray:
        return self.dirty[pfns]

    def folio_test_writeback(self, pfns: np.ndarray) -> np.ndarray:
        return self.writeback[pfns]

    def folio_set_reclaim(self, pfns: np.ndarray) -> None:
        self.reclaim[pfns] = True

    def remove_file_folios(self, pfns: np.ndarray, sc: ScanControl) -> None:
        assert self.pol is not None
        assert not (self.dirty[pfns] | self.writeback[pfns]).any(), "dropped file data"
        self.pol.workingset_eviction(pfns)
        self.removed.extend(pfns.tolist())
        sc.freed(len(pfns), file=True)

    def can_swap(self) -> bool:
        return True

    def nr_swap_pages(self) -> int:
        return 1 << 20

    def walk_mm(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)

    def now(self) -> int:
        return 0


def _add_file(pol: Mglru, pfns: list[int], reads: int = 1) -> None:
    """Read folios into the page cache (``filemap_add_folio`` + ``folio_mark_accessed``),
    ``reads`` reads each, and drain the lru_add batch."""
    for p in pfns:
        pol.file_add_lru(p, None, True)
        for _ in range(reads):
            pol.folio_mark_accessed(p)
    pol._lru_add_drain()


def _add_anon(pol: Mglru, pfns: list[int]) -> None:
    for p in pfns:
        pol.folio_add_lru(p, None)
    pol._lru_add_drain()


def test_type_to_scan_compares_refault_rates_weighted_by_swappiness() -> None:
    """Anon refaults 100 of 1000 (10%), file 200 of 1000 (20%). ``positive_ctrl_err`` picks
    file when file.refaulted * (anon.total + 64) * anon.gain <= (anon.refaulted + 1) *
    file.total * file.gain."""
    pol = _pol()
    a, f = pol.types[ANON], pol.types[FILE]
    a.avg_refaulted[0], a.avg_total[0] = 100, 1000
    f.avg_refaulted[0], f.avg_total[0] = 200, 1000
    # 60: 200 * 1064 * 60 = 12,768,000 <= 101 * 1000 * 140 = 14,140,000 -> file
    assert pol.get_type_to_scan(60) == FILE
    # 120: 200 * 1064 * 120 = 25,536,000 > 101 * 1000 * 80 = 8,080,000 -> anon
    assert pol.get_type_to_scan(120) == ANON
    # file refaulting 30%: 300 * 1064 * 60 = 19,152,000 > 14,140,000 -> anon even at 60
    f.avg_refaulted[0] = 300
    assert pol.get_type_to_scan(60) == ANON
    # the tiers are summed: the same refaults spread over tiers 0 and 3 count alike
    f.avg_refaulted[0], f.refaulted[3] = 100, 200
    assert pol.get_type_to_scan(60) == ANON
    # fewer than MIN_LRU_BATCH file refaults: file
    f.avg_refaulted[0], f.refaulted[3] = 63, 0
    assert pol.get_type_to_scan(100) == FILE
    # the ends of the range decide without the controller
    f.avg_refaulted[0] = 10_000
    assert pol.get_type_to_scan(0) == pol.get_type_to_scan(1) == FILE
    a.avg_refaulted[0] = 10_000
    assert pol.get_type_to_scan(200) == ANON


def test_page_cache_joins_the_oldest_generation_and_anon_a_young_one() -> None:
    """``lru_gen_folio_seq``: a read is not a fault, so a page-cache folio is not PG_active
    and joins ``max_seq - 3`` (here min_seq[file] = 0); a faulted-in anon folio joins
    ``max_seq - 1``."""
    pol = _pol()
    _add_file(pol, [0, 1])
    _add_anon(pol, [2])
    assert pol.max_seq == 3
    assert pol.seq[[0, 1]].tolist() == [0, 0]
    assert pol.seq[2] == 2
    assert pol.types[FILE].nr_pages.tolist() == [2, 0, 0, 0]
    assert pol.types[ANON].nr_pages.tolist() == [0, 0, 1, 0]
    assert pol.lru_sizes() == {
        "gen0": 0,
        "gen1": 1,
        "gen2": 0,
        "gen3": 0,
        "active_file": 0,
        "inactive_file": 2,
        "active": 1,
        "inactive": 0,
    }


def test_min_seq_advances_per_type_and_neither_runs_ahead() -> None:
    """``try_to_inc_min_seq``: anon's generations 0 and 1 are empty, file's 0 is not. Anon
    alone would reach 2 (= max_seq - 1), but with file still at 0 it stops at max_seq - 2 = 1;
    once file's oldest generation empties both reach 2. At swappiness 0 only file moves."""
    pol = _pol()
    _add_file(pol, [0, 1])
    _add_anon(pol, [2])
    pol.types[FILE].refaulted[0] = 10
    assert pol._try_to_inc_min_seq(60)
    assert [g.min_seq for g in pol.types] == [1, 0]
    assert pol.types[FILE].refaulted[0] == 10  # file's min_seq did not move: no reset
    assert pol.types[ANON].avg_refaulted[0] == 0
    assert not pol._try_to_inc_min_seq(60)  # nothing more to skip
    pol.folio_remove(np.array([0, 1]))
    assert pol._try_to_inc_min_seq(0)
    assert [g.min_seq for g in pol.types] == [1, 2]  # swappiness 0: anon not evictable
    assert pol.types[FILE].avg_refaulted[0] == 5  # reset_ctrl_pos folded file's counts
    assert pol._try_to_inc_min_seq(60)
    assert [g.min_seq for g in pol.types] == [2, 2]


def test_aging_pushes_each_full_type_and_swappiness_0_inverts_anon() -> None:
    """``inc_max_seq`` with four generations in both types: each type's oldest generation
    moves into the next (refs cleared, counted protected); at swappiness 0 anon's oldest
    folios are left where they are and become the youngest."""
    pol = _pol()
    _add_file(pol, [0], reads=3)  # PG_referenced + 2 refs: tier 2
    _add_anon(pol, [1])
    _to_oldest(pol, 1)
    host = _Host()
    assert pol._inc_max_seq(3, host, 60)  # type: ignore[arg-type]
    assert pol.max_seq == 4
    assert [g.min_seq for g in pol.types] == [1, 1]
    assert pol.seq[[0, 1]].tolist() == [1, 1]
    assert not pol.fl[0] & (PG_REFERENCED | LRU_REFS_MASK)
    assert pol.vmstat["mglru_protected"] == 2  # one per type, then folded into the averages
    pol._inc_max_seq(4, host, 0)  # type: ignore[arg-type]
    assert [g.min_seq for g in pol.types] == [2, 2]
    assert pol.seq[0] == 2  # file still sorted
    assert pol.seq[1] == 5 == pol.max_seq  # anon's oldest became the youngest
    pol.check(_tracked(pol))


def _to_oldest(pol: Mglru, pfn: int) -> None:
    """Move an anon folio from max_seq - 1 (where a fault puts it) to generation 0."""
    pol.lists[2].remove(np.array([pfn]))
    pol._set_seq(np.array([pfn]), 0)
    pol.lists[0].add_tail(np.array([pfn]))


@pytest.mark.parametrize(
    ("swappiness", "anon_oldest", "isolated"),
    [(200, True, [2]), (0, True, [0, 1]), (200, False, [0, 1]), (1, True, [0, 1])],
)
def test_isolate_folios_scans_the_chosen_type_then_the_other(
    swappiness: int, anon_oldest: bool, isolated: list[int]
) -> None:
    """Both types have folios in generation 0: swappiness 200 takes anon, 1 and 0 file; with
    anon's oldest generation empty, 200 falls back to file."""
    pol = _pol()
    _add_file(pol, [0, 1])
    _add_anon(pol, [2])
    if anon_oldest:
        _to_oldest(pol, 2)
    host = _Host()
    scanned, iso, type_ = pol._isolate_folios(64, ScanControl(nr_to_reclaim=32), host, swappiness)  # type: ignore[arg-type]
    assert sorted(iso.tolist()) == isolated
    assert type_ == (ANON if isolated == [2] else FILE)
    assert scanned == len(isolated)


def _tracked(pol: Mglru) -> np.ndarray:
    on = np.zeros(NR_FRAMES, dtype=np.bool_)
    on[pol.seq >= 0] = True
    return on


def test_scan_drops_clean_file_folios_and_leaves_dirty_ones_to_the_flusher() -> None:
    """``sort_folio`` on file's oldest generation: a dirty folio and one under write-back go
    to min_seq + 1 with PG_reclaim (reclaim writes no file data); a folio read three times
    (tier 2) is protected, as file's tier 1 refaults 20% against tier 0's 1% (tier_idx 0); the
    clean rest is isolated and, unmapped, reclaimed through ``__remove_mapping`` (no I/O),
    each counted by type. Then file's emptied oldest generation is skipped (min_seq 1) and
    anon's empty ones too (2)."""
    pol = _pol()
    host = _Host()
    host.pol = pol
    a, f = pol.types[ANON], pol.types[FILE]
    a.avg_refaulted[0], a.avg_total[0] = 500, 1000  # anon refaults more: file is scanned
    f.avg_refaulted[:2], f.avg_total[:2] = [10, 200], [1000, 1000]
    assert pol.get_type_to_scan(60) == FILE
    assert pol.get_tier_idx(FILE) == 0
    _add_file(pol, [0, 1, 2, 3, 4])
    pol.folio_mark_accessed(4)
    pol.folio_mark_accessed(4)  # refs 3: tier order_base_2(3) = 2
    host.dirty[1] = True
    host.writeback[2] = True
    pol.vmstat.update({"pgscan_file": 0, "pgsteal_file": 0, "pgscan_anon": 0})
    sc = ScanControl(nr_to_reclaim=32, priority=0, vmstat=pol.vmstat)  # type: ignore[arg-type]
    scanned = pol._evict_folios(64, sc, host, 60)  # type: ignore[arg-type]
    assert scanned == 5 + 1  # and try_to_inc_min_seq moved
    assert [g.min_seq for g in pol.types] == [2, 1]
    assert sorted(host.removed) == [0, 3]
    assert host.reclaim.tolist()[:5] == [False, True, True, False, False]
    assert pol.seq[[1, 2, 4]].tolist() == [1, 1, 1]
    assert pol.vmstat["pgscan_file"] == pol.vmstat["pgsteal_file"] == 2
    assert pol.vmstat["pgscan_anon"] == 0
    assert sc.nr_reclaimed == 2
    assert sc.nr_scanned == 2
    assert sc.nr_refill == 3
    assert pol.types[FILE].evicted == [2, 0, 0, 0]  # refs 1 (PG_referenced only): tier 0
    assert pol.vmstat["mglru_protected"] == 1


@pytest.mark.parametrize("workingset", [True, False])
def test_file_refault_restores_tier_or_workingset_without_activation(workingset: bool) -> None:
    """``lru_gen_refault`` for a read: a recent shadow counts ``workingset_refault_file`` and
    the file type's ``refaulted``; PG_workingset comes back from the shadow (restore; the
    folio joins max_seq - 2), otherwise the refs do (oldest generation). A read is not a
    fault: no ``workingset_activate_file``."""
    pol = _pol()
    _add_file(pol, [0], reads=2)  # refs 2
    if workingset:
        pol.fl[0] |= np.uint8(PG_WORKINGSET)
    _, iso = pol._scan_folios(64, ScanControl(nr_to_reclaim=1), _Host(), 3, FILE)  # type: ignore[arg-type]
    assert iso.tolist() == [0]
    shadow = int(pol.workingset_eviction(iso)[0])
    assert pol.types[FILE].evicted == ([0, 0, 0, 1] if workingset else [0, 1, 0, 0])
    pol.file_add_lru(5, shadow, True)
    vs = pol.vmstat
    assert vs["workingset_refault_file"] == 1
    assert vs["workingset_activate_file"] == 0
    assert vs["workingset_restore_file"] == int(workingset)
    assert pol.types[FILE].refaulted == ([0, 0, 0, 1] if workingset else [0, 1, 0, 0])
    assert pol.fl[5] & FL_FILE
    if workingset:
        assert pol.fl[5] & PG_WORKINGSET
    else:
        assert (int(pol.fl[5]) & LRU_REFS_MASK) >> LRU_REFS_PGOFF == 1
    pol._lru_add_drain()
    assert pol.seq[5] == (1 if workingset else 0)
    assert vs["workingset_refault_anon"] == 0


def _mglru_raw(swappiness: int = 60, **files: Any) -> dict[str, Any]:
    raw = _raw(swappiness, **files)
    raw["reclaim"]["policy"] = "mglru"
    return raw


def _run(raw: dict[str, Any]) -> World:
    w = World(parse_scenario(raw))
    assert run_checked(w, every_ns=20_000_000) >= 10
    return w


def test_page_cache_under_mglru_is_reclaimed_without_io() -> None:
    w = _run(_mglru_raw())
    vs, mem = w.vmstat, w.mem
    assert vs["pgscan_file"] > 0
    assert vs["pgsteal_file"] == vs["pgscan_file"]  # every isolated file folio freed
    assert vs["pgpgout"] == 0  # nothing written: the page cache is clean
    assert vs["workingset_refault_file"] > 0
    assert vs["workingset_activate_file"] == 0  # reads are not faults
    lru = w.policy.lru_sizes()
    assert lru["inactive_file"] + lru["active_file"] == int(mem.nr_resident[-1])


def test_mglru_reclaim_never_writes_a_dirty_file_folio() -> None:
    """With the flusher's period longer than the run, every folio dirtied is dirty at the end
    or was written by the flusher (background write-back, reclaim's wake-ups): the scan sorted
    the dirty ones up a generation (pgrefill) instead of isolating them, so
    ``shrink_folio_list`` never met one (no ``nr_vmscan_immediate_reclaim``, unlike two_list,
    and no ``nr_vmscan_write``)."""
    w = _run(_mglru_raw(write_ratio=0.5, dirty_writeback_ms=10_000))
    vs, mem = w.vmstat, w.mem
    dirty = int(((mem.flags[mem.file_base :] & PG_DIRTY) != 0).sum())
    assert vs["nr_dirtied"] > 0
    assert dirty + vs["pgpgout"] // 4 == vs["nr_dirtied"]
    assert vs["nr_vmscan_immediate_reclaim"] == 0
    assert vs["nr_vmscan_write"] == 0
    assert vs["pgrefill"] > 0


def test_swappiness_0_scans_no_anon_and_200_scans_anon_first() -> None:
    """Dirty page cache keeps file's oldest generation emptying, so aging runs and both
    types become scannable: swappiness 0 never touches anon, 200 scans anon first. The dirty
    limits are raised so that background write-back does not clean the cache first (at the
    defaults this host's 16 MiB keep dirty data low and MGLRU never needs to age)."""
    runs = {}
    for s in (0, 200):
        raw = _mglru_raw(s, write_ratio=0.5, dirty_writeback_ms=20, dirty_expire_ms=10)
        raw["host"].update(dirty_ratio=100, dirty_background_ratio=99)
        vs = _run(raw).vmstat
        runs[s] = (vs["pgscan_anon"], vs["pgscan_file"], vs["pswpout"])
    assert runs[0][0] == runs[0][2] == 0
    assert runs[200][0] > 0
    assert runs[200][2] > 0


def test_same_seed_gives_the_same_run() -> None:
    raw = _mglru_raw(write_ratio=0.3, dirty_writeback_ms=20, dirty_expire_ms=10)
    a, b = _run(raw), _run(raw)
    assert dict(a.vmstat) == dict(b.vmstat)
    assert (a.mem.pfn == b.mem.pfn).all()
    assert a.policy.lru_sizes() == b.policy.lru_sizes()


class _FullHost(_Host):
    """Enough of the host for eviction of both types: anon folios are young per ``young``,
    and ``shrink_folio_list`` frees every victim (a synchronous device)."""

    def __init__(self) -> None:
        super().__init__()
        self.young = np.zeros(NR_FRAMES, dtype=np.bool_)
        self.freed_anon = 0

    def folio_scanned(self, pfns: np.ndarray) -> None:
        """No eviction log here: nothing to count."""

    def clear_young(self, pfns: np.ndarray, sc: ScanControl) -> np.ndarray:
        y = self.young[pfns].copy()
        self.young[pfns] = False
        return y

    def lookaround(self, pfn: int, window: int = 64) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)

    def shrink_folio_list(self, pfns: np.ndarray, sc: ScanControl) -> np.ndarray:
        assert self.pol is not None
        self.pol.workingset_eviction(pfns)
        sc.freed(len(pfns))
        self.freed_anon += len(pfns)
        return np.zeros(len(pfns), dtype=np.int8)  # Outcome.FREED

    def activate_locked(self, pfns: np.ndarray) -> None:
        """Nothing to free: no swap cache here."""


OPS = st.lists(
    st.tuples(
        st.sampled_from(["anon", "file", "touch", "young", "dirty", "clean", "evict", "age"]),
        st.integers(0, 7),  # few frames: the same folio comes up again and again
        st.sampled_from([0, 1, 60, 200]),
    ),
    min_size=10,
    max_size=120,
)


@settings(max_examples=100, deadline=None)
@given(ops=OPS, one_step=st.booleans())
def test_both_types_stay_consistent_under_any_sequence(
    ops: list[tuple[str, int, int]], one_step: bool
) -> None:
    """Adds of both types, reads, dirtying, young bits, evictions and agings at any
    swappiness (0 being also what a full swap gives): the generation windows, lists, counts
    and flags stay consistent; every file folio isolated is freed, and the per-type counts
    match the folios freed."""
    pol = _pol(promotion="one_step" if one_step else "two_step")
    host = _FullHost()
    host.pol = pol
    resident = np.zeros(NR_FRAMES, dtype=np.bool_)
    for op, pfn, swappiness in ops:
        if op in ("anon", "file") and not resident[pfn]:
            if op == "anon":
                pol.folio_add_lru(pfn, None)
            else:
                pol.file_add_lru(pfn, None, True)
                pol.folio_mark_accessed(pfn)
            resident[pfn] = True
        elif op == "touch" and resident[pfn]:
            pol.folio_mark_accessed(pfn)
        elif op == "young":
            host.young[pfn] = True
        elif op in ("dirty", "clean"):
            host.dirty[pfn] = op == "dirty"
        elif op == "evict":
            pol._lru_add_drain()
            sc = ScanControl(nr_to_reclaim=32, priority=0, vmstat=pol.vmstat)  # type: ignore[arg-type]
            pol._evict_folios(64, sc, host, swappiness)  # type: ignore[arg-type]
        elif op == "age":
            pol._lru_add_drain()
            pol._inc_max_seq(pol.max_seq, host, swappiness)  # type: ignore[arg-type]
        resident[(pol.fl & (FL_LRU | FL_BATCH)) == 0] = False
        pol.check(resident)
    vs = pol.vmstat
    assert vs["pgscan_file"] == vs["pgsteal_file"] == len(host.removed)
    assert vs["pgsteal_anon"] == host.freed_anon
