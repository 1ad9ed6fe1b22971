"""Classic Linux page reclaim: the active/inactive anon lists (the "two-list" LRU).

Models
    The split LRU of an anon-only lruvec (guest RAM is anonymous memory). New and swapped-in
    folios are added to the inactive list (since 5.9), but a KVM fault references the page twice
    on the host side (GUP's FOLL_TOUCH, then ``kvm_release_page_*`` -> ``mark_page_accessed``),
    and the second ``folio_mark_accessed`` activates it while it is still in the per-CPU add
    batch, so guest pages faulted in through KVM's slow path start on the active list (a
    folio already on the inactive list moves to the active head, ``folio_activate``). A reclaim
    pass scans ``lru_size >> priority`` pages per list (scaled by ``get_scan_count``'s balance)
    in batches of SWAP_CLUSTER_MAX pages (``isolate_lru_folios``: a large folio, host.thp,
    uses ``folio_nr_pages`` of a batch; list sizes count pages, ``update_lru_size``); every
    inactive folio gets ``folio_check_references``: with one mapping (QEMU's pte, OR-ed with
    KVM's sptes through the notifier chain) a first sighting
    sets PG_referenced and keeps it (second chance at the inactive head), a sighting of a folio
    already PG_referenced activates it (keeping the flag), and no sighting reclaims it. Active
    folios are deactivated whenever the active list is scanned, referenced or not (anon), which
    happens when the inactive list is "low" (``inactive * int_sqrt(10 * GB) < active``) or when
    refaults were activated since the last reclaim cycle. Refault distance (mm/workingset.c)
    decides whether a swapped-in folio starts active.

    Write-back: ``shrink_folio_list`` activates folios it finds under write-out (before their
    reference check); a folio whose write it started goes back to the inactive head, not
    referenced, and when the write ends ``folio_rotate_reclaimable`` moves it to the inactive
    tail (clearing active), where the next scan frees it.

    Scan balance with no file pages (sim/reclaim/scan_balance.py): in global reclaim
    ``prepare_scan_control`` finds the file lists "tiny" and scans anon only (SCAN_ANON) unless
    anon deactivation is due, in which case ``get_scan_count`` takes the SCAN_FRACT path and
    scans ``swappiness``-weighted shares against a file cost of 0 (about 18-30% of the nominal
    target at swappiness 60); memcg limit reclaim (no ``file_is_tiny`` there) always takes
    SCAN_FRACT, and at swappiness 0 scans no anon at all (SCAN_FILE); priority 0 scans everything
    (SCAN_EQUAL). ``lru_note_cost`` keeps the decaying reclaim costs that weighting uses.

Kernel reference
    mm/vmscan.c: ``shrink_lruvec``, ``shrink_inactive_list``, ``shrink_active_list``,
    ``folio_check_references``, ``inactive_is_low``, ``prepare_scan_control``,
    ``kswapd_age_node``, ``get_scan_count``, ``calculate_pressure_balance``; mm/swap.c:
    ``folio_mark_accessed``, ``lru_note_cost``; mm/workingset.c: ``workingset_eviction``,
    ``workingset_refault``.

    With memcgs (sim/reclaim/memcg.py) there is one such lruvec per memcg, each with its own
    lists, ``inactive_is_low``, workingset clock and refault snapshot, counting its events
    per memcg too; ``get_scan_count`` then scales a protected memcg's scan as
    ``apply_proportional_protection`` does. With lazy memcg statistics (``host.memcg_stats``)
    a memcg's lruvec answers what the kernel reads through ``lruvec_page_state`` from the
    counters of its last rstat flush (:class:`LruvecStats`): ``inactive_is_low`` and the
    refault test of ``prepare_scan_control`` in limit reclaim, the end-of-``shrink_lruvec``
    rebalance, the workingset size of ``workingset_test_recent``; the scan sizes
    (``lruvec_lru_size``) stay exact, as do the stand-ins for the root's decisions (global
    reclaim's ``may_deactivate``, ``kswapd_age_node``) and a lruvec of no memcg.

    The host page cache (``host_files``, sim/host/filemap.py) adds the inactive and active
    file lists to the node's lruvec (with memcgs, to every memcg's lruvec: a file folio is on
    the lruvec of the memcg its file is charged to, the root's or a VM's; memcg limit reclaim
    has no ``file_is_tiny`` and at swappiness 0 scans file only, and protection scales the
    file lists too): ``get_scan_count`` then balances anon against file
    (``file_is_tiny``, ``cache_trim_mode``, SCAN_FRACT by swappiness and the costs, each share
    floored), ``shrink_lruvec`` takes batches from the four lists in turn and, once the
    target is met, stops the smaller type and cuts the other to the same fraction. Page-cache
    folios are unmapped: the second ``folio_mark_accessed`` activates them, reclaim frees every
    inactive one it isolates (clean: no I/O) and deactivates every active one it scans; a
    refault within the workingset (active file, plus anon while swap has room) starts active.
    With file lists the page-cache counters (``workingset_*_file``, ``pgpgin``, ...) are kept
    too; ``pgscan_anon``/``_file`` and ``pgsteal_*`` are counted for every run (ScanControl).

Simplifications
    Without a page cache shrink_lruvec stops as soon as the target is met (no file to
    rebalance). SCAN_FRACT floors every share, as the kernel does for an online memcg
    (``div64_u64``; every memcg here is online, and with memcg off ``mem_cgroup_online`` is
    true). The page cache is two_list only.
    Shadow entries keep 31 bits of the nonresident-age clock (no bucket_order).
    The per-CPU activate batch is drained at once (a folio activated on the inactive list moves
    to the active head immediately).

Invariants
    Each folio the policy tracks is on exactly one list, and its flag names that list; each
    list's size is ``folio_nr_pages`` summed over its folios.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import numba
import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from sim.host.memcontrol import apply_proportional_protection
from sim.host.memory import DEF_PRIORITY, PAGE_SHIFT, SWAP_CLUSTER_MAX, int_sqrt
from sim.host.vmscan import Outcome, ScanControl
from sim.host.vmstat import VmStat
from sim.reclaim.base import LruLinks, PageQueue, Pfns, ReclaimBase, Reclaimer, lru_links
from sim.reclaim.scan_balance import (
    ScanBalance,
    cache_trim_mode,
    calculate_pressure_balance,
    file_is_tiny,
    lru_note_cost,
    scan_balance,
)

LRU_INACTIVE = 0x1
LRU_ACTIVE = 0x2
PG_REFERENCED = 0x4
PG_WORKINGSET = 0x8
LRU_FILE = 0x10  # a page-cache folio: on the file lists
_LRU = np.uint8(LRU_INACTIVE | LRU_ACTIVE)
_AGE_MASK = 0x7FFFFFFF
_PGACTIVATE = VmStat.PGACTIVATE.value
# /proc/vmstat's page-cache counters: kept only on hosts with a page cache (FILE_EVENTS)
WORKINGSET_REFAULT_FILE = "workingset_refault_file"
WORKINGSET_ACTIVATE_FILE = "workingset_activate_file"
WORKINGSET_RESTORE_FILE = "workingset_restore_file"
PGPGIN = "pgpgin"  # KiB read from block devices (vmstat shows pgpgin in KiB)
PGPGOUT = "pgpgout"  # KiB written to block devices by the flusher
NR_DIRTIED = "nr_dirtied"  # folios dirtied (folio_account_dirtied)
NR_WRITTEN = "nr_written"  # folios whose write-back ended (__folio_end_writeback)
NR_VMSCAN_IMMEDIATE = "nr_vmscan_immediate_reclaim"  # dirty file folios reclaim met
FILE_EVENTS = (
    WORKINGSET_REFAULT_FILE,
    WORKINGSET_ACTIVATE_FILE,
    WORKINGSET_RESTORE_FILE,
    PGPGIN,
    PGPGOUT,
    NR_DIRTIED,
    NR_WRITTEN,
    NR_VMSCAN_IMMEDIATE,
)


class ReclaimCore(Protocol):
    """A compiled stand-in for this lruvec's list scanners (sim/core.py): does the same as
    :meth:`TwoList.shrink_inactive_list` / :meth:`TwoList.shrink_active_list` with
    a reclaimer it :meth:`takes`, or returns False having changed nothing."""

    def takes(self, reclaim: Reclaimer) -> bool: ...

    def shrink_inactive_list(self, lru: TwoList, n: int, sc: ScanControl) -> bool: ...

    def shrink_active_list(self, lru: TwoList, n: int, sc: ScanControl) -> bool: ...


class FolioSizes(Protocol):
    """``folio_nr_pages`` where some folios are large (host.thp: sim/host/huge_memory.py)."""

    def nr_pages(self, pfns: Pfns) -> int: ...

    def nr_pages_each(self, pfns: Pfns) -> NDArray[np.int64]: ...

    def folio_nr_pages(self, pfn: int) -> int: ...


def inactive_is_low(inactive: int, active: int, inactive_ratio: int | None) -> bool:
    """``inactive_is_low``: ``inactive * ratio < active``, the ratio ``int_sqrt(10 * GB)`` of
    the two lists' 4 KiB pages (or the configured one)."""
    if inactive_ratio is not None:
        ratio = inactive_ratio
    else:
        gb = (inactive + active) >> (30 - PAGE_SHIFT)
        ratio = int_sqrt(10 * gb) if gb else 1
    return inactive * ratio < active


