"""One lruvec per memcg, and the walks over them: two_list's ``shrink_node_memcgs`` and
MGLRU's memcg LRU (``shrink_many``, :class:`MemcgMglru`).

Models
    With memory cgroups every memcg has its own lruvec on the node (``mem_cgroup_lruvec``):
    its own active/inactive anon lists, ``inactive_is_low`` from its own sizes, its own
    workingset clock. A folio joins the lruvec of the memcg its page is charged to (here the
    VM that owns it). Global reclaim (kswapd, direct reclaim) visits every memcg in turn:
    one below its effective ``memory.min`` is skipped, one below its ``memory.low`` is skipped
    unless this is the retry before OOM (``memcg_low_reclaim``, counted ``memory.events
    low``), and every other gets ``shrink_lruvec`` with its scan scaled by its protection
    (``get_scan_count``). Limit reclaim (``try_to_free_mem_cgroup_pages``) visits the target
    memcg's lruvec only. kswapd's background aging (``kswapd_age_node``) deactivates on every
    lruvec whose inactive list is low.

    With a host page cache (``host_files``) every lruvec has the file lists too, and a file
    folio joins the lruvec of the memcg its file is charged to: a VM's (QEMU reading its disk
    image) or the root's (a host service), which is its own lruvec visited first, as
    ``mem_cgroup_iter`` starts the walk at the root; the root is never protected. Global
    reclaim takes ``prepare_scan_control``'s decisions once per pass from the root, node-wide
    (``may_deactivate`` from the node's refaults and lists, ``file_is_tiny``,
    ``cache_trim_mode`` from the node's inactive file, the costs ``lru_note_cost`` added up
    the hierarchy), and each memcg's ``get_scan_count`` applies them to its own lists; limit
    reclaim takes them from the target memcg's lruvec, and at swappiness 0 scans its file
    lists only (SCAN_FILE). With lazy memcg statistics each VM memcg's lruvec reads its
    counters as of its last flush (``flush_stats``; sim/reclaim/two_list.py says which reads).
    Under MGLRU every lruvec has the file type, the root's lruvec
    (holding page cache of no memcg) takes part in the memcg LRU like any memcg's, and each
    lruvec chooses between its types alone (``get_type_to_scan``).

Kernel reference
    mm/vmscan.c: ``shrink_node_memcgs``, ``shrink_lruvec``, ``kswapd_age_node``,
    ``get_scan_count``, ``can_reclaim_anon_pages``; include/linux/memcontrol.h:
    ``mem_cgroup_below_min``, ``mem_cgroup_below_low``, ``mem_cgroup_protection``.

Simplifications
    Used only when some VM has a ``memcg`` section (the kernel, with memcg on, has a lruvec per
    memcg always; memsim keeps one node-wide lruvec otherwise so that runs without cgroups
    stay as they were). All lruvecs share one set of list links and flags (a folio is on one
    list of one lruvec at a time). Each lruvec's shrink stops at ``nr_to_reclaim`` freed by
    itself (``shrink_lruvec``'s local count); the memcgs are visited in VM order every pass
    (after the root's lruvec, when it holds page cache). Without a page cache global reclaim
    decides each lruvec's deactivation and balance from that lruvec alone (the kernel: from
    the root's, node-wide), as before page cache was modelled.

Invariants
    Every resident folio is on a list of its own memcg's lruvec, and no other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Iterator
from functools import partial
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from sim.host.memcontrol import (
    MEMCG_LOW,
    PAGE_COUNTER_MAX,
    MemcgLimits,
    Protection,
    mem_cgroup_protection,
)
from sim.host.memory import HostMemory
from sim.host.vmscan import ScanControl
from sim.host.vmstat import VmStat
from sim.reclaim.base import Pfns, Reclaimer, lru_links
from sim.reclaim.scan_balance import cache_trim_mode, file_is_tiny
from sim.reclaim.two_list import (
    WORKINGSET_ACTIVATE_FILE,
    FolioSizes,
    LruvecStats,
    NodeCost,
    ScanPrep,
    TwoList,
    TwoListConfig,
    inactive_is_low,
)


class MemcgReclaimer:
    """The host's ``Reclaimer`` as one memcg's lruvec sees it: anon is reclaimable only while
    swap has room and the memcg is under its ``memory.swap.max`` (``can_reclaim_anon_pages``
    with a memcg)."""

    def __init__(self, reclaim: Reclaimer, swap_room: Callable[[], bool]) -> None:
        self._reclaim, self._swap_room = reclaim, swap_room

    @property
    def reclaimer(self) -> Reclaimer:
        """The host's reclaimer this view wraps."""
        return self._reclaim

    def can_swap(self) -> bool:
        """Free swap on the device and under the memcg's limit."""
        return self._reclaim.can_swap() and self._swap_room()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reclaim, name)


