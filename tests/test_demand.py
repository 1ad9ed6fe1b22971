"""Demand mode on the shared paths: the vCPU's touch walk and KVM's fault generator, driven at
once, with the vCPU's fault bookkeeping."""

from __future__ import annotations

from typing import Any

import pytest
import simpy

import sim.demand
from sim.demand import _at_once
from sim.engine import build_world
from tests.conftest import tiny


def test_at_once_returns_the_value_of_a_path_that_never_waits() -> None:
    def quick() -> Any:
        return "done"
        yield  # a generator that returns before its first yield

    assert _at_once(quick()) == "done"


def test_at_once_refuses_a_path_that_waits() -> None:
    env = simpy.Environment()

    def waits() -> Any:
        yield env.timeout(1)
        return "late"

    with pytest.raises(AssertionError, match="waited"):
        _at_once(waits())


@pytest.mark.parametrize("changes", [{}, {"kvm__ept_ad_bits": False}, {"kvm__mmu": "shadow"}])
def test_every_demand_fault_goes_through_the_shared_generator_and_bookkeeping(
    monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any]
) -> None:
    calls = {"kvm_page_fault": 0, "fault_done": 0}
    real_fault, real_done = sim.demand.kvm_page_fault, sim.demand.fault_done

    def fault(*args: Any, **kw: Any) -> Any:
        calls["kvm_page_fault"] += 1
        return (yield from real_fault(*args, **kw))

    def done(*args: Any, **kw: Any) -> None:
        calls["fault_done"] += 1
        real_done(*args, **kw)

    monkeypatch.setattr(sim.demand, "kvm_page_fault", fault)
    monkeypatch.setattr(sim.demand, "fault_done", done)
    w = build_world(
        tiny(duration_s=0.003, reclaim={"policy": "two_list", "trigger": "demand"}, **changes), None
    )
    w.run()
    faults = sum(sum(vm.stats.faults.values()) for vm in w.vms)
    assert w.alloc.evictions > 0  # memory filled up: faults evicted pages
    assert faults == calls["kvm_page_fault"] == calls["fault_done"]
    if not changes.get("kvm__ept_ad_bits", True):
        assert sum(vm.stats.faults["access_tracking"] for vm in w.vms) > 0
    w.check()
