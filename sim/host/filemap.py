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

    A write (``write_ratio``) dirties the folio (``nr_dirtied``). Direct reclaim never writes a
    dirty file folio: it marks it PG_reclaim and activates it; kswapd writes one it meets again
    with PG_reclaim while the node is flagged PGDAT_DIRTY (sim/host/vmscan.py). The flusher
    (``wb_workfn`` -> ``wb_do_writeback``) wakes every ``dirty_writeback_ms`` and writes the
    folios dirtied ``dirty_expire_ms`` ago or earlier (``wb_check_old_data_flush``), and wakes at
    once when reclaim found only unqueued dirty file folios (``wb_check_start_all``: all dirty
    data) or when a writer's dirty page cache exceeds the background threshold
    (``wb_check_background_flush``: the oldest, down to the threshold;
    sim/host/page_writeback.py). Each write is ``pgpgout`` when submitted and ``nr_written``
    when it ends; the end rotates a PG_reclaim folio to the inactive tail for the next scan to
    free. After each batch that dirtied folios the writer calls ``balance_dirty_pages``, which
    may pause it (``dirty_pause_ns``, the reader's own time).

Simplifications
    The flusher's device is its own, writing one page
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
from sim.host.memory import NO_PFN_INT, PAGE_SIZE, PG_DIRTY, PG_RESIDENT, PG_WRITEBACK, HostMemory
from sim.host.page_alloc import PageAllocator
from sim.host.page_writeback import HZ, JIFFY_NS, DirtyControl, dirty_pause
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
        dirty: the node's dirty limits (``balance_dirty_pages``, background write-back), or
            None: no thresholds (a reader tested alone).
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
        vmscan: Vmscan,
        schedule: Schedule,
        write_ns: int,
        dirty_writeback_ns: int,
        dirty_expire_ns: int,
        base: int,
        nr_pages: int,
        memcg: MemCgroups | None = None,
        owner: Mm | None = None,
        dirty: DirtyControl | None = None,
    ) -> None:
        self.env, self.mem, self.alloc, self.policy = env, mem, alloc, policy
        self.swap, self.vmstat, self.stream = swap, vmstat, stream
        self.batch, self.read_latency_ns = batch, read_latency_ns
        self.ns_per_access = 1e9 / access_rate_per_s
        self.vmscan, self.schedule, self.write_ns = vmscan, schedule, write_ns
        self.dirty_writeback_ns, self.dirty_expire_ns = dirty_writeback_ns, dirty_expire_ns
        self.base, self.nr_pages, self.memcg, self.owner = base, nr_pages, memcg, owner
        self.dirtied_at = np.zeros(nr_pages, dtype=np.int64)
        self._device_free = 0  # when the flusher's last write ends (ns)
        self.dirty = dirty
        self.bw_pages_per_s = max(1, 1_000_000_000 // write_ns)  # the device's write bandwidth
        self._kick: simpy.Event | None = None  # wb_wakeup: the flusher's work is queued
        self._start_all = False  # WB_start_all: write every dirty folio (WB_REASON_VMSCAN)
        self._nr_dirtied = 0  # current->nr_dirtied: folios dirtied since the last pause
        self._paused_when = 0  # current->dirty_paused_when (jiffies; 0: never paused)
        self.dirty_pause_ns = 0  # time slept in balance_dirty_pages (no vmstat counter)
        self.dirty_pauses = 0  # balance_dirty_pages sleeps (counted when they start)
        self._pause_since = -1  # when the sleep in progress began (-1: none)

    def run(self) -> ProcessGen:
        """Read batch after batch: hits mark folios accessed, misses read them in (each miss
        waits for its read, then for its charge and frame, then pays any memory.high penalty);
        a write dirties the folio (``folio_mark_dirty``); then the batch's own time at the
        rate. A reader of a killed VM stops."""
        mem, policy, owner = self.mem, self.policy, self.owner
        base = self.base
        while owner is None or not owner.dead:
            if self._nr_dirtied and self.dirty is not None:
                yield from self.balance_dirty_pages()
            offs, writes = self.stream.next(self.batch)
            for off, write in zip(offs.tolist(), writes.tolist(), strict=True):
                pid = base + off
                if mem.flags.item(pid) & PG_RESIDENT:
                    policy.folio_mark_accessed(mem.pfn.item(pid))
                else:
                    old = mem.pfn.item(pid)
                    shadow = None if old == NO_PFN_INT else old
                    yield self.env.timeout(self.read_latency_ns)
                    self.vmstat[PGPGIN] += PAGE_SIZE >> 10
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
        self._nr_dirtied += 1

    def balance_dirty_pages(self) -> ProcessGen:
        """``balance_dirty_pages`` after a batch that dirtied folios: over ``bg_thresh`` the
        flusher starts background write-back; at or below the freerun ceiling the writer goes
        on; above it, it sleeps ``HZ * pages_dirtied / task_ratelimit`` jiffies (the write
        bandwidth times ``pos_ratio``), less its time since the last pause, at most
        ``wb_max_pause``; at or over the limit (``task_ratelimit`` 0) it sleeps ``max_pause``
        and tries again. sim/host/page_writeback.py says what is simplified."""
        dc = self.dirty
        assert dc is not None
        pages_dirtied = self._nr_dirtied
        while True:
            now_j = int(self.env.now) // JIFFY_NS
            st = dc.state()
            if st.nr_dirty > st.bg_thresh:  # !laptop_mode && nr_dirty > bg_thresh
                dc.wb_start_background_writeback()
            if st.freerun:
                self._paused_when, self._nr_dirtied = now_j, 0
                return
            dc.wb_start_background_writeback()  # "start writeback even when in laptop mode"
            f = self.mem.flags[self.base : self.base + self.nr_pages]
            pause, period = dirty_pause(
                st.dirty,
                st.thresh,
                st.bg_thresh,
                pages_dirtied=pages_dirtied,
                bw_pages_per_s=self.bw_pages_per_s,
                wb_dirty=int(np.count_nonzero(f & (PG_DIRTY | PG_WRITEBACK))),
                since_pause=now_j - self._paused_when if self._paused_when else None,
            )
            if pause < 1:  # below min_pause: no sleep; the debt is carried in dirty_paused_when
                if pause < -HZ:
                    self._paused_when, self._nr_dirtied = now_j, 0
                elif period:
                    self._paused_when += period
                    self._nr_dirtied = 0
                return
            self.dirty_pauses += 1
            self._pause_since = int(self.env.now)
            yield self.env.timeout(pause * JIFFY_NS)
            self._pause_since = -1
            self.dirty_pause_ns += pause * JIFFY_NS
            self._paused_when, self._nr_dirtied = now_j + pause, 0
            if period:  # task_ratelimit > 0: done; at or over the limit, try again
                return

    def dirty_pause_at(self, now: int) -> int:
        """Time slept in ``balance_dirty_pages`` up to ``now`` (a sleep in progress credited
        as it accrues, as the vCPUs' stall is)."""
        return self.dirty_pause_ns + (now - self._pause_since if self._pause_since >= 0 else 0)

    def _wakeup(self) -> None:
        """``wb_wakeup``: the flusher runs its queued work now."""
        if self._kick is not None and not self._kick.triggered:
            self._kick.succeed()

    def wb_start_all(self) -> None:
        """``wb_start_writeback(WB_REASON_VMSCAN)``: if the file has dirty data, the flusher
        wakes to write all of it (``wb_check_start_all``)."""
        f = self.mem.flags[self.base : self.base + self.nr_pages]
        if not (f & PG_DIRTY).any():  # !wb_has_dirty_io
            return
        self._start_all = True
        self._wakeup()

    def wb_start_background(self) -> None:
        """``wb_start_background_writeback``: wake the flusher (it checks the threshold)."""
        self._wakeup()

    def write_folios(self, pids: NDArray[np.int64], *, reclaim: bool = False) -> None:
        """Submit writes of dirty folios to the file's device, one after another after the
        writes already queued (``pgpgout`` at submission); PG_dirty becomes PG_writeback, and
        each write ends in ``folio_end_writeback`` (``nr_written``). ``reclaim``: kswapd's
        ``pageout``, whose folios keep their PG_reclaim."""
        mem = self.mem
        now = int(self.env.now)
        f = mem.flags[pids] & ~np.uint8(PG_DIRTY)
        mem.flags[pids] = f | np.uint8(PG_WRITEBACK)
        mem.nr_writeback += len(pids)
        self.vmstat[PGPGOUT] += (PAGE_SIZE >> 10) * len(pids)
        start = max(now, self._device_free)
        for i, pid in enumerate(pids.tolist()):
            self.schedule(start + (i + 1) * self.write_ns, partial(self._end_writeback, pid))
        self._device_free = start + len(pids) * self.write_ns

    def _dirty_unqueued(self) -> NDArray[np.bool_]:
        """Which of the file's folios are dirty and not under write-back."""
        f = self.mem.flags[self.base : self.base + self.nr_pages]
        return (f & (PG_DIRTY | PG_WRITEBACK)) == PG_DIRTY

    def _oldest(self, due: NDArray[np.bool_], n: int) -> NDArray[np.int64]:
        """The ``n`` oldest-dirtied of ``due`` (file order among equals), in file order."""
        idx = np.flatnonzero(due)
        if n < len(idx):
            idx = np.sort(idx[np.argsort(self.dirtied_at[idx], kind="stable")[:n]])
        return idx + self.base

    def flusher(self) -> ProcessGen:
        """``wb_workfn`` -> ``wb_do_writeback``: the flusher sleeps until its period or a
        wake-up, then ``wb_check_start_all`` (reclaim asked for all dirty data),
        ``wb_check_old_data_flush`` (once a period: the folios dirtied at least
        ``dirty_expire`` ago, in file order) and ``wb_check_background_flush`` (dirty page
        cache over ``bg_thresh``: the oldest, down to it). Writes go one after another at the
        device's write speed (``pgpgout``); each ends with ``folio_end_writeback``, which
        rotates a folio reclaim marked PG_reclaim to the inactive tail."""
        timer = self.env.timeout(self.dirty_writeback_ns)
        while True:
            self._kick = self.env.event()
            yield timer | self._kick
            now = int(self.env.now)
            if self._start_all:
                self._start_all = False
                due = self._dirty_unqueued()
                if due.any():
                    self.write_folios(np.flatnonzero(due) + self.base)
            if timer.processed:
                due = self._dirty_unqueued()
                due &= self.dirtied_at <= now - self.dirty_expire_ns
                if due.any():
                    self.write_folios(np.flatnonzero(due) + self.base)
                timer = self.env.timeout(self.dirty_writeback_ns)
            if self.dirty is not None:
                over = self.dirty.over_bg_thresh()
                if over:
                    due = self._dirty_unqueued()
                    if due.any():
                        self.write_folios(self._oldest(due, over))

    def _end_writeback(self, pid: int) -> None:
        """The write of ``pid`` ended (``nr_written``), as ``folio_end_writeback``."""
        self.vmstat[NR_WRITTEN] += 1
        self.vmscan.folio_end_writeback(pid, self.mem.pfn.item(pid))
