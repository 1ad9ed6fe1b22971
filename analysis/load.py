"""Load a run directory into pandas."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml


@dataclass(frozen=True)
class Run:
    """One run's results."""

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]

    def table(self, name: str) -> pd.DataFrame:
        """``evictions``, ``faults`` or ``timeline`` as a DataFrame."""
        return pd.read_parquet(self.path / f"{name}.parquet")


def load_run(path: str | Path) -> Run:
    """Read a result directory written by ``memsim run``."""
    p = Path(path)
    summary = json.loads((p / "summary.json").read_text())
    config = yaml.safe_load((p / "config.yaml").read_text())
    return Run(p, summary, config)


def fault_rate(run: Run, kind: str = "major", bin_ms: float = 100.0) -> pd.DataFrame:
    """Faults of ``kind`` per second, per VM, in bins of ``bin_ms`` (tidy: t_s, vm, rate)."""
    f = run.table("faults")
    f = f[f.kind == kind]
    bin_ns = int(bin_ms * 1e6)
    horizon = run.summary["sim_time_ns"]
    bins = pd.RangeIndex(0, horizon // bin_ns + 1)
    counts = (
        f.groupby([f.vm.astype(str), f.t_ns // bin_ns])
        .size()
        .unstack(0)
        .reindex(bins, fill_value=0)
        .fillna(0)
    )
    out = counts.stack().rename("count").reset_index()
    out.columns = ["bin", "vm", "count"]
    out["t_s"] = out["bin"] * bin_ms / 1000.0
    out["rate_per_s"] = out["count"] / (bin_ms / 1000.0)
    return out[["t_s", "vm", "rate_per_s"]]
