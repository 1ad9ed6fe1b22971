"""Compressed swap in host RAM: the zsmalloc pool behind zram and zswap, and its compressor.

Models
    A page stored compressed is an object of its compressed size in a pool whose memory is
    host frames: the pool holds ``ceil(bytes stored / PAGE_SIZE)`` frames, taken from the
    host's free frames as it grows and given back as it shrinks (``zs_malloc``/``zs_free``
    allocating and releasing zspages). What a page compresses to is the page's own property:
    each guest page's ratio is drawn once, from the run's seed, from a lognormal distribution
    with its VM's ``compress_ratio`` (mean) and ``compress_ratio_cv`` (spread); a page whose
    ratio falls below 1 does not compress and takes a whole page (zram stores it as is, a
    ``huge`` object; so does zswap since 6.18, which rejected it before,
    ``zswap_reject_compress_poor``). Compressing and
    decompressing cost CPU time per page (:class:`CompressorConfig`), charged to the task
    that does it: the reclaimer on a store, the faulting vCPU on a load.

Kernel reference
    mm/zsmalloc.c (``zs_malloc``, ``zs_free``, ``zs_get_total_pages``), drivers/block/zram
    (``zram_write_page``: incompressible pages stored whole), mm/zswap.c (``zswap_compress``:
    ``dlen >= PAGE_SIZE`` stored as is since 6.18, rejected before).

Simplifications
    Perfect packing: no size-class waste or fragmentation (zsmalloc wastes a few percent, more
    for unlucky sizes, until compaction). A page's contents, hence its ratio, never change. The
    pool takes its frames without reclaim, after the reclaim batch that stores its pages freed
    theirs, so it never fails for want of memory; zram's ``mem_limit`` is not modelled.

Invariants
    ``total_bytes`` is the sum of the stored pages' sizes; the pool holds exactly
    ``ceil(total_bytes / PAGE_SIZE)`` frames, each marked as the pool's in ``frame_pid``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from sim.host.memory import PAGE_SIZE, HostMemory
from sim.schema import Strict

MAX_COMPRESS_NS = 10**7  # 10 ms per 4 KiB page is a typo


class CompressorConfig(Strict):
    """The compressor of zram and zswap: CPU cost per 4 KiB page (lz4/lzo-rle class)."""

    compress_ns: int = Field(
        6000,
        ge=0,
        le=MAX_COMPRESS_NS,
        description="Compressing one 4 KiB page (lzo-rle/lz4 at ~0.7 GB/s on one core; zstd "
        "~2x slower) [EST]; charged to the reclaiming task (kswapd, or direct reclaim's stall).",
    )
    decompress_ns: int = Field(
        1500,
        ge=0,
        le=MAX_COMPRESS_NS,
        description="Decompressing one 4 KiB page (lz4/lzo-rle at ~3 GB/s) [EST]; the "
        "faulting vCPU waits for it instead of a device read.",
    )


def compressed_sizes(
    nr_pages: int,
    ratio_mean: float,
    ratio_cv: float,
    rng: np.random.Generator,
) -> NDArray[np.uint32]:
    """Each page's compressed size in bytes: ``PAGE_SIZE / ratio`` with the ratio lognormal of
    mean ``ratio_mean`` and coefficient of variation ``ratio_cv``, at most a whole page."""
    if ratio_cv <= 0.0:
        ratio = np.full(nr_pages, ratio_mean)
    else:
        sigma2 = math.log1p(ratio_cv * ratio_cv)
        ratio = rng.lognormal(math.log(ratio_mean) - sigma2 / 2.0, math.sqrt(sigma2), nr_pages)
    size = np.ceil(PAGE_SIZE / np.maximum(ratio, 1.0))
    return np.minimum(size, PAGE_SIZE).astype(np.uint32)


class Zpool:
    """The compressed objects of swapped pages, in frames taken from the host.

    Args:
        mem: host memory (where the pool's frames come from).
        obj_bytes: every page's compressed size (:func:`compressed_sizes`, per VM).
    """

    def __init__(
        self,
        mem: HostMemory,
        obj_bytes: NDArray[np.uint32],
        *,
        track_lru: bool = False,
    ) -> None:
        self.mem, self.obj_bytes = mem, obj_bytes
        # zswap's LRU, oldest store first: a queue of (page, store number) with lazy removal,
        # an entry live while its page is stored under that number (no object per page)
        self.track_lru = track_lru
        self._seq = np.zeros(len(obj_bytes) if track_lru else 0, dtype=np.int64)
        self._lru_pid = np.empty(1024 if track_lru else 0, dtype=np.int64)
        self._lru_seq = np.empty_like(self._lru_pid)
        self._head = self._tail = 0
        self._next_seq = 1
        self.stored = np.zeros(len(obj_bytes), dtype=np.bool_)
        self.total_bytes = 0
        self.nr_stored = 0
        self._frames: list[int] = []  # the pool's pfns, most recently taken last

    @property
    def nr_frames(self) -> int:
        """Host frames the pool holds (``zs_get_total_pages``)."""
        return len(self._frames)

    def nr_incompressible(self) -> int:
        """Stored pages kept as they are, a whole page each (zram's ``huge_pages`` in
        ``mm_stat``; zswap's debugfs ``stored_incompressible_pages``), read when asked: a
        page's size never changes, so this is a count over the stored pages."""
        return int(np.count_nonzero(self.obj_bytes[self.stored] >= PAGE_SIZE))

    def frames_needed(self, extra_bytes: int = 0) -> int:
        """Frames for what is stored, plus ``extra_bytes``."""
        return -(-(self.total_bytes + extra_bytes) // PAGE_SIZE)

    def store(self, pids: NDArray[np.integer]) -> None:
        """``zs_malloc`` an object for each page; the caller fits the frames (:meth:`fit`)."""
        if len(pids) == 0:
            return
        again = pids[self.stored[pids]]  # rewritten: the old object is freed first
        self.total_bytes -= int(self.obj_bytes[again].sum(dtype=np.int64))
        self.nr_stored -= len(again)
        self.stored[pids] = True
        self.total_bytes += int(self.obj_bytes[pids].sum(dtype=np.int64))
        self.nr_stored += len(pids)
        if self.track_lru:
            self._lru_add(np.asarray(pids, dtype=np.int64))

    def free(self, pids: NDArray[np.integer] | Sequence[int]) -> int:
        """``zs_free`` the objects of those of ``pids`` that are stored; frames the pool no
        longer needs go back to the host at once (it never grows here: a reclaim batch's
        stores take their frames when the batch has freed its own, :meth:`fit`). Returns how
        many were stored."""
        p = np.asarray(pids, dtype=np.int64)
        sel = p[self.stored[p]]
        if len(sel):
            self.stored[sel] = False
            self.total_bytes -= int(self.obj_bytes[sel].sum(dtype=np.int64))
            self.nr_stored -= len(sel)
            self._shrink()
        return len(sel)

    def _live(self, lo: int, hi: int) -> NDArray[np.bool_]:
        p = self._lru_pid[lo:hi]
        return self.stored[p] & (self._seq[p] == self._lru_seq[lo:hi])

    def _lru_add(self, pids: NDArray[np.int64]) -> None:
        """Put pages at the LRU head (the end of the queue); a page already there moves."""
        k = len(pids)
        if self._tail + k > len(self._lru_pid):  # compact, then grow if still short
            live = self._live(self._head, self._tail)
            keep_p = self._lru_pid[self._head : self._tail][live]
            keep_s = self._lru_seq[self._head : self._tail][live]
            size = max(len(self._lru_pid), 2 * (len(keep_p) + k))
            self._lru_pid = np.empty(size, dtype=np.int64)
            self._lru_seq = np.empty(size, dtype=np.int64)
            n = len(keep_p)
            self._lru_pid[:n], self._lru_seq[:n] = keep_p, keep_s
            self._head, self._tail = 0, n
        seqs = np.arange(self._next_seq, self._next_seq + k, dtype=np.int64)
        self._next_seq += k
        self._seq[pids] = seqs
        self._lru_pid[self._tail : self._tail + k] = pids
        self._lru_seq[self._tail : self._tail + k] = seqs
        self._tail += k

    def lru_oldest(self) -> int | None:
        """The page stored longest ago (zswap's LRU tail), or None if the pool is empty."""
        while self._head < self._tail:
            pid = self._lru_pid.item(self._head)
            if self.stored.item(pid) and self._seq.item(pid) == self._lru_seq.item(self._head):
                return pid
            self._head += 1
        return None

    def lru_order(self) -> list[int]:
        """The stored pages, oldest store first (tests)."""
        live = self._live(self._head, self._tail)
        return self._lru_pid[self._head : self._tail][live].tolist()

    def fit(self) -> None:
        """Take or give back frames so that the pool holds exactly what it needs."""
        need = self.frames_needed()
        while len(self._frames) < need:
            self._frames.append(self.mem.alloc_pool_frame())
        self._shrink()

    def _shrink(self) -> None:
        need = self.frames_needed()
        mem = self.mem
        if len(self._frames) > need:
            back = self._frames[need:]
            del self._frames[need:]
            mem.free_pool_frames(np.array(back, dtype=np.int64))

    def check(self) -> None:
        """Assert the pool's invariants (tests)."""
        assert self.nr_stored == int(self.stored.sum()), "zpool object count"
        want = int(self.obj_bytes[self.stored].sum(dtype=np.int64))
        assert self.total_bytes == want, "zpool bytes"
        assert len(self._frames) == self.frames_needed(), "zpool frames do not fit its bytes"
        assert len(self._frames) == self.mem.nr_pool, "zpool frames and host pool count"
        if self.track_lru:
            assert len(self.lru_order()) == self.nr_stored, "zswap LRU and entries disagree"
