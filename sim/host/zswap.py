"""zswap: a compressed cache in host RAM in front of the swap device.

Models
    ``zswap_store`` on every swap-out write (``swap_writepage``): if the pool has reached
    ``max_pool_percent`` of host memory it rejects the page (and stays "full", rejecting, until
    it shrinks to ``accept_threshold_percent`` of that limit: ``zswap_check_limits``) and wakes
    the shrink worker; otherwise the page is compressed (the reclaimer's CPU) and stored
    (``zswpout``), and the folio's "write" is done before ``pageout`` returns. A page that does
    not compress below a page is stored as it is, in a page-sized object, since 6.18
    (``zswap_compress``: so that write-back keeps the pool's LRU order; the kernel's debugfs
    ``stored_incompressible_pages`` counts them), and rejected before
    (``zswap_reject_compress_poor``; ``store_incompressible: false``). A rejected page is
    written to the device as without zswap. A large folio (host.thp) is stored whole or not at
    all (:meth:`Zswap.store_folio`, ``zswap_store`` since 6.13): the limit checked once for it,
    and, where poorly compressing pages are rejected, one such page failing all of it, which
    then goes to the device as one request (``thp_swpout``); its pages come back 4 KiB at a
    time (``do_swap_page`` reads a large folio only from a synchronous device, and not once
    zswap has been enabled). ``zswap_load`` on a swap-in: a page in the pool is decompressed by
    the faulting task, with no I/O (``zswpin``), and leaves the pool (the swap cache owns it
    now: the folio is dirty and keeps its slot). The shrink worker (``shrink_worker``) writes
    entries back from the pool's LRU tail (oldest stores first) to the device (``zswpwb``, and
    ``pswpout`` for each write) until the pool is at the accept threshold. The pool is a
    :class:`~sim.host.zpool.Zpool`: its memory is host frames.

    ``memory.zswap.writeback`` 0 (``vms[].memcg.zswap_writeback: false``; since 6.8, checked
    for the memcg and its ancestors by ``mem_cgroup_zswap_writeback_enabled``): the memcg's
    pages stay out of the device. ``zswap_compress`` does not store such a page as it is (it
    fails with -EINVAL: debugfs ``reject_compress_fail``, not ``reject_compress_poor``), a
    large folio with one such page fails whole, and the shrink worker writes none of its
    entries back (``shrink_memcg`` refuses the memcg; memsim's pool LRU is global, so the
    worker passes over its entries and takes the oldest of the others). What zswap did not
    take is activated by ``pageout`` (sim/host/vmscan.py), not written.

Counting
    ``zswpout``, ``zswpin``, ``zswpwb`` are vm events the kernel also counts per memcg
    (``count_objcg_events``): counted per VM here. ``zswap_pool_limit_hit`` and
    ``zswap_reject_compress_poor`` are the kernel's debugfs counters (``pool_limit_hit``,
    ``reject_compress_poor`` under /sys/kernel/debug/zswap), not vmstat: memsim keeps them in
    vmstat under these names, host-wide as the kernel does.

Kernel reference
    mm/zswap.c: ``zswap_store``, ``zswap_check_limits``, ``zswap_max_pages``,
    ``zswap_accept_thr_pages``, ``zswap_compress``, ``zswap_load``, ``shrink_worker``,
    ``zswap_writeback_entry``, ``zswap_invalidate``, ``shrink_memcg``; mm/page_io.c:
    ``swap_writeout`` (``swap_writepage`` in older kernels); mm/memcontrol.c:
    ``mem_cgroup_zswap_writeback_enabled``.

Simplifications
    The shrink worker runs at once, in the reclaim pass whose store found the pool full, and
    its decompression is priced into that pass (the kernel's kworker has its own CPU). A page
    written back needs no frame of its own (the kernel decompresses into a temporary swap-cache
    folio) and is on the device from then on, even while the write is in flight. The
    memcg-aware ``zswap_shrinker`` (off by default) and same-filled pages are not modelled. A
    page stored as it is comes back at the price of a decompression (the kernel copies it),
    and ``memory.zswap.writeback`` is one setting per VM memcg (the root's cannot be
    changed; memsim's memcgs have no other ancestors).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from sim.host.memory import PAGE_SIZE
from sim.host.vmstat import VmEvents, VmStat
from sim.host.zpool import Zpool
from sim.schema import Strict

ZSWAP_REJECT_COMPRESS_FAIL = "zswap_reject_compress_fail"
"""zswap's debugfs ``reject_compress_fail``: here the pages of a memcg with
memory.zswap.writeback 0 that do not compress below a page (``zswap_compress`` fails them
with -EINVAL, which its exit counts as a compression failure, not as ``reject_compress_poor``,
kept for -ENOSPC); a vmstat key only in worlds where some memcg turns write-back off."""


class ZswapConfig(Strict):
    """zswap's module parameters (``/sys/module/zswap/parameters``)."""

    enabled: bool = Field(False, description="zswap.enabled: compress swapped pages in RAM.")
    max_pool_percent: int = Field(
        20,
        ge=1,
        le=100,
        description="Largest pool, in percent of host memory (zswap.max_pool_percent).",
    )
    accept_threshold_percent: int = Field(
        90,
        ge=0,
        le=100,
        description="Once full, the pool accepts pages again only below this percent of its "
        "limit, and the shrink worker writes back to it (zswap.accept_threshold_percent).",
    )
    store_incompressible: bool = Field(
        True,
        description="A page that does not compress below a page is stored as it is, in a "
        "page-sized object (6.18+, zswap_compress); false: it is rejected and written to the "
        "device (zswap_reject_compress_poor), as before 6.18.",
    )


