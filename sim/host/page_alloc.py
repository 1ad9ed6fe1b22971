"""The page allocator's order-0 path for guest faults: watermarks, kswapd wake-up, direct reclaim.

Models
    ``__alloc_pages``: the fast path takes a frame while free memory is above the low watermark;
    otherwise kswapd is woken and the slow path may still take one above the min watermark; at or
    below min the allocating task (a vCPU thread faulting guest memory in) enters direct reclaim
    and stalls for it. If reclaim made progress but frames are still short (their write-out is in
    flight), the task is throttled until write-back frees frames (``reclaim_throttle``, at most
    HZ/10). After more than MAX_RECLAIM_RETRIES rounds in a row without progress the OOM killer
    runs.

Kernel reference
    mm/page_alloc.c: ``__alloc_pages``, ``get_page_from_freelist``, ``__alloc_pages_slowpath``,
    ``should_reclaim_retry``; mm/vmscan.c: ``reclaim_throttle``; mm/oom_kill.c.

Simplifications
    No ``throttle_direct_reclaim`` (pfmemalloc wait): a task below half the min watermarks
    still reclaims itself instead of waiting for kswapd.

Invariants
    A frame is handed out only above the min watermark, unless the OOM killer has just freed
    memory (then above zero).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import simpy

from sim.host.kswapd import DirectReclaim, Kswapd, ProcessGen
from sim.host.memory import MAX_RECLAIM_RETRIES, HostMemory
from sim.host.vmstat import VmStat

THROTTLE_NS = 100_000_000  # reclaim_throttle(VMSCAN_THROTTLE_WRITEBACK): HZ/10


class PageAllocator:
    """Hands out frames to faulting tasks, waking kswapd and reclaiming directly as needed.

    Args:
        env: simulation environment.
        mem: host memory.
        kswapd: the node's kswapd.
        direct: direct reclaim.
        vmstat: host counters.
        oom_kill: kills a victim mm, returning False if there was nothing to kill.
    """

    def __init__(
        self,
        env: simpy.Environment,
        mem: HostMemory,
        kswapd: Kswapd,
        direct: DirectReclaim,
        vmstat: Counter[str],
        oom_kill: Callable[[], bool],
    ) -> None:
        self.env, self.mem, self.kswapd, self.direct = env, mem, kswapd, direct
        self.vmstat, self.oom_kill = vmstat, oom_kill
        self._freed: simpy.Event | None = None
        mem.on_free = self._frames_freed

    def _frames_freed(self, n: int) -> None:
        ev = self._freed
        if ev is not None and not ev.triggered:
            ev.succeed()

    def _throttle(self) -> ProcessGen:
        """Wait until some frames are freed (write-back completion) or HZ/10 passes."""
        if self._freed is None or self._freed.triggered:
            self._freed = self.env.event()
        self.vmstat[VmStat.RECLAIM_THROTTLE] += 1
        yield self._freed | self.env.timeout(THROTTLE_NS)

    def alloc_fast(self, pid: int) -> int:
        """The part of the allocation that never waits: a pfn, or -1 if reclaim is needed."""
        mem = self.mem
        if mem.nr_free > mem.wmark.low:
            return mem.alloc_frame(pid)
        self.kswapd.wakeup()
        if mem.nr_free > mem.wmark.min:
            return mem.alloc_frame(pid)
        return -1

    def alloc(self, pid: int) -> ProcessGen:
        """Allocate a frame for page ``pid``; may stall the caller. Returns the pfn."""
        pfn = self.alloc_fast(pid)
        if pfn >= 0:
            return pfn
        mem = self.mem
        wm = mem.wmark
        no_progress = 0
        while True:
            reclaimed = yield from self.direct.try_to_free_pages(self.kswapd)
            if mem.watermark_ok(wm.min):
                return mem.alloc_frame(pid)
            if reclaimed or mem.nr_writeback:
                yield from self._throttle()
                if mem.watermark_ok(wm.min):
                    return mem.alloc_frame(pid)
            # should_reclaim_retry: any progress resets the count; OOM after 16 in a row
            no_progress = 0 if reclaimed else no_progress + 1
            if no_progress > MAX_RECLAIM_RETRIES and not mem.nr_writeback:
                no_progress = 0
                self.oom_kill()
                if mem.nr_free > 0:  # the victim's memory (below min is fine after a kill)
                    return mem.alloc_frame(pid)
                yield from self._throttle()
            self.kswapd.wakeup()