@dataclass(frozen=True, slots=True)
class ScanPrep:
    """``prepare_scan_control``'s decisions, taken once per pass from the target lruvec: in
    global reclaim with memcgs the root's, whose sizes, refaults and costs are the node's
    (hierarchical), and used by every memcg's ``get_scan_count``."""

    may_anon: bool  # sc->may_deactivate & DEACTIVATE_ANON
    may_file: bool  # sc->may_deactivate & DEACTIVATE_FILE
    file_is_tiny: bool
    cache_trim_mode: bool
    anon_cost: int  # sc->anon_cost (the target lruvec's)
    file_cost: int


@dataclass(slots=True)
class LruvecStats:
    """A memcg lruvec's counters as ``lruvec_page_state`` returns them: the values at the
    memcg's last rstat flush (``mem_cgroup_flush_stats``), not the lists' current sizes, and
    the refault snapshot limit reclaim keeps of them (``snapshot_refaults``)."""

    inactive: int = 0  # NR_INACTIVE_ANON
    active: int = 0  # NR_ACTIVE_ANON
    inactive_file: int = 0  # NR_INACTIVE_FILE
    active_file: int = 0  # NR_ACTIVE_FILE
    activate: int = 0  # WORKINGSET_ACTIVATE_ANON
    activate_file: int = 0  # WORKINGSET_ACTIVATE_FILE
    refaults: int = 0  # lruvec->refaults[WORKINGSET_ANON], as limit reclaim last stored it
    refaults_file: int = 0  # lruvec->refaults[WORKINGSET_FILE]


class NodeCost:
    """The root lruvec's reclaim costs: ``lru_note_cost`` adds every lruvec's cost to its
    parents' too, each decaying against its own (hierarchical) LRU size, here the node's."""

    def __init__(self, lru_pages: Callable[[], int]) -> None:
        self.anon_cost = self.file_cost = 0
        self._lru_pages = lru_pages

    def note(self, *, file: bool, nr_io: int, nr_rotated: int) -> None:
        """One batch's cost, as a child lruvec noted it."""
        self.anon_cost, self.file_cost = lru_note_cost(
            self.anon_cost,
            self.file_cost,
            file=file,
            nr_io=nr_io,
            nr_rotated=nr_rotated,
            lru_pages=self._lru_pages(),
        )


class TwoListConfig(ReclaimBase):
    """Classic active/inactive LRU (CONFIG_LRU_GEN off)."""

    policy: Literal["two_list"] = "two_list"
    swappiness: int = Field(
        60,
        ge=0,
        le=200,
        description="vm.swappiness: weight of anon in get_scan_count's SCAN_FRACT balance (0-200).",
    )
    inactive_ratio: int | None = Field(
        None,
        ge=1,
        le=10000,
        description="Target active:inactive ratio for inactive_is_low; "
        "default int_sqrt(10 * GB of LRU pages), as the kernel computes it.",
    )


