"""Page reclaim's shared machinery: the scan control of a pass and ``shrink_folio_list``.

Models
    What happens to a folio once a policy has decided to reclaim it, whatever the policy: it gets
    a swap slot if it has none (``add_to_swap``), is unmapped everywhere (``try_to_unmap``, which
    makes KVM zap its sptes through ``invalidate_range_start``), and is then either dropped at once
    (clean, with a valid copy in swap) or written out (``pageout``). A written folio keeps its frame
    until the write completes; then the frame is freed (the kernel frees it on the next scan after
    ``folio_end_writeback`` rotates it to the tail; we free it at completion).

Kernel reference
    mm/vmscan.c: ``struct scan_control``, ``shrink_folio_list``, ``pageout``,
    ``__remove_mapping``; mm/swap_state.c: ``add_to_swap``; mm/workingset.c:
    ``workingset_eviction`` (the shadow left in the swap cache).

Simplifications
    A folio whose write-out has started counts as reclaimed (``nr_reclaimed``) at once, and kswapd
    counts its frame as on its way to free (``HostMemory.balanced``); otherwise kswapd would keep
    raising its priority while writes are in flight, which the kernel avoids by freeing them on
    later scans. A folio under writeback is not reclaimable again until its write completes.

Invariants
    A folio handed here is isolated (on no list); on return the True ones are unmapped with no
    spte left, own a swap slot, and are either free or under writeback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from sim.host.memory import (
    DEF_PRIORITY,
    PG_DIRTY,
    PG_EVICTED,
    PG_SWAP,
    PG_WRITEBACK,
    PTE_PRESENT,
    PTRS_PER_PMD,
    SWAP_CLUSTER_MAX,
    HostMemory,
)
from sim.host.mm import Mm
from sim.host.rmap import Rmap
from sim.host.swap import SwapDevice

if TYPE_CHECKING:
    from sim.reclaim.base import EvictionPolicy


@dataclass(slots=True)
class ScanControl:
    """``struct scan_control``: one reclaim pass's inputs and its running counts.

    The counts are what the cost model prices: the pass takes
    ``CostModel.reclaim_ns(sc)`` of CPU time in the reclaiming thread.
    """

    nr_to_reclaim: int
    priority: int = DEF_PRIORITY
    direct: bool = False  # direct reclaim by an allocating task (else kswapd)
    batch: int = SWAP_CLUSTER_MAX  # folios isolated at a time
    nr_scanned: int = 0  # inactive folios isolated and checked (pgscan)
    nr_refill: int = 0  # active folios scanned for deactivation (pgrefill)
    nr_reclaimed: int = 0  # folios freed or whose write-out started (pgsteal)
    nr_activate: int = 0
    nr_deactivate: int = 0
    nr_pageout: int = 0  # swap-out writes started
    nr_swap_full: int = 0  # folios that found no free swap slot
    nr_rmap_walked: int = 0  # host rmap mappings visited
    nr_notifier_calls: int = 0  # notifier callbacks made (all ops)
    nr_sptes_walked: int = 0  # sptes visited by KVM's rmap walks (shadow paging)
    nr_tlb_flushes: int = 0  # remote TLB flushes KVM made on our behalf


class EvictionSink(Protocol):
    """Where evictions are logged (the recorder)."""

    def evicted(
        self,
        t_ns: int,
        pids: NDArray[np.int32],
        pfns: NDArray[np.int64],
        dirty: NDArray[np.bool_],
        scans: NDArray[np.uint8],
    ) -> None:
        """Folios ``pids`` (in frames ``pfns``) left memory at ``t_ns``."""
        ...


Schedule = Callable[[int, Callable[[], None]], None]


class Vmscan:
    """The host side of reclaim that every policy shares (the ``Reclaimer`` policies call).

    Args:
        mem: host memory.
        swap: the swap device.
        rmap: the host rmap (and through it the notifier chains).
        mms: the mms, by index.
        now: returns the current simulated time (ns).
        schedule: ``schedule(t_ns, fn)`` runs ``fn`` at absolute time ``t_ns``.
        sink: eviction log.
    """

    def __init__(
        self,
        mem: HostMemory,
        swap: SwapDevice,
        rmap: Rmap,
        mms: Sequence[Mm],
        now: Callable[[], int],
        schedule: Schedule,
        sink: EvictionSink | None = None,
    ) -> None:
        self.mem, self.swap, self.rmap, self.mms = mem, swap, rmap, list(mms)
        self.now, self.schedule, self.sink = now, schedule, sink
        self.policy: EvictionPolicy  # set by the engine once the policy exists
        # Guest RAM in 2 MiB THPs: folios are PMD-mapped, and the kernel looks around only
        # from a pte (folio_referenced_one), so there is nothing to look around.
        self.pmd_mapped = False

    def can_swap(self) -> bool:
        """``can_reclaim_anon_pages``: anon folios are reclaimable only while swap has room."""
        return self.swap.nr_free_slots > 0

    def folio_test_writeback(self, pfns: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Which folios have a write-out in flight."""
        return (self.mem.flags[self.mem.frame_pid[pfns]] & PG_WRITEBACK) != 0

    def clear_young(self, pfns: NDArray[np.int64], sc: ScanControl) -> NDArray[np.bool_]:
        """``ptep_clear_young_notify``: host young OR notifiers' clear_young, no flush."""
        return self.rmap.folio_referenced(pfns, sc, flush=False)

    def ptep_test_and_clear_young(
        self, pfns: NDArray[np.int64], sc: ScanControl
    ) -> NDArray[np.bool_]:
        """Host pte young bits only (no notifiers)."""
        return self.rmap.ptep_test_and_clear_young(pfns, sc)

    def walk_mm(self) -> NDArray[np.int64]:
        """Frames of every present pte, mm by mm in ascending hva (page-table order)."""
        present = np.flatnonzero((self.mem.flags & PTE_PRESENT) != 0)
        return self.mem.pfn[present].astype(np.int64)

    def lookaround(self, pfn: int, window: int = 64) -> NDArray[np.int64]:
        """Present neighbours of ``pfn``'s pte inside its PMD, at most ``window`` ptes wide."""
        mem = self.mem
        if self.pmd_mapped:
            return np.empty(0, dtype=np.int64)
        pid = int(mem.frame_pid[pfn])
        mm = self.mms[mem.page_owner(pid)]
        gfn = pid - mm.pid_base
        ptrs = PTRS_PER_PMD
        lo = gfn - gfn % ptrs
        hi = min(lo + ptrs, mm.nr_pages)
        if hi - lo > window:  # lru_gen_look_around: centre a window of MIN_LRU_BATCH ptes
            if gfn - lo < window // 2:
                hi = lo + window
            elif hi - gfn < window // 2:
                lo = hi - window
            else:
                lo, hi = gfn - window // 2, gfn + window // 2
        pids = np.arange(mm.pid_base + lo, mm.pid_base + hi, dtype=np.int64)
        pids = pids[((mem.flags[pids] & PTE_PRESENT) != 0) & (pids != pid)]
        return mem.pfn[pids].astype(np.int64)

    def free_and_high(self) -> tuple[int, int]:
        """Free pages and the high watermark."""
        return self.mem.nr_free, self.mem.wmark.high

    def activate_locked(self, pfns: NDArray[np.int64]) -> None:
        """Activated swap-cache folios give up their swap copy when swap is over half full."""
        if len(pfns) == 0 or not self.swap.vm_swap_full():
            return
        pids = self.mem.frame_pid[pfns]
        f = self.mem.flags[pids]
        sel = pids[(f & (PG_SWAP | PG_WRITEBACK)) == PG_SWAP]  # folio_free_swap skips writeback
        if len(sel):
            self.swap.free_slots(len(sel))
            self.mem.flags[sel] = (self.mem.flags[sel] & ~np.uint8(PG_SWAP)) | np.uint8(PG_DIRTY)

    def folio_referenced(self, pfns: NDArray[np.int64], sc: ScanControl) -> NDArray[np.bool_]:
        """``folio_referenced`` over host ptes and notifiers; counts a scan of each folio."""
        if self.mem.stamps:
            s = self.mem.scans
            s[pfns] = np.minimum(s[pfns].astype(np.int32) + 1, 255).astype(np.uint8)
        return self.rmap.folio_referenced(pfns, sc)

    def shrink_folio_list(self, pfns: NDArray[np.int64], sc: ScanControl) -> NDArray[np.bool_]:
        """Reclaim isolated folios the policy rejected; True where they left (or are leaving)."""
        mem, swap = self.mem, self.swap
        pids = mem.frame_pid[pfns]
        f = mem.flags[pids]
        ok = (f & (PG_WRITEBACK | PTE_PRESENT)) == PTE_PRESENT
        # add_to_swap: a folio with no swap copy needs a slot, and is dirty by definition.
        need = np.flatnonzero(ok & ((f & PG_SWAP) == 0))
        if len(need):
            got = swap.alloc_slots(len(need))
            if got < len(need):
                ok[need[got:]] = False
                sc.nr_swap_full += len(need) - got
            mem.flags[pids[need[:got]]] |= np.uint8(PG_SWAP | PG_DIRTY)
        if not ok.any():
            return ok
        cpfn, cpid = pfns[ok], pids[ok]
        shadows = self.policy.workingset_eviction(cpfn)
        self.rmap.try_to_unmap(cpfn, sc)  # KVM zaps sptes and hands over their dirty bits
        f = mem.flags[cpid] | np.uint8(PG_EVICTED)
        mem.flags[cpid] = f
        dirty = (f & PG_DIRTY) != 0
        now = self.now()
        if self.sink is not None:
            scans = mem.scans[cpfn] if mem.stamps else np.zeros(len(cpfn), dtype=np.uint8)
            self.sink.evicted(now, cpid, cpfn, dirty, scans)
        # Clean folios with a valid swap copy: __remove_mapping, the frame is free now and the
        # page keeps the shadow in its place.
        clean = ~dirty
        if clean.any():
            self._swapped_out(cpid[clean])
            mem.free_frames(cpfn[clean], shadows[clean])
        # Dirty folios: pageout() starts the write; the frame is freed, and the shadow takes its
        # place, when the write completes.
        if dirty.any():
            wpid, wpfn = cpid[dirty], cpfn[dirty]
            mem.flags[wpid] = (f[dirty] & ~np.uint8(PG_DIRTY)) | np.uint8(PG_WRITEBACK)
            mem.nr_writeback += len(wpid)
            done = swap.submit(now, write=True, n=len(wpid))
            for pid, pfn, shadow, t in zip(
                wpid.tolist(), wpfn.tolist(), shadows[dirty].tolist(), done, strict=True
            ):
                self.schedule(t, partial(self._end_writeback, pid, pfn, shadow))
            sc.nr_pageout += len(wpid)
        sc.nr_reclaimed += len(cpid)
        return ok

    def _swapped_out(self, pids: NDArray[np.int32]) -> None:
        self.mem.nr_swapped += np.bincount(
            self.mem.page_owners(pids), minlength=len(self.mem.nr_swapped)
        )

    def _end_writeback(self, pid: int, pfn: int, shadow: int) -> None:
        """``folio_end_writeback``: free the frame, leaving the eviction's ``shadow`` in its
        place, unless the page was mapped again meanwhile (then the shadow is moot)."""
        mem = self.mem
        f = int(mem.flags[pid]) & ~PG_WRITEBACK
        mem.nr_writeback -= 1
        owner = mem.page_owner(pid)
        if self.mms[owner].dead:
            if f & PTE_PRESENT:  # mapped again before the kill: it is on the LRU
                self.policy.folio_remove(np.array([pfn], dtype=np.int64))
            self.swap.free_slots(1)  # a folio under writeback owns a slot
            mem.flags[pid] = 0
            mem.free_frame(pfn)
        elif f & PTE_PRESENT:
            mem.flags[pid] = f
        else:
            mem.flags[pid] = f
            mem.nr_swapped[owner] += 1
            mem.free_frame(pfn, shadow)
