"""Fit memsim's costs to a host's measured phase times, and write them as a cost profile.

Models
    A phase's guest time on the real kernel is taken as a sum of per-event costs::

        time = accesses * access + first_touch * first_touch_fault
             + pgmajfault * swap_in_round_trip + pswpout * swap_out

    (``access``: one resident access with its TLB misses; ``first_touch_fault``: a shadow or
    EPT fault plus the host's anonymous fault and page clearing; ``swap_in_round_trip``: a
    fault that reads the page back, exit to re-entry, with the limit reclaim its charge
    triggers; ``swap_out``: reclaiming and writing one page). The costs are the non-negative
    least-squares solution over the phases of the scenarios marked ``use: fit``. Scenarios
    marked ``check`` are not looked at here: they test the profile (the report compares
    memsim's simulated time with theirs).

The profile
    A YAML file with ``costs`` (memsim's CPU costs, ns) and ``swap`` (device latencies, us)
    sections that a scenario includes with ``costs: {profile: FILE}`` (its own values win),
    plus ``measured`` (the fitted per-event costs, the guest's access time, and where they came
    from) for the record. The mapping: ``first_touch_ns`` is the first-touch cost;
    ``swap.read_latency_us`` is the round trip minus memsim's CPU part of a major fault
    (``ept_fault_ns + swapin_kernel_ns``); ``reclaim_page_ns`` is the swap-out cost minus the
    scanning memsim charges per reclaimed page (``scan_page_ns`` times the measured
    scanned/reclaimed ratio) and the unmap (rmap walk, notifier call, TLB flush).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.costs import CostsConfig

FEATURES = ("accesses", "first_touch", "pgmajfault", "pswpout")
MIN_READ_US = 0.1  # memsim's device needs some latency; a smaller fit is clamped to it
LABELS = {
    "accesses": "access_ns",
    "first_touch": "first_touch_ns",
    "pgmajfault": "swap_in_round_trip_ns",
    "pswpout": "swap_out_ns",
}


@dataclass(frozen=True)
class Fit:
    """Fitted per-event costs (ns) and how well they explain the fit phases."""

    costs: dict[str, float]
    rows: int
    r2: float


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares by active-set elimination (few unknowns): solve, drop the
    most negative coefficient, repeat."""
    keep = list(range(a.shape[1]))
    x = np.zeros(a.shape[1])
    while keep:
        sol, *_ = np.linalg.lstsq(a[:, keep], b, rcond=None)
        if (sol >= 0).all():
            x[:] = 0
            x[keep] = sol
            return x
        keep.pop(int(np.argmin(sol)))
    return x


def design(phases: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows (one per phase: its event counts) and targets (its time, ns)."""
    a = np.array([[float(p[f]) for f in FEATURES] for p in phases])
    b = np.array([float(p["time_ns"]) for p in phases])
    return a, b


def fit(phases: list[dict[str, Any]]) -> Fit:
    """Per-event costs from phases (median counters and time of each fit scenario's phase).

    Rows are weighted by 1/time so that short phases count as much as long ones (the check is
    on relative error)."""
    a, b = design(phases)
    w = 1.0 / np.maximum(b, 1.0)
    x = nnls(a * w[:, None], b * w)
    pred = a @ x
    ss = float(((b - pred) ** 2).sum())
    tot = float(((b - b.mean()) ** 2).sum()) or 1.0
    return Fit(
        {LABELS[f]: float(v) for f, v in zip(FEATURES, x, strict=True)}, len(b), 1 - ss / tot
    )


def profile(f: Fit, scan_ratio: float, about: dict[str, Any]) -> dict[str, Any]:
    """The cost profile for memsim from a fit (see the module docstring for the mapping)."""
    d = CostsConfig()
    c = f.costs
    major_cpu = d.ept_fault_ns + d.swapin_kernel_ns
    unmap = d.rmap_walk_ns + d.notifier_call_ns + d.tlb_flush_ipi_ns
    reclaim = c["swap_out_ns"] - d.scan_page_ns * scan_ratio - unmap
    return {
        "costs": {
            "first_touch_ns": max(0, round(c["first_touch_ns"])),
            "reclaim_page_ns": max(0, round(reclaim)),
        },
        "swap": {
            "read_latency_us": round(
                max(MIN_READ_US * 1000, c["swap_in_round_trip_ns"] - major_cpu) / 1000, 2
            ),
        },
        "measured": {**{k: round(v, 1) for k, v in c.items()}, "r2": round(f.r2, 4), **about},
    }
