"""The compiled host core (sim/core.py) against the general reclaim path it replaces.

Each world is built twice from one scenario, once with the core and once with it switched off
(``sim.fast.disabled("host_core")``: two_list.py, vmscan.py, rmap.py and the fused TDP walk),
run to its horizon, and every array and counter must be equal (tests/test_fastpaths.py's
``world_state``: host flags, pfns and shadows, frames, the policy's lists and flags, sptes,
swap slots, vmstat global and per VM, KVM's counters, the summary), and the eviction log's
rows too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim import fast
from sim.config import parse_scenario
from sim.core import HostCore, general_path_reason
from sim.engine import build_world, run_scenario
from sim.reclaim.two_list import TwoList
from tests.conftest import tiny
from tests.test_fastpaths import differences, world_state
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
    "clock": {"reclaim": {"policy": "clock"}},
    "fifo": {"reclaim": {"policy": "fifo"}},
    "lru": {"reclaim": {"policy": "lru"}},
    "random": {"reclaim": {"policy": "random"}},
    "mglru": {"reclaim": {"policy": "mglru"}},
    "mglru_three_vms": {
        "reclaim": {"policy": "mglru"},
        "vms__0__count": 3,
        "host": {"memory_mib": 12},
    },
    "fifo_swap_full": {"reclaim": {"policy": "fifo"}, "swap": {"size_mib": 2}},
    "rotational": {"swap": {"size_mib": 64, "rotational": True, "page_cluster": 3}},
    "rotational_full": {"swap": {"size_mib": 3, "rotational": True}},
    "rotational_clock": {
        "reclaim": {"policy": "clock"},
        "swap": {"size_mib": 8, "rotational": True},
    },
    "zram": {"swap": {"size_mib": 64, "device": "zram"}},
    "zram_full": {"swap": {"size_mib": 3, "device": "zram"}},
    "zram_fifo": {"reclaim": {"policy": "fifo"}, "swap": {"size_mib": 64, "device": "zram"}},
    "zram_mglru": {"reclaim": {"policy": "mglru"}, "swap": {"size_mib": 64, "device": "zram"}},
    "zram_memcg": {"vms__0__memcg": {"swap_max_mib": 2}, "swap": {"size_mib": 8, "device": "zram"}},
    "zswap": {"swap__zswap": {"enabled": True}},
    "zswap_limit": {"swap__zswap": {"enabled": True, "max_pool_percent": 2}},
    "zswap_poor": {"swap__zswap": {"enabled": True}, "vms__0__compress_ratio": 1.05},
    "zswap_poor_rejected": {
        "swap__zswap": {"enabled": True, "store_incompressible": False},
        "vms__0__compress_ratio": 1.05,
    },
    "zswap_full": {"swap": {"size_mib": 2, "zswap": {"enabled": True}}},
    "zswap_rotational": {
        "swap": {"size_mib": 8, "rotational": True, "zswap": {"enabled": True}},
    },
    "zswap_fifo": {"reclaim": {"policy": "fifo"}, "swap__zswap": {"enabled": True}},
    "zswap_mglru": {
        "reclaim": {"policy": "mglru"},
        "swap__zswap": {"enabled": True, "max_pool_percent": 5},
    },
    "zswap_memcg": {
        "vms__0__memcg": {"swap_max_mib": 2},
        "swap__zswap": {"enabled": True, "max_pool_percent": 5},
    },
    "memcg": {"vms__0__memcg": {}},
    "memcg_swap_max": {"vms__0__memcg": {"swap_max_mib": 1}},
    "memcg_limit": {"vms__0__memcg": {"max_mib": 3, "swap_max_mib": 2}},
    "memcg_swap_full": {"vms__0__memcg": {"swap_max_mib": 3}, "swap": {"size_mib": 4}},
    "memcg_lazy_stats": {"vms__0__memcg": {"max_mib": 4}, "host__memcg_stats": "lazy"},
    "memcg_mglru": {"reclaim": {"policy": "mglru"}, "vms__0__memcg": {"swap_max_mib": 1}},
    "memcg_rotational": {
        "vms__0__memcg": {"swap_max_mib": 3},
        "swap": {"size_mib": 8, "rotational": True},
    },
}


def _run(sc: Any, core: bool) -> tuple[dict[str, Any], bool]:
    """The world of ``sc`` run to its horizon with the core or without it: its state (all a
    fast path must leave as its general path does), and whether it had a core."""
    if not core:
        with fast.disabled("host_core"):
            return _run(sc, True)
    w = build_world(sc, None)
    used = isinstance(w.vmscan.core, HostCore)
    for lruvec in getattr(w.policy, "lruvecs", [w.policy]):
        if isinstance(lruvec, TwoList):
            used = used and lruvec.core is w.vmscan.core
    w.run()
    return world_state(w), used


def _same(a: dict[str, Any], b: dict[str, Any], name: str) -> None:
    diff = differences(a, b)
    assert not diff, f"{name}: the core changes the result:\n" + "\n".join(diff[:20])


@pytest.mark.parametrize("name", VARIANTS)
def test_core_changes_nothing(name: str) -> None:
    sc = tiny(duration_s=0.05, **VARIANTS[name])
    (fast, used), (general, _) = _run(sc, True), _run(sc, False)
    assert used
    vs = fast["summary"]["host"]["vmstat"]
    assert vs["pswpout"] + vs.get("zswpout", 0) > 0  # reclaim wrote pages out
    _same(fast, general, name)


def test_no_core_for_access_tracking() -> None:
    """With EPT A/D bits off KVM ages by access tracking, which the fused walk does not take."""
    w = build_world(tiny(duration_s=0.01, kvm__ept_ad_bits=False), None)
    assert w.policy.core is None
    assert w.vmscan.core is None


def test_core_keeps_the_eviction_log(tmp_path: Path) -> None:
    """The eviction and fault rows (last access, scans survived, dirty, refaults) are equal."""
    sc = tiny(duration_s=0.05)
    run_scenario(sc, tmp_path / "fast")
    with fast.disabled("host_core"):
        run_scenario(sc, tmp_path / "general")
    for table in ("evictions", "faults"):
        a = pd.read_parquet(tmp_path / "fast" / f"{table}.parquet")
        b = pd.read_parquet(tmp_path / "general" / f"{table}.parquet")
        assert len(a) > 0
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow  # every check is made by test_fastpaths' host_core worlds (cored: these and more)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_core_equals_general_path_over_random_worlds(raw: dict[str, Any]) -> None:
    """Over the invariant tests' random worlds, made ones the core takes: a TDP MMU with EPT
    A/D bits, no page cache (everything else, the policy, the device and zswap too, as
    drawn)."""
    raw = dict(raw, reclaim={"policy": raw["reclaim"]["policy"]})
    raw.pop("host_files", None)
    raw["kvm"] = dict(raw["kvm"], mmu="tdp", ept_ad_bits=True)
    sc = parse_scenario(raw, "prop")
    fast, used = _run(sc, True)
    general, _ = _run(sc, False)
    assert used
    _same(fast, general, "random")


@st.composite
def memcg_worlds(draw: st.DrawFn) -> dict[str, Any]:
    """The invariant tests' random worlds made ones the core takes with a memcg per VM (as
    libvirt makes): two-list or MGLRU, swap to reclaim into (zram, or a disk with slot
    identities or without, with zswap or without), memory.max, memory.swap.max and memory.low
    drawn per VM, exact or lazy memcg statistics."""
    raw = copy.deepcopy(draw(scenarios()))
    raw["reclaim"] = {"policy": draw(st.sampled_from(["two_list", "two_list", "mglru"]))}
    raw.pop("host_files", None)
    raw["kvm"] = dict(raw["kvm"], mmu="tdp", ept_ad_bits=True)
    raw["swap"] = dict(raw["swap"], size_mib=draw(st.sampled_from([1, 2, 4, 64])))
    if raw["swap"]["device"] == "disk":
        raw["swap"]["rotational"] = draw(st.booleans())
    limits = [{}, {"swap_max_mib": 1}, {"max_mib": 3, "swap_max_mib": 2}, {"max_mib": 2}]
    for vm in raw["vms"]:
        vm["memcg"] = draw(st.sampled_from([*limits, {"low_mib": 2}]))
    if draw(st.booleans()):
        raw["host"] = dict(raw["host"], memcg_stats="lazy")
    return raw


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(memcg_worlds())
def test_core_equals_general_path_over_random_memcg_worlds(raw: dict[str, Any]) -> None:
    sc = parse_scenario(raw, "prop")
    fast, used = _run(sc, True)
    general, _ = _run(sc, False)
    assert used
    _same(fast, general, "random memcg")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_the_run_note_names_exactly_the_worlds_without_the_core(raw: dict[str, Any]) -> None:
    """``memsim run`` says the core is not used exactly when the built world has none."""
    sc = parse_scenario(raw, "prop")
    w = build_world(sc, None)
    used = isinstance(w.vmscan.core, HostCore)
    assert (general_path_reason(sc) is None) == used, general_path_reason(sc)


def test_run_says_once_when_the_core_is_not_used(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sim.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny(duration_s=0.01, kvm__ept_ad_bits=False).to_yaml())
    r = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert r.stderr.count("host core: not used (kvm.ept_ad_bits off (access tracking))") == 1
    for i, policy in enumerate(("two_list", "clock", "mglru")):
        cfg.write_text(tiny(duration_s=0.01, reclaim={"policy": policy}).to_yaml())
        r = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / f"p{i}")])
        assert r.exit_code == 0, r.output
        assert "host core" not in r.stderr, policy
