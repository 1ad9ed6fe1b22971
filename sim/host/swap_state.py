"""Swap readahead: the window a major fault reads around itself, by address or by slot.

Models
    ``swap_vma_readahead``: a major fault on an anonymous page reads, with it, the neighbouring
    pages of the same VMA (QEMU's guest RAM mapping, one per VM) whose ptes are swap entries,
    into the swap cache. The window comes from ``swap_vma_ra_win``: ``__swapin_nr_pages`` grows
    it with the readahead hits seen since the last fault (``hits + 2`` rounded up to a power of
    two, at least 4), falls back to 2 pages on a fault next to the previous one and to 1
    otherwise, caps it at ``1 << min(page_cluster, SWAP_RA_ORDER_CEILING)`` and never shrinks
    it below half the previous window. The window is placed forward after a fault on the next
    page, backward after one on the previous page and centred otherwise, then clipped to the
    VMA and to the PMD-aligned region of the fault. The state is the VMA's
    ``swap_readahead_info``: last fault address, last window, hits since (``SWAP_RA_VAL``).

    ``swap_cluster_readahead`` (``swap.rotational``: ``swap_use_vma_readahead`` is false while a
    rotational swap area is active): the window is a block of swap slots, ``swapin_nr_pages``
    pages aligned to their size around the faulting page's slot, whatever pages own them. Its
    state is global (static in ``swapin_nr_pages``): the last offset, the last window and
    ``swapin_readahead_hits``, which every readahead hit on any swap area increments.

Kernel reference
    mm/swap_state.c: ``__swapin_nr_pages``, ``swapin_nr_pages``, ``swap_cluster_readahead``,
    ``swap_use_vma_readahead``, ``swap_vma_ra_win``, ``swap_vma_readahead``,
    ``swap_cache_get_folio`` (a hit on a folio with PG_readahead counts ``swap_ra_hit`` and
    adds to the VMA's hits); include/linux/mm_types.h (``vm_area_struct.swap_readahead_info``).

Simplifications
    Addresses are page numbers of the hva (``Mm.hva_base >> PAGE_SHIFT`` plus the gfn), so the
    arithmetic is the kernel's in pages. The hit count saturates at ``SWAP_RA_HITS_MAX`` as the
    kernel's 6-bit field does on 4 KiB pages.
"""

from __future__ import annotations

from dataclasses import dataclass

SWAP_RA_ORDER_CEILING = 5  # 64-bit kernels: the VMA window never exceeds 32 pages
SWAP_RA_HITS_MAX = 63  # SWAP_RA_HITS_MASK with PAGE_SHIFT 12: the hits field has 6 bits


@dataclass(slots=True)
class SwapRaInfo:
    """``vma->swap_readahead_info``: the last fault's page number, its window, hits since."""

    addr: int = 0  # the kernel's zeroed field: page 0 is never next to a QEMU mapping
    win: int = 0
    hits: int = 0

    def cache_hit(self, addr: int, readahead: bool) -> None:
        """``swap_cache_get_folio`` found the folio at page ``addr`` in the swap cache; it was
        read ahead (PG_readahead, now cleared) if ``readahead``."""
        if readahead:
            self.hits = min(self.hits + 1, SWAP_RA_HITS_MAX)
        self.addr = addr


def swapin_nr_pages(prev_offset: int, offset: int, hits: int, max_pages: int, prev_win: int) -> int:
    """``__swapin_nr_pages``: the next readahead window in pages (at least 1)."""
    pages = hits + 2
    if pages == 2:
        if offset != prev_offset + 1 and offset != prev_offset - 1:
            pages = 1
    else:
        roundup = 4
        while roundup < pages:
            roundup <<= 1
        pages = roundup
    pages = min(pages, max_pages)
    return max(pages, prev_win // 2)  # don't shrink readahead too fast


def swap_vma_ra_win(
    ra: SwapRaInfo,
    faddr: int,
    vm_start: int,
    vm_end: int,
    page_cluster: int,
    ptrs_per_pmd: int,
) -> tuple[int, int, int]:
    """``swap_vma_ra_win``: ``(win, start, end)`` in page numbers for a fault at ``faddr`` in
    the VMA ``[vm_start, vm_end)``; updates ``ra``. ``win == 1`` means no readahead."""
    max_win = 1 << min(page_cluster, SWAP_RA_ORDER_CEILING)
    if max_win == 1:
        return 1, faddr, faddr + 1
    prev = ra.addr
    win = swapin_nr_pages(prev, faddr, ra.hits, max_win, ra.win)
    ra.addr, ra.win, ra.hits = faddr, win, 0
    if win == 1:
        return 1, faddr, faddr + 1
    if faddr == prev + 1:
        left = faddr
    elif prev == faddr + 1:
        left = faddr - win + 1
    else:
        left = faddr - (win - 1) // 2
    right = left + win
    pmd = faddr - faddr % ptrs_per_pmd
    start = max(left, 0, vm_start, pmd)
    end = min(right, vm_end, pmd + ptrs_per_pmd)
    return win, start, end


@dataclass(slots=True)
class SwapClusterRa:
    """``swapin_nr_pages``' static state, shared by every swap-in of every mm."""

    prev_offset: int = 0
    last_pages: int = 0  # last_readahead_pages
    hits: int = 0  # swapin_readahead_hits

    def nr_pages(self, offset: int, page_cluster: int) -> int:
        """``swapin_nr_pages`` for a fault on slot ``offset``: the block size (a power of two)."""
        max_pages = 1 << page_cluster
        if max_pages <= 1:
            return 1
        hits, self.hits = self.hits, 0  # atomic_xchg
        pages = swapin_nr_pages(self.prev_offset, offset, hits, max_pages, self.last_pages)
        if not hits:
            self.prev_offset = offset
        self.last_pages = pages
        return pages


def swap_cluster_ra_block(offset: int, pages: int, max_offset: int) -> tuple[int, int]:
    """``swap_cluster_readahead``'s slots: ``[start, end]`` (inclusive), ``pages`` aligned
    around ``offset``, never slot 0 (the swap header) nor past ``max_offset`` (``si->max - 1``).
    ``pages`` is a power of two; 1 gives just ``offset``."""
    mask = pages - 1
    if not mask:
        return offset, offset
    start, end = offset & ~mask, offset | mask
    return max(start, 1), min(end, max_offset)
