"""Partial unmaps of THPs and the deferred split queue (``host.thp`` with discards).

Models
    A VM's balloon discards guest pages 4 KiB at a time: QEMU's ``balloon_inflate_page``
    calls ``ram_block_discard_range``, ``MADV_DONTNEED`` of one 4 KiB page (anonymous guest
    RAM has a 4 KiB ``qemu_ram_pagesize`` even when THPs back it). Inside a THP,
    ``zap_pmd_range`` splits the PMD first when the range does not cover it
    (``__split_huge_pmd``, ``thp_split_pmd``: the MMU notifier invalidates the 2 MiB range, so
    KVM zaps the huge spte and maps 4 KiB sptes from then on), then ``zap_pte_range`` clears
    the page's pte and ``folio_remove_rmap_pte`` drops its mapping. The folio keeps all 512
    frames: ``__folio_remove_rmap`` finds it partially mapped (some pages still mapped) and
    calls ``deferred_split_folio(folio, true)``, which marks it partially mapped, counts
    ``thp_deferred_split_page`` once per folio and puts it at the tail of its deferred split
    queue (the node's, or its memcg's: ``folio_split_queue_memcg``); a folio in the swap cache
    is left alone (neither marked nor queued). A discard of the whole 2 MiB block
    (``zap_huge_pmd``, or the last mapped pte) frees the folio whole, which takes it off the
    queue (``__folio_unqueue_deferred_split``). Free page reporting discards whole pageblocks
    (2 MiB), so it frees THPs whole.

    The queue is emptied by the deferred split shrinker, run by ``shrink_slab`` after each
    lruvec pass of kswapd, direct reclaim and memcg limit reclaim (``shrink_node_memcgs``):
    ``do_shrink_slab`` asks ``deferred_split_count`` for the queue's length and scans
    ``(len >> priority) * 4 / seeks`` folios plus its deferred work ``>> priority``, capped at
    twice the length, in batches of ``SHRINK_BATCH`` (128), only once that total reaches a batch
    or the whole queue, and defers what it did not scan. ``deferred_split_scan`` takes folios
    from the queue's head and splits each partially mapped one (``split_folio``:
    ``thp_split_page``): the pages still mapped become 4 KiB folios on the LRU list the folio
    was on, the unmapped ones are freed (``free_page_and_swap_cache`` in ``__split_huge_page``)
    and leave their memcg's charge. Reclaim splits a queued, partially mapped folio it
    isolates right away (``shrink_folio_list``: "split partially mapped folios right away. We
    can free the unmapped pages without IO") and reclaims its pages as 4 KiB folios.

Kernel reference
    mm/huge_memory.c: ``deferred_split_folio``, ``deferred_split_count``,
    ``deferred_split_scan``, ``__split_huge_pmd``, ``__split_huge_page``,
    ``__folio_unqueue_deferred_split``; mm/rmap.c: ``__folio_remove_rmap``; mm/memory.c:
    ``zap_pmd_range``, ``zap_pte_range``; mm/shrinker.c: ``do_shrink_slab``; mm/vmscan.c:
    ``shrink_folio_list``, ``shrink_node_memcgs``; QEMU hw/virtio/virtio-balloon.c:
    ``balloon_inflate_page``.

Data model
    Per 2 MiB block (``HugeMemory.block``): ``THP_PARTIAL`` and ``THP_QUEUED`` flag bits, and
    ``seq``, the order the folio joined its queue in; the queue of a block is its VM's memcg's
    (or the node's, 0, without memcgs). A queue is the blocks with ``THP_QUEUED`` in it, in
    ``seq`` order: no list to keep, and a folio freed or split leaves it with its flags. Per
    guest page, ``HugeMemory.zapped``: the page's pte was zapped while its folio lives on. Such
    a page still owns its frame (``PG_RESIDENT`` and its pfn) and keeps the folio's other
    flags (so its swap slot, when the folio is in the swap cache), but counts as never
    touched: its next access is a first touch, and it leaves with the folio when the folio is
    split or freed (frame, slot and flags).

Simplifications
    The 6.12 underused split (``thp_underused``: every THP queued at its fault, split when more
    than ``max_ptes_none`` of its pages are zero-filled) is not modelled: a page of the model
    holds no contents, and a subpage untouched since the THP was cleared is not known either
    (the guest's accesses set the PMD's young bit, not a per-subpage one); it is off by
    default (``max_ptes_none`` 511). Folio locks are not modelled, so a split never fails
    (no ``thp_split_page_failed``): a queued folio is never under I/O (reclaim splits it
    before any). A guest access to a zapped page of a folio still whole (queued, or in the
    swap cache) splits the folio first: the kernel maps a fresh zeroed page there and leaves
    the folio to the shrinker, but a page id names one frame at a time here; the split is
    counted (``thp_split_page``) and frees the folio's zapped pages earlier than the kernel
    would. If that folio's I/O is in flight the access waits for its end. With memcgs the
    shrinker of root reclaim scans every memcg's queue (``shrink_node_memcgs`` skips the
    lruvecs below their protection; their queues are scanned here too), limit reclaim its
    target's. The split pages go to the head of the folio's LRU list, not next to it.

Invariants
    A queued block is a large folio, partially mapped (some page mapped, some zapped), not in
    the swap cache, on one queue once (``THP_QUEUED`` with a ``seq`` unique to it); a block
    with ``THP_PARTIAL`` is large; zapped pages lie in large blocks, own a frame and no pte;
    frames are conserved (a zapped page's frame is its folio's until it is freed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy
from numpy.typing import NDArray

from sim.host.huge_memory import (
    HPAGE_PMD_NR,
    HPAGE_PMD_SHIFT,
    THP_LARGE,
    THP_PARTIAL,
    THP_PMD,
    THP_QUEUED,
    HugeMemory,
)
from sim.host.memory import (
    HAS_FRAME,
    NO_PFN,
    PG_LOCKED,
    PG_SWAP,
    PG_WRITEBACK,
    PTE_PRESENT,
    PTE_YOUNG,
    HostMemory,
)
from sim.host.vmstat import VmEvents

if TYPE_CHECKING:
    from sim.host.rmap import Rmap
    from sim.host.swap import SwapDevice
    from sim.host.vmscan import ScanControl
    from sim.reclaim.base import EvictionPolicy

THP_DEFERRED_SPLIT_PAGE = "thp_deferred_split_page"
DEFERRED_SPLIT_EVENTS = (THP_DEFERRED_SPLIT_PAGE,)
"""The deferred split queue's /proc/vmstat counter, kept only in worlds with THP and a
balloon (the only partial unmaps)."""
SHRINK_BATCH = 128  # mm/shrinker.c: objects per scan_objects call
DEFAULT_SEEKS = 2  # include/linux/shrinker.h: the deferred split shrinker's seeks

_U8 = np.uint8
_BUSY = PG_LOCKED | PG_WRITEBACK
_PTE = _U8(PTE_PRESENT | PTE_YOUNG)


class DeferredSplit:
    """Partial unmaps of large folios, their deferred split queues and the shrinker.

    Args:
        thp: the THP state (its block flags and zapped pages).
        mem: host memory.
        policy: the LRU (split pages go back on it, freed folios leave it).
        swap: the swap device (a freed page's slot).
        rmap: the reverse map (a PMD split invalidates the 2 MiB range).
        vmstat: the host's counters.
        queue_of_mm: per mm, the index of its deferred split queue.
        nr_queues: how many queues (memcgs, or 1: the node's).
        env: the clock (a fault on a zapped page of a folio under I/O waits for it).
    """

    def __init__(
        self,
        thp: HugeMemory,
        mem: HostMemory,
        policy: EvictionPolicy,
        swap: SwapDevice,
        rmap: Rmap,
        vmstat: VmEvents,
        queue_of_mm: Sequence[int],
        nr_queues: int,
        env: simpy.Environment | None,
    ) -> None:
        self.thp, self.mem, self.policy, self.swap = thp, mem, policy, swap
        self.rmap, self.vmstat, self.env = rmap, vmstat, env
        nb = len(thp.block)
        heads = np.arange(nb, dtype=np.int64) << HPAGE_PMD_SHIFT
        self.queue = np.asarray(queue_of_mm, dtype=np.int64)[mem.page_owners(heads)]
        self.seq = np.zeros(nb, dtype=np.int64)  # order on its queue (valid while THP_QUEUED)
        self._next_seq = 1
        self.nr_deferred = np.zeros(nr_queues, dtype=np.int64)  # the shrinker's deferred work
        self._io_waiters: dict[int, simpy.Event] = {}  # block -> faults on its zapped pages

    # -- lookups -----------------------------------------------------------------------------
    def queue_len(self, q: int | None = None) -> int:
        """``split_queue_len``: folios on queue ``q`` (all queues when None)."""
        queued = (self.thp.block & THP_QUEUED) != 0
        if q is None:
            return int(np.count_nonzero(queued))
        return int(np.count_nonzero(queued & (self.queue == q)))

    def is_zapped(self, pid: int) -> bool:
        """Page ``pid`` was discarded from a large folio that still holds its frame."""
        return pid < self.thp.nr_vm_pages and bool(self.thp.zapped.item(pid))

    def folio_busy(self, pid: int) -> bool:
        """The large folio of ``pid`` has I/O in flight (its write-out, or a large swap-in)."""
        return bool(self.mem.flags.item(pid & ~(HPAGE_PMD_NR - 1)) & _BUSY)

    # -- partial unmaps ----------------------------------------------------------------------
    def zap(self, pids: NDArray[np.int64], work: Any) -> NDArray[np.bool_]:
        """The part of a discard (``MADV_DONTNEED`` of ``pids``: sorted, touched, not zapped
        yet) that falls in large folios; returns which of ``pids`` those are (the caller's
        4 KiB path takes the rest). ``work`` counts the notifier work of PMD splits."""
        blocks = pids >> HPAGE_PMD_SHIFT
        large = (self.thp.block[blocks] & THP_LARGE) != 0
        if not large.any():
            return large
        lp = pids[large]
        ub, first = np.unique(lp >> HPAGE_PMD_SHIFT, return_index=True)
        for b, part in zip(ub.tolist(), np.split(lp, first[1:]), strict=True):
            self._zap_block(b, part, work)
        return large

    def _zap_block(self, b: int, part: NDArray[np.int64], work: Any) -> None:
        """``zap_pmd_range`` over the pages ``part`` of large block ``b``: split the PMD
        unless the whole block goes (``zap_huge_pmd``), zap the ptes, then free the folio if
        nothing of it is left, or queue it for a deferred split if it is partially mapped."""
        thp, mem = self.thp, self.mem
        head = b << HPAGE_PMD_SHIFT
        sl = slice(head, head + HPAGE_PMD_NR)
        zapped = thp.zapped[sl]
        whole = len(part) + int(np.count_nonzero(zapped)) == HPAGE_PMD_NR
        if not whole and thp.block.item(b) & THP_PMD:
            self.rmap.split_huge_pmd(head, work)  # its young bit now on every pte
        mem.flags[part] &= ~_PTE
        thp.zapped[part] = True
        if whole:
            if not mem.flags.item(head) & _BUSY:  # else freed when its I/O ends
                self.free_folio(head)
            return
        self._maybe_queue(head)

    def _maybe_queue(self, head: int) -> None:
        """``deferred_split_folio(folio, true)`` from ``__folio_remove_rmap``, for a folio some
        of whose pages are mapped and some zapped: skipped in the swap cache, else marked
        partially mapped (``thp_deferred_split_page``, once) and queued once."""
        thp, mem = self.thp, self.mem
        b = head >> HPAGE_PMD_SHIFT
        blk = thp.block.item(b)
        if blk & THP_PARTIAL or mem.flags.item(head) & PG_SWAP:
            return
        f = mem.flags[head : head + HPAGE_PMD_NR]
        if not (f & PTE_PRESENT).any():
            return
        thp.block[b] = blk | THP_PARTIAL | THP_QUEUED
        self.seq[b] = self._next_seq
        self._next_seq += 1
        self.vmstat.count(THP_DEFERRED_SPLIT_PAGE, 1, mem.page_owner(head))

    def free_folio(self, head: int) -> None:
        """The last mapping of a large folio with no I/O in flight is gone: it leaves the LRU
        and its queue, its frames and any swap slots are freed."""
        mem = self.mem
        pids = self.thp.folio_pages(head)
        self.policy.folio_remove(np.array([mem.pfn.item(head)], dtype=np.int64))
        f = mem.flags[pids]
        in_swap = pids[(f & PG_SWAP) != 0]
        self.swap.free_slots(len(in_swap), in_swap)
        mem.free_frames(mem.pfn[pids].astype(np.int64))
        mem.flags[pids] = 0
        if len(mem.readahead):
            mem.readahead[pids] = False
        self.thp.folio_gone(head)

    def release_zapped(self, head: int) -> NDArray[np.bool_]:
        """The folio of ``head`` was just split or is being freed: its zapped pages' frames and
        slots are freed (``free_page_and_swap_cache``), and they hold nothing. Returns which
        of the block's pages they were."""
        mem = self.mem
        pids = self.thp.folio_pages(head)
        z = self.thp.zapped[head : head + HPAGE_PMD_NR].copy()
        if z.any():
            zp = pids[z]
            in_swap = zp[(mem.flags[zp] & PG_SWAP) != 0]
            self.swap.free_slots(len(in_swap), in_swap)
            mem.free_frames(mem.pfn[zp].astype(np.int64))
            mem.flags[zp] = 0
            mem.pfn[zp] = NO_PFN
            if len(mem.readahead):
                mem.readahead[zp] = False
            self.thp.zapped[zp] = False
        return z

    def split(self, head: int) -> NDArray[np.int64]:
        """``split_folio`` of a large folio not mapped by a PMD and with no I/O in flight
        (``thp_split_page``): it leaves its queue, its zapped pages are freed. Returns the
        frames of the base folios left, in block order (the head's first if it is one)."""
        thp = self.thp
        pfns = thp.split_folio(head)  # clears the block's flags: off the queue
        z = self.release_zapped(head)
        thp.folio_gone(head)
        return pfns[~z]

    def split_in_place(self, head: int) -> None:
        """:meth:`split` of a folio on the LRU (not isolated): the head's entry goes, the base
        folios left take its list (``lru_add_split_folio``)."""
        hpfn = self.mem.pfn.item(head)
        active = self.policy.folio_test_active(hpfn)
        self.policy.folio_remove(np.array([hpfn], dtype=np.int64))
        self.policy.folio_putback(self.split(head), active)

    def fault_on_zapped(self, pid: int) -> None:
        """A guest access to zapped page ``pid`` (its folio not under I/O): the folio is split
        so the page can take a new frame (see the module's simplifications)."""
        self.split_in_place(pid & ~(HPAGE_PMD_NR - 1))

    def io_wait(self, pid: int) -> simpy.Event:
        """The event a fault on zapped page ``pid`` waits on while its folio's I/O is in
        flight (made when the first waiter comes)."""
        b = pid >> HPAGE_PMD_SHIFT
        ev = self._io_waiters.get(b)
        if ev is None:
            assert self.env is not None
            ev = self._io_waiters[b] = self.env.event()
        return ev

    def io_done(self, head: int) -> None:
        """The large folio of ``head`` ended its I/O (its flags updated): free it if all its
        pages were zapped meanwhile, else queue it if it is now partially mapped outside the
        swap cache; wake faults waiting on its zapped pages."""
        b = head >> HPAGE_PMD_SHIFT
        if self.thp.block.item(b) & THP_LARGE and not self.mem.flags.item(head) & _BUSY:
            z = self.thp.zapped[head : head + HPAGE_PMD_NR]
            if z.all():
                self.free_folio(head)
            elif z.any():
                self._maybe_queue(head)
        ev = self._io_waiters.pop(b, None)
        if ev is not None:
            ev.succeed()

    # -- the shrinker ------------------------------------------------------------------------
    def shrink(self, sc: ScanControl) -> None:
        """``shrink_slab``'s call of the deferred split shrinker after a lruvec pass: limit
        reclaim scans its memcg's queue, other reclaim every queue."""
        target = sc.target_memcg
        nq = len(self.nr_deferred)
        queues = [target] if target >= 0 and nq > 1 else range(nq)
        for q in queues:
            self._do_shrink_slab(int(q), sc.priority)

    def _do_shrink_slab(self, q: int, priority: int) -> None:
        """``do_shrink_slab`` of queue ``q`` at ``priority``, each batch a
        ``deferred_split_scan`` of the queue's oldest folios."""
        thp = self.thp
        queued = np.flatnonzero(((thp.block & THP_QUEUED) != 0) & (self.queue == q))
        freeable = len(queued)  # deferred_split_count
        if freeable == 0:
            return
        nr = int(self.nr_deferred[q])
        self.nr_deferred[q] = 0
        delta = (freeable >> priority) * 4 // DEFAULT_SEEKS
        total = min((nr >> priority) + delta, 2 * freeable)
        order = queued[np.argsort(self.seq[queued], kind="stable")]
        scanned = taken = 0
        while total >= SHRINK_BATCH or total >= freeable:
            todo = min(SHRINK_BATCH, total)
            if taken >= len(order):  # SHRINK_STOP: nothing split and the queue empty
                break
            for b in order[taken : taken + todo].tolist():
                self.split_in_place(b << HPAGE_PMD_SHIFT)
            taken += todo
            total -= todo
            scanned += todo
        self.nr_deferred[q] = min(max(nr + delta - scanned, 0), 2 * freeable)

    # -- checks ------------------------------------------------------------------------------
    def check(self) -> None:
        """Assert the queue and zapped-page invariants (module docstring)."""
        thp, mem = self.thp, self.mem
        blk = thp.block
        large = (blk & THP_LARGE) != 0
        queued = (blk & THP_QUEUED) != 0
        partial = (blk & THP_PARTIAL) != 0
        assert not (partial & ~large).any(), "partially mapped, not large"
        assert not (queued & ~partial).any(), "queued, not partially mapped"
        assert not (queued & ((blk & THP_PMD) != 0)).any(), "a queued folio mapped by a PMD"
        seqs = self.seq[queued]
        assert len(np.unique(seqs)) == len(seqs), "queued twice"
        assert (seqs > 0).all(), "queued with no place on its queue"
        n = thp.nr_vm_pages
        z = thp.zapped
        f = mem.flags[:n]
        assert not (z & ~np.repeat(large, HPAGE_PMD_NR)).any(), "a zapped page outside a THP"
        assert ((f[z] & HAS_FRAME) != 0).all(), "a zapped page without its frame"
        assert not (f[z] & PTE_PRESENT).any(), "a zapped page mapped"
        zb = z.reshape(-1, HPAGE_PMD_NR)
        fb = f.reshape(-1, HPAGE_PMD_NR)
        mapped = ((fb & PTE_PRESENT) != 0).any(axis=1)
        assert (zb[queued].any(axis=1) & mapped[queued]).all(), "queued, not partially mapped"
        assert not ((fb[queued, 0] & (PG_SWAP | _BUSY)) != 0).any(), "queued in the swap cache"
