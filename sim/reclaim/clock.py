"""CLOCK: one hand, one referenced bit per folio (second chance).

Models
    Resident folios form a FIFO queue (the clock face); a folio's referenced bit is its accessed
    bit, which the host reads and clears through ``folio_referenced`` (QEMU's pte young bit OR
    KVM's spte accessed bits via the notifiers). It is set on every touch, including the touch
    that faults the folio in (GUP makes the pte young, KVM installs the spte accessed). To evict,
    the hand looks at the oldest folio: referenced -> clear the bit, move it to the newest end;
    not referenced -> evict it. In demand mode (one victim per miss) this is exactly the
    textbook CLOCK; under kswapd the hand advances a batch at a time.

Invariants
    The queue holds each resident folio exactly once.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from sim.host.vmscan import ScanControl
from sim.reclaim.base import PageQueue, Pfns, ReclaimBase, Reclaimer
from sim.reclaim.simple import SimplePolicy, check_tracked


class ClockConfig(ReclaimBase):
    """One-handed CLOCK over the accessed bits."""

    policy: Literal["clock"] = "clock"


class Clock(SimplePolicy):
    """Second-chance replacement driven by hardware accessed bits."""

    name: ClassVar[str] = "clock"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.queue = PageQueue()

    def nr_resident(self) -> int:
        """Folios on the clock face."""
        return len(self.queue)

    def folio_add_lru(self, pfn: int, shadow: int | None) -> None:
        """A faulted-in folio joins behind the hand (its accessed bit is already set)."""
        self.queue.add_one(pfn)

    def pick(self, n: int, sc: ScanControl, reclaim: Reclaimer) -> Pfns:
        """Advance the hand until ``n`` unreferenced folios are found (or the face is done).

        The hand looks at ``n`` folios at a time; referenced ones lose their bit and go to the
        newest end. The total looked at is bounded by two turns of the face.
        """
        victims: list[Pfns] = []
        found = 0
        limit = 2 * len(self.queue) + n
        looked = 0
        while found < n and looked < limit and len(self.queue):
            batch = self.queue.isolate_tail(min(n - found, limit - looked))
            looked += len(batch)
            young = reclaim.folio_referenced(batch, sc)
            sc.nr_scanned += int(young.sum())  # looked at and rotated
            self.queue.add_head(batch[young])
            old = batch[~young]
            victims.append(old)
            found += len(old)
        return np.concatenate(victims) if victims else np.empty(0, dtype=np.int64)

    def putback(self, pfns: Pfns) -> None:
        """Failures go behind the hand."""
        self.queue.add_head(pfns)

    def folio_remove(self, pfns: Pfns) -> None:
        """Folios of an exiting mm leave the face."""
        self.queue.remove(pfns)

    def check(self, on_lru: NDArray[np.bool_]) -> None:
        """The face is exactly the resident folios."""
        check_tracked(self.queue.snapshot(), on_lru)
