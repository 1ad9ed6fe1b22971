"""The host reverse map for guest RAM: from a frame to the ptes that map it, and what walks it.

Models
    ``folio_referenced`` and ``try_to_unmap`` for anonymous guest RAM. A guest page is mapped by
    exactly one host pte, in QEMU's VMA, so each rmap walk visits one mapping (a KSM folio, one
    per sharer: ``rmap_walk_ksm``, below): the
    host pte young bit is tested and cleared and the mm's notifiers are asked about the same range
    (``ptep_clear_flush_young_notify``); unmapping is bracketed by
    ``mmu_notifier_invalidate_range_start/end`` so KVM zaps its sptes first.

Kernel reference
    mm/rmap.c: ``folio_referenced``, ``folio_referenced_one``, ``try_to_unmap_one``;
    include/linux/mmu_notifier.h: ``ptep_clear_flush_young_notify``.

KSM
    A KSM folio (a stable node, sim/host/ksm.py) is mapped by each of its sharers' ptes, in
    different VMs' mms: ``rmap_walk_ksm`` visits every sharer, tests and clears its pte's young
    bit and calls its mm's notifier for its hva (N mappings, N notifier calls, N KVM walks). The
    folio is referenced if any was young; how many were is kept for ``folio_check_references``
    (``referenced_ptes > 1`` activates), as ``multi_referenced``, and which were, for MGLRU's
    look-around around each young mapping (``young_sharers``). MGLRU's page-table walk clears
    one sharer's pte at a time (``clear_young_ptes``: ``walk_pte_range`` visits ptes, not
    folios). ``try_to_unmap`` of a KSM
    folio invalidates every mapped sharer's hva (N KVM zaps and flushes) and turns each pte into
    a swap entry to the folio's one slot.

THP (``host.thp``, huge_memory.py)
    A large folio is walked as one mapping over its 2 MiB: its ptes' (or PMD's) young bits
    are tested and cleared together and the notifiers are asked once about the whole range
    (``pmdp_clear_flush_young_notify``: KVM ages every spte in it); ``try_to_unmap`` of a
    PMD-mapped one first splits the PMD (``TTU_SPLIT_HUGE_PMD``: ``split_huge_pmd``, its own
    2 MiB invalidation), then invalidates the range and clears every pte.

Simplifications
    The rmap itself is arithmetic (``frame_pid`` then ``Mm.hva``) rather than an anon_vma tree;
    its walk is still counted and priced one entry per mapping.

Counting
    Each mapping visited is counted where it is walked, into the host's ``rmap_walked`` (and
    into the caller's ``work`` for pricing).

Without an rmap (``host.rmap: none``)
    The counterfactual the rmap was built to avoid. Linux 2.4 had no reverse map: ``swap_out``
    scanned the page tables of every mm by virtual address to age and unmap pages. Linux 2.5/2.6
    added one (pte chains by Rik van Riel; object-based rmap by Dave McCracken for file pages;
    ``anon_vma`` by Hugh Dickins and Andrea Arcangeli for anonymous pages, 2.6.7; LWN "The
    object-based reverse-mapping VM" and "Virtual Memory II: the return of objrmap", 2004).
    Without ``anon_vma`` the kernel cannot tell which mm maps an anonymous folio, so finding its
    mappings means scanning the ptes of every mm with anonymous memory: here every live VM's
    QEMU mm. Rule: per folio walked (``folio_referenced``, ``try_to_unmap``, the look-around's
    test; a KSM folio once, its sharers all found by the same scan), the ptes scanned are, summed
    over live mms, 512 for every 512-page block of the mm (one last-level page table) in which
    a walk has ever seen a touched page (one with a frame, a swap copy or pte bits; page tables
    of anonymous memory are not freed until munmap or exit, so a block stays counted). The
    decisions are those of the rmap (same young bits, same pages unmapped): only the work
    differs, counted once here in ``rmap_pte_scans`` and the caller's ``nr_ptes_scanned``, and
    priced by ``costs.pte_scan_ns``. The scan is taken as sequential and the populated blocks
    as known (a real scan walks the upper levels too, and would test each pte's pfn). The
    simulator keeps the count rather than recounting every page at every walk (which cost
    16 ms a walk on a 12 x 4 GiB host): the first walk looks at every page, later ones only
    at the pages given a frame since (:meth:`Rmap.ptes_per_walk`).

Invariants
    Only pages with a present host pte are walked: a folio whose mapcount is zero (unmapped by
    reclaim, still in the swap cache) has nothing to walk and is not young. After
    ``try_to_unmap`` no secondary mapping and no host pte maps the page.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from sim.host.memory import NO_PFN, PAGE_SIZE, PTE_PRESENT, PTE_YOUNG, HostMemory
from sim.host.mm import Mm
from sim.host.mmu_notifier import NotifierWork
from sim.host.vmstat import RMAP_PTE_SCANS, VmEvents, VmStat

if TYPE_CHECKING:
    from sim.host.huge_memory import HugeMemory
    from sim.host.ksm import Ksm


PTRS_PER_PTE = 512  # entries of one last-level page table
HPAGE_PMD_SIZE = PAGE_SIZE * PTRS_PER_PTE  # bytes one PMD maps


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

    def __init__(
        self, mem: HostMemory, mms: Sequence[Mm], vmstat: VmEvents, *, anon_vma: bool = True
    ) -> None:
        self.mem, self.mms, self.vmstat = mem, list(mms), vmstat
        self.anon_vma = anon_vma  # False: find mappings by scanning every mm's page tables
        # per mm, its 512-page blocks whose page table exists (any page ever touched), and
        # their count; None until the first count
        self._tables = [
            np.zeros(-(-mm.nr_pages // PTRS_PER_PTE), dtype=np.bool_) for mm in self.mms
        ]
        self._nr_tables: list[int] | None = None
        self.shortcut: Shortcut | None = None  # set by the world when its MMUs allow one
        self.ksm: Ksm | None = None  # KSM's stable nodes, when KSM is on
        self.thp: HugeMemory | None = None  # THP-backed guest RAM, when host.thp is on
        # KSM folios the last folio_referenced found young through more than one pte
        self.multi_referenced: set[int] = set()
        # the sharers the last folio_referenced found young, per KSM folio (MGLRU's
        # look-around runs around each young mapping)
        self.young_sharers: dict[int, list[int]] = {}

    def walked(self, work: RmapWork, n: int) -> None:
        """Count ``n`` mappings visited by a walk (``rmap_walked``, and the caller's work)."""
        work.nr_rmap_walked += n
        self.vmstat[VmStat.RMAP_WALKED] += n

    def ptes_per_walk(self) -> int:
        """The ptes one rmap-less walk scans: every populated page table of every live mm.

        A table is populated once a walk finds any page of its 2 MiB range touched (with a
        frame, or flags: in swap, say), and stays so. The first count looks at every page;
        later ones only at the pages given a frame since (``HostMemory.assigned``; every page
        again if they were too many to keep), still touched: once the world is built (prefault
        places pages in swap without frames), a page becomes touched only by getting a frame.
        ``check`` holds that."""
        mem, mms, tables = self.mem, self.mms, self._tables
        if self._nr_tables is None or mem.assigned is None:  # the first, or too many given
            for mm, t in zip(mms, tables, strict=True):
                if not mm.dead:
                    t |= _touched_tables(mem, mm.pid_base, mm.nr_pages, len(t))
            self._nr_tables = [int(np.count_nonzero(t)) for t in tables]
            mem.assigned = []
        elif mem.assigned:
            pids = np.array(mem.assigned, dtype=np.int64)
            mem.assigned.clear()
            pids = pids[(mem.pfn[pids] != NO_PFN) | (mem.flags[pids] != 0)]
            owners = mem.page_owners(pids)
            for o in np.unique(owners).tolist():
                if o >= len(mms) or mms[o].dead:  # a page-cache or KSM page: no mm's
                    continue
                rel = pids[owners == o] - mms[o].pid_base
                t = tables[o]
                t[rel[rel < mms[o].nr_pages] // PTRS_PER_PTE] = True
                self._nr_tables[o] = int(np.count_nonzero(t))
        return PTRS_PER_PTE * sum(
            n for mm, n in zip(mms, self._nr_tables, strict=True) if not mm.dead
        )

    def check(self) -> None:
        """Every page table a live mm's touched page lies in is counted, or that page was given
        its frame since the last count (the next one counts it)."""
        if self.anon_vma or self._nr_tables is None or self.mem.assigned is None:
            return
        mem = self.mem
        pending = np.zeros(mem.nr_pages, dtype=np.bool_)
        pending[np.array(mem.assigned or [], dtype=np.int64)] = True
        for mm, t, n in zip(self.mms, self._tables, self._nr_tables, strict=True):
            if mm.dead:
                continue
            assert int(np.count_nonzero(t)) == n, "page-table count"
            b = mm.pid_base
            settled = ~pending[b : b + mm.nr_pages]
            tbl = np.flatnonzero(_touched(mem, b, mm.nr_pages) & settled) // PTRS_PER_PTE
            assert t[tbl].all(), "a page touched without a frame given"

    def scanned(self, work: RmapWork, folios: int) -> None:
        """Without an rmap, count the page-table scans that find ``folios`` folios' mappings
        (``rmap_pte_scans``, and the caller's work); with one, nothing."""
        if self.anon_vma or folios == 0:
            return
        n = folios * self.ptes_per_walk()
        work.nr_ptes_scanned += n
        self.vmstat[RMAP_PTE_SCANS] += n

    def _mapped(
        self, pfns: NDArray[np.integer]
    ) -> tuple[NDArray[np.int32], NDArray[np.bool_] | None]:
        """The pages of the folios, and which are mapped (None: all of them)."""
        mem = self.mem
        pids = mem.frame_pid[pfns]
        present = (mem.flags[pids] & PTE_PRESENT) != 0
        if self.thp is not None and not present.all():  # a THP whose head's pte a discard
            zapped = ~present & self.thp.large_heads(pids)  # zapped: its other ptes
            if zapped.any():
                present[zapped] = self.thp.folios_mapped(pids[zapped])
        if present.all():
            return pids, None
        return pids, present

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
        if self.ksm is not None:
            self.multi_referenced.clear()  # this call's, not an earlier batch's
            self.young_sharers.clear()
            nodes = self.ksm.is_node(self.mem.frame_pid[pfns])
            if nodes.any():
                return self._referenced_ksm(pfns, nodes, work, flush)
        pids, mapped = self._mapped(pfns)
        if mapped is not None:  # folio_mapcount == 0: nothing to walk, not referenced
            young = np.zeros(len(pids), dtype=np.bool_)
            if mapped.any():
                young[mapped] = self.folio_referenced(pfns[mapped], work, flush=flush)
            return young
        if len(pids) == 0:
            return np.zeros(0, dtype=np.bool_)
        mem = self.mem
        self.walked(work, len(pids))
        self.scanned(work, len(pids))
        if self.shortcut is not None:
            young = self.shortcut.folio_referenced(pids, work, flush=flush)
            if young is not None:
                return young
        f = mem.flags[pids]
        young = (f & PTE_YOUNG) != 0
        mem.flags[pids] = f & ~np.uint8(PTE_YOUNG)
        span = self._spans(pids, young)
        for mm, sel in self._by_mm(pids):
            subs = mm.notifiers
            if not subs.subscribers:
                continue
            p = pids if sel is None else pids[sel]
            hva = mm.hva(p)
            op = subs.clear_flush_young if flush else subs.clear_young
            y = op(hva, hva + (span if sel is None or isinstance(span, int) else span[sel]), work)
            if sel is None:
                young |= y
            else:
                young[sel] |= y
        return young

    def _spans(
        self, pids: NDArray[np.int32], young: NDArray[np.bool_] | None = None
    ) -> int | NDArray[np.int64]:
        """Bytes each folio's mapping covers: a page, or 2 MiB for a large folio (its PMD, or
        its 512 ptes). ``young``: the host young bits just taken, OR-ed with (and cleared
        from) a large folio's other ptes (``folio_referenced_one``: one PMD young bit, or
        every pte's)."""
        if self.thp is None:
            return PAGE_SIZE
        large = self.thp.large_heads(pids)
        if not large.any():
            return PAGE_SIZE
        if young is not None:
            mem = self.mem
            for i in np.flatnonzero(large).tolist():
                h = int(pids[i])
                f = mem.flags[h : h + PTRS_PER_PTE]
                young[i] |= bool((f & PTE_YOUNG).any())
                mem.flags[h : h + PTRS_PER_PTE] = f & ~np.uint8(PTE_YOUNG)
        return np.where(large, HPAGE_PMD_SIZE, PAGE_SIZE).astype(np.int64)

    def split_huge_pmd(self, head: int, work: RmapWork) -> None:
        """``__split_huge_pmd`` of the PMD mapping the large folio whose head is ``head``
        (``TTU_SPLIT_HUGE_PMD``, ``thp_split_pmd``): the mm's notifiers invalidate the 2 MiB
        range (KVM zaps its huge spte; later faults map 4 KiB sptes), then the PMD becomes
        512 ptes. Nothing for a folio already mapped by ptes."""
        assert self.thp is not None
        if not self.thp.pmd_mapped(head):
            return
        mm = self.mms[self.mem.page_owner(head)]
        hva = mm.hva(np.array([head], dtype=np.int64))
        mm.notifiers.invalidate_range_start(hva, hva + HPAGE_PMD_SIZE, work)
        self.thp.split_pmd(head)
        mm.notifiers.invalidate_range_end(hva, hva + HPAGE_PMD_SIZE, work)

    def _referenced_ksm(
        self, pfns: NDArray[np.integer], nodes: NDArray[np.bool_], work: RmapWork, flush: bool
    ) -> NDArray[np.bool_]:
        """:meth:`folio_referenced` of a batch with KSM folios: the others as usual, each KSM
        folio by ``rmap_walk_ksm`` over its sharers (one mapping and notifier call each)."""
        assert self.ksm is not None
        young = np.zeros(len(pfns), dtype=np.bool_)
        if not nodes.all():
            young[~nodes] = self.folio_referenced(pfns[~nodes], work, flush=flush)
        mem, ksm = self.mem, self.ksm
        self.multi_referenced.clear()
        for i in np.flatnonzero(nodes).tolist():
            pfn = int(pfns[i])
            sharers = ksm.mapped_sharers(mem.frame_pid.item(pfn))
            if len(sharers) == 0:
                continue
            self.walked(work, len(sharers))
            self.scanned(work, 1)  # one scan of every mm finds every sharer
            f = mem.flags[sharers]
            y = (f & PTE_YOUNG) != 0
            mem.flags[sharers] = f & ~np.uint8(PTE_YOUNG)
            for mm, sel in self._by_mm(sharers):
                p = sharers if sel is None else sharers[sel]
                if not mm.notifiers.subscribers:
                    continue
                for one in p.tolist():  # a notifier call per mapping, as rmap_walk_ksm makes
                    hva = mm.hva(np.array([one], dtype=np.int64))
                    op = mm.notifiers.clear_flush_young if flush else mm.notifiers.clear_young
                    hit = op(hva, hva + PAGE_SIZE, work)
                    y[sharers == one] |= bool(hit[0])
            referenced = int(np.count_nonzero(y))
            young[i] = referenced > 0
            if referenced:
                self.young_sharers[pfn] = sharers[y].tolist()
            if referenced > 1:
                self.multi_referenced.add(pfn)
        return young

    def clear_young_ptes(self, pids: NDArray[np.int64], work: RmapWork) -> NDArray[np.bool_]:
        """``ptep_clear_young_notify`` on the ptes of the given pages, each alone: MGLRU's walk
        and look-around meeting KSM sharers' ptes (one mapping and notifier call each, not the
        folio's ``rmap_walk_ksm``)."""
        mem = self.mem
        self.walked(work, len(pids))
        self.scanned(work, len(pids))
        f = mem.flags[pids]
        young = (f & PTE_YOUNG) != 0
        mem.flags[pids] = f & ~np.uint8(PTE_YOUNG)
        for mm, sel in self._by_mm(pids):
            if not mm.notifiers.subscribers:
                continue
            p = pids if sel is None else pids[sel]
            hva = mm.hva(p)
            y = mm.notifiers.clear_young(hva, hva + PAGE_SIZE, work)
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
        pids, mapped = self._mapped(pfns)
        if mapped is not None:
            pids = pids[mapped]
        f = mem.flags[pids]
        mem.flags[pids] = f & ~np.uint8(PTE_YOUNG)
        self.walked(work, len(pids))
        self.scanned(work, len(pids))
        young = (f & PTE_YOUNG) != 0
        if mapped is None:
            return young
        out = np.zeros(len(mapped), dtype=np.bool_)
        out[mapped] = young
        return out

    def try_to_unmap(self, pfns: NDArray[np.integer], work: RmapWork) -> None:
        """Unmap each folio from every pte mapping it, secondary MMUs first.

        ``invalidate_range_start`` makes KVM zap its sptes (and move their dirty bits to the
        folio), then the host pte is cleared (it becomes a swap entry), then ``_end``. Every
        folio given is mapped.
        """
        mem = self.mem
        pids = mem.frame_pid[pfns]
        if len(pids) == 0:
            return
        if self.ksm is not None:
            nodes = self.ksm.is_node(pids)
            if nodes.any():  # rmap_walk_ksm: every sharer's mapping
                for npid in pids[nodes].tolist():
                    self.scanned(work, 1)
                    self.walked(work, self.ksm.unmap(npid, work))
                if nodes.all():
                    return
                pfns, pids = pfns[~nodes], pids[~nodes]
        self.walked(work, len(pids))
        self.scanned(work, len(pids))
        if self.shortcut is not None and self.shortcut.unmap(pids, work):
            return
        span = self._spans(pids)
        if not isinstance(span, int):  # large folios: TTU_SPLIT_HUGE_PMD, then every pte
            for h in pids[span > PAGE_SIZE].tolist():
                self.split_huge_pmd(h, work)
                mem.flags[h : h + PTRS_PER_PTE] &= ~np.uint8(PTE_PRESENT | PTE_YOUNG)
        for mm, sel in self._by_mm(pids):
            p = pids if sel is None else pids[sel]
            hva = mm.hva(p)
            end = hva + (span if sel is None or isinstance(span, int) else span[sel])
            mm.notifiers.invalidate_range_start(hva, end, work)
            mem.flags[p] &= ~np.uint8(PTE_PRESENT | PTE_YOUNG)
            mm.notifiers.invalidate_range_end(hva, end, work)


def _touched_tables(mem: HostMemory, base: int, nr_pages: int, nr_tables: int) -> NDArray[np.bool_]:
    """Which of an mm's ``nr_tables`` page tables (its pages ``base .. base + nr_pages``, 512
    a table) hold a touched page: one with a pfn or shadow, or flags."""
    touched = np.zeros(nr_tables * PTRS_PER_PTE, dtype=np.bool_)
    touched[:nr_pages] = _touched(mem, base, nr_pages)
    return touched.reshape(-1, PTRS_PER_PTE).any(axis=1)


def _touched(mem: HostMemory, base: int, nr_pages: int) -> NDArray[np.bool_]:
    """Which of pages ``base .. base + nr_pages`` are touched: with a pfn or shadow, or flags."""
    sl = slice(base, base + nr_pages)
    return (mem.pfn[sl] != NO_PFN) | (mem.flags[sl] != 0)
