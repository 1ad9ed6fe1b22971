"""FIFO: evict the folio that has been resident longest; accesses change nothing.

Models
    The textbook first-in first-out replacement: a queue of resident folios in fault-in order.
    It ignores accessed bits entirely, so it is the floor any recency-based policy should beat.

Invariants
    The queue holds each resident folio exactly once, oldest at the tail.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from sim.host.vmscan import ScanControl
from sim.reclaim.base import Pfns, ReclaimBase, Reclaimer
from sim.reclaim.simple import QueuePolicy


class FifoConfig(ReclaimBase):
    """First in, first out."""

    policy: Literal["fifo"] = "fifo"


class Fifo(QueuePolicy):
    """First-in first-out replacement."""

    name: ClassVar[str] = "fifo"

    def pick(self, n: int, sc: ScanControl, reclaim: Reclaimer) -> Pfns:
        """The ``n`` oldest folios."""
        return self.queue.isolate_tail(n)
