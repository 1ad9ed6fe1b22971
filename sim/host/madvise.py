"""``madvise(MADV_DONTNEED)`` on guest RAM: the host discards guest pages a VM gave up.

Models
    virtio-balloon inflation and free page reporting end on the host the same way: QEMU calls
    ``madvise(MADV_DONTNEED)`` on the hva range of the guest pages given up (anonymous guest
    RAM). One contiguous run of gfns is one range, as one call on it is:
    ``zap_page_range_single`` brackets the range with ``mmu_notifier_invalidate_range_start``
    and ``_end``, so KVM zaps every spte in it first (one remote TLB flush per range that had a
    present spte; vCPU steps in flight over them are cut, as for a reclaim zap), then
    ``zap_pte_range`` clears every pte of the range:

    - a present pte: the folio's only mapping goes and the folio is freed, with its swap slot if
      it has one (``free_swap_and_cache``);
    - a swap entry whose folio is still in the swap cache (unmapped by reclaim, its write-out
      done, or read ahead): ``free_swap_and_cache`` drops the entry's last reference and the
      folio goes with it;
    - a swap entry only: ``free_swap_and_cache`` frees the slot, and what zram or zswap held for
      it (``zram_slot_free_notify``, ``zswap_invalidate``);
    - a folio with I/O in flight (``PG_WRITEBACK``: its swap-out write; ``PG_LOCKED``: a swap-in
      read, a fault's or readahead's) cannot be freed on the spot: the pte is zapped now and the
      folio is freed, with its slot, when the I/O ends, by the completion (the per-page version
      of what ``exit_mmap`` does for a whole mm, sim/host/oom.py). Until then the page is in
      ``Mm.zapped``.

    After the discard the page is as if never touched: no spte, no pte, no frame, no slot, no
    workingset shadow (it lived in the swap cache entry); its next access is a first touch
    (``do_anonymous_page``), neither a refault nor a swap-in.

Counting
    The kernel counts nothing for madvise itself: the frames freed show in the free page count,
    and each memcg's charges drop with them (``memory.current`` is the frames its pages own,
    ``memory.swap.current`` the slots, uncharged as they are freed). The invalidation is counted
    where the chain counts it (``mmu_notifier_invalidate_range_start``/``_end`` per range,
    ``sptes_walked``, ``remote_tlb_flush``). memsim's own per-VM ``pages_discarded``
    (``VmStats``, not a kernel counter) counts the pages a discard found holding a frame or a
    swap copy. The eviction log (sim/record.py): an eviction still waiting for its page's
    refault is final (the page never comes back), unless a fault on the page had already begun
    (it is that refault, logged when it ends).

Kernel reference
    mm/madvise.c: ``madvise_dontneed_free``, ``madvise_dontneed_single_vma``; mm/memory.c:
    ``zap_page_range_single``, ``zap_pte_range``; mm/swapfile.c: ``free_swap_and_cache_nr``,
    ``__try_to_reclaim_swap``; mm/memcontrol.c: ``mem_cgroup_uncharge_swap``;
    virt/kvm/kvm_main.c: ``kvm_mmu_notifier_invalidate_range_start``; QEMU:
    ``ram_block_discard_range``.

Simplifications
    A folio with I/O in flight is freed, with its slot and its charges, when the I/O ends; the
    kernel's ``__try_to_reclaim_swap`` gives up on a locked or writeback folio, which then stays
    in the swap cache, charged, until reclaim meets it again. A guest access to such a page
    waits for the I/O to end, then takes its first-touch fault (the kernel would map a fresh
    zeroed folio at once: here a page id names one folio at a time). A fault that was waiting
    for a frame to read the page into finds the swap entry gone and zero-fills the frame it got
    (the kernel retries the fault, which then does). A discard is of whole 4 KiB pages of
    anonymous guest RAM (with ``host.thp``, pages of large folios are zapped by
    sim/host/deferred_split.py, which keeps the folio and its frames until it is split); shmem
    or file backing (a hole punch) is not modelled.

Invariants
    After a discard, every page of the range without I/O in flight has no flag, no frame, no
    slot, no spte and ``NO_PFN``. A page in ``Mm.zapped`` has a frame and I/O in flight, no pte
    and no spte; it leaves ``Mm.zapped`` when the completion frees its folio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from sim.host.memory import (
    HAS_FRAME,
    NO_PFN,
    PAGE_SHIFT,
    PG_LOCKED,
    PG_SWAP,
    PG_WRITEBACK,
    PTE_PRESENT,
    PTE_YOUNG,
    HostMemory,
)
from sim.host.mm import Mm
from sim.host.swap import SwapDevice
from sim.reclaim.base import EvictionPolicy

if TYPE_CHECKING:
    from sim.host.deferred_split import DeferredSplit

_BUSY = np.uint8(PG_LOCKED | PG_WRITEBACK)
_TOUCHED = np.uint8(HAS_FRAME | PG_SWAP)  # a page was touched iff it has one (memory.py)


class DiscardSink(Protocol):
    """Where discards are logged (the recorder): pending evictions become final."""

    def discarded(self, pids: NDArray[np.int64], keep: Callable[[int], bool] | None) -> None:
        """Pages ``pids`` were discarded; an eviction still waiting for the refault of one of
        them is final unless ``keep(pid)`` (a fault on it has begun)."""
        ...


@dataclass(slots=True)
class DontneedWork:
    """What one ``madvise(MADV_DONTNEED)`` did: the notifier chain's work (``NotifierWork``)
    and what the zap found, for a caller that prices or reports it."""

    nr_notifier_calls: int = 0
    nr_sptes_walked: int = 0
    nr_ptes_scanned: int = 0
    nr_tlb_flushes: int = 0
    nr_ranges: int = 0  # contiguous runs of gfns: one invalidation each
    nr_discarded: int = 0  # pages that held a frame or a swap copy (untouched pages hold none)
    nr_busy: int = 0  # of those, pages whose folio waits for its I/O (freed when it ends)
    nr_freed: int = 0  # frames freed now (the pages' and the compressed pool's)


def gfn_ranges(gfns: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The contiguous runs ``[start, end)`` of sorted, distinct ``gfns``."""
    if len(gfns) == 0:
        return gfns[:0], gfns[:0]
    cut = np.flatnonzero(np.diff(gfns) != 1) + 1
    starts = gfns[np.concatenate(([0], cut))]
    ends = gfns[np.concatenate((cut - 1, [len(gfns) - 1]))] + 1
    return starts, ends


