"""The eviction-policy protocol, and the list structure policies build on.

Models
    What every page-replacement policy looks like to the host: it is told when folios join the
    LRU (fault-in, swap-in) and when they leave by another path, and it drives reclaim passes by
    isolating candidates, asking the host whether they were referenced (which walks the rmap and
    the notifier chain), and handing the ones it rejects back to the host to unmap and swap.
    Policies are synchronous: they decide and never wait; kswapd and direct reclaim price and
    pace their work. Real policies see only accessed bits and their own lists, like the kernel.

Kernel reference
    mm/vmscan.c (``shrink_node``, ``shrink_lruvec``, ``shrink_folio_list``), mm/swap.c
    (``folio_add_lru``), include/linux/mm_inline.h (list manipulation).

Invariants
    Every resident folio (mapped, or unmapped in the swap cache waiting to be freed) except one
    being read in is on exactly one of the policy's lists or isolated by a pass in progress; a
    folio is never handed to ``Reclaimer.shrink_folio_list`` twice without being put back in
    between.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

import numba
import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from sim.schema import Strict

if TYPE_CHECKING:
    from sim.host.vmscan import ScanControl

Pfns = NDArray[np.int64]


class ReclaimBase(Strict):
    """Knobs every policy's ``reclaim:`` section has."""

    trigger: Literal["watermark", "demand"] = Field(
        "watermark",
        description="watermark: kswapd and direct reclaim driven by the zone "
        "watermarks (the kernel). demand: exactly host.memory_mib of frames, one page evicted "
        "per miss when full, no time cost (the textbook model the oracles are defined on).",
    )


class Reclaimer(Protocol):
    """What the host offers a policy during a reclaim pass (mm/vmscan.c and mm/rmap.c)."""

    ksm: object | None  # KSM's stable nodes (host/ksm.py), when KSM is on

    def multi_referenced(self, pfns: Pfns) -> NDArray[np.bool_]:
        """Which folios the last :meth:`folio_referenced` found young through more than one
        pte (KSM folios: ``folio_check_references`` activates them)."""
        ...

    def folio_referenced(self, pfns: Pfns, sc: ScanControl) -> NDArray[np.bool_]:
        """Test and clear young over every mapping of each folio (host ptes, then notifiers);
        an unmapped folio has no mapping to walk and is never young."""
        ...

    def folio_scanned(self, pfns: Pfns) -> None:
        """A reference check that is not :meth:`folio_referenced` (MGLRU's look-around since
        6.12) looked at these isolated folios: counted as :meth:`folio_referenced` counts."""
        ...

    def shrink_folio_list(self, pfns: Pfns, sc: ScanControl) -> NDArray[np.int8]:
        """Reclaim isolated folios the policy chose: add to swap, unmap, then write (pageout) or
        free. Returns an ``Outcome`` per folio (sim/host/vmscan.py); only ``FREED`` ones left,
        and the policy
        puts the others back (``KEEP``: not active; ``ACTIVATE``: active). Folios still under
        write-out are activated, as :meth:`writeback_check` says."""
        ...

    def folio_test_dirty(self, pfns: Pfns) -> NDArray[np.bool_]:
        """Which folios are dirty (PG_dirty)."""
        ...

    def remove_file_folios(self, pfns: Pfns, sc: ScanControl) -> None:
        """Free isolated clean page-cache folios without I/O (``__remove_mapping``), leaving
        their workingset shadows in the page cache; counted as reclaimed."""
        ...

    def writeback_check(self, pfns: Pfns, sc: ScanControl) -> NDArray[np.bool_]:
        """``shrink_folio_list``'s first test, before any reference check: which folios are
        under write-out. They are to be activated; each gets PG_reclaim and is counted
        (``nr_writeback``, or ``nr_immediate`` when kswapd meets one it marked already while
        the node is flagged PGDAT_WRITEBACK: the LRU cycles faster than the device writes)."""
        ...

    def can_swap(self) -> bool:
        """Whether anon folios can be reclaimed at all (``can_reclaim_anon_pages``: free swap)."""
        ...

    def nr_swap_pages(self) -> int:
        """Free swap slots (``get_nr_swap_pages``; for one memcg's lruvec
        ``mem_cgroup_get_nr_swap_pages``, bounded by its memory.swap.max): MGLRU's
        ``get_swappiness`` wants MIN_LRU_BATCH of them."""

    pgdat_dirty: bool  # PGDAT_DIRTY: kswapd may write dirty file folios it meets again

    def folio_test_reclaim(self, pfns: Pfns) -> NDArray[np.bool_]:
        """Which folios have PG_reclaim."""
        ...

    def wakeup_flusher_threads(self) -> None:
        """``wakeup_flusher_threads(WB_REASON_VMSCAN)``: a scan took only dirty file folios
        not yet queued for write-back; the flushers write all dirty data now."""
        ...

    def pageout_file(self, pfns: Pfns, sc: ScanControl) -> None:
        """kswapd's ``pageout`` of isolated dirty page-cache folios: writes submitted, the
        folios go back on the LRU under write-back (``nr_vmscan_write``)."""
        ...

    def folio_test_writeback(self, pfns: Pfns) -> NDArray[np.bool_]:
        """Which folios are under write-out (a pure test: MGLRU's ``sort_folio``)."""
        ...

    def folio_set_reclaim(self, pfns: Pfns) -> None:
        """Set PG_reclaim (MGLRU's ``folio_inc_gen(reclaiming)`` on folios under write-out), so
        they are rotated to the tail when their write ends."""
        ...

    def activate_locked(self, pfns: Pfns) -> None:
        """Folios are being activated from the inactive scan; frees their swap copies when
        swap is more than half full (``activate_locked`` in shrink_folio_list)."""
        ...

    def clear_young(self, pfns: Pfns, sc: ScanControl) -> NDArray[np.bool_]:
        """``ptep_clear_young_notify`` on each folio's mapping: host young bit OR the notifiers'
        ``clear_young`` (no TLB flush). MGLRU's page-table walk and look-around use this."""
        ...

    def ptep_test_and_clear_young(self, pfns: Pfns, sc: ScanControl) -> NDArray[np.bool_]:
        """Host pte young bits only, tested and cleared (no notifier): the pre-6.12 MGLRU walk,
        which never asked secondary MMUs."""
        ...

    def now(self) -> int:
        """Current simulated time (ns): generation birth times, min_ttl."""
        ...

    def walk_mm(self) -> Pfns:
        """Every present pte (a page id each), in page-table order (mm by mm, ascending hva):
        what MGLRU's ``walk_mm`` visits; :meth:`pte_pfns` gives the frames they map."""
        ...

    def lookaround(self, pfn: int, window: int = 64) -> Pfns:
        """The present ptes around the folio's young pte within its PMD (``window`` ptes at
        most, as ``lru_gen_look_around`` bounds it), excluding that pte; a KSM folio: around
        each of its ptes the last :meth:`clear_young` found young."""
        ...

    def pte_pfns(self, ptes: Pfns) -> Pfns:
        """The frames the given ptes map."""
        ...

    def clear_young_ptes(self, ptes: Pfns, pfns: Pfns, sc: ScanControl) -> NDArray[np.bool_]:
        """``ptep_clear_young_notify`` on each given pte, which mapped the folio at ``pfns``
        when the walk met it (that mapping alone, not every mapping of the folio): MGLRU's
        walk and look-around."""
        ...

    def free_and_high(self) -> tuple[int, int]:
        """Free pages and the high watermark (``prepare_scan_control``'s file_is_tiny test)."""
        ...


