"""Reports: a self-contained HTML page and a markdown summary for a run, sweep or plan.

``write_report(RESULTS_DIR)`` finds out what the directory holds (``plan.json``: a capacity
plan; ``runs.parquet``: a sweep; ``summary.json``: one run), draws its figures with seaborn,
and writes ``report.html`` (figures embedded as base64 PNGs, so the file can be mailed or
attached on its own) and ``report.md`` (figures saved beside it) into a temporary directory
that is renamed into place. It reads result files only, never simulator internals.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from analysis.plots import capacity_figure


class ReportError(ValueError):
    """The directory is not a result directory (or lacks a file the report needs)."""


def _save(fig: object, path: Path, dpi: int = 90) -> None:
    """Save a figure to a temporary name, then rename: readers never see half a PNG."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    os.replace(tmp, path)


def write_capacity_figure(plan_dir: Path) -> Path:
    """Draw ``capacity.png`` in a plan directory from its ``plan.json`` and ``plan.parquet``."""
    plan = json.loads((plan_dir / "plan.json").read_text())
    runs = pd.read_parquet(plan_dir / "plan.parquet")
    out = plan_dir / "capacity.png"
    _save(capacity_figure(plan, runs), out)
    return out
