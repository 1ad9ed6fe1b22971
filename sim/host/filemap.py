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

    Each ``host_files`` section is its own file and reader (a pseudo-mm of its own). A file
    with a ``memcg`` is read by that VM's QEMU: each folio it adds is charged to the VM's
    memcg (``filemap_add_folio`` -> ``mem_cgroup_charge``), so past ``memory.max`` the reader
    reclaims that memcg in its own context (``try_charge_memcg``), above ``memory.high`` it
    reclaims and sleeps the penalty on its way back to user space
    (``mem_cgroup_handle_over_high``), and when the VM is killed the reader, one of its
    threads, stops; the folios it read stay in the page cache, charged to the memcg.

Kernel reference
    mm/filemap.c: ``filemap_read``, ``filemap_get_pages``, ``filemap_add_folio``,
    ``folio_end_writeback``; mm/page-writeback.c: ``filemap_dirty_folio``,
    ``folio_account_dirtied``; fs/fs-writeback.c: ``wb_workfn``, ``wb_check_old_data_flush``;
    mm/swap.c: ``folio_mark_accessed``, ``folio_add_lru``; mm/workingset.c:
    ``workingset_refault``, ``workingset_test_recent``.

    A write (``write_ratio``) dirties the folio (``nr_dirtied``). Reclaim never writes a dirty
    file folio: it marks it PG_reclaim and activates it. The flusher (``wb_workfn``) wakes every
    ``dirty_writeback_ms`` and writes the folios dirtied ``dirty_expire_ms`` ago or earlier
    (``pgpgout``, ``nr_written``); the end of a write rotates a PG_reclaim folio to the inactive
    tail for the next scan to free.

Simplifications
    No dirty thresholds (``dirty_background_ratio`` starting the flusher early,
    ``balance_dirty_pages`` throttling the writer) and no PGDAT_DIRTY (kswapd never writes file
    folios itself): docs/pagecache-status.md. The flusher's device is its own, writing one page
    after another; a write miss reads the page first (a partial-page write). No readahead:
    each miss is one page read, and a task's reads are taken one after another at
    ``read_latency_us`` each (no device queue shared with swap).
    The read completes before the frame is taken (the kernel adds the locked folio to the LRU
    first and reads into it), so a folio is never on the LRU while its read is in flight.
    A shadow equal to NO_PFN is taken for none (a refault counted as a first read).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Protocol

import numpy as np
import simpy
from numpy.typing import NDArray

from sim.host.kswapd import ProcessGen
from sim.host.memory import NO_PFN_INT, PG_DIRTY, PG_RESIDENT, PG_WRITEBACK, HostMemory
from sim.host.page_alloc import PageAllocator
from sim.host.swap import SwapDevice
from sim.host.vmscan import Schedule, Vmscan
from sim.host.vmstat import VmEvents
from sim.reclaim.two_list import NR_DIRTIED, NR_WRITTEN, PGPGIN, PGPGOUT

if TYPE_CHECKING:
    from sim.host.memcontrol import MemCgroups
    from sim.host.mm import Mm


