"""The swap device (sim/host/swap.py): slots, latency distribution and the FIFO device queue.

The central check holds ``SwapDevice.submit``'s analytic multi-server queue to a straightforward
SimPy model of the same queue (``simpy.Resource(capacity=queue_depth)``, one process per request
that waits FIFO, holds the resource for its service time and releases it): completion times, total
queueing delay and total busy time must be identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.host.swap import SwapConfig, SwapDevice
from sim.host.vmstat import VmEvents

READ_US, WRITE_US = 80.0, 30.0


def _device(
    *,
    queue_depth: int = 32,
    cv: float = 0.3,
    seed: int = 0,
    nr_slots: int = 64,
    read_us: float = READ_US,
    write_us: float = WRITE_US,
    nr_requests: int = 256,
) -> SwapDevice:
    cfg = SwapConfig(
        size_mib=1,
        read_latency_us=read_us,
        write_latency_us=write_us,
        latency_cv=cv,
        queue_depth=queue_depth,
        nr_requests=nr_requests,
    )
    return SwapDevice(cfg, nr_slots, np.random.default_rng(seed))


# --------------------------------------------------------------------------------------------
# the reference queue: SimPy


def _simpy_queue(requests: list[tuple[int, int]], capacity: int) -> tuple[list[int], list[int]]:
    """Grant and completion time of each ``(arrival_ns, service_ns)`` request, in submit order.

    A driver process issues ``Resource.request()`` at each arrival time, in submit order (so ties
    keep their order); a worker per request waits for the grant, holds the resource for its
    service time and releases it.
    """
    env = simpy.Environment()
    res = simpy.Resource(env, capacity=capacity)
    granted = [-1] * len(requests)
    done = [-1] * len(requests)

    def worker(i: int, req: simpy.resources.resource.Request, svc: int) -> Iterator[object]:
        yield req
        granted[i] = int(env.now)
        yield env.timeout(svc)
        res.release(req)
        done[i] = int(env.now)

    def driver() -> Iterator[object]:
        for i, (t, svc) in enumerate(requests):
            if t > env.now:
                yield env.timeout(t - env.now)
            assert env.now == t
            env.process(worker(i, res.request(), svc))

    env.process(driver())
    env.run()
    assert min(done, default=0) >= 0, "a SimPy request never completed"
    return granted, done


# Submits: (gap since previous submit in ns, write?, batch size). Gaps of 0 give ties; gaps are
# on the scale of the latencies so the queue alternates between idle and backed up.
_submits = st.lists(
    st.tuples(
        st.one_of(st.just(0), st.integers(0, 60_000), st.integers(0, 400_000)),
        st.booleans(),
        st.integers(1, 6),
    ),
    min_size=1,
    max_size=25,
)


def _check_against_simpy(
    dev: SwapDevice, submits: list[tuple[int, bool, int]], service: list[list[int]]
) -> None:
    """Submit to ``dev``; compare with SimPy fed ``service[i]`` as the i-th submit's times."""
    now = 0
    requests: list[tuple[int, int]] = []
    got: list[int] = []
    for (gap, write, n), svc in zip(submits, service, strict=True):
        now += gap
        assert len(svc) == n
        done = dev.submit(now, write, n)
        assert len(done) == n
        got.extend(done)
        requests.extend((now, s) for s in svc)
    granted, expected = _simpy_queue(requests, dev.cfg.queue_depth)
    assert got == expected
    assert dev.wait_ns == sum(g - a for g, (a, _) in zip(granted, requests, strict=True))
    assert dev.busy_ns == sum(s for _, s in requests)
    assert dev.vmstat["pswpout"] == sum(n for _, w, n in submits if w)
    assert dev.vmstat["pswpin"] == sum(n for _, w, n in submits if not w)


