"""kswapd and direct reclaim follow the watermarks (docs/MODEL.md 4.1-4.3)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from sim.engine import World
from sim.host.memory import MAX_RECLAIM_RETRIES, SWAP_CLUSTER_MAX
from sim.host.vmstat import VmStat
from tests.conftest import tiny


def _trace_kswapd(w: World) -> list[tuple[str, int, int, int]]:
    log: list[tuple[str, int, int, int]] = []
    orig = w.kswapd.balance_pgdat
    mem, env = w.mem, w.env

    def traced() -> Generator[Any, Any, None]:
        log.append(("start", int(env.now), mem.nr_free, mem.nr_writeback))
        yield from orig()
        log.append(("end", int(env.now), mem.nr_free, mem.nr_writeback))

    w.kswapd.balance_pgdat = traced  # type: ignore[method-assign]
    return log


def test_kswapd_wakes_below_low_and_reclaims_up_to_high() -> None:
    w = World(tiny(duration_s=0.3))
    log = _trace_kswapd(w)
    w.run()
    wm = w.mem.wmark
    assert log, "kswapd never ran although guests overcommit the host"
    wakeups = 0
    for i in range(0, len(log), 2):
        start, end = log[i], log[i + 1] if i + 1 < len(log) else None
        _, t, free, wb = start
        assert free + wb <= wm.high  # never starts on a balanced node
        reentry = i > 0 and log[i - 1][1] == t and log[i - 1][2] + log[i - 1][3] <= wm.high
        if not reentry:
            wakeups += 1
            assert free <= wm.low  # woken only by an allocation that found free <= low
        if end is not None and not (i + 2 < len(log) and log[i + 2][1] == end[1]):
            assert end[2] + end[3] > wm.high  # goes to sleep only once balanced
    assert wakeups == w.vmstat[VmStat.KSWAPD_WAKEUPS]
    assert w.vmstat[VmStat.PGSTEAL_KSWAPD] > 0


def test_reclaim_isolates_at_most_swap_cluster_max_at_a_time() -> None:
    """On the general path: every batch ``folio_referenced`` sees."""
    w = World(tiny(duration_s=0.2))
    w.policy.core = None
    sizes: list[int] = []
    orig = w.vmscan.folio_referenced

    def spy(pfns: Any, sc: Any) -> Any:
        sizes.append(len(pfns))
        return orig(pfns, sc)

    w.vmscan.folio_referenced = spy  # type: ignore[method-assign]
    w.run()
    assert sizes
    assert max(sizes) <= SWAP_CLUSTER_MAX


def test_the_compiled_core_isolates_at_most_swap_cluster_max_at_a_time() -> None:
    """The compiled reclaim batch (sim/core.py): what each pass took off a list."""
    from sim.core import IO_TAKEN

    w = World(tiny(duration_s=0.2))
    core = w.policy.core
    assert core is not None
    sizes: list[int] = []
    for name in ("shrink_inactive_list", "shrink_active_list"):
        orig = getattr(core, name)

        def spy(lru: Any, n: int, sc: Any, orig: Any = orig) -> bool:
            done = orig(lru, n, sc)
            if done:
                sizes.append(int(core.io[IO_TAKEN]))
            return bool(done)

        setattr(core, name, spy)
    w.run()
    assert sizes
    assert max(sizes) > 0
    assert max(sizes) <= SWAP_CLUSTER_MAX


def test_allocator_fast_path_wake_and_direct_reclaim_thresholds() -> None:
    w = World(tiny())
    mem, alloc, wm = w.mem, w.alloc, w.mem.wmark
    pid = 0
    while mem.nr_free > wm.low + 1:
        mem.alloc_frame(pid)
        pid += 1
    assert alloc.alloc_fast(pid) >= 0  # free was low + 1: fast path
    pid += 1
    assert w.kswapd.sleeping  # no wake-up above low
    assert alloc.alloc_fast(pid) >= 0  # free == low: kswapd woken, still above min
    pid += 1
    assert not w.kswapd.sleeping
    while mem.nr_free > wm.min + 1:
        mem.alloc_frame(pid)
        pid += 1
    assert alloc.alloc_fast(pid) >= 0  # free == min + 1 > min
    pid += 1
    assert alloc.alloc_fast(pid) == -1  # free == min: direct reclaim needed


class _Latencies:
    def __init__(self) -> None:
        self.values: list[int] = []

    def fault(self, t_ns: int, vm: int, vcpu: int, gfn: int, kind: str, lat: int, pid: int) -> None:
        self.values.append(lat)


def _max_fault_latency(w: World) -> int:
    sink = _Latencies()
    for vm in w.vms:
        for v in vm.vcpus:
            v.sink = sink
    w.run()
    return max(sink.values)


def test_slow_kswapd_forces_direct_reclaim_that_stalls_the_vcpu() -> None:
    """With kswapd crippled, allocations reach min and vCPUs reclaim (and stall) themselves."""
    scan_ns = 200_000
    w = World(tiny(duration_s=0.3, costs={"scan_page_ns": scan_ns}))
    worst = _max_fault_latency(w)
    assert w.vmstat[VmStat.ALLOCSTALL] > 0
    assert w.vmstat[VmStat.PGSTEAL_DIRECT] > 0
    # a faulting vCPU paid for at least one batch of its own reclaim scanning
    assert worst >= SWAP_CLUSTER_MAX * scan_ns
    normal = World(tiny(duration_s=0.3))
    assert _max_fault_latency(normal) < SWAP_CLUSTER_MAX * scan_ns


def test_no_swap_ends_in_an_oom_kill_not_a_crash() -> None:
    w = World(tiny(duration_s=0.3, swap={"size_mib": 0}))
    w.run()
    w.check()
    assert w.vmstat[VmStat.OOM_KILL] >= 1
    summary = w.summary(0.0)
    assert any(v["oom_killed"] for v in summary["vms"])
    assert summary["host"]["oom_kills"]


def test_full_swap_is_reported_not_a_crash() -> None:
    w = World(tiny(duration_s=0.3, swap={"size_mib": 1}))
    w.run()
    w.check()
    s = w.summary(0.0)
    assert s["host"]["swap"]["exhausted"]
    assert s["host"]["swap"]["full_failures"] > 0
    assert s["host"]["swap"]["used_end"] <= s["host"]["swap"]["slots"]


@pytest.mark.parametrize("policy", ["two_list", "lru", "clock", "fifo", "random"])
def test_kswapd_throttles_on_its_own_write_back_for_every_classic_policy(policy: str) -> None:
    """A 256-frame host whose swap writes take 5 ms writes much of memory out at once: kswapd
    must see that the batches it isolates are all under write-back (PGDAT_WRITEBACK, which
    compares with the folios taken off the list), meet its own PG_reclaim marks again
    (``nr_immediate``) and sleep on WRITEBACK, rather than fail pass after pass until it is
    hopeless."""
    swap = {"size_mib": 256, "latency_cv": 0.0, "write_latency_us": 5000}
    w = World(tiny(host__memory_mib=1, swap=swap, duration_s=0.1, reclaim={"policy": policy}))
    w.run()
    vs = w.vmstat
    assert vs[VmStat.VMSCAN_IMMEDIATE] > 0
    assert vs[VmStat.THROTTLE_WRITEBACK] > 0
    assert vs[VmStat.KSWAPD_FAILURES] < MAX_RECLAIM_RETRIES
    assert vs[VmStat.OOM_KILL] == 0


def test_direct_reclaim_retries_with_forced_deactivation() -> None:
    """``do_try_to_free_pages``: a pass that reclaimed nothing after skipping an active list
    (``skipped_deactivate``) runs the priorities again with ``force_deactivate``; a pass that
    reclaims nothing and skipped nothing gives up."""
    from sim.host.kswapd import DirectReclaim

    w = World(tiny())
    seen: list[tuple[int, bool]] = []

    class Stub:
        """A policy that frees a batch only once deactivation is forced."""

        def __init__(self, skips: bool) -> None:
            self.skips = skips

        def shrink_node(self, sc: Any, reclaim: Any) -> Any:
            seen.append((sc.priority, sc.force_deactivate))
            if sc.force_deactivate:
                sc.nr_reclaimed += SWAP_CLUSTER_MAX
            elif self.skips:
                sc.skipped_deactivate = True
            yield from ()

        def reclaim_cycle_end(self) -> None:
            pass

    for skips, want in ((True, SWAP_CLUSTER_MAX), (False, 0)):
        seen.clear()
        d = DirectReclaim(w.env, w.mem, w.vmscan, Stub(skips), w.kswapd.cost, w.vmstat, w.throttle)
        proc = w.env.process(d.try_to_free_pages(w.kswapd))
        w.env.run(until=proc)
        assert proc.value == want
        first = [p for p, forced in seen if not forced]
        assert first == list(range(12, -1, -1))  # every priority, unforced
        assert [p for p, forced in seen if forced] == ([12] if skips else [])
