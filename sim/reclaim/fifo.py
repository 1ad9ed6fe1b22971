"""FIFO: evict the folio that has been resident longest; accesses change nothing.

Models
    The textbook first-in first-out replacement: a queue of resident folios in fault-in order.
    It ignores accessed bits entirely, so it is the floor any recency-based policy should beat.

Invariants
    The queue holds each resident folio exactly once, oldest at the tail.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from sim.host.vmscan import ScanControl
from sim.reclaim.base import PageQueue, Pfns, ReclaimBase, Reclaimer
from sim.reclaim.simple import SimplePolicy, check_tracked


class FifoConfig(ReclaimBase):
    """First in, first out."""

    policy: Literal["fifo"] = "fifo"


class Fifo(SimplePolicy):
    """First-in first-out replacement."""

    name: ClassVar[str] = "fifo"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.queue = PageQueue()

    def nr_resident(self) -> int:
        """Folios in the queue."""
        return len(self.queue)

    def folio_add_lru(self, pfn: int, shadow: int | None) -> None:
        """Join at the head (newest end)."""
        self.queue.add_one(pfn)

    def pick(self, n: int, sc: ScanControl, reclaim: Reclaimer) -> Pfns:
        """The ``n`` oldest folios."""
        return self.queue.isolate_tail(n)

    def putback(self, pfns: Pfns) -> None:
        """Failures rejoin at the head."""
        self.queue.add_head(pfns)

    def folio_remove(self, pfns: Pfns) -> None:
        """Folios of an exiting mm leave the queue."""
        self.queue.remove(pfns)

    def check(self, on_lru: NDArray[np.bool_]) -> None:
        """The queue is exactly the resident folios."""
        check_tracked(self.queue.snapshot(), on_lru)