class EvictionPolicy(Protocol):
    """A page-replacement policy behind the host's reclaim (one per host: one lruvec).

    Class attributes say what a policy needs beyond accessed bits: ``observes_accesses``
    (an oracle fed every access through ``on_access``) and ``needs_future`` (an oracle that
    must be told the whole reference string in advance, through ``set_future``; demand mode
    only).
    """

    name: ClassVar[str]
    observes_accesses: ClassVar[bool]
    needs_future: ClassVar[bool]

    def folio_add_lru(self, pfn: int, shadow: int | None) -> None:
        """A folio became resident (first touch, swap-in, swap-cache hit) and joins the LRU.

        ``shadow`` is the value ``workingset_eviction`` returned when the page was last evicted
        (refault detection), or None when there is none. Like the kernel's per-CPU ``lru_add``
        batch, a policy may defer the list insertion until its lists are next looked at.
        """
        ...

    def folio_mark_accessed(self, pfn: int) -> None:
        """``folio_mark_accessed``: a host-side reference (GUP with FOLL_TOUCH, or KVM releasing
        the page it faulted in). Not called for guest accesses, which only set spte bits."""
        ...

    def folio_remove(self, pfns: Pfns) -> None:
        """Folios left memory by another path than reclaim (their mm exited)."""
        ...

    def folio_rotate_reclaimable(self, pfn: int) -> None:
        """``folio_rotate_reclaimable``: a folio written for reclaim finished its write and is
        clean; move it to where the next scan frees it first (the inactive tail, not active;
        MGLRU: the oldest generation's tail). Never called for an isolated folio."""
        ...

    def workingset_eviction(self, pfns: Pfns) -> NDArray[np.uint32]:
        """Shadow entries for folios about to be evicted (kept while they are only in swap)."""
        ...

    def shrink_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """One ``shrink_node`` pass at ``sc.priority``; yields after each batch of folios so the
        caller can pay for the work done so far. Stops once ``sc.nr_reclaimed`` reaches
        ``sc.nr_to_reclaim`` (when the kernel would)."""
        ...

    def age_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """kswapd's background aging before each pass (``kswapd_age_node``)."""
        ...

    def reclaim_cycle_end(self) -> None:
        """A reclaim cycle (a kswapd ``balance_pgdat`` or a direct reclaim) finished."""
        ...

    def on_access(self, pfns: Pfns, seq: NDArray[np.int64]) -> None:
        """Oracles only: accesses in order, with their global sequence numbers (positions in
        the reference string). Called only if ``observes_accesses``."""
        ...

    def set_future(self, next_use: NDArray[np.int64]) -> None:
        """Oracles only: ``next_use[i]`` is the position of the next access to the page
        accessed at position ``i`` (a large sentinel if none). Called only if
        ``needs_future``."""
        ...

    def lru_sizes(self) -> dict[str, int]:
        """Pages per list, for the timeline."""
        ...

    def check(self, on_lru: NDArray[np.bool_]) -> None:
        """Assert that the folios the policy tracks are exactly ``on_lru`` (tests)."""
        ...