class Zswap:
    """The zswap pool of one host, its LRU and its limits.

    Args:
        cfg: module parameters.
        pool: where the compressed pages live (host frames).
        nr_frames: host memory in pages (``totalram_pages``).
        vmstat: the host's counters.
    """

    def __init__(self, cfg: ZswapConfig, pool: Zpool, nr_frames: int, vmstat: VmEvents) -> None:
        self.cfg, self.pool, self.vmstat = cfg, pool, vmstat
        self.max_pages = nr_frames * cfg.max_pool_percent // 100  # zswap_max_pages
        self.accept_thr_pages = self.max_pages * cfg.accept_threshold_percent // 100
        self.reached_full = False  # zswap_pool_reached_full
        self.as_is = cfg.store_incompressible
        # per page owner: its memcg's memory.zswap.writeback is 0 (None: none is)
        self.no_writeback: NDArray[np.bool_] | None = None

    def accepts(self, pids: NDArray[np.integer], no_writeback: bool = False) -> NDArray[np.bool_]:
        """Which of these pages (of one memcg, ``no_writeback``: its memory.zswap.writeback
        is 0) ``zswap_compress`` keeps once compressed: all of them when pages that do not
        shrink are stored as they are (6.18+, and only for a memcg that lets zswap write
        back), else those that shrink below a page."""
        if self.as_is and not no_writeback:
            return np.ones(len(pids), dtype=np.bool_)
        return self.pool.obj_bytes[pids] < PAGE_SIZE

    def check_limits(self) -> bool:
        """``zswap_check_limits``: is the pool full (with the accept-threshold hysteresis)?"""
        cur = self.pool.frames_needed()
        if cur >= self.max_pages:
            self.vmstat[VmStat.ZSWAP_POOL_LIMIT_HIT] += 1
            self.reached_full = True
        elif self.reached_full and cur <= self.accept_thr_pages:
            self.reached_full = False
        return self.reached_full

    def store(
        self, pids: NDArray[np.int32], owners: NDArray[np.intp]
    ) -> tuple[NDArray[np.bool_], int, bool]:
        """``zswap_store`` for pages being written out, in order.

        Returns which were stored, how many were compressed (the reclaimer's CPU) and whether
        the pool was found full (the caller then runs :meth:`shrink`).
        """
        pool, page, off = self.pool, PAGE_SIZE, self.no_writeback
        stored = np.zeros(len(pids), dtype=np.bool_)
        compressed = 0
        full = False
        for i, (pid, mm) in enumerate(zip(pids.tolist(), owners.tolist(), strict=True)):
            if self.check_limits():
                full = True
                continue
            compressed += 1
            if pool.obj_bytes.item(pid) >= page:
                if not self.as_is:
                    self.vmstat[VmStat.ZSWAP_REJECT_COMPRESS_POOR] += 1
                    continue
                if off is not None and off.item(mm):
                    self.vmstat[ZSWAP_REJECT_COMPRESS_FAIL] += 1
                    continue
            pool.store(np.array([pid], dtype=np.int64))
            stored[i] = True
            self.vmstat.count(VmStat.ZSWPOUT, 1, mm)
        return stored, compressed, full

    def store_folio(self, pids: NDArray[np.int64], mm: int) -> tuple[bool, int, bool]:
        """``zswap_store`` of a large folio (its pages ``pids``, of mm ``mm``): all of them or
        none, as since 6.13 (before, zswap refused every large folio). The pool limit is
        checked once for the folio (``zswap_check_limits``: a full pool refuses it whole and
        wakes the shrink worker); then each page is compressed in turn (``zswap_store_page``).
        Where poorly compressing pages are rejected (before 6.18), one that does not shrink
        below a page (``zswap_reject_compress_poor``) fails the folio: what was stored of it
        goes again (``check_old``: every offset of the folio is erased from the tree), and the
        folio is written to the device whole.

        Returns whether the folio was stored, how many pages were compressed, and whether
        the pool was found full."""
        if self.check_limits():
            return False, 0, True
        off = self.no_writeback is not None and self.no_writeback.item(mm)
        poor = np.flatnonzero(~self.accepts(pids, off))
        if len(poor):
            # as is but for write-back off: zswap_compress's -EINVAL; else -ENOSPC
            key = ZSWAP_REJECT_COMPRESS_FAIL if self.as_is else VmStat.ZSWAP_REJECT_COMPRESS_POOR
            self.vmstat[key] += 1
            self.pool.free(pids)  # check_old: no stale entry may outlive the failed store
            return False, int(poor[0]) + 1, False
        self.pool.store(pids)
        self.vmstat.count(VmStat.ZSWPOUT, len(pids), mm)
        return True, len(pids), False

    def load(self, pid: int, mm: int) -> bool:
        """``zswap_load``: if page ``pid`` is in the pool, take it out (``zswpin``)."""
        if not self.pool.stored.item(pid):
            return False
        self.pool.free((pid,))
        self.vmstat.count(VmStat.ZSWPIN, 1, mm)
        return True

    def shrink(
        self, owners: Callable[[NDArray[np.int64]], NDArray[np.intp]] | None = None
    ) -> list[int]:
        """``shrink_worker``: take entries off the pool's LRU tail until it is at the accept
        threshold; returns the pages to write to the device (``zswap_writeback_entry``).
        Entries of a memcg with memory.zswap.writeback 0 stay where they are: the kernel's
        ``shrink_memcg`` refuses such a memcg (its LRUs are per memcg), memsim's one LRU
        passes over its entries (``owners``: the page owner of each page)."""
        pool = self.pool
        out = []
        if self.no_writeback is not None:
            assert owners is not None
            order = np.array(pool.lru_order(), dtype=np.int64)
            for pid in order[~self.no_writeback[owners(order)]].tolist():
                if pool.frames_needed() <= self.accept_thr_pages:
                    break
                pool.free((pid,))
                out.append(pid)
            return out
        while pool.frames_needed() > self.accept_thr_pages:
            pid = pool.lru_oldest()
            if pid is None:
                break
            pool.free((pid,))
            out.append(pid)
        return out
