"""Belady's OPT (MIN): an oracle that knows the future.

Models
    On a miss with memory full, evict the resident folio whose next access is farthest in the
    future (never again = infinitely far). It gives the fewest faults any policy can; every
    result is judged against it ("OPT gap"). It is defined only where the reference string is
    fixed in advance: demand mode (trace replay, or synthetic streams merged by guest time),
    where faults take no time and so cannot reorder accesses.

Implementation
    Each folio's next use is ``next_use[seq]`` of its last access; a max-heap of (next use,
    pfn) with lazy deletion yields victims in O(log n).

Invariants
    Tracked folios are exactly the resident ones.
"""

from __future__ import annotations

import heapq
from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from sim.host.vmscan import ScanControl
from sim.reclaim.base import Pfns, ReclaimBase, Reclaimer
from sim.reclaim.lru import last_occurrence
from sim.reclaim.simple import SimplePolicy, check_tracked

NEVER = np.iinfo(np.int64).max


class OptConfig(ReclaimBase):
    """Belady's MIN (oracle); needs ``trigger: demand``."""

    policy: Literal["opt"] = "opt"


class Opt(SimplePolicy):
    """Farthest-next-use replacement."""

    name: ClassVar[str] = "opt"
    observes_accesses: ClassVar[bool] = True
    needs_future: ClassVar[bool] = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.nu = np.full(self.nr_frames, -1, dtype=np.int64)  # next use; -1: not tracked
        self.nr = 0
        self._heap: list[tuple[int, int]] = []  # (-next_use, pfn)
        self._future: NDArray[np.int64] | None = None

    def set_future(self, next_use: NDArray[np.int64]) -> None:
        """The reference string's next-use table."""
        self._future = next_use

    def nr_resident(self) -> int:
        """Folios tracked."""
        return self.nr

    def folio_add_lru(self, pfn: int, shadow: int | None) -> None:
        """Tracked from now; its next use is set by the access that faulted it in."""
        self.nu[pfn] = NEVER
        heapq.heappush(self._heap, (-NEVER, pfn))
        self.nr += 1

    def on_access(self, pfns: Pfns, seq: NDArray[np.int64]) -> None:
        """Each accessed folio's next use becomes that of its last access."""
        if self._future is None:
            raise RuntimeError("OPT needs the reference string (demand mode)")
        if len(pfns) == 0:
            return
        u, last = last_occurrence(pfns, seq)
        nxt = self._future[last]
        self.nu[u] = nxt
        heap = self._heap
        for pfn, n in zip(u.tolist(), nxt.tolist(), strict=True):
            heapq.heappush(heap, (-n, pfn))

    def pick(self, n: int, sc: ScanControl, reclaim: Reclaimer) -> Pfns:
        """The ``n`` folios used farthest in the future."""
        out: list[int] = []
        heap, nu = self._heap, self.nu
        while len(out) < n and heap:
            neg, pfn = heapq.heappop(heap)
            if nu[pfn] == -neg:
                out.append(pfn)
                nu[pfn] = -1
        victims = np.array(out, dtype=np.int64)
        self.nr -= len(victims)
        return victims

    def putback(self, pfns: Pfns) -> None:
        """Failures keep their next use."""
        raise RuntimeError("OPT runs in demand mode, where reclaim cannot fail")

    def folio_remove(self, pfns: Pfns) -> None:
        """Folios of an exiting mm are forgotten."""
        tracked = pfns[self.nu[pfns] >= 0]
        self.nu[tracked] = -1
        self.nr -= len(tracked)

    def check(self, on_lru: NDArray[np.bool_]) -> None:
        """Tracked folios are exactly the resident ones."""
        tracked = np.flatnonzero(self.nu >= 0)
        assert len(tracked) == self.nr, "tracked count"
        check_tracked(tracked, on_lru)