@numba.njit(cache=True, nogil=True)
def _walk(nxt: NDArray[np.int32], start: int, stop: int, n: int) -> NDArray[np.int64]:
    """Up to ``n`` entries of a list from ``start`` on, following ``nxt`` until ``stop`` (the
    list's sentinel), oldest first."""
    out = np.empty(n, dtype=np.int64)
    cur = start
    k = 0
    while k < n and cur != stop:
        out[k] = cur
        k += 1
        cur = nxt[cur]
    return out[:k]


@numba.njit(cache=True, nogil=True)
def _unlink(nxt: NDArray[np.int32], prev: NDArray[np.int32], pfns: NDArray[np.int64]) -> None:
    """``list_del`` of each folio: its neighbours (or its list's sentinel) link past it."""
    for p in pfns:
        a, b = prev[p], nxt[p]
        nxt[a] = b
        prev[b] = a


class LruLinks:
    """Link storage for every list of one policy (``folio->lru``), plus one sentinel per list.

    ``nxt[pfn]`` is the next newer folio on ``pfn``'s list and ``prev[pfn]`` the next older one;
    a list's sentinel (its ``list_head``, slot ``nr_frames + i``) closes the ring: ``nxt`` of the
    sentinel is the list's tail (oldest), ``prev`` its head (newest), and the sentinel itself
    when the list is empty. A folio is on one list at a time, so all the lists of a policy share
    these two arrays, and a folio can leave its list without knowing which one it is
    (:func:`lru_del`), as ``list_del`` can.
    """

    def __init__(self, nr_frames: int, nr_lists: int) -> None:
        self.nr_frames = nr_frames
        self.nxt = np.full(nr_frames + nr_lists, -1, dtype=np.int32)
        self.prev = np.full(nr_frames + nr_lists, -1, dtype=np.int32)
        self._sentinels = 0
        self._nr_lists = nr_lists

    def new_sentinel(self) -> int:
        """The list head of one more list (an empty ring)."""
        assert self._sentinels < self._nr_lists, "more lists than lru_links was sized for"
        s = self.nr_frames + self._sentinels
        self._sentinels += 1
        self.nxt[s] = self.prev[s] = s
        return s


def lru_links(nr_frames: int, nr_lists: int = 2) -> LruLinks:
    """Link storage for ``nr_lists`` lists of one policy (see :class:`PageQueue`)."""
    return LruLinks(nr_frames, nr_lists)


def lru_del(links: LruLinks, pfns: NDArray[np.integer]) -> None:
    """Take folios off whatever lists hold them (``list_del``). For policies that keep no
    per-list sizes (MGLRU counts folios per generation, not per physical list)."""
    if len(pfns):
        _unlink(links.nxt, links.prev, np.asarray(pfns, dtype=np.int64))