class PerMemcgLruvecs:
    """What every per-memcg policy shares: each folio lives on the lruvec of the memcg it is
    charged to (``folio_lruvec``), so the hooks the host calls go to that lruvec."""

    lruvecs: list[Any]

    def __init__(
        self,
        vmstat: Counter[str],
        mem: HostMemory,
        limits: MemcgLimits,
        swap_usage: Callable[[int], int],
    ) -> None:
        self.mem, self.limits, self.vmstat, self._swap_usage = mem, limits, vmstat, swap_usage
        self._memcg_of = limits.owner_memcg
        self._memcg_arr = np.asarray(self._memcg_of, dtype=np.int64)

    def _memcgs(self, pfns: Pfns) -> NDArray[np.int64]:
        """The memcg each folio is charged to (``folio_memcg``)."""
        return self._memcg_arr[self.mem.page_owners(self.mem.frame_pid[pfns])]

    def _lruvec(self, pfn: int) -> Any:
        """``folio_lruvec``: the lruvec of the memcg the folio is charged to."""
        mem = self.mem
        return self.lruvecs[self._memcg_of[mem.page_owner(mem.frame_pid.item(pfn))]]

    def _split(self, pfns: Pfns) -> Iterator[tuple[Any, Pfns]]:
        """Folios grouped by lruvec, each group in the given order."""
        if len(pfns) == 0:
            return
        memcgs = self._memcgs(pfns)
        for i in np.unique(memcgs).tolist():
            yield self.lruvecs[i], pfns[memcgs == i]

    def _owners(self, nr: int) -> NDArray[np.int64]:
        """Each frame's memcg (-1: free or not a guest page)."""
        owner = np.full(nr, -1, dtype=np.int64)
        fp = self.mem.frame_pid
        owned = fp >= 0
        owner[owned] = self._memcg_arr[self.mem.page_owners(fp[owned])]
        return owner

    def folio_add_lru(self, pfn: int, shadow: int | None) -> None:
        """To the lruvec of the folio's memcg (a refault is judged by that lruvec's clock)."""
        self._lruvec(pfn).folio_add_lru(pfn, shadow)

    def folio_mark_accessed(self, pfn: int) -> None:
        """``folio_mark_accessed`` on the folio's lruvec."""
        self._lruvec(pfn).folio_mark_accessed(pfn)

    def folio_add_lru_touched(self, pfns: Pfns) -> None:
        """New folios, first-touch state, each on its memcg's lruvec (in order)."""
        for lv, part in self._split(pfns):
            lv.folio_add_lru_touched(part)

    def folio_remove(self, pfns: Pfns) -> None:
        """Folios of an exited mm leave their lruvec."""
        for lv, part in self._split(pfns):
            lv.folio_remove(part)

    def folio_rotate_reclaimable(self, pfn: int) -> None:
        """To the reclaim end of the folio's lruvec."""
        self._lruvec(pfn).folio_rotate_reclaimable(pfn)

    def workingset_eviction(self, pfns: Pfns) -> NDArray[np.uint32]:
        """Shadows from each folio's own lruvec."""
        out = np.empty(len(pfns), dtype=np.uint32)
        if len(pfns) == 0:
            return out
        owners = self._memcgs(pfns)
        for i in np.unique(owners).tolist():
            sel = owners == i
            out[sel] = self.lruvecs[i].workingset_eviction(pfns[sel])
        return out

    def on_access(self, pfns: Pfns, seq: NDArray[np.int64]) -> None:
        """Real policies see only accessed bits."""

    def set_future(self, next_use: NDArray[np.int64]) -> None:
        """Real policies do not know the future."""