class FileStream(Protocol):
    """An access stream over the file's pages (sim/guest/workloads.py's ``AccessStream``)."""

    def next(self, n: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """The next ``n`` page offsets and their write flags."""
        ...


class FileLru(Protocol):
    """The policy's page-cache hooks (two_list's file lists, on the folio's memcg's lruvec, or
    MGLRU's file type)."""

    def file_add_lru(self, pfn: int, shadow: int | None, swap_ok: bool) -> None:
        """``filemap_add_folio`` -> ``folio_add_lru`` (a refault judged by the shadow)."""
        ...

    def folio_mark_accessed(self, pfn: int) -> None:
        """``folio_mark_accessed``."""
        ...


class FileReader:
    """The host file workload's task.

    Args:
        env: simulation environment.
        mem: host memory.
        alloc: the page allocator (charges the file's memcg, if any).
        policy: the policy keeping the file LRU (two_list or mglru).
        swap: the swap device (whether anon counts in a file refault's workingset).
        vmstat: host counters.
        stream: the file's access stream (page offsets in the file).
        access_rate_per_s: page reads per second.
        batch: reads per batch (one SimPy event per batch, as a vCPU's).
        read_latency_ns: device time of one miss.
        page_kib: KiB per page (for ``pgpgin``).
        vmscan: the write-back end (``folio_end_writeback``) the flusher's writes call.
        schedule: ``schedule(t_ns, fn)`` runs ``fn`` at ``t_ns``.
        write_ns: device time of one page written by the flusher.
        dirty_writeback_ns: the flusher's period.
        dirty_expire_ns: the age of dirty data the flusher writes.
        base: the file's first pid (page offset 0).
        nr_pages: the file's size in pages.
        memcg: the memcgs, when the file is charged to a VM's (memory.high on the way back).
        owner: the VM whose QEMU reads the file (the memcg charged; the reader stops when it
            is killed), or None: a host service in the root memcg.
    """

    def __init__(
        self,
        env: simpy.Environment,
        mem: HostMemory,
        alloc: PageAllocator,
        policy: FileLru,
        swap: SwapDevice,
        vmstat: VmEvents,
        stream: FileStream,
        *,
        access_rate_per_s: int,
        batch: int,
        read_latency_ns: int,
        page_kib: int,
        vmscan: Vmscan,
        schedule: Schedule,
        write_ns: int,
        dirty_writeback_ns: int,
        dirty_expire_ns: int,
        base: int,
        nr_pages: int,
        memcg: MemCgroups | None = None,
        owner: Mm | None = None,
    ) -> None:
        self.env, self.mem, self.alloc, self.policy = env, mem, alloc, policy
        self.swap, self.vmstat, self.stream = swap, vmstat, stream
        self.batch, self.read_latency_ns, self.page_kib = batch, read_latency_ns, page_kib
        self.ns_per_access = 1e9 / access_rate_per_s
        self.vmscan, self.schedule, self.write_ns = vmscan, schedule, write_ns
        self.dirty_writeback_ns, self.dirty_expire_ns = dirty_writeback_ns, dirty_expire_ns
        self.base, self.nr_pages, self.memcg, self.owner = base, nr_pages, memcg, owner
        self.dirtied_at = np.zeros(nr_pages, dtype=np.int64)
        self._device_free = 0  # when the flusher's last write ends (ns)

    def run(self) -> ProcessGen:
        """Read batch after batch: hits mark folios accessed, misses read them in (each miss
        waits for its read, then for its charge and frame, then pays any memory.high penalty);
        a write dirties the folio (``folio_mark_dirty``); then the batch's own time at the
        rate. A reader of a killed VM stops."""
        mem, policy, owner = self.mem, self.policy, self.owner
        base = self.base
        while owner is None or not owner.dead:
            offs, writes = self.stream.next(self.batch)
            for off, write in zip(offs.tolist(), writes.tolist(), strict=True):
                pid = base + off
                if mem.flags.item(pid) & PG_RESIDENT:
                    policy.folio_mark_accessed(mem.pfn.item(pid))
                else:
                    old = mem.pfn.item(pid)
                    shadow = None if old == NO_PFN_INT else old
                    yield self.env.timeout(self.read_latency_ns)
                    self.vmstat[PGPGIN] += self.page_kib
                    if owner is not None and owner.dead:
                        return
                    pfn = yield from self.alloc.alloc(pid)
                    if pfn < 0:  # the VM was killed by its memcg's OOM while charging
                        return
                    policy.file_add_lru(pfn, shadow, self.swap.nr_free_slots > 0)
                    policy.folio_mark_accessed(pfn)
                    if write:  # the write is done before the return to user space
                        self.folio_mark_dirty(pid)
                    if self.memcg is not None and owner is not None:
                        yield from self.memcg.handle_over_high(owner.index)
                    continue
                if write:
                    self.folio_mark_dirty(pid)
            yield self.env.timeout(max(1, round(len(offs) * self.ns_per_access)))

    def folio_mark_dirty(self, pid: int) -> None:
        """``filemap_dirty_folio``: PG_dirty, and ``folio_account_dirtied`` (``nr_dirtied``)
        stamps the time the flusher's expiry counts from (the inode's ``dirtied_when``, per
        folio here)."""
        f = self.mem.flags.item(pid)
        if f & PG_DIRTY:
            return
        self.mem.flags[pid] = f | PG_DIRTY
        self.dirtied_at[pid - self.base] = int(self.env.now)
        self.vmstat[NR_DIRTIED] += 1

    def flusher(self) -> ProcessGen:
        """``wb_workfn`` -> ``wb_check_old_data_flush``: every ``dirty_writeback`` the flusher
        writes the dirty folios dirtied at least ``dirty_expire`` ago, in file order, one after
        another at the device's write speed (``pgpgout``); each write ends with
        ``folio_end_writeback``, which rotates a folio reclaim marked PG_reclaim to the
        inactive tail."""
        mem = self.mem
        base = self.base
        while True:
            yield self.env.timeout(self.dirty_writeback_ns)
            now = int(self.env.now)
            f = mem.flags[base : base + self.nr_pages]
            due = (f & (PG_DIRTY | PG_WRITEBACK)) == PG_DIRTY
            due &= self.dirtied_at <= now - self.dirty_expire_ns
            pids = np.flatnonzero(due) + base
            if len(pids) == 0:
                continue
            mem.flags[pids] = (mem.flags[pids] & ~np.uint8(PG_DIRTY)) | np.uint8(PG_WRITEBACK)
            mem.nr_writeback += len(pids)
            self.vmstat[PGPGOUT] += self.page_kib * len(pids)
            start = max(now, self._device_free)
            for i, pid in enumerate(pids.tolist()):
                done = start + (i + 1) * self.write_ns
                self.schedule(done, partial(self._end_writeback, pid))
            self._device_free = start + len(pids) * self.write_ns

    def _end_writeback(self, pid: int) -> None:
        """The write of ``pid`` ended (``nr_written``), as ``folio_end_writeback``."""
        self.vmstat[NR_WRITTEN] += 1
        self.vmscan.folio_end_writeback(pid, self.mem.pfn.item(pid))
