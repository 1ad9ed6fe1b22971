"""Shared scaffolding for policies that keep no per-list kernel state (fifo, random, oracles).

Every policy drives reclaim the same way: a budget of ``nr_resident >> priority`` folios per
pass, taken in batches of ``sc.batch``, each batch handed to the host's ``shrink_folio_list``;
folios the host did not free (swap full, under write-out, or their write just started) go back
as most recently used, and a folio whose write ends is moved to where the policy evicts next
(``folio_rotate_reclaimable``: the oldest end of a queue, the next victim of exact LRU).
Subclasses say only which folios to pick (``pick``) and how to put them back (``putback``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from sim.host.vmscan import Outcome, ScanControl
from sim.reclaim.base import PageQueue, Pfns, Reclaimer, lru_links


class SimplePolicy(ABC):
    """Base for policies whose whole decision is which resident folios to evict next."""

    name: ClassVar[str]
    observes_accesses: ClassVar[bool] = False
    needs_future: ClassVar[bool] = False

    def __init__(
        self, cfg: object, nr_frames: int, vmstat: Counter[str], rng: np.random.Generator
    ) -> None:
        self.cfg, self.vmstat, self.rng = cfg, vmstat, rng
        self.nr_frames = nr_frames

    # -- to override -------------------------------------------------------------------------
    @abstractmethod
    def nr_resident(self) -> int:
        """Folios the policy tracks."""

    @abstractmethod
    def pick(self, n: int, sc: ScanControl, reclaim: Reclaimer) -> Pfns:
        """Isolate up to ``n`` victims (they leave the policy's structures)."""

    @abstractmethod
    def putback(self, pfns: Pfns) -> None:
        """Return folios the host did not free."""

    def folio_rotate_reclaimable(self, pfn: int) -> None:  # noqa: B027 (a default)
        """A written folio is clean: nothing to move for a policy without an order."""

    # -- EvictionPolicy ----------------------------------------------------------------------
    def shrink_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """Evict in batches until the pass's target or budget is reached."""
        if not reclaim.can_swap():
            return
        budget = self.nr_resident() >> sc.priority
        while budget > 0 and sc.nr_reclaimed < sc.nr_to_reclaim:
            n = min(budget, sc.batch, sc.nr_to_reclaim - sc.nr_reclaimed)
            victims = self.pick(n, sc, reclaim)
            if len(victims) == 0:
                return
            budget -= len(victims)
            sc.nr_taken += len(victims)  # what shrink_folio_list gets (PGDAT_WRITEBACK's test)
            sc.isolated(len(victims))
            out = reclaim.shrink_folio_list(victims, sc)
            back = victims[out != Outcome.FREED]
            if len(back):
                self.putback(back)
                sc.activated(int(np.count_nonzero(out == Outcome.ACTIVATE)))
            yield

    def age_node(self, sc: ScanControl, reclaim: Reclaimer) -> Iterator[None]:
        """No background aging."""
        yield from ()

    def reclaim_cycle_end(self) -> None:  # noqa: B027 (a default, not abstract)
        """Nothing to remember between cycles."""

    def folio_mark_accessed(self, pfn: int) -> None:  # noqa: B027 (a default, not abstract)
        """Host-side references do not matter to these policies."""

    def workingset_eviction(self, pfns: Pfns) -> NDArray[np.uint32]:
        """No refault detection: empty shadows."""
        return np.zeros(len(pfns), dtype=np.uint32)

    def on_access(self, pfns: Pfns, seq: NDArray[np.int64]) -> None:  # noqa: B027 (a default, not abstract)
        """Only oracles look at accesses."""

    def set_future(self, next_use: NDArray[np.int64]) -> None:  # noqa: B027 (a default, not abstract)
        """Only OPT knows the future."""

    def lru_sizes(self) -> dict[str, int]:
        """One list: everything resident counts as inactive (timeline compatibility)."""
        return {"inactive": self.nr_resident(), "active": 0}


class QueuePolicy(SimplePolicy):
    """A policy over one queue of resident folios in fault-in order (fifo, clock): newcomers
    and failures join at the newest end; subclasses pick victims from the oldest."""

    def __init__(
        self, cfg: object, nr_frames: int, vmstat: Counter[str], rng: np.random.Generator
    ) -> None:
        super().__init__(cfg, nr_frames, vmstat, rng)
        self.queue = PageQueue(lru_links(nr_frames, 1))

    def nr_resident(self) -> int:
        """Folios in the queue."""
        return len(self.queue)

    def folio_add_lru(self, pfn: int, shadow: int | None) -> None:
        """Join at the newest end."""
        self.queue.add_one(pfn)

    def putback(self, pfns: Pfns) -> None:
        """Failures rejoin at the newest end."""
        self.queue.add_head(pfns)

    def folio_remove(self, pfns: Pfns) -> None:
        """Folios of an exiting mm leave the queue."""
        self.queue.remove(pfns)

    def folio_rotate_reclaimable(self, pfn: int) -> None:
        """A written folio moves to the oldest end: the next one looked at."""
        self.queue.unlink(pfn)
        self.queue.add_tail(np.array([pfn], dtype=np.int64))

    def check(self, on_lru: NDArray[np.bool_]) -> None:
        """The queue is exactly the resident folios."""
        check_tracked(self.queue.snapshot(), on_lru)


class ResidentSet:
    """A set of frames with O(1) add/remove and uniform random sampling (swap-with-last)."""

    def __init__(self, nr_frames: int) -> None:
        self.items = np.empty(nr_frames, dtype=np.int64)
        self.where = np.full(nr_frames, -1, dtype=np.int64)
        self.n = 0

    def add(self, pfn: int) -> None:
        """Insert one frame."""
        self.items[self.n] = pfn
        self.where[pfn] = self.n
        self.n += 1

    def discard(self, pfns: Pfns) -> None:
        """Remove frames (those present)."""
        for pfn in pfns.tolist():
            i = int(self.where[pfn])
            if i < 0:
                continue
            last = int(self.items[self.n - 1])
            self.items[i] = last
            self.where[last] = i
            self.where[pfn] = -1
            self.n -= 1

    def members(self) -> Pfns:
        """The frames, in internal order."""
        return self.items[: self.n].copy()


def check_tracked(tracked: Pfns, on_lru: NDArray[np.bool_]) -> None:
    """Assert the policy tracks exactly the folios on the LRU, each once."""
    assert len(np.unique(tracked)) == len(tracked), "a folio is tracked twice"
    mask = np.zeros(len(on_lru), dtype=np.bool_)
    mask[tracked] = True
    assert (mask == on_lru).all(), "tracked folios disagree with the resident folios"