class MemcgTwoList(PerMemcgLruvecs):
    """The two-list policy with one lruvec per memcg (one memcg per VM).

    Args:
        cfg: the two-list knobs (shared by every lruvec).
        nr_frames: frames on the host.
        vmstat: host counters (broken down per memcg).
        rng: unused (the classic LRU is deterministic).
        mem: host memory (which VM owns a frame; each memcg's usage).
        limits: each memcg's settings in pages (protection), and which memcg each page owner
            is charged to.
        swap_usage: each memcg's ``memory.swap.current`` (read at scan time).
        file: every lruvec keeps the file lists (the host has a page cache).
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
        mem: HostMemory,
        limits: MemcgLimits,
        swap_usage: Callable[[int], int],
        file: bool = False,
    ) -> None:
        super().__init__(vmstat, mem, limits, swap_usage)
        nr = limits.nr_memcgs
        links = lru_links(nr_frames, (4 if file else 2) * nr)
        fl = np.zeros(nr_frames, dtype=np.uint8)
        self.file = file
        self.lruvecs = [
            TwoList(cfg, nr_frames, vmstat, rng, links=links, fl=fl, memcg=i, file=file)
            for i in range(nr)
        ]
        # mem_cgroup_iter's order: the root first (when it has pages), then the VMs'
        root = limits.root
        self._order = ([root] if nr > root else []) + list(range(root))
        # the root's hierarchical costs and refault snapshots (prepare_scan_control's target)
        self.node_cost = NodeCost(self._node_lru_pages)
        self._snapshot, self._snapshot_file = 0, 0
        if file:
            for lv in self.lruvecs:
                lv.cost_parent = self.node_cost

    def _node_sizes(self) -> tuple[int, int, int, int]:
        """The node's (the root's hierarchical) inactive/active anon and file sizes."""
        ia = aa = ifl = af = 0
        for lv in self.lruvecs:
            ia += lv.nr_inactive
            aa += lv.nr_active
            ifl += len(lv.inactive_file)
            af += len(lv.active_file)
        return ia, aa, ifl, af

    def _node_lru_pages(self) -> int:
        """``lru_note_cost``'s lrusize of the root: every folio on an LRU."""
        return sum(self._node_sizes())

    def prepare_scan_control(self, sc: ScanControl, reclaim: Reclaimer) -> ScanPrep:
        """``prepare_scan_control`` for global reclaim: the root lruvec's refaults since the
        last cycle or its low inactive lists allow deactivation; ``cache_trim_mode`` from its
        inactive file; ``file_is_tiny`` from the node's file, free pages and inactive anon; the
        root's costs for SCAN_FRACT."""
        ia, aa, ifl, af = self._node_sizes()
        cfg, vs = self.lruvecs[0].cfg, self.vmstat
        may_anon = vs[VmStat.WORKINGSET_ACTIVATE] != self._snapshot or inactive_is_low(
            ia, aa, cfg.inactive_ratio
        )
        may_file = vs[WORKINGSET_ACTIVATE_FILE] != self._snapshot_file or inactive_is_low(
            ifl, af, cfg.inactive_ratio
        )
        free, high = reclaim.free_and_high()
        p = sc.priority
        return ScanPrep(
            may_anon=may_anon,
            may_file=may_file,
            file_is_tiny=file_is_tiny(
                nr_file=ifl + af,
                nr_free=free,
                high_wmark=high,
                may_deactivate_anon=may_anon,
                anon_left=ia >> p > 0,
            ),
            cache_trim_mode=cache_trim_mode(
                inactive_file_left=ifl >> p > 0, may_deactivate_file=may_file
            ),
            anon_cost=self.node_cost.anon_cost,
            file_cost=self.node_cost.file_cost,
        )

    @property
    def folios(self) -> FolioSizes | None:
        """``folio_nr_pages`` when some folios are large (host.thp), shared by every lruvec."""
        return self.lruvecs[0].folios

    @folios.setter
    def folios(self, sizes: FolioSizes | None) -> None:
        for lv in self.lruvecs:
            lv.folios = sizes

    def folio_putback(self, pfns: Pfns, active: bool) -> None:
        """``move_folios_to_lru`` of the base folios of a split THP: each to its memcg's
        lruvec (``folio_lruvec``; a split folio's pages keep its memcg)."""
        for lv, part in self._split(pfns):
            lv.folio_putback(part, active)

    def folio_test_active(self, pfn: int) -> bool:
        """``folio_test_active`` on the folio's lruvec."""
        return bool(self._lruvec(pfn).folio_test_active(pfn))

    def _swap_room(self, memcg: int) -> bool:
        """The memcg is under its memory.swap.max (the root has none)."""
        lim = self.limits
        return memcg == lim.root or self._swap_usage(memcg) < lim.swap_max[memcg]

    def _reclaimer(self, memcg: int, reclaim: Reclaimer) -> Reclaimer:
        return MemcgReclaimer(reclaim, lambda: self._swap_room(memcg))  # type: ignore[return-value]

    def file_add_lru(self, pfn: int, shadow: int | None, swap_ok: bool) -> None:
        """A page-cache folio joins its memcg's lruvec; its refault counts anon in the
        workingset while the memcg can swap (``mem_cgroup_get_nr_swap_pages``)."""
        lv = self._lruvec(pfn)
        lv.file_add_lru(pfn, shadow, swap_ok and self._swap_room(lv.memcg))

    def shrink_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """``shrink_node_memcgs``: each memcg's lruvec in turn (only the target's in limit
        reclaim), skipping those below their effective memory.min, and below memory.low
        unless ``sc.memcg_low_reclaim``."""
        target = sc.target_memcg
        usage = self.mem.nr_resident
        prep = self.prepare_scan_control(sc, reclaim) if self.file and target < 0 else None
        for i in self._order:
            lv = self.lruvecs[i]
            if target >= 0 and i != target:
                continue
            emin, elow = mem_cgroup_protection(self.limits, target, i)
            size = self.limits.usage(usage, i)
            if target != i and size <= emin:  # mem_cgroup_below_min: hard protection
                continue
            if target != i and size <= elow:  # mem_cgroup_below_low: soft protection
                if not sc.memcg_low_reclaim:
                    sc.memcg_low_skipped = True
                    continue
                self.vmstat.count(MEMCG_LOW, 1, i)  # type: ignore[attr-defined]
            sc.memcg, sc.emin, sc.elow, sc.cgroup_size = i, emin, elow, size
            sc.lruvec_base = sc.nr_reclaimed
            lv.prep = prep  # read by get_scan_count before the lruvec's first yield
            try:
                yield from lv.shrink_node(sc, self._reclaimer(i, reclaim))
            finally:
                lv.prep = None
        sc.memcg, sc.emin, sc.elow, sc.cgroup_size, sc.lruvec_base = -1, 0, 0, 0, 0

    def age_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """``kswapd_age_node``: every memcg's lruvec whose inactive list is low."""
        for i in self._order:
            sc.memcg = i
            yield from self.lruvecs[i].age_node(sc, self._reclaimer(i, reclaim))
        sc.memcg = -1

    def use_lazy_stats(self) -> None:
        """Lazy memcg statistics (``host.memcg_stats: lazy``): each VM memcg's lruvec reads
        its ``lruvec_page_state`` counters from the last flush, all zero (the memcg empty)
        until the first. The root's lruvec and the root's decisions in global reclaim keep
        reading the lists."""
        for lv in self.lruvecs[: self.limits.root]:
            lv.stats = LruvecStats()

    def flush_stats(self, memcg: int | None = None) -> None:
        """``mem_cgroup_flush_stats`` of one memcg (its subtree is itself), or of the root,
        which flushes every memcg (None); a no-op with exact statistics."""
        for lv in self.lruvecs if memcg is None else self.lruvecs[memcg : memcg + 1]:
            lv.flush_stats()

    def snapshot_refaults(self, memcg: int) -> None:
        """``snapshot_refaults`` at the end of limit reclaim: the target memcg's lruvec keeps
        its flushed refault counts (lazy statistics only; exact runs keep the per-lruvec
        snapshots kswapd and direct reclaim take, as before)."""
        self.lruvecs[memcg].snapshot_refaults()

    def reclaim_cycle_end(self) -> None:
        """``snapshot_refaults`` of every lruvec, and of the root's (node-wide) refaults."""
        for lv in self.lruvecs:
            lv.reclaim_cycle_end()
        self._snapshot = self.vmstat[VmStat.WORKINGSET_ACTIVATE]
        if self.file:
            self._snapshot_file = self.vmstat[WORKINGSET_ACTIVATE_FILE]

    def lru_sizes(self) -> dict[str, int]:
        """Pages on each list, over every lruvec."""
        sizes: Counter[str] = Counter()
        for lv in self.lruvecs:
            sizes.update(lv.lru_sizes())
        return dict(sizes)

    def check(self, on_lru: NDArray[np.bool_]) -> None:
        """Each lruvec holds exactly the resident folios of its memcg."""
        owner = self._owners(len(on_lru))
        for i, lv in enumerate(self.lruvecs):
            lv.check(on_lru & (owner == i))


