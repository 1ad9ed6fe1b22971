"""khugepaged: collapsing pte-mapped 2 MiB blocks of guest RAM back into THPs.

Models
    The daemon of ``host.thp.khugepaged``: every ``scan_sleep_ms`` it scans ``pages_to_scan``
    pages' worth of PMDs (512 per PMD, as ``khugepaged_scan_mm_slot`` counts its progress),
    mm after mm in address order, wrapping around (a full scan). A block is collapsed
    (``hpage_collapse_scan_pmd`` then ``collapse_huge_page``) when it is not PMD-mapped, at
    most ``max_ptes_none`` of its ptes are empty and at most ``max_ptes_swap`` are swap
    entries, none of its pages is locked or under write-back, and at least one pte is young,
    or KVM says one of its gfns was accessed (``mmu_notifier_test_young``, which tests the
    sptes without clearing them). The collapse allocates a THP (refused, like a fault's, if
    free memory would drop below the low watermark: ``thp_collapse_alloc_failed``, and the
    daemon sleeps ``alloc_sleep_ms`` before its next scan), reads the swapped pages in
    (``__collapse_huge_page_swapin``: a major fault and a read each, waited for; behind zswap, a
    page still in its pool is decompressed instead, ``zswpin``), invalidates the 2 MiB range
    (KVM zaps its 4 KiB sptes; its next fault there maps a 2 MiB spte), copies the pages
    (``costs.clear_page_ns`` per 4 KiB, khugepaged's own time), frees the old folios with their
    swap slots and maps the new one with a young PMD, on the inactive list
    (``thp_collapse_alloc``).

    With KSM the scan treats KSM's ptes as the kernel's does (mm/khugepaged.c has no KSM test
    of its own): a pte of the shared zero page counts with the empty ones (``is_zero_pfn``,
    against ``max_ptes_none``); a KSM page mapped more than once is shared
    (``folio_likely_mapped_shared``, at most ``max_ptes_shared``: 256, the kernel's default);
    a KSM folio under I/O is locked (``SCAN_PAGE_LOCK``); and a KSM or zero-page pte is
    read-only, so a block needs one other mapped page (``SCAN_PAGE_RO``). The collapse copies
    the KSM pages into the THP: each pte leaves its KSM page (host/ksm.py ``leave``; the zero
    page's as ``ksm_might_unmap_zero_page`` counts it).

Kernel reference
    mm/khugepaged.c: ``khugepaged_do_scan``, ``khugepaged_scan_mm_slot``,
    ``hpage_collapse_scan_pmd``, ``__collapse_huge_page_swapin``, ``collapse_huge_page``,
    ``__collapse_huge_page_copy``; include/linux/mmu_notifier.h: ``mmu_notifier_test_young``.

Simplifications
    A block holding a large folio mapped by ptes (a zram swap-in) is skipped, as is one with a
    fault or readahead in flight. The swapped pages are read straight into the new folio (no
    4 KiB folios in between); the reads are charged to khugepaged's sleep, not to any vCPU.
    ``max_ptes_shared`` is not a knob (only KSM pages are shared). The scan needs no
    ``mmap_lock``. A block holding a sharer whose KSM folio is swapped out is skipped (the
    kernel reads it in first, ``do_swap_page`` through ``ksm_might_need_to_copy``). A KSM
    page's pte leaves it at the collapse, so ``pages_sharing`` drops at once (the kernel's
    rmap_item stays on the stable node until ksmd next visits the address).
    With memcgs the new THP is charged only when its 512 pages fit under the VM's
    ``memory.max`` as they are (``alloc_charge_folio``'s charge may reclaim the memcg in
    khugepaged's context: not modelled); otherwise the block is skipped
    (SCAN_CGROUP_CHARGE_FAIL: no ``alloc_sleep_ms``) and nothing is counted (the kernel
    counts ``thp_collapse_alloc`` host-wide before the charge, in the memcg after it).

Invariants
    A collapsed block is a PMD-mapped large folio with every page resident and mapped, no
    swap slot, no spte until KVM's next fault; the frames of the old folios are free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import simpy
from numpy.typing import NDArray

from sim.host.huge_memory import HPAGE_PMD_NR, HPAGE_PMD_SHIFT, THP_LARGE, THP_PMD
from sim.host.memory import (
    NO_PFN,
    PAGE_SIZE,
    PG_DIRTY,
    PG_LOCKED,
    PG_RESIDENT,
    PG_SWAP,
    PG_WRITEBACK,
    PTE_PRESENT,
    PTE_YOUNG,
    HostMemory,
)
from sim.host.mm import Mm
from sim.host.swap import SwapDevice
from sim.host.vmstat import VmEvents, VmStat

if TYPE_CHECKING:
    from sim.host.huge_memory import HugeMemory, KhugepagedConfig
    from sim.host.ksm import Ksm
    from sim.host.memcontrol import MemCgroups
    from sim.reclaim.base import EvictionPolicy

THP_COLLAPSE_ALLOC = "thp_collapse_alloc"
THP_COLLAPSE_ALLOC_FAILED = "thp_collapse_alloc_failed"
KHUGEPAGED_EVENTS = (THP_COLLAPSE_ALLOC, THP_COLLAPSE_ALLOC_FAILED)
"""khugepaged's /proc/vmstat counters, kept only in worlds that run it."""

