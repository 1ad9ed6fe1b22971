"""Host event counters, named as ``/proc/vmstat`` and KVM's stats name them: the only count.

Models
    ``count_vm_events`` and its per-cgroup sibling ``count_memcg_events``: every event is counted
    once, at the place and the moment the kernel counts it (``pswpout`` when the write is
    submitted, ``remote_tlb_flush`` in KVM's flush, ``pgscan`` when a batch is isolated), into
    one :class:`VmEvents` per host. Events that belong to one VM are counted with its mm and
    kept a second time per mm, as the kernel keeps them per memcg (``memory.stat``) and per VM
    (KVM's binary stats): those per-mm figures are breakdowns of the host's, and
    :meth:`VmEvents.check` asserts that every breakdown adds up to its total. The summary, the
    timeline and every report read their figures from here; nothing else keeps a count of its
    own. The reclaimer counters (``pgscan_kswapd``/``_direct``, ``pgsteal_*``) are the one
    exception to "breakdowns add up": ``shrink_inactive_list`` counts memcg limit reclaim
    (``cgroup_reclaim``) only in the memcg's copy (:meth:`VmEvents.count_memcg`), and every
    reclaim in ``pgscan_anon``/``_file`` and ``pgsteal_anon``/``_file``, which is what
    :meth:`VmEvents.check` checks them against. Counters only ever increase; nothing in the
    model decides on them (the kernel's ``prepare_scan_control`` reads
    ``workingset_activate``, which the two-list policy snapshots from here).

Kernel reference
    include/linux/vm_event_item.h, mm/vmstat.c (``vmstat_text``), mm/memcontrol.c
    (``memcg_vm_event_stat``), virt/kvm/kvm_main.c (``kvm_vm_stats_desc``).
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum

from sim.host.mmu_notifier import NOTIFIER_PREFIX, OPS


class VmStat(StrEnum):
    """Counter names (``/proc/vmstat`` where one exists; memsim's own otherwise)."""

    PGSCAN_KSWAPD = "pgscan_kswapd"  # global (not memcg limit) reclaim only; a memcg's: all
    PGSCAN_DIRECT = "pgscan_direct"
    PGSTEAL_KSWAPD = "pgsteal_kswapd"
    PGSTEAL_DIRECT = "pgsteal_direct"
    PGSCAN_ANON = "pgscan_anon"  # every reclaim (global, kswapd, memcg limit), by LRU type
    PGSCAN_FILE = "pgscan_file"
    PGSTEAL_ANON = "pgsteal_anon"
    PGSTEAL_FILE = "pgsteal_file"
    PGREFILL = "pgrefill"
    PGACTIVATE = "pgactivate"
    PGDEACTIVATE = "pgdeactivate"
    PGROTATED = "pgrotated"  # folio_rotate_reclaimable: written folios moved to the tail
    PSWPIN = "pswpin"
    PSWPOUT = "pswpout"
    PGMAJFAULT = "pgmajfault"
    PGFAULT = "pgfault"
    ALLOCSTALL = "allocstall_normal"
    PGSCAN_DIRECT_THROTTLE = "pgscan_direct_throttle"  # throttle_direct_reclaim (pfmemalloc)
    PAGEOUTRUN = "pageoutrun"
    KSWAPD_WAKEUPS = "kswapd_wakeups"
    KSWAPD_FAILURES = "kswapd_failures"
    WORKINGSET_REFAULT = "workingset_refault_anon"
    WORKINGSET_ACTIVATE = "workingset_activate_anon"
    WORKINGSET_RESTORE = "workingset_restore_anon"
    NR_VMSCAN_WRITE = "nr_vmscan_write"  # pageout() writes started by reclaim
    VMSCAN_WRITEBACK = "vmscan_writeback"  # folios found under write-back by the scan
    VMSCAN_IMMEDIATE = "vmscan_immediate"  # ...of them marked for immediate reclaim (kswapd)
    THROTTLE_WRITEBACK = "reclaim_throttle_writeback"  # reclaim_throttle(WRITEBACK) sleeps
    THROTTLE_NOPROGRESS = "reclaim_throttle_noprogress"  # reclaim_throttle(NOPROGRESS) sleeps
    SWAP_RA = "swap_ra"  # pages read ahead (swap_vma_readahead), host-wide as the kernel counts
    SWAP_RA_HIT = "swap_ra_hit"  # ...of them found by a fault (swap_cache_get_folio)
    ZSWPOUT = "zswpout"  # pages stored in zswap (zswap_store)
    ZSWPIN = "zswpin"  # pages loaded from zswap (zswap_load)
    ZSWPWB = "zswpwb"  # pages written back from zswap to the device (zswap_writeback_entry)
    ZSWAP_POOL_LIMIT_HIT = "zswap_pool_limit_hit"  # zswap debugfs pool_limit_hit (not vmstat)
    ZSWAP_REJECT_COMPRESS_POOR = "zswap_reject_compress_poor"  # debugfs reject_compress_poor
    SWAP_FULL = "swap_full"  # folios that could not get a swap slot (add_to_swap failed)
    OOM_KILL = "oom_kill"
    RMAP_WALKED = "rmap_walked"  # host rmap mappings visited (folio_referenced, try_to_unmap)
    SPTES_WALKED = "kvm_sptes_walked"  # sptes KVM's aging and unmap handlers visited
    TLB_FLUSHES = "remote_tlb_flush"  # KVM's kvm_flush_remote_tlbs (per-VM stat)


RMAP_PTE_SCANS = "rmap_pte_scans"  # host ptes scanned for want of an rmap (host.rmap: none)
SPTE_SCANS = "kvm_spte_scans"  # sptes scanned for want of KVM's rmap (kvm.shadow_rmap: false)
RMAP_OFF_EVENTS = (RMAP_PTE_SCANS, SPTE_SCANS)
"""Counters of the rmap-off counterfactuals, kept only in worlds that have one (so today's
vmstat lists no new keys)."""

NOTIFIER_KEYS = {op: NOTIFIER_PREFIX + op for op in OPS}
"""The vmstat key of each notifier op (one callback into one subscriber counts one)."""

ALL_KEYS: tuple[str, ...] = (*(v.value for v in VmStat), *NOTIFIER_KEYS.values())


class VmEvents(Counter[str]):
    """The host's event counts, with per-mm breakdowns of the events that belong to a VM.

    Index it like ``/proc/vmstat`` (``vs["pswpin"]``). Count with :meth:`count`: an event of
    one mm goes into the host total and that mm's breakdown together; ``vs[key] += n`` counts
    a host-wide event only. A key counted with an mm even once must always be (checked).

    Args:
        nr_mms: mms (VMs) on the host.
        extra: more counter names (``memory.events`` when there are memcgs).
    """

    def __init__(self, nr_mms: int = 0, extra: tuple[str, ...] = ()) -> None:
        super().__init__(dict.fromkeys((*ALL_KEYS, *extra), 0))
        self.per_mm: list[Counter[str]] = [Counter() for _ in range(nr_mms)]
        self.broken_down: set[str] = set()
        self.memcg_only: set[str] = set()  # keys some event was counted for in a memcg only

    def count_memcg(self, item: str, n: int, mm: int) -> None:
        """``count_memcg_events`` alone: ``n`` events of ``item`` in mm ``mm``'s memcg, not in
        the host's total (memcg limit reclaim's ``pgscan_direct``, ``pgsteal_direct``)."""
        self.per_mm[mm][item] += n
        self.broken_down.add(item)
        self.memcg_only.add(item)

    def count(self, item: str, n: int = 1, mm: int = -1) -> None:
        """Count ``n`` events of ``item``; with ``mm`` >= 0 also in that mm's breakdown."""
        self[item] += n
        if mm >= 0:
            self.per_mm[mm][item] += n
            if item not in self.broken_down:
                self.broken_down.add(item)

    def count_per_mm(self, item: str, counts: list[int]) -> None:
        """Count ``counts[i]`` events of ``item`` for each mm ``i`` (one batch of pages)."""
        total = 0
        for mm, n in enumerate(counts):
            if n:
                self.per_mm[mm][item] += n
                total += n
        self[item] += total
        self.broken_down.add(item)

    def mm_stat(self, mm: int) -> dict[str, int]:
        """Mm ``mm``'s share of every broken-down counter (zeros included), sorted."""
        c = self.per_mm[mm]
        return {k: c[k] for k in sorted(self.broken_down)}

    def notifier_calls(self, mm: int = -1) -> dict[str, int]:
        """Notifier callbacks per op, host-wide or of one mm."""
        src = self if mm < 0 else self.per_mm[mm]
        return {op: src[key] for op, key in NOTIFIER_KEYS.items()}

    def check(self) -> None:
        """Assert every per-mm breakdown adds up to its host total (a memcg-only count: at
        least to it), that every folio reclaim scanned or freed is counted by LRU type
        exactly once (the memcgs' reclaimer counters, or the host's where there are none, sum
        to ``pgscan_anon + pgscan_file``), and that nothing is negative."""
        for key in self.broken_down:
            parts = sum(c[key] for c in self.per_mm)
            ok = parts >= self[key] if key in self.memcg_only else parts == self[key]
            assert ok, f"vmstat {key}: per-VM breakdown {parts} != {self[key]}"
        for kind in ("pgscan", "pgsteal"):
            by_type = self[f"{kind}_anon"] + self[f"{kind}_file"]
            keys = (f"{kind}_kswapd", f"{kind}_direct")
            if any(k in self.broken_down for k in keys):  # memcg lruvecs: all reclaim in them
                by_reclaimer = sum(c[k] for c in self.per_mm for k in keys)
            else:  # one root lruvec: no memcg limit reclaim, the host's counts are all of it
                by_reclaimer = sum(self[k] for k in keys)
            assert by_type == by_reclaimer, f"{kind}: by type {by_type} != {by_reclaimer}"
        assert min(self.values(), default=0) >= 0, "a negative counter"


def new_vmstat(nr_mms: int = 0, extra: tuple[str, ...] = ()) -> VmEvents:
    """A zeroed counter set with every known name present (so summaries list them all)."""
    return VmEvents(nr_mms, extra)
