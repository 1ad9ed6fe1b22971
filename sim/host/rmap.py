"""The host reverse map for guest RAM: from a frame to the ptes that map it, and what walks it.

Models
    ``folio_referenced`` and ``try_to_unmap`` for anonymous guest RAM. A guest page is mapped by
    exactly one host pte, in QEMU's VMA (no KSM here), so each rmap walk visits one mapping: the
    host pte young bit is tested and cleared and the mm's notifiers are asked about the same range
    (``ptep_clear_flush_young_notify``); unmapping is bracketed by
    ``mmu_notifier_invalidate_range_start/end`` so KVM zaps its sptes first.

Kernel reference
    mm/rmap.c: ``folio_referenced``, ``folio_referenced_one``, ``try_to_unmap_one``;
    include/linux/mmu_notifier.h: ``ptep_clear_flush_young_notify``.

Simplifications
    The rmap itself is arithmetic (``frame_pid`` then ``Mm.hva``) rather than an anon_vma tree;
    its walk is still counted and priced one entry per mapping.

Invariants
    Only pages with a present host pte are walked; after ``try_to_unmap`` no secondary mapping
    and no host pte maps the page.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from sim.host.memory import PAGE_SIZE, PTE_PRESENT, PTE_YOUNG, HostMemory
from sim.host.mm import Mm
from sim.host.mmu_notifier import NotifierWork


class RmapWork(NotifierWork, Protocol):
    """Counters an rmap walk adds to (``ScanControl`` implements this)."""

    nr_rmap_walked: int


class Shortcut(Protocol):
    """A fused walk through the notifier chain for the batches it can take (sim/kvm/shortcut.py):
    the same effects as the chain, or None / False (nothing done) to let the chain run."""

    def folio_referenced(
        self, pids: NDArray[np.int32], work: RmapWork, *, flush: bool
    ) -> NDArray[np.bool_] | None: ...

    def unmap(self, pids: NDArray[np.int32], work: RmapWork) -> bool: ...


class Rmap:
    """Walks from frames to their mappings (QEMU ptes) and on into the notifier chain."""

    def __init__(self, mem: HostMemory, mms: Sequence[Mm]) -> None:
        self.mem, self.mms = mem, list(mms)
        self.shortcut: Shortcut | None = None  # set by the world when its MMUs allow one

    def _by_mm(self, pids: NDArray[np.int32]) -> Iterator[tuple[Mm, NDArray[np.bool_] | None]]:
        """Group pages by owning mm; ``None`` as mask means all of them."""
        if len(pids) == 1:
            yield self.mms[self.mem.page_owner(pids.item(0))], None
            return
        owners = self.mem.page_owners(pids)
        first = int(owners[0])
        if (owners == first).all():
            yield self.mms[first], None
            return
        for idx in np.unique(owners):
            yield self.mms[int(idx)], owners == idx

    def folio_referenced(
        self, pfns: NDArray[np.integer], work: RmapWork, *, flush: bool = True
    ) -> NDArray[np.bool_]:
        """Test and clear young over every mapping of each folio; True where any was young.

        One mapping per guest page: the host pte young bit OR whatever the notifier subscribers
        report for ``[hva, hva + PAGE_SIZE)`` (``clear_flush_young``, or ``clear_young`` when
        ``flush`` is False, as MGLRU's look-around uses). Adds the walk to ``work``.
        """
        mem = self.mem
        pids = mem.frame_pid[pfns]
        if len(pids) == 0:
            return np.zeros(0, dtype=np.bool_)
        work.nr_rmap_walked += len(pids)
        if self.shortcut is not None:
            young = self.shortcut.folio_referenced(pids, work, flush=flush)
            if young is not None:
                return young
        f = mem.flags[pids]
        young = (f & PTE_YOUNG) != 0
        mem.flags[pids] = f & ~np.uint8(PTE_YOUNG)
        for mm, sel in self._by_mm(pids):
            subs = mm.notifiers
            if not subs.subscribers:
                continue
            p = pids if sel is None else pids[sel]
            hva = mm.hva(p)
            op = subs.clear_flush_young if flush else subs.clear_young
            y = op(hva, hva + PAGE_SIZE, work)
            if sel is None:
                young |= y
            else:
                young[sel] |= y
        return young

    def ptep_test_and_clear_young(
        self, pfns: NDArray[np.integer], work: RmapWork
    ) -> NDArray[np.bool_]:
        """Test and clear the host pte young bit of each folio's mapping, notifiers untouched."""
        mem = self.mem
        pids = mem.frame_pid[pfns]
        f = mem.flags[pids]
        mem.flags[pids] = f & ~np.uint8(PTE_YOUNG)
        work.nr_rmap_walked += len(pids)
        return (f & PTE_YOUNG) != 0

    def try_to_unmap(self, pfns: NDArray[np.integer], work: RmapWork) -> None:
        """Unmap each folio from every pte mapping it, secondary MMUs first.

        ``invalidate_range_start`` makes KVM zap its sptes (and move their dirty bits to the
        folio), then the host pte is cleared (it becomes a swap entry), then ``_end``.
        """
        mem = self.mem
        pids = mem.frame_pid[pfns]
        if len(pids) == 0:
            return
        work.nr_rmap_walked += len(pids)
        if self.shortcut is not None and self.shortcut.unmap(pids, work):
            return
        for mm, sel in self._by_mm(pids):
            p = pids if sel is None else pids[sel]
            hva = mm.hva(p)
            mm.notifiers.invalidate_range_start(hva, hva + PAGE_SIZE, work)
            mem.flags[p] &= ~np.uint8(PTE_PRESENT | PTE_YOUNG)
            mm.notifiers.invalidate_range_end(hva, hva + PAGE_SIZE, work)
