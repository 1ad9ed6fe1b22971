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

from sim.host.vmscan import ScanControl
from sim.reclaim.base import Pfns, ReclaimBase, Reclaimer
from sim.reclaim.simple import QueuePolicy


class ClockConfig(ReclaimBase):
    """One-handed CLOCK over the accessed bits."""

    policy: Literal["clock"] = "clock"


class Clock(QueuePolicy):
    """Second-chance replacement driven by hardware accessed bits (a folio faulted in joins
    behind the hand with its accessed bit already set)."""

    name: ClassVar[str] = "clock"

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
            sc.isolated(int(young.sum()))  # looked at and rotated
            self.queue.add_head(batch[young])
            old = batch[~young]
            victims.append(old)
            found += len(old)
        return np.concatenate(victims) if victims else np.empty(0, dtype=np.int64)
