"""virtio-balloon driver and device (sim/guest/balloon.py) and the MOM rules (sim/host/mom.py),
against a fake guest whose pages are a numpy state array and a fake discard that checks what
it is given."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import pytest
import simpy
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from sim.guest.balloon import (
    OUT_OF_PUFF_SLEEP_NS,
    BalloonConfig,
    BalloonCosts,
    GuestMeminfo,
    VirtioBalloon,
)
from sim.host.mom import GuestEntity, HostMem, Mom, MomConfig, evaluate, grow_guest, shrink_guest

FREE, USED, HELD = 0, 1, 2
C = BalloonCosts()


class FakeGuest:
    """Guest RAM as one state per gfn (free, used by the workload, held by the balloon), with
    its own running counts to hold the state array to."""

    def __init__(self, env: simpy.Environment, nr_pages: int, used: int = 0) -> None:
        self.env = env
        self.nr_pages = nr_pages
        self.state = np.full(nr_pages, FREE, dtype=np.int8)
        self.state[:used] = USED
        self.n = {FREE: nr_pages - used, USED: used, HELD: 0}
        self.discards = np.zeros(nr_pages, dtype=np.int64)  # since the page was last inflated
        self.discarded: list[NDArray[np.int64]] = []
        self.alloc_calls: list[tuple[int, int, int]] = []  # (time, asked, got)
        self.freed: list[NDArray[np.int64]] = []
        self.notifiers: list[Callable[[], int]] = []
        self.alloc_ns = 0

    def _move(self, gfns: NDArray[np.int64], old: int, new: int) -> None:
        assert len(np.unique(gfns)) == len(gfns)
        assert np.all(self.state[gfns] == old)
        self.state[gfns] = new
        self.n[old] -= len(gfns)
        self.n[new] += len(gfns)

    def balloon_alloc(self, n: int) -> Generator[simpy.Event, Any, NDArray[np.int64]]:
        if self.alloc_ns:
            yield self.env.timeout(self.alloc_ns)
        gfns = np.flatnonzero(self.state == FREE)[:n].astype(np.int64)
        self._move(gfns, FREE, HELD)
        self.discards[gfns] = 0
        self.alloc_calls.append((int(self.env.now), n, len(gfns)))
        return gfns

    def balloon_free(self, gfns: NDArray[np.int64]) -> None:
        self._move(gfns, HELD, FREE)
        self.freed.append(gfns.copy())

    def meminfo(self) -> GuestMeminfo:
        return GuestMeminfo(
            total=self.nr_pages,
            free=self.n[FREE],
            available=self.n[FREE],
            cached=0,
            swap_in=0,
            swap_out=0,
            major_faults=0,
            minor_faults=0,
        )

    def register_oom_notifier(self, fn: Callable[[], int]) -> None:
        self.notifiers.append(fn)

    def discard(self, gfns: NDArray[np.int64]) -> None:
        """The host side: only pages the balloon holds may be discarded."""
        assert np.all(self.state[gfns] == HELD), "discarded a page the balloon does not hold"
        self.discards[gfns] += 1
        self.discarded.append(gfns.copy())

    def use(self, k: int) -> None:
        """The workload takes k free pages."""
        self._move(np.flatnonzero(self.state == FREE)[:k], FREE, USED)

    def release(self, k: int) -> None:
        """The workload frees k of its pages."""
        self._move(np.flatnonzero(self.state == USED)[:k], USED, FREE)


def setup(
    nr_pages: int = 1000, used: int = 0, **cfg: Any
) -> tuple[simpy.Environment, FakeGuest, VirtioBalloon]:
    env = simpy.Environment()
    guest = FakeGuest(env, nr_pages, used)
    cfg.setdefault("enabled", True)
    cfg.setdefault("stats_interval_s", 0)
    b = VirtioBalloon.create(env, guest, guest.discard, BalloonConfig(**cfg))
    return env, guest, b


def inflate_chunk_ns(k: int) -> int:
    """fill_balloon of k pages: allocs, kick, QEMU's request, a discard per page, write of
    actual."""
    return (
        k * C.alloc_page_ns
        + C.vmexit_ns
        + C.request_ns
        + k * (C.qemu_page_ns + C.discard_page_ns)
        + C.vmexit_ns
    )


def test_default_costs_per_chunk_worked_by_hand() -> None:
    # 256 x 250 + 800 + 3000 + 256 x (150 + 2000) + 800
    assert inflate_chunk_ns(256) == 64_000 + 800 + 3_000 + 550_400 + 800 == 619_000


def test_inflate_to_target_in_chunks_of_256() -> None:
    env, guest, b = setup()
    b.device.set_num_pages(600)
    ends = [619_000, 619_000 * 2, 619_000 * 2 + inflate_chunk_ns(88)]
    assert ends[2] == 1_238_000 + 22_000 + 800 + 3_000 + 189_200 + 800
    for end, before, after in zip(ends, [0, 256, 512], [256, 512, 600], strict=True):
        env.run(until=end)  # the write of actual at `end` is not processed yet
        assert b.device.actual == before
        env.run(until=end + 1)
        assert b.device.actual == after
    assert [a[1] for a in guest.alloc_calls] == [256, 256, 88]
    assert [a[0] for a in guest.alloc_calls] == [0, 619_000, 1_238_000]
    assert b.counts.inflate_requests == 3
    assert b.counts.vmexits == 6
    assert b.counts.balloon_inflate == 600
    assert b.driver.num_pages == 600
    assert guest.n[HELD] == 600
    assert b.device.balloon_cur() == 400
    assert b.counters()["balloon_pages"] == 600
    assert b.counters()["balloon_inflate"] == 600
    env.run(until=10**9)
    assert b.counts.inflate_requests == 3  # nothing more once at the target


def test_to_target_is_guest_memory_clamped_and_zero_ignored() -> None:
    _, _, b = setup()
    b.device.to_target(700)
    assert b.device.num_pages == 300
    b.device.to_target(5000)  # above RAM: RAM, no balloon
    assert b.device.num_pages == 0
    b.device.set_num_pages(10)
    b.device.to_target(0)  # virtio_balloon_to_target ignores 0
    assert b.device.num_pages == 10


def test_initial_target_in_mib() -> None:
    env, guest, b = setup(nr_pages=1024, initial_target_mib=3)  # 3 MiB of 4 MiB: 256 ballooned
    assert b.device.num_pages == 1024 - 768
    env.run(until=10**8)
    assert b.device.actual == 256
    assert guest.n[HELD] == 256


def test_out_of_puff_sleeps_200ms_then_retries() -> None:
    env, guest, b = setup(nr_pages=1000, used=700)  # 300 free
    b.device.set_num_pages(600)
    t1 = 619_000  # first chunk: all 256
    t2 = t1 + OUT_OF_PUFF_SLEEP_NS + inflate_chunk_ns(44)  # 44 allocated, sleep, tell
    assert t2 == 619_000 + 11_000 + 200_000_000 + 800 + 3_000 + 94_600 + 800
    retry = OUT_OF_PUFF_SLEEP_NS + C.vmexit_ns  # nothing allocated: sleep, write actual
    env.run(until=t2 + 3 * retry + 1)
    assert [a[0] for a in guest.alloc_calls] == [
        0,
        t1,
        t2,
        t2 + retry,
        t2 + 2 * retry,
        t2 + 3 * retry,
    ]
    assert [a[2] for a in guest.alloc_calls] == [256, 44, 0, 0, 0, 0]
    assert b.counts.out_of_puff == 5  # the 44-page chunk and four empty ones
    assert b.counts.inflate_requests == 2  # an empty chunk is not told to the host
    assert b.device.actual == 300
    guest.release(50)  # the workload frees memory: the next retry takes it (still short)
    t3 = t2 + 4 * retry + OUT_OF_PUFF_SLEEP_NS + inflate_chunk_ns(50)
    env.run(until=t3)
    assert b.device.actual == 300
    env.run(until=t3 + 1)
    assert b.device.actual == 350
    assert guest.alloc_calls[6] == (t2 + 4 * retry, 256, 50)
    assert guest.alloc_calls[7] == (t3, 250, 0)  # the next retry: 250 still missing
    assert guest.n[FREE] == 0


def test_deflate_returns_exactly_the_held_pages_newest_first() -> None:
    env, guest, b = setup()
    b.device.set_num_pages(600)
    env.run(until=10**8)
    inflated = np.concatenate([g for g in guest.discarded])
    t0 = int(env.now)
    b.device.set_num_pages(100)
    leak256 = 256 * C.free_page_ns + C.vmexit_ns + C.request_ns + 256 * 650 + C.vmexit_ns
    assert leak256 == 51_200 + 800 + 3_000 + 166_400 + 800
    env.run(until=t0 + leak256 + 1)
    assert b.device.actual == 344
    env.run(until=10**9)
    assert b.device.actual == 100
    assert b.counts.deflate_requests == 2
    assert b.counts.balloon_deflate == 500
    freed = np.concatenate(guest.freed)
    assert len(freed) == 500 == len(np.unique(freed))
    np.testing.assert_array_equal(np.sort(freed), np.sort(inflated[100:]))
    np.testing.assert_array_equal(np.flatnonzero(guest.state == HELD), np.sort(inflated[:100]))
    assert guest.n == {FREE: 900, USED: 0, HELD: 100}
    b.device.set_num_pages(0)
    env.run(until=2 * 10**9)
    assert guest.n[HELD] == 0
    assert b.driver.num_pages == 0


def test_discard_sees_each_inflated_gfn_once_and_no_deflated_one() -> None:
    env, guest, b = setup()
    b.device.set_num_pages(700)
    env.run(until=10**9)
    b.device.set_num_pages(200)
    env.run(until=2 * 10**9)
    b.device.set_num_pages(500)  # re-inflates pages deflated before
    env.run(until=3 * 10**9)
    seen = np.concatenate(guest.discarded)
    assert len(seen) == 700 + 300
    first = seen[:700]
    assert len(np.unique(first)) == 700
    held = np.flatnonzero(guest.state == HELD)
    assert len(held) == 500
    assert np.all(guest.discards[held] == 1)
    assert np.all(guest.discards[guest.state == FREE] <= 1)


def test_deflate_on_oom_frees_256_per_call() -> None:
    env, guest, b = setup(deflate_on_oom=True)
    assert len(guest.notifiers) == 1
    b.device.set_num_pages(300)
    env.run(until=10**9)
    oom = guest.notifiers[0]
    assert oom() == 256
    assert b.driver.num_pages == 44
    assert b.device.actual == 44
    assert guest.n[FREE] == 700 + 256
    assert oom() == 44
    assert oom() == 0
    assert b.counts.oom_deflates == 2
    assert b.counts.oom_deflate_pages == 300
    assert b.counts.balloon_deflate == 300


def test_no_oom_notifier_without_the_feature() -> None:
    _, guest, _ = setup(deflate_on_oom=False)
    assert guest.notifiers == []


def test_oom_notifier_leaves_an_inflate_in_flight_alone() -> None:
    env, guest, b = setup(deflate_on_oom=True)
    b.device.set_num_pages(256)
    env.run(until=100_000)  # allocated, not yet acked by QEMU
    assert b.driver.num_pages == 256
    assert len(b.driver.pages) == 0
    assert guest.notifiers[0]() == 0
    env.run(until=10**9)
    assert np.all(guest.discards[b.driver.pages] == 1)


def test_stats_polling_interval_and_memtotal() -> None:
    env, guest, b = setup(stats_interval_s=1)
    rt = C.request_ns + C.stats_ns + C.vmexit_ns
    assert b.counts.stats_requests == 1  # primed at probe
    env.run(until=rt + 1)
    assert b.device.stats_last_update_ns == rt
    env.run(until=2 * rt + 10**9 + 1)
    assert b.device.stats_last_update_ns == 2 * rt + 10**9
    assert b.counts.stats_requests == 3
    b.device.set_num_pages(100)
    env.run(until=3 * rt + 2 * 10**9 + 1)
    st_ = b.device.stats
    assert st_ is not None
    assert st_.total == 900  # the balloon leaves MemTotal without deflate-on-OOM
    assert st_.free == 900 == b.device.stat_free_memory()
    _, _, b2 = setup(deflate_on_oom=True, stats_interval_s=1)
    b2.device.set_num_pages(100)
    b2.driver.env.run(until=2 * 10**9)
    assert b2.device.stats is not None
    assert b2.device.stats.total == 1000


# MOM's balloon.rules, worked by hand (pages; defaults: threshold 0.20, critical 0.05, guest
# free 0.20, max change 0.05, min change 0.0025)
M = MomConfig()


def ent(cur: int, unused: float, mx: int = 10_000, mn: int = 0) -> GuestEntity:
    return GuestEntity(
        balloon_cur=cur, balloon_max=mx, balloon_min=mn, avg_balloon_cur=cur, avg_mem_unused=unused
    )


@pytest.mark.parametrize(
    ("host_free", "guest", "expected"),
    [
        # shrink, host 15% free: guest keeps 0.20 x 0.15/0.20 = 15%; used 6000;
        # floor 6000 + 1500 = 7500; 5% step: 9500 >= 7500 -> 9500
        (0.15, ent(10_000, 4000), 9500),
        # floor 8200 + 1500 = 9700 above the 5% step 9500 -> 9700
        (0.15, ent(10_000, 1800), 9700),
        # floor 9000 + 1500 = 10500 > balloon_cur: no change
        (0.15, ent(10_000, 1000), None),
        # floor 8510 + 1500 = 10010 > balloon_cur: no change
        (0.15, ent(10_000, 1490), None),
        # floor 8485 + 1500 = 9985: a move of 15 <= 0.0025 x 10000 = 25: too small
        (0.15, ent(10_000, 1515), None),
        # balloon_min (guaranteed memory) 9800 above the step: 9800
        (0.15, ent(10_000, 4000, mn=9800), 9800),
        # critical, host 3% free: guest keeps 0.03 - 0.05 = -2%; used 9900.4;
        # floor 9900.4 - 200 = 9700.4, truncated -> 9700
        (0.03, ent(10_000, 99.6), 9700),
        # critical with room: floor 5000 - 200 = 4800 below the step: 9500
        (0.03, ent(10_000, 5000), 9500),
        # grow, host 50% free: used 7000, floor 7000 + 1600 = 8600 above 8000 x 1.05 = 8400
        (0.5, ent(8000, 1000), 8600),
        # grow by the 5% step: used 5000, floor 6600 < 8400 -> 8400
        (0.5, ent(8000, 3000), 8400),
        # grow capped at balloon_max: 9800 x 1.05 = 10290 -> 10000
        (0.5, ent(9800, 3000), 10_000),
        # grow: cap leaves a move of 10 <= 0.0025 x 9990 = 24.975: too small
        (0.5, ent(9990, 3000), None),
        # not ballooned: nothing to grow
        (0.5, ent(10_000, 3000), None),
        # exactly at the threshold: grow branch
        (0.20, ent(8000, 3000), 8400),
    ],
)
def test_mom_rules_by_hand(host_free: float, guest: GuestEntity, expected: int | None) -> None:
    assert evaluate(host_free, [guest], M) == [expected]


def test_mom_rules_branches_directly() -> None:
    g = ent(10_000, 4000)
    assert shrink_guest(0.15, g, M) == 9500
    assert grow_guest(ent(9000, 4000), M) == 9450  # 9000 x 1.05; floor 5000 + 1800
    # a shrink that would grow is refused, a grow is never below balloon_cur here
    assert shrink_guest(0.19, ent(10_000, 100), M) is None


@pytest.mark.parametrize(("history", "target"), [(2, 8400), (3, 7600)])
def test_mom_averages_over_its_history(history: int, target: int) -> None:
    """Samples at 0, 5 and 10 s, the policy at 10 s. Host free 150, 150, 250 of 1000: over
    the last two samples 20% (not below the threshold: grow), over three 18.3% (shrink)."""
    env = simpy.Environment()
    guest = FakeGuest(env, 10_000)
    b = VirtioBalloon.create(
        env, guest, guest.discard, BalloonConfig(enabled=True, stats_interval_s=5)
    )
    b.device.set_num_pages(2000)  # guest memory 8000 pages within a few ms
    free = iter([150, 150, 250])
    mom = Mom(
        env,
        MomConfig(sample_history_length=history),
        lambda: HostMem(total=1000, free=next(free)),
        [b.device],
        held=lambda i: b.driver.num_pages,
    )
    env.run(until=10 * 10**9 + 1)
    # guest samples (balloon_cur, MemFree): 0 s (10000, 10000: primed at probe), 5 s
    # (8000, 9744: stats of 8.8 us, one chunk in), 10 s (8000, 8000). Used memory is
    # negative, so the floors (-872 + 0.2 x 8000; -581.3 + 0.183 x 8000) never bind:
    # grow 8000 x 1.05 = 8400, or shrink 8000 x 0.95 = 7600.
    assert mom.evaluations == 1
    assert mom.records == [(10 * 10**9, 0, 8000, target, 10_000 - target, 2000)]
    s = mom.series()
    assert list(s["target"]) == [target]
    assert list(s["num_pages"]) == [10_000 - target]
    env.run(until=11 * 10**9)
    assert b.device.actual == 10_000 - target
    assert b.device.balloon_cur() == target


def test_mom_skips_a_guest_without_stats() -> None:
    env = simpy.Environment()
    g = FakeGuest(env, 1000)
    b = VirtioBalloon.create(env, g, g.discard, BalloonConfig(enabled=True, stats_interval_s=0))
    b.device.stats = None  # no stats queue answer yet
    mom = Mom(env, MomConfig(), lambda: HostMem(total=100, free=1), [b.device])
    env.run(until=10 * 10**9 + 1)
    assert mom.evaluations == 1
    assert mom.records == []


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    n = draw(st.integers(1, 25))
    return [
        (
            draw(st.sampled_from(["target", "use", "release", "oom"])),
            draw(st.integers(0, 1200)),
            draw(st.integers(1, 600_000_000)),
        )
        for _ in range(n)
    ]


@given(scripts(), st.booleans())
def test_balloon_invariants_over_random_targets_and_guest_memory(
    script: list[tuple[str, int, int]], on_oom: bool
) -> None:
    env, guest, b = setup(nr_pages=1200, used=300, deflate_on_oom=on_oom, stats_interval_s=1)
    guest.alloc_ns = 5_000  # a guest whose allocations take time (direct reclaim)
    drv = b.driver

    def check() -> None:
        assert sum(guest.n.values()) == guest.nr_pages
        for s in (FREE, USED, HELD):
            assert guest.n[s] == np.count_nonzero(guest.state == s)
        pages = drv.pages
        assert len(np.unique(pages)) == len(pages)  # never a page twice
        assert np.all(guest.state[pages] == HELD)
        assert np.all(guest.discards[pages] == 1)  # discarded once since last inflated
        assert np.all(guest.discards[guest.state != HELD] <= 1)
        assert len(pages) <= drv.num_pages <= guest.n[HELD]

    for kind, value, dt in script:
        if kind == "target":
            b.device.set_num_pages(value)
        elif kind == "use":
            guest.use(min(value, guest.n[FREE]))
        elif kind == "release":
            guest.release(min(value, guest.n[USED]))
        elif on_oom:
            guest.notifiers[0]()
        env.run(until=env.now + dt)
        check()
    guest.release(guest.n[USED])
    b.device.set_num_pages(min(b.device.num_pages, guest.nr_pages))
    for _ in range(100):
        if not drv.busy:
            break
        env.run(until=env.now + 10**9)
    assert not drv.busy
    check()
    assert drv.num_pages == len(drv.pages) == guest.n[HELD] == b.device.num_pages
    assert b.device.actual == drv.num_pages
    held = np.flatnonzero(guest.state == HELD)
    np.testing.assert_array_equal(np.sort(drv.pages), held)
    assert b.counts.balloon_inflate - b.counts.balloon_deflate == drv.num_pages
    seen = np.concatenate(guest.discarded) if guest.discarded else np.empty(0, np.int64)
    assert len(seen) == b.counts.balloon_inflate
