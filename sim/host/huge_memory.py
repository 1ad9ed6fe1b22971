"""Transparent huge pages backing guest RAM, at 4 KiB granularity (``host.thp``).

Models
    QEMU madvises guest RAM ``MADV_HUGEPAGE``, so with THP ``enabled`` at ``always`` or
    ``madvise`` the first touch of a 2 MiB-aligned block whose PMD is empty allocates a
    PMD-sized folio (``do_huge_pmd_anonymous_page``): 512 frames, zeroed (``clear_huge_page``),
    mapped by one PMD, counted ``thp_fault_alloc``; KVM then maps the block with a 2 MiB spte
    (``kvm_mmu_max_mapping_level``/``host_pfn_mapping_level``: the host maps the range with a
    PMD and the memslot is aligned). Such a folio is one LRU entry (its head page's frame);
    aging it tests and clears the PMD's young bit and asks the notifiers about the whole 2 MiB
    range (``folio_referenced_one`` -> ``pmdp_clear_flush_young_notify``: KVM ages every spte
    in it), so one hot 4 KiB subpage keeps the whole folio young. Reclaim
    (``shrink_folio_list``) swaps it out whole when ``swap`` (CONFIG_THP_SWAP) is on and the
    device has an entirely free cluster of 512 slots (``get_swap_pages`` of order 9): the PMD
    is split (``TTU_SPLIT_HUGE_PMD``, ``thp_split_pmd``; KVM zaps the 2 MiB range), one 2 MiB
    write goes to the device (``thp_swpout`` once, ``pswpout`` += 512, as
    ``count_swpout_vm_event``) and the folio is freed whole when it is clean; behind zswap it
    is first offered to the pool whole (host/zswap.py ``store_folio``: stored, it is clean at
    once and never reaches the device). Otherwise it is
    split into 512 base folios (``split_folio_to_list``: ``thp_split_page``, and
    ``thp_swpout_fallback`` as the kernel counts it after ``add_to_swap`` failed), which go
    on through the same ``shrink_folio_list`` as 4 KiB folios; those not freed go back on the
    LRU each on its own. A swapped-out THP comes back 4 KiB page by page from a disk or
    zswap's pool (``do_swap_page`` maps small folios: ``alloc_swap_folio`` allocates large
    folios only on ``SWP_SYNCHRONOUS_IO`` devices), so KVM then maps 4 KiB sptes over the
    block: the demotion.
    From zram (synchronous, no zswap) a fault on a block whose 512 pages are all in swap, in
    one aligned cluster, reads them back as one large folio (one ``pgmajfault``, ``pswpin``
    += 512) mapped by 512 ptes: still 4 KiB sptes, until the folio is reclaimed again.

Kernel reference
    mm/huge_memory.c: ``do_huge_pmd_anonymous_page``, ``vma_thp_gfp_mask``,
    ``__split_huge_pmd``, ``split_huge_page_to_list_to_order``; mm/vmscan.c:
    ``shrink_folio_list`` (the large-folio part of the anon block); mm/page_io.c:
    ``count_swpout_vm_event``; mm/swapfile.c: ``cluster_alloc_swap_entry``, ``get_swap_pages``;
    mm/memory.c: ``do_swap_page``, ``alloc_swap_folio``; mm/rmap.c: ``folio_referenced_one``,
    ``try_to_unmap_one``; arch/x86/kvm/mmu/mmu.c: ``kvm_mmu_max_mapping_level``,
    ``host_pfn_mapping_level``.

Data model
    One byte per aligned 2 MiB block of guest pids (``HostMemory.thp``; every VM's memory is a
    multiple of 2 MiB, so its pid base is 512-aligned): ``THP_LARGE`` (the block's 512 pages
    are one large folio) and ``THP_PMD`` (mapped by a PMD). The per-page arrays are unchanged:
    every subpage owns its frame and its flags, the head page (``pid & ~511``) carries the
    PMD's young bit and is the folio's LRU entry; the other 511 frames are on no list. The huge
    spte is the block's 512 per-gfn sptes, present together: the vCPU's hit path stays one
    lookup per access, and aging or zapping the 2 MiB range reads or clears all of them, which
    is what aging one 2 MiB spte's accessed bit gives.

Simplifications
    Frames are not contiguous and there is no buddy allocator: no fragmentation, no
    compaction. A THP fault succeeds when free memory stays above the low watermark after
    taking 512 frames (``get_page_from_freelist`` at ALLOC_WMARK_LOW, the fast path of the
    allocation); otherwise it falls back to a 4 KiB page (``thp_fault_fallback``) without the
    direct reclaim and compaction that ``vma_thp_gfp_mask`` allows a madvised VMA under
    ``defrag: madvise``: with no compaction to model, reclaiming for a huge page would free
    4 KiB pages that need not be contiguous. Guest RAM is mapped by the TDP MMU (a shadow MMU
    maps the guest's own 4 KiB mappings: not modelled, refused). Partial unmaps (a balloon's
    4 KiB discards) and the deferred split queue are deferred_split.py; khugepaged is
    khugepaged.py. With memcgs a THP is
    charged 512 pages (host/memcontrol.py): a fault whose charge fails falls back to 4 KiB
    (``charge_fallback``), and the zone test comes before the charge (the kernel allocates
    the folio, then charges it), so a charge failure is never a zone failure too. A guest fault on a
    subpage of a large folio still in the swap cache (its write-out in flight) maps all 512
    ptes, as ``do_swap_page`` maps a whole large folio whose ptes are all its swap entries;
    a pte-mapped large folio is aged and unmapped by one notifier call over its 2 MiB range
    (the kernel makes one per pte). With KSM a block whose only pages are sharers of swapped
    KSM folios (no flags, no frame: host/ksm.py) has a page table of swap entries, so no THP is
    faulted there; ksmd splits a THP before merging a subpage of it (host/ksm.py).

Counted in pages
    A THP is one LRU entry but ``folio_nr_pages`` = 512 pages wherever the kernel counts
    pages (sim/reclaim/two_list.py, through :meth:`HugeMemory.nr_pages` and its kin): the
    list sizes (include/linux/mm_inline.h ``lruvec_add_folio`` -> ``update_lru_size``), so
    ``get_scan_count``, ``inactive_is_low`` and the memcg statistics read pages; the budget
    of a batch (mm/vmscan.c ``isolate_lru_folios``: ``scan += nr_pages`` until
    ``nr_to_scan``, one THP using 512 of 32); the workingset clock (mm/workingset.c
    ``workingset_age_nonresident`` on activation and eviction); and ``pgscan``, ``pgsteal``,
    ``pgrefill``, ``pgdeactivate``, ``pgactivate`` and the ``workingset_*`` refault counts.

Invariants
    A large block's 512 pages all own frames, all are mapped or none but those a discard
    zapped (deferred_split.py; all PMD-mapped while ``THP_PMD``), only the head's frame is
    on the LRU, where its list counts it as 512 pages; a PMD-mapped block's sptes (its 2 MiB
    spte) are all present or none;
    a block that is not large holds small folios only. A block with ``THP_PMD`` is large.
"""

