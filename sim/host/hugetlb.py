"""Guest RAM backed by hugetlbfs (``vms[].memory_backing: hugetlbfs``): the hugetlb pool.

Models
    QEMU started with ``-mem-path /dev/hugepages -mem-prealloc`` (libvirt
    ``<memoryBacking><hugepages/>``) maps guest RAM from a hugetlbfs file and touches every
    huge page before the guest runs. Each touch is ``hugetlb_fault`` -> ``hugetlb_no_page``,
    which takes a folio from the pool the administrator reserved at boot
    (``hugetlb_hstate_alloc_pages``, or ``nr_hugepages``: ``set_max_huge_pages``) through
    ``alloc_hugetlb_folio`` (the reservation made at ``mmap`` by ``hugetlb_reserve_pages``),
    zeroes it and maps it with one huge pte (``make_huge_pte``: present, young). KVM then maps
    the range with 2 MiB (or 1 GiB) sptes: ``host_pfn_mapping_level`` finds the host's huge
    mapping and the memslot is aligned. The pool's pages are taken out of the buddy allocator
    for good, so here the VM's frames are taken at build (:func:`prealloc`), before anything
    runs, and never freed: every page resident, its host pte present and young, its spte
    present, owning a frame in the frame table (``frame_pid``) as any resident page does.

    A hugetlb folio is on no LRU list (``alloc_hugetlb_folio`` never calls ``folio_add_lru``;
    its pages are not counted in ``NR_LRU_BASE`` or ``zone_reclaimable_pages``), so reclaim
    never isolates, ages, unmaps or swaps one; KVM's aging and invalidation notifiers are
    reached only from reclaim of LRU folios, so no notifier call or spte zap ever reaches
    these pages, and their vCPUs only ever take the hit path. MGLRU's page-table walk skips
    the mapping (``should_skip_vma``: ``is_vm_hugetlb_page``). ``oom_badness`` counts
    ``get_mm_rss``, which hugetlb pages are not part of (they are counted in
    ``hugetlb_usage``), and killing the VM would give them back to the pool, not to free
    memory: the OOM killer here never chooses a hugetlbfs VM.

Free memory and watermarks
    The pool's pages are allocated from the buddy allocator, so they stay in the zone's
    ``managed_pages``: ``__setup_per_zone_wmarks`` (and ``calculate_min_free_kbytes``) derive
    the watermarks from the whole of host memory as before, while free memory is lower by the
    pool. kswapd and the allocator therefore reclaim the anonymous guests as they would on a
    host whose memory were that much smaller but whose watermarks were not. (1 GiB pages
    reserved on the kernel command line come from memblock and join ``managed_pages`` only
    in ``gather_bootmem_prealloc``, after ``init_per_zone_wmark_min`` ran: until anything
    recomputes the watermarks they are a little lower there; not modelled.)

memcg
    hugetlb pages are charged to the hugetlb cgroup controller (``hugetlb_cgroup``), not to
    ``memory.current`` (unless the ``memory_hugetlb_accounting`` mount option asks, which
    libvirt does not set): a hugetlbfs VM's memcg holds only its ``vmm_overhead_kib``, so its
    ``memory.max`` and ``memory.high`` never reclaim guest RAM (sim/host/memcontrol.py
    ``MemcgLimits.hugetlb``).

Counting
    Nothing of the preallocation is counted: no ``pgfault``, no KVM ``pf_fixed`` (it happened
    before the measured run, as ``vms[].prefault`` fills are not counted). The summary says
    per VM ``memory_backing`` and ``hugepage_size_kib``, and for the host the pool per huge
    page size as ``/proc/meminfo`` does (``HugePages_Total``; ``HugePages_Free`` is 0: every
    page was touched by the prealloc); runs without a hugetlbfs VM have none of these fields.

Kernel reference
    mm/hugetlb.c: ``hugetlb_fault``, ``hugetlb_no_page``, ``alloc_hugetlb_folio``,
    ``hugetlb_reserve_pages``, ``hugetlb_hstate_alloc_pages``, ``gather_bootmem_prealloc``,
    ``set_max_huge_pages``; mm/vmscan.c: ``should_skip_vma``; mm/oom_kill.c: ``oom_badness``;
    mm/page_alloc.c: ``__setup_per_zone_wmarks``; arch/x86/kvm/mmu/mmu.c:
    ``host_pfn_mapping_level``, ``kvm_mmu_max_mapping_level``.

Simplifications
    Page state stays per 4 KiB page (the huge pte and the huge sptes are 512 or 262144 entries
    of the arrays): nothing ever splits, ages or zaps them, so no path can tell. The sptes
    are present from time 0: on a real host the first guest access of each huge page is a
    minor EPT violation mapping it (``kvm_tdp_mmu_map`` at the huge level), cheap and once
    per 2 MiB, which is left out. The pool holds exactly the hugetlbfs VMs' pages (no
    surplus or spare huge pages: ``HugePages_Free`` 0); a huge page that could not be
    allocated would fail QEMU's start, which the config refuses instead (the pool must leave
    room above the high watermark).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from sim.host.memory import PAGE_SIZE, PG_RESIDENT, PTE_PRESENT, PTE_YOUNG

if TYPE_CHECKING:
    from sim.config import VmConfig
    from sim.host.memory import HostMemory
    from sim.host.mm import Mm

# what hugetlb_no_page leaves: a present, young huge pte over the pool folio's frames
_HUGETLB_PAGE = np.uint8(PTE_PRESENT | PTE_YOUNG | PG_RESIDENT)


@dataclass(slots=True)
class HugetlbPool:
    """The host's hugetlb pool as the hugetlbfs VMs hold it.

    Attributes:
        vms: the hugetlbfs VMs (indices).
        hpage_kib: each one's huge page size (KiB), in ``vms`` order.
        ranges: each one's pids, in ``vms`` order.
        mask: per guest pid, whether the page is hugetlb memory.
    """

    vms: list[int]
    hpage_kib: list[int]
    ranges: list[slice]
    mask: NDArray[np.bool_]

    @property
    def nr_pages(self) -> int:
        """The pool's 4 KiB pages (all in use)."""
        return sum(r.stop - r.start for r in self.ranges)

    def per_vm(self, nr_vms: int) -> list[int]:
        """The hugetlb pages of each VM (0 for an anonymous one): what its memcg does not
        charge to ``memory.current``."""
        out = [0] * nr_vms
        for i, r in zip(self.vms, self.ranges, strict=True):
            out[i] = r.stop - r.start
        return out

    def check(self, mem: HostMemory, spte_present: NDArray[np.bool_]) -> None:
        """Assert: every pool page still owns its frame, mapped by a present, young host pte
        and a present spte, with no swap slot and no I/O (that it is on no LRU list is the
        policy's check, given the resident folios without these)."""
        m = self.mask
        flags = mem.flags[: len(m)][m]
        assert (flags == _HUGETLB_PAGE).all(), "a hugetlb page left its preallocated state"
        assert spte_present[m].all(), "a hugetlb page lost its spte"
        for r in self.ranges:
            assert (mem.frame_pid[mem.pfn[r]] == np.arange(r.start, r.stop)).all(), "pool frame"

    def summary(self) -> dict[str, Any]:
        """``/proc/meminfo``'s hugetlb lines per huge page size (every page in use)."""
        sizes: dict[int, int] = {}
        for kib, r in zip(self.hpage_kib, self.ranges, strict=True):
            sizes[kib] = sizes.get(kib, 0) + (r.stop - r.start) * PAGE_SIZE // (kib << 10)
        return {
            "pool_pages": self.nr_pages,
            "hstates": [
                {"hugepage_size_kib": kib, "HugePages_Total": n, "HugePages_Free": 0}
                for kib, n in sorted(sizes.items())
            ],
        }


def prealloc(mem: HostMemory, mms: list[Mm], cfgs: list[VmConfig]) -> HugetlbPool | None:
    """QEMU's ``-mem-prealloc`` over each hugetlbfs VM's RAM, before anything runs: every
    page takes its frame (``alloc_hugetlb_folio`` from the pool) and the state
    ``hugetlb_no_page`` leaves; no LRU, no counter (KVM's mapping of the range is the
    caller's: the host does not reach into KVM). None if no VM is hugetlbfs-backed."""
    hug = [i for i, cfg in enumerate(cfgs) if cfg.memory_backing == "hugetlbfs"]
    if not hug:
        return None
    mask = np.zeros(sum(mm.nr_pages for mm in mms), dtype=np.bool_)
    ranges = []
    for i in hug:
        r = slice(mms[i].pid_base, mms[i].pid_base + mms[i].nr_pages)
        pids = np.arange(r.start, r.stop, dtype=np.int64)
        mem.alloc_frames(pids)
        mem.flags[pids] = _HUGETLB_PAGE
        mask[r] = True
        ranges.append(r)
    return HugetlbPool(hug, [cfgs[i].hugepage_size_kib for i in hug], ranges, mask)
