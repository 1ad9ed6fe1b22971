"""The guest kernel's memory management: guest RAM, the guest's own LRU, kswapd and swap.

Models
    A guest is a Linux kernel too, so it is built from the same parts as the host
    (sim/host/, sim/reclaim/): its frames are the VM's gfns, its pages are the virtual pages
    of the guest process the workload runs in (one anonymous mm of ``footprint_mib``, which
    may exceed guest RAM), its swap device is the VM's virtual disk, and its LRU is the same
    policy code (two_list or mglru) with its own vmstat. Guest accesses set the *guest* pte's
    accessed and dirty bits, which the guest's reclaim tests and clears through its own rmap
    (no notifiers: nothing sits below a guest pte but the hardware); the EPT accessed bits
    the host ages are separate and set by the same accesses (sim/guest/vcpu.py), both only
    by the walks of TLB misses when the vCPUs' TLBs are modelled (sim/guest/tlb.py).

    Differences from the host, each from the guest kernel's point of view:

    * A guest page fault is the guest's own (``do_anonymous_page``, ``do_swap_page``): no GUP,
      so nothing calls ``folio_mark_accessed``; a new anon folio goes to the inactive list
      (since 5.9) with a young pte, and the retried access references it.
    * The guest swap device is a virtio-blk disk: QEMU services each request by reading or
      writing guest RAM through its own mapping, so every guest I/O touches host pages
      (sim/guest/vcpu.py and below). A guest swap-in or read into a gfn the host has swapped
      out first makes the host read that gfn back (QEMU pins the buffer before the device
      reads into it): a *stale swap read*. A guest swap-out of a gfn the host has swapped out
      makes the host read it back so QEMU can write it to the virtual disk: *double paging*
      (Goldberg and Hassinger, 1974). The guest zeroing a newly allocated gfn the host has
      swapped out (``clear_page``) makes the host read back contents about to be overwritten:
      a *false swap read*. The names follow VSwapper (Amit, Tsafrir and Schuster, ASPLOS
      2014), which measured them.
    * The guest's OOM killer kills the guest process: the VM's vCPUs stop. Before it, the OOM
      notifiers run (the balloon's deflate-on-OOM), and if they freed pages nobody is killed.
    * The process may also read a file (``file_mib``) through the guest page cache with
      ``read()``: page-cache pages have no pte, a hit is ``folio_mark_accessed``, a miss reads
      (with the pages mm/readahead.c reads ahead of it: ``read_ahead_kb``) the virtual disk
      into a new folio (QEMU pins the gfn first: a stale swap read if the
      host had it only in swap). When the host writes a gfn holding a clean guest
      page-cache page to its swap, that is a *silent swap write* (VSwapper): the data is on
      the guest's disk already, but the host sees only anonymous memory.
    * The process may be a batch job (``job``): it exits every ``run_s`` (its memory freed in
      the guest through the same ``MADV_DONTNEED`` path as the host's discard, but still
      backed on the host), and the next starts after ``idle_s``.
    * The balloon driver (sim/guest/balloon.py) allocates from this kernel
      (``balloon_alloc``: ``__GFP_NORETRY``) and gives pages back (``balloon_free``); its
      pages are kernel allocations with no pte and no LRU.

Kernel reference
    The host modules it reuses (page allocator, kswapd, vmscan, rmap, swap, fault); QEMU
    hw/block/virtio-blk.c and ``dma_blk_io`` (guest RAM read and written through QEMU's
    mapping); with ``disk_cache``, QEMU block/file-posix.c and the host page cache
    (sim/guest/vdisk.py); mm/readahead.c (``page_cache_sync_ra``, ``page_cache_async_ra``,
    ``get_init_ra_size``, ``get_next_ra_size``, ``readahead_gfp_mask``) for the file's reads.

Counting
    Guest events are counted in the guest's own vmstat (``pgfault``, ``pswpin``, ``pgscan_*``:
    what the guest's /proc/vmstat shows), host events in the host's (with ``disk_cache``, the
    image's ``pgpgin``, ``pgpgout``, ``nr_dirtied``, ``nr_written`` and file workingset
    events). The VSwapper events and ``disk_cache_hits`` (guest disk pages read from the host
    page cache) are memsim's counters, counted once here, per VM.

Simplifications
    One guest process; its file is read-only (no dirty page cache, no flushers) and read with
    ``read()`` (no mmap); no guest memcg, no zram or zswap in the guest. Guest kswapd's CPU
    is not taken from the workload's vCPUs (a guest with a spare vCPU); guest direct reclaim
    stalls the faulting vCPU. The virtual disk's queue is its own or, with ``disk:
    host_swap``, the host swap device's. Its image bypasses the host page cache (QEMU's
    ``cache=none``: ``BDRV_O_NOCACHE``, O_DIRECT) unless ``disk_cache`` is writeback or
    writethrough: then every guest read and write is QEMU's ``preadv``/``pwritev`` on a host
    file (sim/guest/vdisk.py), a swapped page's place in it being its slot (so the guest's
    swap slots get identities), and a guest swap write completes when QEMU's write does, not
    at the device's latency. With ``vms[].guest_tlb`` the vCPUs' TLBs cache the process's
    translations (sim/guest/tlb.py): the guest's aging clears pte accessed bits without a
    flush, as x86 does, so TLB hits hide accesses from this LRU; its unmaps flush (reclaim
    batches: one full flush each in a guest of several vCPUs, one page at a time in a 1-vCPU
    guest, whose kswapd shares the process's CPU for this though not for its time), a
    page-cache drop only drops the file page's entry.

Invariants
    Every guest page is in exactly one guest state (never touched, mapped to a gfn, in the
    guest swap cache, only in guest swap; a file page: in the page cache, being read, or not);
    every gfn is free, owned by one guest page, or held by the balloon (HostMemory's
    invariants, checked by :meth:`GuestKernel.check`, with the policy's lists holding exactly
    the resident process and page-cache pages not being read in).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import simpy
from numpy.typing import NDArray
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from sim.costs import CostModel, CostsConfig
from sim.host.fault import HostFault, HostFaultHandler
from sim.host.kswapd import DirectReclaim, Kswapd, ProcessGen, ReclaimThrottle
from sim.host.madvise import madvise_dontneed
from sim.host.memory import (
    NO_PFN_INT,
    PAGE_SHIFT,
    PAGE_SIZE,
    PG_DIRTY,
    PG_LOCKED,
    PG_RECLAIM,
    PG_RESIDENT,
    PG_SWAP,
    PG_WRITEBACK,
    PTE_PRESENT,
    PTE_YOUNG,
    HostMemory,
    setup_per_zone_wmarks,
)
from sim.host.mm import Mm
from sim.host.oom import OomKiller
from sim.host.page_alloc import PageAllocator
from sim.host.rmap import Rmap
from sim.host.swap import SwapConfig, SwapDevice
from sim.host.vmscan import ScanControl, Schedule, Vmscan
from sim.host.vmstat import VmEvents, VmStat, new_vmstat
from sim.reclaim import ReclaimConfig, make_policy
from sim.reclaim.base import EvictionPolicy
from sim.reclaim.two_list import FILE_EVENTS, PGPGIN, TwoListConfig
from sim.schema import Strict

if TYPE_CHECKING:
    from sim.guest.tlb import GuestShootdown
    from sim.guest.vdisk import DiskImage
    from sim.host.vmscan import Pfns

_U8 = np.uint8

# memsim's VSwapper counters (per VM): what each costs the host is a host swap-in
FALSE_SWAP_READS = "false_swap_reads"  # guest zeroes a gfn the host had swapped out
STALE_SWAP_READS = "stale_swap_reads"  # guest reads from its disk into such a gfn
DOUBLE_PAGING = "double_paging"  # guest swaps out such a gfn: the host reads it for QEMU
VSWAPPER = (FALSE_SWAP_READS, STALE_SWAP_READS, DOUBLE_PAGING)
JOBS_EXITED = "jobs_exited"  # memsim's: guest processes that exited (vms[].guest.job)
# the host swaps out a gfn holding a clean guest page-cache page: data already on the guest's
# disk written to host swap (VSwapper's silent swap write)
SILENT_SWAP_WRITES = "silent_swap_writes"
# guest.disk_cache: pages of guest disk reads found in the host page cache (no device read)
DISK_CACHE_HITS = "disk_cache_hits"


def _guest_swap() -> SwapConfig:
    """A virtio-blk disk on the host's NVMe: the device's latencies plus QEMU's (``[EST]``)."""
    return SwapConfig(size_mib=1024, read_latency_us=100.0, write_latency_us=45.0)


