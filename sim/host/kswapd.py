"""kswapd and direct reclaim: the two threads that drive a policy's reclaim passes.

Models
    kswapd sleeps until an allocation finds free memory below the low watermark, then runs
    ``balance_pgdat``: passes of ``shrink_node`` at priority 12, 11, ... (raised when a pass scanned
    less than its target or reclaimed nothing) until free memory is back at the high watermark,
    then sleeps again. Direct reclaim (``try_to_free_pages``) runs in an allocating task whose
    allocation found free memory at or below the min watermark: up to 13 passes from priority 12
    down to 0 until it has reclaimed SWAP_CLUSTER_MAX pages. Both pay for their work in simulated
    time after every batch of folios; direct reclaim's time is the allocating vCPU's stall.

Kernel reference
    mm/vmscan.c: ``kswapd``, ``kswapd_try_to_sleep``, ``wakeup_kswapd``, ``balance_pgdat``,
    ``kswapd_shrink_node``, ``try_to_free_pages``, ``do_try_to_free_pages``.

Simplifications
    No 100 ms nap before the full sleep (it only changes the ``*_hit_quickly`` counters), no
    watermark boosting, order-0 only, one node. Pages whose write-out started count towards the
    high watermark (see vmscan.py). kswapd gives up after MAX_RECLAIM_RETRIES passes that
    reclaimed nothing (``kswapd_failures``) until a later reclaim succeeds.

Invariants
    kswapd is either sleeping (waiting to be woken) or in ``balance_pgdat``; it never runs a pass
    while the node is balanced.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Iterator
from typing import Any

import simpy

from sim.costs import CostModel
from sim.host.memory import DEF_PRIORITY, MAX_RECLAIM_RETRIES, SWAP_CLUSTER_MAX, HostMemory
from sim.host.vmscan import ScanControl, Vmscan
from sim.host.vmstat import VmStat
from sim.reclaim.base import EvictionPolicy

ProcessGen = Generator[simpy.Event, Any, Any]


def account(vmstat: Counter[str], sc: ScanControl) -> None:
    """Add a finished pass's counts to the host counters."""
    if sc.direct:
        vmstat[VmStat.PGSCAN_DIRECT] += sc.nr_scanned
        vmstat[VmStat.PGSTEAL_DIRECT] += sc.nr_reclaimed
    else:
        vmstat[VmStat.PGSCAN_KSWAPD] += sc.nr_scanned
        vmstat[VmStat.PGSTEAL_KSWAPD] += sc.nr_reclaimed
    vmstat[VmStat.PGREFILL] += sc.nr_refill
    vmstat[VmStat.PGACTIVATE] += sc.nr_activate
    vmstat[VmStat.PGDEACTIVATE] += sc.nr_deactivate
    vmstat[VmStat.SWAP_FULL] += sc.nr_swap_full
    vmstat[VmStat.RMAP_WALKED] += sc.nr_rmap_walked
    vmstat[VmStat.SPTES_WALKED] += sc.nr_sptes_walked
    vmstat[VmStat.NOTIFIER_CALLS] += sc.nr_notifier_calls
    vmstat[VmStat.TLB_FLUSHES] += sc.nr_tlb_flushes


class Reclaim:
    """Shared by kswapd and direct reclaim: run a policy pass and pay for it as it goes."""

    def __init__(
        self,
        env: simpy.Environment,
        mem: HostMemory,
        vmscan: Vmscan,
        policy: EvictionPolicy,
        cost: CostModel,
        vmstat: Counter[str],
    ) -> None:
        self.env, self.mem, self.vmscan, self.policy = env, mem, vmscan, policy
        self.cost, self.vmstat = cost, vmstat

    def paced(self, steps: Iterator[None], sc: ScanControl, paid: list[int]) -> ProcessGen:
        """Run a policy's batches, yielding the price of each batch's work after it."""
        for _ in steps:
            due = self.cost.reclaim_ns(sc) - paid[0]
            if due > 0:
                paid[0] += due
                yield self.env.timeout(due)


class Kswapd(Reclaim):
    """The per-node reclaim daemon."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sleeping = True
        self._wake = self.env.event()
        self.failures = 0  # pgdat->kswapd_failures
        self.busy_ns = 0  # time spent in balance_pgdat

    def wakeup(self) -> None:
        """``wakeup_kswapd``: wake it unless it is awake, hopeless, or the node is balanced."""
        if not self.sleeping or self.failures >= MAX_RECLAIM_RETRIES or self.mem.balanced():
            return
        self.sleeping = False
        self.vmstat[VmStat.KSWAPD_WAKEUPS] += 1
        self._wake.succeed()

    def run(self) -> ProcessGen:
        """The kswapd thread: sleep until woken, balance, and sleep again only once balanced
        (or hopeless: ``prepare_kswapd_sleep``)."""
        while True:
            if self.sleeping:
                yield self._wake
                self._wake = self.env.event()
            t0 = self.env.now
            yield from self.balance_pgdat()
            while not self.mem.balanced() and self.failures < MAX_RECLAIM_RETRIES:
                yield from self.balance_pgdat()
            self.busy_ns += self.env.now - t0
            self.sleeping = True

    def balance_pgdat(self) -> ProcessGen:
        """Reclaim until the node is balanced (free >= high), raising priority as needed."""
        self.vmstat[VmStat.PAGEOUTRUN] += 1
        priority = DEF_PRIORITY
        reclaimed = 0
        while priority >= 1 and not self.mem.balanced():
            sc = ScanControl(
                nr_to_reclaim=max(self.mem.wmark.high, SWAP_CLUSTER_MAX), priority=priority
            )
            paid = [0]
            yield from self.paced(self.policy.age_node(sc, self.vmscan), sc, paid)
            yield from self.paced(self.policy.shrink_node(sc, self.vmscan), sc, paid)
            account(self.vmstat, sc)
            reclaimed += sc.nr_reclaimed
            raise_priority = sc.nr_scanned < sc.nr_to_reclaim  # kswapd_shrink_node
            if raise_priority or sc.nr_reclaimed == 0:
                priority -= 1
        if reclaimed:
            self.failures = 0
        elif not self.mem.balanced():
            self.failures += 1
            self.vmstat[VmStat.KSWAPD_FAILURES] += 1
        self.policy.reclaim_cycle_end()


class DirectReclaim(Reclaim):
    """``try_to_free_pages`` in the allocating task's context."""

    def try_to_free_pages(self, kswapd: Kswapd) -> ProcessGen:
        """Reclaim SWAP_CLUSTER_MAX pages, priority 12 down to 0; returns pages reclaimed."""
        self.vmstat[VmStat.ALLOCSTALL] += 1
        sc = ScanControl(nr_to_reclaim=SWAP_CLUSTER_MAX, direct=True)
        paid = [0]
        for priority in range(DEF_PRIORITY, -1, -1):
            sc.priority = priority
            yield from self.paced(self.policy.shrink_node(sc, self.vmscan), sc, paid)
            if sc.nr_reclaimed >= sc.nr_to_reclaim:
                break
        account(self.vmstat, sc)
        self.policy.reclaim_cycle_end()
        if sc.nr_reclaimed:
            kswapd.failures = 0  # shrink_node: any progress resets kswapd_failures
        return sc.nr_reclaimed
