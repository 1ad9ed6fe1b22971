"""Exact LRU: an oracle that sees every access (no real kernel can).

Models
    Evicts the least recently used resident folio, by the global sequence number of each
    folio's last access. Real hardware exposes only accessed bits; this is the reference the
    kernel's approximations (two-list, MGLRU, CLOCK) are judged against ("LRU gap").

Implementation
    Last-access stamps per frame; victims come from a cached list of the oldest folios,
    recomputed when exhausted. The cache is exact: a folio outside it was younger than every
    cached one when it was built, and accesses only make folios younger, so the oldest cached
    folio still unaccessed is the global LRU folio.

Invariants
    Tracked folios are exactly the resident ones; a folio's stamp is its last access.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from sim.host.vmscan import ScanControl
from sim.reclaim.base import Pfns, ReclaimBase, Reclaimer
from sim.reclaim.simple import SimplePolicy, check_tracked

_CACHE = 1024  # victims to line up per scan of the resident set


class LruConfig(ReclaimBase):
    """Exact LRU (oracle)."""

    policy: Literal["lru"] = "lru"


def last_occurrence(pfns: Pfns, values: NDArray[np.int64]) -> tuple[Pfns, NDArray[np.int64]]:
    """Each distinct pfn with the value at its last occurrence (order-safe fancy assignment)."""
    rev = pfns[::-1]
    u, first = np.unique(rev, return_index=True)
    return u, values[::-1][first]


class Lru(SimplePolicy):
    """Least-recently-used replacement from exact access stamps."""

    name: ClassVar[str] = "lru"
    observes_accesses: ClassVar[bool] = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.stamp = np.full(self.nr_frames, -1, dtype=np.int64)  # -1: not tracked
        self.nr = 0
        self._clock = -1  # last sequence number seen (new folios get the latest)
        self._cand = np.empty(0, dtype=np.int64)
        self._cand_stamp = np.empty(0, dtype=np.int64)
        self._next = 0
        self._rotated: list[int] = []  # written folios, now the least recently used

    def nr_resident(self) -> int:
        """Folios tracked."""
        return self.nr

    def folio_add_lru(self, pfn: int, shadow: int | None) -> None:
        """A folio faulted in now is the most recently used."""
        self.stamp[pfn] = max(self._clock, 0)
        self.nr += 1

    def on_access(self, pfns: Pfns, seq: NDArray[np.int64]) -> None:
        """Stamp each accessed folio with the sequence number of its last access."""
        if len(pfns) == 0:
            return
        u, last = last_occurrence(pfns, seq)
        self.stamp[u] = last
        self._clock = int(seq[-1])

    def _refill(self) -> None:
        tracked = np.flatnonzero(self.stamp >= 0)
        k = min(_CACHE, len(tracked))
        if k == 0:
            self._cand = np.empty(0, dtype=np.int64)
        else:
            st = self.stamp[tracked]
            part = np.argpartition(st, k - 1)[:k] if k < len(tracked) else np.arange(k)
            order = np.lexsort((tracked[part], st[part]))
            self._cand = tracked[part][order]
        self._cand_stamp = self.stamp[self._cand]
        self._next = 0

    def pick(self, n: int, sc: ScanControl, reclaim: Reclaimer) -> Pfns:
        """The ``n`` least recently used folios (written folios whose write ended first)."""
        out: list[int] = []
        while len(out) < n and self._rotated:
            pfn = self._rotated.pop(0)
            if self.stamp[pfn] == 0:  # not used since: still the least recently used
                out.append(pfn)
                self.stamp[pfn] = -1
                self.nr -= 1
        while len(out) < n:
            if self._next >= len(self._cand):
                self._refill()
                if not len(self._cand):
                    break
            pfn = int(self._cand[self._next])
            valid = self.stamp[pfn] == self._cand_stamp[self._next]
            self._next += 1
            if valid:  # not accessed (nor evicted) since the cache was built
                out.append(pfn)
                self.stamp[pfn] = -1
                self.nr -= 1
        return np.array(out, dtype=np.int64)

    def putback(self, pfns: Pfns) -> None:
        """Folios not freed count as just used (until a written one's write ends)."""
        self.stamp[pfns] = max(self._clock, 0)
        self.nr += len(pfns)

    def folio_rotate_reclaimable(self, pfn: int) -> None:
        """A written folio becomes the least recently used: the next victim."""
        if self.stamp[pfn] >= 0:
            self.stamp[pfn] = 0
            self._rotated.append(pfn)

    def folio_remove(self, pfns: Pfns) -> None:
        """Folios of an exiting mm are forgotten."""
        tracked = pfns[self.stamp[pfns] >= 0]
        self.stamp[tracked] = -1
        self.nr -= len(tracked)

    def check(self, on_lru: NDArray[np.bool_]) -> None:
        """Tracked folios are exactly the resident ones."""
        tracked = np.flatnonzero(self.stamp >= 0)
        assert len(tracked) == self.nr, "tracked count"
        check_tracked(tracked, on_lru)