class GuestJobConfig(Strict):
    """The guest process as a batch job: it runs, exits (its memory is freed), the guest
    idles, and the next one starts from nothing."""

    run_s: float = Field(
        gt=0.0, le=1e6, description="How long each job runs before its process exits."
    )
    idle_s: float = Field(
        0.0,
        ge=0.0,
        le=1e6,
        description="How long the guest idles between jobs (its vCPUs halted, its freed "
        "memory free in the guest and still backed on the host unless given back).",
    )


class GuestConfig(Strict):
    """The guest kernel's memory: its process's footprint, its LRU and its swap disk."""

    footprint_mib: int | None = Field(
        None,
        gt=0,
        le=1 << 24,
        description="Anonymous memory of the guest process the workload runs in (the pages "
        "its accesses name); may exceed memory_mib, and the guest then reclaims and swaps "
        "(default: memory_mib).",
    )
    min_free_kbytes: int | None = Field(
        None,
        ge=0,
        le=1 << 26,
        description="The guest's vm.min_free_kbytes (default: as the guest kernel derives "
        "it from its RAM).",
    )
    watermark_scale_factor: int = Field(
        10, ge=1, le=3000, description="The guest's vm.watermark_scale_factor."
    )
    reclaim: ReclaimConfig = Field(
        default_factory=TwoListConfig,
        description="The guest kernel's LRU: two_list or mglru, with their knobs (trigger "
        "must stay watermark).",
    )
    swap: SwapConfig = Field(
        default_factory=_guest_swap,
        description="The guest's swap: a virtio-blk virtual disk (its size, latencies as "
        "the guest sees them, queue); device disk only.",
    )
    file_mib: int = Field(
        0,
        ge=0,
        le=1 << 24,
        description="A file on the guest's disk that the process reads through the guest page "
        "cache (read(): no pte; clean pages dropped by reclaim and read again): the "
        "workload's pages are footprint_mib of anonymous memory, then this file.",
    )
    shuffle: bool = Field(
        False,
        description="Start the guest's free memory in random order (page_alloc.shuffle=1; or "
        "a guest that has run long enough for its free lists to be in no useful order): its "
        "process's neighbouring pages then sit on scattered gfns (off: a fresh boot, whose "
        "first allocations take frames in order).",
    )
    disk: Literal["own", "host_swap"] = Field(
        "own",
        description="Where the virtual disk's I/O is served: own (its own queue, as if on a "
        "device of its own) or host_swap (its image on the host's swap device: one queue and "
        "one set of request tags, so guest and host I/O wait for each other; guest.swap's "
        "latencies still apply, its queue_depth and nr_requests become the host's).",
    )
    job: GuestJobConfig | None = Field(
        None,
        description="Run the workload as batch jobs: every run_s its process exits (the "
        "guest frees its memory) and, after idle_s, the next starts (absent: one process "
        "for the whole run).",
    )
    read_ahead_kb: int = Field(
        128,
        ge=0,
        le=1 << 16,
        description="The virtual disk's read_ahead_kb (the guest's bdi ra_pages; 128 is the "
        "kernel's default): page-cache misses of a sequential reader read a window ahead in "
        "one request and a marked page starts the next window asynchronously; 0: every miss "
        "reads one page.",
    )
    disk_cache: Literal["none", "writeback", "writethrough"] = Field(
        "none",
        description="How QEMU opens the virtual disk's image, a file on the host: none "
        "(O_DIRECT: guest I/O goes straight to the device), writeback (QEMU's default: every "
        "guest read and write goes through the host page cache, charged to the VM's memcg; a "
        "read may hit it, a write completes once copied and the host's flusher writes it "
        "later) or writethrough (as writeback, but QEMU flushes after each write: it completes "
        "when it is on the device). The image's device is the virtual disk's (with disk: "
        "host_swap, the host swap device's queue). Needs host reclaim.policy two_list or mglru.",
    )

    @model_serializer(mode="wrap")
    def _without_unset_disk_cache(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave ``disk_cache`` and ``read_ahead_kb`` out of dumps at their defaults, so
        configs written before they existed dump (and hash) as they did."""
        out: dict[str, Any] = handler(self)
        if out.get("disk_cache") == "none":
            del out["disk_cache"]
        if out.get("read_ahead_kb") == 128:
            del out["read_ahead_kb"]
        return out

    @model_validator(mode="after")
    def _kernel_policies(self) -> GuestConfig:
        if self.reclaim.policy not in ("two_list", "mglru"):
            raise ValueError(
                f"guest.reclaim.policy {self.reclaim.policy} is not a kernel LRU: "
                "use two_list or mglru"
            )
        if self.reclaim.trigger != "watermark":
            raise ValueError("guest.reclaim.trigger must be watermark (the guest's kswapd)")
        if self.swap.device != "disk" or self.swap.zswap.enabled:
            raise ValueError("guest.swap: only device disk without zswap is modelled")
        if self.swap.rotational:
            raise ValueError("guest.swap.rotational is not modelled: set it false")
        return self


class _NoGup:
    """The guest's policy as its own page-fault handler sees it: a guest fault maps the page
    with the guest's MMU, not through GUP, so there is no ``folio_mark_accessed`` (the host's
    handler calls it for GUP's FOLL_TOUCH)."""

    def __init__(self, policy: EvictionPolicy) -> None:
        self._policy = policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def folio_mark_accessed(self, pfn: int) -> None:
        """No GUP, no reference."""


class GuestRmap(Rmap):
    """The guest's rmap: its ptes are unmapped with a TLB shootdown to the VM's vCPUs, which
    cuts any step in flight that would use them (``on_unmap``) and, when the vCPUs' TLBs are
    modelled (``tlb``), drops their cached translations."""

    on_unmap: Callable[[NDArray[np.int32]], None] | None = None
    tlb: GuestShootdown | None = None
    nr_cpus = 1  # the VM's vCPUs, all of which run the process

    def try_to_unmap(self, pfns: NDArray[np.integer], work: Any) -> None:
        """Unmap as the host does, then shoot down the vCPUs' translations. Reclaim unmaps
        with ``TTU_BATCH_FLUSH``: the flush is deferred to one ``arch_tlbbatch_flush`` of
        the batch (a full flush on x86) whenever the process may run on a CPU other than the
        reclaimer's (``should_defer_flush``), which in a guest of several vCPUs, all running
        it, is always; a 1-vCPU guest has no other CPU (its kswapd and direct reclaim run
        where the process ran), so each pte is cleared with ``ptep_clear_flush``
        (``flush_tlb_page``: one page)."""
        pids = self.mem.frame_pid[pfns]
        super().try_to_unmap(pfns, work)
        if self.tlb is not None and len(pids):
            if self.nr_cpus == 1:
                for p in pids.tolist():
                    self.tlb.flush_range(np.array([p], dtype=np.int64))
            else:
                self.tlb.flush_all()
        if self.on_unmap is not None and len(pids):
            self.on_unmap(pids)


GuestLog = Callable[[int, int, "Pfns", "Pfns", bool, NDArray[np.bool_]], None]


class _GuestEvictionLog:
    """The guest's reclaim as an eviction sink: the anon pages it unmaps for swap-out are
    logged at the guest's level (``guest_evictions``), not in the host's eviction log."""

    def __init__(self, log: GuestLog, vm: int) -> None:
        self.log, self.vm = log, vm

    def evicted(
        self,
        t_ns: int,
        pids: NDArray[np.int32],
        pfns: Pfns,
        dirty: NDArray[np.bool_],
        scans: NDArray[np.uint8],
    ) -> None:
        """Anon pages ``pids`` left gfns ``pfns``."""
        self.log(t_ns, self.vm, pfns, pids.astype(np.int64), False, dirty)


class GuestVmscan(Vmscan):
    """The guest's side of reclaim: as the host's, but a swap write of a gfn the host has
    swapped out must first bring it back on the host (double paging)."""

    guest: GuestKernel

    def _submit_writeback(
        self, wpfn: Pfns, wpid: NDArray[np.int32], f: NDArray[np.uint8], sc: ScanControl
    ) -> None:
        """``swap_writepage`` to the virtual disk: QEMU reads each gfn through its mapping;
        the ones the host has only in swap are read back first (a host fault in QEMU), and
        their writes are submitted when that is done."""
        g = self.guest
        gone = g.host_swapped(wpfn)
        g.touch_host(wpfn[~gone], write=False)
        if g.image is not None:  # through the host page cache: QEMU's write, in its time
            self.mem.flags[wpid] = (f & ~_U8(PG_DIRTY)) | _U8(PG_WRITEBACK | PG_RECLAIM)
            self.mem.nr_writeback += len(wpid)
            g.vmstat.count(VmStat.PSWPOUT, len(wpid), 0)  # the guest's bios, submitted now
            g.stats[DOUBLE_PAGING] += int(np.count_nonzero(gone))
            now = ~gone
            if now.any():
                g.env.process(self._image_written(wpid[now].tolist(), wpfn[now].tolist()))
            for pid, pfn in zip(wpid[gone].tolist(), wpfn[gone].tolist(), strict=True):
                g.env.process(self._double_paged(pid, pfn))
            return
        if not gone.any():
            super()._submit_writeback(wpfn, wpid, f, sc)
            return
        now = ~gone
        if now.any():
            super()._submit_writeback(wpfn[now], wpid[now], f[now], sc)
        late_pfn, late_pid = wpfn[gone], wpid[gone]
        self.mem.flags[late_pid] = (f[gone] & ~_U8(PG_DIRTY)) | _U8(PG_WRITEBACK | PG_RECLAIM)
        self.mem.nr_writeback += len(late_pid)
        g.vmstat.count(VmStat.PSWPOUT, len(late_pid), 0)  # submitted by the guest now
        g.stats[DOUBLE_PAGING] += len(late_pid)
        for pid, pfn in zip(late_pid.tolist(), late_pfn.tolist(), strict=True):
            g.env.process(self._double_paged(pid, pfn))

    def remove_file_folios(self, pfns: Pfns, sc: ScanControl) -> None:
        """Clean page-cache folios are dropped as on the host; a vCPU step in flight that goes
        on to read one of them is cut there (it must read it again)."""
        pids = self.mem.frame_pid[pfns]
        super().remove_file_folios(pfns, sc)
        g = self.guest
        g.ra_mark_dropped(pids)
        if g.tlb is not None and len(pids):
            g.tlb.forget(pids)
        if g.rmap.on_unmap is not None and len(pids):
            g.rmap.on_unmap(pids)
        if isinstance(self.sink, _GuestEvictionLog) and len(pids):
            clean = np.zeros(len(pids), dtype=np.bool_)
            self.sink.log(self.now(), self.sink.vm, pfns, pids - g.nr_anon, True, clean)

    def _double_paged(self, pid: int, pfn: int) -> ProcessGen:
        """One swap write whose gfn the host must read back first."""
        g = self.guest
        yield from g.host_fault_in(pfn, write=False)
        if g.image is not None:
            yield from self._image_written([pid], [pfn])
            return
        # counted (pswpout) when the guest submitted it; QEMU writes it once it has the page
        end = self.swap.submit(int(g.env.now), write=True, swap_io=False)[0]
        yield g.env.timeout(max(0, end - int(g.env.now)))
        self.folio_end_writeback(pid, pfn)

    def _image_written(self, pids: list[int], pfns: list[int]) -> ProcessGen:
        """One swap write through the host page cache: QEMU writes the pages to the image,
        then each folio's write-back ends."""
        yield from self.guest.image_write(pids)
        for pid, pfn in zip(pids, pfns, strict=True):
            self.folio_end_writeback(pid, pfn)


def _init_ra_size(size: int, max_pages: int) -> int:
    """``get_init_ra_size``: the first window for a read of ``size`` pages."""
    new = 1 << (size - 1).bit_length()  # roundup_pow_of_two
    if new <= max_pages // 32:
        new *= 4
    elif new <= max_pages // 4:
        new *= 2
    else:
        new = max_pages
    return min(new, max_pages)


def _next_ra_size(cur: int, max_pages: int) -> int:
    """``get_next_ra_size``: the window after one of ``cur`` pages."""
    if cur < max_pages // 16:
        return 4 * cur
    if cur <= max_pages // 2:
        return 2 * cur
    return max_pages


class _RaState:
    """``struct file_ra_state`` of the one file the guest process reads, in file pages, and
    the decisions of mm/readahead.c that use it (reads of one page at a time)."""

    def __init__(self) -> None:
        self.start = self.size = self.async_size = 0
        self.prev = -1  # prev_pos's page (-1: no read yet)

    def mark(self) -> int:
        """The page that gets PG_readahead when the window is read."""
        return self.start + self.size - self.async_size

    def sync_window(self, index: int, max_pages: int, cached: Callable[[int], bool]) -> list[int]:
        """``page_cache_sync_ra`` for a miss on page ``index``: the pages to read with it."""
        if max_pages == 0:
            return [index]
        if index == 0 or 0 <= index - self.prev <= 1:  # the file's start, or sequential
            self.start, self.size = index, _init_ra_size(1, max_pages)
            self.async_size = self.size - 1 if self.size > 1 else self.size >> 1
            return list(range(self.start, self.start + self.size))
        # context readahead: the pages cached just before it betray a sequential stream
        miss = index - 1
        while miss >= 0 and index - miss <= max_pages and cached(miss):
            miss -= 1
        contig = index - miss - 1
        if contig <= 1:  # a standalone small random read: read as is, state untouched
            return [index]
        if miss < 0:  # cached from the file's start: a long-running stream
            contig *= 2
        self.start, self.size, self.async_size = index, min(contig + 1, max_pages), 1
        return list(range(self.start, self.start + self.size))

    def async_window(self, index: int, max_pages: int, cached: Callable[[int], bool]) -> list[int]:
        """``page_cache_async_ra`` on reading the marked page ``index``: the next window."""
        if max_pages == 0:
            return []
        if index == self.mark():  # the expected mark: ramp up, push the window forward
            self.start += self.size
            self.size = _next_ra_size(self.size, max_pages)
            self.async_size = self.size
            return list(range(self.start, self.start + self.size))
        start = index + 1  # a mark without valid state: the cached run after it sizes it
        while start - index <= max_pages and cached(start):
            start += 1
        if start - index > max_pages:
            return []
        self.start, self.size = start, _next_ra_size(start - index + 1, max_pages)
        self.async_size = self.size
        return list(range(self.start, self.start + self.size))


class GuestKernel:
    """One VM's guest kernel memory management.

    Args:
        env: the simulation environment.
        cfg: the guest's config.
        name: the VM's name (for the generators' scopes).
        nr_gfns: guest RAM in pages (the guest's frames).
        costs: CPU costs (the guest's reclaim is priced as the host's).
        rng: the guest's generator (its swap device, its policy).
        schedule: ``schedule(t_ns, fn)`` of the world.
        host_pid_base: the VM's first host page id (gfn ``g`` is host page base + g).
        host_mem: host memory (to see which gfns the host has swapped out).
        host_fault: the host's fault handler (QEMU's faults on guest RAM).
        host_swap: the host's swap device (whose queue the virtual disk may share).
    """

    def __init__(
        self,
        env: simpy.Environment,
        cfg: GuestConfig,
        *,
        name: str,
        nr_gfns: int,
        costs: CostsConfig,
        rng: np.random.Generator,
        schedule: Schedule,
        host_pid_base: int,
        host_mem: HostMemory,
        host_fault: HostFaultHandler,
        host_swap: SwapDevice,
    ) -> None:
        self.env, self.cfg, self.name = env, cfg, name
        self.nr_gfns = nr_gfns
        mib = 1 << (20 - PAGE_SHIFT)  # pages per MiB
        self.nr_anon = (cfg.footprint_mib * mib) if cfg.footprint_mib else nr_gfns
        self.nr_file = cfg.file_mib * mib
        self.nr_vpages = self.nr_anon + self.nr_file  # the pages the workload names
        self.host_base, self.host_mem, self.host = host_pid_base, host_mem, host_fault
        wmark = setup_per_zone_wmarks(nr_gfns, cfg.min_free_kbytes, cfg.watermark_scale_factor)
        # pages: the process's anon memory, its file's page cache, then one per gfn the
        # balloon may hold (kernel allocations with no pte and no LRU: in HostMemory's
        # unmapped "file" range too, an owner of their own)
        owners = [0, self.nr_anon] + ([self.nr_vpages] if self.nr_file else [])
        self.mem = mem = HostMemory(
            nr_gfns,
            self.nr_vpages + nr_gfns,
            wmark,
            owners,
            readahead=cfg.swap.page_cluster > 0,
            file_base=self.nr_anon,
        )
        self._file_reads: dict[int, simpy.Event] = {}  # page-cache reads in flight
        # the file's readahead (struct file_ra_state, in file pages): the window's start, size
        # and async_size, the last page read (prev_pos; -1: none yet), and PG_readahead
        self.ra_pages = (cfg.read_ahead_kb << 10) >> PAGE_SHIFT
        self.ra = _RaState()
        self._ra_mark = np.zeros(self.nr_file, dtype=np.bool_)
        if cfg.shuffle:
            mem.shuffle_free(np.random.default_rng(rng.integers(2**63)))
        self._balloon_slots = list(range(nr_gfns - 1, -1, -1))  # free balloon page ids
        # gfns lent to a migration by free page hinting (sim/guest/free_page_hint.py): kernel
        # pages like the balloon's, held by the same pseudo-pages, but still backed on the host
        self.hinted = np.zeros(nr_gfns, dtype=np.bool_)
        self.idle_until = 0  # between jobs: the vCPUs halt until then (ns)
        self.on_exit: Callable[[], None] | None = None  # the process's pages were freed
        self.tlb: GuestShootdown | None = None  # the vCPUs' TLBs, when modelled
        self._oom_notifiers: list[Callable[[], int]] = []
        self.vmstat: VmEvents = new_vmstat(1, FILE_EVENTS if self.nr_file else ())
        self.stats: Counter[str] = Counter({k: 0 for k in VSWAPPER})
        if self.nr_file:
            self.stats[SILENT_SWAP_WRITES] = 0
        if cfg.job is not None:
            self.stats[JOBS_EXITED] = 0
        disk = cfg.swap
        if cfg.disk == "host_swap":  # the host device's queue: its depth and tags
            q = host_swap.cfg
            disk = disk.model_copy(
                update={"queue_depth": q.queue_depth, "nr_requests": q.nr_requests}
            )
        self.swap = SwapDevice(
            disk,
            cfg.swap.size_mib * mib,
            np.random.default_rng(rng.integers(2**63)),
            vmstat=self.vmstat,
        )
        if cfg.disk == "host_swap":
            self.swap.share_queue(host_swap)
        # guest.disk_cache: the image in the host page cache (set by attach_image); a swapped
        # page's place in it is its slot, so slots get identities
        self.image: DiskImage | None = None
        if cfg.disk_cache != "none":
            self.swap.track_slots(self.nr_anon)
        self.mm = Mm(0, f"{name}.guest", 0, self.nr_anon)
        self.policy = policy = make_policy(
            cfg.reclaim,
            nr_frames=nr_gfns,
            vmstat=self.vmstat,
            rng=np.random.default_rng(rng.integers(2**63)),
            file=self.nr_file > 0,
        )
        self.rmap = GuestRmap(mem, [self.mm], self.vmstat)
        now = lambda: int(env.now)  # noqa: E731
        self.vmscan = vmscan = GuestVmscan(
            mem, self.swap, self.rmap, [self.mm], now, schedule, self.vmstat
        )
        vmscan.guest = self
        vmscan.policy = policy
        cost = CostModel(costs, self.swap.compress_ns, self.swap.decompress_ns)
        self.throttle = throttle = ReclaimThrottle(env, mem, self.vmstat)
        vmscan.on_writeback_end = throttle.writeback_ended
        self.kswapd = Kswapd(env, mem, vmscan, policy, cost, self.vmstat, throttle)
        direct = DirectReclaim(env, mem, vmscan, policy, cost, self.vmstat, throttle)
        self.oom = OomKiller([self.mm], mem, self.swap, policy, self.vmstat, now=now)
        self.direct = direct
        swap = self.swap

        def reclaimable() -> int:  # zone_reclaimable_pages: anon only while swap has room
            return mem.nr_frames - mem.nr_free if swap.nr_free_slots > 0 else 0

        self.alloc = PageAllocator(
            env, mem, self.kswapd, direct, self.vmstat, self.out_of_memory, reclaimable
        )
        self.fault = HostFaultHandler(
            env,
            mem,
            swap,
            self.alloc,
            _NoGup(policy),  # type: ignore[arg-type]
            [self.mm],
            self.vmstat,
            page_cluster=cfg.swap.page_cluster,
        )
        self.fault._plain = False  # its reads go through before_read (QEMU's pin)
        self.fault.before_read = self._before_read

    def attach_image(self, image: DiskImage) -> None:
        """The virtual disk is ``image``, a host file QEMU reads and writes through the host
        page cache (``guest.disk_cache``): the guest's swap reads and writes and its file's
        reads go to it instead of the device."""
        self.image = image
        self.fault.disk_read = self._swap_read
        self.stats[DISK_CACHE_HITS] = 0

    def _swap_read(self, pids: list[int]) -> Generator[simpy.Event, Any, None]:
        """``swap_read_folio`` of ``pids`` (``pswpin`` each) as one request to the image: each
        page at its slot."""
        assert self.image is not None
        self.vmstat.count(VmStat.PSWPIN, len(pids), 0)
        slots = self.swap.page_slot[np.array(pids, dtype=np.int64)].tolist()
        self.stats[DISK_CACHE_HITS] += yield from self.image.read(slots)

    def image_write(self, pids: list[int]) -> Generator[simpy.Event, Any, None]:
        """QEMU's side of the guest's ``swap_writepage`` of ``pids`` (counted as ``pswpout``
        when the guest submitted them): one request to the image, each page to its slot;
        returns when QEMU completes it."""
        assert self.image is not None
        yield from self.image.write(self.swap.page_slot[np.array(pids, dtype=np.int64)].tolist())

    def log_evictions(self, log: GuestLog, vm: int) -> None:
        """Log this guest's evictions (anon swapped out, page cache dropped) through ``log``
        (the recorder's ``guest_evicted``) as VM ``vm``'s."""
        self.vmscan.sink = _GuestEvictionLog(log, vm)  # type: ignore[assignment]

    def start(self) -> None:
        """Start the guest's kswapd, and its jobs if the process is a batch job."""
        self.env.process(self.kswapd.run())
        if self.cfg.job is not None:
            self.env.process(self._jobs(self.cfg.job))

    def _jobs(self, job: GuestJobConfig) -> ProcessGen:
        """Each job runs ``run_s``; its process exits, the guest idles ``idle_s``."""
        run_ns, idle_ns = round(job.run_s * 1e9), round(job.idle_s * 1e9)
        while True:
            yield self.env.timeout(run_ns)
            self.exit_process()
            self.idle_until = int(self.env.now) + idle_ns
            if idle_ns:
                yield self.env.timeout(idle_ns)

    def exit_process(self) -> None:
        """The process exits (``exit_mmap`` in the guest): every page it has is freed, its
        frames back on the guest's free lists and its swap slots freed, as ``zap_pte_range``
        does; pages with I/O in flight go when it ends. The next job's pages start untouched.
        Its freed gfns stay backed on the host (the host never learns of the free) unless the
        balloon or free page reporting gives them back."""
        mem = self.mem
        touched = np.flatnonzero(mem.flags[: self.nr_anon] != 0)
        madvise_dontneed(
            self.mm,
            touched,
            mem,
            self.swap,
            self.policy,
            faulting=self.fault.fault_in_progress,
        )
        self.stats[JOBS_EXITED] += 1
        self.ra = _RaState()  # the next job opens the file afresh
        if self.tlb is not None:  # exit_mmap's tlb_finish_mmu (fullmm): flush_tlb_mm
            self.tlb.flush_all()
        if self.on_exit is not None:
            self.on_exit()

    @property
    def dead(self) -> bool:
        """The guest's OOM killer killed the workload's process."""
        return self.mm.dead

    def out_of_memory(self) -> bool:
        """``out_of_memory``: the OOM notifiers first (the balloon's deflate-on-OOM); if they
        freed anything there is no kill. Returns whether anything was freed or killed."""
        freed = sum(fn() for fn in self._oom_notifiers)
        if freed > 0:
            return True
        killed = self.oom()
        if killed and self.tlb is not None:  # the victim's exit_mmap flushes its mm
            self.tlb.flush_all()
        return killed

    # -- what the balloon driver needs (sim/guest/balloon.py's BalloonGuest) ------------------
    @property
    def nr_pages(self) -> int:
        """Guest RAM in pages (MemTotal before the balloon)."""
        return self.nr_gfns

    def register_oom_notifier(self, fn: Callable[[], int]) -> None:
        """``register_oom_notifier``: ``fn`` runs before the OOM killer and returns pages freed."""
        self._oom_notifiers.append(fn)

    def _balloon_take(self) -> int:
        """One free frame for the balloon from the allocator's fast path (above the low
        watermark, else kswapd woken and above min), or -1."""
        slot = self._balloon_slots.pop()
        pfn = self.alloc.alloc_fast(self.nr_vpages + slot)  # the balloon's pages: past the file
        if pfn < 0:
            self._balloon_slots.append(slot)
        return pfn

    def balloon_alloc(self, n: int) -> Generator[simpy.Event, Any, NDArray[np.int64]]:
        """``balloon_page_alloc`` up to ``n`` times (``fill_balloon``'s loop): each page takes
        the allocator's fast path; failing that, the slow path reclaims directly once
        (``__GFP_NORETRY``: no retries, no OOM killer) and tries again. The first page that
        cannot be had ends the chunk."""
        got: list[int] = []
        for _ in range(n):
            pfn = self._balloon_take()
            if pfn < 0:
                yield from self.direct.try_to_free_pages(self.kswapd)
                pfn = self._balloon_take()
            if pfn < 0:
                break
            got.append(pfn)
        return np.array(got, dtype=np.int64)

    def balloon_free(self, gfns: NDArray[np.int64]) -> None:
        """``balloon_page_free``: the pages go back to the guest's free lists."""
        if len(gfns) == 0:
            return
        slots = self.mem.frame_pid[gfns].astype(np.int64) - self.nr_vpages
        assert (slots >= 0).all(), "the balloon frees a page it does not hold"
        self.mem.free_frames(gfns)
        self._balloon_slots.extend(slots.tolist())

    def balloon_pages(self) -> NDArray[np.int64]:
        """The gfns the balloon holds."""
        held = (self.mem.frame_pid >= self.nr_vpages) & ~self.hinted
        return np.flatnonzero(held).astype(np.int64)

    def hint_take(self, gfns: NDArray[np.int64]) -> None:
        """Free page hinting's allocation of these free gfns (a whole block): the driver's
        kernel pages until it gives them back."""
        slots = [self._balloon_slots.pop() for _ in range(len(gfns))]
        self.mem.take_free(gfns, self.nr_vpages + np.asarray(slots, dtype=np.int64))
        self.hinted[gfns] = True

    def hint_give_back(self, gfns: NDArray[np.int64]) -> None:
        """``return_free_pages_to_mm``: hinted gfns back to the free lists."""
        assert self.hinted[gfns].all(), "giving back a gfn that was not hinted"
        self.hinted[gfns] = False
        self.balloon_free(gfns)

    def meminfo(self) -> Any:
        """What ``update_balloon_stats`` reports (pages; ``si_mem_available`` without a page
        cache is the free pages above the reserve, which the high watermark stands for)."""
        from sim.guest.balloon import GuestMeminfo

        v, free = self.vmstat, int(self.mem.nr_free)
        return GuestMeminfo(
            total=self.nr_gfns,
            free=free,
            available=max(0, free - self.mem.wmark.high),
            cached=0,
            swap_in=int(v["pswpin"]),
            swap_out=int(v["pswpout"]),
            major_faults=int(v["pgmajfault"]),
            minor_faults=int(v["pgfault"] - v["pgmajfault"]),
        )

    # -- the host below ----------------------------------------------------------------------
    def host_swapped(self, gfns: Pfns) -> NDArray[np.bool_]:
        """Which gfns the host holds only in swap (no frame): touching them reads them back."""
        f = self.host_mem.flags[self.host_base + gfns]
        return (f & (PG_RESIDENT | PG_SWAP)) == PG_SWAP

    def touch_host(self, gfns: Pfns, *, write: bool) -> None:
        """QEMU reads or writes guest RAM it has mapped: the host ptes are referenced (and
        dirtied); gfns not mapped on the host are left to :meth:`host_fault_in`."""
        if len(gfns) == 0:
            return
        pids = self.host_base + gfns
        f = self.host_mem.flags[pids]
        mapped = (f & PTE_PRESENT) != 0
        bits = _U8(PTE_YOUNG | PG_DIRTY) if write else _U8(PTE_YOUNG)
        self.host_mem.flags[pids[mapped]] = f[mapped] | bits
        cached = ~mapped & ((f & PG_RESIDENT) != 0)
        for pid in pids[cached].tolist():  # in the host's swap cache: a minor fault maps it
            self.host.fault_nowait(pid, write)

    def host_fault_in(self, gfn: int, *, write: bool) -> ProcessGen:
        """QEMU's own fault on a gfn it must read or write (``get_user_pages`` for the I/O
        buffer): the host pte is made present, waiting for a swap-in if needed."""
        pid = self.host_base + gfn
        if self.host_mem.flags.item(pid) & PTE_PRESENT:
            self.touch_host(np.array([gfn], dtype=np.int64), write=write)
            return
        yield from self.host.handle_mm_fault(pid, write)

    def _before_read(self, pfns: list[int]) -> Iterator[simpy.Event]:
        """A guest read from its disk into ``pfns`` is about to be submitted: QEMU pins each
        gfn for writing first, and any the host has only in swap are stale swap reads."""
        gfns = np.array(pfns, dtype=np.int64)
        gone = self.host_swapped(gfns)
        self.stats[STALE_SWAP_READS] += int(np.count_nonzero(gone))
        for g in gfns.tolist():
            yield from self.host_fault_in(g, write=True)

    # -- the guest page cache -----------------------------------------------------------------
    def file_accessed(self, pids: NDArray[np.int64]) -> None:
        """The process read these page-cache pages (a run of hits, in order):
        ``folio_mark_accessed`` per read, which past the second changes nothing, so each
        page gets it at most twice."""
        if len(pids) == 0:
            return
        pfn, mark = self.mem.pfn, self.policy.folio_mark_accessed
        reads: dict[int, int] = {}  # page -> its reads, in order of the first
        for p in pids.tolist():
            reads[p] = reads.get(p, 0) + 1
        for p, n in reads.items():
            f = pfn.item(p)
            mark(f)
            if n > 1:
                mark(f)
        idx = pids - self.nr_anon
        marked = idx[self._ra_mark[idx]]
        for i in marked.tolist():  # filemap_readahead -> page_cache_async_ra
            self._ra_mark[i] = False
            window = self.ra.async_window(i, self.ra_pages, self._cached)
            if window:
                self.env.process(self._read_ahead(window))
        self.ra.prev = int(idx[-1])

    def file_fault(self, pid: int) -> Generator[simpy.Event, Any, HostFault]:
        """A read that misses the page cache (``filemap_read`` -> ``filemap_get_pages``):
        ``page_cache_sync_ra`` picks the pages to read with it (its window, when the reads
        look sequential), a folio is allocated for each (the missed one with watermarks, guest
        kswapd and direct reclaim; the ones read ahead only while the allocator need not wait,
        ``__GFP_NORETRY``) and locked in the page cache, QEMU pins them for the virtual disk's
        read (stale swap reads if the host has gfns only in swap), the disk reads them in one
        request (``pgpgin``), and the folios join the file LRU (refaults if their shadows are
        recent: ``workingset_refault``), the missed one marked accessed. A read of a folio
        being read in waits for it (the folio lock)."""
        ev = self._file_reads.get(pid)
        if ev is not None:
            yield ev
            return HostFault.WAITED
        mem = self.mem
        if mem.flags.item(pid) & PG_RESIDENT:
            return HostFault.MAPPED
        index = pid - self.nr_anon
        window = self.ra.sync_window(index, self.ra_pages, self._cached)
        self.ra.prev = index
        ahead = [self.nr_anon + i for i in window if i != index and not self._cached(i)]
        evs = {p: self.env.event() for p in [pid, *ahead]}
        self._file_reads.update(evs)  # claimed: a reader of any of them waits for this read
        shadows = [self._shadow(pid)]
        pfn = self.alloc.alloc_fast(pid)
        if pfn < 0:
            pfn = yield from self.alloc.alloc(pid)
        if pfn < 0:  # no frame to be had (nothing left to kill): the read fails
            self._release(list(evs))
            return HostFault.WAITED
        more, more_shadows = self._alloc_ahead(ahead)
        got = [pid, *more]
        # a standalone read (a window of one page) leaves the readahead state alone: no mark
        mark = self.ra.mark() if len(window) > 1 else -1
        yield from self._read_folios(got, [*shadows, *more_shadows], mark)
        self.policy.folio_mark_accessed(mem.pfn.item(pid))
        self._release(got)
        return HostFault.MAJOR

    def ra_mark_dropped(self, pids: NDArray[np.integer]) -> None:
        """Dropped page-cache pages lose PG_readahead with their folios."""
        if len(pids):
            self._ra_mark[np.asarray(pids, dtype=np.int64) - self.nr_anon] = False

    def _cached(self, index: int) -> bool:
        """Whether file page ``index`` is in the page cache (or being read into it); pages
        past the file's end count as cached (there is nothing to read)."""
        if index >= self.nr_file:
            return True
        pid = self.nr_anon + index
        return bool(self.mem.flags.item(pid) & PG_RESIDENT) or pid in self._file_reads

    def _release(self, pids: list[int]) -> None:
        """End the claims on ``pids``: their readers go on (and fault again if not read)."""
        for p in pids:
            ev = self._file_reads.pop(p, None)
            if ev is not None:
                ev.succeed()

    def _shadow(self, pid: int) -> int | None:
        """The workingset shadow a file page left when it was dropped (before its new frame
        takes its place), or None."""
        old = self.mem.pfn.item(pid)
        return None if old == NO_PFN_INT else old

    def _alloc_ahead(self, pids: list[int]) -> tuple[list[int], list[int | None]]:
        """Frames for claimed pages to read ahead (``readahead_gfp_mask``: never waiting for
        reclaim, stopping at the first failure); the claims of the pages left are released.
        Returns the pages that got frames and the shadows they had."""
        got: list[int] = []
        shadows: list[int | None] = []
        for p in pids:
            sh = self._shadow(p)
            if self.alloc.alloc_fast(p) < 0:
                break
            got.append(p)
            shadows.append(sh)
        self._release(pids[len(got) :])
        return got, shadows

    def _read_folios(
        self, pids: list[int], shadows: list[int | None], mark: int
    ) -> Generator[simpy.Event, Any, None]:
        """Read file pages ``pids`` (each with a new frame, in order; ``shadows`` what they
        left when last dropped) as one request of the virtual disk, then add them to the file
        LRU (``filemap_add_folio``); file page ``mark`` (-1: none) gets PG_readahead."""
        mem = self.mem
        for p in pids:
            mem.flags[p] = mem.flags.item(p) | PG_LOCKED
        pfns = [mem.pfn.item(p) for p in pids]
        yield from self._before_read(pfns)
        if self.image is not None:  # the file's blocks in the image, after the swap area
            offs = [self.swap.nr_slots + 1 + p - self.nr_anon for p in pids]
            self.stats[DISK_CACHE_HITS] += yield from self.image.read(offs)
        else:
            now = int(self.env.now)
            done = max(self.swap.submit(now, write=False, n=len(pids), swap_io=False))
            yield self.env.timeout(done - now)
        self.vmstat[PGPGIN] += (PAGE_SIZE >> 10) * len(pids)
        room = self.swap.nr_free_slots > 0
        for p, pfn, shadow in zip(pids, pfns, shadows, strict=True):
            mem.flags[p] = mem.flags.item(p) & ~PG_LOCKED
            self.policy.file_add_lru(pfn, shadow, room)
            if p - self.nr_anon == mark:
                self._ra_mark[mark] = True

    def _read_ahead(self, window: list[int]) -> ProcessGen:
        """An asynchronous readahead (``page_cache_async_ra``): the window's pages not cached
        are read as one request while the reader goes on."""
        mark = self.ra.mark()
        todo = [self.nr_anon + i for i in window if not self._cached(i)]
        self._file_reads.update({p: self.env.event() for p in todo})
        got, shadows = self._alloc_ahead(todo)
        if got:
            yield from self._read_folios(got, shadows, mark)
            self._release(got)

    def silent_writes(self, gfns: NDArray[np.int64]) -> None:
        """The host wrote these gfns of this VM to its swap: those holding a clean page-cache
        page of the guest are silent swap writes (their data is on the guest's disk)."""
        if not self.nr_file or len(gfns) == 0:
            return
        owner = self.mem.frame_pid[gfns]
        cache = (owner >= self.nr_anon) & (owner < self.nr_vpages)
        if cache.any():
            clean = (self.mem.flags[owner[cache]] & PG_DIRTY) == 0
            self.stats[SILENT_SWAP_WRITES] += int(np.count_nonzero(clean))

    def zeroed(self, gfn: int) -> None:
        """The guest allocated ``gfn`` for a new anon page and clears it: if the host holds it
        only in swap, the host's swap-in for that write is a false swap read (the vCPU's write
        that follows takes the host fault)."""
        if self.host_swapped(np.array([gfn], dtype=np.int64))[0]:
            self.stats[FALSE_SWAP_READS] += 1

    # -- reports -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Event counts: the guest's /proc/vmstat (its own level's), then memsim's VSwapper
        counters (the host work the two levels cause each other)."""
        v = self.vmstat
        keys = _GUEST_VMSTAT + (_GUEST_FILE_VMSTAT if self.nr_file else ())
        out = {**{k: int(v[k]) for k in keys}, **dict(self.stats)}
        if self.image is not None:  # QEMU's balance_dirty_pages sleeps: no vmstat counter
            out["disk_dirty_pauses"] = self.image.dirty_pauses
            out["disk_dirty_pause_ns"] = self.image.dirty_pause_at(int(self.env.now))
        return out

    def memory(self) -> dict[str, int]:
        """Levels: what the guest's /proc/meminfo shows (pages)."""
        return {
            "total": self.nr_gfns,
            "free": int(self.mem.nr_free),
            "anon": int(self.mem.nr_resident[0]),
            "page_cache": int(self.mem.nr_resident[1]) if self.nr_file else 0,
            "balloon": int(self.mem.nr_resident[-1]) - int(np.count_nonzero(self.hinted)),
            "hinted": int(np.count_nonzero(self.hinted)),
            "swap_used": int(self.swap.nr_slots - self.swap.nr_free_slots),
            "footprint": self.nr_vpages,
        }

    def check(self) -> None:
        """The guest's memory invariants (HostMemory's, and the policy's lists)."""
        mem = self.mem
        mem.check()
        f = mem.flags[: self.nr_vpages]  # the balloon's pages are on no LRU
        resident = ((f & PG_RESIDENT) != 0) & ((f & PG_LOCKED) == 0)  # not being read in
        locked = np.flatnonzero(f[self.nr_anon :] & PG_LOCKED) + self.nr_anon
        assert all(p in self._file_reads for p in locked.tolist()), "a read nobody waits on"
        on_lru = np.zeros(mem.nr_frames, dtype=np.bool_)
        on_lru[mem.pfn[: self.nr_vpages][resident]] = True
        self.policy.check(on_lru)
        used = self.swap.nr_slots - self.swap.nr_free_slots
        assert used == int(np.count_nonzero(f & PG_SWAP)), "guest swap slot accounting"
        self.swap.check_slots(np.flatnonzero(f & PG_SWAP))  # with identities: each its own


_GUEST_VMSTAT = (
    "pgfault",
    "pgmajfault",
    "pswpin",
    "pswpout",
    "pgscan_kswapd",
    "pgscan_direct",
    "pgsteal_kswapd",
    "pgsteal_direct",
    "allocstall_normal",
    "kswapd_wakeups",
    "workingset_refault_anon",
    "workingset_activate_anon",
    "oom_kill",
)
_GUEST_FILE_VMSTAT = (
    "pgpgin",
    "pgscan_anon",
    "pgscan_file",
    "pgsteal_anon",
    "pgsteal_file",
    "workingset_refault_file",
    "workingset_activate_file",
)