from __future__ import annotations

from typing import Literal

import numba
import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from sim.host.memory import (
    HAS_FRAME,
    NO_PFN,
    PG_DIRTY,
    PG_LOCKED,
    PG_RESIDENT,
    PG_SWAP,
    PTE_PRESENT,
    PTE_YOUNG,
    PTRS_PER_PMD,
    HostMemory,
)
from sim.host.vmstat import VmEvents
from sim.schema import Strict

HPAGE_PMD_NR = PTRS_PER_PMD  # 4 KiB pages in a PMD-sized folio
HPAGE_PMD_SHIFT = 9
THP_LARGE = 0x1  # the block's pages are one PMD-sized folio
THP_PMD = 0x2  # ... mapped by a PMD (else by ptes, or unmapped)
THP_PARTIAL = 0x4  # ... partially mapped (folio_test_partially_mapped: host/deferred_split.py)
THP_QUEUED = 0x8  # ... on its deferred split queue (a non-empty _deferred_list)

THP_FAULT_ALLOC = "thp_fault_alloc"
THP_FAULT_FALLBACK = "thp_fault_fallback"
THP_SPLIT_PMD = "thp_split_pmd"
THP_SPLIT_PAGE = "thp_split_page"
THP_SWPOUT = "thp_swpout"
THP_SWPOUT_FALLBACK = "thp_swpout_fallback"
THP_FAULT_FALLBACK_CHARGE = "thp_fault_fallback_charge"
THP_EVENTS = (
    THP_FAULT_ALLOC,
    THP_FAULT_FALLBACK,
    THP_SPLIT_PMD,
    THP_SPLIT_PAGE,
    THP_SWPOUT,
    THP_SWPOUT_FALLBACK,
)
"""The THP counters of /proc/vmstat, kept only in worlds with ``host.thp`` (so runs without
it list no new keys)."""
THP_MEMCG_EVENTS = (THP_FAULT_FALLBACK_CHARGE,)
"""THP counters that only a run with memcgs counts (a THP whose memcg charge failed)."""

