"""KVM's secondary MMU for one VM: memslots, sptes and KVM's rmap (gfn -> sptes).

Models
    A memslot maps a guest-physical range (gfns) onto QEMU's host virtual range (hvas). Each gfn
    is mapped by ``sptes_per_gfn`` spte slots: one with the TDP MMU (EPT/NPT: the table is indexed
    by gfn and there is no rmap), several with shadow paging (a guest page reached through several
    guest page tables has several shadow sptes, chained in ``rmap[gfn]``). An spte is present or
    not, has accessed/dirty bits (EPT A/D) or, without A/D bits, is "access-tracked" after aging:
    its R/X permissions are parked so the next guest touch takes a fast page fault (the bits
    and their rules: spte.py).

Kernel reference
    arch/x86/kvm/mmu/spte.h (``is_accessed_spte``, ``mark_spte_for_access_track``),
    arch/x86/kvm/mmu/tdp_mmu.c (``kvm_tdp_mmu_age_gfn_range``, ``kvm_tdp_mmu_unmap_gfn_range``),
    arch/x86/kvm/mmu/mmu.c (``kvm_rmap_age_gfn_range``, ``kvm_zap_rmap``, ``fast_page_fault``,
    ``is_page_fault_stale``), virt/kvm/kvm_main.c (``mmu_invalidate_seq``,
    ``mmu_invalidate_in_progress``, ``kvm_flush_remote_tlbs``).

Simplifications
    The guest's TLB is not modelled: an access always goes through the spte (so aging is never
    hidden by a stale TLB entry). KVM marks the host folio dirty when it releases a page it
    faulted in and could map writable (``kvm.dirty_on_map``, the default: private guest RAM is
    writable, and recent ``do_swap_page`` maps exclusive swap-ins writable even on reads), and
    moves spte dirty bits to the folio when it zaps them. With ``dirty_on_map`` off a page is
    dirty only if the guest wrote it (older kernels mapped read swap-ins read-only; the extra
    write-protect fault they then took is not modelled). The spte dirty bit is tracked the same
    way in both A/D modes.

Without KVM's rmap (``kvm.shadow_rmap: false``)
    Under shadow paging the sptes of a gfn are found only through its rmap chain
    (``kvm_rmap_age_gfn_range``, ``kvm_zap_rmap`` walk ``gfn_to_rmap``). Without it, a handler
    would have to scan the VM's shadow pages (``kvm->arch.active_mmu_pages``, as
    ``kvm_mmu_zap_all`` does) for sptes pointing at the page: each gfn of an aging or unmap
    call is taken to scan every present spte of the VM, counted per VM in ``kvm_spte_scans``
    and the caller's ``nr_ptes_scanned`` (priced by ``costs.pte_scan_ns``) instead of the chain's
    ``kvm_sptes_walked``. The sptes visited and changed are the same. With the TDP MMU (and
    legacy TDP) the table is indexed by gfn and the walk needs no rmap: nothing changes.

Invariants
    ``rmap_count[gfn]`` equals the number of present sptes of ``gfn``; an spte is present only
    while the host pte of its page is present (the invalidation zaps it first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from sim.host.memory import PAGE_SHIFT
from sim.host.mmu_notifier import NotifierWork
from sim.host.vmstat import SPTE_SCANS, VmEvents, VmStat
from sim.kvm import spte as sp
from sim.kvm.spte import SPTE_NONPRESENT

_PAGE = 1 << PAGE_SHIFT
_HPAGE_NR = 512  # 4 KiB gfns under one 2 MiB spte


@dataclass(frozen=True, slots=True)
class Memslot:
    """``struct kvm_memory_slot``: gfns ``[base_gfn, base_gfn + npages)`` at ``userspace_addr``."""

    base_gfn: int
    npages: int
    userspace_addr: int


def _no_vcpus() -> None:
    """``revoked`` for an MMU no vCPU steps on (demand mode, tests)."""


class KvmMmu:
    """sptes, KVM's rmap and the invalidation sequence of one VM.

    Args:
        nr_gfns: guest memory in pages.
        memslots: the VM's memslots (non-overlapping).
        sptes_per_gfn: 1 for the TDP MMU; k for shadow paging with k aliases per guest page.
        ept_ad: hardware accessed/dirty bits in sptes (else access tracking).
        dirty_on_map: the host page is writable for KVM, so releasing it after a fault marks
            the folio dirty (``kvm_release_faultin_page(..., map_writable)``).
        mark_dirty: host callback ``kvm_set_pfn_dirty`` for gfns whose dirty spte was zapped.
        kick: called with the number of remote TLB flushes to charge the VM's vCPUs for.
        revoked: called after sptes were zapped or access-tracked (vCPUs recheck their step).
        spte: storage for the sptes (a view into the host-wide array), else allocated here.
        vmstat: the host's counters, where the sptes walked and the remote TLB flushes are
            counted (as this VM's, index ``mm``); None: not counted (an MMU tested alone).
        mm: the VM's index.
        rmap: KVM's rmap finds a gfn's sptes; False (shadow paging without it): every present
            spte of the VM is scanned per gfn (``kvm_spte_scans``).
    """

    def __init__(
        self,
        nr_gfns: int,
        memslots: Sequence[Memslot],
        *,
        sptes_per_gfn: int = 1,
        ept_ad: bool = True,
        dirty_on_map: bool = True,
        mark_dirty: Callable[[NDArray[np.int64]], None],
        kick: Callable[[int], None],
        revoked: Callable[[], None] | None = None,
        spte: NDArray[np.uint8] | None = None,
        vmstat: VmEvents | None = None,
        mm: int = -1,
        rmap: bool = True,
    ) -> None:
        self.vmstat, self.mm = vmstat, mm
        self.rmap = rmap  # False: shadow sptes are found by scanning them all
        self.nr_gfns, self.k, self.ept_ad = nr_gfns, sptes_per_gfn, ept_ad
        self.dirty_on_map = dirty_on_map
        self.memslots = sorted(memslots, key=lambda s: s.userspace_addr)
        self._slot_hva = np.array([s.userspace_addr for s in self.memslots], dtype=np.int64)
        self._slot_end = np.array(
            [s.userspace_addr + (s.npages << PAGE_SHIFT) for s in self.memslots], dtype=np.int64
        )
        self._slot_gfn = np.array([s.base_gfn for s in self.memslots], dtype=np.int64)
        one = len(self.memslots) == 1  # the common layout: _tdp_pages's bounds
        self._slot_lo = int(self._slot_hva[0]) if one else 0
        self._slot_hi = int(self._slot_end[0]) if one else 0
        self._slot_base = int(self._slot_gfn[0]) if one else 0
        self.spte = np.zeros(nr_gfns * sptes_per_gfn, dtype=np.uint8) if spte is None else spte
        assert len(self.spte) == nr_gfns * sptes_per_gfn
        # KVM's rmap chain lengths; with one spte per gfn (TDP) a chain is the present bit of
        # that spte, so nothing is stored and ``rmap_count`` derives it.
        self._rmap_count = np.zeros(nr_gfns, dtype=np.uint8) if sptes_per_gfn > 1 else None
        self.mark_dirty, self.kick = mark_dirty, kick
        self.revoked = revoked or _no_vcpus
        self.mmu_invalidate_seq = 0
        self.mmu_invalidate_in_progress = 0
        # kvm stats
        self.pf_fixed = 0
        self.pf_fast = 0
        self.pf_retry = 0
        self.tracked_marks = 0  # aging calls that parked sptes (access tracking)
        self.zapped = 0

    def count_walk(self, work: NotifierWork, n: int) -> None:
        """``n`` sptes visited by a handler's walk."""
        work.nr_sptes_walked += n
        if self.vmstat is not None:
            self.vmstat.count(VmStat.SPTES_WALKED, n, self.mm)

    def count_scan(self, work: NotifierWork, gfns: int) -> None:
        """Without an rmap: ``gfns`` gfns' sptes found by scanning every present spte."""
        n = gfns * int(np.count_nonzero(sp.is_present(self.spte)))
        work.nr_ptes_scanned += n
        if self.vmstat is not None:
            self.vmstat.count(SPTE_SCANS, n, self.mm)

    @property
    def rmap_count(self) -> NDArray[np.uint8]:
        """Present sptes per gfn (the length of each gfn's rmap chain)."""
        if self._rmap_count is None:
            return sp.is_present(self.spte).astype(np.uint8)
        return self._rmap_count

    # -- address translation -----------------------------------------------------------------
    def hva_to_gfn(self, hva: NDArray[np.int64]) -> NDArray[np.int64]:
        """Memslot lookup (``hva_to_gfn_memslot``); -1 where no memslot covers the address."""
        if len(self.memslots) == 1:
            lo, hi = int(self._slot_hva[0]), int(self._slot_end[0])
            gfn = self._slot_gfn[0] + ((hva - lo) >> PAGE_SHIFT)
            if hva.size and int(hva.min()) >= lo and int(hva.max()) < hi:
                return gfn
            return np.where((hva >= lo) & (hva < hi), gfn, -1)
        i = np.searchsorted(self._slot_hva, hva, side="right") - 1
        ic = np.maximum(i, 0)
        inside = (i >= 0) & (hva < self._slot_end[ic])
        gfn = self._slot_gfn[ic] + ((hva - self._slot_hva[ic]) >> PAGE_SHIFT)
        return np.where(inside, gfn, -1)

    def _ranges(
        self, start: NDArray[np.int64], end: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64] | None]:
        """gfns covered by each hva range, flattened; plus range offsets if any covers >1 gfn."""
        gs = self.hva_to_gfn(start)
        lens = (end - start + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT
        if (lens == 1).all():
            return gs, None
        offs = np.concatenate(([0], np.cumsum(lens)[:-1]))
        which = np.repeat(np.arange(len(gs)), lens)
        gfns = gs[which] + (np.arange(int(lens.sum())) - offs[which])
        return np.where(gs[which] >= 0, gfns, -1), offs

    def _slots(self, gfns: NDArray[np.int64]) -> NDArray[np.int64]:
        """spte indices of each gfn's slots, shape (n, k)."""
        k = self.k
        if k == 1:
            return gfns[:, None]
        return gfns[:, None] * k + np.arange(k, dtype=np.int64)

    def _walk(
        self, start: NDArray[np.int64], end: NDArray[np.int64], work: NotifierWork
    ) -> tuple[
        NDArray[np.int64] | None,
        NDArray[np.bool_],
        NDArray[np.int64],
        NDArray[np.int64],
        NDArray[np.uint8],
    ]:
        """The handlers' common walk: gfns of each range, their spte slots and values.

        Returns range offsets, which gfns fall in a memslot, those gfns, their slot indices
        (n, k) and the sptes there; counts the sptes visited (the rmap chain under shadow
        paging, one TDP leaf per gfn otherwise).
        """
        gfns, offs = self._ranges(start, end)
        valid = gfns >= 0
        g = gfns[valid]
        idx = self._slots(g)
        if len(g) and not self.rmap:
            self.count_scan(work, len(g))
        elif len(g):
            rc = self._rmap_count
            self.count_walk(work, len(g) if rc is None else int(rc[g].sum()))
        return offs, valid, g, idx, self.spte[idx]

    def _tdp_pages(
        self, start: NDArray[np.int64], end: NDArray[np.int64], work: NotifierWork
    ) -> NDArray[np.int64] | None:
        """The gfns when every range is one page inside the one memslot and each gfn has one
        spte (the TDP MMU on reclaim's single-folio calls), counting the walk; else None.

        The handlers then work on flat arrays: the same sptes visited and changed as by
        ``_walk``, with a fraction of its array passes (reclaim makes these calls per batch
        of a few folios, often one, so per-call overhead is what counts)."""
        if self.k != 1 or len(self.memslots) != 1 or not len(start) or not self.rmap:
            return None
        lo, hi = self._slot_lo, self._slot_hi
        if len(start) == 1:
            a = start.item(0)
            if not (0 < end.item(0) - a <= _PAGE and lo <= a < hi):
                return None
        else:
            span = end - start
            if not (
                int(span.min()) > 0
                and int(span.max()) <= _PAGE
                and int(start.min()) >= lo
                and int(start.max()) < hi
            ):
                return None
        g = (start - lo) >> PAGE_SHIFT
        if self._slot_base:
            g += self._slot_base
        self.count_walk(work, len(g))
        return g

    @staticmethod
    def _per_range(x: NDArray[np.bool_], offs: NDArray[np.int64] | None) -> NDArray[np.bool_]:
        if offs is None:
            return x
        return np.logical_or.reduceat(x, offs) if len(x) else x

    # -- aging (kvm_age_gfn / kvm_test_age_gfn) ----------------------------------------------
    def age_hva_ranges(
        self,
        start: NDArray[np.int64],
        end: NDArray[np.int64],
        work: NotifierWork,
        *,
        clear: bool,
    ) -> NDArray[np.bool_]:
        """Young per range: any accessed spte in it; with ``clear``, age them all."""
        ad = self.ept_ad
        g1 = self._tdp_pages(start, end, work)
        if g1 is not None:
            s1 = self.spte[g1]
            if clear:
                self._age(g1, s1)
            return sp.is_young(s1, ad)
        offs, valid, g, idx, s = self._walk(start, end, work)
        young = np.zeros(len(valid), dtype=np.bool_)
        if len(g):
            young[valid] = sp.is_young(s, ad).any(axis=1)
            if clear:
                self._age(idx, s)
        return self._per_range(young, offs)

    def _age(self, idx: NDArray[np.int64], s: NDArray[np.uint8]) -> None:
        """Age the sptes ``s`` at ``idx``; without A/D bits that parks them
        (``mark_spte_for_access_track``), and vCPUs whose steps use them must recheck."""
        self.spte[idx] = sp.age(s, self.ept_ad)
        if not self.ept_ad:
            self.tracked_marks += 1
            self.revoked()

    # -- invalidation (kvm_mmu_unmap_gfn_range) ----------------------------------------------
    def invalidate_begin(self, n: int) -> None:
        """``kvm_mmu_invalidate_begin`` for ``n`` notifier calls."""
        self.mmu_invalidate_in_progress += n

    def invalidate_end(self, n: int) -> None:
        """``kvm_mmu_invalidate_end``: bump the sequence so racing faults retry."""
        self.mmu_invalidate_seq += n
        self.mmu_invalidate_in_progress -= n

    def unmap_hva_ranges(
        self, start: NDArray[np.int64], end: NDArray[np.int64], work: NotifierWork
    ) -> NDArray[np.bool_]:
        """Zap every spte in each range; True where something was zapped (needs a flush)."""
        g1 = self._tdp_pages(start, end, work)
        if g1 is not None:
            s1 = self.spte[g1]
            present1 = sp.is_present(s1)
            dirty1 = sp.is_dirty(s1)
            if dirty1.any():
                self.mark_dirty(g1[dirty1])
            self.spte[g1] = SPTE_NONPRESENT
            self.zapped += int(present1.sum())
            self.revoked()
            return present1
        offs, valid, g, idx, s = self._walk(start, end, work)
        zapped = np.zeros(len(valid), dtype=np.bool_)
        if len(g):
            present = sp.is_present(s)
            dirty = sp.is_dirty(s).any(axis=1)
            if dirty.any():
                self.mark_dirty(g[dirty])
            self.spte[idx] = SPTE_NONPRESENT
            if self._rmap_count is not None:
                self._rmap_count[g] = 0
            zapped[valid] = present.any(axis=1)
            self.zapped += int(present.sum())
            self.revoked()
        return self._per_range(zapped, offs)

    def flush_remote_tlbs(self, n: int, work: NotifierWork) -> None:
        """``kvm_flush_remote_tlbs`` ``n`` times: every vCPU of the VM takes an exit each time
        (``remote_tlb_flush``, counted here as KVM counts it)."""
        if n:
            if self.vmstat is not None:
                self.vmstat.count(VmStat.TLB_FLUSHES, n, self.mm)
            work.nr_tlb_flushes += n
            self.kick(n)

    def zap_all(self) -> None:
        """``kvm_mmu_zap_all`` (mm release): drop every spte."""
        self.spte[:] = SPTE_NONPRESENT
        if self._rmap_count is not None:
            self._rmap_count[:] = 0

    # -- faults ------------------------------------------------------------------------------
    def spte_index(self, gfn: int, alias: int) -> int:
        """Index of the spte slot ``alias`` of ``gfn``."""
        return gfn * self.k + alias

    def is_access_tracked(self, idx: int) -> bool:
        """The spte is present but parked by aging (fast page fault territory)."""
        return sp.is_access_tracked(self.spte.item(idx))

    def fast_page_fault(self, idx: int, write: bool) -> None:
        """``fast_page_fault``: restore an access-tracked spte in place (cmpxchg, no GUP)."""
        self.spte[idx] = sp.fast_page_fault(self.spte.item(idx), write)
        self.pf_fast += 1

    def is_page_fault_stale(self, mmu_seq: int, gfn: int) -> bool:
        """``mmu_invalidate_retry_gfn``: an invalidation ran (or runs) since ``mmu_seq``."""
        return self.mmu_invalidate_in_progress > 0 or self.mmu_invalidate_seq != mmu_seq

    def map_spte(self, gfn: int, alias: int, write: bool) -> None:
        """Install a present, accessed spte (``kvm_tdp_mmu_map`` / ``mmu_set_spte``)."""
        idx = gfn * self.k + alias
        if self._rmap_count is not None and not sp.is_present(self.spte.item(idx)):
            self._rmap_count[gfn] += 1
        self.spte[idx] = sp.mapped(write)
        self.pf_fixed += 1

    def map_huge_spte(self, gfn: int) -> None:
        """A 2 MiB spte over ``gfn``'s aligned block (``kvm_mmu_max_mapping_level`` found the
        host PMD-mapping the range, with the memslot aligned): the block's other 511 sptes
        become present and accessed with the one just mapped (TDP: one spte per gfn). The
        block lies inside the memslot (guest RAM is whole 2 MiB blocks)."""
        head = gfn & ~(_HPAGE_NR - 1)
        blk = self.spte[head : head + _HPAGE_NR]
        blk[~sp.is_present(blk)] = sp.mapped(False)

    def map_spte_readonly(self, gfn: int, alias: int) -> None:
        """Install a present, accessed, write-protected spte (a KSM page: a write faults)."""
        idx = gfn * self.k + alias
        if self._rmap_count is not None and not sp.is_present(self.spte.item(idx)):
            self._rmap_count[gfn] += 1
        self.spte[idx] = sp.mapped_readonly()
        self.pf_fixed += 1

    def map_sptes(self, gfns: NDArray[np.int64], alias: int = 0) -> None:
        """``map_spte`` (read access) for many gfns at once: the steady-state fill, which took
        no fault in the measured run and so counts none in ``pf_fixed``."""
        idx = gfns * self.k + alias
        if self._rmap_count is not None:
            fresh = ~sp.is_present(self.spte[idx])
            np.add.at(self._rmap_count, gfns[fresh], 1)
        self.spte[idx] = sp.mapped(False)

    def check(self, host_present: NDArray[np.bool_]) -> None:
        """Assert: rmap agrees with sptes; sptes only over host-present pages (tests)."""
        present = sp.is_present(self.spte.reshape(self.nr_gfns, self.k))
        count = present.sum(axis=1)
        assert (count == self.rmap_count).all(), "KVM rmap disagrees with the sptes"
        assert not (present.any(axis=1) & ~host_present).any(), "spte for a non-resident page"