class PageQueue:
    """A kernel LRU list, linked through its folios: add at either end, isolate at the tail,
    and unlink any folio in O(1).

    Like the kernel's ``folio->lru`` list_head, the links live with the frames in one
    :class:`LruLinks` shared by a policy's lists (8 bytes per frame whatever the lists' lengths;
    a ring buffer per list would need room for its longest length each). The list is a ring
    through its sentinel, so a folio leaves it from anywhere (a written folio rotated to the
    tail when its write ends, an activation, an mm exiting) without a walk.

    Adds take int arrays of distinct pfns not on any list; isolation hands out int64 arrays.
    Single adds are buffered (cf. the per-CPU ``lru_add`` batch) until the list is next used.
    ``sized=False`` keeps no length (for policies whose folios may leave a list through
    :func:`lru_del` without the list knowing: ``len()`` then raises).
    """

    __slots__ = ("_nxt", "_prev", "_s", "_size", "_pending", "_sized")

    def __init__(self, links: LruLinks, *, sized: bool = True) -> None:
        self._nxt, self._prev = links.nxt, links.prev
        self._s = links.new_sentinel()
        self._size = 0
        self._sized = sized
        self._pending: list[int] = []  # single adds not yet linked (cf. lru_add batch)

    def __len__(self) -> int:
        if not self._sized:
            raise TypeError("an unsized PageQueue has no length (use is_empty)")
        return self._size + len(self._pending)

    def is_empty(self) -> bool:
        """No folio on the list (nor buffered for it)."""
        return self._nxt[self._s] == self._s and not self._pending

    def add_one(self, pfn: int) -> None:
        """Add one folio at the head; cheap (buffered until the list is next read)."""
        self._pending.append(pfn)
        if len(self._pending) >= 4096:
            self.drain()

    def take_pending(self, pfn: int) -> bool:
        """Remove ``pfn`` if it is the newest buffered single add (``__lru_cache_activate_folio``
        finds a folio still in the per-CPU batch); returns whether it was."""
        if self._pending and self._pending[-1] == pfn:
            self._pending.pop()
            return True
        return False

    def drain(self) -> None:
        """Link buffered single adds in, in order (``lru_add_drain``)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if len(pending) > 8:
            self.add_head(np.array(pending, dtype=np.int64))
            return
        s, nxt, prev = self._s, self._nxt, self._prev  # a few: scalar links, no arrays
        head = prev.item(s)
        for p in pending:
            nxt[head] = p
            prev[p] = head
            head = p
        nxt[head] = s
        prev[s] = head
        self._size += len(pending)

    def _chain(self, pfns: NDArray[np.integer]) -> None:
        """Link ``pfns`` to each other, oldest first."""
        if len(pfns) > 1:
            self._nxt[pfns[:-1]] = pfns[1:]
            self._prev[pfns[1:]] = pfns[:-1]

    def add_head(self, pfns: NDArray[np.integer]) -> None:
        """Add folios at the head (newest end), in the given order."""
        if self._pending:
            self.drain()
        n = len(pfns)
        if n == 0:
            return
        s = self._s
        head = self._prev[s]
        self._chain(pfns)
        first, last = int(pfns[0]), int(pfns[-1])
        self._nxt[head] = first
        self._prev[first] = head
        self._nxt[last] = s
        self._prev[s] = last
        self._size += n

    def add_tail(self, pfns: NDArray[np.integer]) -> None:
        """Add folios at the tail (oldest end), ``pfns[0]`` becoming the new tail
        (``list_move_tail``; also undoes a partial isolation)."""
        if self._pending:
            self.drain()
        n = len(pfns)
        if n == 0:
            return
        s = self._s
        tail = self._nxt[s]
        self._chain(pfns)
        first, last = int(pfns[0]), int(pfns[-1])
        self._prev[first] = s
        self._nxt[s] = first
        self._nxt[last] = tail
        self._prev[tail] = last
        self._size += n

    def add_tail_one(self, pfn: int) -> None:
        """``add_tail`` of one folio (``lru_move_tail`` after a write ends)."""
        if self._pending:
            self.drain()
        s, nxt, prev = self._s, self._nxt, self._prev
        tail = nxt.item(s)
        prev[pfn] = s
        nxt[s] = pfn
        nxt[pfn] = tail
        prev[tail] = pfn
        self._size += 1

    def isolate_tail(self, n: int) -> Pfns:
        """Take up to ``n`` folios from the tail (oldest first)."""
        if self._pending:
            self.drain()
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        s = self._s
        out = _walk(self._nxt, int(self._nxt[s]), s, n)
        if len(out):
            rest = self._nxt[out[-1]]
            self._nxt[s] = rest
            self._prev[rest] = s
            self._size -= len(out)
        return out

    def peek_tail(self, n: int) -> Pfns:
        """Up to ``n`` folios from the tail (oldest first), left on the list."""
        if self._pending:
            self.drain()
        return _walk(self._nxt, int(self._nxt[self._s]), self._s, max(n, 0))

    def snapshot(self) -> Pfns:
        """All folios, tail (oldest) first."""
        if self._pending:
            self.drain()
        s = self._s
        return _walk(self._nxt, int(self._nxt[s]), s, len(self._nxt))

    def remove(self, pfns: NDArray[np.integer]) -> None:
        """Unlink folios that are on this list (the caller knows they are), wherever they are."""
        if self._pending:
            self.drain()
        if len(pfns):
            _unlink(self._nxt, self._prev, np.asarray(pfns, dtype=np.int64))
            self._size -= len(pfns)

    def unlink(self, pfn: int) -> None:
        """Unlink one folio that is on this list."""
        if self._pending:
            self.drain()
        a, b = self._prev[pfn], self._nxt[pfn]
        self._nxt[a] = b
        self._prev[b] = a
        self._size -= 1
