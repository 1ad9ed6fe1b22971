"""The obvious SimPy model of a host under memory pressure, as a speed baseline.

One SimPy process per vCPU takes one ``env.timeout`` per guest access. Resident pages are an
``OrderedDict`` in LRU order (a hit moves its page to the end). A fault allocates a frame and
costs a timeout (first touch: ``costs.first_touch_ns``; a page evicted earlier: the swap read
latency plus ``costs.swapin_kernel_ns``); below the low watermark it wakes a kswapd process,
which evicts pages from the LRU head (the coldest) in batches of ``SWAP_CLUSTER_MAX`` until free
memory is back at the high watermark, paying ``RECLAIM_PAGE_NS`` per page. At or below the min
watermark the faulting vCPU evicts a batch itself (direct reclaim). No rmap, no notifiers, no
sptes, no swap device queue: exact LRU over a dict, which is what the issue's 0.67M accesses/s
figure describes. It reads the same access streams as memsim (``sim.machine.vcpu_stream``, same
scenario and seed), the same frame count and the same watermarks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Generator
from typing import Any

import simpy

from sim.config import Scenario
from sim.host.memory import SWAP_CLUSTER_MAX
from sim.machine import vcpu_stream

RECLAIM_PAGE_NS = 1_000
"""CPU cost of reclaiming one page (scan, unmap, queue the write); a round figure."""

CHUNK = 4096
"""Accesses taken from a stream at a time (the stream's own chunk size)."""

Proc = Generator[simpy.Event, Any, None]


class NaiveHost:
    """Frames, an LRU dict of resident pages, kswapd, and the vCPUs of a scenario.

    Args:
        sc: the scenario (host memory, VMs, workloads, costs and swap latencies are used).
    """

    def __init__(self, sc: Scenario) -> None:
        self.env = simpy.Environment()
        self.nr_frames = sc.host.pages(sc.host.memory_mib)
        self.wmark = sc.host.watermarks()
        self.nr_free = self.nr_frames
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.evicted: set[int] = set()
        self.accesses = self.faults = self.major = self.evictions = 0
        self.kswapd_wakeups = 0
        self.memory_full = False  # free memory has fallen to the low watermark at least once
        self._wake = self.env.event()
        self._kswapd_running = False
        self.first_touch_ns = sc.costs.first_touch_ns
        self.major_ns = round(sc.swap.read_latency_us * 1000) + sc.costs.swapin_kernel_ns
        self.env.process(self.kswapd())
        base = 0
        for name, cfg in sc.vm_list():
            pages = sc.host.pages(cfg.memory_mib)
            for j in range(cfg.vcpus):
                stream = vcpu_stream(sc, name, cfg, pages, j)
                period_ns = 1_000_000_000 // cfg.access_rate_per_s
                self.env.process(self.vcpu(stream, base, period_ns))
            base += pages

    def vcpu(self, stream: Any, base: int, period_ns: int) -> Proc:
        """One vCPU: a timeout per access; a fault allocates a frame and waits its cost."""
        env, lru = self.env, self.lru
        while True:
            gfns, _ = stream.next(CHUNK)
            for gfn in gfns.tolist():
                page = base + gfn
                if page in lru:
                    lru.move_to_end(page)
                else:
                    self.faults += 1
                    if page in self.evicted:
                        self.evicted.discard(page)
                        self.major += 1
                        cost = self.major_ns
                    else:
                        cost = self.first_touch_ns
                    yield from self.alloc()
                    lru[page] = None
                    yield env.timeout(cost)
                self.accesses += 1
                yield env.timeout(period_ns)

    def alloc(self) -> Proc:
        """Take a frame: wake kswapd below low; reclaim directly at or below min."""
        if self.nr_free <= self.wmark.low:
            self.memory_full = True
            if not self._kswapd_running and not self._wake.triggered:
                self._wake.succeed()
        if self.nr_free <= self.wmark.min:
            n = self.evict(SWAP_CLUSTER_MAX)
            yield self.env.timeout(n * RECLAIM_PAGE_NS)
        self.nr_free -= 1

    def evict(self, n: int) -> int:
        """Evict up to ``n`` pages from the cold end of the LRU; how many were evicted."""
        done = 0
        while done < n and self.lru:
            page, _ = self.lru.popitem(last=False)
            self.evicted.add(page)
            done += 1
        self.nr_free += done
        self.evictions += done
        return done

    def kswapd(self) -> Proc:
        """Sleep until woken; evict batches until free memory is back at the high watermark."""
        while True:
            yield self._wake
            self._kswapd_running = True
            self.kswapd_wakeups += 1
            while self.nr_free < self.wmark.high and self.lru:
                n = self.evict(SWAP_CLUSTER_MAX)
                yield self.env.timeout(n * RECLAIM_PAGE_NS)
            self._kswapd_running = False
            self._wake = self.env.event()

    def counts(self) -> tuple[int, int]:
        """Accesses and faults so far."""
        return self.accesses, self.faults