class TwoList:
    """The classic two-list LRU for one anon-only lruvec.

    Args:
        cfg: policy knobs.
        nr_frames: frames on the host (per-frame flags are indexed by pfn).
        vmstat: host counters (pgactivate, workingset_*).
        rng: the policy's generator (unused: the classic LRU is deterministic).
    """

    name: ClassVar[str] = "two_list"
    observes_accesses: ClassVar[bool] = False
    needs_future: ClassVar[bool] = False

    def __init__(
        self,
        cfg: TwoListConfig,
        nr_frames: int,
        vmstat: Counter[str],
        rng: np.random.Generator,
        *,
        links: LruLinks | None = None,
        fl: NDArray[np.uint8] | None = None,
        memcg: int = -1,
        file: bool = False,
    ) -> None:
        self.cfg, self.vmstat = cfg, vmstat
        self.file = file  # the host page cache has its own lists on this lruvec
        self.memcg = memcg  # the memcg (mm) whose lruvec this is; -1: the node's only one
        self.fl = np.zeros(nr_frames, dtype=np.uint8) if fl is None else fl
        if links is None:  # a folio is on one list at a time: shared links
            links = lru_links(nr_frames, 4 if file else 2)
        self.inactive = PageQueue(links)
        self.active = PageQueue(links)
        self.inactive_file = PageQueue(links) if file else self.inactive
        self.active_file = PageQueue(links) if file else self.active
        self._refaults_file_snapshot = 0  # WORKINGSET_ACTIVATE_FILE at the last reclaim cycle
        self.nonresident_age = 0  # lruvec->nonresident_age (workingset clock)
        self.anon_cost = 0  # lruvec->anon_cost (lru_note_cost)
        self.file_cost = 0  # lruvec->file_cost: no file lists, so it stays 0
        self._refaults_snapshot = 0  # WORKINGSET_ACTIVATE at the last reclaim cycle
        self.cost_parent: NodeCost | None = None  # the root's costs, with memcgs and file lists
        self.prep: ScanPrep | None = None  # the root's decisions during a global reclaim pass
        # lazy memcg statistics (host.memcg_stats lazy): the last flush's values; None: exact
        self.stats: LruvecStats | None = None
        # the compiled reclaim batch (sim/core.py), set by the world when it can take it
        self.core: ReclaimCore | None = None
        # ``folio_nr_pages`` when some folios are large (host.thp); None: every folio one page
        self.folios: FolioSizes | None = None
        # pages beyond one per folio on the inactive and active anon lists (a large folio's
        # tails): list sizes count pages (update_lru_size by folio_nr_pages); 0 without THP
        self.big_inactive = self.big_active = 0

    # -- helpers -----------------------------------------------------------------------------
    @property
    def nr_inactive(self) -> int:
        """``lruvec_lru_size(LRU_INACTIVE_ANON)``: pages on the inactive anon list."""
        return len(self.inactive) + self.big_inactive

    @property
    def nr_active(self) -> int:
        """``lruvec_lru_size(LRU_ACTIVE_ANON)``: pages on the active anon list."""
        return len(self.active) + self.big_active

    def _count(self, item: str, n: int = 1) -> None:
        """``count_vm_events``, or ``count_memcg_events`` for a memcg's lruvec."""
        if self.memcg < 0:
            self.vmstat[item] += n
        else:
            self.vmstat.count(item, n, self.memcg)  # type: ignore[attr-defined]

    def _refaults(self) -> int:
        """The lruvec's WORKINGSET_ACTIVATE (``lruvec_page_state``), for snapshot_refaults."""
        if self.memcg < 0:
            return self.vmstat[VmStat.WORKINGSET_ACTIVATE]
        return self.vmstat.per_mm[self.memcg][VmStat.WORKINGSET_ACTIVATE]  # type: ignore[attr-defined]

    def _refaults_file(self) -> int:
        """The lruvec's WORKINGSET_ACTIVATE_FILE, for snapshot_refaults."""
        if self.memcg < 0:
            return self.vmstat[WORKINGSET_ACTIVATE_FILE]
        return self.vmstat.per_mm[self.memcg][WORKINGSET_ACTIVATE_FILE]  # type: ignore[attr-defined]

    def inactive_is_low(self, file: bool = False, flushed: bool = False) -> bool:
        """``inactive_is_low``: the (anon or file) inactive list is short relative to its
        active one. ``flushed``: read the sizes as ``lruvec_page_state`` does, which with lazy
        memcg statistics gives the last flush's (callers standing in for the root's test
        read the lists)."""
        st = self.stats if flushed else None
        if st is not None:
            inactive, active = (
                (st.inactive_file, st.active_file) if file else (st.inactive, st.active)
            )
        elif file:
            inactive, active = len(self.inactive_file), len(self.active_file)
        else:
            inactive, active = self.nr_inactive, self.nr_active
        return inactive_is_low(inactive, active, self.cfg.inactive_ratio)

    def flush_stats(self) -> None:
        """An rstat flush of the memcg (``mem_cgroup_flush_stats``): ``lruvec_page_state``
        reads the lists and refault counts as they are now, until the next flush."""
        st = self.stats
        if st is None:
            return
        st.inactive, st.active = self.nr_inactive, self.nr_active
        st.activate = self._refaults()
        if self.file:
            st.inactive_file, st.active_file = len(self.inactive_file), len(self.active_file)
            st.activate_file = self._refaults_file()

    def snapshot_refaults(self) -> None:
        """``snapshot_refaults`` at the end of limit reclaim of this memcg (lazy statistics
        only): the flushed refault counts, which the next limit reclaim compares against."""
        st = self.stats
        if st is not None:
            st.refaults, st.refaults_file = st.activate, st.activate_file

    def _limit_stats(self, sc: ScanControl) -> LruvecStats | None:
        """The flushed counters ``prepare_scan_control`` reads when this memcg's lruvec is
        the target (limit reclaim with lazy statistics); None: read the lists (exact
        statistics, or global reclaim, whose target is the root's lruvec)."""
        return self.stats if sc.target_memcg >= 0 else None

    def _may_deactivate(self, sc: ScanControl) -> tuple[bool, bool]:
        """``prepare_scan_control``'s ``may_deactivate`` (anon, file): refaults activated
        since the last snapshot, or an inactive list that is low."""
        st = self._limit_stats(sc)
        if st is None:
            may_anon = self._refaults() != self._refaults_snapshot or self.inactive_is_low()
            may_file = self.file and (
                self._refaults_file() != self._refaults_file_snapshot
                or self.inactive_is_low(file=True)
            )
        else:
            may_anon = st.activate != st.refaults or self.inactive_is_low(flushed=True)
            may_file = self.file and (
                st.activate_file != st.refaults_file or self.inactive_is_low(True, True)
            )
        return may_anon, may_file

    def _workingset_lists(self) -> tuple[int, int, int, int]:
        """The list sizes ``workingset_test_recent`` reads (``lruvec_page_state``: the last
        flush's with lazy memcg statistics): inactive/active anon, inactive/active file."""
        st = self.stats
        if st is not None:
            return st.inactive, st.active, st.inactive_file, st.active_file
        return self.nr_inactive, self.nr_active, len(self.inactive_file), len(self.active_file)

    def _note_cost(self, *, file: bool, nr_io: int, nr_rotated: int, lru_pages: int) -> None:
        """``lru_note_cost`` on this lruvec, then on its parent (the root's costs)."""
        self.anon_cost, self.file_cost = lru_note_cost(
            self.anon_cost,
            self.file_cost,
            file=file,
            nr_io=nr_io,
            nr_rotated=nr_rotated,
            lru_pages=lru_pages,
        )
        if self.cost_parent is not None:
            self.cost_parent.note(file=file, nr_io=nr_io, nr_rotated=nr_rotated)

    def _lru_note_cost(self, nr_io: int, nr_rotated: int) -> None:
        """``lru_note_cost`` for anon (scan_balance.py): IO weighs SWAP_CLUSTER_MAX rotations;
        both costs halve once they exceed a quarter of the LRU."""
        self._note_cost(
            file=False,
            nr_io=nr_io,
            nr_rotated=nr_rotated,
            lru_pages=self._lru_pages() if self.file else self.nr_inactive + self.nr_active,
        )

    def get_scan_count(
        self, sc: ScanControl, reclaim: Reclaimer, may_deactivate: bool
    ) -> tuple[int, int]:
        """``get_scan_count`` for the two anon lists: folios to scan from (inactive, active).

        The balance and SCAN_FRACT's fractions are sim/reclaim/scan_balance.py's, here with no
        file lists (file size and ``file_cost`` 0, so never cache trim mode).
        """
        swappiness = self.cfg.swappiness
        balance = scan_balance(
            can_reclaim_anon=reclaim.can_swap(),
            cgroup_reclaim=sc.target_memcg >= 0,
            swappiness=swappiness,
            priority=sc.priority,
            file_is_tiny=False,
            cache_trim_mode=False,
        )
        if balance == ScanBalance.SCAN_FILE:
            return 0, 0  # anon is not reclaimable, or memcg reclaim at swappiness 0
        inactive, active = self.nr_inactive, self.nr_active
        if sc.emin or sc.elow:  # a protected memcg: apply_proportional_protection
            inactive, low1 = apply_proportional_protection(
                inactive, sc.emin, sc.elow, sc.cgroup_size, sc.memcg_low_reclaim
            )
            active, low2 = apply_proportional_protection(
                active, sc.emin, sc.elow, sc.cgroup_size, sc.memcg_low_reclaim
            )
            sc.memcg_low_skipped |= low1 or low2
        nr_inactive, nr_active = inactive >> sc.priority, active >> sc.priority
        if balance == ScanBalance.SCAN_FRACT and sc.target_memcg < 0:
            free, high = reclaim.free_and_high()
            tiny = file_is_tiny(
                nr_file=0,
                nr_free=free,
                high_wmark=high,
                may_deactivate_anon=may_deactivate,
                anon_left=nr_inactive > 0,
            )
            if tiny:
                balance = ScanBalance.SCAN_ANON
        if balance != ScanBalance.SCAN_FRACT:
            return nr_inactive, nr_active  # SCAN_EQUAL / SCAN_ANON
        ap, fp = calculate_pressure_balance(swappiness, self.anon_cost, self.file_cost)
        denominator = ap + fp
        return nr_inactive * ap // denominator, nr_active * ap // denominator

    def _nr_pages(self, pfns: Pfns) -> int:
        """Pages in these folios (``folio_nr_pages`` summed: lists and counters count pages)."""
        return len(pfns) if self.folios is None else self.folios.nr_pages(pfns)

    def _nr_one(self, pfn: int) -> int:
        """``folio_nr_pages`` of the anon folio on frame ``pfn``."""
        return 1 if self.folios is None else self.folios.folio_nr_pages(pfn)

    def _isolate(self, active: bool, n: int) -> tuple[Pfns, int]:
        """``isolate_lru_folios`` of ``nr_to_scan`` = ``n`` pages from an anon list's tail:
        folios are taken while fewer than ``n`` pages were scanned (``scan += nr_pages``), so
        a large folio uses ``folio_nr_pages`` of the budget. Returns them and their pages."""
        lst = self.active if active else self.inactive
        if self.folios is None:
            pfns = lst.isolate_tail(n)
            return pfns, len(pfns)
        peek = lst.peek_tail(n)  # each folio is at least one page: at most n are taken
        if len(peek) == 0:
            return peek, 0
        scanned = np.cumsum(self.folios.nr_pages_each(peek))
        k = min(int(np.searchsorted(scanned, n)) + 1, len(peek))
        pfns = lst.isolate_tail(k)
        nr_pages = int(scanned[k - 1])
        if active:
            self.big_active -= nr_pages - k
        else:
            self.big_inactive -= nr_pages - k
        return pfns, nr_pages

    def folio_putback(self, pfns: Pfns, active: bool) -> None:
        """``move_folios_to_lru`` of folios shrink_folio_list split off a large folio."""
        self._putback(pfns, active)

    def folio_test_active(self, pfn: int) -> bool:
        """``folio_test_active``: the folio is on the active list (a split's pages go there)."""
        return bool(self.fl.item(pfn) & LRU_ACTIVE)

    def _putback(self, pfns: Pfns, active: bool) -> int:
        """``move_folios_to_lru``: head of the chosen list; active putbacks age the clock by
        their pages (``workingset_age_nonresident(lruvec, nr_pages)``). Returns the pages."""
        if len(pfns) == 0:
            return 0
        nr_pages = self._nr_pages(pfns)
        if active:
            _set_lru(pfns, self.fl, LRU_ACTIVE)
            self.active.add_head(pfns)
            self.big_active += nr_pages - len(pfns)
            self.nonresident_age += nr_pages
        else:
            _set_lru(pfns, self.fl, LRU_INACTIVE)
            self.inactive.add_head(pfns)
            self.big_inactive += nr_pages - len(pfns)
        return nr_pages

    # -- EvictionPolicy ----------------------------------------------------------------------
    def folio_add_lru(self, pfn: int, shadow: int | None) -> None:
        """New and swapped-in anon folios go to the inactive list, unless a refault is recent
        (``workingset_refault`` counts and ages by the folio's pages)."""
        if shadow is None:
            self.fl[pfn] = LRU_INACTIVE
            self.inactive.add_one(pfn)
            if self.folios is not None:
                self.big_inactive += self.folios.folio_nr_pages(pfn) - 1
            return
        nr = 1 if self.folios is None else self.folios.folio_nr_pages(pfn)
        # workingset_refault: activate if the refault distance fits the workingset (active anon).
        self._count(VmStat.WORKINGSET_REFAULT, nr)
        distance = (self.nonresident_age - (shadow & _AGE_MASK)) & _AGE_MASK
        if self.file or self.stats is not None:
            _, active, inactive_file, active_file = self._workingset_lists()
            workingset_size = active  # workingset_test_recent for anon: + file lists
            if self.file:
                workingset_size += inactive_file + active_file
        else:
            workingset_size = self.nr_active
        if distance <= workingset_size:
            workingset = shadow >> 31
            self.fl[pfn] = LRU_ACTIVE | (PG_WORKINGSET if workingset else 0)
            self.active.add_one(pfn)
            self.big_active += nr - 1
            self.nonresident_age += nr
            self._count(VmStat.WORKINGSET_ACTIVATE, nr)
            if workingset:  # thrashing of the established working set: lru_note_cost_refault
                self._count(VmStat.WORKINGSET_RESTORE, nr)
                self._lru_note_cost(nr, 0)
        else:
            self.fl[pfn] = LRU_INACTIVE
            self.inactive.add_one(pfn)
            self.big_inactive += nr - 1

    def folio_mark_accessed(self, pfn: int) -> None:
        """``folio_mark_accessed``: set PG_referenced, or activate a folio that has it."""
        fl = self.fl.item(pfn)
        if not fl & PG_REFERENCED:
            self.fl[pfn] = fl | PG_REFERENCED
            return
        if fl & LRU_ACTIVE:
            return
        # __lru_cache_activate_folio (still in the add batch) / folio_activate (on the list);
        # then clear referenced, age the clock by the folio's pages
        inactive, active = self.inactive, self.active
        if fl & LRU_FILE:
            inactive, active = self.inactive_file, self.active_file
        nr = 1 if self.folios is None or fl & LRU_FILE else self.folios.folio_nr_pages(pfn)
        if not inactive.take_pending(pfn):
            if not fl & LRU_INACTIVE:
                return  # isolated by reclaim: shrink_folio_list decides
            inactive.unlink(pfn)
            self._count(_PGACTIVATE, nr)
        active.add_one(pfn)
        self.fl[pfn] = (fl & ~(PG_REFERENCED | LRU_INACTIVE)) | LRU_ACTIVE
        self.nonresident_age += nr  # workingset_activation
        if nr > 1:
            self.big_inactive -= nr - 1
            self.big_active += nr - 1

    def folio_add_lru_touched(self, pfns: Pfns) -> None:
        """New anon folios, in order, as the first-touch path leaves each: ``folio_add_lru``
        then ``folio_mark_accessed`` twice (GUP's FOLL_TOUCH, ``kvm_release_faultin_page``),
        which finds the folio still in the add batch and activates it there
        (``__lru_cache_activate_folio``: no pgactivate). Batched for the prefault fill;
        ``tests/test_prefault_batch.py`` holds it equal to the per-folio calls."""
        if len(pfns) == 0:
            return
        self.fl[pfns] = LRU_ACTIVE
        pfns = np.asarray(pfns, dtype=np.int64)
        self.active.add_head(pfns)
        nr_pages = self._nr_pages(pfns)
        self.big_active += nr_pages - len(pfns)
        self.nonresident_age += nr_pages

    def folio_remove(self, pfns: Pfns) -> None:
        """Drop folios from whichever list holds them (their mm exited)."""
        fl = self.fl[pfns]
        anon = (fl & LRU_FILE) == 0
        ina, act = pfns[anon & ((fl & LRU_INACTIVE) != 0)], pfns[anon & ((fl & LRU_ACTIVE) != 0)]
        self.inactive.remove(ina)
        self.active.remove(act)
        if self.folios is not None:
            self.big_inactive -= self._nr_pages(ina) - len(ina)
            self.big_active -= self._nr_pages(act) - len(act)
        if self.file:
            self.inactive_file.remove(pfns[~anon & ((fl & LRU_INACTIVE) != 0)])
            self.active_file.remove(pfns[~anon & ((fl & LRU_ACTIVE) != 0)])
        self.fl[pfns] = 0

    def folio_rotate_reclaimable(self, pfn: int) -> None:
        """``lru_move_tail``: to the inactive tail, not active (``pgrotated``)."""
        fl = self.fl.item(pfn)
        inactive, active = self.inactive, self.active
        if fl & LRU_FILE:
            inactive, active = self.inactive_file, self.active_file
        if fl & LRU_ACTIVE:
            active.unlink(pfn)
            if not fl & LRU_FILE:
                big = self._nr_one(pfn) - 1
                self.big_active -= big
                self.big_inactive += big
        elif fl & LRU_INACTIVE:
            inactive.unlink(pfn)
        else:
            return
        self.fl[pfn] = (fl & ~LRU_ACTIVE) | LRU_INACTIVE
        inactive.add_tail_one(pfn)

    def workingset_eviction(self, pfns: Pfns) -> NDArray[np.uint32]:
        """Shadow = nonresident_age before this eviction, with PG_workingset in the top bit;
        each eviction ages the clock by the folio's pages (``workingset_eviction``)."""
        n = len(pfns)
        if self.folios is None:
            ages = (self.nonresident_age + np.arange(n, dtype=np.int64)) & _AGE_MASK
            self.nonresident_age += n
        else:
            nr = self.folios.nr_pages_each(pfns)
            after = np.cumsum(nr)
            ages = (self.nonresident_age + after - nr) & _AGE_MASK
            self.nonresident_age += int(after[-1]) if n else 0
        ws = (self.fl[pfns] & PG_WORKINGSET) != 0
        self.fl[pfns] = 0
        return (ages | (ws.astype(np.int64) << 31)).astype(np.uint32)

    def shrink_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """``shrink_lruvec`` for the anon lists at ``sc.priority``."""
        if self.file:
            yield from self._shrink_lruvec_file(sc, reclaim)
            return
        may_deactivate = sc.force_deactivate or self._may_deactivate(sc)[0]
        nr_inactive, nr_active = self.get_scan_count(sc, reclaim, may_deactivate)
        proportional = sc.direct and sc.priority == DEF_PRIORITY
        while nr_inactive:
            n = min(nr_inactive, sc.batch)
            nr_inactive -= n
            self.shrink_inactive_list(n, sc, reclaim)
            yield
            if nr_active:
                n = min(nr_active, sc.batch)
                nr_active -= n
                if may_deactivate:
                    self.shrink_active_list(n, sc, reclaim)
                    yield
                else:  # shrink_list: the active list was due a batch
                    sc.skipped_deactivate = True
            if sc.nr_reclaimed - sc.lruvec_base >= sc.nr_to_reclaim and not proportional:
                break
        # "rebalance the anon lru active/inactive ratio": this lruvec's lruvec_page_state
        if reclaim.can_swap() and self.inactive_is_low(flushed=True):
            self.shrink_active_list(SWAP_CLUSTER_MAX, sc, reclaim)
            yield

    def age_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """``kswapd_age_node``: deactivate a batch when the inactive list is low."""
        if reclaim.can_swap() and self.inactive_is_low():
            self.shrink_active_list(SWAP_CLUSTER_MAX, sc, reclaim)
            yield

    def reclaim_cycle_end(self) -> None:
        """``snapshot_refaults``: remember refault activations for ``prepare_scan_control``."""
        self._refaults_snapshot = self._refaults()
        if self.file:
            self._refaults_file_snapshot = self._refaults_file()

    def on_access(self, pfns: Pfns, seq: NDArray[np.int64]) -> None:
        """Real policies see only accessed bits."""

    def set_future(self, next_use: NDArray[np.int64]) -> None:
        """Real policies do not know the future."""

    def lru_sizes(self) -> dict[str, int]:
        """Pages on each list (anon as ``inactive``/``active``; a large folio counts its
        ``folio_nr_pages``, as ``lruvec_lru_size`` does)."""
        sizes = {"inactive": self.nr_inactive, "active": self.nr_active}
        if self.file:
            sizes["inactive_file"] = len(self.inactive_file)
            sizes["active_file"] = len(self.active_file)
        return sizes

    def check(self, on_lru: NDArray[np.bool_]) -> None:
        """Each resident folio on exactly one list, matching its flag; nothing else tracked."""
        ina, act = self.inactive.snapshot(), self.active.snapshot()
        assert len(ina) == len(self.inactive), "inactive list size"
        assert len(act) == len(self.active), "active list size"
        if self.folios is None:
            assert self.big_inactive == self.big_active == 0, "large folios without THP"
        else:  # update_lru_size: each list's size is its folios' folio_nr_pages summed
            assert self.folios.nr_pages(ina) == self.nr_inactive, "inactive size in pages"
            assert self.folios.nr_pages(act) == self.nr_active, "active size in pages"
        both = np.concatenate((ina, act))
        assert not (self.fl[both] & LRU_FILE).any(), "a file folio on an anon list"
        if self.file:
            fi, fa = self.inactive_file.snapshot(), self.active_file.snapshot()
            assert len(fi) == len(self.inactive_file), "inactive file list size"
            assert len(fa) == len(self.active_file), "active file list size"
            assert (self.fl[np.concatenate((fi, fa))] & LRU_FILE).all(), "anon on a file list"
            ina, act = np.concatenate((ina, fi)), np.concatenate((act, fa))
            both = np.concatenate((ina, act))
        assert len(np.unique(both)) == len(both), "a folio is on a list twice"
        tracked = np.zeros(len(on_lru), dtype=np.bool_)
        tracked[both] = True
        assert (tracked == on_lru).all(), "LRU lists disagree with the resident folios"
        assert ((self.fl[ina] & _LRU) == LRU_INACTIVE).all(), "inactive folio flagged otherwise"
        assert ((self.fl[act] & _LRU) == LRU_ACTIVE).all(), "active folio flagged inactive"

    # -- the page cache's lists (sim/host/filemap.py feeds them) ------------------------------
    def file_add_lru(self, pfn: int, shadow: int | None, swap_ok: bool) -> None:
        """``filemap_add_folio`` -> ``folio_add_lru`` of a page-cache folio just read: the
        inactive file list, or the active one when ``workingset_refault`` finds the refault
        distance within the workingset (``workingset_test_recent`` for file: the active file
        list, plus both anon lists while swap has room)."""
        if shadow is None:
            self.fl[pfn] = LRU_INACTIVE | LRU_FILE
            self.inactive_file.add_one(pfn)
            return
        self._count(WORKINGSET_REFAULT_FILE)
        distance = (self.nonresident_age - (shadow & _AGE_MASK)) & _AGE_MASK
        inactive, active, _, active_file = self._workingset_lists()
        workingset_size = active_file
        if swap_ok:
            workingset_size += active + inactive
        if distance > workingset_size:
            self.fl[pfn] = LRU_INACTIVE | LRU_FILE
            self.inactive_file.add_one(pfn)
            return
        workingset = shadow >> 31
        self.fl[pfn] = LRU_ACTIVE | LRU_FILE | (PG_WORKINGSET if workingset else 0)
        self.active_file.add_one(pfn)
        self.nonresident_age += 1
        self._count(WORKINGSET_ACTIVATE_FILE)
        if workingset:  # lru_note_cost_refault: the cost of a file refault
            self._count(WORKINGSET_RESTORE_FILE)
            self._note_cost(file=True, nr_io=1, nr_rotated=0, lru_pages=self._lru_pages())

    def _lru_pages(self) -> int:
        """Pages on all four lists (``lru_note_cost``'s lrusize)."""
        return self.nr_inactive + self.nr_active + len(self.inactive_file) + len(self.active_file)

    def get_scan_count_file(
        self, sc: ScanControl, reclaim: Reclaimer, may_anon: bool, may_file: bool
    ) -> list[int]:
        """``get_scan_count`` over the four lists: folios to scan from (inactive anon, active
        anon, inactive file, active file); SCAN_FRACT floors each share (``div64_u64``: the
        kernel rounds up only for an offlined memcg). In memcg limit reclaim
        (``cgroup_reclaim``) there is no ``file_is_tiny``, and swappiness 0 scans file only; a
        protected memcg's lists are scaled by ``apply_proportional_protection`` before the
        priority shift."""
        swappiness, p = self.cfg.swappiness, sc.priority
        raw = [
            self.nr_inactive,
            self.nr_active,
            len(self.inactive_file),
            len(self.active_file),
        ]
        lists = list(raw)
        if sc.emin or sc.elow:
            for k, n in enumerate(raw):
                lists[k], low = apply_proportional_protection(
                    n, sc.emin, sc.elow, sc.cgroup_size, sc.memcg_low_reclaim
                )
                sc.memcg_low_skipped |= low
        sizes = [n >> p for n in lists]
        cgroup_reclaim = sc.target_memcg >= 0
        prep = self.prep
        if prep is not None:  # the root's decisions (global reclaim with memcgs)
            tiny, trim = prep.file_is_tiny, prep.cache_trim_mode
            anon_cost, file_cost = prep.anon_cost, prep.file_cost
        else:
            free, high = reclaim.free_and_high()
            tiny = not cgroup_reclaim and file_is_tiny(
                nr_file=len(self.inactive_file) + len(self.active_file),
                nr_free=free,
                high_wmark=high,
                may_deactivate_anon=may_anon,
                anon_left=raw[0] >> p > 0,
            )
            st = self._limit_stats(sc)  # lruvec_page_state(target_lruvec, NR_INACTIVE_FILE)
            ifile = raw[2] if st is None else st.inactive_file
            trim = cache_trim_mode(inactive_file_left=ifile >> p > 0, may_deactivate_file=may_file)
            anon_cost, file_cost = self.anon_cost, self.file_cost
        balance = scan_balance(
            can_reclaim_anon=reclaim.can_swap(),
            cgroup_reclaim=cgroup_reclaim,
            swappiness=swappiness,
            priority=p,
            file_is_tiny=tiny,
            cache_trim_mode=trim,
        )
        if balance == ScanBalance.SCAN_EQUAL:
            return sizes
        if balance == ScanBalance.SCAN_ANON:
            return [sizes[0], sizes[1], 0, 0]
        if balance == ScanBalance.SCAN_FILE:
            return [0, 0, sizes[2], sizes[3]]
        ap, fp = calculate_pressure_balance(swappiness, anon_cost, file_cost)
        den = ap + fp
        return [n * f // den for n, f in zip(sizes, (ap, ap, fp, fp), strict=True)]

    def _shrink_lruvec_file(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """``shrink_lruvec`` over anon and file: batches of SWAP_CLUSTER_MAX from each list in
        turn (an active list only when its type may deactivate); once the target is met,
        outside proportional direct reclaim, the smaller type stops and the other's remaining
        scan is cut to the same fraction of its target."""
        if self.prep is not None:  # global reclaim with memcgs: the root's may_deactivate
            may_anon, may_file = self.prep.may_anon, self.prep.may_file
        else:
            may_anon, may_file = self._may_deactivate(sc)
        if sc.force_deactivate:  # prepare_scan_control: the retry deactivates every list
            may_anon = may_file = True
        nr = self.get_scan_count_file(sc, reclaim, may_anon, may_file)
        targets = list(nr)
        scan_adjusted = sc.direct and sc.priority == DEF_PRIORITY  # proportional_reclaim
        while nr[0] or nr[2] or nr[3]:
            for lru in range(4):
                if not nr[lru]:
                    continue
                n = min(nr[lru], sc.batch)
                nr[lru] -= n
                if lru == 0:
                    self.shrink_inactive_list(n, sc, reclaim)
                elif lru == 2:
                    self.shrink_inactive_file(n, sc, reclaim)
                elif lru == 1 and may_anon:
                    self.shrink_active_list(n, sc, reclaim)
                elif lru == 3 and may_file:
                    self.shrink_active_file(n, sc)
                else:  # shrink_list: an active list due a batch that may not deactivate
                    sc.skipped_deactivate = True
                    continue
                yield
            if sc.nr_reclaimed - sc.lruvec_base < sc.nr_to_reclaim or scan_adjusted:
                continue
            nr_anon, nr_file = nr[0] + nr[1], nr[2] + nr[3]
            if not nr_anon or not nr_file:
                break
            if nr_file > nr_anon:
                stop, other, left = 0, 2, nr_anon * 100 // (targets[0] + targets[1] + 1)
            else:
                stop, other, left = 2, 0, nr_file * 100 // (targets[2] + targets[3] + 1)
            nr[stop] = nr[stop + 1] = 0
            for lru in (other, other + 1):
                scanned = targets[lru] - nr[lru]
                nr[lru] = targets[lru] * (100 - left) // 100
                nr[lru] -= min(nr[lru], scanned)
            scan_adjusted = True
        if reclaim.can_swap() and self.inactive_is_low(flushed=True):
            self.shrink_active_list(SWAP_CLUSTER_MAX, sc, reclaim)
            yield

    def shrink_inactive_file(self, n: int, sc: ScanControl, reclaim: Reclaimer) -> None:
        """``shrink_inactive_list`` for the inactive file list. Folios under write-back are
        activated first (PG_reclaim set, as for anon). The page cache is not mapped, so
        ``folio_check_references`` sees no pte and reclaims every other folio (PG_referenced
        cleared; activation happened in ``folio_mark_accessed``; a folio that had it is
        FOLIOREF_RECLAIM_CLEAN): a clean one leaves through ``__remove_mapping`` with a
        workingset shadow, without I/O. A dirty one (``shrink_folio_list``'s file case): unless
        this is kswapd, the folio already has PG_reclaim and the node is PGDAT_DIRTY, it is
        marked PG_reclaim and activated for the flusher to write
        (``nr_vmscan_immediate_reclaim``); otherwise kswapd keeps a referenced one on the
        inactive list (``keep_locked``) and writes the others (``pageout``: back on the
        inactive list under write-back). When every folio taken was dirty and not yet queued
        (``stat.nr_unqueued_dirty == nr_taken``) the flushers are woken
        (``wakeup_flusher_threads(WB_REASON_VMSCAN)``)."""
        pfns = self.inactive_file.isolate_tail(n)
        if len(pfns) == 0:
            return
        _set_lru(pfns, self.fl, 0)
        sc.nr_taken += len(pfns)
        sc.nr_file_taken += len(pfns)
        sc.isolated(len(pfns), file=True)
        writeback = reclaim.writeback_check(pfns, sc)
        check = pfns[~writeback]
        referenced = (self.fl[check] & PG_REFERENCED) != 0  # folio_test_clear_referenced
        self.fl[check] &= np.uint8(~PG_REFERENCED & 0xFF)
        dirty = reclaim.folio_test_dirty(check)
        nr_unqueued_dirty = int(np.count_nonzero(dirty))  # dirty && !writeback
        kswapd_may_write = np.zeros(len(check), dtype=np.bool_)
        if nr_unqueued_dirty and not sc.direct and reclaim.pgdat_dirty:
            kswapd_may_write = dirty & reclaim.folio_test_reclaim(check)
        immediate = dirty & ~kswapd_may_write
        if immediate.any():
            reclaim.folio_set_reclaim(check[immediate])
            self._count(NR_VMSCAN_IMMEDIATE, int(np.count_nonzero(immediate)))
        write = kswapd_may_write & ~referenced
        kept = check[kswapd_may_write & referenced]  # FOLIOREF_RECLAIM_CLEAN: keep_locked
        written = check[write]
        reclaim.pageout_file(written, sc)
        clean = check[~dirty]
        reclaim.remove_file_folios(clean, sc)  # pgsteal_file
        act = np.concatenate((pfns[writeback], check[immediate]))
        if len(act):
            _set_lru(act, self.fl, LRU_ACTIVE)
            self.active_file.add_head(act)
            self.nonresident_age += len(act)
            sc.activated(len(act))
        back = np.concatenate((kept, written))
        if len(back):
            _set_lru(back, self.fl, LRU_INACTIVE)
            self.inactive_file.add_head(back)
        sc.nr_unqueued_dirty += nr_unqueued_dirty
        if nr_unqueued_dirty == len(pfns):
            reclaim.wakeup_flusher_threads()
        self._note_cost(
            file=True,
            nr_io=len(written),
            nr_rotated=len(pfns) - len(clean),
            lru_pages=self._lru_pages(),
        )

    def shrink_active_file(self, n: int, sc: ScanControl) -> None:
        """``shrink_active_list`` for the active file list: unmapped folios are deactivated
        (PG_workingset set), none kept for a pte reference."""
        pfns = self.active_file.isolate_tail(n)
        if len(pfns) == 0:
            return
        sc.refilled(len(pfns))
        _set_lru(pfns, self.fl, LRU_INACTIVE | PG_WORKINGSET)
        self.inactive_file.add_head(pfns)
        sc.deactivated(len(pfns))

    # -- the two list scanners ---------------------------------------------------------------
    def shrink_inactive_list(self, n: int, sc: ScanControl, reclaim: Reclaimer) -> None:
        """Isolate ``n`` folios from the inactive tail; ``shrink_folio_list`` them (folios
        under write-out activated first, then ``folio_check_references``)."""
        core = self.core
        if core is not None and core.takes(reclaim) and core.shrink_inactive_list(self, n, sc):
            return
        pfns, nr_pages = self._isolate(False, n)
        if len(pfns) == 0:
            return
        _set_lru(pfns, self.fl, 0)
        sc.nr_taken += nr_pages
        sc.isolated(nr_pages)
        pageout0, reclaimed0 = sc.nr_pageout, sc.nr_reclaimed
        writeback = reclaim.writeback_check(pfns, sc)  # activated before any reference check
        check = pfns[~writeback] if np.count_nonzero(writeback) else pfns
        young = reclaim.folio_referenced(check, sc)
        # young and PG_referenced: ACTIVATE; young only: KEEP with PG_referenced (set for both);
        # not young: RECLAIM, PG_referenced cleared (anon ignores a lone PG_referenced)
        victims, keep, activate = _check_references(check, young, self.fl)
        if reclaim.ksm is not None:  # folio_check_references: referenced_ptes > 1 activates
            multi = reclaim.multi_referenced(keep)
            if multi.any():
                activate, keep = np.concatenate((activate, keep[multi])), keep[~multi]
        failed = written = victims[:0]
        if len(victims):
            out = reclaim.shrink_folio_list(victims, sc)
            written = victims[out == Outcome.KEEP]
            failed = victims[out == Outcome.ACTIVATE]
        self._putback(np.concatenate((keep, written)), active=False)
        act = np.concatenate((activate, failed, pfns[writeback]))
        reclaim.activate_locked(act)
        sc.activated(self._putback(act, active=True))
        reclaimed = sc.nr_reclaimed - reclaimed0
        self._lru_note_cost(sc.nr_pageout - pageout0, nr_pages - reclaimed)

    def shrink_active_list(self, n: int, sc: ScanControl, reclaim: Reclaimer) -> None:
        """Deactivate ``n`` folios from the active tail; anon ones always go (bits cleared)."""
        core = self.core
        if core is not None and core.takes(reclaim) and core.shrink_active_list(self, n, sc):
            return
        pfns, nr_pages = self._isolate(True, n)
        if len(pfns) == 0:
            return
        sc.refilled(nr_pages)
        reclaim.folio_referenced(pfns, sc)  # clears host and spte bits; result unused for anon
        _set_lru(pfns, self.fl, LRU_INACTIVE | PG_WORKINGSET)
        self.inactive.add_head(pfns)
        self.big_inactive += nr_pages - len(pfns)
        sc.deactivated(nr_pages)


# -- compiled passes over an isolated batch (one call instead of a dozen numpy ones) ---------
@numba.njit(cache=True, nogil=True)
def _check_references(
    check: Pfns, young: NDArray[np.bool_], fl: NDArray[np.uint8]
) -> tuple[Pfns, Pfns, Pfns]:
    """``folio_check_references`` for anon folios: (reclaim, keep, activate), in batch order.

    A young folio gets PG_referenced and is kept, or activated if it already had the flag; any
    other is reclaimed with the flag cleared.
    """
    out = np.empty((3, check.size), dtype=np.int64)
    nv = nk = na = 0
    for i in range(check.size):
        p = check[i]
        f = fl[p]
        if young[i]:
            fl[p] = f | PG_REFERENCED
            if f & PG_REFERENCED:
                out[2, na] = p
                na += 1
            else:
                out[1, nk] = p
                nk += 1
        else:
            fl[p] = f & ~PG_REFERENCED
            out[0, nv] = p
            nv += 1
    return out[0, :nv], out[1, :nk], out[2, :na]


@numba.njit(cache=True, nogil=True)
def _set_lru(pfns: Pfns, fl: NDArray[np.uint8], lru: int) -> None:
    """Flag folios as on list ``lru`` (``LRU_INACTIVE`` or ``LRU_ACTIVE``, with any other flags
    to set at the same time)."""
    for p in pfns:
        fl[p] = (fl[p] & ~(LRU_INACTIVE | LRU_ACTIVE)) | lru
