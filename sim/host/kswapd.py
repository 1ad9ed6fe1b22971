"""kswapd and direct reclaim: the two threads that drive a policy's reclaim passes, and the
throttles that slow them down to the speed of the swap device.

Models
    kswapd sleeps until an allocation finds free memory below the low watermark, then runs
    ``balance_pgdat``: passes of ``shrink_node`` at priority 12, 11, ... (raised when a pass
    scanned less than its target or reclaimed nothing) until free pages are back above the high
    watermark, then sleeps again. Pages whose write-out is in flight are not free: kswapd keeps
    reclaiming while they are written, and the device holds it back in two ways. Submitting a
    write when all the device's request tags are taken blocks it until one frees (swap.py). And
    when a pass takes only folios already under write-out (``nr.writeback == nr.taken``) the
    node is flagged PGDAT_WRITEBACK; a later pass that meets a folio it had marked PG_reclaim
    counts it ``nr_immediate`` and kswapd sleeps in ``reclaim_throttle(WRITEBACK)`` until
    ``SWAP_CLUSTER_MAX`` pages per throttled task have finished writing, or HZ/10. A pass whose
    file folios taken were all dirty and unqueued (``nr.unqueued_dirty == nr.file_taken``, so
    also one that took none) flags the node PGDAT_DIRTY, which lets kswapd write the dirty
    page-cache folios it meets again (vmscan.py). Both flags are cleared when the node is
    balanced and kswapd goes to sleep.

    Direct reclaim (``try_to_free_pages``) runs in an allocating task whose allocation found
    free memory at or below the min watermark (a vCPU thread faulting guest memory in): first
    ``throttle_direct_reclaim`` (while free pages are at or below half the min watermark and
    kswapd is not hopeless, the task sleeps until kswapd brings them above it), then up to 13
    passes from priority 12 down to 0 until it has freed SWAP_CLUSTER_MAX pages; after each,
    ``consider_reclaim_throttle`` wakes tasks throttled for no progress when this pass freed
    more than an eighth of what it scanned, and at priority 1 with nothing freed sleeps one
    jiffy itself (``reclaim_throttle(NOPROGRESS)``). Both threads pay for their work in
    simulated time after every batch of folios, including the wait for request tags; direct
    reclaim's time is the allocating vCPU's stall.

Kernel reference
    mm/vmscan.c: ``kswapd``, ``kswapd_try_to_sleep``, ``prepare_kswapd_sleep``,
    ``clear_pgdat_congested``, ``wakeup_kswapd``, ``balance_pgdat``, ``kswapd_shrink_node``,
    ``shrink_node`` (the PGDAT_WRITEBACK and ``nr.immediate`` tests), ``reclaim_throttle``,
    ``__acct_reclaim_writeback``, ``consider_reclaim_throttle``, ``allow_direct_reclaim``,
    ``throttle_direct_reclaim``, ``try_to_free_pages``, ``do_try_to_free_pages``.

Simplifications
    No 100 ms nap before the full sleep (it only changes the ``*_hit_quickly`` counters), no
    watermark boosting, order-0 only, one node, HZ = 250 (one jiffy is 4 ms). MGLRU's root
    reclaim does not take the classic PGDAT_WRITEBACK / ``nr_immediate`` path (as in the
    kernel, ``lru_gen_shrink_node`` returns before it). No ``too_many_isolated`` throttle:
    isolation never spans simulated time here. kswapd gives up after MAX_RECLAIM_RETRIES
    ``balance_pgdat`` runs that freed nothing (``kswapd_failures``) until a later reclaim frees
    something.

Invariants
    kswapd is either sleeping (waiting to be woken) or in ``balance_pgdat``; it never runs a pass
    while the node is balanced.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

import simpy

from sim.costs import CostModel
from sim.host.memory import DEF_PRIORITY, MAX_RECLAIM_RETRIES, SWAP_CLUSTER_MAX, HostMemory
from sim.host.vmscan import ScanControl, Vmscan
from sim.host.vmstat import VmEvents, VmStat
from sim.reclaim.base import EvictionPolicy

ProcessGen = Generator[simpy.Event, Any, Any]

HZ = 250
JIFFY_NS = 1_000_000_000 // HZ
THROTTLE_WRITEBACK_NS = JIFFY_NS * (HZ // 10)  # reclaim_throttle(WRITEBACK): HZ/10
THROTTLE_NOPROGRESS_NS = JIFFY_NS  # reclaim_throttle(NOPROGRESS): one jiffy


class ReclaimThrottle:
    """The node's reclaim wait queues (``pgdat->reclaim_wait``, ``pfmemalloc_wait``)."""

    def __init__(self, env: simpy.Environment, mem: HostMemory, vmstat: VmEvents) -> None:
        self.env, self.mem, self.vmstat = env, mem, vmstat
        self._writeback: simpy.Event | None = None
        self.nr_writeback_throttled = 0
        self._written = 0  # NR_THROTTLED_WRITTEN: writes ended while someone was throttled
        self._reclaim_start = 0
        self._noprogress: simpy.Event | None = None
        self._pfmemalloc: simpy.Event | None = None

    def writeback_ended(self) -> None:
        """``acct_reclaim_writeback``: wake the WRITEBACK sleepers once SWAP_CLUSTER_MAX pages
        per sleeper have been written since the first of them went to sleep."""
        if not self.nr_writeback_throttled:
            return
        self._written += 1
        ev = self._writeback
        if (
            ev is not None
            and not ev.triggered
            and self._written - self._reclaim_start > SWAP_CLUSTER_MAX * self.nr_writeback_throttled
        ):
            ev.succeed()

    def writeback_budget(self) -> int:
        """How many writes may end (``writeback_ended`` each) before one wakes the WRITEBACK
        sleepers: -1 when none would (nobody sleeps, or they were woken already)."""
        ev = self._writeback
        if not self.nr_writeback_throttled or ev is None or ev.triggered:
            return -1
        limit = self._reclaim_start + SWAP_CLUSTER_MAX * self.nr_writeback_throttled
        return max(0, limit - self._written)

    def writebacks_ended(self, n: int) -> None:
        """``writeback_ended`` ``n`` times, for ends within ``writeback_budget``."""
        if self.nr_writeback_throttled:
            self._written += n

    def writeback(self) -> ProcessGen:
        """``reclaim_throttle(WRITEBACK)``: sleep until enough writes end, at most HZ/10."""
        if self._writeback is None or self._writeback.triggered:
            self._writeback = self.env.event()
        self.nr_writeback_throttled += 1
        if self.nr_writeback_throttled == 1:
            self._reclaim_start = self._written
        self.vmstat[VmStat.THROTTLE_WRITEBACK] += 1
        yield self._writeback | self.env.timeout(THROTTLE_WRITEBACK_NS)
        self.nr_writeback_throttled -= 1

    def noprogress(self) -> ProcessGen:
        """``reclaim_throttle(NOPROGRESS)``: one jiffy, or until a reclaimer makes progress."""
        if self._noprogress is None or self._noprogress.triggered:
            self._noprogress = self.env.event()
        self.vmstat[VmStat.THROTTLE_NOPROGRESS] += 1
        yield self._noprogress | self.env.timeout(THROTTLE_NOPROGRESS_NS)

    def progress(self) -> None:
        """``consider_reclaim_throttle``'s wake-up of the NOPROGRESS sleepers."""
        ev = self._noprogress
        if ev is not None and not ev.triggered:
            ev.succeed()

    def allow_direct_reclaim(self, kswapd: Kswapd) -> bool:
        """Free pages above half the min watermark (or kswapd hopeless); otherwise kswapd is
        woken, since tasks are about to wait for it."""
        if kswapd.failures >= MAX_RECLAIM_RETRIES:
            return True
        ok = self.mem.nr_free > self.mem.wmark.min // 2
        if not ok:
            kswapd.wakeup()
        return ok

    def wake_pfmemalloc(self, kswapd: Kswapd) -> None:
        """kswapd wakes the tasks waiting in ``throttle_direct_reclaim`` once they may go on."""
        ev = self._pfmemalloc
        if ev is not None and not ev.triggered and self.allow_direct_reclaim(kswapd):
            ev.succeed()

    def throttle_direct_reclaim(self, kswapd: Kswapd) -> ProcessGen:
        """Wait (killable, no timeout) until ``allow_direct_reclaim``."""
        if self.allow_direct_reclaim(kswapd):
            return
        self.vmstat[VmStat.PGSCAN_DIRECT_THROTTLE] += 1
        while not self.allow_direct_reclaim(kswapd):
            if self._pfmemalloc is None or self._pfmemalloc.triggered:
                self._pfmemalloc = self.env.event()
            yield self._pfmemalloc


