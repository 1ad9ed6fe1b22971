"""Random: evict resident folios chosen uniformly at random.

Models
    The memoryless baseline: no ordering and no accessed bits. Its expected miss ratio on a
    uniform workload equals FIFO's and LRU's; any skew in the workload makes it worse than LRU.

Invariants
    The resident set holds each resident folio exactly once.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from sim.host.vmscan import ScanControl
from sim.reclaim.base import Pfns, ReclaimBase, Reclaimer
from sim.reclaim.simple import ResidentSet, SimplePolicy, check_tracked


class RandomConfig(ReclaimBase):
    """Uniformly random victims (seeded from the scenario seed)."""

    policy: Literal["random"] = "random"


class Random(SimplePolicy):
    """Random replacement."""

    name: ClassVar[str] = "random"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.resident = ResidentSet(self.nr_frames)

    def nr_resident(self) -> int:
        """Folios tracked."""
        return self.resident.n

    def folio_add_lru(self, pfn: int, shadow: int | None) -> None:
        """Track a new folio."""
        self.resident.add(pfn)

    def pick(self, n: int, sc: ScanControl, reclaim: Reclaimer) -> Pfns:
        """``n`` distinct folios, uniformly at random."""
        n = min(n, self.resident.n)
        if n == 0:
            return np.empty(0, dtype=np.int64)
        idx = self.rng.choice(self.resident.n, size=n, replace=False)
        victims = self.resident.items[idx].copy()
        self.resident.discard(victims)
        return victims

    def putback(self, pfns: Pfns) -> None:
        """Failures are tracked again."""
        for pfn in pfns.tolist():
            self.resident.add(pfn)

    def folio_remove(self, pfns: Pfns) -> None:
        """Folios of an exiting mm leave the set."""
        self.resident.discard(pfns)

    def check(self, on_lru: NDArray[np.bool_]) -> None:
        """The set is exactly the resident folios."""
        check_tracked(self.resident.members(), on_lru)
