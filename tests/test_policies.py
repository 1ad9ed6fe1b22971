"""Contract tests for every registered policy, in both reclaim modes."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from sim.engine import World, build_world
from sim.reclaim import ReclaimConfig, config_class, policy_names
from tests.conftest import run_checked, tiny

POLICIES = policy_names()
WATERMARK = [p for p in POLICIES if p != "opt"]  # OPT needs a fixed reference string


def test_registry_matches_the_config_union() -> None:
    union = typing.get_args(typing.get_args(ReclaimConfig)[0])
    literals = {cfg.model_fields["policy"].default for cfg in union}
    assert literals == set(POLICIES)
    assert {config_class(p).model_fields["policy"].default for p in POLICIES} == set(POLICIES)


@pytest.mark.parametrize("policy", WATERMARK)
def test_watermark_mode_keeps_every_invariant(policy: str) -> None:
    w = World(tiny(duration_s=0.1, reclaim={"policy": policy}))
    run_checked(w, 2_000_000)
    s = w.summary(0.0)
    assert s["host"]["pswpout"] > 0  # it really reclaimed
    assert s["policy"] == policy


@pytest.mark.parametrize("policy", POLICIES)
def test_demand_mode_evicts_exactly_one_page_per_miss_when_full(policy: str) -> None:
    sc = tiny(duration_s=0.004, reclaim={"policy": policy, "trigger": "demand"})
    w = build_world(sc, None)
    run_checked(w, 2_000_000)
    misses = sum(v.stats.faults["first_touch"] + v.stats.faults["major"] for v in w.vms)
    frames = w.nr_frames
    assert misses > frames  # memory filled up
    assert w.alloc.evictions == misses - frames
    assert w.mem.nr_free == 0
    q = w.summary(0.0)["quality"]
    assert q["faults"] == misses
    assert q["opt_faults"] <= misses  # nothing beats OPT
    if policy == "opt":
        assert misses == q["opt_faults"]
    if policy == "lru":
        assert misses == q["lru_faults"]


def test_demand_mode_reference_string_does_not_depend_on_the_policy() -> None:
    strings = []
    for policy in ("fifo", "two_list"):
        w = build_world(
            tiny(duration_s=0.003, reclaim={"policy": policy, "trigger": "demand"}), None
        )
        w.run()
        strings.append(np.concatenate(w._string))
    assert (strings[0] == strings[1]).all()


def test_opt_outside_demand_mode_is_a_config_error() -> None:
    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match="trigger: demand"):
        tiny(reclaim={"policy": "opt"})