_U8 = np.uint8


@numba.njit(cache=True, nogil=True)
def any_large(pids: NDArray[np.integer], block: NDArray[np.uint8]) -> bool:
    """Whether any of these pages lies in a large folio's block (``block``: the per-block
    THP bytes; empty without THP). The compiled paths take a batch only without one: a
    folio of one page is aged and unmapped as without THP, a large one over its 2 MiB."""
    n = block.size
    for i in range(pids.size):
        b = pids[i] >> HPAGE_PMD_SHIFT
        if b < n and block[b] & THP_LARGE:
            return True
    return False


TAIL_NEW = PTE_PRESENT | PG_DIRTY | PG_RESIDENT  # a subpage of a new THP: the PMD maps it
HEAD_NEW = TAIL_NEW | PTE_YOUNG  # the head carries the PMD's young bit


class KhugepagedConfig(Strict):
    """``/sys/kernel/mm/transparent_hugepage/khugepaged``: the collapse daemon's knobs."""

    enabled: bool = Field(
        True,
        description="Run khugepaged, as the kernel does whenever THP is enabled: collapse "
        "2 MiB blocks mapped by ptes back into THPs (host/khugepaged.py); false leaves it "
        "out, to see the rest without it.",
    )
    pages_to_scan: int = Field(
        4096, ge=1, le=1 << 20, description="Pages scanned per wake-up (pages_to_scan)."
    )
    scan_sleep_ms: float = Field(
        10000.0,
        gt=0.0,
        le=3_600_000.0,
        description="Sleep between scans (scan_sleep_millisecs).",
    )
    alloc_sleep_ms: float = Field(
        60000.0,
        gt=0.0,
        le=3_600_000.0,
        description="Sleep after a failed THP allocation (alloc_sleep_millisecs).",
    )
    max_ptes_none: int = Field(
        511,
        ge=0,
        le=511,
        description="Empty ptes a block may have and still be collapsed (max_ptes_none).",
    )
    max_ptes_swap: int = Field(
        64,
        ge=0,
        le=511,
        description="Swapped-out ptes a block may have and still be collapsed (max_ptes_swap).",
    )


class ThpConfig(Strict):
    """``/sys/kernel/mm/transparent_hugepage``: THP-backed guest RAM at 4 KiB granularity."""

    enabled: Literal["always", "madvise", "never"] = Field(
        "always",
        description="THP policy (enabled). Guest RAM is madvised MADV_HUGEPAGE by QEMU, so "
        "always and madvise both back it with THPs; never backs it with 4 KiB pages.",
    )
    swap: bool = Field(
        True,
        description="CONFIG_THP_SWAP: reclaim swaps a THP out whole when the device has a free "
        "512-slot cluster (thp_swpout); false: every THP is split first "
        "(thp_swpout_fallback).",
    )
    khugepaged: KhugepagedConfig = Field(
        default_factory=KhugepagedConfig, description="The collapse daemon (khugepaged)."
    )

    @property
    def on(self) -> bool:
        """Guest RAM (madvised) is backed by THPs."""
        return self.enabled != "never"