class Reclaim:
    """Shared by kswapd and direct reclaim: run a policy pass and pay for it as it goes."""

    def __init__(
        self,
        env: simpy.Environment,
        mem: HostMemory,
        vmscan: Vmscan,
        policy: EvictionPolicy,
        cost: CostModel,
        vmstat: VmEvents,
        throttle: ReclaimThrottle,
    ) -> None:
        self.env, self.mem, self.vmscan, self.policy = env, mem, vmscan, policy
        self.cost, self.vmstat, self.throttle = cost, vmstat, throttle
        # shrink_slab's shrinkers (a guest's virtio-balloon free page hinting; none on the
        # host): each frees what do_shrink_slab asks of it and adds it to sc.nr_reclaimed
        self.shrinkers: list[Callable[[ScanControl], None]] = []

    def paced(self, steps: Iterator[None], sc: ScanControl, paid: list[int]) -> ProcessGen:
        """Run a policy's batches, yielding after each the price of its work, or until its
        writes got their request tags if that is later."""
        env = self.env
        for _ in steps:
            due = self.cost.reclaim_ns(sc) - paid[0]
            if due > 0:
                paid[0] += due
            wait = max(due, sc.blocked_until - int(env.now))
            if wait > 0:
                yield env.timeout(wait)

    def shrink_node(self, sc: ScanControl, paid: list[int]) -> ProcessGen:
        """One ``shrink_node`` call of the policy, paced (after ``prepare_scan_control``'s
        ratelimited flush of the memcg statistics)."""
        if self.vmscan.memcg is not None:
            self.vmscan.memcg.flush_stats_ratelimited(sc.target_memcg)
        yield from self.paced(self.policy.shrink_node(sc, self.vmscan), sc, paid)
        for shrink in self.shrinkers:  # shrink_node_memcgs: shrink_slab after the lruvec
            shrink(sc)


