"""Classic Linux page reclaim: the active/inactive anon lists (the "two-list" LRU).

Models
    The split LRU of an anon-only lruvec (guest RAM is anonymous memory). New and swapped-in
    folios enter at the head of the inactive list (since 5.9). A reclaim pass scans
    ``lru_size >> priority`` folios of each list in batches of SWAP_CLUSTER_MAX; every inactive
    folio gets ``folio_check_references``: with one mapping (QEMU's pte, OR-ed with KVM's sptes
    through the notifier chain) a first sighting sets PG_referenced and keeps it (a second chance
    at the inactive head), a second sighting activates it, and no sighting reclaims it. Active
    folios are deactivated whenever the active list is scanned, referenced or not (anon), which
    happens when the inactive list is "low" (``inactive * int_sqrt(10 * GB) < active``) or when
    refaults were activated since the last reclaim cycle. Refault distance (mm/workingset.c)
    decides whether a swapped-in folio starts active.

Kernel reference
    mm/vmscan.c: ``shrink_lruvec``, ``shrink_inactive_list``, ``shrink_active_list``,
    ``folio_check_references``, ``inactive_is_low``, ``prepare_scan_control``,
    ``kswapd_age_node``; mm/workingset.c: ``workingset_eviction``, ``workingset_refault``.

Simplifications
    One lruvec (no memcg), anon only (no file pages, so ``get_scan_count`` reduces to scanning
    both anon lists by priority and shrink_lruvec stops as soon as the target is met).
    ``lru_note_cost`` is not needed with one type. Shadow entries keep 31 bits of the
    nonresident-age clock (no bucket_order).

Invariants
    Each folio the policy tracks is on exactly one list, and its list flag says which.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from sim.host.memory import DEF_PRIORITY, PAGE_SHIFT, SWAP_CLUSTER_MAX, int_sqrt
from sim.host.vmscan import ScanControl
from sim.host.vmstat import VmStat
from sim.reclaim.base import PageQueue, Pfns, Reclaimer
from sim.schema import Strict

LRU_INACTIVE = 0x1
LRU_ACTIVE = 0x2
PG_REFERENCED = 0x4
PG_WORKINGSET = 0x8
_LRU = np.uint8(LRU_INACTIVE | LRU_ACTIVE)
_AGE_MASK = 0x7FFFFFFF


class TwoListConfig(Strict):
    """Classic active/inactive LRU (CONFIG_LRU_GEN off)."""

    policy: Literal["two_list"] = "two_list"
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
    """

    name: ClassVar[str] = "two_list"

    def __init__(self, cfg: TwoListConfig, nr_frames: int, vmstat: Counter[str]) -> None:
        self.cfg, self.vmstat = cfg, vmstat
        self.fl = np.zeros(nr_frames, dtype=np.uint8)
        self.inactive = PageQueue()
        self.active = PageQueue()
        self.nonresident_age = 0  # lruvec->nonresident_age (workingset clock)
        self._refaults_snapshot = 0  # WORKINGSET_ACTIVATE at the last reclaim cycle

    # -- helpers -----------------------------------------------------------------------------
    def inactive_is_low(self) -> bool:
        """``inactive_is_low``: the inactive list is short relative to the active one."""
        inactive, active = len(self.inactive), len(self.active)
        if self.cfg.inactive_ratio is not None:
            ratio = self.cfg.inactive_ratio
        else:
            gb = (inactive + active) >> (30 - PAGE_SHIFT)
            ratio = int_sqrt(10 * gb) if gb else 1
        return inactive * ratio < active

    def _putback(self, pfns: Pfns, active: bool) -> None:
        """``move_folios_to_lru``: head of the chosen list; active putbacks age the clock."""
        if len(pfns) == 0:
            return
        if active:
            self.fl[pfns] = (self.fl[pfns] & ~_LRU) | np.uint8(LRU_ACTIVE)
            self.active.add_head(pfns)
            self.nonresident_age += len(pfns)
        else:
            self.fl[pfns] = (self.fl[pfns] & ~_LRU) | np.uint8(LRU_INACTIVE)
            self.inactive.add_head(pfns)

    # -- EvictionPolicy ----------------------------------------------------------------------
    def folio_add_lru(self, pfn: int, shadow: int | None) -> None:
        """New and swapped-in anon folios go to the inactive head, unless a refault is recent."""
        if shadow is None:
            self.fl[pfn] = LRU_INACTIVE
            self.inactive.add_one(pfn)
            return
        # workingset_refault: activate if the refault distance fits the workingset (active anon).
        vs = self.vmstat
        vs[VmStat.WORKINGSET_REFAULT] += 1
        distance = (self.nonresident_age - (shadow & _AGE_MASK)) & _AGE_MASK
        if distance <= len(self.active):
            self.fl[pfn] = LRU_ACTIVE | (PG_WORKINGSET if shadow >> 31 else 0)
            self.active.add_one(pfn)
            self.nonresident_age += 1
            vs[VmStat.WORKINGSET_ACTIVATE] += 1
            vs[VmStat.WORKINGSET_RESTORE] += shadow >> 31
        else:
            self.fl[pfn] = LRU_INACTIVE
            self.inactive.add_one(pfn)

    def folio_remove(self, pfns: Pfns) -> None:
        """Drop folios from whichever list holds them (their mm exited)."""
        self.inactive.remove(pfns)
        self.active.remove(pfns)
        self.fl[pfns] = 0

    def workingset_eviction(self, pfns: Pfns) -> NDArray[np.uint32]:
        """Shadow = nonresident_age after this eviction, with PG_workingset in the top bit."""
        n = len(pfns)
        ages = (self.nonresident_age + 1 + np.arange(n, dtype=np.int64)) & _AGE_MASK
        self.nonresident_age += n
        ws = (self.fl[pfns] & PG_WORKINGSET) != 0
        self.fl[pfns] = 0
        return (ages | (ws.astype(np.int64) << 31)).astype(np.uint32)

    def shrink_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """``shrink_lruvec`` for the anon lists at ``sc.priority``."""
        if not reclaim.can_swap():
            return  # get_scan_count: no swap -> anon lists are not scanned at all
        may_deactivate = (
            self.vmstat[VmStat.WORKINGSET_ACTIVATE] != self._refaults_snapshot
            or self.inactive_is_low()
        )
        nr_inactive = len(self.inactive) >> sc.priority
        nr_active = len(self.active) >> sc.priority
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
            if sc.nr_reclaimed >= sc.nr_to_reclaim and not proportional:
                break
        if self.inactive_is_low():
            self.shrink_active_list(SWAP_CLUSTER_MAX, sc, reclaim)
            yield

    def age_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """``kswapd_age_node``: deactivate a batch when the inactive list is low."""
        if reclaim.can_swap() and self.inactive_is_low():
            self.shrink_active_list(SWAP_CLUSTER_MAX, sc, reclaim)
            yield

    def reclaim_cycle_end(self) -> None:
        """``snapshot_refaults``: remember refault activations for ``prepare_scan_control``."""
        self._refaults_snapshot = self.vmstat[VmStat.WORKINGSET_ACTIVATE]

    def on_access(self, pfns: Pfns) -> None:
        """Real policies see only accessed bits."""

    def lru_sizes(self) -> dict[str, int]:
        """Folios on each list."""
        return {"inactive": len(self.inactive), "active": len(self.active)}

    def check(self, on_lru: NDArray[np.bool_]) -> None:
        """Each resident folio on exactly one list, matching its flag; nothing else tracked."""
        ina, act = self.inactive.snapshot(), self.active.snapshot()
        both = np.concatenate((ina, act))
        assert len(np.unique(both)) == len(both), "a folio is on a list twice"
        tracked = np.zeros(len(on_lru), dtype=np.bool_)
        tracked[both] = True
        assert (tracked == on_lru).all(), "LRU lists disagree with the resident folios"
        assert ((self.fl[ina] & _LRU) == LRU_INACTIVE).all()
        assert ((self.fl[act] & _LRU) == LRU_ACTIVE).all()

    # -- the two list scanners ---------------------------------------------------------------
    def shrink_inactive_list(self, n: int, sc: ScanControl, reclaim: Reclaimer) -> None:
        """Isolate ``n`` folios from the inactive tail and apply ``folio_check_references``."""
        pfns = self.inactive.isolate_tail(n)
        if len(pfns) == 0:
            return
        sc.nr_scanned += len(pfns)
        young = reclaim.folio_referenced(pfns, sc)
        fl = self.fl[pfns]
        referenced_folio = (fl & PG_REFERENCED) != 0
        self.fl[pfns] = (fl & ~np.uint8(PG_REFERENCED)) & ~_LRU  # isolated, test-and-cleared
        activate = young & referenced_folio  # seen young on two trips: ACTIVATE
        keep = young & ~referenced_folio  # first sighting: KEEP with PG_referenced
        victims = pfns[~young]  # not young: RECLAIM (anon ignores a lone PG_referenced)
        failed = victims[~reclaim.shrink_folio_list(victims, sc)] if len(victims) else victims
        self.fl[pfns[keep]] |= np.uint8(PG_REFERENCED)
        self._putback(pfns[keep], active=False)
        act = np.concatenate((pfns[activate], failed)) if len(failed) else pfns[activate]
        self._putback(act, active=True)
        sc.nr_activate += len(act)

    def shrink_active_list(self, n: int, sc: ScanControl, reclaim: Reclaimer) -> None:
        """Deactivate ``n`` folios from the active tail; anon ones always go (bits cleared)."""
        pfns = self.active.isolate_tail(n)
        if len(pfns) == 0:
            return
        sc.nr_refill += len(pfns)
        reclaim.folio_referenced(pfns, sc)  # clears host and spte bits; result unused for anon
        self.fl[pfns] = (self.fl[pfns] & ~_LRU) | np.uint8(LRU_INACTIVE | PG_WORKINGSET)
        self.inactive.add_head(pfns)
        sc.nr_deactivate += len(pfns)