MEMCG_NR_GENS = 3  # generations of the memcg LRU
MEMCG_NR_BINS = 8  # bins per generation (memcgs spread over them)
MEMCG_LRU_HEAD, MEMCG_LRU_TAIL, MEMCG_LRU_OLD, MEMCG_LRU_YOUNG = 1, 2, 3, 4


class MemcgWalkReclaimer(MemcgReclaimer):
    """One memcg's view for MGLRU: its page-table walk visits only that memcg's mm
    (``walk_mm`` iterates the memcg's ``mm_list``), and its free swap is what the device has
    and its memory.swap.max leaves (``swap_left``: swap.max - swap usage)."""

    def __init__(
        self,
        reclaim: Reclaimer,
        swap_left: Callable[[], int],
        mem: HostMemory,
        memcg: int,
        owner_memcg: NDArray[np.int64] | None = None,
    ) -> None:
        super().__init__(reclaim, lambda: swap_left() > 0)
        self._swap_left, self._mem, self._memcg = swap_left, mem, memcg
        self._owner_memcg = owner_memcg

    def nr_swap_pages(self) -> int:
        """``mem_cgroup_get_nr_swap_pages``: the device's free slots, at most what the memcg's
        memory.swap.max leaves (one level below the root, so no ancestors to ask)."""
        return min(self._reclaim.nr_swap_pages(), self._swap_left())

    def walk_mm(self) -> Pfns:
        """The memcg's present ptes mapping its own folios, in page-table order (the mms of
        its ``mm_list``; ``get_pfn_folio`` skips a folio of another memcg: a KSM folio is met
        only through the ptes of its own memcg's mm)."""
        ptes = self._reclaim.walk_mm()
        mem = self._mem
        folios = mem.frame_pid[self._reclaim.pte_pfns(ptes)]
        if self._owner_memcg is None:
            return ptes[mem.page_owners(folios) == self._memcg]
        own = self._owner_memcg
        keep = (own[mem.page_owners(ptes)] == self._memcg) & (
            own[mem.page_owners(folios)] == self._memcg
        )
        return ptes[keep]


