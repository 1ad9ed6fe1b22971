"""Golden numbers: exact counts of small worlds, kept in tests/golden/, so that a change in
behaviour shows up as a diff to review, not only as a change the code agrees with itself about.

Each case is a small full-model world (watermark reclaim, kswapd, direct reclaim, swap, KVM)
for two_list, MGLRU, CLOCK and exact LRU, with KVM's aging notifiers on and off; two_list also
with ``host.page_size_kib: 2048``, the shorthand for THP-backed guest RAM; plus ``replay
--engine general`` (the full mechanism in demand mode) on the committed sqlite3 trace. What
is compared: every non-zero vmstat counter, the guest-visible faults by kind and the refaults
of every VM.

When a change is meant to move these numbers, regenerate them and say why in the commit:

    python -m pytest tests/test_golden.py --update-golden
    git diff tests/golden/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sim.config import parse_scenario
from sim.engine import build_world
from sim.guest.traces import read_trace
from sim.replay import replay

GOLDEN = Path(__file__).resolve().parent / "golden"
REPO = GOLDEN.parent.parent


def _world_case(policy: str, notifiers: bool, page_kib: int) -> dict[str, Any]:
    raw = {
        "name": "golden",
        "seed": 11,
        "duration_s": 0.3,
        "host": {"memory_mib": 64, "page_size_kib": page_kib},
        "swap": {"size_mib": 256},
        "reclaim": {"policy": policy},
        "kvm": {"mmu_notifiers": notifiers},
        "vms": [
            {
                "name": "web",
                "memory_mib": 48,
                "vcpus": 2,
                "access_rate_per_s": 300_000,
                "workload": {"type": "zipf", "alpha": 1.1},
            },
            {
                "name": "db",
                "memory_mib": 48,
                "vcpus": 1,
                "access_rate_per_s": 300_000,
                "workload": {"type": "hotcold", "hot_fraction": 0.2, "hot_access_fraction": 0.9},
            },
        ],
    }
    w = build_world(parse_scenario(raw, "golden"), None)
    w.run()
    s = w.summary(0.0)
    w.check()
    return {
        "vmstat": {k: v for k, v in s["host"]["vmstat"].items() if v},
        "vms": {v["name"]: {"faults": v["faults"], "refaults": v["refaults"]} for v in s["vms"]},
    }


WORLDS = [
    (policy, notifiers, page_kib)
    for policy in ("two_list", "mglru", "clock", "lru")
    for notifiers in (True, False)
    for page_kib in ((4, 2048) if policy == "two_list" else (4,))  # THP ages on two_list only
]


def _name(policy: str, notifiers: bool, page_kib: int) -> str:
    return f"{policy}-{'notifiers' if notifiers else 'blind'}-{page_kib}k"


def _compare(file: str, got: dict[str, Any], update: bool) -> None:
    path = GOLDEN / file
    if update:
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return
    want = json.loads(path.read_text())
    assert got == want, f"{file} moved; if that is intended: pytest --update-golden (see above)"


@pytest.mark.parametrize(("policy", "notifiers", "page_kib"), WORLDS)
def test_golden_world(policy: str, notifiers: bool, page_kib: int, update_golden: bool) -> None:
    name = _name(policy, notifiers, page_kib)
    _compare(f"world-{name}.json", _world_case(policy, notifiers, page_kib), update_golden)


@pytest.fixture(scope="module")
def sqlite_trace() -> Any:
    return read_trace(REPO / "traces" / "sqlite3.lackey.gz")


@pytest.mark.parametrize("policy", ["two_list", "mglru", "clock", "lru", "fifo"])
def test_golden_replay_general(policy: str, sqlite_trace: Any, update_golden: bool) -> None:
    got = {}
    for frames in (40, 120):
        r = replay(
            sqlite_trace.pages, sqlite_trace.writes, frames=frames, policy=policy, engine="general"
        )
        got[str(frames)] = {k: r[k] for k in ("accesses", "faults", "evictions")}
    _compare(f"replay-sqlite3-{policy}.json", got, update_golden)
