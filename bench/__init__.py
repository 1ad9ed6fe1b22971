"""memsim benchmarks: ``python -m bench [--quick] [--json PATH|-] [--only NAME ...]``.

Protocol: every ``bench/bench_*.py`` module has ``run(quick: bool) -> list[dict]``, each dict
one row made by :func:`row`: ``bench``, ``metric``, ``value``, ``unit``, ``baseline`` (what the
figure is compared with, measured in the same run), ``baseline_value``, ``ratio`` (how many times
better than the baseline: value / baseline_value for rates, baseline_value / value for times and
sizes), ``target`` (a readable target, or None), ``met`` (None when there is no
target), plus ``value_cpu``/``baseline_value_cpu``/``ratio_cpu`` (the same over process CPU
time, where timed), ``note`` and free-form ``details``. A module that sets
``PIN_ONE_CORE = True`` is run pinned to one CPU; any other (``bench_sweep.py`` needs both
cores) runs unpinned.

Times are wall-clock (``time.perf_counter``); process CPU time is in ``details`` where a
figure is timed, since on a shared machine it is the steadier of the two.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"

ROW_KEYS = (
    "bench",
    "metric",
    "value",
    "unit",
    "baseline",
    "baseline_value",
    "ratio",
    "target",
    "met",
)


@dataclass(frozen=True, slots=True)
class Target:
    """What a row must reach: a floor or ceiling on its value and/or a floor on its ratio."""

    min_value: float | None = None
    max_value: float | None = None
    min_ratio: float | None = None

    def describe(self, unit: str) -> str:
        """E.g. ``>= 20M accesses/s, >= 30x``."""
        parts = []
        if self.min_value is not None:
            parts.append(f">= {with_unit(self.min_value, unit)}")
        if self.max_value is not None:
            parts.append(f"<= {with_unit(self.max_value, unit)}")
        if self.min_ratio is not None:
            parts.append(f">= {self.min_ratio:g}x")
        return ", ".join(parts)

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        """Whether every bound holds (False if a bounded figure is missing)."""
        checks = []
        if self.min_value is not None:
            checks.append(value is not None and value >= self.min_value)
        if self.max_value is not None:
            checks.append(value is not None and value <= self.max_value)
        if self.min_ratio is not None:
            checks.append(ratio is not None and ratio >= self.min_ratio)
        return all(checks) if checks else None


def human(x: float, unit: str = "") -> str:
    """A number with a k/M/G suffix (KiB/MiB/GiB for bytes), three significant digits."""
    if unit == "B":
        for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(x) >= div:
                return f"{x / div:.3g} {suffix}"
        return f"{x:.3g} B"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def with_unit(x: float, unit: str) -> str:
    """``human(x)`` followed by the unit (bytes carry theirs in the suffix)."""
    if unit == "B":
        return human(x, unit)
    return f"{human(x)} {unit}".rstrip()


def row(
    bench: str,
    metric: str,
    value: float | None,
    unit: str,
    *,
    baseline: str | None = None,
    baseline_value: float | None = None,
    target: Target | None = None,
    note: str = "",
    lower_is_better: bool = False,
    value_cpu: float | None = None,
    baseline_value_cpu: float | None = None,
    **details: Any,
) -> dict[str, Any]:
    """One result row; ``ratio`` is ``value / baseline_value`` (inverted when
    ``lower_is_better``) when both are known. ``value_cpu`` and ``baseline_value_cpu`` are the
    same figures over process CPU time instead of wall time, when timed."""

    def ratio_of(v: float | None, b: float | None) -> float | None:
        if not v or not b:
            return None
        return b / v if lower_is_better else v / b

    ratio = ratio_of(value, baseline_value)
    return {
        "bench": bench,
        "metric": metric,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": ratio,
        "target": target.describe(unit) if target is not None else None,
        "met": target.met(value, ratio) if target is not None else None,
        "value_cpu": value_cpu,
        "baseline_value_cpu": baseline_value_cpu,
        "ratio_cpu": ratio_of(value_cpu, baseline_value_cpu),
        "note": note,
        "details": details,
    }


def skipped(bench: str, metric: str, unit: str, why: str, target: Target | None = None) -> dict:
    """A row for a figure that could not be measured here (``value`` None, reason in note)."""
    return row(bench, metric, None, unit, target=target, note=f"skipped: {why}")


@dataclass(frozen=True, slots=True)
class Timing:
    """Median wall and CPU seconds of repeated runs, and every wall time."""

    wall_s: float
    cpu_s: float
    walls: list[float]


def timed(fn: Callable[[], object], repeat: int) -> tuple[Timing, object]:
    """Run ``fn`` ``repeat`` times; the median wall and CPU times and the last result."""
    walls, cpus = [], []
    out: object = None
    for _ in range(max(1, repeat)):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    return Timing(statistics.median(walls), statistics.median(cpus), walls), out