_U8 = np.uint8
_BUSY = PG_LOCKED | PG_WRITEBACK
MAX_PTES_SHARED = HPAGE_PMD_NR // 2  # khugepaged_max_ptes_shared's default (not a knob here)
_ZERO_NODE = -2  # host/ksm.py ZERO_NODE: a pte mapping the shared zero page


@dataclass(slots=True)
class KhugepagedStats:
    """``/sys/kernel/mm/transparent_hugepage/khugepaged``'s counters, and the notifier work
    of its calls (a ``NotifierWork``)."""

    pages_collapsed: int = 0
    full_scans: int = 0
    pmds_scanned: int = 0
    nr_notifier_calls: int = 0
    nr_sptes_walked: int = 0
    nr_tlb_flushes: int = 0
    nr_ptes_scanned: int = 0


class Khugepaged:
    """The collapse daemon over every VM's guest RAM.

    Args:
        cfg: its sysfs knobs.
        thp: the THP state.
        mem: host memory.
        swap: the swap device (swapped pages are read from it).
        mms: the VMs' mms.
        policy: the eviction policy (old folios leave its lists, the new one joins).
        vmstat: the host's counters.
        busy: whether a fault or readahead of a page is in flight (the fault handler's).
        clear_page_ns: the cost of copying one 4 KiB page.
    """

    def __init__(
        self,
        cfg: KhugepagedConfig,
        thp: HugeMemory,
        mem: HostMemory,
        swap: SwapDevice,
        mms: Sequence[Mm],
        policy: EvictionPolicy,
        vmstat: VmEvents,
        busy: Callable[[int], bool],
        clear_page_ns: int,
    ) -> None:
        self.cfg, self.thp, self.mem, self.swap = cfg, thp, mem, swap
        self.mms, self.policy, self.vmstat, self.busy = list(mms), policy, vmstat, busy
        self.clear_page_ns = clear_page_ns
        self.stats = KhugepagedStats()
        self.cursor = 0  # the next block (global block index over guest RAM)
        self.nr_blocks = thp.nr_vm_pages >> HPAGE_PMD_SHIFT
        self.memcg: MemCgroups | None = None  # the VMs' memcgs, which a collapse charges
        self.ksm: Ksm | None = None  # KSM, when on: its sharers' ptes in a block
        # per guest pid, memory of a VMA khugepaged never scans: hugetlbfs-backed guest RAM
        # (host/hugetlb.py; thp_vma_allowable_order refuses VM_HUGETLB, and only anonymous
        # VMAs are registered with khugepaged_enter_vma)
        self.skip: NDArray[np.bool_] | None = None

    def run(self, env: simpy.Environment) -> simpy.events.ProcessGenerator:
        """``khugepaged``: sleep, scan a batch, collapse what qualifies, wait for its reads."""
        sleep_ns = round(self.cfg.scan_sleep_ms * 1e6)
        alloc_sleep_ns = round(self.cfg.alloc_sleep_ms * 1e6)
        while True:
            yield env.timeout(sleep_ns)
            busy_ns, failed = self.do_scan(int(env.now))
            if busy_ns:
                yield env.timeout(busy_ns)
            if failed:  # khugepaged_alloc_sleep
                yield env.timeout(alloc_sleep_ns)

    def do_scan(self, now: int) -> tuple[int, bool]:
        """``khugepaged_do_scan``: ``pages_to_scan`` pages' worth of PMDs from the cursor,
        until a THP allocation fails; returns the time its collapses kept it busy (reads
        waited for, copies) and whether one failed."""
        busy_ns = 0
        for _ in range(max(1, self.cfg.pages_to_scan // HPAGE_PMD_NR)):
            b = self.cursor
            self.cursor += 1
            if self.cursor == self.nr_blocks:
                self.cursor = 0
                self.stats.full_scans += 1
            self.stats.pmds_scanned += 1
            if self.scan_pmd(b):
                took = self.collapse(b, now + busy_ns)
                if took < 0:
                    return busy_ns, True
                busy_ns += took
        return busy_ns, False

    def scan_pmd(self, b: int) -> bool:
        """``hpage_collapse_scan_pmd`` of block ``b``: whether it may be collapsed."""
        thp, mem = self.thp, self.mem
        if thp.block.item(b) & (THP_LARGE | THP_PMD):
            return False  # PMD-mapped already, or a pte-mapped large folio (skipped)
        head = b << HPAGE_PMD_SHIFT
        if self.skip is not None and self.skip.item(head):
            return False  # hugetlbfs: not an anonymous VMA
        mm = self.mms[mem.page_owner(head)]
        if mm.dead:
            return False
        sl = slice(head, head + HPAGE_PMD_NR)
        f = mem.flags[sl]
        none = (f == 0) & (mem.pfn[sl] == NO_PFN)
        if self.ksm is not None:
            node = mem.ksm_node[sl]
            if (node != -1).any():
                if not self._ksm_ok(f, node):
                    return False
                none |= node == _ZERO_NODE  # is_zero_pfn: counted with the empty ptes
        if int(np.count_nonzero(none)) > self.cfg.max_ptes_none:
            return False
        swapped = (f & (PTE_PRESENT | PG_SWAP)) == PG_SWAP
        if int(np.count_nonzero(swapped)) > self.cfg.max_ptes_swap:
            return False
        if (f & _BUSY).any():
            return False  # a folio locked or under write-back (SCAN_PAGE_LOCKED)
        if any(self.busy(p) for p in range(head, head + HPAGE_PMD_NR)):
            return False
        if (f & PTE_YOUNG).any():
            return True
        present = (f & PTE_PRESENT) != 0
        if not present.any():
            return False
        hva = mm.hva(np.arange(head, head + HPAGE_PMD_NR, dtype=np.int64)[present])
        young = mm.notifiers.test_young(hva, hva + PAGE_SIZE, self.stats)
        return bool(young.any())

    def _ksm_ok(self, f: NDArray[np.uint8], node: NDArray[np.int32]) -> bool:
        """``hpage_collapse_scan_pmd``'s tests that KSM's ptes in a block meet: a KSM page
        mapped more than once is shared (at most ``max_ptes_shared``, 256:
        ``SCAN_EXCEED_SHARED_PTE``), its folio must not be locked (``SCAN_PAGE_LOCK``), and a
        KSM or zero-page pte is read-only, so a block needs some other mapped page
        (``SCAN_PAGE_RO``). A sharer whose KSM folio was swapped out is a swap entry the
        kernel would read in (``__collapse_huge_page_swapin``): such a block is skipped here."""
        ksm, mem = self.ksm, self.mem
        assert ksm is not None
        present = (f & PTE_PRESENT) != 0
        sharer = node >= 0
        if (sharer & ~present).any():
            return False
        if not (present & (node == -1)).any():
            return False  # SCAN_PAGE_RO
        shared = 0
        for n in np.unique(node[sharer]).tolist():
            if mem.flags.item(ksm.node_base + n) & _BUSY:
                return False  # SCAN_PAGE_LOCK
            mapped = mem.flags[np.array(ksm.sharers[n], dtype=np.int64)] & PTE_PRESENT
            if np.count_nonzero(mapped) > 1:  # folio_likely_mapped_shared: mapcount > 1
                shared += int(np.count_nonzero(node == n))
        return shared <= MAX_PTES_SHARED

    def collapse(self, b: int, now: int) -> int:
        """``collapse_huge_page`` of block ``b``; returns the time it took, or -1 when the
        THP could not be allocated."""
        thp, mem, swap = self.thp, self.mem, self.swap
        head = b << HPAGE_PMD_SHIFT
        owner = mem.page_owner(head)
        mm = self.mms[owner]
        if mem.nr_free - HPAGE_PMD_NR < mem.wmark.low:
            self.vmstat.count(THP_COLLAPSE_ALLOC_FAILED, 1, owner)
            return -1
        if self.memcg is not None and not self.memcg.fits(head, HPAGE_PMD_NR):
            return 0  # SCAN_CGROUP_CHARGE_FAIL: the block is skipped, the scan goes on
        pids = np.arange(head, head + HPAGE_PMD_NR, dtype=np.int64)
        f = mem.flags[pids]
        swapped = pids[(f & (PTE_PRESENT | PG_SWAP | PG_RESIDENT)) == PG_SWAP]
        busy_ns = 0
        if len(swapped):  # __collapse_huge_page_swapin: do_swap_page for each, waited for
            self.vmstat.count(VmStat.PGMAJFAULT, len(swapped), owner)
            self.vmstat.count(VmStat.PGFAULT, len(swapped), owner)
            read = swapped
            if swap.zswap is not None:  # zswap_load: a page in the pool needs no read
                zswap = swap.zswap
                pooled = np.array([zswap.load(p, owner) for p in swapped.tolist()], dtype=bool)
                read = swapped[~pooled]
                busy_ns = int(np.count_nonzero(pooled)) * swap.decompress_ns
            if len(read):
                ends = swap.submit(now, write=False, n=len(read), per_mm=owner)
                busy_ns = max(busy_ns, max(ends) - now)
            mem.nr_swapped[owner] -= len(swapped)
        hva = mm.hva(np.array([head], dtype=np.int64))
        work = self.stats
        mm.notifiers.invalidate_range_start(hva, hva + PAGE_SIZE * HPAGE_PMD_NR, work)
        if self.ksm is not None:  # the copy replaces KSM's ptes: each leaves its KSM page
            for pid in pids[mem.ksm_node[pids] != -1].tolist():
                self.ksm.leave(pid)
        old = pids[(f & PG_RESIDENT) != 0]
        old_pfns = mem.pfn[old].astype(np.int64)
        self.policy.folio_remove(old_pfns)
        in_swap = pids[(f & PG_SWAP) != 0]
        if len(in_swap):
            swap.free_slots(len(in_swap), in_swap)
        mem.free_frames(old_pfns)
        mem.pfn[pids] = NO_PFN  # the shadows of swapped pages go with their entries
        if len(mem.readahead):
            mem.readahead[pids] = False
        mem.flags[pids] = 0
        pfns = mem.alloc_frames(pids)
        mem.flags[pids] = _U8(PTE_PRESENT | PG_DIRTY | PG_RESIDENT)
        mem.flags[head] = _U8(PTE_PRESENT | PTE_YOUNG | PG_DIRTY | PG_RESIDENT)  # a young PMD
        thp.block[b] = THP_LARGE | THP_PMD
        self.policy.folio_add_lru(int(pfns[0]), None)
        mm.notifiers.invalidate_range_end(hva, hva + PAGE_SIZE * HPAGE_PMD_NR, work)
        self.vmstat.count(THP_COLLAPSE_ALLOC, 1, owner)
        self.stats.pages_collapsed += 1
        return busy_ns + HPAGE_PMD_NR * self.clear_page_ns