class Kswapd(Reclaim):
    """The per-node reclaim daemon."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sleeping = True
        self._wake = self.env.event()
        self.failures = 0  # pgdat->kswapd_failures
        self.busy_ns = 0  # time spent in balance_pgdat
        self._busy_since = -1  # when the balance_pgdat run in progress began

    def wakeup(self) -> None:
        """``wakeup_kswapd``: wake it unless it is awake, hopeless, or the node is balanced."""
        if not self.sleeping or self.failures >= MAX_RECLAIM_RETRIES or self.mem.balanced():
            return
        self.sleeping = False
        self.vmstat[VmStat.KSWAPD_WAKEUPS] += 1
        self._wake.succeed()

    def busy_at(self, now: int) -> int:
        """Time spent in ``balance_pgdat`` up to ``now`` (a run in progress included)."""
        return self.busy_ns + (now - self._busy_since if self._busy_since >= 0 else 0)

    def run(self) -> ProcessGen:
        """The kswapd thread: sleep until woken, balance, and sleep again only once balanced
        (or hopeless: ``prepare_kswapd_sleep``, which clears the node's congestion flags and
        wakes the tasks throttled on pfmemalloc)."""
        while True:
            if self.sleeping:
                yield self._wake
                self._wake = self.env.event()
            self._busy_since = int(self.env.now)
            yield from self.balance_pgdat()
            while not self.mem.balanced() and self.failures < MAX_RECLAIM_RETRIES:
                yield from self.balance_pgdat()
            self.busy_ns += int(self.env.now) - self._busy_since
            self._busy_since = -1
            if self.mem.balanced():
                self.vmscan.pgdat_writeback = False  # clear_pgdat_congested
                self.vmscan.pgdat_dirty = False
            self.throttle.wake_pfmemalloc(self)
            self.sleeping = True

    def balance_pgdat(self) -> ProcessGen:
        """Reclaim until the node is balanced (free > high), raising priority as needed."""
        self.vmstat[VmStat.PAGEOUTRUN] += 1
        priority = DEF_PRIORITY
        reclaimed = 0
        while priority >= 1 and not self.mem.balanced():
            sc = ScanControl(
                nr_to_reclaim=max(self.mem.wmark.high, SWAP_CLUSTER_MAX),
                priority=priority,
                vmstat=self.vmstat,
            )
            paid = [0]
            yield from self.paced(self.policy.age_node(sc, self.vmscan), sc, paid)
            yield from self.shrink_node(sc, paid)
            # shrink_node, for kswapd: the whole batch was already writing -> PGDAT_WRITEBACK;
            # it met folios it had marked -> the LRU cycles faster than the device writes
            if sc.nr_writeback and sc.nr_writeback == sc.nr_taken:
                self.vmscan.pgdat_writeback = True
            # "Allow kswapd to start writing pages during reclaim": every file folio taken was
            # dirty and unqueued (also when none was taken, as the kernel's test reads)
            if sc.nr_unqueued_dirty == sc.nr_file_taken:
                self.vmscan.pgdat_dirty = True
            if sc.nr_immediate:
                yield from self.throttle.writeback()
            self.throttle.wake_pfmemalloc(self)
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

    def _priorities(self, sc: ScanControl, paid: list[int]) -> ProcessGen:
        """``do_try_to_free_pages``' loop: priority 12 down to 0 until the target is freed."""
        for priority in range(DEF_PRIORITY, -1, -1):
            sc.priority = priority
            yield from self.shrink_node(sc, paid)
            # consider_reclaim_throttle
            if sc.nr_reclaimed > sc.nr_scanned >> 3:
                self.throttle.progress()
            elif priority == 1 and not sc.nr_reclaimed:
                yield from self.throttle.noprogress()
            if sc.nr_reclaimed >= sc.nr_to_reclaim:
                break

    def try_to_free_pages(self, kswapd: Kswapd) -> ProcessGen:
        """Reclaim SWAP_CLUSTER_MAX pages, priority 12 down to 0; returns pages freed."""
        yield from self.throttle.throttle_direct_reclaim(kswapd)
        self.vmstat[VmStat.ALLOCSTALL] += 1
        sc = ScanControl(nr_to_reclaim=SWAP_CLUSTER_MAX, direct=True, vmstat=self.vmstat)
        paid = [0]
        while True:  # do_try_to_free_pages' retries when nothing was reclaimed
            yield from self._priorities(sc, paid)
            if sc.nr_reclaimed:
                break
            if sc.skipped_deactivate:
                # the inactive:active estimates were off (memory.low, refaults): retry with
                # forcible deactivation before giving up
                sc.force_deactivate, sc.skipped_deactivate = True, False
            elif sc.memcg_low_skipped:
                # untapped cgroup reserves; don't OOM, retry without them
                sc.force_deactivate = False
                sc.memcg_low_reclaim, sc.memcg_low_skipped = True, False
            else:
                break
        self.policy.reclaim_cycle_end()
        if sc.nr_reclaimed:
            kswapd.failures = 0  # shrink_node: any progress resets kswapd_failures
        return sc.nr_reclaimed
