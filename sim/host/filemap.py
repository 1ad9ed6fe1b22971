"""The host page cache's reader: a host file workload reading through ``filemap_read``.

Models
    One host task (a QEMU disk image opened with cache=writeback, or a host service) reading
    pages of a file of ``host_files.size_mib`` at ``access_rate_per_s``, in batches like a vCPU,
    with the access stream of sim/guest/workloads.py. Its pages are pids after every VM's
    (HostMemory's last owner, a pseudo-mm), so frames, the LRU links and vmstat are shared with
    guest RAM. A read that finds the folio in the page cache marks it accessed
    (``folio_mark_accessed``: PG_referenced, then activation on the second touch: the kernel's
    two-touch rule for unmapped page cache, with no accessed bits from any pte). A miss
    allocates a frame (watermarks, kswapd, direct reclaim: the task stalls like a faulting
    vCPU), reads the page from the device (``pgpgin``, in KiB as /proc/vmstat shows it),
    adds the folio to the file LRU (``filemap_add_folio``; a shadow left by reclaim is a
    refault, ``workingset_refault``) and marks it accessed.

Kernel reference
    mm/filemap.c: ``filemap_read``, ``filemap_get_pages``, ``filemap_add_folio``;
    mm/swap.c: ``folio_mark_accessed``, ``folio_add_lru``; mm/workingset.c:
    ``workingset_refault``, ``workingset_test_recent``.

Simplifications
    Reads only (no dirty page cache, so no flusher and no write-back of file folios yet:
    docs/pagecache-status.md). No readahead: each miss is one page read, and a task's reads
    are taken one after another at ``read_latency_us`` each (no device queue shared with swap).
    The read completes before the frame is taken (the kernel adds the locked folio to the LRU
    first and reads into it), so a folio is never on the LRU while its read is in flight.
    A shadow equal to NO_PFN is taken for none (a refault counted as a first read).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import simpy
from numpy.typing import NDArray

from sim.host.kswapd import ProcessGen
from sim.host.memory import NO_PFN_INT, PG_RESIDENT, HostMemory
from sim.host.page_alloc import PageAllocator
from sim.host.swap import SwapDevice
from sim.host.vmstat import VmEvents
from sim.reclaim.two_list import PGPGIN, TwoList


class FileStream(Protocol):
    """An access stream over the file's pages (sim/guest/workloads.py's ``AccessStream``)."""

    def next(self, n: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """The next ``n`` page offsets and their write flags."""
        ...


class FileReader:
    """The host file workload's task.

    Args:
        env: simulation environment.
        mem: host memory (the page cache's pids start at ``mem.file_base``).
        alloc: the page allocator.
        policy: the two-list policy keeping the file lists.
        swap: the swap device (whether anon counts in a file refault's workingset).
        vmstat: host counters.
        stream: the file's access stream (page offsets in the file).
        access_rate_per_s: page reads per second.
        batch: reads per batch (one SimPy event per batch, as a vCPU's).
        read_latency_ns: device time of one miss.
        page_kib: KiB per page (for ``pgpgin``).
    """

    def __init__(
        self,
        env: simpy.Environment,
        mem: HostMemory,
        alloc: PageAllocator,
        policy: TwoList,
        swap: SwapDevice,
        vmstat: VmEvents,
        stream: FileStream,
        *,
        access_rate_per_s: int,
        batch: int,
        read_latency_ns: int,
        page_kib: int,
    ) -> None:
        self.env, self.mem, self.alloc, self.policy = env, mem, alloc, policy
        self.swap, self.vmstat, self.stream = swap, vmstat, stream
        self.batch, self.read_latency_ns, self.page_kib = batch, read_latency_ns, page_kib
        self.ns_per_access = 1e9 / access_rate_per_s

    def run(self) -> ProcessGen:
        """Read batch after batch: hits mark folios accessed, misses read them in (each miss
        waits for its read, then for its frame); then the batch's own time at the rate."""
        mem, policy = self.mem, self.policy
        base = mem.file_base
        while True:
            offs, _writes = self.stream.next(self.batch)
            for off in offs.tolist():
                pid = base + off
                if mem.flags.item(pid) & PG_RESIDENT:
                    policy.folio_mark_accessed(mem.pfn.item(pid))
                    continue
                old = mem.pfn.item(pid)
                shadow = None if old == NO_PFN_INT else old
                yield self.env.timeout(self.read_latency_ns)
                self.vmstat[PGPGIN] += self.page_kib
                pfn = yield from self.alloc.alloc(pid)
                policy.file_add_lru(pfn, shadow, self.swap.nr_free_slots > 0)
                policy.folio_mark_accessed(pfn)
            yield self.env.timeout(max(1, round(len(offs) * self.ns_per_access)))
