"""The guest's virtual disk through the host page cache: QEMU's image with cache=writeback.

Models
    QEMU opens a disk image with O_DIRECT only when the cache mode sets ``BDRV_O_NOCACHE``
    (``cache=none``; block/file-posix.c ``raw_parse_flags``). In the default ``writeback``
    mode, and in ``writethrough``, the image is an ordinary host file: the ``preadv`` and
    ``pwritev`` QEMU's worker threads issue for each virtio-blk request (``raw_co_prw``) go
    through the host page cache. The same data is then cached twice, once in the guest's RAM
    (its swap cache, its page cache) and once in the host's, and the host's copy is host memory
    charged to the VM's memcg (QEMU runs in it) that host reclaim has to drop or write back.

    The image has one page per virtual-disk page: the guest's swap area (slot ``s`` at page
    ``s``, slot 0 its header) and then the guest's file (block ``k`` at page ``nr_slots + 1 +
    k``), so a page keeps its offset for as long as the guest keeps the data there. Its pages
    are host page-cache pids after those of ``host_files`` (a pseudo-mm of its own per image):
    frames, the host's file LRU, workingset shadows and the memcg charge are the host page
    cache's own (sim/host/filemap.py), and so are its dirty accounting, flusher and
    ``balance_dirty_pages`` (sim/host/page_writeback.py).

    A guest read (a swap-in with the pages it reads ahead, a page-cache miss) is one request.
    ``filemap_read``: each page whose folio is in the host page cache is copied from it
    (``folio_mark_accessed``; no device I/O, and no host counter: the kernel counts none for a
    hit). The others are read from the image's device in one request (the virtual disk's queue
    and latencies, shared with the host's swap device under ``guest.disk: host_swap``),
    ``pgpgin`` each, then each gets a folio (the host's page allocator: watermarks, kswapd,
    direct reclaim, the memcg's charge and memory.high) on the file LRU, a recent shadow being
    a host ``workingset_refault_file``. The request completes when all its pages are in,
    plus the copy into guest RAM.

    A guest write (a swap-out) is ``generic_perform_write``: each page's folio is found or
    allocated (a whole-page write reads nothing first), copied into and dirtied
    (``folio_mark_dirty``: ``nr_dirtied``); then QEMU's thread calls ``balance_dirty_pages``,
    which may pause it, and the request completes. Writeback leaves the dirty folios to the
    host: the flusher's periodic and background write-back, reclaim's wake-up of the
    flushers and kswapd's ``pageout`` write them to the image's device (``pgpgout`` at
    submission, ``nr_written`` at the end), and host reclaim drops clean ones like any page
    cache. Writethrough (``cache.writeback=off``: QEMU flushes after every write,
    ``bdrv_co_flush`` -> ``fdatasync``) writes the request's dirty folios at once and
    completes when they are on the device; they stay cached, clean.

Sources
    QEMU block.c ``bdrv_parse_cache_mode`` (none: ``BDRV_O_NOCACHE``; writethrough: no
    write cache, a flush after each write), block/file-posix.c ``raw_open_common``,
    ``raw_parse_flags``, ``raw_co_prw``, hw/block/virtio-blk.c. Linux mm/filemap.c
    ``filemap_read``, ``filemap_get_pages``, ``filemap_add_folio``, ``generic_perform_write``;
    mm/page-writeback.c ``folio_mark_dirty``, ``balance_dirty_pages_ratelimited``;
    fs/sync.c ``vfs_fsync_range``; mm/workingset.c ``workingset_refault``.

Simplifications
    A hit costs QEMU only the copy (``clear_page_ns`` per page: memory bandwidth, as zeroing
    a page); the per-request overhead of virtio and QEMU, part of the virtual disk's
    latencies, is not charged to a hit. A written folio is marked accessed as a read one is.
    QEMU's worker threads add folios to the page cache one request at a time (one task
    charging the memcg). The device read of a miss completes before its folio is allocated
    (as host_files' reader). A writethrough write of a folio still under write-back from an
    earlier write leaves it dirty for the flusher instead of waiting for that write. No
    readahead on the host side (the guest's own swap readahead makes larger requests); the
    image's flusher writes to the virtual disk's queue at its write latency, and its write
    bandwidth for the throttle is the queue depth over that latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import simpy
from numpy.typing import NDArray

from sim.host.filemap import FileLru, FileReader
from sim.host.kswapd import ProcessGen
from sim.host.memory import NO_PFN_INT, PAGE_SIZE, PG_DIRTY, PG_RESIDENT, PG_WRITEBACK, HostMemory
from sim.host.page_alloc import PageAllocator
from sim.host.swap import SwapDevice
from sim.host.vmscan import Schedule, Vmscan
from sim.host.vmstat import VmEvents
from sim.reclaim.two_list import PGPGIN, PGPGOUT

if TYPE_CHECKING:
    from sim.host.memcontrol import MemCgroups
    from sim.host.mm import Mm
    from sim.host.page_writeback import DirtyControl


class _NoStream:
    """An image has no access stream of its own: the guest's requests read and write it."""

    def next(self, n: int) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        raise AssertionError("a disk image is read by the guest's requests, not a stream")


