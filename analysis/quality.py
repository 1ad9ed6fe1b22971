"""Eviction quality: how good a run's evictions were, from its result files alone.

Definitions (DESIGN.md section 4; README "Eviction quality"):

- **OPT gap**: the run's misses / Belady OPT's misses on the same reference string and memory
  size (1.0 is optimal). Demand-mode runs record both in ``summary.json`` (``quality``).
- **LRU gap**: the same against exact LRU: how good the accessed-bit approximation is.
- **Premature evictions**: share of evictions whose page is accessed again within a window
  (default: the mean residence time of evicted pages, i.e. sooner than a typical page lives).
- **Refault distance**: for an evicted page that comes back, how many other evictions happened
  in between (the eviction clock mm/workingset.c compares with the workingset size).
- **Idle-age rank**: where the evicted page's idle age falls among resident pages at eviction
  (1.0 = it was the coldest sampled page, what exact LRU would evict), from ``idle_rank``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.load import Run


def oracle_gaps(run: Run) -> dict[str, Any]:
    """``{faults, opt_faults, lru_faults, opt_gap, lru_gap}`` (demand-mode runs only)."""
    q = run.summary.get("quality")
    if not q:
        raise ValueError(f"{run.path}: no oracle gaps (only demand-mode runs record them)")
    return dict(q)


def residence_times(run: Run) -> pd.Series:
    """For each eviction, how long its page had been resident (since the fault that loaded
    it), in ns; NaN where the fault-in is not in the log."""
    ev = run.table("evictions")
    f = run.table("faults")
    loads = f[f.kind.isin(["first_touch", "major"])]
    if ev.empty:
        return pd.Series(dtype=float)
    left = ev[["t_ns", "vm", "gfn"]].assign(vm=ev.vm.astype(str), row=np.arange(len(ev)))
    right = (
        loads[["t_ns", "vm", "gfn"]]
        .assign(vm=loads.vm.astype(str))
        .rename(columns={"t_ns": "in_ns"})
    )
    merged = pd.merge_asof(
        left.sort_values("t_ns"),
        right.sort_values("in_ns"),
        left_on="t_ns",
        right_on="in_ns",
        by=["vm", "gfn"],
        direction="backward",
    ).sort_values("row")
    return pd.Series((merged.t_ns - merged.in_ns).to_numpy(dtype=float), name="residence_ns")


def premature_evictions(run: Run, window_ns: float | None = None) -> float:
    """Share of evictions re-accessed within ``window_ns`` (default: mean residence time)."""
    ev = run.table("evictions")
    if ev.empty:
        return 0.0
    if window_ns is None:
        window_ns = float(np.nanmean(residence_times(run)))
    back = ev.next_access_ns[ev.refault].to_numpy(dtype=np.int64) - ev.t_ns[ev.refault]
    return float((back <= window_ns).sum() / len(ev))  # pages never back are not premature


def refault_distances(run: Run) -> pd.Series:
    """Evictions between each refaulted page's eviction and its refault."""
    ev = run.table("evictions")
    times = np.sort(ev.t_ns.to_numpy())
    back = ev[ev.refault]
    start = np.searchsorted(times, back.t_ns.to_numpy(), side="right")
    end = np.searchsorted(times, back.next_access_ns.to_numpy(dtype=np.int64), side="right")
    return pd.Series(end - start, name="refault_distance", dtype=np.int64)


def quality(run: Run) -> dict[str, Any]:
    """Every metric above for one run (missing ones as None)."""
    out: dict[str, Any] = {"policy": run.summary["policy"]}
    try:
        out.update(oracle_gaps(run))
    except ValueError:
        out.update(opt_gap=None, lru_gap=None)
    ev = run.table("evictions")
    out["evictions"] = len(ev)
    out["premature"] = premature_evictions(run) if len(ev) else None
    out["idle_rank_mean"] = float(ev.idle_rank.mean()) if len(ev) else None
    rd = refault_distances(run)
    out["refault_distance_median"] = float(rd.median()) if len(rd) else None
    return out
