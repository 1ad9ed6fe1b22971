"""Dirty page-cache limits: the node's dirty thresholds, background write-back, the writer's
throttle in ``balance_dirty_pages`` and reclaim's wake-up of the flushers.

Models
    The host's ``vm.dirty_background_ratio`` and ``vm.dirty_ratio`` (``host`` settings) of the
    dirtyable memory (``global_dirtyable_memory``: free pages above the reserve, plus the file
    LRU pages) give ``bg_thresh`` and ``thresh`` (``domain_dirty_limits``, in the kernel's
    fixed-point arithmetic). Dirty page cache over ``bg_thresh`` starts background write-back
    at once (``wb_start_background_writeback``): the flusher writes the oldest dirty folios
    until the dirty page cache is back at ``bg_thresh`` (``wb_over_bg_thresh``). A writer whose
    dirty and write-back pages exceed the freerun ceiling (halfway between the two thresholds)
    is paused in ``balance_dirty_pages``: the pause is the kernel's period for the pages it
    dirtied at the task rate limit, the write bandwidth scaled by the global control line
    (``wb_position_ratio``'s cubic ``pos_ratio``: 1 at the setpoint halfway between freerun and
    the limit, 0 at the limit), less the time the writer spent since its last pause, at most
    ``wb_max_pause`` (200 ms); at or over the limit it sleeps ``max_pause`` until it is below.
    Reclaim that took only dirty, unqueued file folios wakes every flusher to write all dirty
    data (``wakeup_flusher_threads(WB_REASON_VMSCAN)`` -> ``wb_check_start_all``).

Kernel reference
    mm/page-writeback.c: ``global_dirtyable_memory``, ``domain_dirty_limits``,
    ``dirty_freerun_ceiling``, ``wb_position_ratio``, ``wb_max_pause``,
    ``balance_dirty_pages``, ``wb_over_bg_thresh``; fs/fs-writeback.c:
    ``wakeup_flusher_threads``, ``wb_start_background_writeback``, ``wb_check_start_all``,
    ``wb_check_background_flush``, ``wb_writeback``; mm/page_alloc.c:
    ``calculate_totalreserve_pages``.

Simplifications
    The bounded form of the throttle: one global domain (no per-wb share ``wb_thresh``, no wb
    control line, no memcg domain, no strictlimit), the task rate limit's base taken as the
    file device's write bandwidth (``dirty_ratelimit``'s fixed point with one dirtier, not
    estimated), no ``min_pause`` (a pause of a jiffy or more is slept), and the limit is
    ``thresh`` itself (``hard_dirty_limit`` follows it without its slow decay). The writer calls
    ``balance_dirty_pages`` once per batch it dirtied pages in, not every
    ``nr_dirtied_pause`` pages. Background write-back submits exactly the excess over
    ``bg_thresh`` (the kernel writes in chunks of at least 4 MiB and checks between them), and
    a submitted folio counts as under write-back at once (its write still queues behind the
    flusher's others on the file's device). The pause is the writer's own time, not PSI memory
    stall (the kernel sleeps in ``io_schedule_timeout``); no vmstat counter counts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sim.host.memory import PAGE_SIZE, PG_DIRTY, HostMemory

if TYPE_CHECKING:
    from sim.host.filemap import FileReader

HZ = 250  # as kswapd.py: one jiffy is 4 ms
JIFFY_NS = 1_000_000_000 // HZ
MAX_PAUSE = max(HZ // 5, 1)  # the longest balance_dirty_pages sleep, in jiffies (200 ms)
RATELIMIT_CALC_SHIFT = 10


def global_dirtyable_memory(nr_free: int, totalreserve: int, nr_file_lru: int) -> int:
    """``global_dirtyable_memory``: free pages less the reserve (never below 0), plus the file
    LRU pages, plus one so that it is never 0. ``totalreserve_pages`` is each zone's high
    watermark plus its largest lowmem reserve (``calculate_totalreserve_pages``): memsim's one
    zone has no reserves, so the high watermark."""
    return nr_free - min(nr_free, totalreserve) + nr_file_lru + 1


def domain_dirty_limits(avail: int, dirty_ratio: int, background_ratio: int) -> tuple[int, int]:
    """``domain_dirty_limits`` for the global domain: ``(thresh, bg_thresh)`` in pages.

    The ratios are turned into fractions of PAGE_SIZE first (``ratio = vm_dirty_ratio *
    PAGE_SIZE / 100``) and applied as ``ratio * avail / PAGE_SIZE``, so the thresholds round
    down as the kernel's do; a background threshold at or above the limit is halved from it.
    """
    ratio = dirty_ratio * PAGE_SIZE // 100
    bg_ratio = background_ratio * PAGE_SIZE // 100
    thresh = ratio * avail // PAGE_SIZE
    bg_thresh = bg_ratio * avail // PAGE_SIZE
    if bg_thresh >= thresh:
        bg_thresh = thresh // 2
    return thresh, bg_thresh


def dirty_freerun_ceiling(thresh: int, bg_thresh: int) -> int:
    """``dirty_freerun_ceiling``: below it a writer is never throttled."""
    return (thresh + bg_thresh) // 2


def _div_trunc(a: int, b: int) -> int:
    """C's signed division (``div64_s64``), truncating toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def pos_ratio(dirty: int, thresh: int, bg_thresh: int) -> int:
    """``wb_position_ratio``'s global control line, in units of 1 << RATELIMIT_CALC_SHIFT:
    ``1 + ((setpoint - dirty) / (limit - setpoint))^3``, clamped to [0, 2]; 0 at or over the
    limit."""
    freerun = dirty_freerun_ceiling(thresh, bg_thresh)
    limit = thresh  # hard_dirty_limit, without its slow decay
    if dirty >= limit:
        return 0
    setpoint = (freerun + limit) // 2
    x = _div_trunc((setpoint - dirty) << RATELIMIT_CALC_SHIFT, (limit - setpoint) | 1)
    pos = x
    pos = (pos * x) >> RATELIMIT_CALC_SHIFT
    pos = (pos * x) >> RATELIMIT_CALC_SHIFT
    pos += 1 << RATELIMIT_CALC_SHIFT
    return min(max(pos, 0), 2 << RATELIMIT_CALC_SHIFT)