class HugeMemory:
    """The THP state of guest RAM and the operations on whole folios.

    Args:
        cfg: the THP settings.
        mem: host memory (its ``thp`` block array is made here).
        nr_vm_pages: guest pids (all VMs'); a multiple of 512.
        vmstat: the host's counters.
    """

    def __init__(self, cfg: ThpConfig, mem: HostMemory, nr_vm_pages: int, vmstat: VmEvents) -> None:
        assert nr_vm_pages % HPAGE_PMD_NR == 0, "guest RAM in whole 2 MiB blocks"
        self.cfg, self.mem, self.vmstat = cfg, mem, vmstat
        self.nr_vm_pages = nr_vm_pages
        self.block = np.zeros(nr_vm_pages >> HPAGE_PMD_SHIFT, dtype=np.uint8)
        self._offsets = np.arange(HPAGE_PMD_NR, dtype=np.int64)
        self.shadow = 0  # the workingset shadow of the last large swap-in's folio
        # per guest pid: a subpage whose pte a discard zapped while its large folio lives on,
        # still holding its frame (host/deferred_split.py); all False without partial unmaps
        self.zapped = np.zeros(nr_vm_pages, dtype=np.bool_)
        mem.thp = self.block
        mem.thp_zapped = self.zapped

    # -- lookups -----------------------------------------------------------------------------
    def is_large(self, pid: int) -> bool:
        """Page ``pid`` belongs to a large folio."""
        return pid < self.nr_vm_pages and bool(self.block.item(pid >> HPAGE_PMD_SHIFT) & THP_LARGE)

    def large_heads(self, pids: NDArray[np.integer]) -> NDArray[np.bool_]:
        """Which of these pages are the head of a large folio (its LRU entry)."""
        p = np.asarray(pids, dtype=np.int64)
        inside = p < self.nr_vm_pages
        out = np.zeros(len(p), dtype=np.bool_)
        if inside.any():
            q = p[inside]
            out[inside] = ((self.block[q >> HPAGE_PMD_SHIFT] & THP_LARGE) != 0) & (
                (q & (HPAGE_PMD_NR - 1)) == 0
            )
        return out

    def pmd_heads(self, pids: NDArray[np.integer]) -> NDArray[np.bool_]:
        """Which of these pages are the head of a PMD-mapped folio."""
        heads = self.large_heads(pids)
        if heads.any():
            p = np.asarray(pids, dtype=np.int64)
            heads &= (self.block[np.where(heads, p, 0) >> HPAGE_PMD_SHIFT] & THP_PMD) != 0
        return heads

    def folio_pfn(self, pid: int) -> int:
        """The frame of the LRU entry of ``pid``'s folio: its head's for a subpage of a THP."""
        if self.is_large(pid):
            pid &= ~(HPAGE_PMD_NR - 1)
        return self.mem.pfn.item(pid)

    def pmd_mapped(self, pid: int) -> bool:
        """``pid`` lies in a block the host maps with a PMD (KVM may map a 2 MiB spte)."""
        return pid < self.nr_vm_pages and bool(self.block.item(pid >> HPAGE_PMD_SHIFT) & THP_PMD)

    def folios_mapped(self, heads: NDArray[np.integer]) -> NDArray[np.bool_]:
        """``folio_mapped`` of the large folios whose heads are ``heads``: the head's pte, or,
        when a discard zapped the head's (deferred_split.py), any other page's."""
        h = np.asarray(heads, dtype=np.int64)
        flags = self.mem.flags
        mapped = (flags[h] & PTE_PRESENT) != 0
        look = ~mapped & self.zapped[h]
        if look.any():
            rows = h[look, None] + np.arange(HPAGE_PMD_NR, dtype=np.int64)
            mapped[look] = ((flags[rows] & PTE_PRESENT) != 0).any(axis=1)
        return mapped

    def folio_pages(self, head: int) -> NDArray[np.int64]:
        """The 512 pids of the folio whose head is ``head``."""
        return np.arange(head, head + HPAGE_PMD_NR, dtype=np.int64)

    def folio_pids(self, pids: NDArray[np.integer]) -> NDArray[np.int64]:
        """The pages of the folios whose head pages are ``pids``: a large folio's 512."""
        p = np.asarray(pids, dtype=np.int64)
        heads = self.large_heads(p)
        if not heads.any():
            return p
        parts = [p[~heads]] + [self.folio_pages(int(h)) for h in p[heads]]
        return np.concatenate(parts)

    def nr_pages(self, pfns: NDArray[np.integer]) -> int:
        """``folio_nr_pages`` summed over folios given by their frames."""
        if len(pfns) == 0:
            return 0
        heads = self.large_heads(self.mem.frame_pid[pfns])
        return len(pfns) + (HPAGE_PMD_NR - 1) * int(np.count_nonzero(heads))

    def nr_pages_each(self, pfns: NDArray[np.integer]) -> NDArray[np.int64]:
        """``folio_nr_pages`` of each folio given by its frame: 512 for a large folio's head."""
        heads = self.large_heads(self.mem.frame_pid[pfns])
        return np.where(heads, HPAGE_PMD_NR, 1).astype(np.int64)

    def folio_nr_pages(self, pfn: int) -> int:
        """``folio_nr_pages`` of the folio whose LRU entry is frame ``pfn``."""
        pid = int(self.mem.frame_pid.item(pfn))
        large = pid >= 0 and not pid & (HPAGE_PMD_NR - 1) and self.is_large(pid)
        return HPAGE_PMD_NR if large else 1

    # -- fault -------------------------------------------------------------------------------
    def huge_candidate(self, pid: int) -> bool:
        """A first touch of ``pid`` would try a THP: its block's PMD is empty (no page of the
        block touched) and the zone has 512 frames above the low watermark."""
        mem = self.mem
        if not self.cfg.on or pid >= self.nr_vm_pages:
            return False
        head = pid & ~(HPAGE_PMD_NR - 1)
        if not self._pmd_none(head):
            return False
        return mem.nr_free - HPAGE_PMD_NR >= mem.wmark.low

    def _pmd_none(self, head: int) -> bool:
        """The PMD of the block at ``head`` is empty: no page of it has flags or a frame, and
        none is a KSM sharer (a sharer whose KSM folio was swapped out holds neither, but its
        pte is a swap entry: host/ksm.py)."""
        mem = self.mem
        sl = slice(head, head + HPAGE_PMD_NR)
        if mem.flags[sl].any() or (mem.pfn[sl] != NO_PFN).any():
            return False
        return not len(mem.ksm_node) or not (mem.ksm_node[sl] != -1).any()

    def charge_fallback(self, pid: int) -> None:
        """``vma_alloc_anon_folio_pmd`` after ``mem_cgroup_charge`` failed: the folio is put
        back and the fault falls back to a 4 KiB page (``thp_fault_fallback`` and
        ``thp_fault_fallback_charge``)."""
        owner = self.mem.page_owner(pid)
        self.vmstat.count(THP_FAULT_FALLBACK, 1, owner)
        self.vmstat.count(THP_FAULT_FALLBACK_CHARGE, 1, owner)

    def huge_fault(self, pid: int) -> int:
        """``do_huge_pmd_anonymous_page`` for a first touch of ``pid``: a THP over its block
        when the PMD is empty (no page of the block touched) and 512 frames can be taken above
        the low watermark; returns the head's pfn, or -1 (``thp_fault_fallback`` when the
        allocation failed: the caller maps a 4 KiB page)."""
        mem = self.mem
        if not self.cfg.on or pid >= self.nr_vm_pages:
            return -1
        head = pid & ~(HPAGE_PMD_NR - 1)
        sl = slice(head, head + HPAGE_PMD_NR)
        if not self._pmd_none(head):
            return -1  # the PMD is a page table already: do_anonymous_page
        owner = mem.page_owner(pid)
        if mem.nr_free - HPAGE_PMD_NR < mem.wmark.low:
            self.vmstat.count(THP_FAULT_FALLBACK, 1, owner)
            return -1
        pids = self.folio_pages(head)
        pfns = mem.alloc_frames(pids)
        mem.flags[sl] = _U8(TAIL_NEW)
        mem.flags[head] = _U8(HEAD_NEW)
        self.block[head >> HPAGE_PMD_SHIFT] = THP_LARGE | THP_PMD
        self.vmstat.count(THP_FAULT_ALLOC, 1, owner)
        return int(pfns[0])

    def can_swapin_large(self, pid: int, page_slot: NDArray[np.int32]) -> bool:
        """:meth:`swapin_large`'s tests, with no effect: the block of ``pid`` is only in
        swap, in one aligned cluster in order, and 512 frames fit above the low watermark."""
        mem = self.mem
        if not self.cfg.on or pid >= self.nr_vm_pages:
            return False
        head = pid & ~(HPAGE_PMD_NR - 1)
        sl = slice(head, head + HPAGE_PMD_NR)
        if (mem.flags[sl] != PG_SWAP).any():
            return False
        slots = page_slot[sl].astype(np.int64)
        if slots[0] % HPAGE_PMD_NR or (slots != slots[0] + self._offsets).any():
            return False
        return mem.nr_free - HPAGE_PMD_NR >= mem.wmark.low

    def swapin_large(self, pid: int, page_slot: NDArray[np.int32]) -> NDArray[np.int64] | None:
        """``alloc_swap_folio`` on zram: a PMD-sized folio for the swap-in of ``pid`` when
        every page of its block is only in swap, in the slots of one aligned cluster in
        order (``can_swapin_thp``: contiguous entries, none in the swap cache), and 512
        frames can be taken above the low watermark; then the frames are taken, locked and
        the block is a large folio (the workingset shadow of its head kept in ``shadow``).
        None otherwise: a 4 KiB swap-in."""
        if not self.can_swapin_large(pid, page_slot):
            return None
        mem = self.mem
        head = pid & ~(HPAGE_PMD_NR - 1)
        sl = slice(head, head + HPAGE_PMD_NR)
        self.shadow = int(mem.pfn.item(head))
        mem.nr_swapped[mem.page_owner(head)] -= HPAGE_PMD_NR
        pfns = mem.alloc_frames(np.arange(head, head + HPAGE_PMD_NR, dtype=np.int64))
        mem.flags[sl] |= _U8(PG_LOCKED)
        self.block[head >> HPAGE_PMD_SHIFT] = THP_LARGE
        return pfns

    # -- split -------------------------------------------------------------------------------
    def split_pmd(self, head: int) -> None:
        """``__split_huge_pmd``: the PMD becomes a page table of 512 ptes, each young if the
        PMD was (the caller invalidated the range first: KVM zapped its 2 MiB spte)."""
        b = head >> HPAGE_PMD_SHIFT
        if not self.block.item(b) & THP_PMD:
            return
        mem = self.mem
        sl = slice(head, head + HPAGE_PMD_NR)
        if mem.flags.item(head) & PTE_YOUNG:
            mem.flags[sl] |= _U8(PTE_YOUNG)
        self.block[b] &= _U8(~THP_PMD & 0xFF)
        self.vmstat.count(THP_SPLIT_PMD, 1, mem.page_owner(head))

    def folio_gone(self, head: int) -> None:
        """The large folio whose head is ``head`` was freed or split: the block holds small
        folios (or none), off any deferred split queue, with no zapped subpage."""
        self.block[head >> HPAGE_PMD_SHIFT] = 0
        self.zapped[head : head + HPAGE_PMD_NR] = False

    def split_folio(self, head: int) -> NDArray[np.int64]:
        """``split_huge_page_to_list_to_order`` (order 0): the folio becomes 512 base folios,
        each with the head's dirty state (the caller split the PMD); returns their frames,
        head first."""
        mem = self.mem
        b = head >> HPAGE_PMD_SHIFT
        assert self.block.item(b) & (THP_LARGE | THP_PMD) == THP_LARGE, "split a PMD"
        sl = slice(head, head + HPAGE_PMD_NR)
        if mem.flags.item(head) & PG_DIRTY:
            mem.flags[sl] |= _U8(PG_DIRTY)
        self.block[b] = 0
        self.vmstat.count(THP_SPLIT_PAGE, 1, mem.page_owner(head))
        return mem.pfn[sl].astype(np.int64)

    # -- checks ------------------------------------------------------------------------------
    def check(self, spte_present: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """Assert the block array agrees with the per-page arrays; returns which pages are
        tails of a large folio (on no LRU list). ``spte_present``: per guest pid, whether its
        (TDP) spte is present."""
        mem = self.mem
        n = self.nr_vm_pages
        blk = self.block
        assert not (((blk & THP_PMD) != 0) & ((blk & THP_LARGE) == 0)).any(), "PMD, not large"
        large = np.repeat((blk & THP_LARGE) != 0, HPAGE_PMD_NR)
        f = mem.flags[:n].reshape(-1, HPAGE_PMD_NR)
        lb = (blk & THP_LARGE) != 0
        assert ((f[lb] & HAS_FRAME) != 0).all(), "a subpage of a THP without its frame"
        mapped = (f[lb] & PTE_PRESENT) != 0
        gone = self.zapped.reshape(-1, HPAGE_PMD_NR)[lb]  # zapped by a discard: see below
        assert ((mapped | gone).all(axis=1) | ~mapped.any(axis=1)).all(), "a THP partly mapped"
        pb = (blk & THP_PMD) != 0
        assert ((f[pb] & PTE_PRESENT) != 0).all(), "a PMD-mapped THP with an unmapped subpage"
        sp = spte_present[:n].reshape(-1, HPAGE_PMD_NR)[pb]
        assert (sp.all(axis=1) | ~sp.any(axis=1)).all(), "a huge spte split"
        tails = large.copy()
        tails[::HPAGE_PMD_NR] = False
        return tails
