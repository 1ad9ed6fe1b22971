"""MMU notifiers: how a secondary MMU (KVM) hooks into the host's page-table changes and aging.

Models
    ``struct mmu_notifier_ops``, a table of optional callbacks a subsystem registers on an mm, and
    the mm side that calls them (``mm->notifier_subscriptions``). This is the "rmap extender": when
    the host's rmap walk tests or clears a young bit, or unmaps a page, the walk is extended into
    the subscriber's page tables, which have a different format the host knows nothing about.

Kernel reference
    include/linux/mmu_notifier.h (the ops and their contracts; the ``*_notify`` helpers),
    mm/mmu_notifier.c (``__mmu_notifier_clear_flush_young`` and friends: every subscriber is
    called and the results OR-ed, no short circuit).

Batching
    Each callback takes arrays ``start``/``end`` of hva ranges: one element is one kernel call on
    ``[start[i], end[i])``. Calls are counted one per element per subscriber, where they are made,
    into the host's vmstat (``mmu_notifier_<op>``, with the mm they belong to). Batching changes the
    cost of simulating, not the semantics: each element gets exactly the kernel's treatment. Each
    callback also gets ``work``, where the subscriber adds the work it did (sptes walked, TLB
    flushes) so the caller can price it ("count, then price").

Invariants
    ``invalidate_range_start``/``_end`` pair up; between them a subscriber installs no new
    mapping in the range. A subscriber without an aging op simply does not see aging calls (the
    kernel skips NULL ops), so the host then judges recency by its own pte young bits alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from sim.host.vmstat import VmEvents

Hva = NDArray[np.int64]


class NotifierWork(Protocol):
    """Counters a subscriber adds its work to (``ScanControl`` implements this)."""

    nr_notifier_calls: int
    nr_sptes_walked: int
    nr_ptes_scanned: int  # page-table entries scanned for want of an rmap (rmap off)
    nr_tlb_flushes: int


AgeOp = Callable[[Hva, Hva, NotifierWork], NDArray[np.bool_]]
RangeOp = Callable[[Hva, Hva, NotifierWork], None]


@dataclass(frozen=True, slots=True)
class MmuNotifierOps:
    """``struct mmu_notifier_ops``: optional callbacks with the kernel's contracts.

    Attributes:
        clear_flush_young: test and clear the young bit of every secondary mapping in each range;
            return which ranges had one young. The secondary may flush its TLB. Called from
            ``ptep_clear_flush_young_notify`` in classic reclaim's ``folio_referenced``.
        clear_young: same, without a TLB flush ("lightweight"); MGLRU, DAMON, idle tracking.
        test_young: test only, no side effects (khugepaged).
        invalidate_range_start: drop secondary mappings in each range (a page is about to be
            unmapped or changed); until the matching ``_end`` none may be re-established.
        invalidate_range_end: the change is complete; faults may map the range again.
        release: the mm is going away (``exit_mmap``): drop everything.
    """

    clear_flush_young: AgeOp | None = None
    clear_young: AgeOp | None = None
    test_young: AgeOp | None = None
    invalidate_range_start: RangeOp | None = None
    invalidate_range_end: RangeOp | None = None
    release: Callable[[], None] | None = None


NOTIFIER_PREFIX = "mmu_notifier_"  # vmstat key of an op: NOTIFIER_PREFIX + op

OPS = (
    "clear_flush_young",
    "clear_young",
    "test_young",
    "invalidate_range_start",
    "invalidate_range_end",
    "release",
)


@dataclass(slots=True)
class MmuNotifierSubscriptions:
    """``mm->notifier_subscriptions``: the ops tables registered on one mm.

    Calls are counted into ``vmstat`` (attached by the machine, with the mm's index); without
    one (a chain built alone in a test) they are not counted. Whoever caches a view of this
    mm's subscribers (the fused TDP walk) asks to be told when they change (``watch``), so a
    registration reaches only the views of its own mm and nobody checks anything per call.
    """

    subscribers: list[MmuNotifierOps] = field(default_factory=list)
    vmstat: VmEvents | None = None
    mm: int = -1
    _watchers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def register(self, ops: MmuNotifierOps) -> None:
        """``mmu_notifier_register``; the watchers of this mm are told."""
        self.subscribers.append(ops)
        for changed in self._watchers:
            changed()

    def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` after every later registration on this mm."""
        self._watchers.append(changed)

    def count(self, op: str, n: int) -> None:
        """``n`` calls of ``op`` into one subscriber."""
        if self.vmstat is not None:
            self.vmstat.count(NOTIFIER_PREFIX + op, n, self.mm)

    def _age(self, op: str, start: Hva, end: Hva, work: NotifierWork) -> NDArray[np.bool_]:
        young = np.zeros(len(start), dtype=np.bool_)
        for sub in self.subscribers:
            fn: AgeOp | None = getattr(sub, op)
            if fn is None:
                continue
            young |= fn(start, end, work)  # no short circuit: every subscriber must clear
            self.count(op, len(start))
            work.nr_notifier_calls += len(start)
        return young

    def clear_flush_young(self, start: Hva, end: Hva, work: NotifierWork) -> NDArray[np.bool_]:
        """``mmu_notifier_clear_flush_young``: OR over subscribers, each clearing its bits."""
        return self._age("clear_flush_young", start, end, work)

    def clear_young(self, start: Hva, end: Hva, work: NotifierWork) -> NDArray[np.bool_]:
        """``mmu_notifier_clear_young``."""
        return self._age("clear_young", start, end, work)

    def test_young(self, start: Hva, end: Hva, work: NotifierWork) -> NDArray[np.bool_]:
        """``mmu_notifier_test_young``."""
        return self._age("test_young", start, end, work)

    def _range(self, op: str, start: Hva, end: Hva, work: NotifierWork) -> None:
        for sub in self.subscribers:
            fn: RangeOp | None = getattr(sub, op)
            if fn is None:
                continue
            fn(start, end, work)
            self.count(op, len(start))
            work.nr_notifier_calls += len(start)

    def invalidate_range_start(self, start: Hva, end: Hva, work: NotifierWork) -> None:
        """``mmu_notifier_invalidate_range_start``."""
        self._range("invalidate_range_start", start, end, work)

    def invalidate_range_end(self, start: Hva, end: Hva, work: NotifierWork) -> None:
        """``mmu_notifier_invalidate_range_end``."""
        self._range("invalidate_range_end", start, end, work)

    def release(self) -> None:
        """``mmu_notifier_release`` from ``exit_mmap``."""
        for sub in self.subscribers:
            if sub.release is not None:
                sub.release()
                self.count("release", 1)