def wb_max_pause(wb_dirty: int, bw_pages_per_s: int) -> int:
    """``wb_max_pause`` in jiffies: long enough to keep the device busy with the dirty pages of
    the wb (``wb_dirty / (1 + bw / roundup_pow_of_two(1 + HZ / 8))``, plus one), at most
    MAX_PAUSE."""
    t = wb_dirty // (1 + bw_pages_per_s // _roundup_pow_of_two(1 + HZ // 8)) + 1
    return min(t, MAX_PAUSE)


def _roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def dirty_pause(
    dirty: int,
    thresh: int,
    bg_thresh: int,
    *,
    pages_dirtied: int,
    bw_pages_per_s: int,
    wb_dirty: int,
    since_pause: int | None,
) -> tuple[int, int]:
    """``balance_dirty_pages``' throttled branch: ``(pause, period)`` in jiffies for a writer
    that dirtied ``pages_dirtied`` pages, ``since_pause`` jiffies after its last pause (None:
    never paused). ``task_ratelimit`` is the write bandwidth times ``pos_ratio``; 0 (at or over
    the limit) pauses ``max_pause`` with period 0 (the writer tries again). Otherwise the period
    is ``HZ * pages_dirtied / task_ratelimit``, the pause that less ``since_pause``, at most
    ``max_pause``; a pause below one jiffy is not slept (returned as is, <= 0)."""
    ratelimit = (bw_pages_per_s * pos_ratio(dirty, thresh, bg_thresh)) >> RATELIMIT_CALC_SHIFT
    max_pause = wb_max_pause(wb_dirty, bw_pages_per_s)
    if ratelimit == 0:
        return max_pause, 0
    period = HZ * pages_dirtied // ratelimit
    pause = period - (since_pause or 0)
    return (min(pause, max_pause) if pause >= 1 else pause), period


@dataclass(frozen=True, slots=True)
class DirtyState:
    """One reading of the global dirty domain (``struct dirty_throttle_control``)."""

    avail: int  # global_dirtyable_memory
    thresh: int
    bg_thresh: int
    nr_dirty: int  # NR_FILE_DIRTY
    dirty: int  # NR_FILE_DIRTY + NR_WRITEBACK (what balance_dirty_pages compares)

    @property
    def freerun(self) -> bool:
        """Dirty and write-back pages at or below the freerun ceiling."""
        return self.dirty <= dirty_freerun_ceiling(self.thresh, self.bg_thresh)


class DirtyControl:
    """The node's dirty page-cache limits and its flushers (one per file: its own device).

    Args:
        mem: host memory.
        dirty_ratio: ``vm.dirty_ratio`` (percent of the dirtyable memory).
        dirty_background_ratio: ``vm.dirty_background_ratio``.
    """

    def __init__(self, mem: HostMemory, *, dirty_ratio: int, dirty_background_ratio: int) -> None:
        self.mem = mem
        self.dirty_ratio, self.dirty_background_ratio = dirty_ratio, dirty_background_ratio
        self.readers: Sequence[FileReader] = ()  # the files (each with its flusher)

    def nr_file_dirty(self) -> int:
        """NR_FILE_DIRTY: page-cache folios with PG_dirty (read from the flags, not counted)."""
        fb = self.mem.file_base
        return int(np.count_nonzero(self.mem.flags[fb:] & PG_DIRTY))

    def nr_file_lru(self) -> int:
        """NR_INACTIVE_FILE + NR_ACTIVE_FILE: every resident page-cache folio."""
        mem = self.mem
        if mem.file_base >= mem.nr_pages:
            return 0
        return int(mem.nr_resident[mem.page_owner(mem.file_base) :].sum())

    def state(self) -> DirtyState:
        """The domain now: ``global_dirtyable_memory`` and ``domain_dirty_limits``."""
        mem = self.mem
        avail = global_dirtyable_memory(mem.nr_free, mem.wmark.high, self.nr_file_lru())
        thresh, bg = domain_dirty_limits(avail, self.dirty_ratio, self.dirty_background_ratio)
        nr_dirty = self.nr_file_dirty()
        return DirtyState(avail, thresh, bg, nr_dirty, nr_dirty + mem.nr_writeback)

    def over_bg_thresh(self) -> int:
        """``wb_over_bg_thresh`` (global part): how many dirty page-cache folios are above
        ``bg_thresh`` (0: not over)."""
        st = self.state()
        return max(0, st.nr_dirty - st.bg_thresh)

    def wakeup_flusher_threads(self) -> None:
        """``wakeup_flusher_threads(WB_REASON_VMSCAN)``: every flusher with dirty data writes
        all of it (``wb_start_writeback`` -> ``wb_check_start_all``)."""
        for r in self.readers:
            r.wb_start_all()

    def wb_start_background_writeback(self) -> None:
        """Wake every flusher for background write-back (one global domain)."""
        for r in self.readers:
            r.wb_start_background()

    def pageout(self, pids: np.ndarray) -> None:
        """kswapd's ``pageout`` of dirty page-cache folios: each is written by its file's
        device, as the flusher's writes are."""
        for r in self.readers:
            mine = pids[(pids >= r.base) & (pids < r.base + r.nr_pages)]
            if len(mine):
                r.write_folios(mine, reclaim=True)
