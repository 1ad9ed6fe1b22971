"""The host side of a guest page fault: ``handle_mm_fault`` reached through KVM's GUP.

Models
    When KVM needs the host page behind a gfn (``hva_to_pfn`` -> ``get_user_pages``), the host
    either finds QEMU's pte present (GUP fast path), or faults: ``do_anonymous_page`` for a page
    never touched (allocate and zero a frame), or ``do_swap_page`` for a page whose pte is a swap
    entry: a swap-cache hit if its folio is still in memory (unmapped by reclaim, its write-out
    in flight or done and not yet freed: a minor fault), otherwise a major fault that allocates
    a frame and reads the page from the swap device. The new or restored pte is young (GUP marks
    it accessed). A page faulted back in keeps its swap copy (clean) unless the fault is a write
    or swap is more than half full (``should_try_to_free_swap``), and never while its write-out
    is in flight (``folio_free_swap``).

Counting
    ``pgfault`` for every fault the host handles and ``pgmajfault`` for each that read from the
    device, with the mm they belong to (``count_memcg_event_mm``); the read itself counts
    ``pswpin`` in the swap device when it is submitted, for the faulting page and each page
    read ahead with it (``swap_ra``); a fault that finds a page read ahead counts
    ``swap_ra_hit`` (a minor fault).

Kernel reference
    mm/memory.c: ``handle_mm_fault``, ``do_anonymous_page``, ``do_swap_page``,
    ``should_try_to_free_swap``; mm/swap_state.c: ``swapin_readahead``,
    ``swap_vma_readahead``, ``swap_cluster_readahead`` (``swap.rotational``),
    ``swap_cache_get_folio`` (readahead with ``swap.page_cluster``: the window arithmetic is
    swap_state.py's);
    mm/swapfile.c: ``folio_free_swap``; mm/workingset.c: ``workingset_refault`` (through the
    policy).

Simplifications
    The host side is the same for an async page fault (guest/vcpu.py): KVM's worker then waits
    for the read instead of the vCPU thread. A second
    vCPU faulting on a page whose fault-in is in progress waits for it (the folio lock) and counts
    a minor fault. A guest read of a never-touched page allocates a frame (the kernel would map
    the shared zero page until the first write; guests write pages before reading them almost
    always, e.g. when they zero them on allocation). Cluster readahead (a rotational device)
    skips a KSM folio's slot: the kernel reads it into a folio of no sharer's, which the first
    sharer to fault maps as its own and the others copy; here that first sharer's fault reads
    it (host/ksm.py).

THP
    With ``host.thp`` a first touch of an empty 2 MiB block maps a THP (huge_memory.py
    ``huge_fault``); a swap-cache hit on a large folio maps all its ptes; a zram swap-in of a
    whole swapped block reads it as one large folio (``_swapin_large``). GUP's
    ``folio_mark_accessed`` goes to the folio's head frame (``folio_pfn``). A page a discard
    zapped from a THP that still holds its frame (deferred_split.py) counts as never touched;
    an access to it splits the folio first (after the folio's I/O, if any), then faults in a
    new page; a swap-cache hit or a large swap-in leaves such pages unmapped.

Invariants
    A page gets at most one frame; a page being read in is locked and on no LRU list; a folio
    found in the swap cache is on the LRU already and stays where it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from functools import partial
from typing import TYPE_CHECKING, Protocol

import numpy as np
import simpy
from numpy.typing import NDArray

from sim import fast
from sim.host.kswapd import ProcessGen
from sim.host.memory import (
    NO_PFN_INT,
    PAGE_SHIFT,
    PG_DIRTY,
    PG_LOCKED,
    PG_RESIDENT,
    PG_SWAP,
    PG_WRITEBACK,
    PTE_PRESENT,
    PTE_YOUNG,
    PTRS_PER_PMD,
    HostMemory,
)
from sim.host.mm import IoWaiter, Mm
from sim.host.page_alloc import PageAllocator
from sim.host.swap import SwapDevice
from sim.host.swap_state import SwapClusterRa, swap_cluster_ra_block, swap_vma_ra_win
from sim.host.vmstat import VmEvents, VmStat
from sim.reclaim.base import EvictionPolicy

if TYPE_CHECKING:
    from sim.host.deferred_split import DeferredSplit
    from sim.host.huge_memory import HugeMemory
    from sim.host.ksm import Ksm
    from sim.host.memcontrol import MemCgroups

_MAPPED_INT = PTE_PRESENT | PTE_YOUNG  # GUP maps the pte young
_BUSY = PG_LOCKED | PG_WRITEBACK  # I/O in flight: a discard leaves the folio until it ends
_NEW_ANON_INT = PTE_PRESENT | PTE_YOUNG | PG_DIRTY | PG_RESIDENT
_PGFAULT = VmStat.PGFAULT.value  # plain str keys: cheaper to hash than the enum member
_PGMAJFAULT = VmStat.PGMAJFAULT.value
_SWAP_RA = VmStat.SWAP_RA.value
_SWAP_RA_HIT = VmStat.SWAP_RA_HIT.value
PMD_ORDER = PTRS_PER_PMD.bit_length() - 1  # 9: 4 KiB pages per 2 MiB block, as a power of two


class HostFault(StrEnum):
    """What the host had to do for a GUP on a guest page."""

    MAPPED = "mapped"  # pte already present: GUP fast path
    FIRST_TOUCH = "first_touch"  # do_anonymous_page
    SWAPCACHE = "swapcache"  # do_swap_page, folio still in memory
    MAJOR = "major"  # do_swap_page with a read from the swap device
    WAITED = "waited"  # another task was faulting the page in; we waited for it
    COW = "cow"  # do_wp_page: a write to a KSM page (or the zero page) copied it (host/ksm.py)
    THP = "thp"  # do_huge_pmd_anonymous_page: a first touch that mapped a THP (huge_memory.py)


class FrameAllocator(Protocol):
    """What the no-wait paths need from an allocator (demand mode's has only this)."""

    def alloc_fast(self, pid: int) -> int:
        """A frame for ``pid`` without waiting, or -1."""
        ...


class HostFaultHandler:
    """``handle_mm_fault`` for guest RAM: a synchronous fast path and a waiting slow path."""

    def __init__(
        self,
        env: simpy.Environment | None,
        mem: HostMemory,
        swap: SwapDevice,
        alloc: PageAllocator | FrameAllocator,
        policy: EvictionPolicy,
        mms: Sequence[Mm],
        vmstat: VmEvents,
        *,
        page_cluster: int = 0,
        rotational: bool = False,
    ) -> None:
        self.env, self.mem, self.swap, self.alloc = env, mem, swap, alloc
        self.policy, self.mms, self.vmstat = policy, list(mms), vmstat
        # pid -> fault-in in progress (the folio lock), with the event its waiters wait on
        self._inflight: dict[int, simpy.Event | None] = {}
        self._ra_wait: dict[int, simpy.Event] = {}  # pid -> readahead read in flight
        self._ra_alloc: set[int] = set()  # readahead pages in flight for their frames
        self.page_cluster = page_cluster
        # swap_use_vma_readahead() is false: readahead by slot, with global state
        self.cluster_ra: SwapClusterRa | None = SwapClusterRa() if rotational else None
        assert not rotational or swap.tracks_slots, "cluster readahead needs slot identities"
        self.memcg: MemCgroups | None = None  # the VMs' memcgs (memory.high), if any
        self.ksm: Ksm | None = None  # KSM, when on: its sharers' write faults copy (COW)
        self.thp: HugeMemory | None = None  # THP-backed guest RAM (host.thp), when on
        # partial unmaps of THPs (host/deferred_split.py), with a balloon
        self.deferred: DeferredSplit | None = None
        self._plain = fast.enabled("plain_swapin")  # swapin_begin may take a fault whole
        # a guest kernel's handler: the I/O buffers of its disk reads are guest RAM that QEMU
        # pins on the host before the read (sim/guest/kernel.py); None on the host
        self.before_read: Callable[[list[int]], Iterator[simpy.Event]] | None = None
        # a guest kernel's handler whose disk is read through the host page cache: reads the
        # given pages (their swap-in and readahead, one request) and counts them (``pswpin``);
        # None: reads go to the swap device
        self.disk_read: Callable[[list[int]], Iterator[simpy.Event]] | None = None

    def is_refault(self, pid: int) -> bool:
        """The page was evicted since its last fault: touched (it has a frame or a swap copy)
        and not mapped, no fault-in of it is in progress (which counted it already), and not
        discarded (a zapped folio waiting for its I/O is no longer the page's)."""
        f = self.mem.flags.item(pid)
        if self.ksm is not None and self.mem.ksm_node.item(pid) >= 0:  # its KSM folio's
            return not f & PTE_PRESENT and pid not in self._inflight  # swap entry
        return (
            not f & PTE_PRESENT
            and bool(f & (PG_RESIDENT | PG_SWAP))
            and (pid not in self._inflight)
            and not (f & _BUSY and self._zapped(pid))
            and not (self.deferred is not None and self.deferred.is_zapped(pid))
        )

    def _zapped(self, pid: int) -> bool:
        """Page ``pid`` was discarded while its folio's I/O was in flight (madvise.py): the
        folio still holds the frame, but the page is as if never touched."""
        zapped = self.mms[self.mem.page_owner(pid)].zapped
        return bool(zapped) and pid in zapped

    def fault_in_progress(self, pid: int) -> bool:
        """Whether a guest fault on ``pid`` has begun and not ended: its fault-in holds the
        folio lock (or waits for a frame), or faults wait for its readahead read. Such a fault
        is the page's next access whatever happens to the page meanwhile (a readahead taking
        a frame for the page is no fault of it)."""
        if pid in self._inflight:
            return pid not in self._ra_alloc
        ev = self._ra_wait.get(pid)
        return ev is not None and bool(ev.callbacks)

    def _block_busy(self, pid: int) -> bool:
        """A fault-in or readahead of some page of ``pid``'s 2 MiB block is in flight: the
        block's PMD is being filled by ptes (a THP must not take that page's place)."""
        b = pid >> PMD_ORDER
        return any(p >> PMD_ORDER == b for p in self._inflight) or any(
            p >> PMD_ORDER == b for p in self._ra_wait
        )

    def _other_busy(self, pid: int) -> bool:
        """:meth:`_block_busy` for pages of the block other than ``pid`` (whose own fault is
        the caller)."""
        b = pid >> PMD_ORDER
        return any(p >> PMD_ORDER == b and p != pid for p in self._inflight) or any(
            p >> PMD_ORDER == b for p in self._ra_wait
        )

    def page_busy(self, pid: int) -> bool:
        """A fault-in or a readahead read of ``pid`` is in flight (its folio is locked)."""
        return pid in self._inflight or pid in self._ra_wait

    def fault_nowait(self, pid: int, write: bool = False) -> HostFault | None:
        """Resolve the fault if that needs no waiting (no I/O, no reclaim); else None.

        Covers a present pte, a swap-cache hit, and a first touch while free memory is above
        the min watermark; the caller pays the CPU cost. Nothing here advances time. A host
        without a clock (``env`` None: demand mode, where the allocator evicts at once and a
        read takes no time) resolves every fault here, a swap-in too.
        """
        mem = self.mem
        flags = mem.flags
        f = flags.item(pid)
        if f & PTE_PRESENT:
            if write and self.ksm is not None and mem.ksm_node.item(pid) != -1:
                return self._wp_page_fast(pid)
            return HostFault.MAPPED
        if pid in self._inflight:
            return None
        deferred = self.deferred
        if deferred is not None and deferred.is_zapped(pid):  # its THP still holds the frame
            if deferred.folio_busy(pid):
                return None  # its I/O ends first
            deferred.fault_on_zapped(pid)
            f = flags.item(pid)
        if self.ksm is not None and mem.ksm_node.item(pid) >= 0:  # a swap entry to a KSM folio
            return self._ksm_swap_cache_hit(pid, write)
        if pid in self._ra_wait:  # read ahead, its read in flight: found locked in the cache
            if not self._zapped(pid):  # (discarded: no swap entry to look up any more)
                self._swap_cache_hit(pid)
            return None
        if f & PG_RESIDENT:  # swap-cache hit: the folio is still in memory, on the LRU
            if f & _BUSY and self._zapped(pid):  # discarded: a fresh page once its I/O ends
                return None
            if self.thp is not None and self.thp.is_large(pid):
                return self._large_swapcache_hit(pid, write)
            if self.page_cluster:
                self._swap_cache_hit(pid)
            self.vmstat.count(_PGFAULT, 1, mem.page_owner(pid))
            f |= _MAPPED_INT
            if not f & PG_WRITEBACK and (write or self._swap_full(pid)):
                f = (f & ~PG_SWAP) | PG_DIRTY  # should_try_to_free_swap -> folio_free_swap
                self.swap.free_slots(1, (pid,))
            flags[pid] = f
            self.policy.folio_mark_accessed(mem.pfn.item(pid))  # GUP's FOLL_TOUCH
            return HostFault.SWAPCACHE
        if f & PG_SWAP:
            return None if self.env is not None else self._swapin_now(pid, write)
        if self.thp is not None and not self._block_busy(pid):
            memcg = self.memcg
            if (
                memcg is not None
                and self.thp.huge_candidate(pid)
                and not memcg.charge_fast(pid, PTRS_PER_PMD)
            ):
                return None  # the THP's charge reclaims, or fails: the slow path
            hpfn = self.thp.huge_fault(pid)
            if hpfn >= 0:
                self.vmstat.count(_PGFAULT, 1, mem.page_owner(pid))
                self.policy.folio_add_lru(hpfn, None)
                self.policy.folio_mark_accessed(hpfn)  # GUP's FOLL_TOUCH
                return HostFault.THP
        pfn = self.alloc.alloc_fast(pid)
        if pfn < 0:
            return None  # needs reclaim
        self.vmstat.count(_PGFAULT, 1, mem.page_owner(pid))
        flags[pid] = _NEW_ANON_INT
        self.policy.folio_add_lru(pfn, None)
        self.policy.folio_mark_accessed(pfn)  # GUP's FOLL_TOUCH
        return HostFault.FIRST_TOUCH

    def _large_swapcache_hit(self, pid: int, write: bool) -> HostFault:
        """``do_swap_page`` finding a large folio in the swap cache (unmapped by reclaim, its
        write in flight or done): every pte of the block is one of its swap entries, so the
        whole folio is mapped, by ptes (young where the fault was); its swap copy is freed
        as for a small folio (``should_try_to_free_swap``, not under write-out)."""
        mem = self.mem
        head = pid & ~(PTRS_PER_PMD - 1)
        sl = slice(head, head + PTRS_PER_PMD)
        self.vmstat.count(_PGFAULT, 1, mem.page_owner(pid))
        f = mem.flags[sl]
        if self.deferred is None:
            f = f | np.uint8(PTE_PRESENT)
        else:  # the ptes a discard zapped stay none
            assert self.thp is not None
            f = np.where(self.thp.zapped[sl], f, f | np.uint8(PTE_PRESENT))
        f[pid - head] |= np.uint8(PTE_YOUNG)
        if not mem.flags.item(head) & PG_WRITEBACK and (write or self._swap_full(pid)):
            f = (f & np.uint8(~PG_SWAP & 0xFF)) | np.uint8(PG_DIRTY)
            self.swap.free_slots(PTRS_PER_PMD, np.arange(head, head + PTRS_PER_PMD))
        mem.flags[sl] = f
        self.policy.folio_mark_accessed(mem.pfn.item(head))  # GUP's FOLL_TOUCH
        return HostFault.SWAPCACHE

    def folio_pfn(self, pid: int) -> int:
        """The frame of ``pid``'s folio's LRU entry (a THP's head frame for its subpages)."""
        if self.thp is not None:
            return self.thp.folio_pfn(pid)
        return self.mem.pfn.item(pid)

    def _ksm_swap_cache_hit(self, pid: int, write: bool) -> HostFault | None:
        """``do_swap_page`` on a swap entry to a KSM folio still in memory (the swap cache):
        ``ksm_might_need_to_copy`` returns it, so the pte maps it again, read-only (a write
        goes on to :meth:`_wp_page_fast`). Once the folio has left memory, None: the slow
        path reads it (:meth:`_ksm_swapin`)."""
        assert self.ksm is not None
        mem = self.mem
        npid = self.ksm.node_of(pid)
        if not mem.flags.item(npid) & PG_RESIDENT:
            return None
        self.vmstat.count(_PGFAULT, 1, mem.page_owner(pid))
        self.ksm.map_swapcache(pid)
        self.policy.folio_mark_accessed(mem.pfn.item(npid))  # GUP's FOLL_TOUCH
        if write:
            self._wp_page_fast(pid)  # else a retry finds it mapped, and copies then
        return HostFault.SWAPCACHE

    def _ksm_swapin(self, pid: int, write: bool) -> ProcessGen:
        """``do_swap_page`` on a swap entry to a KSM folio that left memory: its slot is read
        into a new frame that is this page's own (the read-in folio is not KSM). While the
        first sharer's copy is still in memory, a later sharer copies it instead of reading
        (``ksm_might_need_to_copy`` on a folio of another anon_vma: ``ksm_swpin_copy``). The
        page leaves the node; the node's slot goes with its last sharer."""
        assert self.ksm is not None
        assert isinstance(self.alloc, PageAllocator), "waiting faults need the page allocator"
        mem, ksm = self.mem, self.ksm
        mm = self.mms[mem.page_owner(pid)]
        npid = ksm.node_of(pid)
        shadow = mem.pfn.item(npid)
        pfn = self.alloc.alloc_fast(pid)
        if pfn < 0:
            pfn = yield from self.alloc.alloc(pid)
        if mm.dead:  # OOM-killed while we waited for memory (its exit left the node)
            if pfn >= 0:
                mem.free_frame(pfn)
                mem.flags[pid] = 0
            return HostFault.MAJOR
        node = npid - ksm.node_base
        src = ksm.swapin_src.item(node)
        zpool = self.swap.zpool
        zswapped = self.swap.zswap is not None and zpool is not None and zpool.stored.item(npid)
        ksm.leave(pid)
        if src >= 0 and mem.flags.item(src) & PTE_PRESENT and mem.ksm_node.item(src) == -1:
            ksm.stats.ksm_swpin_copy += 1  # copied from the first sharer's swap-cache folio
            hf = HostFault.SWAPCACHE
            shadow = -1
        else:
            if ksm.sharers[node]:  # later sharers copy this read while it stays in memory
                ksm.swapin_src[node] = pid
            mem.flags[pid] = mem.flags.item(pid) | PG_LOCKED
            now = self.env.now
            if zswapped:  # zswap_load: decompressed, no I/O (the entry stays the node's)
                self.vmstat.count(VmStat.ZSWPIN, 1, mm.index)
                t_done = now + self.swap.decompress_ns
            elif self.swap.zram:  # decompressed by the faulting task
                self.swap.submit(now, write=False, per_mm=mm.index)
                t_done = now + self.swap.decompress_ns
            else:
                t_done = self.swap.submit(now, write=False, per_mm=mm.index)[0]
            yield self.env.timeout(t_done - now)
            mem.flags[pid] = mem.flags.item(pid) & ~PG_LOCKED
            if mm.dead:
                self._drop(pid, pfn)
                return HostFault.MAJOR
            self.vmstat.count(_PGMAJFAULT, 1, mm.index)
            hf = HostFault.MAJOR
        mem.flags[pid] = _NEW_ANON_INT
        self.policy.folio_add_lru(pfn, None if shadow < 0 else shadow)
        self.policy.folio_mark_accessed(pfn)  # GUP's FOLL_TOUCH
        return hf  # same content as before: ksmd may merge it again

    def _wp_page_fast(self, pid: int) -> HostFault | None:
        """A write to a KSM sharer, if a frame is free without waiting (and no fault of the
        page holds its lock): ``do_wp_page`` copies it (:meth:`_wp_page_copy`)."""
        if pid in self._inflight:
            return None
        pfn = self.alloc.alloc_fast(pid)
        if pfn < 0:
            return None
        self.vmstat.count(_PGFAULT, 1, self.mem.page_owner(pid))
        self._wp_page_copy(pid, pfn)
        return HostFault.COW

    def _wp_page_copy(self, pid: int, pfn: int) -> None:
        """``wp_page_copy``: the sharer's new frame ``pfn`` (just allocated) gets the copy;
        the page leaves its KSM page (host/ksm.py ``break_cow``) and maps its own, dirty and
        young, on the LRU."""
        assert self.ksm is not None
        self.ksm.break_cow(pid)
        self.mem.flags[pid] = _NEW_ANON_INT
        self.policy.folio_add_lru(pfn, None)
        self.policy.folio_mark_accessed(pfn)

    def write_protected(self, pid: int) -> bool:
        """QEMU's pte maps the page read-only (a KSM page or the zero page): KVM maps its spte
        read-only too (``hva_to_pfn`` without ``writable``)."""
        return self.ksm is not None and self.mem.ksm_node.item(pid) != -1

    def page_written(self, pid: int) -> None:
        """KVM mapped the page after a write fault (or restored it for one): with KSM on, its
        content is now its own (``HostMemory.written``)."""
        if self.ksm is not None:
            self.mem.written[pid] = 1

    def kvm_release_page(self, pid: int, dirty: bool) -> None:
        """``kvm_release_faultin_page``: KVM is done with the page it faulted in: the folio is
        marked accessed, and dirty if KVM could map it writable (a KSM page never is)."""
        mem = self.mem
        if self.ksm is not None and mem.ksm_node.item(pid) != -1:
            if mem.pfn.item(pid) != NO_PFN_INT:  # the zero page is on no LRU
                self.policy.folio_mark_accessed(mem.pfn.item(pid))
            return
        if dirty:
            mem.flags[pid] = mem.flags.item(pid) | PG_DIRTY
        self.policy.folio_mark_accessed(self.folio_pfn(pid))

    def retry_is_idle(self, pid: int) -> bool:
        """Whether :meth:`fault_nowait` on ``pid`` just returned None, with no time passed,
        would return None again with no effect at all (so a caller may skip the repeat): true
        unless the page is read ahead (its swap-cache lookup counts) or memcgs charge (a
        failed charge may count)."""
        return self.memcg is None and pid not in self._ra_wait

    def handle_mm_fault(self, pid: int, write: bool, tried: bool = False) -> ProcessGen:
        """Make page ``pid`` present in its mm, waiting as needed; returns a :class:`HostFault`.
        ``tried``: the caller's :meth:`fault_nowait` just returned None and
        :meth:`retry_is_idle` holds."""
        hf = None if tried else self.fault_nowait(pid, write)
        while hf is None and pid in self._ra_wait:  # folio locked for its readahead read
            yield self._ra_wait[pid]
            if self.mms[self.mem.page_owner(pid)].dead:
                return HostFault.WAITED
            hf = self.fault_nowait(pid, write)
        while hf is None and self.mem.flags.item(pid) & _BUSY and self._zapped(pid):
            yield self._zap_waiter(pid)  # the discarded folio goes when its I/O ends
            if self.mms[self.mem.page_owner(pid)].dead:
                return HostFault.WAITED
            hf = self.fault_nowait(pid, write)
        deferred = self.deferred
        while (
            hf is None
            and deferred is not None
            and pid not in self._inflight
            and deferred.is_zapped(pid)
            and deferred.folio_busy(pid)
        ):
            yield deferred.io_wait(pid)  # a page zapped from a THP under I/O: its end first
            if self.mms[self.mem.page_owner(pid)].dead:
                return HostFault.WAITED
            hf = self.fault_nowait(pid, write)
        if hf is not None:
            return hf
        if pid in self._inflight:  # folio locked by another faulting task
            yield self._lock_waiter(pid)
            if self.mem.flags.item(pid) & PTE_PRESENT:
                self.policy.folio_mark_accessed(self.folio_pfn(pid))  # our GUP's FOLL_TOUCH
            return HostFault.WAITED
        self.vmstat.count(_PGFAULT, 1, self.mem.page_owner(pid))
        self._inflight[pid] = None
        try:
            if self.ksm is not None and self.mem.ksm_node.item(pid) >= 0:
                result = yield from self._ksm_swapin(pid, write)
            else:
                swapped = bool(self.mem.flags.item(pid) & PG_SWAP)
                result = yield from self._fault_in(pid, write, swapped)
        finally:
            self._unlock(pid)
        if self.memcg is not None:  # on the way back to the guest (resume_user_mode_work)
            yield from self.memcg.handle_over_high(self.mem.page_owner(pid))
        return result

    def swapin_begin(self, pid: int) -> tuple[simpy.Timeout, int, int] | None:
        """:meth:`handle_mm_fault` of a plain major fault up to its read's wait, in one call
        rather than through the generators: the page is only in swap, no fault-in of it is in
        progress, its mm lives, there is no memcg to charge, no readahead, zswap or zram, and
        a frame is free above the min watermark. Then it does what that path does, in its
        order (``pgfault``, the folio lock, the frame, ``pswpin``), and returns the read's
        timeout with the frame and the shadow for :meth:`swapin_end`; otherwise None, having
        done nothing. The fast path ``plain_swapin`` (sim/fast.py)."""
        mem = self.mem
        f = mem.flags.item(pid)
        if (
            not self._plain
            or f & (PTE_PRESENT | PG_RESIDENT)
            or not f & PG_SWAP
            or mem.nr_free <= mem.wmark.min
            or self.memcg is not None
            or self.page_cluster
            or self.swap.zram
            or self.swap.zswap is not None
            or self.env is None
            or pid in self._inflight
            or pid in self._ra_wait
        ):
            return None
        owner = mem.page_owner(pid)
        if self.mms[owner].dead:
            return None
        self.vmstat.count(_PGFAULT, 1, owner)
        self._inflight[pid] = None
        shadow = mem.pfn.item(pid)
        pfn = self.alloc.alloc_fast(pid)
        mem.nr_swapped[owner] -= 1
        mem.flags[pid] = mem.flags.item(pid) | PG_LOCKED
        now = self.env.now
        t_done = self.swap.submit(now, write=False, per_mm=owner)[0]
        fast.took("plain_swapin")
        return self.env.timeout(t_done - now), pfn, shadow

    def swapin_end(self, pid: int, write: bool, pfn: int, shadow: int) -> None:
        """The read :meth:`swapin_begin` started is done: what :meth:`_fault_in` and
        :meth:`handle_mm_fault` do after it (unlock, map or drop, wake the lock's waiters);
        the fault was ``HostFault.MAJOR``."""
        flags = self.mem.flags
        flags[pid] = flags.item(pid) & ~PG_LOCKED
        mm = self.mms[self.mem.page_owner(pid)]
        if mm.dead:
            self._drop(pid, pfn)
        elif mm.zapped and pid in mm.zapped:
            self._discarded_read(pid, pfn, mm)
        else:
            self._swapin_done(pid, pfn, write, shadow)
        self._unlock(pid)

    def _fault_in(self, pid: int, write: bool, swapped: bool) -> ProcessGen:
        mem = self.mem
        mm = self.mms[mem.page_owner(pid)]
        assert isinstance(self.alloc, PageAllocator), "waiting faults need the page allocator"
        if swapped and self.thp is not None and self.swap.zram and not self._other_busy(pid):
            pfns = None
            if self.memcg is None:
                pfns = self.thp.swapin_large(pid, self.swap.page_slot)
            elif self.thp.can_swapin_large(pid, self.swap.page_slot):
                # mem_cgroup_swapin_charge_folio of the large folio, which may reclaim
                charged = yield from self.memcg.try_charge(pid, PTRS_PER_PMD)
                if charged and not self._other_busy(pid):
                    pfns = self.thp.swapin_large(pid, self.swap.page_slot)
            if pfns is not None:
                return (yield from self._swapin_large(pid, mm, pfns))
        if not swapped and self.memcg is not None and self._huge_candidate(pid):
            hf = yield from self._huge_fault_charged(pid, mm)
            if hf is not None:
                return hf
        shadow = mem.pfn.item(pid)  # a swapped page's shadow, before its frame takes the place
        # the allocator's fast path first, as alloc() would (it repeats it with no effect when
        # it failed, there being no memcg to charge)
        pfn = self.alloc.alloc_fast(pid) if self.memcg is None else -1
        if pfn < 0:
            pfn = yield from self.alloc.alloc(pid)
        if pfn < 0:  # killed by its memcg's OOM while charging: nothing was taken
            return HostFault.MAJOR if swapped else HostFault.FIRST_TOUCH
        if mm.dead:  # OOM-killed while we waited for memory
            self._drop(pid, pfn)
            return HostFault.MAJOR if swapped else HostFault.FIRST_TOUCH
        if swapped and not mem.flags.item(pid) & PG_SWAP:  # discarded while we waited:
            swapped = False  # no swap entry to read any more; the page is new (the retry)
        if self.ksm is not None and mem.ksm_node.item(pid) != -1:  # do_wp_page
            self._wp_page_copy(pid, pfn)
            return HostFault.COW
        if not swapped:  # do_anonymous_page: zeroed frame, dirty (no copy anywhere)
            mem.flags[pid] = _NEW_ANON_INT
            self.policy.folio_add_lru(pfn, None)
            self.policy.folio_mark_accessed(pfn)  # GUP's FOLL_TOUCH
            return HostFault.FIRST_TOUCH
        # do_swap_page: read from the device with the folio locked.
        mem.nr_swapped[mm.index] -= 1
        flags = mem.flags
        flags[pid] = flags.item(pid) | PG_LOCKED
        ahead: list[tuple[int, int, int]] = []
        if self.page_cluster and not self.swap.zram:
            ahead = yield from self._swapin_readahead(pid, mm)
        if self.before_read is not None:
            yield from self.before_read([pfn] + [a[1] for a in ahead])
        if self.disk_read is not None:
            yield from self._read_disk(pid, ahead)
        else:
            now = self.env.now
            swap = self.swap
            if ahead or swap.zram or swap.zswap is not None:
                t_done = self._swap_read_folio(pid, mm, now, ahead)
            else:  # a plain read from the device
                t_done = swap.submit(now, write=False, per_mm=mm.index)[0]
            yield self.env.timeout(t_done - now)
        flags[pid] = flags.item(pid) & ~PG_LOCKED
        if mm.dead:
            self._drop(pid, pfn)
            return HostFault.MAJOR
        if mm.zapped and pid in mm.zapped:
            self._discarded_read(pid, pfn, mm)
            return HostFault.MAJOR
        self._swapin_done(pid, pfn, write, shadow)
        return HostFault.MAJOR

    def _huge_candidate(self, pid: int) -> bool:
        """A first touch of ``pid`` (whose fault is the caller) may map a THP: no other page
        of its block is being faulted in or read, its PMD is empty and the zone has room."""
        return self.thp is not None and not self._other_busy(pid) and self.thp.huge_candidate(pid)

    def _huge_fault_charged(self, pid: int, mm: Mm) -> ProcessGen:
        """``do_huge_pmd_anonymous_page`` when the THP's charge of 512 pages does not fit at
        once (``mem_cgroup_charge`` of the large folio: ``try_charge_memcg`` reclaims the
        memcg, and for a charge this large neither retries on progress nor OOM-kills).
        Charged: the THP is mapped (:attr:`HostFault.THP`) unless the block or the zone changed
        while reclaim ran; not charged: ``thp_fault_fallback_charge``. None: the fault goes on
        with a 4 KiB page (as it does when the VM was killed meanwhile, which it then sees)."""
        assert self.memcg is not None
        assert self.thp is not None
        charged = yield from self.memcg.try_charge(pid, PTRS_PER_PMD)
        if mm.dead:
            return None
        if not charged:
            self.thp.charge_fallback(pid)
            return None
        if self._other_busy(pid):
            return None
        hpfn = self.thp.huge_fault(pid)
        if hpfn < 0:
            return None
        self.policy.folio_add_lru(hpfn, None)
        self.policy.folio_mark_accessed(hpfn)  # GUP's FOLL_TOUCH
        return HostFault.THP

    def _swapin_large(self, pid: int, mm: Mm, pfns: NDArray[np.int64]) -> ProcessGen:
        """``do_swap_page`` with the PMD-sized folio ``alloc_swap_folio`` took on zram
        (SWP_SYNCHRONOUS_IO, no zswap; every pte of the block a swap entry of one aligned
        cluster): one read of 512 pages (``pswpin`` += 512, one ``pgmajfault``), the faulting
        task decompressing each; the folio skips the swap cache, its slots are freed
        (``swap_free_nr``) and it is mapped by 512 ptes (a large folio, not PMD-mapped: KVM
        maps 4 KiB sptes over it). The block's other pages are locked for the read."""
        assert self.env is not None
        assert self.thp is not None
        mem = self.mem
        head = pid & ~(PTRS_PER_PMD - 1)
        pids = np.arange(head, head + PTRS_PER_PMD, dtype=np.int64)
        shadow = self.thp.shadow  # before the frames took the pfn entries
        for p in pids.tolist():
            if p != pid:
                self._inflight[p] = None
        try:
            now = self.env.now
            self.swap.submit_folio(now, False, PTRS_PER_PMD, mm.index)
            yield self.env.timeout(self.swap.decompress_ns * PTRS_PER_PMD)
            mem.flags[pids] &= np.uint8(~PG_LOCKED & 0xFF)
            if mm.dead:
                self.swap.free_slots(PTRS_PER_PMD, pids)
                mem.free_frames(pfns)
                mem.flags[pids] = 0
                self.thp.folio_gone(head)
                return HostFault.MAJOR
            self.vmstat.count(_PGMAJFAULT, 1, mm.index)
            self.swap.free_slots(PTRS_PER_PMD, pids)
            zapped = self.thp.zapped[head : head + PTRS_PER_PMD]  # discarded during the read
            mapped = np.uint8(PTE_PRESENT | PG_DIRTY | PG_RESIDENT)
            mem.flags[pids] = np.where(zapped, mapped & ~np.uint8(PTE_PRESENT), mapped)
            if not zapped.item(pid - head):
                mem.flags[pid] = mem.flags.item(pid) | PTE_YOUNG
            self.policy.folio_add_lru(int(pfns[0]), shadow)
            self.policy.folio_mark_accessed(int(pfns[0]))  # GUP's FOLL_TOUCH
            if self.deferred is not None:  # the folio now partially mapped, or all discarded
                self.deferred.io_done(head)
        finally:
            for p in pids.tolist():
                if p != pid:
                    self._unlock(p)
        return HostFault.MAJOR

    def _swapin_readahead(self, pid: int, mm: Mm) -> ProcessGen:
        """``swapin_readahead``'s choice of pages to read with ``pid``: ``swap_vma_readahead``,
        or on a rotational device ``swap_cluster_readahead``; each gets its frame (see
        :meth:`_read_swap_cache_async`). Returns their ``(pid, pfn, shadow)``."""
        if self.cluster_ra is not None:
            return (yield from self._swap_cluster_readahead(pid))
        return (yield from self._swap_vma_readahead(pid, mm))

    def _read_disk(self, pid: int, ahead: list[tuple[int, int, int]]) -> ProcessGen:
        """The faulting page's read with its readahead through :attr:`disk_read` (one
        request, in address order, ``swap_ra`` counted): the pages read ahead are locked
        until it ends, then each completes as :meth:`_readahead_done`."""
        assert self.env is not None
        assert self.disk_read is not None
        for p, _, _ in ahead:
            self._ra_wait[p] = self.env.event()
        self.vmstat[_SWAP_RA] += len(ahead)
        yield from self.disk_read(sorted([pid, *(p for p, _, _ in ahead)]))
        for p, pfn, shadow in ahead:
            self._readahead_done(p, pfn, shadow, None)

    def _swap_read_folio(
        self, pid: int, mm: Mm, now: int, ahead: list[tuple[int, int, int]]
    ) -> int:
        """Submit the read of page ``pid`` (``pswpin``) with the pages read ahead; returns
        when the data is in its frame.

        zram (``SWP_SYNCHRONOUS_IO``): ``do_swap_page`` skips the swap cache and readahead and
        the faulting task decompresses the page itself. Otherwise the read goes to the device.
        """
        if self.swap.zram:
            self.swap.submit(now, write=False, per_mm=mm.index)
            return now + self.swap.decompress_ns
        if ahead:
            return self._submit_readahead(pid, mm, ahead, now)
        if self._zswap_load(pid, mm):
            return now + self.swap.decompress_ns
        return self.swap.submit(now, write=False, per_mm=mm.index)[0]

    def _zswap_load(self, pid: int, mm: Mm) -> bool:
        """``zswap_load`` in ``swap_read_folio``: a page in the pool is decompressed with no
        I/O and leaves it; the swap cache owns the only copy, so the folio is dirty."""
        zswap = self.swap.zswap
        if zswap is None or not zswap.load(pid, mm.index):
            return False
        self.mem.flags[pid] = self.mem.flags.item(pid) | PG_DIRTY
        return True

    def _swap_cache_hit(self, pid: int) -> None:
        """``swap_cache_get_folio``: a fault found the folio in the swap cache; if it was read
        ahead (PG_readahead, cleared now) count ``swap_ra_hit`` and a hit of its VMA's
        readahead; either way the VMA remembers this fault's address. With cluster readahead
        (``swap_update_readahead`` without ``vma_ra``) the hit goes to the global count and the
        VMA's state is untouched."""
        mem = self.mem
        mm = self.mms[mem.page_owner(pid)]
        readahead = bool(mem.readahead.item(pid))
        if readahead:
            mem.readahead[pid] = False
            self.vmstat[_SWAP_RA_HIT] += 1
        if self.cluster_ra is not None:
            self.cluster_ra.hits += readahead
            return
        mm.swap_ra.cache_hit((mm.hva_base >> PAGE_SHIFT) + pid - mm.pid_base, readahead)

    def _swap_vma_readahead(self, pid: int, mm: Mm) -> ProcessGen:
        """``swap_vma_readahead`` around the faulting page ``pid``: every page of the window
        whose pte is a swap entry gets a frame (``__read_swap_cache_async``, charged as
        :meth:`_read_swap_cache_async` says), is locked and marked
        PG_readahead. Returns ``(pid, pfn, shadow)`` of each, in address order."""
        base = mm.hva_base >> PAGE_SHIFT
        faddr = base + pid - mm.pid_base
        win, start, end = swap_vma_ra_win(
            mm.swap_ra, faddr, base, base + mm.nr_pages, self.page_cluster, PTRS_PER_PMD
        )
        if win == 1:
            return []
        lo = mm.pid_base + start - base
        cand = np.arange(lo, lo + end - start, dtype=np.int64)
        return (yield from self._read_swap_cache_async(pid, cand))

    def _swap_cluster_readahead(self, pid: int) -> ProcessGen:
        """``swap_cluster_readahead`` around the faulting page ``pid``'s slot: the pages owning
        the slots of the aligned block (any mm's: slots are shared), as
        :meth:`_swap_vma_readahead`'s, in slot order; free slots are skipped."""
        assert self.cluster_ra is not None
        swap = self.swap
        offset = swap.page_slot.item(pid)
        pages = self.cluster_ra.nr_pages(offset, self.page_cluster)
        if pages == 1:
            return []
        start, end = swap_cluster_ra_block(offset, pages, swap.nr_slots)
        owners = swap.slot_owner[start : end + 1].astype(np.int64)
        owners = owners[owners >= 0]
        if self.ksm is not None:  # a KSM folio's slot: not read ahead (module docstring)
            owners = owners[~self.ksm.is_node(owners)]
        return (yield from self._read_swap_cache_async(pid, owners))

    def _read_swap_cache_async(self, pid: int, cand: NDArray[np.int64]) -> ProcessGen:
        """``__read_swap_cache_async`` for the pages ``cand`` other than the faulting ``pid``:
        each only in swap (no folio yet, none being faulted in) gets a frame charged to its own
        memcg, is locked and marked PG_readahead. Returns ``(pid, pfn, shadow)`` of each.

        The charge is ``mem_cgroup_swapin_charge_folio`` with the fault's gfp: a page of the
        faulting VM's memcg that does not fit under its memory.max is charged with limit
        reclaim first, the faulting task waiting (no other fault can take the page meanwhile:
        it is in flight). A page of another memcg that does not fit, or a zone short of free
        pages, ends the readahead there (simplified: the kernel would reclaim for those too).
        """
        mem = self.mem
        flags = mem.flags
        cand = cand[(flags[cand] == PG_SWAP) & (cand != pid)]  # only in swap: no folio yet
        own = mem.page_owner(pid)
        out = []
        for p in cand.tolist():
            if p in self._inflight or flags.item(p) != PG_SWAP:  # its own fault reads it
                continue
            shadow = mem.pfn.item(p)
            pfn = self.alloc.alloc_fast(p)
            if pfn < 0:
                memcg = self.memcg
                if memcg is None or memcg.charge_fast(p) or mem.page_owner(p) != own:
                    break
                pfn = yield from self._alloc_in_flight(p)
                if pfn < 0:
                    break
                if self.mms[own].dead:
                    self._drop(p, pfn)
                    break
                if not flags.item(p) & PG_SWAP:  # discarded meanwhile: nothing to read
                    self._drop(p, pfn)
                    continue
            flags[p] = flags.item(p) | PG_LOCKED
            mem.readahead[p] = True
            out.append((p, pfn, shadow))
            mem.nr_swapped[mem.page_owner(p)] -= 1
        return out

    def _alloc_in_flight(self, p: int) -> ProcessGen:
        """Allocate page ``p``'s frame, reclaiming as its charge needs, with ``p`` marked in
        flight so that no fault takes it meanwhile. Returns the pfn, or -1 when the VM was
        killed while charging."""
        assert isinstance(self.alloc, PageAllocator)
        self._inflight[p] = None
        self._ra_alloc.add(p)
        try:
            return (yield from self.alloc.alloc(p))
        finally:
            self._ra_alloc.discard(p)
            self._unlock(p)

    def _lock_waiter(self, pid: int) -> simpy.Event:
        """The event a fault waits on while page ``pid``'s folio is locked by another task's
        fault-in (made when the first waiter comes: most locks have none)."""
        ev = self._inflight[pid]
        if ev is None:
            assert self.env is not None
            ev = self._inflight[pid] = self.env.event()
        return ev

    def _unlock(self, pid: int) -> None:
        """The fault-in of ``pid`` is over (``folio_unlock``): its waiters go on."""
        ev = self._inflight.pop(pid)
        if ev is not None and ev.callbacks:
            ev.succeed()

    def _submit_readahead(
        self, pid: int, mm: Mm, ahead: list[tuple[int, int, int]], now: int
    ) -> int:
        """Submit the faulting page's read with its readahead (one plug, in address order, or
        slot order by cluster); count ``swap_ra``, and ``pswpin`` for each page's own mm;
        schedule each readahead completion. Returns the fault's read end."""
        order = sorted([pid, *(p for p, _, _ in ahead)])
        mem, mms = self.mem, self.mms
        if self.cluster_ra is not None:
            order.sort(key=self.swap.page_slot.item)
        done = {
            p: now + self.swap.decompress_ns
            for p in order
            if self._zswap_load(p, mms[mem.page_owner(p)])
        }
        disk = [p for p in order if p not in done]
        per_mm: int | list[int] = mm.index
        if self.cluster_ra is not None and disk:  # other mms' pages count for their own
            owners = mem.page_owners(np.array(disk, dtype=np.int64))
            per_mm = np.bincount(owners, minlength=len(mms)).tolist()
        done.update(zip(disk, self.swap.submit(now, False, len(disk), per_mm), strict=True))
        self.vmstat[_SWAP_RA] += len(ahead)
        assert self.env is not None
        for p, pfn, shadow in ahead:
            self._ra_wait[p] = self.env.event()
            ev = self.env.timeout(done[p] - now)
            ev.callbacks.append(partial(self._readahead_done, p, pfn, shadow))
        return done[pid]

    def _readahead_done(self, pid: int, pfn: int, shadow: int, _event: simpy.Event | None) -> None:
        """A readahead read ended (``swap_read_folio`` completion): unlock the folio and put it
        on the LRU, unmapped, in the swap cache (``shadow`` is its workingset refault
        information); a folio of an mm that exited meanwhile is freed with its slot."""
        mem = self.mem
        ev = self._ra_wait.pop(pid)
        mm = self.mms[mem.page_owner(pid)]
        if mm.dead or (mm.zapped and pid in mm.zapped):
            mem.readahead[pid] = False
            self._drop(pid, pfn)
        else:
            mem.flags[pid] = mem.flags.item(pid) & ~PG_LOCKED
            self.policy.folio_add_lru(pfn, shadow)
        if ev.callbacks:  # a fault waits on the folio lock (else no event to process)
            ev.succeed()

    def _swap_full(self, pid: int) -> bool:
        """``should_try_to_free_swap``'s ``mem_cgroup_swap_full``: swap over half full, node-wide
        or in the page's memcg (memory.swap.max)."""
        if self.swap.vm_swap_full():
            return True
        return self.memcg is not None and bool(
            self.memcg.swap_full(np.array([self.mem.page_owner(pid)]))[0]
        )

    def _swapin_done(self, pid: int, pfn: int, write: bool, shadow: int) -> None:
        """The read finished: map the page, keep or free its swap copy, put it on the LRU
        (``shadow``, the one its eviction left, tells the policy whether this is a refault of
        the workingset)."""
        flags = self.mem.flags
        self.vmstat.count(_PGMAJFAULT, 1, self.mem.page_owner(pid))
        f = flags.item(pid) | _MAPPED_INT
        # zram's path skipped the swap cache and frees the entry (swap_free_nr); otherwise
        # should_try_to_free_swap
        if write or self.swap.zram or self._swap_full(pid):
            f = (f & ~PG_SWAP) | PG_DIRTY
            self.swap.free_slots(1, (pid,))
        flags[pid] = f
        self.policy.folio_add_lru(pfn, shadow)
        self.policy.folio_mark_accessed(pfn)  # GUP's FOLL_TOUCH

    def _swapin_now(self, pid: int, write: bool) -> HostFault:
        """``do_swap_page`` in a host without a clock (demand mode): the read takes no time."""
        mem = self.mem
        mm = mem.page_owner(pid)
        self.vmstat.count(_PGFAULT, 1, mm)
        shadow = mem.pfn.item(pid)  # before the frame takes its place
        pfn = self.alloc.alloc_fast(pid)
        assert pfn >= 0, "demand allocation always succeeds"
        mem.nr_swapped[mm] -= 1
        self.swap.submit(0, write=False, per_mm=mm)  # a synchronous device: no time
        self._swapin_done(pid, pfn, write, shadow)
        return HostFault.MAJOR

    def _zap_waiter(self, pid: int) -> IoWaiter:
        """The event a fault waits on while discarded page ``pid``'s folio waits for its I/O
        (made when the first waiter comes)."""
        zapped = self.mms[self.mem.page_owner(pid)].zapped
        ev = zapped[pid]
        if ev is None:
            assert self.env is not None
            ev = zapped[pid] = self.env.event()
        return ev

    def _discarded_read(self, pid: int, pfn: int, mm: Mm) -> None:
        """The read of page ``pid`` ended after the page was discarded (``do_swap_page`` finds
        the pte changed: ``out_nomap``): the fault counts its major fault as the kernel does,
        the folio is freed with its slot, and the fault is retried on a page never touched."""
        self.vmstat.count(_PGMAJFAULT, 1, mm.index)
        self._drop(pid, pfn)

    def _drop(self, pid: int, pfn: int) -> None:
        """Release what a fault took for a page of a dead mm, or of a page discarded
        meanwhile (whose waiting faults then go on)."""
        mem = self.mem
        if mem.flags[pid] & PG_SWAP:
            self.swap.free_slots(1, (pid,))
        mem.free_frame(pfn)
        mem.flags[pid] = 0
        mm = self.mms[mem.page_owner(pid)]
        if mm.zapped:
            mm.zap_done(pid)
