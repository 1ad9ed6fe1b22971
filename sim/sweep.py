"""Sweeps: one base scenario, many variants, run in a process pool, one row per run.

A sweep file is YAML::

    base: quickstart.yaml          # a scenario file (relative to the sweep file) or a mapping
    grid:                          # optional: cartesian product over dotted keys
      reclaim.policy: [two_list, clock]
      kvm.mmu_notifiers: [true, false]
    variants:                      # optional: explicit points, each a set of overrides
      - {label: opt, set: {reclaim.policy: opt}}
    seeds: [1, 2]                  # optional: replicate every point

Every point is validated before anything runs (a bad point is reported with its index and
key). Each run goes to ``<out>/runs/<name>-<config hash>/``, written atomically, and a run
whose directory already exists is skipped, so an interrupted sweep resumes where it stopped.
``runs.parquet`` has one row per run: label, swept parameters as columns, status, summary
metrics.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sim.config import Scenario, parse_scenario, read_yaml, set_dotted
from sim.errors import ConfigError, UserError

SWEEP_KEYS = {"base", "grid", "variants", "seeds", "name"}


@dataclass(frozen=True, slots=True)
class Point:
    """One run of a sweep."""

    index: int
    label: str
    params: dict[str, Any]
    scenario: Scenario

    @property
    def run_name(self) -> str:
        """Directory name of this run."""
        return f"{self.scenario.name}-{self.scenario.config_hash()}"


def _fmt(v: Any) -> str:
    """A parameter value as a label fragment."""
    if isinstance(v, dict | list):
        return json.dumps(v)
    return str(v).lower() if isinstance(v, bool) else str(v)


def load_sweep(path: Path) -> tuple[str, list[Point]]:
    """Read a sweep file and expand it into validated points."""
    spec = read_yaml(path)
    unknown = sorted(set(spec) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; a sweep has "
            f"{', '.join(sorted(SWEEP_KEYS))}"
        )
    base = spec.get("base")
    if isinstance(base, str):
        base_path = (path.parent / base).resolve()
        raw = read_yaml(base_path)
        raw.setdefault("name", base_path.stem)
    elif isinstance(base, dict):
        raw = copy.deepcopy(base)
    else:
        raise ConfigError(f"{path}: base: expected a scenario file name or mapping")
    name = str(spec.get("name", path.stem))
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: grid: expected a mapping of dotted keys to non-empty lists")
    variants = spec.get("variants") or [{}]
    if not isinstance(variants, list):
        raise ConfigError(f"{path}: variants: expected a list of {{label, set}} mappings")
    seeds = spec.get("seeds") or [raw.get("seed", 1)]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"{path}: seeds: expected a list of non-negative integers")
    keys = list(grid)
    points: list[Point] = []
    combos = list(itertools.product(*(grid[k] for k in keys))) or [()]
    for vi, var in enumerate(variants):
        if not isinstance(var, dict) or set(var) - {"label", "set"}:
            raise ConfigError(f"{path}: variants[{vi}]: expected {{label: ..., set: {{...}}}}")
        vset = var.get("set") or {}
        for combo in combos:
            for seed in seeds:
                params = {**dict(zip(keys, combo, strict=True)), **vset}
                label = var.get("label") or ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
                where = f"{path}: point {len(points)} ({label or 'base'}, seed {seed})"
                try:
                    pr = copy.deepcopy(raw)
                    for k, v in params.items():
                        set_dotted(pr, k, v, f"{where}: {k}")
                    pr["seed"] = seed
                    sc = parse_scenario(pr, where)
                except UserError as exc:
                    raise ConfigError(str(exc)) from None
                points.append(Point(len(points), label or "base", {**params, "seed": seed}, sc))
    return name, points


def _run_point(point: Point, runs_dir: Path) -> dict[str, Any]:
    """Worker: run one point (or find it done); return its row."""
    from sim.engine import run_scenario

    out = runs_dir / point.run_name
    row: dict[str, Any] = {
        "index": point.index,
        "label": point.label,
        **point.params,
        "run": point.run_name,
    }
    summary_path = out / "summary.json"
    try:
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            row["status"] = "cached"
        else:
            summary = run_scenario(point.scenario, out, command=["memsim", "sweep"]).summary
            row["status"] = "ok"
    except Exception as exc:  # a failed run is a row, not a lost sweep
        row.update(
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=5),
        )
        return row
    row.update(metrics(summary))
    return row


def metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary numbers a sweep table carries, flattened."""
    vms = summary["vms"]
    faults = {k: sum(v["faults"][k] for v in vms) for k in vms[0]["faults"]}
    stall = sum(v["stall_ns"] for v in vms)
    run = sum(v["stall_ns"] + v["compute_ns"] for v in vms)
    h = summary["host"]
    out = {
        "policy": summary["policy"],
        "accesses": sum(v["accesses"] for v in vms),
        **{f"faults_{k}": n for k, n in faults.items()},
        "misses": faults["first_touch"] + faults["major"],
        "refaults": sum(v["refaults"] for v in vms),
        "stall_fraction": stall / run if run else 0.0,
        "pswpin": h["pswpin"],
        "pswpout": h["pswpout"],
        "tlb_flushes": h["tlb_flushes"],
        "notifier_calls": sum(h["notifier"].values()),
        "oom_kills": len(h["oom_kills"]),
        "sim_time_ns": summary["sim_time_ns"],
        "wall_s": summary["wall_s"],
    }
    q = summary.get("quality")
    if q:
        out.update({k: q[k] for k in ("opt_faults", "lru_faults", "opt_gap", "lru_gap")})
    return out


def run_points(
    points: list[Point],
    target: Path,
    *,
    workers: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> pd.DataFrame:
    """Run points into ``target/runs/`` (skipping finished ones); write and return ``runs.parquet``.

    The engine under both ``memsim sweep`` and ``memsim plan``: rows come back in point order
    whatever order the workers finish in.
    """
    runs_dir = target / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for stale in runs_dir.glob(".*.tmp-*"):  # a crash leaves hidden temp dirs behind
        shutil.rmtree(stale, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    failed = 0
    workers = workers or min(len(points), os.cpu_count() or 1)
    if workers <= 1:
        for p in points:
            rows.append(_run_point(p, runs_dir))
            failed += rows[-1]["status"] == "failed"
            if progress:
                progress(len(rows), len(points), failed)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_run_point, p, runs_dir) for p in points]
            for fut in as_completed(futures):
                rows.append(fut.result())
                failed += rows[-1]["status"] == "failed"
                if progress:
                    progress(len(rows), len(points), failed)
    df = pd.DataFrame(rows).sort_values("index").reset_index(drop=True)
    tmp = target / "runs.parquet.tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, target / "runs.parquet")
    return df


def run_sweep(
    path: Path,
    out: Path | None = None,
    *,
    workers: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> tuple[Path, pd.DataFrame]:
    """Run every point of a sweep file; returns the sweep directory and ``runs.parquet``."""
    name, points = load_sweep(path)
    target = (out or Path("results") / name).resolve()
    return target, run_points(points, target, workers=workers, progress=progress)
