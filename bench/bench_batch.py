"""Batch size: what ``engine.batch_accesses`` buys in speed and costs in fidelity.

A vCPU applies a run of up to ``batch_accesses`` hits at once (one vectorised residency check, the
accessed bits set together, one SimPy event), stopping at the first fault. Batch size 1 is the
one-event-per-access model. The scenario is the tests' tiny host at 12 MiB (two 8 MiB Zipf guests x
2 vCPUs, swapping), run for a fixed simulated time at each batch size; rows give accesses/s against
batch size 1 and the relative error of the major-fault and swap-out counts against batch size 1
(tests/test_batch_fidelity.py holds the error to 1% at 64 and 2% at 1024).
"""

from __future__ import annotations

import copy
import time
from typing import Any

from bench import row
from sim.config import parse_scenario
from sim.engine import build_world

PIN_ONE_CORE = True
SCENARIO: dict[str, Any] = {
    "name": "bench-batch",
    "seed": 7,
    "host": {"memory_mib": 12},
    "swap": {"size_mib": 64, "latency_cv": 0.0},
    "vms": [
        {
            "name": "vm",
            "count": 2,
            "memory_mib": 8,
            "vcpus": 2,
            "access_rate_per_s": 2_000_000,
            "workload": {"type": "zipf", "alpha": 0.9},
        }
    ],
    "engine": {"sample_interval_ms": 1.0},
}


def _run(batch: int, duration_s: float) -> tuple[float, dict[str, int]]:
    raw = copy.deepcopy(SCENARIO)
    raw["duration_s"] = duration_s
    raw["engine"]["batch_accesses"] = batch
    w = build_world(parse_scenario(raw, "bench-batch"), None)
    t0 = time.perf_counter()
    w.run()
    wall = time.perf_counter() - t0
    s = w.summary(wall)
    return wall, {
        "accesses": sum(v["accesses"] for v in s["vms"]),
        "major": sum(v["faults"]["major"] for v in s["vms"]),
        "pswpout": s["host"]["pswpout"],
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Accesses/s and fault-count error at each batch size, against batch size 1."""
    duration = 0.02 if quick else 0.2
    batches = (1, 64, 1024) if quick else (1, 16, 64, 256, 1024, 4096)
    base_wall, base = _run(1, duration)
    base_rate = base["accesses"] / base_wall
    rows = []
    for b in batches[1:]:
        wall, got = _run(b, duration)
        err = {k: abs(got[k] - base[k]) / base[k] for k in ("major", "pswpout")}
        rows.append(
            row(
                "batch",
                f"batch {b}: accesses/s (swapping)",
                got["accesses"] / wall,
                "accesses/s",
                baseline="batch 1",
                baseline_value=base_rate,
                note=f"major faults {err['major']:.2%} and pswpout {err['pswpout']:.2%} "
                "off batch 1",
                major_fault_error=err["major"],
                pswpout_error=err["pswpout"],
                **{f"batch1_{k}": v for k, v in base.items()},
                **got,
            )
        )
    return rows