class MemcgMglru(PerMemcgLruvecs):
    """MGLRU with one lruvec (generations, PID controller) per memcg and the node's memcg LRU.

    Models
        Root reclaim (``lru_gen_shrink_node`` -> ``shrink_many``) reads the oldest memcg
        generation once and, from a random bin, shrinks each memcg of that generation in turn,
        bin by bin, until ``should_abort_scan`` (``shrink_one``: a memcg below memory.min is
        made young and skipped; one below memory.low goes to the tail once and is reclaimed
        from the next visit on, counting ``memory.events low`` each time); after each,
        ``lru_gen_rotate_memcg`` moves it to a random bin: young when its lruvec aged (which
        also clears the tail mark, so the next visit defers a protected memcg again), to the
        tail (one retry) when it is too small to be helpful, nowhere when it made no progress
        but is sizable. When a generation empties, the memcg LRU's ``seq`` advances. Limit
        reclaim shrinks only the target's lruvec and makes the memcg young if it aged
        (``lru_gen_shrink_lruvec``). ``lru_gen_age_node`` ages nothing: it checks min_ttl over
        every memcg not below its memory.min.

        Protection in eviction (6.16+, "mm: vmscan: apply proportional reclaim pressure for
        memcg when MGLRU is enabled"): each call of ``get_nr_to_scan`` returns -1 for a memcg
        below memory.min (``mem_cgroup_below_min``, so one reclaimed down to its min stops and
        goes young) and scales the evictable size by ``apply_proportional_protection`` before
        the priority shift: ``size - size * protection // (max(usage, protection) + 1)``, at
        least SWAP_CLUSTER_MAX, the protection being memory.low (setting
        ``sc->memcg_low_skipped``) unless this is direct reclaim's retry
        (``sc->memcg_low_reclaim``), then memory.min. A memcg below memory.low that
        ``shrink_one`` reclaims (after its one deferral) so gets SWAP_CLUSTER_MAX >> priority
        per call, and root reclaim that skipped low-protected memory and freed nothing gives
        direct reclaim its retry (``do_try_to_free_pages``). ``shrink_one`` itself is
        unchanged: it still defers a memcg below memory.low only once per aging and reads
        neither flag. Only the current kernel is modelled (no switch back to 6.15, where
        nothing was scaled and no flag set).

        With a host page cache every lruvec has both types (``lru_gen_folio``'s ``min_seq``
        per type, the file type's generations and controller), and a file folio joins the
        lruvec of the memcg its file is charged to (a VM's: its QEMU reads the disk image;
        ``memory.current`` and memory.min/low count it). Page cache of no memcg is the root
        memcg's, on a lruvec of its own that takes part in the memcg LRU like any other: the
        root comes online at boot (``lru_gen_online_memcg`` from ``mem_cgroup_css_online``, as
        for every memcg), so it sits in a random bin of the current generation and
        ``shrink_many`` reaches it in its turn, not first as ``shrink_node_memcgs``'
        ``mem_cgroup_iter`` does; it is never protected (``mem_cgroup_unprotected``) and has no
        swap limit. Each lruvec decides alone: ``get_type_to_scan`` from its own refaults,
        ``get_swappiness`` 0 (file only) when its memcg has fewer than MIN_LRU_BATCH swap
        slots left under ``memory.swap.max``, so limit reclaim of a memcg at its swap.max, or
        at ``reclaim.swappiness`` 0, evicts only its own file folios. Its events
        (``pgscan_file``, ``pgsteal_file``, ``workingset_*``) are counted to its memcg
        (``memory.stat``).

    Kernel reference
        mm/vmscan.c: ``get_nr_to_scan`` and ``apply_proportional_protection`` (6.16+; the
        usage read through ``mem_cgroup_protection`` since "memcg: remove mem_cgroup_size()",
        no change in behaviour), ``do_try_to_free_pages``, ``shrink_many``, ``shrink_one``,
        ``lru_gen_rotate_memcg``,
        ``lru_gen_online_memcg``, ``lru_gen_shrink_node``, ``lru_gen_shrink_lruvec``,
        ``lru_gen_age_node``, ``lruvec_is_sizable``, ``lruvec_is_reclaimable``,
        ``should_abort_scan``, ``get_swappiness``; mm/memcontrol.c: ``mem_cgroup_css_online``;
        mm/workingset.c: ``lru_gen_refault`` (``mod_lruvec_state``); include/linux/mmzone.h:
        the comment on MEMCG_NR_GENS (the operations and the events that trigger them);
        include/linux/memcontrol.h: ``mem_cgroup_below_min``, ``mem_cgroup_below_low``,
        ``mem_cgroup_unprotected``.

    Simplifications
        Reclaimers interleave only between batches (a race with a concurrent rotation is
        met by walking the bin again, ``_shrink_many``); every memcg is online; one level
        below the root, so the effective protection is the memcg's own setting (what
        ``mem_cgroup_calculate_protection`` in ``lru_gen_age_node`` leaves there) and is read
        at every visit. The root memcg has a lruvec only when it holds page cache (the
        kernel's root lruvec is always on the memcg LRU, empty here, and would be rotated as
        too small). Every lruvec counts its events in its memcg's memory.stat, as the
        kernel does.
    """

    name: ClassVar[str] = "mglru"
    observes_accesses: ClassVar[bool] = False
    needs_future: ClassVar[bool] = False

    def __init__(
        self,
        cfg: Any,
        nr_frames: int,
        vmstat: Counter[str],
        rng: np.random.Generator,
        *,
        mem: HostMemory,
        limits: MemcgLimits,
        swap_usage: Callable[[int], int],
        file: bool = False,
    ) -> None:
        from sim.reclaim.mglru import Mglru

        super().__init__(vmstat, mem, limits, swap_usage)
        self.rng, self.file = rng, file
        nr = limits.nr_memcgs  # the VMs', then the root's when it holds page cache
        # every lruvec counts its events (pgscan/pgsteal per type, workingset_*) in its
        # memcg's memory.stat, as count_memcg_events does; with a page cache, both types
        self.lruvecs = [Mglru(cfg, nr_frames, vmstat, rng, file=file, memcg=i) for i in range(nr)]
        # pgdat->memcg_lru: seq, fifo[gen][bin] (memcg indices, head first), nr_memcgs[gen]
        self.seq = 0
        self.fifo: list[list[list[int]]] = [
            [[] for _ in range(MEMCG_NR_BINS)] for _ in range(MEMCG_NR_GENS)
        ]
        self.nr_memcgs = [0] * MEMCG_NR_GENS
        self.gen = [0] * nr
        self.seg = [0] * nr
        self.bin = [0] * nr
        # lru_gen_online_memcg: the tail of a random bin, current gen; the root memcg comes
        # online first (at boot, cgroup_init_subsys), then the VMs'
        root = limits.root
        for i in ([root] if nr > root else []) + list(range(min(nr, root))):
            self.bin[i] = self._random_bin()
            self.fifo[0][self.bin[i]].append(i)
            self.nr_memcgs[0] += 1

        # get_nr_to_scan's protection (6.16+), read afresh at every call
        for i, lv in enumerate(self.lruvecs):
            lv.protection = partial(self._protection, i)

    def _protection(self, memcg: int, sc: ScanControl) -> Protection:
        """What ``get_nr_to_scan`` reads of the memcg in this reclaim: ``mem_cgroup_below_min
        (sc->target_mem_cgroup, memcg)`` (never for the target of limit reclaim nor the root:
        ``mem_cgroup_unprotected``), ``mem_cgroup_protection`` and ``memory.current``."""
        lim = self.limits
        emin, elow = mem_cgroup_protection(lim, sc.target_memcg, memcg)
        usage = lim.usage(self.mem.nr_resident, memcg)
        unprotected = memcg in (sc.target_memcg, lim.root)
        return Protection(not unprotected and usage <= emin, emin, elow, usage)

    def _random_bin(self) -> int:
        """``get_random_u32_below(MEMCG_NR_BINS)``."""
        return int(self.rng.integers(MEMCG_NR_BINS))

    # -- the memcg LRU -----------------------------------------------------------------------
    def lru_gen_rotate_memcg(self, memcg: int, op: int) -> None:
        """``lru_gen_rotate_memcg``: to a random bin; HEAD/TAIL keep the generation and set
        the segment; OLD and YOUNG move to the current / next generation and clear it; when
        the old generation empties and was the current one, ``seq`` advances."""
        seg = 0
        old = new = self.gen[memcg]
        if op == MEMCG_LRU_HEAD:
            seg = MEMCG_LRU_HEAD
        elif op == MEMCG_LRU_TAIL:
            seg = MEMCG_LRU_TAIL
        elif op == MEMCG_LRU_OLD:
            new = self.seq % MEMCG_NR_GENS
        else:
            new = (self.seq + 1) % MEMCG_NR_GENS
        self.seg[memcg], self.gen[memcg] = seg, new
        self.fifo[old][self.bin[memcg]].remove(memcg)
        b = self.bin[memcg] = self._random_bin()
        if op in (MEMCG_LRU_HEAD, MEMCG_LRU_OLD):
            self.fifo[new][b].insert(0, memcg)
        else:
            self.fifo[new][b].append(memcg)
        self.nr_memcgs[old] -= 1
        self.nr_memcgs[new] += 1
        if not self.nr_memcgs[old] and old == self.seq % MEMCG_NR_GENS:
            self.seq += 1

    def _reclaimer(self, memcg: int, reclaim: Reclaimer) -> Reclaimer:
        def left() -> int:  # memory.swap.max - memory.swap.current (the root has no limit)
            lim = self.limits
            if memcg == lim.root:
                return PAGE_COUNTER_MAX
            return int(lim.swap_max[memcg]) - int(self._swap_usage(memcg))

        ksm = self.mem.ksm_node.size > 0  # KSM folios: the pseudo-mms of their memcgs
        return MemcgWalkReclaimer(  # type: ignore[return-value]
            reclaim, left, self.mem, memcg, self._memcg_arr if ksm else None
        )

    def _below_min(self, memcg: int) -> bool:
        """``mem_cgroup_below_min`` (one level: the effective min is the memcg's own) on
        ``memory.current`` (its guest RAM and its page cache); never the root
        (``mem_cgroup_unprotected``)."""
        lim = self.limits
        return memcg != lim.root and lim.usage(self.mem.nr_resident, memcg) <= lim.min[memcg]

    def _below_low(self, memcg: int) -> bool:
        """``mem_cgroup_below_low``; never the root."""
        lim = self.limits
        return memcg != lim.root and lim.usage(self.mem.nr_resident, memcg) <= lim.low[memcg]

    def file_add_lru(self, pfn: int, shadow: int | None, swap_ok: bool) -> None:
        """``filemap_add_folio`` -> ``folio_add_lru``: a page-cache folio joins the lruvec of
        the memcg its file is charged to (``folio_lruvec``), in the generation that lruvec's
        ``lru_gen_folio_seq`` gives; its refault is judged by that lruvec's ``max_seq`` and
        feeds that lruvec's file controller."""
        self._lruvec(pfn).file_add_lru(pfn, shadow, swap_ok)

    def _shrink_one(
        self, memcg: int, sc: ScanControl, reclaim: Reclaimer
    ) -> Generator[None, None, int]:
        """``shrink_one``: returns the rotation op for the memcg LRU (0: stay)."""
        if self._below_min(memcg):
            return MEMCG_LRU_YOUNG
        if self._below_low(memcg):
            if self.seg[memcg] != MEMCG_LRU_TAIL:  # first attempt: defer it to the tail
                return MEMCG_LRU_TAIL
            self.vmstat.count(MEMCG_LOW, 1, memcg)  # type: ignore[attr-defined]
        lv = self.lruvecs[memcg]
        lru = self._reclaimer(memcg, reclaim)
        lv.should_rotate = False
        sc.memcg = memcg
        yield from lv.shrink_node(sc, lru)
        sc.memcg = -1
        if lv.should_rotate:  # try_to_shrink_lruvec aged it
            return MEMCG_LRU_YOUNG
        if lv.lruvec_is_sizable(sc, lru):
            return 0
        # one retry if too small
        return MEMCG_LRU_TAIL if self.seg[memcg] != MEMCG_LRU_TAIL else MEMCG_LRU_YOUNG

    def _shrink_many(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """``shrink_many``: the memcgs of the oldest generation as it was when the call began,
        bin by bin from a random one, each rotated after it is shrunk (before the next one is
        shrunk); stops once ``should_abort_scan`` says so. If the next memcg left the bin while
        this one was shrunk (another reclaimer rotated it), the bin is walked again from its
        head in the then oldest generation, as the kernel restarts when its walk ends in
        another list's nulls marker."""
        gen = self.seq % MEMCG_NR_GENS
        first = b = self._random_bin()
        while True:
            lst = self.fifo[gen][b]
            k, prev, op = 0, -1, 0
            aborted = raced = False
            while k < len(lst):
                i = lst[k]
                if op:
                    self.lru_gen_rotate_memcg(prev, op)
                    op = 0
                    if i not in lst:  # another reclaimer rotated it while we shrank
                        raced = True
                        break
                    k = lst.index(i)
                k += 1
                if self.gen[i] != gen:
                    continue
                prev = i
                op = yield from self._shrink_one(i, sc, reclaim)
                if self.lruvecs[i]._should_abort_scan(sc, reclaim):
                    aborted = True
                    break
            if op:
                self.lru_gen_rotate_memcg(prev, op)
            if aborted:
                return
            if raced:  # "restart if raced with lru_gen_rotate_memcg()": the bin again
                gen = self.seq % MEMCG_NR_GENS
                continue
            b = (b + 1) % MEMCG_NR_BINS
            if b == first:
                return

    # -- EvictionPolicy ----------------------------------------------------------------------
    def shrink_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """Root reclaim: ``shrink_many``; limit reclaim: ``lru_gen_shrink_lruvec`` on the
        target's lruvec, which makes the memcg young if it aged."""
        if sc.target_memcg >= 0:
            i = sc.target_memcg
            lv = self.lruvecs[i]
            lv.should_rotate = False
            sc.memcg = i
            yield from lv.shrink_node(sc, self._reclaimer(i, reclaim))
            sc.memcg = -1
            if lv.should_rotate:
                self.lru_gen_rotate_memcg(i, MEMCG_LRU_YOUNG)
            return
        yield from self._shrink_many(sc, reclaim)

    def age_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """``lru_gen_age_node``: no aging (that happens on the eviction path, in
        ``shrink_one``, after the protection checks); drain every lruvec's batch; the min_ttl
        OOM check over every memcg, one below its memory.min counting as not reclaimable
        (``lruvec_is_reclaimable``)."""
        for lv in self.lruvecs:
            lv._lru_add_drain()
        cfg = self.lruvecs[0].cfg
        if cfg.min_ttl_ms and not any(
            not self._below_min(i) and lv._lruvec_is_reclaimable(sc, self._reclaimer(i, reclaim))
            for i, lv in enumerate(self.lruvecs)
        ):
            self.vmstat["mglru_min_ttl_oom"] += 1
        yield from ()

    def reclaim_cycle_end(self) -> None:
        """Nothing to snapshot."""

    def lru_sizes(self) -> dict[str, int]:
        """Folios per generation and legacy split, summed over the lruvecs."""
        out: Counter[str] = Counter()
        for lv in self.lruvecs:
            out.update(lv.lru_sizes())
        return dict(out)

    def check(self, on_lru: NDArray[np.bool_]) -> None:
        """Each lruvec holds exactly its memcg's folios; the memcg LRU holds every memcg once,
        in the list of its generation and bin."""
        owner = self._owners(len(on_lru))
        for i, lv in enumerate(self.lruvecs):
            lv.check(on_lru & (owner == i))
            assert self.fifo[self.gen[i]][self.bin[i]].count(i) == 1, "memcg LRU membership"
        listed = sum(len(b) for g in self.fifo for b in g)
        assert listed == len(self.lruvecs) == sum(self.nr_memcgs), "memcg LRU counts"
