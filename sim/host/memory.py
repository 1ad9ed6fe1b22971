"""Host physical memory: frames, watermarks, and the per-page state of guest RAM.

Models
    One NUMA node with one zone of ``nr_frames`` page frames (pfns). Guest RAM is host anonymous
    memory (QEMU's ``mmap``), so every guest page is a host anon page with a host pte in QEMU's mm
    (present, young, or a swap entry), maybe a frame, maybe a swap slot. Watermarks are derived as
    ``__setup_per_zone_wmarks`` derives them.

Kernel reference
    mm/page_alloc.c: ``calculate_min_free_kbytes``, ``__setup_per_zone_wmarks``;
    include/linux/page-flags.h (PG_dirty, PG_swapcache, PG_writeback, PG_locked, PG_reclaim).

Data model
    State is a structure of numpy arrays, never a Python object per page. A guest page is named by
    a global page id ``pid = vm_base + gfn``; per-pid arrays hold the host pte/folio flags (uint8)
    and one uint32 entry ``pfn``. Per frame: ``frame_pid`` (the anon rmap: which page owns the
    frame; -1 = free). Which mm a page belongs to is not stored: each mm's pages are one range of
    pids, so a bisection of the ranges' starts finds it.

    ``pfn`` holds what the kernel's swap cache slot holds, a folio or its shadow: the frame's pfn
    while the page has one (``PG_RESIDENT``: mapped; or unmapped by reclaim and still in the swap
    cache, its write-out in flight or done and waiting for a scan to free it; or being read in), the
    workingset shadow left when its folio was freed while the page is only in swap (``PG_SWAP``),
    and ``NO_PFN`` otherwise (never touched, or its mm exited). The value alone cannot tell a pfn
    from a shadow; the flags do. Swap slots are interchangeable in this model (swap.py), so a page's
    slot is implied by ``PG_SWAP`` and only the device's count of free slots is kept.

    Two arrays are for analysis only (no kernel has them) and exist only when the eviction log
    asks (``stamps``): per page ``last_access_us`` (uint32 us, the page's last guest access), per
    frame ``scans`` (reclaim scans the folio survived). The stamp stays per page although only
    pages with frames are read: per frame, every guest access would add a dependent load
    (``pfn``) and a store to a second random place, which made the hit path 1.5-2x slower over
    2 GiB of resident pages; per page it is a store next to the spte's in access order. While a
    page is evicted and its refault not yet logged, its slot holds the row of its eviction in
    the log instead (record.py): no access can stamp the page before that fault.

Invariants
    ``nr_free + (frames owned) + nr_pool == nr_frames`` (``nr_pool``: the compressed pool's);
    the pages with ``PG_RESIDENT`` are exactly the owners of frames, each owns one and its frame
    points back at it; a page with neither a frame
    nor ``PG_SWAP`` holds ``NO_PFN``; a page without a frame has no flag but ``PG_SWAP``; an
    unmapped page with a frame has its swap copy. A page was touched iff it has a frame or a
    swap copy (so no flag records it), and it was evicted since its last fault iff it is
    touched and not mapped (the next fault on it is a refault); the exceptions are a page
    discarded while its folio's I/O was in flight, which keeps the frame until the I/O ends
    though it counts as never touched (``Mm.zapped``, madvise.py), and a page a discard
    zapped from a THP that lives on (``thp_zapped``, deferred_split.py), unmapped with its
    frame. With KSM (host/ksm.py) a page sharing a KSM folio owns no frame: it holds only its
    pte bits and ``pfn`` names the folio's frame (the shared zero page: NO_PFN), or it holds
    nothing while its pte is a swap entry to the folio's slot; the folio itself is a stable
    node's pseudo-page. A sharer reading that slot back holds its new frame locked, with no
    slot of its own.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
SWAP_CLUSTER_MAX = 32  # reclaim batch (mm/vmscan.c)
PTRS_PER_PMD = 512  # ptes in one page table (a 2 MiB PMD on x86-64)
DEF_PRIORITY = 12  # scan target is lru_size >> priority
MAX_RECLAIM_RETRIES = 16  # kswapd_failures cap; allocator no-progress retries

NO_PFN = np.uint32(0xFFFFFFFF)
NO_PFN_INT = int(NO_PFN)

# Host-side page flags (one uint8 per guest page): QEMU's pte plus the folio's flags.
PTE_PRESENT = 0x01  # QEMU's host pte maps the page (else none, or a swap entry if PG_SWAP)
PTE_YOUNG = 0x02  # host pte accessed bit: set by QEMU/vhost touches and by GUP fault-in
PG_DIRTY = 0x04  # folio data differs from its swap copy (or it has none)
PG_SWAP = 0x08  # page owns a swap slot (swap cache while resident, swap entry when not)
PG_WRITEBACK = 0x10  # swap-out write in flight (the folio stays resident until a later scan)
PG_LOCKED = 0x20  # swap-in read in flight (folio locked in the swap cache)
PG_RESIDENT = 0x40  # the page owns a frame: mapped, or an unmapped swap-cache folio, or in I/O
PG_RECLAIM = 0x80  # PG_reclaim: written for reclaim; rotated to the LRU tail when the write ends
# The page owns a frame (and ``pfn`` is its pfn, not a shadow).
HAS_FRAME = PG_RESIDENT
POOL_FRAME = -2  # frame_pid of a frame held by the compressed pool (zram, zswap: zpool.py)


def int_sqrt(x: int) -> int:
    """``int_sqrt()`` from lib/math: floor of the square root."""
    return math.isqrt(max(0, int(x)))


def calculate_min_free_kbytes(managed_pages: int) -> int:
    """``calculate_min_free_kbytes``: ``clamp(int_sqrt(lowmem_kbytes * 16), 128, 262144)``."""
    lowmem_kbytes = managed_pages * (PAGE_SIZE // 1024)
    return min(max(int_sqrt(lowmem_kbytes * 16), 128), 262144)


@dataclass(frozen=True, slots=True)
class Watermarks:
    """Zone watermarks in pages (``WMARK_MIN``, ``WMARK_LOW``, ``WMARK_HIGH``)."""

    min: int
    low: int
    high: int
    min_free_kbytes: int


def setup_per_zone_wmarks(
    managed_pages: int, min_free_kbytes: int | None = None, watermark_scale_factor: int = 10
) -> Watermarks:
    """``__setup_per_zone_wmarks`` for one zone holding all managed (4 KiB) pages.

    ``min = min_free_kbytes / 4`` pages; the low-min and high-low gaps are
    ``max(min / 4, managed * watermark_scale_factor / 10000)``.
    """
    mfk = calculate_min_free_kbytes(managed_pages) if min_free_kbytes is None else min_free_kbytes
    pages_min = mfk >> (PAGE_SHIFT - 10)
    gap = max(pages_min // 4, managed_pages * watermark_scale_factor // 10000)
    return Watermarks(pages_min, pages_min + gap, pages_min + 2 * gap, mfk)


class HostMemory:
    """Frames, watermarks and per-page state arrays for all guest RAM on the host.

    Args:
        nr_frames: page frames the zone manages.
        nr_pages: guest pages in total (sum over VMs); may exceed ``nr_frames`` (overcommit).
        wmark: the zone's watermarks.
        pid_base: the first pid of each mm (VM), ascending from 0; mm ``i`` owns the pids from
            ``pid_base[i]`` up to the next mm's first.
        stamps: keep the analysis-only stamps (``last_access_us``, ``scans``); else they are
            empty arrays.
        readahead: keep PG_readahead (swap readahead is on); else it is an empty array.
        file_base: the first pid of the host page cache (the last ranges of pids, one per file,
            each owned by a pseudo-mm after the VMs' mms), or ``nr_pages`` when there is none.
            A page-cache page has no pte and no swap slot: with a frame it holds PG_RESIDENT
            and maybe PG_dirty, PG_writeback (the flusher's write) and PG_reclaim; without
            one its ``pfn`` holds its workingset shadow (the page cache's xarray) or NO_PFN.
        ksm: keep KSM's per-page arrays (host/ksm.py): ``ksm_node`` (the stable node a page
            shares, or -1) and ``written`` (the guest wrote the page since ksmd last looked);
            else they are empty arrays.
    """

    def __init__(
        self,
        nr_frames: int,
        nr_pages: int,
        wmark: Watermarks,
        pid_base: Sequence[int],
        *,
        stamps: bool = False,
        readahead: bool = False,
        file_base: int | None = None,
        ksm: bool = False,
    ) -> None:
        self.nr_frames, self.nr_pages, self.wmark = nr_frames, nr_pages, wmark
        self.file_base = nr_pages if file_base is None else file_base
        self._base = [int(b) for b in pid_base]
        assert self._base[:1] == [0], "the first mm's pages start at pid 0"
        assert self._base == sorted(set(self._base)), "an mm with no pages, or out of order"
        self.pid_base = np.array(self._base, dtype=np.int64)
        nr_mms = len(self._base)
        self.flags = np.zeros(nr_pages, dtype=np.uint8)
        self.pfn = np.full(nr_pages, NO_PFN, dtype=np.uint32)  # pfn, shadow or NO_PFN
        self.frame_pid = np.full(nr_frames, -1, dtype=np.int32)
        # PG_readahead (the uint8 flags are full): read ahead, not yet touched (swap_state.py)
        self.readahead = np.zeros(nr_pages if readahead else 0, dtype=np.bool_)
        self.stamps = stamps
        self.ksm_node = np.full(nr_pages if ksm else 0, -1, dtype=np.int32)
        self.written = np.zeros(nr_pages if ksm else 0, dtype=np.uint8)
        # per aligned 2 MiB block of guest pids, its folio's THP state (huge_memory.py); None
        # without host.thp
        self.thp: NDArray[np.uint8] | None = None
        # per guest pid with host.thp: a subpage of a large folio whose pte a discard zapped,
        # still holding its frame until the folio is split or freed (deferred_split.py)
        self.thp_zapped: NDArray[np.bool_] | None = None
        self.last_access_us = np.zeros(nr_pages if stamps else 0, dtype=np.uint32)
        self.scans = np.zeros(nr_frames if stamps else 0, dtype=np.uint8)
        # Free frames as a stack, lowest pfn on top, so allocation order is deterministic. The
        # never-used frames at its bottom are implicit (``_next``: the lowest one), so the stack
        # itself only holds frames freed since, and grows as they do.
        self._next = 0
        self._free = np.empty(1024, dtype=np.uint32)
        self._nr_freed = 0
        self.nr_free = nr_frames
        self.nr_writeback = 0  # frames whose swap-out write is in flight
        # the pages given a frame since rmap.py last counted page tables (once it has begun
        # to: an untouched page becomes touched only so, once the world is built); None: not
        # kept, or more than ``assigned_max`` (the next count then looks at every page)
        self.assigned: list[int] | None = None
        self.assigned_max = max(4096, nr_pages // 64)
        self.nr_pool = 0  # frames the compressed pool holds (zram's or zswap's memory)
        self.nr_resident = np.zeros(nr_mms, dtype=np.int64)  # frames owned, per mm
        self.nr_swapped = np.zeros(nr_mms, dtype=np.int64)  # pages only in swap, per mm
        self.on_free: Callable[[int], None] | None = None  # woken when frames are freed
        # The stack's bottom ``tail`` frames are allocated after every other free frame
        # (:meth:`move_to_tail`: a guest's reported pages); 0 on the host. An allocation that
        # reaches into them calls ``on_tail_taken(frames)`` with the tail frames it took and
        # ``tail`` lowered to the new top; the hook may lower it further.
        self.tail = 0
        self.on_tail_taken: Callable[[NDArray[np.uint32]], None] | None = None

    # -- pages -------------------------------------------------------------------------------
    def page_owner(self, pid: int) -> int:
        """The index of the mm page ``pid`` belongs to."""
        return bisect_right(self._base, pid) - 1

    def page_owners(self, pids: NDArray[np.integer]) -> NDArray[np.intp]:
        """``page_owner`` of every page in ``pids``."""
        return np.searchsorted(self.pid_base, pids, side="right") - 1

    # -- frames ------------------------------------------------------------------------------
    def alloc_frame(self, pid: int) -> int:
        """Take one free frame for ``pid`` (the caller checked watermarks). Returns the pfn.

        The pfn replaces whatever ``pfn[pid]`` held: a swap-in reads the shadow first.
        """
        pfn = self._take_frame()
        if self.assigned is not None:
            self._assigned([pid])
        self.frame_pid[pfn] = pid
        if self.stamps:
            self.scans[pfn] = 0
        self.pfn[pid] = pfn
        self.flags[pid] = self.flags.item(pid) | PG_RESIDENT
        self.nr_resident[self.page_owner(pid)] += 1
        return pfn

    def _assigned(self, pids: list[int]) -> None:
        """Keep pages given a frame for rmap.py's next count, up to ``assigned_max``."""
        assert self.assigned is not None
        self.assigned.extend(pids)
        if len(self.assigned) > self.assigned_max:
            self.assigned = None

    def transfer_frame(self, pfn: int, pid: int, owner: int) -> None:
        """Frame ``pfn`` changes owner to page ``pid`` of mm ``owner`` (a page's frame becomes
        a KSM folio, host/ksm.py); the old owner's entry is the caller's."""
        old = self.frame_pid.item(pfn)
        if self.assigned is not None:
            self._assigned([pid])
        self.nr_resident[self.page_owner(old)] -= 1
        self.nr_resident[owner] += 1
        self.frame_pid[pfn] = pid
        self.pfn[pid] = pfn

    def alloc_pool_frame(self) -> int:
        """Take one free frame for the compressed pool (``zs_malloc`` growing a zspage)."""
        pfn = self._take_frame()
        self.nr_pool += 1
        self.frame_pid[pfn] = POOL_FRAME
        return pfn

    def shuffle_free(self, rng: np.random.Generator) -> None:
        """Put every frame on the free stack in a random order (nothing may be allocated yet):
        ``shuffle_free_memory`` at boot (``page_alloc.shuffle``), or a stand-in for a kernel
        that has run long enough for its free lists to hold frames in no useful order."""
        assert self.nr_free == self.nr_frames, "shuffle at boot only"
        assert self._nr_freed == 0, "shuffle at boot only"
        self._push_free(self.nr_frames)[:] = rng.permutation(self.nr_frames).astype(np.uint32)
        self._next = self.nr_frames

    def _take_frame(self) -> int:
        """One free frame off the free stack (most recently freed first), else a fresh one."""
        assert self.nr_free > 0, "no free frame to take"
        self.nr_free -= 1
        if self._nr_freed:
            self._nr_freed -= 1
            pfn = self._free.item(self._nr_freed)
            if self._nr_freed < self.tail:
                self._tail_taken()
            return pfn
        pfn = self._next
        self._next += 1
        return pfn

    def free_pool_frames(self, pfns: NDArray[np.integer]) -> None:
        """The compressed pool gives frames back (a zspage emptied)."""
        n = len(pfns)
        assert (self.frame_pid[pfns] == POOL_FRAME).all(), "not the pool's frames"
        self.frame_pid[pfns] = -1
        self._push_free(n)[:] = pfns
        self.nr_free += n
        self.nr_pool -= n
        if self.on_free is not None:
            self.on_free(n)

    def alloc_frames(self, pids: NDArray[np.integer]) -> NDArray[np.int64]:
        """``alloc_frame`` for many pages at once, in the same order of frames (the steady-state
        fill, which is not simulated event by event). Returns their pfns."""
        n = len(pids)
        assert n <= self.nr_free, "alloc_frames with too few free frames"
        k = min(n, self._nr_freed)
        stacked = self._free[self._nr_freed - k : self._nr_freed][::-1].astype(np.int64)
        self._nr_freed -= k
        if self._nr_freed < self.tail:
            self._tail_taken()
        fresh = np.arange(self._next, self._next + n - k, dtype=np.int64)
        self._next += n - k
        pfns = np.concatenate((stacked, fresh))
        pids = np.asarray(pids, dtype=np.int64)
        self.nr_free -= n
        if self.assigned is not None:
            self._assigned(pids.tolist())
        self.frame_pid[pfns] = pids
        if self.stamps:
            self.scans[pfns] = 0
        self.pfn[pids] = pfns
        self.flags[pids] |= np.uint8(PG_RESIDENT)
        self.nr_resident += np.bincount(self.page_owners(pids), minlength=len(self.nr_resident))
        return pfns

    def free_frames(
        self, pfns: NDArray[np.integer], shadows: NDArray[np.uint32] | None = None
    ) -> None:
        """Return frames to the free stack and detach them from their pages, which keep
        ``shadows`` (pages now only in swap: ``__remove_mapping`` leaves the shadow in the swap
        cache) or ``NO_PFN`` (pages gone)."""
        n = len(pfns)
        if n == 0:
            return
        pids = self.frame_pid[pfns]
        self.pfn[pids] = NO_PFN if shadows is None else shadows
        self.flags[pids] &= np.uint8(~PG_RESIDENT & 0xFF)
        self.frame_pid[pfns] = -1
        self._push_free(n)[:] = pfns
        self.nr_free += n
        self.nr_resident -= np.bincount(self.page_owners(pids), minlength=len(self.nr_resident))
        if self.on_free is not None:
            self.on_free(n)

    def free_frame(self, pfn: int, shadow: int = NO_PFN_INT) -> None:
        """``free_frames`` for one frame (scalar fast path)."""
        pid = int(self.frame_pid[pfn])
        self.pfn[pid] = shadow
        self.flags[pid] = self.flags.item(pid) & ~PG_RESIDENT
        self.frame_pid[pfn] = -1
        self._push_free(1)[0] = pfn
        self.nr_free += 1
        self.nr_resident[self.page_owner(pid)] -= 1
        if self.on_free is not None:
            self.on_free(1)

    def reserve_free(self, n: int) -> NDArray[np.uint32]:
        """The free-frame stack with room for ``n`` more frames above its top (``_nr_freed``),
        for a compiled pass that pushes them itself and then calls :meth:`frames_freed`."""
        if self._nr_freed + n > len(self._free):
            self._push_free(n)
            self._nr_freed -= n
        return self._free

    def frames_freed(self, top: int, n: int, per_mm: NDArray[np.int64]) -> None:
        """A compiled pass pushed ``n`` frames onto the free stack (its top is now ``top``) and
        detached them from their pages, ``per_mm[i]`` of mm ``i``: the counts follow."""
        self._nr_freed = top
        self.nr_free += n
        self.nr_resident -= per_mm
        if self.on_free is not None:
            self.on_free(n)

    def _push_free(self, n: int) -> NDArray[np.uint32]:
        """Room for ``n`` more frames on top of the free stack (grown by doubling)."""
        top = self._nr_freed + n
        if top > len(self._free):
            grown = np.empty(max(top, 2 * len(self._free)), dtype=np.uint32)
            grown[: self._nr_freed] = self._free[: self._nr_freed]
            self._free = grown
        self._nr_freed = top
        return self._free[top - n : top]

    def _tail_taken(self) -> None:
        """An allocation took frames from the tail: the tail ends at the new top."""
        old, self.tail = self.tail, self._nr_freed
        if self.on_tail_taken is not None:
            self.on_tail_taken(self._free[self._nr_freed : old])

    def _restack(self, drop: NDArray[np.bool_], below: NDArray[np.uint32]) -> NDArray[np.uint32]:
        """Rewrite the free stack without the frames marked in ``drop`` (per frame) and with
        ``below`` at its bottom; the never-used frames are pushed onto it first (lowest pfn on
        top, as they were taken), so this is O(free frames). Returns the tail frames dropped;
        ``tail`` is the caller's to adjust."""
        stack = self._free[: self._nr_freed]
        tail, rest = stack[: self.tail], stack[self.tail :]
        fresh = np.arange(self.nr_frames - 1, self._next - 1, -1, dtype=np.uint32)
        gone = tail[drop[tail]]
        order = np.concatenate((below, tail[~drop[tail]], fresh[~drop[fresh]], rest[~drop[rest]]))
        if len(order) > len(self._free):
            self._free = np.empty(max(len(order), 2 * len(self._free)), dtype=np.uint32)
        self._free[: len(order)] = order
        self._nr_freed = len(order)
        self._next = self.nr_frames
        return gone

    def move_to_tail(self, pfns: NDArray[np.integer]) -> None:
        """Put free frames ``pfns`` (none of them in the tail yet) at the bottom of the free
        stack, ``pfns[0]`` lowest, below the tail already there: they are allocated after every
        other free frame, the never-used ones too (``__free_one_page`` with ``FPI_TO_TAIL``).
        O(free frames) (:meth:`_restack`)."""
        n = len(pfns)
        if n == 0:
            return
        pfns = np.asarray(pfns, dtype=np.uint32)
        assert (self.frame_pid[pfns] == -1).all(), "move_to_tail of a frame in use"
        moved = np.zeros(self.nr_frames, dtype=np.bool_)
        moved[pfns] = True
        gone = self._restack(moved, pfns)
        assert len(gone) == 0, "move_to_tail of a frame in the tail"
        assert self._nr_freed == self.nr_free, "move_to_tail of a frame that is not free"
        self.tail += n

    def take_free(self, pfns: NDArray[np.integer], pids: NDArray[np.integer]) -> None:
        """Allocate the free frames ``pfns`` to pages ``pids`` (a high-order allocation takes a
        whole free block, wherever its frames lie on the free lists). O(free frames)
        (:meth:`_restack`); frames taken from the tail are handed to ``on_tail_taken``."""
        n = len(pfns)
        if n == 0:
            return
        pfns = np.asarray(pfns, dtype=np.uint32)
        assert (self.frame_pid[pfns] == -1).all(), "take_free of a frame in use"
        taken = np.zeros(self.nr_frames, dtype=np.bool_)
        taken[pfns] = True
        gone = self._restack(taken, pfns[:0])
        assert self._nr_freed == self.nr_free - n, "take_free of a frame that is not free"
        self.nr_free -= n
        pids = np.asarray(pids, dtype=np.int64)
        if self.assigned is not None:
            self._assigned(pids.tolist())
        self.frame_pid[pfns] = pids
        if self.stamps:
            self.scans[pfns] = 0
        self.pfn[pids] = pfns
        self.flags[pids] |= np.uint8(PG_RESIDENT)
        np.add.at(self.nr_resident, self.page_owners(pids), 1)
        if len(gone):
            self.tail -= len(gone)
            if self.on_tail_taken is not None:
                self.on_tail_taken(gone)

    def last_freed(self, n: int) -> NDArray[np.uint32]:
        """The ``n`` frames on top of the free stack: in an ``on_free(n)`` hook, the frames that
        free just gave back."""
        return self._free[self._nr_freed - n : self._nr_freed]

    def free_list(self) -> NDArray[np.int64]:
        """Every free frame (tests)."""
        return np.concatenate(
            (
                self._free[: self._nr_freed].astype(np.int64),
                np.arange(self._next, self.nr_frames, dtype=np.int64),
            )
        )

    def watermark_ok(self, mark: int) -> bool:
        """``__zone_watermark_ok`` for an order-0 allocation: free pages above ``mark``."""
        return self.nr_free > mark

    def balanced(self) -> bool:
        """``pgdat_balanced``: free pages above the high watermark (``zone_watermark_ok_safe``
        counts free pages only: frames whose write-out is in flight are not free yet)."""
        return self.nr_free > self.wmark.high

    # -- checks ------------------------------------------------------------------------------
    def has_frame(self, pids: NDArray[np.integer]) -> NDArray[np.bool_]:
        """Which pages own a frame (so ``pfn`` holds a pfn, not a shadow)."""
        return (self.flags[pids] & np.uint8(HAS_FRAME)) != 0

    def check(self) -> None:
        """Assert the structural invariants (used by tests; O(pages))."""
        owned = self.frame_pid >= 0
        pool = int((self.frame_pid == POOL_FRAME).sum())
        assert pool == self.nr_pool, "compressed pool frames miscounted"
        assert self.nr_free + int(owned.sum()) + pool == self.nr_frames, "frames not conserved"
        free = self.free_list()
        assert len(free) == self.nr_free, "free stack and free count disagree"
        assert len(np.unique(free)) == self.nr_free, "free stack has duplicates"
        assert (self.frame_pid[free] == -1).all(), "a free frame has an owner"
        assert 0 <= self.tail <= self._nr_freed, "the tail is not on the free stack"
        assert self.tail == 0 or self._next == self.nr_frames, "never-used frames below the tail"
        has = (self.flags & np.uint8(HAS_FRAME)) != 0
        pids = np.flatnonzero(has)
        assert (self.pfn[pids] < self.nr_frames).all(), "a page with a frame holds no valid pfn"
        assert (self.frame_pid[self.pfn[pids]] == pids).all(), "pfn and frame_pid disagree"
        assert int(has.sum()) == int(owned.sum()), "a frame is owned by a page that lost it"
        assert has[self.frame_pid[owned]].all(), "a frame's owner does not know it"
        fb = self.file_base
        fl, fhas = self.flags[fb:], has[fb:]
        # (PG_locked: a guest kernel's page-cache folio being read in, sim/guest/kernel.py)
        file_flags = np.uint8(PG_RESIDENT | PG_DIRTY | PG_WRITEBACK | PG_RECLAIM | PG_LOCKED)
        assert not (fl & ~file_flags).any(), "a page-cache page with anon flags"
        assert not fl[~fhas].any(), "flags on a page-cache page without frame"
        flags, has = self.flags[:fb], has[:fb]
        swap = (flags & PG_SWAP) != 0
        own = ~has if not len(self.ksm_node) else ~has & (self.ksm_node[:fb] == -1)
        assert (self.pfn[:fb][own & ~swap] == NO_PFN).all(), "an entry with no frame or swap copy"
        assert not (flags[own] & ~np.uint8(PG_SWAP)).any(), "flags on a page without frame"
        unmapped = has & ((flags & PTE_PRESENT) == 0)
        if len(self.ksm_node):  # a KSM sharer reading its folio's slot (the slot is the node's)
            unmapped &= (flags & PG_LOCKED) == 0
        if self.thp_zapped is not None:  # a zapped subpage of a large folio (deferred_split.py)
            unmapped[: len(self.thp_zapped)] &= ~self.thp_zapped
        assert swap[unmapped].all(), "an unmapped resident page without its swap copy"
        files = (
            self.nr_resident[self.page_owner(fb) :] if fb < self.nr_pages else self.nr_resident[:0]
        )
        assert fhas.sum() == files.sum(), "page cache"
        ra = self.flags[self.readahead] if len(self.readahead) else self.flags[:0]
        assert (ra & (HAS_FRAME | PG_SWAP | PTE_PRESENT) == HAS_FRAME | PG_SWAP).all(), (
            "PG_readahead on a page that is not an unmapped swap-cache folio"
        )
        wb = (self.flags & PG_WRITEBACK) != 0
        assert int(wb.sum()) == self.nr_writeback, "writeback accounting"
        res = np.bincount(self.page_owners(pids), minlength=len(self.nr_resident))
        assert (res == self.nr_resident).all(), "per-mm resident counters"
        swapped = np.flatnonzero(swap & ~has)
        sw = np.bincount(self.page_owners(swapped), minlength=len(self.nr_swapped))
        assert (sw == self.nr_swapped).all(), "per-mm swapped counters"