class DiskImage(FileReader):
    """One VM's disk image in the host page cache, as QEMU reads and writes it.

    Args:
        env: simulation environment.
        mem: host memory.
        alloc: the host's page allocator (charges the VM's memcg, if it has one).
        policy: the host policy keeping the file LRU.
        swap: the host's swap device (whether anon counts in a file refault's workingset).
        vmstat: host counters.
        disk: the virtual disk's device (its queue and latencies: the image's device).
        vmscan: the host's reclaim (``folio_end_writeback``).
        schedule: ``schedule(t_ns, fn)`` runs ``fn`` at ``t_ns``.
        dirty_writeback_ns: the flusher's period.
        dirty_expire_ns: the age of dirty data the flusher writes.
        base: the image's first host pid (page offset 0).
        nr_pages: the image's size in pages.
        owner: the VM (its QEMU stops when it is killed).
        copy_ns: QEMU's copy of one page between guest RAM and the page cache.
        writethrough: a write completes only when it is on the device.
        memcg: the memcgs, when the VM has one (memory.high on the way back).
        dirty: the node's dirty limits.
    """

    def __init__(
        self,
        env: simpy.Environment,
        mem: HostMemory,
        alloc: PageAllocator,
        policy: FileLru,
        swap: SwapDevice,
        vmstat: VmEvents,
        *,
        disk: SwapDevice,
        vmscan: Vmscan,
        schedule: Schedule,
        dirty_writeback_ns: int,
        dirty_expire_ns: int,
        base: int,
        nr_pages: int,
        owner: Mm,
        copy_ns: int,
        writethrough: bool = False,
        memcg: MemCgroups | None = None,
        dirty: DirtyControl | None = None,
    ) -> None:
        cfg = disk.cfg
        super().__init__(
            env,
            mem,
            alloc,
            policy,
            swap,
            vmstat,
            _NoStream(),
            access_rate_per_s=1,
            batch=1,
            read_latency_ns=max(1, round(cfg.read_latency_us * 1e3)),
            vmscan=vmscan,
            schedule=schedule,
            write_ns=max(1, round(cfg.write_latency_us * 1e3 / cfg.queue_depth)),
            dirty_writeback_ns=dirty_writeback_ns,
            dirty_expire_ns=dirty_expire_ns,
            base=base,
            nr_pages=nr_pages,
            memcg=memcg,
            owner=owner,
            dirty=dirty,
        )
        self.disk, self.copy_ns, self.writethrough = disk, copy_ns, writethrough
        self._busy: dict[int, simpy.Event] = {}  # pids whose folio is being read or added
        self._thread = simpy.Resource(env, capacity=1)  # the task adding folios

    def read(self, offsets: Sequence[int]) -> ProcessGen:
        """One guest read of the image's pages ``offsets`` (``preadv``): hits are copied, the
        misses read from the device and added to the page cache. Returns the hits."""
        env, mem, policy = self.env, self.mem, self.policy
        waits: list[simpy.Event] = []
        misses: list[int] = []
        hits = 0
        for pid in (self.base + o for o in offsets):
            ev = self._busy.get(pid)
            if ev is not None:  # another request is reading or adding it: wait for that
                waits.append(ev)
            elif mem.flags.item(pid) & PG_RESIDENT:
                policy.folio_mark_accessed(mem.pfn.item(pid))
                hits += 1
            else:
                misses.append(pid)
                self._busy[pid] = env.event()
        if misses:
            now = int(env.now)
            done = max(self.disk.submit(now, write=False, n=len(misses), swap_io=False))
            yield env.timeout(done - now)
            self.vmstat[PGPGIN] += (PAGE_SIZE >> 10) * len(misses)
            yield from self._add_folios(misses, dirty=False)
        for ev in waits:
            if not ev.processed:
                yield ev
        yield env.timeout(self.copy_ns * len(offsets))
        return hits

    def write(self, offsets: Sequence[int]) -> ProcessGen:
        """One guest write of the image's pages ``offsets`` (``pwritev``): each folio found or
        allocated and dirtied, then ``balance_dirty_pages``; with writethrough the dirty
        folios are written and waited for."""
        env, mem = self.env, self.mem
        pids = [self.base + o for o in offsets]
        if self.owner is not None and self.owner.dead:
            return
        while True:  # a folio being read or added: wait for it (the folio lock)
            ev = next((self._busy[p] for p in pids if p in self._busy), None)
            if ev is None:
                break
            yield ev
        new = [p for p in pids if not mem.flags.item(p) & PG_RESIDENT]
        for p in pids:
            if mem.flags.item(p) & PG_RESIDENT:
                self.policy.folio_mark_accessed(mem.pfn.item(p))
                self.folio_mark_dirty(p)
        for p in new:
            self._busy[p] = env.event()
        if new:
            yield from self._add_folios(new, dirty=True)
        yield env.timeout(self.copy_ns * len(pids))
        if self.owner is not None and self.owner.dead:
            return
        if self._nr_dirtied and self.dirty is not None:
            yield from self.balance_dirty_pages()
        if self.writethrough:  # the flush after the write: its dirty folios, on the device
            p = np.array(pids, dtype=np.int64)
            p = p[(mem.flags[p] & (PG_DIRTY | PG_WRITEBACK)) == PG_DIRTY]
            if len(p):
                now = int(env.now)
                done = max(self._submit_writes(p))
                yield env.timeout(done - now)

    def _add_folios(self, pids: list[int], *, dirty: bool) -> ProcessGen:
        """``filemap_add_folio`` for each of ``pids`` (marked busy by the caller), one task at
        a time: a frame from the host's allocator (charged to the VM's memcg), onto the file
        LRU (a refault if its shadow is recent), marked accessed, dirtied for a write; then
        memory.high's penalty on the way back. A killed VM's QEMU adds nothing."""
        mem, policy, owner = self.mem, self.policy, self.owner
        try:
            with self._thread.request() as req:
                yield req
                for pid in pids:
                    if owner is not None and owner.dead:
                        break
                    old = mem.pfn.item(pid)
                    shadow = None if old == NO_PFN_INT else old
                    pfn = yield from self.alloc.alloc(pid)
                    if pfn < 0:  # the VM was killed by its memcg's OOM while charging
                        break
                    policy.file_add_lru(pfn, shadow, self.swap.nr_free_slots > 0)
                    policy.folio_mark_accessed(pfn)
                    if dirty:
                        self.folio_mark_dirty(pid)
        finally:
            for pid in pids:
                self._busy.pop(pid).succeed()
        if self.memcg is not None and owner is not None and not owner.dead:
            yield from self.memcg.handle_over_high(owner.index)

    def write_folios(self, pids: NDArray[np.int64], *, reclaim: bool = False) -> None:
        """Submit writes of dirty folios to the image's device, the virtual disk's queue
        (``pgpgout`` at submission); PG_dirty becomes PG_writeback, and each write ends in
        ``folio_end_writeback`` (``nr_written``)."""
        self._submit_writes(pids)

    def _submit_writes(self, pids: NDArray[np.int64]) -> list[int]:
        """:meth:`write_folios`; returns when each write ends."""
        mem = self.mem
        now = int(self.env.now)
        f = mem.flags[pids] & ~np.uint8(PG_DIRTY)
        mem.flags[pids] = f | np.uint8(PG_WRITEBACK)
        mem.nr_writeback += len(pids)
        self.vmstat[PGPGOUT] += (PAGE_SIZE >> 10) * len(pids)
        ends = self.disk.submit(now, write=True, n=len(pids), swap_io=False)
        for pid, t in zip(pids.tolist(), ends, strict=True):
            self.schedule(t, partial(self._end_writeback, pid))
        return ends
