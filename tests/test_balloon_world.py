"""The balloon in a world (``vms[].balloon`` with ``vms[].guest``, and the host's ``mom``): the
guest kernel gives pages, the host discards them, and a MOM-like manager sets the targets."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.config import parse_scenario
from sim.engine import build_world
from sim.errors import ConfigError
from sim.host.memory import PG_RESIDENT, PG_SWAP, PTE_PRESENT
from tests.conftest import TINY, run_checked


def _raw(**balloon: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw["host"]["memory_mib"] = 10
    raw["duration_s"] = 0.4
    raw["vms"] = [
        {
            "name": "app",
            "memory_mib": 8,
            "access_rate_per_s": 500_000,
            "workload": {"type": "zipf", "alpha": 0.6},
            "guest": {"footprint_mib": 6},
            "balloon": {"enabled": True, **balloon},
        },
        {"name": "other", "memory_mib": 8, "access_rate_per_s": 500_000},
    ]
    return raw


def _no_host_backing(w: Any, vm: int, gfns: np.ndarray) -> None:
    """Pages the balloon holds are never mapped on the host nor by KVM, and hold no frame or
    swap copy there, but for a folio whose I/O was in flight at the discard (freed when it
    ends)."""
    mm = w.vms[vm].mm
    f = w.mem.flags[mm.pid_base + gfns]
    assert not (f & PTE_PRESENT).any()
    assert not w.vms[vm].mmu.spte[gfns].any()
    held = (f & (PG_RESIDENT | PG_SWAP)) != 0
    assert all(int(p) in mm.zapped for p in (mm.pid_base + gfns[held]))


def test_an_initial_target_inflates_and_the_host_gets_the_pages_back() -> None:
    w = build_world(parse_scenario(_raw(initial_target_mib=4)), None)
    run_checked(w, every_ns=20_000_000)
    g, b = w.vms[0].guest, w.vms[0].balloon
    held = g.balloon_pages()
    assert len(held) == b.driver.num_pages == 4 * 256  # 8 MiB of RAM down to 4
    _no_host_backing(w, 0, held)
    s = w.summary(0.0)["vms"][0]
    assert s["guest_memory"]["balloon"] == 4 * 256
    assert s["balloon"]["balloon_inflate"] == 4 * 256
    # the guest, squeezed to 4 MiB under a 6 MiB footprint, now reclaims itself
    assert g.vmstat["pswpout"] > 0


def test_deflate_on_oom_gives_pages_back_before_any_kill() -> None:
    raw = _raw(initial_target_mib=1, deflate_on_oom=True)
    raw["vms"][0]["guest"] = {"footprint_mib": 7, "swap": {"size_mib": 0}}  # no guest swap
    w = build_world(parse_scenario(raw), None)
    run_checked(w, every_ns=20_000_000)
    b = w.vms[0].balloon
    assert b.counts.oom_deflates > 0
    assert not w.vms[0].guest.dead  # the balloon's pages saved the process
    _no_host_backing(w, 0, w.vms[0].guest.balloon_pages())


def test_mom_shrinks_guests_under_host_pressure() -> None:
    raw = _raw()
    raw["duration_s"] = 3.0
    raw["host"]["memory_mib"] = 8
    raw["vms"][0]["guest"] = {"footprint_mib": 3}  # 5 MiB of guest RAM unused
    raw["mom"] = {
        "enabled": True,
        "interval_s": 1,
        "monitor_interval_s": 1,
        "sample_history_length": 1,
    }
    raw["vms"][0]["balloon"]["stats_interval_s"] = 1
    w = build_world(parse_scenario(raw), None)
    w.run()
    w.check()
    s = w.summary(0.0)
    mom = s["host"]["mom"]
    assert mom["evaluations"] >= 2
    assert mom["targets_set"] >= 1
    assert all(r["vm"] == "app" for r in mom["records"])
    held = w.vms[0].guest.balloon_pages()
    assert len(held) > 0
    _no_host_backing(w, 0, held)


def test_a_balloon_needs_a_guest_and_mom_needs_a_balloon() -> None:
    raw = _raw()
    del raw["vms"][0]["guest"]
    with pytest.raises(ConfigError, match="balloon needs guest"):
        parse_scenario(raw)
    raw = _raw()
    raw["vms"][0]["balloon"]["enabled"] = False
    raw["mom"] = {"enabled": True}
    with pytest.raises(ConfigError, match="mom: no VM has a balloon"):
        parse_scenario(raw)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.integers(1, 8),
    footprint=st.integers(2, 10),
    oom=st.booleans(),
    mom=st.booleans(),
    guest_swap=st.sampled_from([0, 16]),
    policy=st.sampled_from(["two_list", "mglru"]),
    seed=st.integers(0, 30),
)
def test_balloon_pages_are_never_backed_on_the_host(
    target: int, footprint: int, oom: bool, mom: bool, guest_swap: int, policy: str, seed: int
) -> None:
    raw = _raw(initial_target_mib=target, deflate_on_oom=oom, stats_interval_s=1)
    raw["seed"] = seed
    raw["duration_s"] = 0.3
    raw["reclaim"] = {"policy": policy}
    raw["vms"][0]["guest"] = {
        "footprint_mib": footprint,
        "swap": {"size_mib": guest_swap},
        "job": {"run_s": 0.1, "idle_s": 0.05},
    }
    if mom:
        raw["mom"] = {
            "enabled": True,
            "interval_s": 1,
            "monitor_interval_s": 1,
            "sample_history_length": 1,
        }
    w = build_world(parse_scenario(raw), None)

    def watch() -> Any:
        while True:
            yield w.env.timeout(10_000_000)
            w.check()
            _no_host_backing(w, 0, w.vms[0].balloon.driver.pages)  # acked: QEMU discarded

    w.start()
    w.env.process(watch())
    w.run()
    w.check()
    g, b = w.vms[0].guest, w.vms[0].balloon
    held = set(g.balloon_pages().tolist())
    assert set(b.driver.pages.tolist()) <= held  # every page QEMU acked is the balloon's
    assert len(held) - len(b.driver.pages) <= b.driver.chunk  # but a chunk in flight
