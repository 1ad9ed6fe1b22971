"""Sweep files expand, validate every point first, and resume without recomputing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sim.errors import ConfigError
from sim.sweep import load_sweep, run_sweep
from tests.conftest import TINY


def _write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_expansion(tmp_path: Path) -> None:
    spec = {
        "base": {**TINY, "duration_s": 0.01},
        "grid": {"kvm.mmu_notifiers": [True, False], "vms.0.vcpus": [1, 2]},
        "variants": [{"label": "a", "set": {"reclaim.policy": "fifo"}}, {"label": "b"}],
        "seeds": [1, 2],
    }
    name, points = load_sweep(_write(tmp_path, spec))
    assert name == "sweep"
    assert len(points) == 2 * 2 * 2 * 2
    assert len({p.run_name for p in points}) == len(points)
    a = [p for p in points if p.label == "a"]
    assert all(p.scenario.reclaim.policy == "fifo" for p in a)
    assert {(p.params["kvm.mmu_notifiers"], p.params["seed"]) for p in a} == {
        (True, 1),
        (True, 2),
        (False, 1),
        (False, 2),
    }


def test_base_file_is_relative_to_the_sweep(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**TINY, "duration_s": 0.01}))
    _, points = load_sweep(_write(tmp_path, {"base": "base.yaml"}))
    assert len(points) == 1
    assert points[0].scenario.duration_s == 0.01


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"grid": {"host.memory_mib": [8, -1]}}, "point 1"),
        ({"grid": {"kvm.nonsense": [1]}}, "kvm.nonsense"),
        ({"grid": {"host.memory_mib": []}}, "grid"),
        ({"colour": 1}, "unknown key"),
        ({"seeds": [-1]}, "seeds"),
    ],
)
def test_bad_points_are_reported_before_anything_runs(
    tmp_path: Path, spec: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_sweep(_write(tmp_path, {"base": {**TINY, "duration_s": 0.01}, **spec}))
    assert not (tmp_path / "results").exists()


def test_run_then_resume_from_cache(tmp_path: Path) -> None:
    spec = {"base": {**TINY, "duration_s": 0.02}, "grid": {"reclaim.policy": ["fifo", "clock"]}}
    path = _write(tmp_path, spec)
    out, df = run_sweep(path, tmp_path / "out", workers=1)
    assert list(df.status) == ["ok", "ok"]
    assert (out / "runs.parquet").exists()
    assert len(list((out / "runs").iterdir())) == 2
    _, again = run_sweep(path, tmp_path / "out", workers=1)
    assert list(again.status) == ["cached", "cached"]
    cols = ["misses", "pswpout", "faults_major"]
    assert again[cols].equals(df[cols])
