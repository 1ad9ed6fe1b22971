"""Page reclaim's shared machinery: the scan control of a pass and ``shrink_folio_list``.

Models
    What happens to a folio once a policy has decided to reclaim it, whatever the policy. A
    folio still under write-out is activated at once (before any reference check) and marked
    PG_reclaim; when kswapd meets one it had marked while the node is flagged PGDAT_WRITEBACK,
    it counts it as ``nr_immediate`` (the LRU cycles faster than the device writes; kswapd then
    throttles, kswapd.py). Otherwise the folio gets a swap slot if it has none
    (``add_to_swap``, which makes it dirty), is unmapped everywhere (``try_to_unmap``, which
    makes KVM zap its sptes through ``invalidate_range_start`` and hand over their dirty bits),
    and then:

    - dirty: ``pageout`` sets PG_reclaim and submits the write; the folio stays resident,
      unmapped, in the swap cache, and goes back on the LRU (``keep``). When the write ends
      (``folio_end_writeback``) it is clean, and PG_reclaim rotates it to the tail
      (``folio_rotate_reclaimable``), where a later scan finds it unmapped and clean and frees
      it. Until then a guest touch finds it in the swap cache (a minor fault). On a
      ``SWP_SYNCHRONOUS_IO`` device the write ends before ``pageout`` returns and the folio is
      freed at once.
    - clean, with its swap copy: ``__remove_mapping`` frees the frame now and leaves the
      workingset shadow in the swap cache slot (``workingset_eviction``).

    - dirty, of a memcg with ``memory.zswap.writeback`` 0, and not taken by zswap (or with no
      zswap): ``swap_writeout`` re-dirties it and returns ``AOP_WRITEPAGE_ACTIVATE``, so
      ``pageout`` clears PG_reclaim and says ``PAGE_ACTIVATE``: the folio goes back activated
      (``activate_locked``), unmapped, in the swap cache with its slot (an unmapped folio's
      slot stays: its ptes hold the swap entry), and nothing is written.

    Only freed folios count as reclaimed (``nr_reclaimed``, ``pgsteal``); a folio whose write
    started is counted by ``nr_pageout`` (``nr_vmscan_write``) and freed by a later scan.

    Page-cache folios are unmapped and need no swap slot: a clean one is freed
    (``remove_file_folios``); a dirty one is written by kswapd only (``pageout_file``: the
    node flagged PGDAT_DIRTY, the folio met again with PG_reclaim), on its file's device;
    otherwise the policy marks and activates it for the flusher, and wakes the flushers when
    a batch took nothing else (``wakeup_flusher_threads``, sim/host/page_writeback.py).

Kernel reference
    mm/vmscan.c: ``struct scan_control``, ``shrink_folio_list`` (the write-back cases 1-3,
    ``pageout``, ``__remove_mapping``, ``activate_locked``), ``shrink_inactive_list``;
    mm/swap.c: ``folio_rotate_reclaimable``, ``lru_move_tail``; mm/filemap.c:
    ``folio_end_writeback``; mm/swap_state.c: ``add_to_swap``; mm/workingset.c:
    ``workingset_eviction``; mm/page_io.c: ``swap_writeout`` (``swap_writepage`` in older kernels);
    mm/memcontrol.c: ``mem_cgroup_zswap_writeback_enabled``.

Simplifications
    The writes of a batch are submitted together after the batch is unmapped; a submitter that
    finds the device's request tags all taken is charged the wait after the batch
    (``blocked_until``) rather than stopping in the middle of it. No legacy-memcg case 3 (wait
    for the write in reclaim). Anon folios never count as dirty or congested for the node's
    PGDAT_DIRTY/CONGESTED flags, as ``folio_check_dirty_writeback`` has it.

Invariants
    A folio handed here is isolated (on no list). On return the ``FREED`` ones have left memory
    (unmapped, no spte, frame free, the page only in swap); ``KEEP`` ones are unmapped, in the
    swap cache and under write-out (or freed already by a synchronous device: then ``FREED``);
    ``ACTIVATE`` ones are as they were, but those ``pageout`` activated (zswap write-back off),
    which are unmapped, dirty and in the swap cache.

THP
    A large folio (``host.thp``, huge_memory.py) is handled whole by ``_shrink_large``: an
    order-9 swap cluster, one unmap of its 2 MiB, one 2 MiB write (``thp_swpout``), one
    write-back completion and one ``__remove_mapping`` for its 512 pages; or it is split
    (``thp_swpout_fallback``) and its pages go through the 4 KiB path in the same call, those
    not freed put back on the LRU each on its own. With memcgs the cluster's 512 slots are
    charged to the folio's memcg together (``__mem_cgroup_try_charge_swap`` after the cluster
    is found); over its ``memory.swap.max`` that fails (``memory.swap.events max`` once) and
    the folio is split as when no cluster is free, its pages then charged one by one. A folio
    on a deferred split queue (partially mapped by a balloon's discards: deferred_split.py) is
    split right away, its zapped pages freed and the rest reclaimed as 4 KiB folios.

KSM
    A KSM folio (host/ksm.py) is reclaimed as any anon folio, with one swap slot; its unmap
    walks every sharer (rmap.py). Its writes count for the VM whose frame it was; its freeing
    prunes its stable node (``folio_freed``); the eviction log names guest pages only, so it
    does not log KSM folios. ``activate_locked`` keeps a KSM folio's slot (its unmapped
    sharers' swap entries still name it: ``folio_free_swap`` fails while ``folio_swapped``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import partial
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from sim.host.huge_memory import (
    HPAGE_PMD_NR,
    HPAGE_PMD_SHIFT,
    THP_QUEUED,
    THP_SWPOUT,
    THP_SWPOUT_FALLBACK,
)
from sim.host.memory import (
    DEF_PRIORITY,
    HAS_FRAME,
    NO_PFN,
    PG_DIRTY,
    PG_RECLAIM,
    PG_SWAP,
    PG_WRITEBACK,
    PTE_PRESENT,
    PTRS_PER_PMD,
    SWAP_CLUSTER_MAX,
    HostMemory,
)
from sim.host.mm import Mm
from sim.host.rmap import Rmap
from sim.host.swap import SwapDevice
from sim.host.vmstat import VmEvents, VmStat

if TYPE_CHECKING:
    from sim.host.deferred_split import DeferredSplit
    from sim.host.huge_memory import HugeMemory
    from sim.host.ksm import Ksm
    from sim.host.memcontrol import MemCgroups
    from sim.host.page_writeback import DirtyControl
    from sim.reclaim.base import EvictionPolicy

_U8 = np.uint8


class Outcome(IntEnum):
    """What ``shrink_folio_list`` did with each isolated folio (its labelled exits)."""

    FREED = 0  # free_it: unmapped, clean with its swap copy: the frame is free (pgsteal)
    KEEP = 1  # keep: its write-out started; back on the LRU until the write ends and a later
    #           scan frees it (the policy puts it back as an inactive, not-referenced folio)
    ACTIVATE = 2  # activate_locked: under write-out already, or no swap slot: back as active


@dataclass(slots=True)
class ScanControl:
    """``struct scan_control``: one reclaim pass's inputs and its running counts.

    The ``nr_*`` fields are the pass's own (the kernel's ``sc->nr_scanned``, ``sc->nr.*``):
    they steer the pass and are what the cost model prices, ``CostModel.reclaim_ns(sc)``. The
    host's counters are counted beside them, at the same moment, through the methods below
    (``count_vm_events`` next to ``sc->nr_scanned += ...``), so a pass cut short by the end of
    the run loses nothing.
    """

    nr_to_reclaim: int
    priority: int = DEF_PRIORITY
    direct: bool = False  # direct reclaim by an allocating task (else kswapd)
    batch: int = SWAP_CLUSTER_MAX  # nr_to_scan of a batch: pages (a THP uses 512 of it)
    vmstat: VmEvents | None = None  # the host's counters (None: a policy tested alone)
    nr_scanned: int = 0  # inactive folios isolated and checked (pgscan)
    nr_refill: int = 0  # active folios scanned for deactivation (pgrefill)
    nr_reclaimed: int = 0  # folios freed (pgsteal)
    nr_activate: int = 0
    nr_deactivate: int = 0
    nr_pageout: int = 0  # swap-out writes started (nr_vmscan_write)
    nr_swap_full: int = 0  # folios that found no free swap slot
    nr_taken: int = 0  # sc->nr.taken: pages isolated from inactive lists this pass
    nr_writeback: int = 0  # sc->nr.writeback: folios found under write-out
    nr_immediate: int = 0  # sc->nr.immediate: ... that kswapd had marked PG_reclaim already
    nr_file_taken: int = 0  # sc->nr.file_taken: file folios taken (MGLRU: and sorted dirty)
    nr_unqueued_dirty: int = 0  # sc->nr.unqueued_dirty: ... dirty and not under write-back
    nr_rmap_walked: int = 0  # host rmap mappings visited
    nr_notifier_calls: int = 0  # notifier callbacks made (all ops)
    nr_sptes_walked: int = 0  # sptes visited by KVM's walks
    nr_ptes_scanned: int = 0  # ptes and sptes scanned for want of an rmap (rmap off)
    nr_tlb_flushes: int = 0  # remote TLB flushes KVM made on our behalf
    nr_compressed: int = 0  # pages compressed into zram or zswap (the reclaimer's CPU)
    nr_decompressed: int = 0  # zswap entries decompressed to be written back (shrink_worker)
    blocked_until: int = 0  # the pass's writes got their last request tag then (ns)
    target_memcg: int = -1  # sc->target_mem_cgroup: the memcg of limit reclaim (-1: global)
    memcg: int = -1  # the memcg whose lruvec is being shrunk (-1: the one root lruvec)
    memcg_low_reclaim: bool = False  # memory.low no longer protects (the retry before OOM)
    memcg_low_skipped: bool = False  # a memcg was spared for its memory.low
    skipped_deactivate: bool = False  # an active list was due a scan but may not deactivate
    force_deactivate: bool = False  # the retry: every active list may deactivate
    emin: int = 0  # mem_cgroup_protection of the memcg being shrunk (pages)
    elow: int = 0
    cgroup_size: int = 0  # mem_cgroup_size of the memcg being shrunk (pages)
    lruvec_base: int = 0  # nr_reclaimed when the lruvec's shrink began (its own target)

    def _count(self, item: str, n: int) -> None:
        if self.vmstat is not None and n:
            if self.memcg < 0:
                self.vmstat[item] += n
            else:
                self.vmstat.count(item, n, self.memcg)

    def _count_reclaim(self, item: str, type_item: str, n: int) -> None:
        """``shrink_inactive_list``'s counting: ``item`` (the reclaimer's, ``PGSCAN_KSWAPD +
        reclaimer_offset``) in /proc/vmstat only for global reclaim (``!cgroup_reclaim``),
        always in the memcg's (``count_memcg_events``); ``type_item`` (``PGSCAN_ANON + file``)
        in /proc/vmstat for every reclaim. Memcg limit reclaim runs in the charging task, so
        its reclaimer is direct. memsim also breaks the per-type counters down per memcg."""
        if self.vmstat is None or not n:
            return
        if self.memcg < 0:  # the node's one lruvec: no memcgs, so no limit reclaim
            self.vmstat[item] += n
            self.vmstat[type_item] += n
            return
        if self.target_memcg < 0:
            self.vmstat.count(item, n, self.memcg)
        else:
            self.vmstat.count_memcg(item, n, self.memcg)
        self.vmstat.count(type_item, n, self.memcg)

    def isolated(self, n: int, file: bool = False) -> None:
        """``n`` inactive folios isolated and scanned (``pgscan_kswapd``/``_direct``,
        ``pgscan_anon``/``_file``)."""
        self.nr_scanned += n
        self._count_reclaim(
            VmStat.PGSCAN_DIRECT if self.direct else VmStat.PGSCAN_KSWAPD,
            VmStat.PGSCAN_FILE if file else VmStat.PGSCAN_ANON,
            n,
        )

    def freed(self, n: int, file: bool = False) -> None:
        """``n`` folios freed (``pgsteal_kswapd``/``_direct``, ``pgsteal_anon``/``_file``)."""
        self.nr_reclaimed += n
        self._count_reclaim(
            VmStat.PGSTEAL_DIRECT if self.direct else VmStat.PGSTEAL_KSWAPD,
            VmStat.PGSTEAL_FILE if file else VmStat.PGSTEAL_ANON,
            n,
        )

    def refilled(self, n: int) -> None:
        """``n`` active folios scanned (``pgrefill``; MGLRU: folios sorted to other gens)."""
        self.nr_refill += n
        self._count(VmStat.PGREFILL, n)

    def activated(self, n: int) -> None:
        """``n`` folios put back active (``pgactivate``)."""
        self.nr_activate += n
        self._count(VmStat.PGACTIVATE, n)

    def deactivated(self, n: int) -> None:
        """``n`` folios deactivated (``pgdeactivate``)."""
        self.nr_deactivate += n
        self._count(VmStat.PGDEACTIVATE, n)


class EvictionSink(Protocol):
    """Where evictions are logged (the recorder)."""

    def evicted(
        self,
        t_ns: int,
        pids: NDArray[np.int32],
        pfns: NDArray[np.int64],
        dirty: NDArray[np.bool_],
        scans: NDArray[np.uint8],
    ) -> None:
        """Reclaim unmapped folios ``pids`` (in frames ``pfns``) at ``t_ns``: they left the
        guest (the next access is a fault); ``dirty`` ones are being written out."""
        ...


class FolioListCore(Protocol):
    """A compiled stand-in for :meth:`Vmscan.shrink_folio_list` (sim/core.py): the same
    outcome and effects, or None having changed nothing (the general path runs)."""

    def shrink_folio_list(
        self, pfns: NDArray[np.int64], sc: ScanControl
    ) -> NDArray[np.int8] | None: ...


Schedule = Callable[[int, Callable[[], None]], None]
ScheduleEach = Callable[[list[int], Callable[..., None], list[tuple[int, ...]]], None]
ScheduleEnds = Callable[[list[int], list[int], list[int]], None]


class Vmscan:
    """The host side of reclaim that every policy shares (the ``Reclaimer`` policies call).

    Args:
        mem: host memory.
        swap: the swap device.
        rmap: the host rmap (and through it the notifier chains).
        mms: the mms, by index.
        now: returns the current simulated time (ns).
        schedule: ``schedule(t_ns, fn)`` runs ``fn`` at absolute time ``t_ns``.
        vmstat: the host's counters.
        sink: eviction log.
    """

    def __init__(
        self,
        mem: HostMemory,
        swap: SwapDevice,
        rmap: Rmap,
        mms: Sequence[Mm],
        now: Callable[[], int],
        schedule: Schedule,
        vmstat: VmEvents,
        sink: EvictionSink | None = None,
    ) -> None:
        self.mem, self.swap, self.rmap, self.mms = mem, swap, rmap, list(mms)
        self.now, self.schedule, self.vmstat, self.sink = now, schedule, vmstat, sink
        # ``schedule_each(times, fn, args)``: ``fn(*args[i])`` at ``times[i]``, each in the event
        # order its own timer would have, with one event for the batch (the world's), if any
        self.schedule_each: ScheduleEach | None = None
        # ``schedule_ends(times, pids, pfns)``: each folio's ``folio_end_writeback`` at its time,
        # as ``schedule_each`` would, with runs of plain ends drained compiled (the world's
        # sim/wbdrain.py), if any
        self.schedule_ends: ScheduleEnds | None = None
        self.policy: EvictionPolicy  # set by the engine once the policy exists
        self.pgdat_writeback = False  # PGDAT_WRITEBACK: kswapd found its whole batch writing
        self.pgdat_dirty = False  # PGDAT_DIRTY: kswapd's pass took only unqueued dirty file
        self.dirty: DirtyControl | None = None  # the page cache's flushers, if any
        self.on_writeback_end: Callable[[], None] | None = None  # reclaim_throttle's waker
        self.memcg: MemCgroups | None = None  # the VMs' memcgs (swap charges), if any
        # per guest pid: hugetlbfs memory, whose VMAs MGLRU's walk skips (host/hugetlb.py)
        self.skip_vma: NDArray[np.bool_] | None = None
        self.core: FolioListCore | None = None  # the compiled batch, set where it applies
        self.ksm: Ksm | None = None  # KSM's stable nodes, when KSM is on
        self.thp: HugeMemory | None = None  # THP-backed guest RAM, when host.thp is on
        self.deferred: DeferredSplit | None = None  # partial unmaps of THPs (a balloon's)
        # told of the pages each swap write is submitted for (the guests' silent writes)
        self.on_swap_write: Callable[[NDArray[np.int64]], None] | None = None

    def can_swap(self) -> bool:
        """``can_reclaim_anon_pages``: anon folios are reclaimable only while swap has room."""
        return self.swap.nr_free_slots > 0

    def nr_swap_pages(self) -> int:
        """``get_nr_swap_pages``: free slots on the swap device."""
        return self.swap.nr_free_slots

    def folio_test_writeback(self, pfns: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Which folios have a write-out in flight."""
        return (self.mem.flags[self.mem.frame_pid[pfns]] & PG_WRITEBACK) != 0

    def folio_set_reclaim(self, pfns: NDArray[np.int64]) -> None:
        """Set PG_reclaim: rotate the folio to the tail when its write ends."""
        if len(pfns):
            self.mem.flags[self.mem.frame_pid[pfns]] |= _U8(PG_RECLAIM)

    def writeback_check(self, pfns: NDArray[np.int64], sc: ScanControl) -> NDArray[np.bool_]:
        """``shrink_folio_list``'s write-back cases 1 and 2: which folios are under write-out
        (to be activated); each gets PG_reclaim and is counted."""
        mem = self.mem
        pids = mem.frame_pid[pfns]
        f = mem.flags[pids]
        wb = (f & PG_WRITEBACK) != 0
        n = int(np.count_nonzero(wb))
        if not n:
            return wb
        immediate = 0
        if not sc.direct and self.pgdat_writeback:  # case 1: kswapd meets its own marks
            immediate = int(np.count_nonzero(wb & ((f & PG_RECLAIM) != 0)))
        sc.nr_immediate += immediate
        sc.nr_writeback += n - immediate  # case 2
        mem.flags[pids[wb]] = f[wb] | _U8(PG_RECLAIM)
        vs = self.vmstat
        vs[VmStat.VMSCAN_WRITEBACK] += n - immediate
        vs[VmStat.VMSCAN_IMMEDIATE] += immediate
        return wb

    def clear_young(self, pfns: NDArray[np.int64], sc: ScanControl) -> NDArray[np.bool_]:
        """``ptep_clear_young_notify``: host young OR notifiers' clear_young, no flush."""
        return self.rmap.folio_referenced(pfns, sc, flush=False)

    def ptep_test_and_clear_young(
        self, pfns: NDArray[np.int64], sc: ScanControl
    ) -> NDArray[np.bool_]:
        """Host pte young bits only (no notifiers)."""
        return self.rmap.ptep_test_and_clear_young(pfns, sc)

    def walk_mm(self) -> NDArray[np.int64]:
        """Every present pte, mm by mm in ascending hva (page-table order); not those of a
        hugetlbfs mapping (``should_skip_vma``). With KSM, not the
        stable nodes (their PTE_PRESENT is the folio's "mapped", no pte) and not the zero
        page's ptes (``get_pte_pfn`` skips the zero pfn)."""
        present = np.flatnonzero((self.mem.flags & PTE_PRESENT) != 0)
        if self.skip_vma is not None:  # should_skip_vma: is_vm_hugetlb_page
            skip = self.skip_vma
            present = present[(present >= len(skip)) | ~skip[np.minimum(present, len(skip) - 1)]]
        if self.ksm is not None:
            present = present[present < self.ksm.node_base]
            present = present[self.mem.pfn[present] != NO_PFN]
        return present.astype(np.int64)

    def pte_pfns(self, ptes: NDArray[np.int64]) -> NDArray[np.int64]:
        """The frames the ptes map."""
        return self.mem.pfn[ptes].astype(np.int64)

    def clear_young_ptes(
        self, ptes: NDArray[np.int64], pfns: NDArray[np.int64], sc: ScanControl
    ) -> NDArray[np.bool_]:
        """``ptep_clear_young_notify`` on each pte, which mapped ``pfns`` when the walk took
        its snapshot: a KSM sharer's pte still mapping its folio alone
        (``Rmap.clear_young_ptes``); any other as its folio's mapping (the snapshot's
        frame, as the walk without KSM does)."""
        if self.ksm is None:
            return self.clear_young(pfns, sc)
        mem = self.mem
        shared = (
            (mem.ksm_node[ptes] >= 0)
            & (mem.pfn[ptes] == pfns)
            & ((mem.flags[ptes] & PTE_PRESENT) != 0)
        )
        if not shared.any():
            return self.clear_young(pfns, sc)
        young = np.zeros(len(ptes), dtype=np.bool_)
        young[~shared] = self.clear_young(pfns[~shared], sc)
        young[shared] = self.rmap.clear_young_ptes(ptes[shared], sc)
        return young

    def lookaround(self, pfn: int, window: int = 64) -> NDArray[np.int64]:
        """Present neighbours of the folio's pte inside its PMD, at most ``window`` ptes wide
        (a KSM folio: around each of its ptes the last ``clear_young`` found young). With KSM
        and memcgs
        only those mapping folios of the centre folio's memcg (``get_pfn_folio``)."""
        mem = self.mem
        pid = int(mem.frame_pid[pfn])
        if self.ksm is None or not self.ksm.is_node(np.array([pid])).item():
            ptes = self._window(pid, window)
        else:
            young = self.rmap.young_sharers.get(pfn, [])
            ptes = np.concatenate([self._window(p, window) for p in young] + [np.zeros(0, int)])
        if self.ksm is None:
            return ptes
        ptes = ptes[mem.pfn[ptes] != NO_PFN]  # not the zero page
        if self.memcg is not None and len(ptes):
            memcgs = self.memcg.memcgs_of(mem.frame_pid[mem.pfn[ptes]])
            ptes = ptes[memcgs == self.memcg.memcgs_of(np.array([pid])).item()]
        return ptes.astype(np.int64)

    def _window(self, pid: int, window: int) -> NDArray[np.int64]:
        """The present ptes of page ``pid``'s mm around its pte within its PMD (not its own)."""
        mem = self.mem
        mm = self.mms[mem.page_owner(pid)]
        gfn = pid - mm.pid_base
        ptrs = PTRS_PER_PMD
        lo = gfn - gfn % ptrs
        hi = min(lo + ptrs, mm.nr_pages)
        if hi - lo > window:  # lru_gen_look_around: centre a window of MIN_LRU_BATCH ptes
            if gfn - lo < window // 2:
                hi = lo + window
            elif hi - gfn < window // 2:
                lo = hi - window
            else:
                lo, hi = gfn - window // 2, gfn + window // 2
        pids = np.arange(mm.pid_base + lo, mm.pid_base + hi, dtype=np.int64)
        return pids[((mem.flags[pids] & PTE_PRESENT) != 0) & (pids != pid)]

    def free_and_high(self) -> tuple[int, int]:
        """Free pages and the high watermark."""
        return self.mem.nr_free, self.mem.wmark.high

    def activate_locked(self, pfns: NDArray[np.int64]) -> None:
        """Activated swap-cache folios give up their swap copy when swap is over half full,
        node-wide or in their memcg (``mem_cgroup_swap_full``; ``folio_free_swap``: not while
        under write-out, and not while a pte still holds the swap entry, i.e. only mapped
        ones)."""
        if len(pfns) == 0:
            return
        full = self.swap.vm_swap_full()
        if not full and self.memcg is None:
            return
        pids = self.mem.frame_pid[pfns]
        if self.ksm is not None:
            pids = pids[~self.ksm.is_node(pids)]
        if self.thp is not None:  # a large folio's swap copy is all its pages'
            pids = self.thp.folio_pids(pids)
        f = self.mem.flags[pids]
        sel = pids[(f & (PG_SWAP | PG_WRITEBACK | PTE_PRESENT)) == (PG_SWAP | PTE_PRESENT)]
        if self.deferred is not None and len(sel):  # a zapped page's slot goes with its THP's
            assert self.thp is not None
            z = self.thp.zapped[np.minimum(pids, self.thp.nr_vm_pages - 1)]
            z &= (pids < self.thp.nr_vm_pages) & ((f & (PG_SWAP | PG_WRITEBACK)) == PG_SWAP)
            z &= np.isin(pids >> HPAGE_PMD_SHIFT, sel >> HPAGE_PMD_SHIFT)
            if z.any():
                sel = np.concatenate((sel, pids[z]))
        if not full and len(sel):  # mem_cgroup_swap_full: the page's memcg
            assert self.memcg is not None
            sel = sel[self.memcg.swap_full(self.mem.page_owners(sel))]
        if len(sel):
            self.swap.free_slots(len(sel), sel)
            self.mem.flags[sel] = (self.mem.flags[sel] & ~_U8(PG_SWAP)) | _U8(PG_DIRTY)

    def folio_scanned(self, pfns: NDArray[np.int64]) -> None:
        """A reclaim scan checks these folios' references: one more scan survived each, for
        the eviction log (analysis only)."""
        if self.mem.stamps:
            s = self.mem.scans
            s[pfns] = np.minimum(s[pfns].astype(np.int32) + 1, 255).astype(np.uint8)

    def folio_referenced(self, pfns: NDArray[np.int64], sc: ScanControl) -> NDArray[np.bool_]:
        """``folio_referenced`` over host ptes and notifiers; counts a scan of each folio."""
        self.folio_scanned(pfns)
        return self.rmap.folio_referenced(pfns, sc)

    def multi_referenced(self, pfns: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Which of these folios the last :meth:`folio_referenced` found young through more
        than one pte (``referenced_ptes > 1``: only KSM folios have several)."""
        multi = self.rmap.multi_referenced
        if not multi or len(pfns) == 0:
            return np.zeros(len(pfns), dtype=np.bool_)
        return np.isin(pfns, np.fromiter(multi, dtype=np.int64))

    def shrink_folio_list(self, pfns: NDArray[np.int64], sc: ScanControl) -> NDArray[np.int8]:
        """Reclaim isolated folios the policy chose; an :class:`Outcome` for each."""
        mem = self.mem
        out = np.full(len(pfns), Outcome.ACTIVATE, dtype=np.int8)
        if len(pfns) == 0:
            return out
        if self.thp is not None:
            large = self.thp.large_heads(mem.frame_pid[pfns])
            if large.any():
                if not large.all():
                    out[~large] = self._shrink_small(pfns[~large], sc)
                for i in np.flatnonzero(large).tolist():
                    out[i] = self._shrink_large(int(pfns[i]), sc)
                return out
        if self.core is not None:
            done = self.core.shrink_folio_list(pfns, sc)
            if done is not None:
                return done
        return self._shrink_small(pfns, sc)

    def _shrink_small(self, pfns: NDArray[np.int64], sc: ScanControl) -> NDArray[np.int8]:
        """:meth:`shrink_folio_list` for folios of one page each."""
        mem, swap = self.mem, self.swap
        out = np.full(len(pfns), Outcome.ACTIVATE, dtype=np.int8)
        if len(pfns) == 0:
            return out
        ok = ~self.writeback_check(pfns, sc)
        pids = mem.frame_pid[pfns]
        f = mem.flags[pids]
        # add_to_swap: a folio with no swap copy needs a slot, and is dirty by definition.
        need = np.flatnonzero(ok & ((f & PG_SWAP) == 0))
        if len(need) and self.memcg is not None:  # memory.swap.max: add_to_swap fails
            allowed = self.memcg.swap_allowed(pids[need])
            ok[need[~allowed]] = False
            need = need[allowed]
        if len(need):
            got = swap.alloc_slots(len(need), pids[need])
            if got < len(need):
                ok[need[got:]] = False
                sc.nr_swap_full += len(need) - got
                self.vmstat[VmStat.SWAP_FULL] += len(need) - got
            mem.flags[pids[need[:got]]] |= _U8(PG_SWAP | PG_DIRTY)
            if self.memcg is not None:
                self.memcg.charge_swap(pids[need[:got]])
        if not ok.any():
            return out
        # try_to_unmap: KVM zaps its sptes and hands their dirty bits to the folio.
        mapped = ok & ((mem.flags[pids] & PTE_PRESENT) != 0)
        if mapped.any():
            upfn, upid = pfns[mapped], pids[mapped]
            self.rmap.try_to_unmap(upfn, sc)
            if self.ksm is not None:  # the eviction log names guest pages, not KSM folios
                guest = ~self.ksm.is_node(upid)
                upfn, upid = upfn[guest], upid[guest]
            if self.sink is not None:
                scans = mem.scans[upfn] if mem.stamps else np.zeros(len(upfn), dtype=np.uint8)
                dirty = (mem.flags[upid] & PG_DIRTY) != 0
                self.sink.evicted(self.now(), upid, upfn, dirty, scans)
        f = mem.flags[pids]
        dirty = ok & ((f & PG_DIRTY) != 0)
        if dirty.any():
            res = self._pageout(pfns[dirty], pids[dirty], f[dirty], sc)
            idx = np.flatnonzero(dirty)
            out[idx[res == Outcome.KEEP]] = Outcome.KEEP
            done = res == Outcome.FREED
            ok[idx[res == Outcome.ACTIVATE]] = False  # PAGE_ACTIVATE: activate_locked
            dirty[idx[done]] = False  # written before pageout returned: clean, freed below
        clean = ok & ~dirty
        if clean.any():
            self._remove_mapping(pfns[clean], pids[clean])
            out[clean] = Outcome.FREED
            sc.freed(int(np.count_nonzero(clean)))
        if swap.zpool is not None:  # the pool's new zspages, from the frames just freed
            swap.zpool.fit()
        return out

    def _shrink_large(self, pfn: int, sc: ScanControl) -> Outcome:
        """``shrink_folio_list`` for a PMD-sized folio (its head's frame ``pfn``), as a recent
        kernel does it: not in the swap cache yet, ``add_to_swap`` needs a wholly free swap
        cluster (THP_SWAP); failing that the folio is split (``thp_swpout_fallback``) and its
        512 base folios go through the list as any 4 KiB folio. A whole folio is unmapped
        (``TTU_SPLIT_HUGE_PMD``), written as one 2 MiB request (``thp_swpout``) and freed
        whole once clean."""
        mem, swap, thp = self.mem, self.swap, self.thp
        assert thp is not None
        head = int(mem.frame_pid[pfn])
        owner = mem.page_owner(head)
        pids = thp.folio_pages(head)
        hp = np.array([pfn], dtype=np.int64)
        if self.writeback_check(hp, sc)[0]:
            return Outcome.ACTIVATE
        if thp.block.item(head >> HPAGE_PMD_SHIFT) & THP_QUEUED:
            # "Split partially mapped folios right away. We can free the unmapped pages
            # without IO." (a queued folio is partially mapped and not in the swap cache)
            assert self.deferred is not None
            return self._shrink_split(self.deferred.split(head), sc, head_kept=True)
        if not mem.flags.item(head) & PG_SWAP:  # add_to_swap: an order-9 cluster
            room = thp.cfg.swap and swap.nr_free_slots >= HPAGE_PMD_NR and swap.has_free_cluster()
            if room and self.memcg is not None:  # the cluster's 512 slots under swap.max
                room = self.memcg.swap_allowed_folio(head, HPAGE_PMD_NR)
            if room:
                swap.alloc_cluster(pids)
                mem.flags[pids] |= _U8(PG_SWAP | PG_DIRTY)
                if self.memcg is not None:
                    self.memcg.charge_swap(pids)
            else:  # split_folio_to_list, then the 4 KiB folios one by one
                self.vmstat.count(THP_SWPOUT_FALLBACK, 1, owner)
                self.rmap.split_huge_pmd(head, sc)
                if self.deferred is not None:  # its zapped pages are freed by the split
                    return self._shrink_split(self.deferred.split(head), sc, head_kept=True)
                return self._shrink_split(thp.split_folio(head), sc)
        if thp.folios_mapped(np.array([head]))[0]:
            self.rmap.try_to_unmap(hp, sc)
            if self.sink is not None:
                gone = thp.zapped[head : head + HPAGE_PMD_NR]  # discarded: not evictions
                lp = pids[~gone] if gone.any() else pids
                upfn = mem.pfn[lp].astype(np.int64)
                scans = np.full(len(lp), mem.scans[pfn] if mem.stamps else 0, dtype=np.uint8)
                dirty = (mem.flags[lp] & PG_DIRTY) != 0
                self.sink.evicted(self.now(), lp.astype(np.int32), upfn, dirty, scans)
        f = mem.flags[pids]
        res = Outcome.FREED
        if (f & PG_DIRTY).any():
            res = Outcome(int(self._pageout(hp, pids, f, sc, HPAGE_PMD_NR)[0]))
        if res != Outcome.FREED:  # one write of the whole folio in flight, or PAGE_ACTIVATE
            if swap.zswap is not None and swap.zpool is not None:  # the shrink worker freed
                swap.zpool.fit()
            return res
        self._remove_large(head, pfn)
        sc.freed(HPAGE_PMD_NR)
        if swap.zpool is not None:
            swap.zpool.fit()
        return Outcome.FREED

    def _shrink_split(
        self, pfns: NDArray[np.int64], sc: ScanControl, *, head_kept: bool = False
    ) -> Outcome:
        """The 512 base folios of a split THP (head first) through ``shrink_folio_list``;
        the head's outcome is the caller's, the others not freed go back on the LRU
        themselves (``move_folios_to_lru``: kept ones inactive, the rest activated).
        ``head_kept``: the split freed the pages a discard zapped, the head's among them
        if ``pfns`` does not start with the isolated head's frame (then all of ``pfns`` go
        back themselves and the head's entry is done: FREED)."""
        mem = self.mem
        if head_kept and (len(pfns) == 0 or mem.frame_pid[pfns[0]] & (HPAGE_PMD_NR - 1)):
            out = self._shrink_small(pfns, sc)
            self._putback_split(pfns, out, sc)
            return Outcome.FREED
        out = self._shrink_small(pfns, sc)
        self._putback_split(pfns[1:], out[1:], sc)
        return Outcome(int(out[0]))

    def _putback_split(
        self, rest: NDArray[np.int64], ro: NDArray[np.int8], sc: ScanControl
    ) -> None:
        """``move_folios_to_lru`` of split-off folios ``shrink_folio_list`` did not free."""
        act = rest[ro == Outcome.ACTIVATE]
        self.activate_locked(act)
        self.policy.folio_putback(rest[ro == Outcome.KEEP], active=False)
        self.policy.folio_putback(act, active=True)
        sc.activated(len(act))

    def _remove_large(self, head: int, pfn: int) -> None:
        """``__remove_mapping`` of a clean, unmapped large folio: its 512 frames are free and
        its one workingset shadow stays in each of its swap cache slots."""
        mem = self.mem
        assert self.thp is not None
        shadow = self.policy.workingset_eviction(np.array([pfn], dtype=np.int64))
        if self.deferred is not None:  # pages a discard zapped leave with no swap copy
            self.deferred.release_zapped(head)
        pids = self.thp.folio_pages(head)
        pids = pids[(mem.flags[pids] & HAS_FRAME) != 0]
        mem.nr_swapped[mem.page_owner(head)] += len(pids)
        pfns = mem.pfn[pids].astype(np.int64)
        mem.flags[pids] = _U8(PG_SWAP)
        if len(mem.readahead):
            mem.readahead[pids] = False
        self.thp.folio_gone(head)
        mem.free_frames(pfns, np.repeat(shadow, len(pids)))

    def _pageout(
        self,
        wpfn: NDArray[np.int64],
        wpid: NDArray[np.integer],
        f: NDArray[np.uint8],
        sc: ScanControl,
        nr_pages: int = 1,
    ) -> NDArray[np.int8]:
        """``pageout`` of folios of ``nr_pages`` pages each (``wpfn`` their frames; ``wpid``
        and ``f`` all their pages, folio by folio): clear dirty, set PG_reclaim and
        PG_writeback, submit the writes (a large folio's as one request, ``thp_swpout``);
        each folio's ends with ``folio_end_writeback``. ``nr_pageout`` and
        ``nr_vmscan_write`` count the pages of the writes started (``PAGE_SUCCESS``). Returns
        an :class:`Outcome` per folio: FREED for those whose writes were done when
        ``pageout`` returned (every one on a synchronous device (zram), those zswap stored:
        clean and still isolated, nothing to rotate), KEEP for those in flight, ACTIVATE for
        those ``swap_writeout`` would not write (their memcg's memory.zswap.writeback is 0
        and zswap did not take them: ``folio_mark_dirty``, ``AOP_WRITEPAGE_ACTIVATE``, so
        ``PAGE_ACTIVATE``; still dirty, unmapped, in the swap cache)."""
        swap = self.swap
        if swap.zswap is not None and nr_pages > 1:
            res = self._pageout_large_zswap(wpfn, wpid, f, sc, nr_pages)
        elif swap.zswap is not None:
            res = self._pageout_zswap(wpfn, wpid, f, sc)
        else:
            res = np.full(len(wpfn), Outcome.ACTIVATE, dtype=np.int8)
            go = self._writeback_on(wpid[::nr_pages])
            if go.all():
                res[:] = self._pageout_device(wpfn, wpid, f, sc, nr_pages)
            elif go.any():
                pages = np.repeat(go, nr_pages)
                res[go] = self._pageout_device(wpfn[go], wpid[pages], f[pages], sc, nr_pages)
        n = (len(wpfn) - int(np.count_nonzero(res == Outcome.ACTIVATE))) * nr_pages
        sc.nr_pageout += n
        self.vmstat[VmStat.NR_VMSCAN_WRITE] += n
        return res

    def _writeback_on(self, pids: NDArray[np.integer]) -> NDArray[np.bool_]:
        """``mem_cgroup_zswap_writeback_enabled`` of each page's memcg (a KSM folio's: the
        memcg it is charged to)."""
        off = None if self.memcg is None else self.memcg.no_writeback
        if off is None:
            return np.ones(len(pids), dtype=np.bool_)
        return ~off[self._io_owners(pids)]

    def _pageout_zswap(
        self,
        wpfn: NDArray[np.int64],
        wpid: NDArray[np.integer],
        f: NDArray[np.uint8],
        sc: ScanControl,
    ) -> NDArray[np.int8]:
        """:meth:`_pageout`'s writes of 4 KiB folios behind zswap: those ``zswap_store``
        takes are clean at once, the others go to the device (or, their memcg's write-back
        off, are activated); a store that found the pool full runs the shrink worker."""
        mem, zswap = self.mem, self.swap.zswap
        assert zswap is not None
        stored, compressed, full = zswap.store(wpid, self._io_owners(wpid))
        sc.nr_compressed += compressed
        mem.flags[wpid[stored]] = f[stored] & ~_U8(PG_DIRTY)
        res = np.where(stored, _U8(Outcome.FREED), _U8(Outcome.KEEP)).astype(np.int8)
        disk = ~stored
        if zswap.no_writeback is not None and disk.any():
            act = disk & ~self._writeback_on(wpid)
            res[act] = Outcome.ACTIVATE
            disk &= ~act
        if disk.any():
            self._submit_writeback(wpfn[disk], wpid[disk], f[disk], sc)
        if full:  # zswap_store queued the shrink worker
            self._zswap_writeback(sc)
        return res

    def _pageout_device(
        self,
        wpfn: NDArray[np.int64],
        wpid: NDArray[np.integer],
        f: NDArray[np.uint8],
        sc: ScanControl,
        nr_pages: int,
    ) -> NDArray[np.int8]:
        """:meth:`_pageout`'s writes with no zswap: to an asynchronous device, in flight;
        to a synchronous one (zram), done."""
        mem, swap = self.mem, self.swap
        if not swap.synchronous:
            if nr_pages == 1:  # swap_writepage, which a guest kernel's vmscan overrides
                self._submit_writeback(wpfn, wpid, f, sc)
            else:
                ends = self._swap_write(wpid, nr_pages)
                self._writeback_started(wpfn, wpid, f, ends, sc, nr_pages)
            return np.full(len(wpfn), Outcome.KEEP, dtype=np.int8)
        self._swap_write(wpid, nr_pages)  # done when it returns: nothing to wait for
        if swap.zpool is not None:  # zram_write_page, page by page: compressed into the pool
            swap.zpool.store(wpid)
            sc.nr_compressed += len(wpid)
        mem.flags[wpid] = f & ~_U8(PG_DIRTY)
        return np.full(len(wpfn), Outcome.FREED, dtype=np.int8)

    def _pageout_large_zswap(
        self,
        wpfn: NDArray[np.int64],
        wpid: NDArray[np.integer],
        f: NDArray[np.uint8],
        sc: ScanControl,
        nr_pages: int,
    ) -> NDArray[np.int8]:
        """:meth:`_pageout`'s writes of large folios behind zswap: each folio is stored whole
        (clean at once) or written to the device as one request (or, its memcg's write-back
        off, activated); a store that found the pool full runs the shrink worker after the
        writes, as for small folios."""
        mem, zswap = self.mem, self.swap.zswap
        assert zswap is not None
        res = np.full(len(wpfn), Outcome.KEEP, dtype=np.int8)
        on = self._writeback_on(wpid[::nr_pages])
        full = False
        for k in range(len(wpfn)):
            pids = np.asarray(wpid[k * nr_pages : (k + 1) * nr_pages], dtype=np.int64)
            fk = f[k * nr_pages : (k + 1) * nr_pages]
            stored, compressed, hit = zswap.store_folio(pids, mem.page_owner(int(pids[0])))
            sc.nr_compressed += compressed
            full |= hit
            if stored:
                mem.flags[pids] = fk & ~_U8(PG_DIRTY)
                res[k] = Outcome.FREED
            elif not on[k]:
                res[k] = Outcome.ACTIVATE
            else:  # to the disk behind zswap: one request, in flight
                res[k] = self._pageout_device(wpfn[k : k + 1], pids, fk, sc, nr_pages)[0]
        if full:  # zswap_store queued the shrink worker
            self._zswap_writeback(sc)
        return res

    def _submit_writeback(
        self,
        wpfn: NDArray[np.int64],
        wpid: NDArray[np.int32],
        f: NDArray[np.uint8],
        sc: ScanControl,
    ) -> None:
        """``swap_writepage`` to an asynchronous device (the disk, or behind zswap for the
        folios it rejected): the folios stay under write-back until their writes end."""
        self._writeback_started(wpfn, wpid, f, self._swap_write(wpid), sc)

    def _swap_write(self, pids: NDArray[np.integer], nr_pages: int = 1) -> list[int]:
        """Submit the swap writes of folios of ``nr_pages`` pages each, counted per mm at
        submission (``pswpout``): a request per page, or one per large folio for all its
        pages (``thp_swpout``, as ``count_swpout_vm_event``); returns when each folio's
        ends."""
        if nr_pages > 1:
            if self.on_swap_write is not None:
                self.on_swap_write(np.asarray(pids, dtype=np.int64))
            ends = []
            for head in pids[::nr_pages].tolist():
                owner = self.mem.page_owner(head)
                ends.append(self.swap.submit_folio(self.now(), True, nr_pages, owner))
                self.vmstat.count(THP_SWPOUT, 1, owner)
            return ends
        owners = np.bincount(self._io_owners(pids), minlength=len(self.mms)).tolist()
        if self.on_swap_write is not None:
            self.on_swap_write(np.asarray(pids, dtype=np.int64))
        return self.swap.submit(self.now(), write=True, n=len(pids), per_mm=owners)

    def _io_owners(self, pids: NDArray[np.integer]) -> NDArray[np.intp]:
        """The mm each page's I/O counts for (a KSM folio's: the VM whose frame it was)."""
        return self.mem.page_owners(pids) if self.ksm is None else self.ksm.owners(pids)

    def _zswap_writeback(self, sc: ScanControl) -> None:
        """``shrink_worker``: zswap's oldest entries go to the device (``zswpwb``, and a write
        each, ``pswpout``); decompressing them is priced into this pass."""
        assert self.swap.zswap is not None
        back = np.array(self.swap.zswap.shrink(self._io_owners), dtype=np.int64)
        if len(back) == 0:
            return
        owners = np.bincount(self._io_owners(back), minlength=len(self.mms)).tolist()
        if self.on_swap_write is not None:
            self.on_swap_write(back)
        self.swap.submit(self.now(), write=True, n=len(back), per_mm=owners)
        self.vmstat.count_per_mm(VmStat.ZSWPWB, owners)
        sc.nr_decompressed += len(back)

    def _writeback_started(
        self,
        wpfn: NDArray[np.int64],
        wpid: NDArray[np.int32],
        f: NDArray[np.uint8],
        done: list[int],
        sc: ScanControl,
        nr_pages: int = 1,
    ) -> None:
        """The writes of the folios (of ``nr_pages`` pages each) are in flight: PG_writeback
        and PG_reclaim on all their pages until each ends."""
        self.mem.flags[wpid] = (f & ~_U8(PG_DIRTY)) | _U8(PG_WRITEBACK | PG_RECLAIM)
        self.writeback_started(wpid[::nr_pages].tolist(), wpfn.tolist(), done, sc, nr_pages)

    def writeback_started(
        self,
        pids: list[int],
        pfns: list[int],
        ends: list[int],
        sc: ScanControl,
        nr_pages: int = 1,
    ) -> None:
        """Folios (head pages ``pids``, of ``nr_pages`` pages each) flagged PG_writeback have
        their writes in flight (counted in ``nr_writeback``, in pages; the pass got its last
        request tag at the device's ``blocked_until``): each one's ``folio_end_writeback`` is
        due when its write ends (the world's timers for the batch, when there are; else a
        timer each; with the world's drain, runs of them compiled: sim/wbdrain.py)."""
        self.mem.nr_writeback += len(pids) * nr_pages
        sc.blocked_until = max(sc.blocked_until, self.swap.blocked_until)
        if self.schedule_ends is not None:
            self.schedule_ends(ends, pids, pfns)
            return
        if self.schedule_each is not None:
            self.schedule_each(ends, self.folio_end_writeback, list(zip(pids, pfns, strict=True)))
            return
        for pid, pfn, t in zip(pids, pfns, ends, strict=True):
            self.schedule(t, partial(self.folio_end_writeback, pid, pfn))

    def _remove_mapping(self, pfns: NDArray[np.int64], pids: NDArray[np.int32]) -> None:
        """``__remove_mapping``: clean, unmapped folios leave the swap cache; the frame is
        free and the page keeps the workingset shadow in its place."""
        mem = self.mem
        shadows = self.policy.workingset_eviction(pfns)
        mem.nr_swapped += np.bincount(mem.page_owners(pids), minlength=len(mem.nr_swapped))
        mem.flags[pids] = _U8(PG_SWAP)
        if len(mem.readahead):
            mem.readahead[pids] = False  # a folio read ahead and never touched
        mem.free_frames(pfns, shadows)
        if self.ksm is not None:
            nodes = self.ksm.is_node(pids)
            if nodes.any():
                self.ksm.folio_freed(pids[nodes])

    def folio_test_dirty(self, pfns: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Which folios are dirty (PG_dirty)."""
        return (self.mem.flags[self.mem.frame_pid[pfns]] & PG_DIRTY) != 0

    def remove_file_folios(self, pfns: NDArray[np.int64], sc: ScanControl) -> None:
        """``shrink_folio_list`` -> ``__remove_mapping`` for clean, unmapped page-cache folios:
        no I/O; the frame is free and the page cache keeps the workingset shadow
        (``workingset_eviction``). Counted as reclaimed (``pgsteal``)."""
        if len(pfns) == 0:
            return
        shadows = self.policy.workingset_eviction(pfns)
        self.mem.free_frames(pfns, shadows)
        sc.freed(len(pfns), file=True)

    def folio_test_reclaim(self, pfns: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Which folios have PG_reclaim (reclaim met them before)."""
        return (self.mem.flags[self.mem.frame_pid[pfns]] & PG_RECLAIM) != 0

    def wakeup_flusher_threads(self) -> None:
        """``wakeup_flusher_threads(WB_REASON_VMSCAN)``: every flusher with dirty data starts
        writing all of it (sim/host/page_writeback.py)."""
        if self.dirty is not None:
            self.dirty.wakeup_flusher_threads()

    def pageout_file(self, pfns: NDArray[np.int64], sc: ScanControl) -> None:
        """``shrink_folio_list`` -> ``pageout`` of dirty page-cache folios (kswapd only, with
        PGDAT_DIRTY, a folio it had marked PG_reclaim and that was not referenced): the write
        is submitted to the file's device and the folio, clean and under write-back with
        PG_reclaim, goes back on the LRU (``keep``) until the write ends and rotates it
        (``nr_pageout``, ``nr_vmscan_write``; ``pgpgout`` at submission)."""
        if len(pfns) == 0:
            return
        assert self.dirty is not None, "a dirty page-cache folio with no flusher"
        sc.nr_pageout += len(pfns)
        self.vmstat[VmStat.NR_VMSCAN_WRITE] += len(pfns)
        self.dirty.pageout(self.mem.frame_pid[pfns].astype(np.int64))

    def folio_end_writeback(self, pid: int, pfn: int) -> None:
        """``folio_end_writeback``: the write ended; a folio still marked PG_reclaim and clean
        is rotated to where the next scan frees it. A folio of an mm that exited meanwhile (its
        teardown skipped folios under I/O), or whose page was discarded meanwhile (madvise.py),
        is freed now."""
        mem = self.mem
        if self.thp is not None and self.thp.is_large(pid):
            self._large_end_writeback(pid, pfn)
            return
        f = mem.flags.item(pid) & ~PG_WRITEBACK
        mem.nr_writeback -= 1
        node = self.ksm is not None and bool(self.ksm.is_node(np.array([pid]))[0])
        mm = self.mms[mem.page_owner(pid)] if pid < mem.file_base and not node else None
        if self.ksm is not None and node:
            mem.flags[pid] = f
            if self.ksm.node_io_done(pid):  # its sharers all left while it was written
                if self.on_writeback_end is not None:
                    self.on_writeback_end()
                return
        if mm is not None and (mm.dead or (mm.zapped and pid in mm.zapped)):
            self.policy.folio_remove(np.array([pfn], dtype=np.int64))
            self.swap.free_slots(1, (pid,))  # a folio under write-out owns a slot
            mem.free_frame(pfn)
            mem.flags[pid] = 0
            if len(mem.readahead):  # read ahead, never mapped, then written out again
                mem.readahead[pid] = False
            mm.zap_done(pid)
        elif f & PG_RECLAIM:
            f &= ~PG_RECLAIM
            mem.flags[pid] = f
            if not f & PG_DIRTY:
                self.policy.folio_rotate_reclaimable(pfn)
                self.vmstat[VmStat.PGROTATED] += 1
        else:
            mem.flags[pid] = f
        if self.on_writeback_end is not None:
            self.on_writeback_end()

    def _large_end_writeback(self, head: int, pfn: int) -> None:
        """:meth:`folio_end_writeback` of a large folio: the flags of its 512 pages change
        together; a folio whose mm exited meanwhile is freed with its slots."""
        mem = self.mem
        assert self.thp is not None
        pids = self.thp.folio_pages(head)
        f = mem.flags[pids] & ~_U8(PG_WRITEBACK)
        mem.nr_writeback -= HPAGE_PMD_NR
        mm = self.mms[mem.page_owner(head)]
        if mm.dead:
            self.policy.folio_remove(np.array([pfn], dtype=np.int64))
            self.swap.free_slots(HPAGE_PMD_NR, pids)
            mem.free_frames(mem.pfn[pids].astype(np.int64))
            mem.flags[pids] = 0
            self.thp.folio_gone(head)
        elif f[0] & PG_RECLAIM:
            f &= ~_U8(PG_RECLAIM)
            mem.flags[pids] = f
            if not (f & PG_DIRTY).any():
                self.policy.folio_rotate_reclaimable(pfn)
                self.vmstat[VmStat.PGROTATED] += 1
        else:
            mem.flags[pids] = f
        if self.deferred is not None:  # pages zapped during the write: free or queue it
            self.deferred.io_done(head)
        if self.on_writeback_end is not None:
            self.on_writeback_end()