def madvise_dontneed(
    mm: Mm,
    gfns: NDArray[np.integer] | Sequence[int],
    mem: HostMemory,
    swap: SwapDevice,
    policy: EvictionPolicy,
    *,
    sink: DiscardSink | None = None,
    faulting: Callable[[int], bool] | None = None,
    thp: DeferredSplit | None = None,
) -> DontneedWork:
    """Discard guest pages ``gfns`` of ``mm`` (any order, repeats allowed) as QEMU's
    ``madvise(MADV_DONTNEED)`` on their hva ranges does; see the module docstring.

    ``sink`` is the eviction log, ``faulting(pid)`` whether a guest fault on the page has
    begun (the fault handler's ``fault_in_progress``), ``thp`` the deferred split queue when
    THPs back guest RAM (their pages are zapped there). An exited mm has nothing to discard.
    """
    work = DontneedWork()
    g = np.unique(np.asarray(gfns, dtype=np.int64))
    if len(g) == 0 or mm.dead:
        return work
    if g[0] < 0 or g[-1] >= mm.nr_pages:
        raise ValueError(f"madvise on gfns outside {mm.name}'s {mm.nr_pages} pages")
    starts, ends = gfn_ranges(g)
    work.nr_ranges = len(starts)
    hva_start = mm.hva_base + (starts << PAGE_SHIFT)
    hva_end = mm.hva_base + (ends << PAGE_SHIFT)
    free_before = mem.nr_free
    mm.notifiers.invalidate_range_start(hva_start, hva_end, work)
    pids = mm.pid_base + g
    f = mem.flags[pids]
    touched = (f & _TOUCHED) != 0
    if thp is not None:  # a page zapped from a THP already is as if never touched
        touched &= ~thp.thp.zapped[pids]
    pids, f = pids[touched], f[touched]
    if sink is not None and len(pids):
        sink.discarded(pids, faulting)
    nr_large = 0
    if thp is not None and len(pids):  # pages of large folios: zap_pmd_range
        small = ~thp.zap(pids, work)
        nr_large = len(pids) - int(np.count_nonzero(small))
        pids, f = pids[small], f[small]
    busy = (f & _BUSY) != 0
    zapped = mm.zapped
    fresh = [p for p in pids[busy].tolist() if p not in zapped]
    work.nr_busy = len(fresh)
    work.nr_discarded = nr_large + len(pids) - int(np.count_nonzero(busy)) + len(fresh)
    if fresh:  # zap_pte_range: the pte goes now (they are unmapped already), the folio later
        bp = np.array(fresh, dtype=np.int64)
        mem.flags[bp] &= ~np.uint8(PTE_PRESENT | PTE_YOUNG)
        zapped.update(dict.fromkeys(fresh))
    idle, fi = pids[~busy], f[~busy]
    in_swap = (fi & PG_SWAP) != 0
    has_frame = (fi & HAS_FRAME) != 0
    pfns = mem.pfn[idle[has_frame]].astype(np.int64)
    policy.folio_remove(pfns)
    swap.free_slots(int(np.count_nonzero(in_swap)), idle[in_swap])  # free_swap_and_cache
    only_swap = idle[~has_frame]
    mem.nr_swapped[mm.index] -= len(only_swap)
    mem.pfn[only_swap] = NO_PFN  # the workingset shadow goes with the swap cache entry
    mem.flags[idle] = 0
    if len(mem.readahead):
        mem.readahead[idle] = False
    mem.free_frames(pfns)
    mm.notifiers.invalidate_range_end(hva_start, hva_end, work)
    work.nr_freed = mem.nr_free - free_before
    return work


def check_zapped(mms: Sequence[Mm], mem: HostMemory) -> None:
    """Assert that every page zapped while its folio's I/O was in flight still has its frame,
    that I/O and no pte (tests; the completion frees it)."""
    for mm in mms:
        if not mm.zapped:
            continue
        p = np.fromiter(mm.zapped, dtype=np.int64, count=len(mm.zapped))
        gfns = p - mm.pid_base
        assert (gfns >= 0).all(), "a zapped page of another mm"
        assert (gfns < mm.nr_pages).all(), "a zapped page of another mm"
        f = mem.flags[p]
        assert ((f & HAS_FRAME) != 0).all(), "a zapped page whose folio is gone"
        assert ((f & _BUSY) != 0).all(), "a zapped folio with no I/O in flight"
        assert not (f & PTE_PRESENT).any(), "a zapped page mapped again"