@settings(max_examples=150, deadline=None)
@given(
    submits=_submits,
    queue_depth=st.integers(1, 8),
    cv=st.sampled_from([0.0, 0.3, 1.5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_queue_matches_simpy_resource(
    submits: list[tuple[int, bool, int]], queue_depth: int, cv: float, seed: int
) -> None:
    """Device latencies: a twin device with the same seed replays the service times."""
    dev = _device(queue_depth=queue_depth, cv=cv, seed=seed)
    twin = _device(queue_depth=queue_depth, cv=cv, seed=seed)
    service = [twin._draw(write, n).tolist() for _, write, n in submits]
    _check_against_simpy(dev, submits, service)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), submits=_submits, queue_depth=st.integers(1, 8))
def test_queue_matches_simpy_with_arbitrary_service_times(
    data: st.DataObject, submits: list[tuple[int, bool, int]], queue_depth: int
) -> None:
    """Service times chosen by hypothesis (many equal ones, so many simultaneous events)."""
    service = [
        data.draw(
            st.lists(
                st.one_of(st.sampled_from([1, 30_000, 80_000]), st.integers(1, 200_000)),
                min_size=n,
                max_size=n,
            )
        )
        for _, _, n in submits
    ]
    feed = iter(service)
    dev = _device(queue_depth=queue_depth)

    def fixed_draw(write: bool, n: int) -> np.ndarray:
        svc = next(feed)
        assert len(svc) == n
        return np.array(svc, dtype=np.int64)

    dev._draw = fixed_draw  # type: ignore[method-assign]
    _check_against_simpy(dev, submits, service)


def test_simpy_reference_detects_a_wrong_queue() -> None:
    """The reference is not vacuous: a depth-2 device differs from a depth-1 SimPy queue."""
    dev = _device(queue_depth=2, cv=0.0)
    got = dev.submit(0, True, 2)
    _, depth1 = _simpy_queue([(0, 30_000), (0, 30_000)], capacity=1)
    assert got == [30_000, 30_000]
    assert depth1 == [30_000, 60_000]


# --------------------------------------------------------------------------------------------
# the service-time stream


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.one_of(st.integers(1, 50), st.integers(1000, 9000))),
        min_size=1,
        max_size=8,
    ),
    cv=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_service_times_follow_the_documented_stream(
    ops: list[tuple[bool, int]], cv: float, seed: int
) -> None:
    """Each direction consumes its own lognormal samples drawn from the shared generator 4096
    at a time, in order; constant latencies when the cv is 0. Modelled independently here."""
    dev = _device(cv=cv, seed=seed)
    rng = np.random.default_rng(seed)
    pools: dict[bool, list[int]] = {False: [], True: []}

    def expected(write: bool, n: int) -> list[int]:
        mean = (WRITE_US if write else READ_US) * 1000.0
        if cv == 0.0:
            return [round(mean)] * n
        sigma = math.sqrt(math.log(1.0 + cv * cv))
        mu = math.log(mean) - sigma * sigma / 2.0
        pool = pools[write]
        while len(pool) < n:
            pool.extend(max(1, int(x)) for x in np.rint(rng.lognormal(mu, sigma, 4096)))
        out = pool[:n]
        del pool[:n]
        return out

    for write, n in ops:
        assert dev._draw(write, n).tolist() == expected(write, n)


def test_constant_latency_when_cv_is_zero() -> None:
    dev = _device(cv=0.0, queue_depth=64)
    assert dev.latency_ns(False, 5).tolist() == [80_000] * 5
    assert dev.latency_ns(True, 3).tolist() == [30_000] * 3
    # An idle device with enough depth: every request completes exactly one latency later.
    assert dev.submit(1_000, False, 4) == [81_000] * 4
    assert dev.submit(2_000, True, 10) == [32_000] * 10


def test_latency_is_at_least_one_ns() -> None:
    dev = _device(cv=0.0, read_us=1e-4, write_us=1e-4)
    assert dev.latency_ns(False, 3).tolist() == [1, 1, 1]
    dev = _device(cv=2.0, read_us=1e-4, write_us=1e-4)
    assert dev.latency_ns(True, 10_000).min() >= 1


@pytest.mark.parametrize("cv", [0.3, 1.0])
@pytest.mark.parametrize(("write", "mean_us"), [(False, READ_US), (True, WRITE_US)])
def test_lognormal_latency_has_configured_mean_and_cv(
    write: bool, mean_us: float, cv: float
) -> None:
    """400k samples, fixed seed. Standard error of the mean is cv/sqrt(400k) < 0.16% of the mean,
    so the 1% tolerance is > 6 standard errors; the sample cv is held to 5% of the configured one
    (its standard error is below 1% even for cv = 1, a kurtosis-38 lognormal)."""
    dev = _device(cv=cv, seed=20240601)
    x = dev.latency_ns(write, 400_000).astype(np.float64)
    mean_ns = mean_us * 1000.0
    assert x.mean() == pytest.approx(mean_ns, rel=0.01)
    assert x.std() / x.mean() == pytest.approx(cv, rel=0.05)
    assert np.all(x >= 1)
    # A lognormal, not a normal: right-skewed, median below the mean.
    assert np.median(x) < mean_ns * 0.99


# --------------------------------------------------------------------------------------------
# queue depth, counters


def test_queue_depth_one_serialises() -> None:
    dev = _device(queue_depth=1, cv=0.0)
    assert dev.submit(0, True) == [30_000]
    assert dev.submit(0, True) == [60_000]  # waits for the first write
    assert dev.submit(10_000, False) == [140_000]  # a read queues behind both writes
    assert dev.submit(500_000, True, 2) == [530_000, 560_000]  # idle again: no wait for the first
    assert dev.wait_ns == 30_000 + 50_000 + 30_000
    assert dev.busy_ns == 4 * 30_000 + 80_000


def test_queue_depth_bounds_concurrency() -> None:
    dev = _device(queue_depth=3, cv=0.0)
    done = dev.submit(0, True, 7)
    assert done == [30_000] * 3 + [60_000] * 3 + [90_000]


def test_pswpin_pswpout_count_pages_at_submission_per_vm() -> None:
    dev = _device()
    dev.vmstat = VmEvents(2)
    dev.submit(0, True, 5, per_mm=[3, 2])
    dev.submit(10, False, per_mm=0)
    dev.submit(20, False, 3, per_mm=1)
    dev.submit(30, True, 1)  # no VM named: the host total only
    vs = dev.vmstat
    assert (vs["pswpin"], vs["pswpout"]) == (4, 6)
    assert vs.per_mm[0]["pswpout"] == 3
    assert vs.per_mm[1]["pswpin"] == 3


