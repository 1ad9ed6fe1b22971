"""Async page faults (``vms[].async_pf``, sim/guest/vcpu.py): the guest runs on while a fault
that must wait is served; only what blocks is stall."""

from __future__ import annotations

from typing import Any

import pytest

from sim.config import parse_scenario
from sim.engine import build_world
from sim.errors import ConfigError
from tests.conftest import tiny


def _run(fraction: float, seed: int = 1) -> tuple[dict[str, Any], Any]:
    sc = tiny(duration_s=0.05, seed=seed, vms__0__async_pf=fraction, vms__0__vcpus=2)
    w = build_world(sc, None)
    w.run()
    w.check()
    return w.summary(0.0)["vms"][0], w.vms[0].stats


def test_off_reports_nothing_and_async_faults_stall_less() -> None:
    off, _ = _run(0.0)
    assert "async_pf" not in off
    half, half_st = _run(0.5)
    full, full_st = _run(1.0)
    assert 0 < half["async_pf"] < full["async_pf"]
    # the guest runs on instead of blocking: more of its time is compute, more accesses done
    assert full["stall_fraction"] < half["stall_fraction"] < off["stall_fraction"]
    assert full["accesses"] > half["accesses"] > off["accesses"]
    for st in (half_st, full_st):
        assert st.fault_ns <= st.stall_ns  # async latency is not stall


def test_the_same_seed_gives_the_same_run() -> None:
    assert _run(0.5, seed=4)[0] == _run(0.5, seed=4)[0]


def test_outstanding_async_faults_are_bounded_per_vcpu() -> None:
    from sim.guest.vcpu import ASYNC_PF_PER_VCPU

    sc = tiny(duration_s=0.02, vms__0__async_pf=1.0)
    w = build_world(sc, None)
    w.start()
    most = 0
    t = 0
    while t < 20_000_000:
        t += 100_000
        w.env.run(until=t)
        most = max(most, *(len(v._apf_gfns) for v in w.vms[0].vcpus))
    assert 0 < most <= ASYNC_PF_PER_VCPU


def test_the_share_must_be_a_fraction() -> None:
    raw = tiny().model_dump()
    raw["vms"][0]["async_pf"] = 1.5
    with pytest.raises(ConfigError, match=r"vms\[0\]\.async_pf"):
        parse_scenario(raw)
