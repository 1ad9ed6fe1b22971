"""Free page reporting (sim/guest/page_reporting.py): hand-worked timelines over a bare guest
memory with a recording discard, the free-list order and the flag, and the feature in worlds
(the host loses what the guest reports)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from sim.config import parse_scenario
from sim.engine import build_world
from sim.errors import ConfigError
from sim.guest.page_reporting import (
    FreePageReportingConfig,
    PageReporting,
    PageReportingCosts,
)
from sim.host.memory import HAS_FRAME, PG_SWAP, PTE_PRESENT, HostMemory, Watermarks
from tests.conftest import TINY, run_checked

NB = 512  # pages in an order-9 block
C = PageReportingCosts()
S = 1_000_000_000


def request_ns(n: int) -> int:
    """One request of n blocks: guest request + blocks, the kick, QEMU's request + discards."""
    return C.request_ns + n * C.block_ns + C.vmexit_ns + C.qemu_request_ns + n * C.discard_block_ns


T32 = request_ns(32)
T4 = request_ns(4)


class Guest:
    """Guest RAM of ``nr_blocks`` order-9 blocks with its reporting, a discard that records
    what it is given, and helpers to allocate and free frames."""

    def __init__(self, nr_blocks: int, **cfg: Any) -> None:
        self.env = simpy.Environment()
        n = nr_blocks * NB
        self.mem = HostMemory(n, n, Watermarks(100, 200, 300, 0), [0])
        self.discards: list[tuple[int, NDArray[np.int64]]] = []
        self.pr = PageReporting(
            self.env, self.mem, self.discard, FreePageReportingConfig(enabled=True, **cfg)
        )
        self._pid = 0

    def discard(self, gfns: NDArray[np.int64]) -> int:
        assert (self.mem.frame_pid[gfns] == -1).all(), "discarded a page in use"
        self.discards.append((int(self.env.now), gfns.copy()))
        return len(gfns)

    def alloc(self, n: int) -> NDArray[np.int64]:
        pids = np.arange(self._pid, self._pid + n)
        pfns = self.mem.alloc_frames(pids)
        self.mem.flags[pids] |= np.uint8(PTE_PRESENT)  # mapped by the guest process
        self._pid += n
        return pfns

    def free(self, pfns: NDArray[np.int64]) -> None:
        pfns = np.asarray(pfns, dtype=np.int64)
        self.mem.flags[self.mem.frame_pid[pfns]] &= ~np.uint8(PTE_PRESENT)  # unmapped first
        self.mem.free_frames(pfns)

    def blocks_discarded(self) -> list[int]:
        """The block of each discard call, in order (one call per scatterlist entry)."""
        out = []
        for _, g in self.discards:
            assert len(g) == NB
            assert g[0] % NB == 0
            assert (np.diff(g) == 1).all()
            out.append(int(g[0]) // NB)
        return out

    def check(self) -> None:
        self.mem.check()
        self.pr.check()


def block(b: int) -> NDArray[np.int64]:
    return np.arange(b * NB, (b + 1) * NB, dtype=np.int64)


def test_costs_worked_by_hand() -> None:
    # guest 3000 + 32 x 300, kick 800, QEMU 3000 + 32 x 30000
    assert T32 == 3_000 + 9_600 + 800 + 3_000 + 960_000 == 976_400
    assert T4 == 3_000 + 1_200 + 800 + 3_000 + 120_000 == 128_000


def test_boot_reports_free_memory_once_a_budget_at_a_time() -> None:
    g = Guest(80)
    # 80 free blocks: budget DIV_ROUND_UP(80, 32 * 16) = 1, so two full requests, then the
    # walk finds block 64 with the budget spent: the rest waits for the next pass, 2 s later
    g.env.run(until=2 * S)
    assert g.pr.counts.reporting_requests == 0
    assert not g.discards
    g.env.run(until=2 * S + 1)
    assert g.pr.counts.reporting_requests == 1
    assert g.blocks_discarded() == list(range(32))
    g.env.run(until=2 * S + T32 + 1)
    assert g.pr.counts.reporting_requests == 2
    assert g.blocks_discarded() == list(range(64))
    end = 2 * S + 2 * T32  # the first pass ends; it requeues itself
    g.env.run(until=end + 2 * S)
    assert g.pr.counts.reporting_requests == 2
    g.env.run(until=end + 2 * S + 1)
    assert g.pr.counts.reporting_requests == 3
    assert g.blocks_discarded() == list(range(80))
    assert [t for t, _ in g.discards][::16] == [2 * S, 2 * S, 2 * S + T32, 2 * S + T32, end + 2 * S]
    g.env.run(until=60 * S)  # nothing more is freed: nothing more is reported
    c = g.pr.counts
    assert (c.reporting_passes, c.reporting_requests, c.reporting_blocks) == (2, 3, 80)
    assert c.reporting_pages == c.reporting_freed == 80 * NB
    assert c.reporting_guest_ns == 3 * C.request_ns + 80 * C.block_ns
    assert c.reporting_qemu_ns == 3 * C.qemu_request_ns + 80 * C.discard_block_ns
    assert g.pr.reported.all()
    assert g.mem.tail == 80 * NB
    g.check()


def test_frees_are_reported_after_the_delay_in_requests_of_32_and_allocated_last() -> None:
    g = Guest(80)
    used = g.alloc(40 * NB)  # blocks 0-39, before boot reporting
    assert (used == np.arange(40 * NB)).all()
    g.env.run(until=3 * S)  # boot: blocks 40-79 (one pass: 32, then the 8 left over)
    assert g.blocks_discarded() == list(range(40, 80))
    assert g.pr.counts.reporting_requests == 2
    n0 = len(g.discards)
    g.env.run(until=10 * S)
    g.free(used[36 * NB + 1 : 37 * NB])  # block 36 but its first page
    g.free(used[: 36 * NB])  # blocks 0-35 whole, freed last: on top of the free stack
    g.env.run(until=12 * S)
    assert len(g.discards) == n0  # not before the delay
    g.env.run(until=12 * S + 1)  # 76 free blocks: budget 1; 36 to report: 32 now, 4 after
    assert g.blocks_discarded()[n0:] == list(range(32))
    g.env.run(until=12 * S + T32 + 1)
    assert g.blocks_discarded()[n0:] == list(range(36))
    assert g.pr.counts.reporting_requests == 4
    g.env.run(until=20 * S)
    assert not g.pr.reported[36:40].any()  # one used page keeps block 36 from being reported
    assert g.pr.reported.sum() == 76
    g.check()
    # allocation takes every unreported free frame (block 36's 511) before any reported one,
    # though blocks 0-35 were freed after them
    got = g.alloc(511)
    assert sorted(got.tolist()) == list(range(36 * NB + 1, 37 * NB))
    assert g.pr.reported.sum() == 76
    assert g.mem.tail == 76 * NB
    g.check()
    one = g.alloc(1)[0]  # the next comes from a reported block, which loses the flag
    b = int(one) // NB
    assert b in set(range(36)) | set(range(40, 80))
    assert not g.pr.reported[b]
    assert g.pr.reported.sum() == 75
    assert g.mem.tail == 75 * NB
    g.check()
    # the rest of that block is free, at the head: allocated next
    nxt = g.alloc(NB - 1)
    assert sorted(nxt.tolist()) == [p for p in block(b).tolist() if p != one]
    g.check()
    g.free(np.concatenate(([one], nxt)))  # the block is whole again: reported again
    t = int(g.env.now)
    n1 = len(g.discards)
    g.env.run(until=t + 2 * S + 1)
    assert g.blocks_discarded()[n1:] == [b]
    assert g.pr.reported.sum() == 76
    g.check()


def test_a_batch_allocation_through_the_tail_unreports_every_block_it_reaches() -> None:
    g = Guest(40)
    g.env.run(until=3 * S)
    assert g.pr.reported.all()
    got = g.alloc(2 * NB + 3)  # two whole blocks and three pages of a third
    assert len(np.unique(got // NB)) == 3
    assert g.pr.reported.sum() == 37
    g.check()
    g.free(got)
    g.env.run(until=6 * S)
    assert g.pr.reported.all()
    g.check()


def test_no_pass_below_the_watermark_and_small_orders_report_small_blocks() -> None:
    # 40 blocks, 33 of them used: 7 free blocks (3584 pages) are not above low + 32 blocks
    g = Guest(40)
    g.alloc(33 * NB)
    g.env.run(until=30 * S)
    assert g.pr.counts.reporting_passes == 1
    assert g.pr.counts.reporting_requests == 0
    # order 2 (4 pages a block): 330 free pages are above low + 32 x 4 = 328; the first free
    # block (pages 180-183) has two pages in use, so 82 are whole: budget ceil(82 / 512) = 1,
    # two requests of 32 and the last 18 in the next pass
    g = Guest(1, order=2)
    g.alloc(NB - 330)
    g.env.run(until=2 * S + 2 * T32 + 2 * S)
    assert g.pr.counts.reporting_requests == 2
    g.env.run(until=10 * S)
    c = g.pr.counts
    assert (c.reporting_passes, c.reporting_requests, c.reporting_blocks) == (2, 3, 82)
    assert c.reporting_pages == 328
    assert not g.pr.reported[45]
    assert g.pr.reported[46:].all()
    g.check()


def test_config_needs_the_balloon_device() -> None:
    raw = _raw(fpr={"enabled": True})
    raw["vms"][0]["balloon"]["enabled"] = False
    with pytest.raises(ConfigError, match="free_page_reporting needs the balloon device"):
        parse_scenario(raw)
    raw = _raw(fpr={"enabled": True, "order": 11})
    with pytest.raises(ConfigError, match="order"):
        parse_scenario(raw)


# -- worlds -------------------------------------------------------------------------------------
def _raw(fpr: dict[str, Any], **guest: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw["host"]["memory_mib"] = 48
    raw["swap"]["size_mib"] = 256
    raw["duration_s"] = 4.0
    raw["vms"] = [
        {
            "name": "app",
            "memory_mib": 96,
            "access_rate_per_s": 2_000_000,
            "workload": {"type": "uniform"},
            "guest": {"footprint_mib": 80, **guest},
            "balloon": {"enabled": True, "stats_interval_s": 0, "free_page_reporting": fpr},
        }
    ]
    return raw


def _backed(w: Any, gfns: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Which gfns the host holds a frame or a swap copy of."""
    f = w.mem.flags[w.vms[0].mm.pid_base + gfns]
    return (f & np.uint8(HAS_FRAME | PG_SWAP)) != 0


def test_a_killed_guest_process_memory_goes_back_to_the_host() -> None:
    # 96 MiB of guest RAM, a 120 MiB process and no guest swap: the guest OOM-kills it once
    # its RAM is full; the host (48 MiB) had swapped part of the guest out. A 100 ms delay puts
    # the boot pass before the kill.
    raw = _raw({"enabled": True, "delay_ms": 100}, footprint_mib=120, swap={"size_mib": 0})
    raw["duration_s"] = 3.0
    w = build_world(parse_scenario(raw), None)
    w.start()
    guest, pr = w.vms[0].guest, w.vms[0].balloon.reporting
    while not guest.dead:
        w.env.run(until=int(w.env.now) + 1_000_000)
    killed = int(w.env.now)  # within 1 ms after the kill
    assert pr.counts.reporting_passes == 1
    allg = np.arange(w.vms[0].mm.nr_pages, dtype=np.int64)
    backed = _backed(w, allg)
    assert backed.sum() > 0
    assert w.mem.nr_swapped[0] > 0
    reqs = pr.counts.reporting_requests
    w.env.run(until=killed + 99_000_000)  # not reported before the delay
    assert pr.counts.reporting_requests == reqs
    run_checked(w, every_ns=200_000_000)
    assert pr.reported.all()  # every block of the guest's RAM
    assert not _backed(w, allg).any()
    assert w.mem.nr_swapped[0] == 0
    assert int(w.mem.nr_resident[0]) == 0
    assert not w.vms[0].mmu.spte.any()
    s = w.summary(0.0)["vms"][0]
    assert s["balloon"]["reporting_freed"] > 0
    assert s["balloon"]["reporting_pages"] >= int(backed.sum())


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, Any]:
    """Small guests over or under their RAM, a reporting order small enough to act, and a
    balloon that inflates and deflates."""
    order = draw(st.integers(1, 6))
    fpr = {"enabled": True, "order": order, "delay_ms": draw(st.sampled_from([20, 100, 500]))}
    raw = _raw(fpr, footprint_mib=draw(st.sampled_from([2, 6, 12])))
    raw["host"]["memory_mib"] = draw(st.sampled_from([6, 16]))
    raw["swap"]["size_mib"] = 64
    raw["duration_s"] = 1.5
    vm = raw["vms"][0]
    vm["memory_mib"] = 8
    vm["access_rate_per_s"] = 300_000
    vm["workload"] = draw(st.sampled_from([{"type": "uniform"}, {"type": "zipf", "alpha": 0.8}]))
    vm["guest"]["swap"] = {"size_mib": 16}
    if draw(st.booleans()):
        vm["balloon"]["initial_target_mib"] = draw(st.integers(2, 8))
    return raw


@settings(max_examples=8)
@given(worlds(), st.lists(st.tuples(st.integers(1, 14), st.integers(1, 8)), max_size=3))
def test_reported_pages_are_free_in_the_guest_and_gone_on_the_host(
    raw: dict[str, Any], targets: list[tuple[int, int]]
) -> None:
    w = build_world(parse_scenario(raw), None)
    dev = w.vms[0].balloon.device
    for tenth, mib in targets:  # inflate and deflate while the guest runs
        w._schedule(tenth * 100_000_000, lambda m=mib: dev.to_target(m * 256))
    run_checked(w, every_ns=50_000_000)  # World.check: PageReporting.check, check_discarded
    pr = w.vms[0].balloon.reporting
    gfns = pr.reported_gfns()
    assert (w.vms[0].guest.mem.frame_pid[gfns] == -1).all()
    assert not _backed(w, gfns).any()
    assert pr.counts.reporting_passes >= 1
