"""The page allocator's order-0 path for guest faults: watermarks, kswapd wake-up, direct reclaim.

Models
    ``__alloc_pages``: the fast path takes a frame while free memory is above the low watermark;
    otherwise kswapd is woken and the slow path may still take one above the min watermark; at or
    below min the allocating task (a vCPU thread faulting guest memory in) enters direct reclaim
    and stalls for it, then tries the free lists again. ``should_reclaim_retry`` decides whether
    to go round again: any progress resets the count of rounds without progress, more than
    MAX_RECLAIM_RETRIES of them in a row, or nothing reclaimable that could lift free memory to
    the min watermark (no swap left for anon pages), leads to the OOM killer.

Kernel reference
    mm/page_alloc.c: ``__alloc_pages``, ``get_page_from_freelist``, ``__alloc_pages_slowpath``,
    ``__alloc_pages_direct_reclaim``, ``should_reclaim_retry``, ``zone_reclaimable_pages``,
    ``__alloc_pages_may_oom``; mm/oom_kill.c.

Simplifications
    No ALLOC_OOM reserves: after a kill the task takes a frame if any is free; if nothing is
    left to kill, it waits for frames to be freed (at most HZ/10 at a time).

Invariants
    A frame is handed out only above the min watermark, unless the OOM killer has just freed
    memory (then above zero).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import simpy

from sim.host.kswapd import THROTTLE_WRITEBACK_NS, DirectReclaim, Kswapd, ProcessGen
from sim.host.memory import MAX_RECLAIM_RETRIES, HostMemory
from sim.host.vmstat import VmEvents

if TYPE_CHECKING:
    from sim.host.memcontrol import MemCgroups


class PageAllocator:
    """Hands out frames to faulting tasks, waking kswapd and reclaiming directly as needed.

    Args:
        env: simulation environment.
        mem: host memory.
        kswapd: the node's kswapd.
        direct: direct reclaim.
        vmstat: host counters.
        oom_kill: kills a victim mm, returning False if there was nothing to kill.
        reclaimable: pages reclaim could still free (``zone_reclaimable_pages``).
    """

    def __init__(
        self,
        env: simpy.Environment,
        mem: HostMemory,
        kswapd: Kswapd,
        direct: DirectReclaim,
        vmstat: VmEvents,
        oom_kill: Callable[[], bool],
        reclaimable: Callable[[], int],
    ) -> None:
        self.env, self.mem, self.kswapd, self.direct = env, mem, kswapd, direct
        self.vmstat, self.oom_kill, self.reclaimable = vmstat, oom_kill, reclaimable
        self._freed: simpy.Event | None = None
        self.memcg: MemCgroups | None = None  # the VMs' memcgs (charging), if any
        mem.on_free = self._frames_freed

    def _frames_freed(self, n: int) -> None:
        ev = self._freed
        if ev is not None and not ev.triggered:
            ev.succeed()

    def _wait_for_frames(self) -> ProcessGen:
        """Nothing left to kill: wait until some frames are freed, or HZ/10."""
        if self._freed is None or self._freed.triggered:
            self._freed = self.env.event()
        yield self._freed | self.env.timeout(THROTTLE_WRITEBACK_NS)

    def alloc_fast(self, pid: int) -> int:
        """The part of the allocation that never waits: a pfn, or -1 if reclaim is needed
        (the zone's, or the memcg's: a charge over memory.max or memory.high)."""
        if self.memcg is not None and not self.memcg.charge_fast(pid):
            return -1
        return self._alloc_zone_fast(pid)

    def _alloc_zone_fast(self, pid: int) -> int:
        """``get_page_from_freelist`` at the low watermark, then at min after waking kswapd."""
        mem = self.mem
        if mem.nr_free > mem.wmark.low:
            return mem.alloc_frame(pid)
        self.kswapd.wakeup()
        if mem.nr_free > mem.wmark.min:
            return mem.alloc_frame(pid)
        return -1

    def alloc(self, pid: int) -> ProcessGen:
        """Allocate a frame for page ``pid``; may stall the caller. Returns the pfn, or -1
        when the caller's VM was killed while charging it (``try_charge_memcg``'s OOM)."""
        if self.memcg is not None:
            charged = yield from self.memcg.try_charge(pid)
            if not charged:
                return -1
            pfn = self._alloc_zone_fast(pid)
        else:
            pfn = self.alloc_fast(pid)
        if pfn >= 0:
            return pfn
        mem = self.mem
        wm = mem.wmark
        no_progress = 0
        while True:
            progress = yield from self.direct.try_to_free_pages(self.kswapd)
            if mem.watermark_ok(wm.min):
                return mem.alloc_frame(pid)
            no_progress = 0 if progress else no_progress + 1
            if no_progress > MAX_RECLAIM_RETRIES or mem.nr_free + self.reclaimable() <= wm.min:
                no_progress = 0
                # __alloc_pages_may_oom: a last try at the high watermark, then the killer
                if mem.nr_free > wm.high:
                    return mem.alloc_frame(pid)
                if self.oom_kill():
                    if mem.nr_free > 0:  # the victim's memory (below min is fine after a kill)
                        return mem.alloc_frame(pid)
                else:
                    yield from self._wait_for_frames()
            self.kswapd.wakeup()
