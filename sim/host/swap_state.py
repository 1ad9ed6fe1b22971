"""VMA-based swap readahead: the window a major fault reads around itself.

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

Kernel reference
    mm/swap_state.c: ``__swapin_nr_pages``, ``swap_vma_ra_win``, ``swap_vma_readahead``,
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