def test_request_tags_block_the_submitter() -> None:
    """With one request tag, each write waits for the one before it: the device serves them one
    at a time whatever its depth, and the submitter is blocked until its last one got a tag."""
    dev = _device(queue_depth=4, cv=0.0, nr_requests=1)
    done = dev.submit(0, True, 4)
    assert done == [30_000, 60_000, 90_000, 120_000]
    assert dev.blocked_until == 90_000
    assert dev.in_flight(0) == 1
    # a read submitted meanwhile waits for a tag too (it queues behind the writes)
    assert dev.submit(10_000, False, 1) == [120_000 + 80_000]
    assert dev.blocked_until == 120_000


def test_request_tags_above_the_depth_only_bound_the_backlog() -> None:
    """Three tags, two servers: the third write queues on the device, the fourth waits for a
    tag (the first completion), and the submitter is free once it has one."""
    dev = _device(queue_depth=2, cv=0.0, nr_requests=3)
    assert dev.submit(0, True, 5) == [30_000, 30_000, 60_000, 60_000, 90_000]
    assert dev.blocked_until == 30_000
    assert dev.in_flight(30_000) == 3


def test_a_synchronous_device_completes_at_submission() -> None:
    """SWP_SYNCHRONOUS_IO (demand mode's device): no queue, no time, still counted."""
    cfg = SwapConfig(size_mib=1, write_latency_us=WRITE_US, nr_requests=1)
    dev = SwapDevice(cfg, 64, np.random.default_rng(0), synchronous=True)
    assert dev.submit(7, True, 3) == [7, 7, 7]
    assert dev.blocked_until == 7
    assert dev.vmstat["pswpout"] == 3


def test_submit_zero_pages_is_a_no_op() -> None:
    """Regression: at commit 0d14a7b ``_draw(write, 0)`` took ``pool[-0:]``, the whole pool."""
    dev = _device(queue_depth=1)
    dev.submit(0, True, 1)  # leaves 4095 pre-drawn write latencies in the pool
    busy = dev.busy_ns
    assert dev.submit(10, True, 0) == []
    assert dev.busy_ns == busy
    assert dev.vmstat["pswpout"] == 1
    # The pool was not consumed: the next write gets the second latency of the stream.
    twin = _device(queue_depth=1)
    assert dev._draw(True, 1).tolist() == twin._draw(True, 2)[1:].tolist()


# --------------------------------------------------------------------------------------------
# slots


def test_slots_are_counted_until_full() -> None:
    """Slots are interchangeable: a request gets as many as are free, never more."""
    dev = _device(nr_slots=8)
    assert dev.alloc_slots(5) == 5
    assert dev.alloc_slots(5) == 3  # only three left
    assert dev.nr_free_slots == 0
    assert dev.alloc_slots(1) == 0
    assert dev.alloc_slots(1) == 0  # still full, still consistent
    dev.free_slots(1)
    assert dev.nr_free_slots == 1
    assert dev.alloc_slots(2) == 1
    assert dev.alloc_slots(0) == 0


def test_no_swap_has_no_slots() -> None:
    dev = _device(nr_slots=0)
    assert dev.alloc_slots(1) == 0
    assert not dev.vm_swap_full()


def test_freeing_slots_not_in_use_is_a_bug() -> None:
    dev = _device(nr_slots=8)
    dev.alloc_slots(2)
    with pytest.raises(AssertionError):
        dev.free_slots(3)


@settings(max_examples=100, deadline=None)
@given(
    nr_slots=st.integers(0, 40),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=120),
)
def test_slot_counts_match_a_model(nr_slots: int, ops: list[tuple[bool, int]]) -> None:
    """(True, n) allocates n, (False, n) frees up to n of those in use: allocation is capped by
    the free slots, and the free count and ``vm_swap_full`` follow."""
    dev = _device(nr_slots=nr_slots)
    used = 0
    for alloc, n in ops:
        if alloc:
            got = dev.alloc_slots(n)
            assert got == min(n, nr_slots - used)
            used += got
        else:
            n = min(n, used)
            dev.free_slots(n)
            used -= n
        assert dev.nr_free_slots == nr_slots - used
        assert dev.vm_swap_full() == (used > nr_slots / 2)


@pytest.mark.parametrize(("nr_slots", "full_at"), [(10, 6), (9, 5), (1, 1), (2, 2)])
def test_vm_swap_full_means_more_than_half_used(nr_slots: int, full_at: int) -> None:
    dev = _device(nr_slots=nr_slots)
    for used in range(1, nr_slots + 1):
        assert dev.alloc_slots(1) == 1
        assert dev.vm_swap_full() == (used >= full_at), used
    dev.free_slots(nr_slots - full_at + 1)
    assert not dev.vm_swap_full()  # back to exactly full_at - 1 used
    dev.alloc_slots(1)
    assert dev.vm_swap_full()
