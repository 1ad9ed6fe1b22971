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
    Every resident folio on the LRU is on exactly one of the policy's lists; a folio is never
    handed to ``Reclaimer.shrink_folio_list`` twice without being added again in between.
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

    def folio_referenced(self, pfns: Pfns, sc: ScanControl) -> NDArray[np.bool_]:
        """Test and clear young over every mapping of each folio (host ptes, then notifiers)."""
        ...

    def shrink_folio_list(self, pfns: Pfns, sc: ScanControl) -> NDArray[np.bool_]:
        """Reclaim isolated folios: add to swap, unmap, write or drop. True where the folio left
        memory (or its write-out started); the rest stay isolated and the policy must put them
        back (the kernel's ``activate_locked`` on a full swap or a folio under writeback)."""
        ...

    def can_swap(self) -> bool:
        """Whether anon folios can be reclaimed at all (``can_reclaim_anon_pages``: free swap)."""
        ...

    def folio_test_writeback(self, pfns: Pfns) -> NDArray[np.bool_]:
        """Which folios are under write-out (shrink_folio_list activates them unchecked)."""
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
        """Frames of every present pte, in page-table order (mm by mm, ascending hva): what
        MGLRU's ``walk_mm`` visits."""
        ...

    def lookaround(self, pfn: int, window: int = 64) -> Pfns:
        """Frames mapped by the ptes around ``pfn``'s pte within its PMD (``window`` ptes at most,
        as ``lru_gen_look_around`` bounds it), excluding ``pfn`` itself."""
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
def _walk(links: NDArray[np.int32], start: int, n: int) -> NDArray[np.int64]:
    """The ``n`` entries of a list from ``start`` on, following ``links`` (oldest first)."""
    out = np.empty(n, dtype=np.int64)
    cur = start
    for i in range(n):
        out[i] = cur
        if i + 1 < n:
            cur = links[cur]
    return out


def lru_links(nr_frames: int) -> NDArray[np.int32]:
    """Link storage for every list of one policy (see ``PageQueue``)."""
    return np.full(nr_frames, -1, dtype=np.int32)


class PageQueue:
    """A kernel LRU list, linked through its folios: add at the head, isolate at the tail.

    Like the kernel's ``folio->lru`` list_head, the links live with the frames: ``links[pfn]``
    is the next newer folio on ``pfn``'s list. A folio is on at most one list at a time, so all
    the lists of a policy share one ``links`` array (``lru_links``): 4 bytes per frame whatever
    the lists' lengths, where a ring buffer per list would need room for its longest length each
    (two lists that take turns holding most of memory need twice the frames). Guest memory only
    ever enters a list at the head (or back at the tail, undoing an isolation) and leaves at the
    tail, so singly linked suffices; removal from the middle (an mm exiting) relinks the rest.

    Adds take int arrays of distinct pfns not on any list; isolation hands out int64 arrays.
    Single adds are buffered (cf. the per-CPU ``lru_add`` batch) until the list is next used.
    """

    __slots__ = ("_links", "_head", "_tail", "_size", "_pending")

    def __init__(self, links: NDArray[np.int32]) -> None:
        self._links = links
        self._head = self._tail = -1  # newest and oldest folio (when not empty)
        self._size = 0
        self._pending: list[int] = []  # single adds not yet linked (cf. lru_add batch)

    def __len__(self) -> int:
        return self._size + len(self._pending)

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
        if self._pending:
            p = np.array(self._pending, dtype=np.int64)
            self._pending = []
            self.add_head(p)

    def _chain(self, pfns: NDArray[np.integer]) -> None:
        """Link ``pfns`` to each other, oldest first."""
        if len(pfns) > 1:
            self._links[pfns[:-1]] = pfns[1:]

    def add_head(self, pfns: NDArray[np.integer]) -> None:
        """Add folios at the head (newest end), in the given order."""
        if self._pending:
            self.drain()
        n = len(pfns)
        if n == 0:
            return
        self._chain(pfns)
        if self._size:
            self._links[self._head] = pfns[0]
        else:
            self._tail = int(pfns[0])
        self._head = int(pfns[-1])
        self._size += n

    def add_tail(self, pfns: NDArray[np.integer]) -> None:
        """Add folios at the tail (oldest end), ``pfns[0]`` becoming the new tail
        (``list_move_tail``; also undoes a partial isolation)."""
        if self._pending:
            self.drain()
        n = len(pfns)
        if n == 0:
            return
        self._chain(pfns)
        if self._size:
            self._links[pfns[-1]] = self._tail
        else:
            self._head = int(pfns[-1])
        self._tail = int(pfns[0])
        self._size += n

    def isolate_tail(self, n: int) -> Pfns:
        """Take up to ``n`` folios from the tail (oldest first)."""
        if self._pending:
            self.drain()
        n = min(n, self._size)
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        out = _walk(self._links, self._tail, n)
        self._size -= n
        if self._size:
            self._tail = int(self._links[out[-1]])
        return out

    def snapshot(self) -> Pfns:
        """All folios, tail (oldest) first."""
        if self._pending:
            self.drain()
        if not self._size:
            return np.empty(0, dtype=np.int64)
        return _walk(self._links, self._tail, self._size)

    def remove(self, pfns: NDArray[np.integer]) -> int:
        """Remove the given folios wherever they are (O(list)); returns how many were found."""
        items = self.snapshot()
        kept = items[~np.isin(items, pfns)]
        self._size = 0
        self.add_head(kept)
        return int(len(items) - len(kept))
