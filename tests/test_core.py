"""The compiled host core (sim/core.py) against the general reclaim path it replaces.

Each world is built twice from one scenario, once with the core and once with it taken away
(``policy.core = None``: two_list.py, vmscan.py, rmap.py and the fused TDP walk), run to its
horizon, and every array and counter must be equal: host flags, pfns and shadows, frames, the
LRU links and policy flags, sptes, swap slots, vmstat (global and per VM), KVM's counters, the
summary, and the eviction log's rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings

from sim import engine
from sim.config import parse_scenario
from sim.core import HostCore, general_path_reason
from sim.engine import build_world, run_scenario
from sim.reclaim.two_list import TwoList
from tests.conftest import tiny
from tests.test_invariants import scenarios

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "flush_on_age": {"kvm__flush_on_age": True},
    "notifiers_off": {"kvm__mmu_notifiers": False},
    "three_vms": {"vms__0__count": 3, "host": {"memory_mib": 12}},
    "swap_full": {"swap": {"size_mib": 2}},
    "readahead": {"swap": {"size_mib": 64, "page_cluster": 3}},
    "slow_disk": {"swap": {"size_mib": 64, "queue_depth": 1, "write_latency_us": 400}},
    "batch_1": {"engine": {"batch_accesses": 1}},
}


def _state(w: Any) -> dict[str, Any]:
    mem = w.mem
    s = w.summary(0.0)
    s.pop("wall_s", None)
    pol = w.policy
    return {
        "summary": s,
        "flags": mem.flags.copy(),
        "pfn": mem.pfn.copy(),
        "frame_pid": mem.frame_pid.copy(),
        "free": mem.free_list(),
        "scans": mem.scans.copy(),
        "spte": w.spte.copy(),
        "lists": [pol.inactive.snapshot(), pol.active.snapshot()],
        "fl": pol.fl.copy(),
        "age": (pol.nonresident_age, pol.anon_cost),
        "kvm": [(vm.mmu.zapped, vm.mmu.mmu_invalidate_seq, vm.stats) for vm in w.vms],
        "vmstat": dict(w.vmstat),
        "vmstat_per_vm": [dict(c) for c in w.vmstat.per_mm],
        "swap": (w.swap.nr_free_slots, w.swap.wait_ns, w.swap.busy_ns),
    }


def _run(raw: Any, core: bool) -> tuple[dict[str, Any], bool]:
    w = build_world(raw, None)
    used = isinstance(w.policy, TwoList) and isinstance(w.policy.core, HostCore)
    if not core and used:
        w.policy.core = None
    w.run()
    return _state(w), used


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _same(a: dict[str, Any], b: dict[str, Any], name: str) -> None:
    for key in a:
        assert _equal(a[key], b[key]), f"{name}: {key} differs"


@pytest.mark.parametrize("name", VARIANTS)
def test_core_changes_nothing(name: str) -> None:
    sc = tiny(duration_s=0.05, **VARIANTS[name])
    (fast, used), (general, _) = _run(sc, True), _run(sc, False)
    assert used
    assert fast["summary"]["host"]["pswpout"] > 0  # reclaim ran
    _same(fast, general, name)


def test_no_core_for_access_tracking() -> None:
    """With EPT A/D bits off KVM ages by access tracking, which the fused walk does not take."""
    w = build_world(tiny(duration_s=0.01, kvm__ept_ad_bits=False), None)
    assert w.policy.core is None


def test_core_keeps_the_eviction_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The eviction and fault rows (last access, scans survived, dirty, refaults) are equal."""
    sc = tiny(duration_s=0.05)
    run_scenario(sc, tmp_path / "fast")
    monkeypatch.setattr(engine, "core_for", lambda *a: None)
    run_scenario(sc, tmp_path / "general")
    for table in ("evictions", "faults"):
        a = pd.read_parquet(tmp_path / "fast" / f"{table}.parquet")
        b = pd.read_parquet(tmp_path / "general" / f"{table}.parquet")
        assert len(a) > 0
        pd.testing.assert_frame_equal(a, b)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_core_equals_general_path_over_random_worlds(raw: dict[str, Any]) -> None:
    """Over the invariant tests' random worlds, made ones the core takes: two-list, a TDP MMU
    with EPT A/D bits, a disk without zswap, no page cache (everything else as drawn)."""
    raw = dict(raw, reclaim={"policy": "two_list"})
    raw.pop("host_files", None)
    raw["kvm"] = dict(raw["kvm"], mmu="tdp", ept_ad_bits=True)
    raw["swap"] = dict(raw["swap"], device="disk", zswap={"enabled": False})
    sc = parse_scenario(raw, "prop")
    fast, used = _run(sc, True)
    general, _ = _run(sc, False)
    assert used
    _same(fast, general, "random")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_the_run_note_names_exactly_the_worlds_without_the_core(raw: dict[str, Any]) -> None:
    """``memsim run`` says the core is not used exactly when the built world has none."""
    sc = parse_scenario(raw, "prop")
    w = build_world(sc, None)
    used = isinstance(getattr(w.policy, "core", None), HostCore)
    assert (general_path_reason(sc) is None) == used, general_path_reason(sc)


def test_run_says_once_when_the_core_is_not_used(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sim.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny(duration_s=0.01, reclaim={"policy": "clock"}).to_yaml())
    r = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert r.stderr.count("host core: not used (reclaim.policy clock)") == 1
    cfg.write_text(tiny(duration_s=0.01).to_yaml())
    r = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert "host core" not in r.stderr
